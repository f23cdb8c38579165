"""ONNX Runtime beside PyTorch (``fiancee bench --runtime onnx``): the same pipeline call under both runtimes, on
the same CPU in one run, per route, mixed batch, batch size and thread count."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..timing import load_average
from .args import check_backbone, parse_batches, positive
from .end_to_end import check_thresholds, time_end_to_end_onnx
from .measure import Clock, Steps
from .mixed import ROUTED_THRESHOLDS, ROUTING_INPUTS, bench_mixes, mix_routes, mixes_from, routed_mixes
from .overhead import make_predictor
from .report import onnx_report
from .setup import load_pipeline, make_setup

__all__ = ["run_onnx_bench"]


@torch.no_grad()
def run_onnx_bench(
    backbone: str,
    *,
    size: str | None = None,
    scale: str | float | Fraction | None = None,
    min_channels: int | None = None,
    batches: str | Sequence[int] = (1, 32),
    threads: Sequence[int] = (1, 2),
    reps: int = 20,
    warmup: int = 5,
    seed: int = 0,
    predictor: str | None = None,
    opset: int = 17,
    progress: bool = True,
    pipeline=None,
    thresholds: Sequence[float] = ROUTED_THRESHOLDS,
) -> dict:
    """Milliseconds of the same pipeline under PyTorch and under ONNX Runtime (:mod:`fiancee.runtime`), on the
    same CPU in one run: every route (all inputs forced onto it) and the mixes run as the mixed-exit tree (uniform,
    and with ``pipeline`` the route shares its router chooses, as :func:`run_bench`), at every batch size and
    thread count. Both sides run the whole pipeline call (the trunk
    once, the predictor, the route or the tree), so ``torch_ms / onnx_ms`` compares like with like; above 1
    ONNX Runtime is faster. The pipeline is the one :func:`run_bench` times (its backbone and exits, an
    untrained predictor of the default arch, no bank), exported with :func:`fiancee.export.export_pipeline`
    to a temporary folder; every row also records the largest |difference| of the images.

    With ``pipeline`` the report leads with ``end_to_end`` (:func:`fiancee.bench.end_to_end.time_end_to_end_onnx`):
    the pipeline itself exported, its routed call against the same call forced onto the backbone, interleaved, per
    threshold of ``thresholds``, batch size and thread count; without one it is None.
    """
    import tempfile

    from ..export import export_pipeline
    from ..extras import require
    from ..pipeline import FianceePipeline
    from ..routing import ThresholdRouter

    require("onnxruntime", "fiancee bench --runtime onnx")
    t_start = time.perf_counter()
    check_backbone(backbone)
    batch_list = parse_batches(batches)
    thread_list = [positive(t, "threads") for t in threads]
    if not thread_list:
        raise ValueError("threads must list at least one thread count, like 1,2")
    clock = Clock(torch.device("cpu"), positive(reps, "reps"), positive(warmup, "warmup", minimum=0))
    seed = positive(seed, "seed", minimum=0)
    thresholds = check_thresholds(thresholds)
    if pipeline is not None:
        pipeline = load_pipeline(pipeline, backbone, scale, min_channels)
    load_start = load_average()
    setup = make_setup(backbone, size, scale, min_channels, seed, pipeline)
    n_routed = None if pipeline is None else max(ROUTING_INPUTS, batch_list[-1])
    routed = None if pipeline is None else routed_mixes(pipeline, setup.inputs(n_routed), thresholds)
    model = setup.model.to(clock.device).eval()
    inputs_on = {b: tuple(x.float() for x in setup.inputs(b)) for b in batch_list}
    pred, _ = make_predictor(
        model, predictor, inputs_on[batch_list[0]], seed, setup.input_kinds, f"backbone {backbone!r}"
    )
    pipe = FianceePipeline(None, model, pred, ThresholdRouter(model.route_macs()), task_spec=backbone)
    mixes = bench_mixes(model.num_routes, routed, single_routes=False)  # single routes are cases of their own
    with tempfile.TemporaryDirectory(prefix="fiancee-onnx-bench-") as tmp:
        export_pipeline(pipe, Path(tmp) / "onnx", opset=opset)
        if pipeline is not None:  # the pipeline itself (its predictor and router), for the end-to-end headline
            export_pipeline(pipeline, Path(tmp) / "pipeline", opset=opset)
        e2e_steps = 0 if pipeline is None else len(thread_list) * len(thresholds) * len(batch_list)
        total = len(thread_list) * len(batch_list) * (model.num_routes + len(mixes)) + e2e_steps
        with Steps(total, f"bench onnx {backbone}", progress) as step:
            e2e = None
            if pipeline is not None:
                e2e = time_end_to_end_onnx(
                    Path(tmp) / "pipeline", inputs_on, batch_list, thread_list, clock, backbone, step, thresholds
                )
            rows = _time_runtimes(
                pipe, Path(tmp) / "onnx", thread_list, batch_list, inputs_on, mixes, seed, clock, step
            )
    report = onnx_report(
        backbone,
        setup,
        model,
        batch_list,
        thread_list,
        clock.reps,
        clock.warmup,
        seed,
        opset,
        pred,
        mixes,
        load_start,
        rows,
        t_start,
        e2e,
    )
    report["settings"]["mixes_from"] = mixes_from(n_routed, thresholds)
    return report


def _time_runtimes(
    pipe,
    folder: Path,
    threads: list[int],
    batches: list[int],
    inputs_on: dict[int, tuple[torch.Tensor, ...]],
    mixes: list[tuple[str, tuple[float, ...]]],
    seed: int,
    clock: Clock,
    step: Steps,
) -> list[dict]:
    """Every case at every thread count and batch size (torch's threads restored after)."""
    from ..runtime import OnnxPipeline

    rows = []
    old_threads = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            runtime = OnnxPipeline(folder, threads=t)
            for b in batches:
                for key, label, routes in _cases(pipe.model, b, mixes, seed):
                    rows.append(_compare(pipe, runtime, inputs_on[b], routes, key, label, t, clock))
                    step(f"{key} batch {b} threads {t}")
    finally:
        torch.set_num_threads(old_threads)
    return rows


def _cases(model, b: int, mixes: list[tuple[str, tuple[float, ...]]], seed: int) -> list[tuple[str, str, torch.Tensor]]:
    """``(key, label, routes)`` at batch ``b``: every route forced on all inputs, then every mix as the tree."""
    num_routes = model.num_routes
    cases = [
        (
            f"route {r}",
            "backbone" if r == num_routes - 1 else f"exit after stage {model.attach_after[r]}",
            torch.full((b,), r, dtype=torch.int64),
        )
        for r in range(num_routes)
    ]
    cases += [(f"mixed {name}", f"mixed-exit tree, {name} mix", mix_routes(shares, b, seed)) for name, shares in mixes]
    return cases


def _compare(
    pipe, runtime, xs: tuple[torch.Tensor, ...], routes: torch.Tensor, key: str, label: str, threads: int, clock: Clock
) -> dict:
    """One case under both runtimes: images and routes compared once, then each side timed."""
    arrays = tuple(x.numpy() for x in xs)
    ex = routes.numpy()
    ref = pipe(*xs, max_lpips=0.1, routes=routes)
    got = runtime(*arrays, max_lpips=0.1, routes=ex)
    torch_t = clock(lambda: pipe(*xs, max_lpips=0.1, routes=routes))
    onnx_t = clock(lambda: runtime(*arrays, max_lpips=0.1, routes=ex))
    return {
        "case": key,
        "name": label,
        "batch": int(routes.numel()),
        "threads": threads,
        "counts": np.bincount(ex, minlength=pipe.model.num_routes).tolist(),
        "torch_ms": round(torch_t["median_ms"], 4),
        "onnx_ms": round(onnx_t["median_ms"], 4),
        "torch_iqr_ms": round(torch_t["iqr_ms"], 4),
        "onnx_iqr_ms": round(onnx_t["iqr_ms"], 4),
        "speedup": round(torch_t["median_ms"] / onnx_t["median_ms"], 4),
        "max_abs_diff": float(np.abs(got.images - ref.images.numpy()).max()),
        "routes_equal": bool(np.array_equal(got.routes, ref.routes.numpy())),
    }
