"""The engine settings of ``fiancee serve``, checked before Ray starts (one line naming the setting on a bad one)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..core.args import check_bool, check_float, check_int

__all__ = ["ServeSettings"]


@dataclass(frozen=True)
class ServeSettings:
    """How Ray Serve runs the service (docs/serve.md).

    ``replicas`` generator replicas, each on ``threads`` threads (and as many Ray CPUs: on a cluster Ray places them
    where CPUs are free); ``@serve.batch`` gathers up to ``max_batch_size`` requests, waiting at most
    ``batch_wait_ms`` for more. A replica holds at most ``2 * max_batch_size`` requests (one batch running, the next
    gathering); past those, at most ``max_queued`` wait at the gateway, and the next is answered 503 at once.
    ``timeout_s``: a request not answered by then gets 408 from the proxy. ``retries``: how often a request whose
    replica died is sent again. ``drain_s``: how long shutdown waits for requests in flight."""

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    threads: int = 1
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    max_queued: int = 64
    timeout_s: float = 30.0
    max_body_kb: int = 1024
    retries: int = 2
    drain_s: float = 20.0
    backbone_only: bool = False

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a host name or address like 127.0.0.1; got {self.host!r}")
        check_int(self.port, "port", minimum=1, maximum=65535)
        check_int(self.replicas, "replicas", minimum=1, maximum=256)
        check_int(self.threads, "threads", minimum=1, maximum=256)
        check_int(self.max_batch_size, "max_batch_size", minimum=1, maximum=1024)
        check_float(self.batch_wait_ms, "batch_wait_ms", low=0.0, high=1000.0)
        check_int(self.max_queued, "max_queued", minimum=1, maximum=100_000)
        check_float(self.timeout_s, "timeout_s", low=0.0, high=3600.0, open_low=True)
        check_int(self.max_body_kb, "max_body_kb", minimum=1, maximum=1 << 20)
        check_int(self.retries, "retries", minimum=0, maximum=10)
        check_float(self.drain_s, "drain_s", low=0.0, high=3600.0)
        check_bool(self.backbone_only, "backbone_only")

    @property
    def replica_capacity(self) -> int:
        """Requests one generator replica holds: a batch running and the next one gathering."""
        return 2 * self.max_batch_size

    @property
    def admission_bound(self) -> int:
        """Requests to generate the gateway admits at once: what every replica holds plus the bounded queue."""
        return self.replicas * self.replica_capacity + self.max_queued

    @property
    def gateway_capacity(self) -> int:
        """Requests the gateway takes at once: the admission bound and a few for /health and /metrics, so that
        overload is answered by the gateway's own 503 (counted) rather than piling up."""
        return self.admission_bound + 16

    def to_dict(self) -> dict:
        return asdict(self)
