"""One served batch: the requests Ray Serve gathered (``@serve.batch``) stacked into one pipeline call.

:func:`load_backend` opens a pipeline folder (PyTorch) or its ONNX export (ONNX Runtime, without torch) by what the
folder holds; :func:`run_batch` stacks the checked requests (:mod:`fiancee.serving.requests`), calls the pipeline
once with one threshold per request (each routed by its own, :meth:`fiancee.pipeline.FianceePipeline.__call__`)
and splits the answer back, one PNG, route, MACs and predicted LPIPS per request. Neither needs Ray.

``backbone_only`` serves the baseline with the same engine and batching: every request on the backbone. In PyTorch
that is the backbone itself (no predictor runs, each request is charged the backbone's MACs); an ONNX export has
no separate backbone graph, so every request is forced onto the last route and its trunk segment still runs the
predictor (charged, as :class:`fiancee.runtime.OnnxPipeline` charges forced routes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .requests import GenerateRequest, InputDecl, encode_png

__all__ = ["Description", "Backend", "load_backend", "run_batch", "route_names"]


def route_names(num_routes: int) -> list[str]:
    """``exit 1`` .. ``exit E``, then ``backbone`` (the names every command prints; route indices are 0-based)."""
    return [f"exit {i + 1}" for i in range(num_routes - 1)] + ["backbone"]


@dataclass(frozen=True)
class Description:
    """What the gateway needs to check requests and count savings, without the model: plain data."""

    decls: tuple[InputDecl, ...]
    route_macs: tuple[float, ...]
    runtime: str  # "torch" or "onnx"
    backbone_only: bool
    task: str | None = None
    image_shape: tuple[int, ...] = field(default=())

    @property
    def route_names(self) -> list[str]:
        return route_names(len(self.route_macs))

    @property
    def backbone_macs(self) -> float:
        return float(self.route_macs[-1])

    def to_dict(self) -> dict:
        return {
            "inputs": [d.to_dict() for d in self.decls],
            "route_macs": list(self.route_macs),
            "route_names": self.route_names,
            "runtime": self.runtime,
            "backbone_only": self.backbone_only,
            "task": self.task,
            "image_shape": list(self.image_shape),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Description":
        return cls(
            tuple(InputDecl.from_dict(x) for x in d["inputs"]),
            tuple(float(m) for m in d["route_macs"]),
            d["runtime"],
            bool(d["backbone_only"]),
            d.get("task"),
            tuple(d.get("image_shape", ())),
        )


class Backend:
    """A loaded pipeline behind one interface: ``generate(inputs, thresholds)`` on batched float32 arrays."""

    description: Description

    def generate(self, inputs: tuple[np.ndarray, ...], thresholds: np.ndarray) -> dict:
        """``{"images": [B, C, H, W] in [-1, 1], "routes": [B], "macs": [B], "predicted": [B, E] or None}``."""
        raise NotImplementedError


class _TorchBackend(Backend):
    def __init__(self, pipe, backbone_only: bool):
        import torch

        self.torch, self.pipe, self.backbone_only = torch, pipe, backbone_only
        backbone = pipe.model.backbone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            examples = backbone.example_inputs(1)
        if pipe.task is not None:
            from ..tasks.base import declared_inputs

            specs = [(s.name, s.kind) for s in declared_inputs(pipe.task)]
        else:
            specs = [(n, None) for n in (backbone.input_names or [f"input{i}" for i in range(len(examples))])]
        if len(specs) != len(examples):
            raise ValueError(f"the task declares {len(specs)} input(s) but the backbone takes {len(examples)}")
        decls = tuple(InputDecl(n, k, tuple(int(s) for s in x.shape[1:])) for (n, k), x in zip(specs, examples))
        with torch.no_grad():
            shape = tuple(int(s) for s in backbone(*examples).shape[1:])
        self.description = Description(
            decls, tuple(float(m) for m in pipe.route_macs.tolist()), "torch", backbone_only, pipe.task_spec, shape
        )

    def generate(self, inputs, thresholds):
        torch = self.torch
        xs = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs)
        with torch.no_grad():
            if self.backbone_only:
                images = self.pipe.model.backbone(*xs)
                b, last = images.shape[0], len(self.description.route_macs) - 1
                return {
                    "images": images.numpy(),
                    "routes": np.full(b, last, dtype=np.int64),
                    "macs": np.full(b, self.description.backbone_macs),
                    "predicted": None,
                }
            out = self.pipe(*xs, max_lpips=thresholds)
        return {
            "images": out.images.numpy(),
            "routes": out.routes.numpy(),
            "macs": out.macs.numpy(),
            "predicted": out.predicted_lpips.numpy(),
        }


class _OnnxBackend(Backend):
    def __init__(self, pipe, backbone_only: bool):
        self.pipe, self.backbone_only = pipe, backbone_only
        m = pipe.manifest
        decls = tuple(InputDecl.from_dict(d) for d in m["inputs"])
        self.description = Description(
            decls,
            tuple(float(v) for v in pipe.route_macs.tolist()),
            "onnx",
            backbone_only,
            m.get("task"),
            tuple(int(s) for s in m.get("image_shape", ())),
        )

    def generate(self, inputs, thresholds):
        forced = np.full(inputs[0].shape[0], self.pipe.num_routes - 1) if self.backbone_only else None
        out = self.pipe(*inputs, max_lpips=thresholds, routes=forced)
        return {"images": out.images, "routes": out.routes, "macs": out.macs, "predicted": out.predicted_lpips}


def load_backend(
    folder: str | Path, *, threads: int | None = 1, backbone_only: bool = False, trust_task_code: bool = False
) -> Backend:
    """A pipeline folder (PyTorch on ``threads`` threads) or its ONNX export (ONNX Runtime, no torch imported), by
    what the folder holds (:func:`fiancee.upscaling.load_tile_pipeline`)."""
    from ..upscaling import load_tile_pipeline

    pipe = load_tile_pipeline(folder, threads=threads, trust_task_code=trust_task_code)
    kind = _OnnxBackend if type(pipe).__name__ == "OnnxPipeline" else _TorchBackend
    return kind(pipe, backbone_only)


def run_batch(backend: Backend, requests: list[GenerateRequest]) -> list[dict]:
    """One pipeline call for ``requests`` (checked, each with its own threshold); one answer dict per request, in
    order: ``png`` (bytes), ``route``, ``macs``, ``predicted_lpips`` (list per exit, or None), ``max_lpips``,
    ``batch_size`` (how many requests shared the call)."""
    if not requests:
        return []
    inputs = tuple(np.stack([r.inputs[i] for r in requests]) for i in range(len(requests[0].inputs)))
    thresholds = np.asarray([r.max_lpips for r in requests], dtype=np.float64)
    out = backend.generate(inputs, thresholds)
    predicted = out["predicted"]
    return [
        {
            "png": encode_png(out["images"][i]),
            "route": int(out["routes"][i]),
            "macs": float(out["macs"][i]),
            "predicted_lpips": None if predicted is None else [round(float(v), 6) for v in predicted[i]],
            "max_lpips": r.max_lpips,
            "batch_size": len(requests),
        }
        for i, r in enumerate(requests)
    ]
