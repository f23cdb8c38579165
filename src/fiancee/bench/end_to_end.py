"""End to end: the routed pipeline's milliseconds beside the backbone's, on the same inputs (the report's headline).

MACs are the paper's measure; users pay in milliseconds. For each threshold T (:data:`ROUTED_THRESHOLDS`) and each
batch size, the whole routed call ``pipe(*inputs, max_lpips=T)`` (trunk, predictor, router, mixed-exit tree) and
the backbone alone, ``pipe.model.backbone(*inputs)``, run on the same inputs, at the same batch size and threads,
interleaved (backbone, routed, backbone, routed, ...: drift of the machine hits both), after warm-up calls
interleaved the same way (:meth:`fiancee.bench.measure.Clock.interleaved`). Per row: both medians and
interquartile ranges, ``speedup = backbone_ms / routed_ms`` (from the recorded medians), the route shares the
router actually took for those inputs, ``macs_speedup`` = backbone MACs / mean MACs charged per input (route,
predictor and bank search: ``out.macs``), and ``ms_follow_macs = speedup / macs_speedup`` (1: milliseconds fall
as MACs do; the target is at least :data:`TARGET`). ``segments_ms``: the call's segments (trunk, bank search,
predictor, router, mixed-exit tree: :meth:`fiancee.pipeline.FianceePipeline.segment_calls`) each timed alone, in a
second interleaved pass; ``glue_ms`` = routed median minus their sum (checks, bookkeeping, the drift between passes).

Under ONNX Runtime (:func:`time_end_to_end_onnx`) the routed call is :class:`fiancee.runtime.OnnxPipeline` on an
exported folder and the baseline the same call with every input forced onto the backbone: it also runs the
predictor inside the trunk segment (a few MMACs), which the PyTorch baseline does not.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..core.rules import check_threshold
from .measure import Clock
from .mixed import ROUTED_THRESHOLDS

__all__ = [
    "TARGET",
    "check_thresholds",
    "end_to_end_row",
    "time_end_to_end",
    "time_end_to_end_onnx",
    "time_rewrites",
]

# The target (not a timed test): the wall-clock speed-up at least this fraction of the MACs speed-up.
TARGET = 0.85

_ROUTED = "pipe(*inputs, max_lpips=T): the whole routed call (trunk, predictor, router, mixed-exit tree)"
_ORDER = "interleaved: backbone, routed, backbone, routed, ... (warm-up calls interleaved the same way)"


def check_thresholds(thresholds: Sequence[float]) -> list[float]:
    """``thresholds``: at least one LPIPS value in (0, 1], each checked (:func:`fiancee.core.rules.check_threshold`)."""
    items = [thresholds] if isinstance(thresholds, (int, float, str)) else list(thresholds)
    if not items:
        raise ValueError(f"thresholds must list at least one LPIPS value in (0, 1], like 0.05,0.1; got {thresholds!r}")
    return [check_threshold(t, "thresholds") for t in items]


def _check(thresholds: Sequence[float], batches: Sequence[int]) -> tuple[list[float], list[int]]:
    from .args import parse_batches

    return check_thresholds(thresholds), parse_batches(batches)


def end_to_end_row(
    task: str,
    runtime: str,
    threshold: float,
    threads: int,
    routes: np.ndarray,
    macs: np.ndarray,
    backbone_macs: float,
    num_routes: int,
    backbone_t: dict,
    routed_t: dict,
) -> dict:
    """One row from one routed call's ``routes`` and ``macs`` (per input) and the two timings (:func:`time_ms`'s
    dicts): the speed-up and the ratio are computed from the medians as recorded (rounded)."""
    counts = np.bincount(np.asarray(routes, dtype=np.int64), minlength=num_routes)
    batch = int(counts.sum())
    backbone_ms, routed_ms = round(backbone_t["median_ms"], 4), round(routed_t["median_ms"], 4)
    speedup = backbone_ms / routed_ms
    mean_macs = float(np.mean(macs))
    macs_speedup = float(backbone_macs) / mean_macs
    return {
        "task": task,
        "runtime": runtime,
        "threshold": threshold,
        "batch": batch,
        "threads": threads,
        "backbone_ms": backbone_ms,
        "backbone_iqr_ms": round(backbone_t["iqr_ms"], 4),
        "routed_ms": routed_ms,
        "routed_iqr_ms": round(routed_t["iqr_ms"], 4),
        "speedup": round(speedup, 4),
        "route_counts": counts.tolist(),
        "route_shares": [round(c / batch, 4) for c in counts.tolist()],
        "macs_per_input": round(mean_macs),
        "macs_saved": round(1 - mean_macs / float(backbone_macs), 4),
        "macs_speedup": round(macs_speedup, 4),
        "ms_follow_macs": round(speedup / macs_speedup, 4),
    }


def _section(runtime: str, thresholds: list[float], backbone_macs: float, baseline: str, rows: list[dict]) -> dict:
    return {
        "runtime": runtime,
        "thresholds": thresholds,
        "routed": _ROUTED,
        "baseline": baseline,
        "order": _ORDER,
        "backbone_macs": int(backbone_macs),
        "target_ms_follow_macs": TARGET,
        "rows": rows,
    }


def time_end_to_end(
    pipe,
    inputs_on: dict[int, tuple[torch.Tensor, ...]],
    batches: Sequence[int],
    clock: Clock,
    step: Callable[[str], None] = lambda label: None,
    thresholds: Sequence[float] = ROUTED_THRESHOLDS,
    task: str | None = None,
    runtime: str = "torch",
) -> dict:
    """The report's ``end_to_end`` section under PyTorch: every threshold and batch size at torch's current threads,
    the routed call against ``pipe.model.backbone`` (module docstring). ``inputs_on[b]`` are the batch-``b`` inputs
    on ``clock.device``; the pipeline's model and predictor are moved there. ``runtime`` names the section and its
    rows (``"torch compiled"`` for a pipeline from ``for_inference(compile=True)``: its warm-up calls compile)."""
    thresholds, batches = _check(thresholds, batches)
    device = clock.device
    pipe.model.to(device)
    pipe.predictor.to(device)
    task = task or pipe.task_spec
    backbone_macs = float(pipe.route_macs[-1])
    threads = torch.get_num_threads()
    rows = []
    for t in thresholds:
        for b in batches:
            xs = inputs_on[b]
            out = pipe(*xs, max_lpips=t)  # the routes and MACs of these inputs (and one more warm-up call)
            backbone_t, routed_t = clock.interleaved(lambda: pipe.model.backbone(*xs), lambda: pipe(*xs, max_lpips=t))
            row = end_to_end_row(
                task,
                runtime,
                t,
                threads,
                out.routes.numpy(),
                out.macs.numpy(),
                backbone_macs,
                pipe.model.num_routes,
                backbone_t,
                routed_t,
            )
            # Where the routed call's time goes: each segment alone, interleaved with the others (a second pass,
            # so the headline's pair above is timed exactly as before).
            calls = pipe.segment_calls(*xs, max_lpips=t)
            timed = clock.interleaved(*calls.values())
            row["segments_ms"] = {name: round(tm["median_ms"], 4) for name, tm in zip(calls, timed)}
            row["glue_ms"] = round(row["routed_ms"] - sum(row["segments_ms"].values()), 4)
            rows.append(row)
            step(f"end to end T={t:g} batch {b}")
    return _section(runtime, thresholds, backbone_macs, "pipe.model.backbone(*inputs): the backbone alone", rows)


def time_rewrites(
    stock,
    rewritten,
    inputs_on: dict[int, tuple[torch.Tensor, ...]],
    batches: Sequence[int],
    clock: Clock,
    threshold: float = 0.1,
    step: Callable[[str], None] = lambda label: None,
) -> dict:
    """What :meth:`fiancee.pipeline.FianceePipeline.for_inference` buys: per batch size, the pipeline as loaded
    (``stock``) and its rewritten copy, each its backbone alone and its routed call at ``threshold``, the four timed
    in turns (:meth:`Clock.interleaved`) on the same inputs. ``*_gain`` = stock ms / rewritten ms (above 1 the
    rewrites are faster)."""
    threshold = check_thresholds([threshold])[0]
    for pipe in (stock, rewritten):
        pipe.model.to(clock.device)
        pipe.predictor.to(clock.device)
    rows = []
    for b in batches:
        xs = inputs_on[b]
        timed = clock.interleaved(
            lambda: stock.model.backbone(*xs),
            lambda: stock(*xs, max_lpips=threshold),
            lambda: rewritten.model.backbone(*xs),
            lambda: rewritten(*xs, max_lpips=threshold),
        )
        sb, sr, rb, rr = (round(t["median_ms"], 4) for t in timed)
        rows.append(
            {
                "batch": int(b),
                "threshold": threshold,
                "threads": torch.get_num_threads(),
                "stock_backbone_ms": sb,
                "stock_routed_ms": sr,
                "backbone_ms": rb,
                "routed_ms": rr,
                "backbone_gain": sb / rb,
                "routed_gain": sr / rr,
            }
        )
        step(f"rewrites batch {b}")
    return {
        "threshold": threshold,
        "order": "interleaved: stock backbone, stock routed, rewritten backbone, rewritten routed, ...",
        "rewrites": dict(rewritten.rewrites or {}),
        "rows": rows,
    }


def time_end_to_end_onnx(
    folder,
    inputs_on: dict[int, tuple[torch.Tensor, ...]],
    batches: Sequence[int],
    threads: Sequence[int],
    clock: Clock,
    task: str,
    step: Callable[[str], None] = lambda label: None,
    thresholds: Sequence[float] = ROUTED_THRESHOLDS,
) -> dict:
    """The ``end_to_end`` section under ONNX Runtime: the exported pipeline ``folder``
    (:class:`fiancee.runtime.OnnxPipeline`) at every thread count, threshold and batch size, against the same call
    with every input forced onto the backbone (``routes=``)."""
    from ..runtime import OnnxPipeline

    thresholds, batches = _check(thresholds, batches)
    rows = []
    backbone_macs = 0.0
    for n in threads:
        runtime = OnnxPipeline(folder, threads=n)
        backbone_macs = float(runtime.route_macs[-1])
        for t in thresholds:
            for b in batches:
                xs = tuple(x.cpu().numpy() for x in inputs_on[b])
                forced = np.full(b, runtime.num_routes - 1, dtype=np.int64)
                out = runtime(*xs, max_lpips=t)
                backbone_t, routed_t = clock.interleaved(
                    lambda: runtime(*xs, max_lpips=t, routes=forced), lambda: runtime(*xs, max_lpips=t)
                )
                rows.append(
                    end_to_end_row(
                        task,
                        "onnx",
                        t,
                        n,
                        out.routes,
                        out.macs,
                        backbone_macs,
                        runtime.num_routes,
                        backbone_t,
                        routed_t,
                    )
                )
                step(f"end to end onnx T={t:g} batch {b} threads {n}")
    baseline = (
        "the same OnnxPipeline call with every input forced onto the backbone (routes=): it also runs the predictor "
        "inside the trunk segment (a few MMACs), which the backbone alone would not"
    )
    return _section("onnx", thresholds, backbone_macs, baseline, rows)
