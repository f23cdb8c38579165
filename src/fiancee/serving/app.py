"""The Ray Serve application: a gateway deployment in front of generator replicas that batch with ``@serve.batch``.

::

    client --HTTP--> Ray Serve proxy --> Gateway (1 replica)            --handle--> Generator (N replicas)
                                         checks the request (4xx here,             @serve.batch: one pipeline
                                         never reaching a model), metrics,          call per gathered batch, each
                                         503 when the bounded queue is full,        request at its own max_lpips;
                                         retries a request whose replica died       PNG encoding
                                         (/generate, /health, /metrics)

Ray Serve does the HTTP serving, the queueing, the batching, the replica placement (one machine or a cluster: start
Ray with ``ray start`` on each and pass ``address=``) and the restarts of a replica that dies; this module only
says what the two deployments do. Bounds (:class:`fiancee.serving.settings.ServeSettings`): a generator replica
holds at most ``2 * max_batch_size`` requests, at most ``max_queued`` more wait in the gateway's handle, and the next
request gets a 503 at once (Ray Serve's ``max_queued_requests``, ``BackPressureError``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError

from .batch import Description, load_backend, run_batch
from .metrics import ServeMetrics
from .requests import BadRequest, Limits, answer, check_size, parse_generate
from .settings import ServeSettings

__all__ = ["Generator", "Gateway", "build_app", "run_server", "ENDPOINTS"]

ENDPOINTS = "POST /generate, GET /health, GET /metrics"
APP_NAME = "fiancee"
QUIET = {"log_level": "WARNING", "enable_access_log": False}
# Ray Serve runs a replica's user code and its router on event loops of their own threads by default; on the same loop
# as the replica's own, each request costs about a fifth less CPU (measured on a 2-core machine: docs/serve.md). The
# gateway never blocks its loop; a generator blocks its own for one batch at a time (Generator.generate says why), so
# a batch must finish within Ray Serve's health-check timeout (30 s): --max-batch-size bounds it for a large generator.
ENGINE_FLAGS = ("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP")


@serve.deployment(name="Generator")
class Generator:
    """One replica: the pipeline loaded once, batches of checked requests run through it."""

    def __init__(self, folder: str, threads: int, backbone_only: bool, trust_task_code: bool, batch: dict):
        self.backend = load_backend(
            folder, threads=threads, backbone_only=backbone_only, trust_task_code=trust_task_code
        )
        self.generate.set_max_batch_size(batch["max_batch_size"])
        self.generate.set_batch_wait_timeout_s(batch["batch_wait_s"])

    def describe(self) -> dict:
        """Which runtime this replica runs, and whether torch was ever imported in it (an export's replicas: never)."""
        return {"runtime": self.backend.description.runtime, "torch_imported": "torch" in sys.modules}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def generate(self, requests: list) -> list[dict]:
        # On the replica's event loop, blocking it while the batch runs. Ray Serve forms a batch as soon as its wait
        # ends, whether or not the one before has finished: with the batch in a worker thread, the requests that
        # arrive meanwhile leave as batches of one each, queued behind it (measured: a mean batch of 1.0 with
        # requests waiting seconds). Blocked, the loop takes those requests in only when the batch is done, and
        # the next batch holds all of them: under load, batches grow with the queue.
        return run_batch(self.backend, requests)


def _died(e: BaseException) -> bool:
    """Whether ``e`` says the replica serving a request died (then it is worth sending again)."""
    return isinstance(e, RayActorError) or (isinstance(e, RayTaskError) and isinstance(e.cause, RayActorError))


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0})
class Gateway:
    """HTTP ingress: checks every request before it reaches a replica, counts what happens (``/metrics``)."""

    def __init__(self, generator, description: dict, settings: dict):
        self.generator = generator
        self.description = Description.from_dict(description)
        self.settings = ServeSettings(**settings)
        self.limits = Limits(max_body_bytes=self.settings.max_body_kb * 1024)
        self.metrics = ServeMetrics(self.description.route_names)
        self.draining = False
        self.in_flight = 0  # admitted requests not answered yet

    def drain(self) -> int:
        """Refuse new requests from now on (503); the requests still in flight, for :func:`run_server` to wait on."""
        self.draining = True
        return self.in_flight

    async def __call__(self, request):
        from starlette.responses import Response

        path = request.url.path.rstrip("/") or "/"
        if path == "/generate":
            if request.method != "POST":
                return _error(405, "POST a JSON request to /generate (GET /health, GET /metrics)")
            return await self._generate(request)
        if path == "/health" and request.method == "GET":
            return await self._health()
        if path == "/metrics" and request.method == "GET":
            body, content_type = self.metrics.text()
            return Response(body, media_type=content_type)
        return _error(404, f"no endpoint {request.method} {path}; this service has {ENDPOINTS}")

    async def _health(self):
        """200 with the pipeline's description and what a replica says of itself; 503 when no replica answers."""
        from starlette.responses import JSONResponse

        reply = {"status": "ok", **self.description.to_dict()}
        response = self.generator.describe.remote()
        try:
            reply["replica"] = await asyncio.wait_for(asyncio.ensure_future(response), timeout=5.0)
        except BackPressureError:
            reply["replica"] = "busy"  # every replica full and the queue too: alive, answering others
        except Exception as e:  # no replica up (starting, or dead and not yet restarted)
            response.cancel()
            line = " ".join(str(e).split())[:200] or type(e).__name__
            return JSONResponse({**reply, "status": "unavailable", "error": line}, status_code=503)
        return JSONResponse(reply)

    async def _generate(self, request):
        start = time.perf_counter()
        try:
            length = request.headers.get("content-length")
            check_size(int(length) if length and length.isdigit() else None, self.limits)
            body = await _read_body(request, self.limits)
            checked = parse_generate(body, self.description.decls, self.limits)
        except BadRequest as e:
            self.metrics.refused("bad_request")
            return _error(e.status, str(e))
        if self.draining:
            self.metrics.refused("shutting_down")
            return _error(503, "shutting down: this service takes no new requests", {"Retry-After": "1"})
        if self.in_flight >= self.settings.admission_bound:
            # The bound counted here: a replica busy with a batch takes no request in (Generator.generate), so Ray
            # Serve's own per-replica limit cannot refuse for it, and the queue would grow without this check.
            self.metrics.refused("overloaded")
            return _error(503, "overloaded: the queue is full; retry later", {"Retry-After": "1"})
        self.in_flight += 1
        try:
            return await self._answer(request, checked, start)
        finally:
            self.in_flight -= 1

    async def _answer(self, request, checked, start: float):
        from starlette.responses import Response

        with self.metrics.queued():
            try:
                result = await self._send(checked)
            except BackPressureError:
                self.metrics.refused("overloaded")
                return _error(503, "overloaded: the queue is full; retry later", {"Retry-After": "1"})
            except Exception as e:  # a replica that died more often than retried, or a failing model
                self.metrics.refused("failed")
                line = " ".join(str(e).split())[:300]
                return _error(503 if _died(e) else 500, f"generation failed: {type(e).__name__}: {line}")
        d = self.description
        seconds = time.perf_counter() - start
        self.metrics.answered(result["route"], result["macs"], d.backbone_macs, seconds, result["batch_size"])
        reply = answer(result, d.route_names, d.backbone_macs)
        if "image/png" in request.headers.get("accept", ""):
            headers = {
                "X-Fiancee-Route": str(reply["route"]),
                "X-Fiancee-Route-Name": reply["route_name"],
                "X-Fiancee-MACs": str(reply["macs"]),
                "X-Fiancee-Predicted-LPIPS": json.dumps(reply["predicted_lpips"]),
            }
            return Response(result["png"], media_type="image/png", headers=headers)
        return Response(json.dumps(reply), media_type="application/json")

    async def _send(self, checked) -> dict:
        """The request through a generator replica; sent again (``retries`` times) when its replica died. The
        pipeline is a pure function of the request, so a second run gives the answer the first would have."""
        for attempt in range(self.settings.retries + 1):
            try:
                return await self.generator.generate.remote(checked)
            except Exception as e:
                if not _died(e) or attempt == self.settings.retries:
                    raise
                self.metrics.retries.inc()
        raise AssertionError("unreachable")


async def _read_body(request, limits: Limits) -> bytes:
    """The body, refused (413) as soon as it grows past the limit: an oversize request is never held whole."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        check_size(size, limits)
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, line: str, headers: dict | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": line}, status_code=status, headers=headers)


def build_app(folder: str | Path, description: Description, settings: ServeSettings, *, trust_task_code=False):
    """The application: ``settings.replicas`` generators behind one gateway, bounded as the settings say."""
    s = settings
    generator = Generator.options(
        num_replicas=s.replicas,
        max_ongoing_requests=s.replica_capacity,
        max_queued_requests=s.max_queued,
        ray_actor_options={"num_cpus": s.threads},
        graceful_shutdown_timeout_s=s.drain_s,
        graceful_shutdown_wait_loop_s=0.5,
        health_check_period_s=2.0,
    ).bind(
        str(Path(folder).resolve()),
        s.threads,
        s.backbone_only,
        trust_task_code,
        {"max_batch_size": s.max_batch_size, "batch_wait_s": s.batch_wait_ms / 1000.0},
    )
    return Gateway.options(
        max_ongoing_requests=s.gateway_capacity,
        max_queued_requests=s.gateway_capacity,
        graceful_shutdown_timeout_s=s.drain_s,
        graceful_shutdown_wait_loop_s=0.5,
    ).bind(generator, description.to_dict(), s.to_dict())


def _drain(seconds: float) -> None:
    """Stop taking requests and wait (at most ``seconds``) until those in flight are answered."""
    gateway = serve.get_app_handle(APP_NAME)
    deadline = time.monotonic() + seconds
    while gateway.drain.remote().result(timeout_s=max(1.0, seconds)) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)


def run_server(
    folder: str | Path,
    description: Description,
    settings: ServeSettings,
    *,
    address: str | None = None,
    trust_task_code: bool = False,
    ready=None,
    stop: threading.Event | None = None,
) -> None:
    """Start Ray (or join the cluster at ``address``), run the application on ``settings.host:port`` and block until
    SIGINT / SIGTERM (or ``stop`` is set); then the gateway refuses new requests (503) and requests in flight are
    answered (``drain_s`` at most) before Serve shuts down.
    ``ready(url, ray_address)`` is called once the service answers (``ray_address``: the cluster's, for ``ray``
    tools and for joining it)."""
    import ray

    stop = stop or threading.Event()
    for flag in ENGINE_FLAGS:  # inherited by the Ray processes started here (a cluster's nodes set their own)
        os.environ.setdefault(flag, "0")
    context = ray.init(address=address, include_dashboard=False, logging_level="warning", log_to_driver=False)
    if threading.current_thread() is threading.main_thread():  # after ray.init, whose SIGTERM handler exits at once
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(
            http_options={"host": settings.host, "port": settings.port, "request_timeout_s": settings.timeout_s},
            logging_config=QUIET,
        )
        serve.run(
            build_app(folder, description, settings, trust_task_code=trust_task_code),
            name=APP_NAME,
            route_prefix="/",
            logging_config=QUIET,  # no access-log line written (and flushed) per request by every replica
        )
        if ready is not None:
            ready(f"http://{settings.host}:{settings.port}", context.address_info.get("gcs_address"))
        while not stop.wait(0.5):
            pass
        _drain(settings.drain_s)
        serve.shutdown()
    finally:
        ray.shutdown()
