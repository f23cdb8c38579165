"""``fiancee serve``: routed generation over HTTP on Ray Serve (docs/serve.md)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a pipeline (or its ONNX export) over HTTP on Ray Serve, each request at its own max_lpips",
        description="Ray Serve runs a gateway (checks requests, /health, /metrics in Prometheus format, 503 when the "
        "bounded queue is full, retries a request whose replica died) in front of generator replicas that gather "
        "requests into batches (@serve.batch) and route each at its own max_lpips. Runs until Ctrl-C or SIGTERM, "
        "then lets requests in flight finish (docs/serve.md).",
        epilog="example: fiancee serve out/demo/pipeline   (after `make demo`; Ctrl-C stops it)\n"
        '         (then, from another shell: curl -s localhost:8000/generate -d \'{"seed": 0, "max_lpips": 0.1}\')\n'
        "         fiancee serve out/demo/onnx --replicas 2 --port 8001"
        "   (after `fiancee export out/demo/pipeline --out out/demo/onnx`: torch-free replicas)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", help="pipeline folder (fiancee demo, assemble-pipeline) or ONNX export (fiancee export)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--replicas", type=int, default=1, help="generator replicas (default 1)")
    p.add_argument("--threads", type=int, default=1, help="threads (and Ray CPUs) per replica (default 1)")
    p.add_argument("--max-batch-size", type=int, default=32, help="requests per batch at most (default 32)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill (default 5)")
    p.add_argument(
        "--max-queued", type=int, default=64, help="requests waiting beyond what replicas hold; then 503 (default 64)"
    )
    p.add_argument("--timeout-s", type=float, default=30.0, help="a request unanswered by then gets 408 (default 30)")
    p.add_argument("--max-body-kb", type=int, default=1024, help="largest request body in KiB; then 413 (default 1024)")
    p.add_argument("--retries", type=int, default=2, help="resends of a request whose replica died (default 2)")
    p.add_argument("--drain-s", type=float, default=20.0, help="how long shutdown waits for requests in flight")
    p.add_argument(
        "--backbone-only",
        action="store_true",
        help="the baseline: every request on the backbone, same engine and batching",
    )
    p.add_argument("--address", default=None, help="a running Ray cluster to join (default: start Ray here)")
    p.add_argument(
        "--trust-task-code",
        action="store_true",
        help="allow the folder's package.module:attr task to be imported (only for a folder you trust)",
    )
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from ..serving import ServeSettings, serve_pipeline

    settings = ServeSettings(
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_queued=args.max_queued,
        timeout_s=args.timeout_s,
        max_body_kb=args.max_body_kb,
        retries=args.retries,
        drain_s=args.drain_s,
        backbone_only=args.backbone_only,
    )

    def ready(url, description, ray_address) -> None:
        line = {"serving": url, "endpoints": ["POST /generate", "GET /health", "GET /metrics"], "ray": ray_address}
        print(json.dumps({**line, **description.to_dict(), "settings": settings.to_dict()}), flush=True)
        print(f"fiancee serve: ready at {url} (Ctrl-C stops it)", file=sys.stderr, flush=True)

    serve_pipeline(args.pipeline, settings, address=args.address, trust_task_code=args.trust_task_code, ready=ready)
    return 0
