"""Serving routed generation over HTTP on Ray Serve (``fiancee serve``, docs/serve.md).

- :mod:`~fiancee.serving.requests`: what a request may say and what its answer holds (pure, no Ray, no torch);
- :mod:`~fiancee.serving.batch`: a pipeline folder or its ONNX export behind one interface, and one batch of
  requests through it, each at its own ``max_lpips`` (no Ray);
- :mod:`~fiancee.serving.metrics`: the counters behind ``GET /metrics`` (Prometheus text format);
- :mod:`~fiancee.serving.settings`: the engine settings, checked before anything starts;
- :mod:`~fiancee.serving.app`: the Ray Serve deployments (a gateway, generator replicas with ``@serve.batch``).

:func:`serve_pipeline` is the workflow ``fiancee serve`` calls. Importing this package does not import Ray.
"""

from __future__ import annotations

from pathlib import Path

from .settings import ServeSettings

__all__ = ["ServeSettings", "serve_pipeline", "describe"]


def describe(folder: str | Path, settings: ServeSettings, *, trust_task_code: bool = False):
    """The pipeline's :class:`~fiancee.serving.batch.Description` (its inputs, routes and MACs), loading it once
    here: a folder that is neither a pipeline nor an export is refused before Ray starts."""
    from .batch import load_backend

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no pipeline folder at {folder} (make one with `fiancee demo` or `fiancee assemble-pipeline`, "
            "or an export with `fiancee export`)"
        )
    backend = load_backend(
        folder, threads=settings.threads, backbone_only=settings.backbone_only, trust_task_code=trust_task_code
    )
    return backend.description


def serve_pipeline(
    folder: str | Path,
    settings: ServeSettings | None = None,
    *,
    address: str | None = None,
    trust_task_code: bool = False,
    ready=None,
) -> None:
    """Serve ``folder`` (a pipeline folder, run by PyTorch, or its ONNX export, run by ONNX Runtime without torch)
    until SIGINT / SIGTERM; ``ready(url, description, ray_address)`` is called once it answers. Everything is
    checked first: the settings, Ray being installed, the folder."""
    from ..extras import require

    settings = settings or ServeSettings()
    if not isinstance(settings, ServeSettings):
        raise ValueError(f"settings must be a ServeSettings; got {type(settings).__name__}")
    require("ray.serve", "fiancee serve")
    require("prometheus_client", "fiancee serve")
    description = describe(folder, settings, trust_task_code=trust_task_code)
    from .app import run_server

    run_server(
        folder,
        description,
        settings,
        address=address,
        trust_task_code=trust_task_code,
        ready=None if ready is None else (lambda url, ray_address: ready(url, description, ray_address)),
    )
