"""The gateway's metrics, in Prometheus' text format (``GET /metrics``), with ``prometheus_client``.

Counted where every request passes: the gateway (one replica by default, so the numbers cover the whole service;
with several gateway replicas each counts its own share and a Prometheus server sums them). No Ray needed.

- ``fiancee_requests_total{outcome}``: answered (``ok``), refused as bad (``bad_request``), turned away because the
  queue was full (``overloaded``), failed after retries (``failed``), turned away while draining (``shutting_down``);
- ``fiancee_route_requests_total{route}``: answered requests per route (``exit 1`` .. ``backbone``): route shares;
- ``fiancee_macs_charged_total`` and ``fiancee_backbone_macs_total`` (what the same requests would have cost on the
  backbone), and ``fiancee_macs_saved_ratio`` = 1 - charged / backbone;
- ``fiancee_queue_length``: requests the gateway admitted that are waiting for or inside a generator replica;
- ``fiancee_request_latency_seconds``: gateway-side latency of answered requests (histogram);
- ``fiancee_batch_size``: how many requests shared the pipeline call of each answered request (histogram);
- ``fiancee_retries_total``: requests sent again because the replica serving them died.
"""

from __future__ import annotations

from contextlib import contextmanager

__all__ = ["ServeMetrics", "OUTCOMES", "LATENCY_BUCKETS"]

OUTCOMES = ("ok", "bad_request", "overloaded", "failed", "shutting_down")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    """One registry of its own (never the process-wide default: two in one process, as in tests, do not clash)."""

    def __init__(self, route_names: list[str]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("fiancee_requests", "Requests by outcome", ["outcome"], registry=r)
        self.routes = Counter("fiancee_route_requests", "Answered requests by route taken", ["route"], registry=r)
        self.charged = Counter("fiancee_macs_charged", "MACs charged to answered requests", registry=r)
        self.backbone = Counter("fiancee_backbone_macs", "MACs the same requests cost on the backbone", registry=r)
        self.saved = Gauge("fiancee_macs_saved_ratio", "1 - charged / backbone MACs over answered requests", registry=r)
        self.queue = Gauge("fiancee_queue_length", "Admitted requests waiting for or inside a replica", registry=r)
        self.latency = Histogram(
            "fiancee_request_latency_seconds",
            "Gateway latency of answered requests",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "fiancee_batch_size",
            "Requests sharing the pipeline call of an answered request",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.retries = Counter("fiancee_retries", "Requests sent again after their replica died", registry=r)
        for outcome in OUTCOMES:  # every series present from the start: a scrape before traffic shows zeros
            self.requests.labels(outcome)
        self.route_names = list(route_names)
        for name in self.route_names:
            self.routes.labels(name)
        self._charged = self._backbone = 0.0

    def answered(self, route: int, macs: float, backbone_macs: float, seconds: float, batch_size: int) -> None:
        self.requests.labels("ok").inc()
        self.routes.labels(self.route_names[route]).inc()
        self.charged.inc(macs)
        self.backbone.inc(backbone_macs)
        self._charged += macs
        self._backbone += backbone_macs
        self.saved.set(1.0 - self._charged / self._backbone)
        self.latency.observe(seconds)
        self.batch.observe(batch_size)

    def refused(self, outcome: str) -> None:
        if outcome not in OUTCOMES or outcome == "ok":
            raise ValueError(f"outcome must be one of {OUTCOMES[1:]}; got {outcome!r}")
        self.requests.labels(outcome).inc()

    @contextmanager
    def queued(self):
        self.queue.inc()
        try:
            yield
        finally:
            self.queue.dec()

    def text(self) -> tuple[bytes, str]:
        """The exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
