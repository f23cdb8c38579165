"""Speed options (``--opt``): ways to make a route faster without changing its image beyond a tolerance.

channels_last, bf16 / fp16 autocast, torch.compile and CUDA graphs, each alone and all together: the speedup
against the eager fp32 route timed by :mod:`.routes`, the max / mean absolute difference of the image, and a
verdict (helped = at least :data:`FASTER` times faster and within :data:`TOLERANCES`), per route and batch.
"""

from __future__ import annotations

import copy
import time
from typing import Callable, Sequence

import torch

from .measure import Clock

__all__ = ["OPTIONS", "CUDA_ONLY", "TOLERANCES", "FASTER", "variants", "time_options"]

OPTIONS = ("channels_last", "bf16", "fp16", "compile", "cudagraphs")
CUDA_ONLY = {
    "fp16": "fp16 autocast is for GPUs (CPU autocast computes in bf16)",
    "cudagraphs": "CUDA graphs record and replay GPU kernels",
}
# Output images lie in [-1, 1] (one 8-bit grey level = 2/255 = 0.0078). fp32 options reorder the
# same arithmetic (and on GPUs eager fp32 convolutions already round to TF32), so they must stay
# well below a grey level on average; bf16 / fp16 keep 8 / 11 mantissa bits, so about one grey
# level on average and a few on the worst pixel: far below anything LPIPS <= 0.1 would notice.
TOLERANCES = {
    "float32": {"max_abs": 1e-2, "mean_abs": 1e-3},
    "reduced": {"max_abs": 1e-1, "mean_abs": 1e-2},
}
# "Faster" means by more than the run-to-run wobble of a median on a shared machine (a few percent).
FASTER = 1.05


def variants(opts: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """``(label, options)`` of every variant timed: each option alone, then all together (when several)."""
    return [(o, (o,)) for o in opts] + ([("+".join(opts), tuple(opts))] if len(opts) > 1 else [])


def time_options(
    model,
    groups: list[tuple[str, tuple[str, ...]]],
    batches: list[int],
    inputs_on: dict[int, tuple[torch.Tensor, ...]],
    route_ms: dict[int, list[dict]],
    clock: Clock,
    step: Callable[[str], None],
) -> list[dict]:
    """The options phase: every variant of :func:`variants` against the eager fp32 routes measured before."""
    return [_time_variant(model, label, group, batches, inputs_on, route_ms, clock, step) for label, group in groups]


def _time_variant(
    model,
    label: str,
    group: tuple[str, ...],
    batches: list[int],
    inputs_on: dict[int, tuple[torch.Tensor, ...]],
    route_ms: dict[int, list[dict]],
    clock: Clock,
    step: Callable[[str], None],
) -> dict:
    tol = TOLERANCES["reduced" if {"bf16", "fp16"} & set(group) else "float32"]
    entry = {"name": label, "options": list(group), "tolerance": tol, "results": [], "error": None}
    try:
        variant_model = model
        if "channels_last" in group:
            variant_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        for b in batches:
            for r in range(model.num_routes):
                ref = model.route(*inputs_on[b], route=r).float()
                fn, prepare_s = _option_runner(variant_model, r, inputs_on[b], group, clock.device)
                entry["results"].append(_result(fn, ref, b, r, route_ms[b][r]["median_ms"], prepare_s, tol, clock))
                step(f"{label} route {r} batch {b}")
    except Exception as e:  # an option the installed stack cannot run is a finding, not a crash
        entry["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    finally:
        if "compile" in group:
            torch.compiler.reset()
    helped = sum(res["verdict"] == "helped" for res in entry["results"])
    entry["summary"] = f"helped on {helped} of {len(entry['results'])} (route, batch) pairs"
    return entry


def _result(
    fn: Callable[[], torch.Tensor],
    ref: torch.Tensor,
    b: int,
    r: int,
    eager_ms: float,
    prepare_s: float,
    tol: dict,
    clock: Clock,
) -> dict:
    """One (batch, route) of a variant: its image against the eager one, its time against the eager time."""
    out = fn().float()
    diff = (out - ref).abs()
    t = clock(fn)["median_ms"]
    speedup = eager_ms / t
    within, verdict = _verdict(speedup, float(diff.max()), float(diff.mean()), tol)
    return {
        "batch": b,
        "route": r,
        "eager_ms": round(eager_ms, 4),
        "ms": round(t, 4),
        "speedup": round(speedup, 4),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "within_tolerance": within,
        "verdict": verdict,
        "prepare_s": round(prepare_s, 2),
    }


def _verdict(speedup: float, max_abs: float, mean_abs: float, tol: dict) -> tuple[bool, str]:
    within = max_abs <= tol["max_abs"] and mean_abs <= tol["mean_abs"]
    if not within:
        return within, "out of tolerance"
    return within, "helped" if speedup >= FASTER else "no faster"


def _cuda_graph(call: Callable, inputs: tuple[torch.Tensor, ...]) -> Callable:
    """Capture ``call(*inputs)`` once (fixed shapes and addresses) and return its replay."""
    static = tuple(x.clone() for x in inputs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up off the default stream, as capture requires
        for _ in range(3):
            call(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call(*static)

    def replay(*_):
        graph.replay()
        return out

    return replay


def _option_runner(
    model, route: int, inputs: tuple[torch.Tensor, ...], opts: Sequence[str], device: torch.device
) -> tuple[Callable[[], torch.Tensor], float]:
    """``fn() -> image`` of one route with ``opts`` applied, and the seconds spent preparing it
    (compilation, graph capture), which the timing leaves out."""
    t0 = time.perf_counter()
    if "channels_last" in opts:
        inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)
    dtype = torch.bfloat16 if "bf16" in opts else torch.float16 if "fp16" in opts else None
    # Autocast's cache of cast weights is freed when the context exits, under a captured graph that
    # still reads it: capture needs the cache off (torch.cuda.make_graphed_callables asks the same).
    cache = "cudagraphs" not in opts
    # Input checks are host syncs, which a captured graph cannot contain; the eager reference call
    # checked these very tensors.
    check = "cudagraphs" not in opts

    def call(*xs):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=cache):
            return model.route(*xs, route=route, check=check)

    fn = call
    if "compile" in opts:
        # One compiled function per (route, batch): a fresh cache each time, so no earlier
        # compilation counts against dynamo's recompile limit (past it, calls fall back to eager).
        torch.compiler.reset()
        fn = torch.compile(call, dynamic=False, mode="reduce-overhead" if "cudagraphs" in opts else None)
        fn(*inputs)  # compile now, outside the timing
    elif "cudagraphs" in opts:
        fn = _cuda_graph(call, inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (lambda: fn(*inputs)), time.perf_counter() - t0
