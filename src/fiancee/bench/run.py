"""``run_bench``: the arguments checked, then one function per phase (:mod:`.routes`, :mod:`.mixed`,
:mod:`.overhead`, :mod:`.options`) on one setup (:mod:`.setup`), and the report laid out (:mod:`.report`)."""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Sequence

import torch

from ..timing import load_average
from .args import check_backbone, check_bank, parse_batches, parse_device, parse_options, positive
from .end_to_end import check_thresholds, time_end_to_end, time_rewrites
from .layers import time_layers
from .measure import Clock, Steps, cpu_threads
from .mixed import ROUTED_THRESHOLDS, ROUTING_INPUTS, bench_mixes, mixes_from, routed_mixes, time_mixes
from .options import time_options, variants
from .overhead import build_bank, make_predictor, time_overhead
from .report import bench_report
from .routes import time_routes
from .setup import load_pipeline, make_setup

__all__ = ["run_bench"]


@torch.no_grad()
def run_bench(
    backbone: str,
    *,
    size: str | None = None,
    scale: str | float | Fraction | None = None,
    min_channels: int | None = None,
    device: str | torch.device = "cpu",
    batches: str | Sequence[int] = (1, 8, 32),
    reps: int = 20,
    warmup: int = 5,
    threads: int | None = None,
    options: str | Sequence[str] | None = None,
    seed: int = 0,
    bank_inputs: int | None = None,
    predictor: str | None = None,
    progress: bool = True,
    bank: str = "auto",
    pipeline=None,
    thresholds: Sequence[float] = ROUTED_THRESHOLDS,
) -> dict:
    """Measure the routes, the mixed-exit tree, the predictor + bank and the speed options of
    ``backbone`` (a reference architecture of :data:`REFERENCE_BACKBONES`, or a task spec); returns the JSON-ready
    report (see the package docstring and BENCHMARKS.md for every field).

    ``size`` / ``scale`` / ``min_channels`` default to :data:`GEOMETRY` (oasis, g2d) or the task's
    defaults (faces, fashion). ``batches`` and ``options`` take lists or comma-separated text.
    ``threads`` fixes torch's and FAISS's CPU threads for the run (None: leave them).
    ``bank_inputs`` is the bank's population (default: faces 1024 inputs, fashion 250 label maps x 8
    noises, 16 random inputs for the reference backbones); ``predictor`` the predictor's arch
    (default: what the library trains for these inputs). ``bank``: ``auto`` measures a retrieval only
    when the pipeline this backbone ships with searches a bank (a task whose shipped exits were trained
    without one: no; the reference backbones and tasks without shipped exits: their default bank),
    ``on`` / ``off`` force it. ``pipeline`` (a pipeline folder or a ``FianceePipeline`` of the task ``backbone``
    names): its exits are timed, and the mixed tree on the route shares its router chooses for the bench's test
    inputs (:func:`fiancee.bench.mixed.routed_mixes`) besides uniform; without one, uniform and every single route.
    With a pipeline the report leads with ``end_to_end`` (:mod:`.end_to_end`): the whole routed call
    ``pipeline(*inputs, max_lpips=T)`` against its backbone on the same inputs, interleaved, per threshold of
    ``thresholds`` (LPIPS values in (0, 1]; also the routed mixes') and batch size; without one it is None.
    Bad arguments raise ``ValueError`` naming what was expected and what came.
    """
    from ..exits import parse_scale

    t_start = time.perf_counter()
    check_backbone(backbone)
    dev = parse_device(device)
    batch_list = parse_batches(batches)
    reps = positive(reps, "reps")
    warmup = positive(warmup, "warmup", minimum=0)
    seed = positive(seed, "seed", minimum=0)
    if threads is not None:
        threads = positive(threads, "threads")
    if bank_inputs is not None:
        bank_inputs = positive(bank_inputs, "bank inputs")
    if scale is not None:
        parse_scale(scale)
    if min_channels is not None:
        min_channels = positive(min_channels, "min channels")
    opts = parse_options(options, dev)
    check_bank(bank, bank_inputs)
    thresholds = check_thresholds(thresholds)
    if pipeline is not None:
        # Both sides of every timing rewritten alike (the backbone is the pipeline's own): see fiancee.rewrites.
        # The pipeline as loaded stays, to time what the rewrites buy (rewrites section).
        stock = load_pipeline(pipeline, backbone, scale, min_channels)
        pipeline = stock.for_inference()
    else:
        stock = None

    with cpu_threads(threads):
        report = _run(
            backbone,
            size,
            scale,
            min_channels,
            Clock(dev, reps, warmup),
            batch_list,
            opts,
            seed,
            bank_inputs,
            predictor,
            progress,
            bank,
            pipeline,
            thresholds,
            stock,
        )
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    return report


def _time_pipeline(pipeline, stock, compiled: bool, inputs_on, batches, clock, step, thresholds, name) -> tuple:
    """The pipeline's sections: ``end_to_end`` (rewritten), ``rewrites`` (against ``stock``, the pipeline as
    loaded), ``layers`` (:func:`fiancee.bench.layers.time_layers` on the rewritten model) and, when ``compiled``,
    ``end_to_end_compiled`` (else None)."""
    e2e = time_end_to_end(pipeline, inputs_on, batches, clock, step, thresholds, name)
    gains = time_rewrites(stock, pipeline, inputs_on, batches, clock, 0.1, step)
    layers = time_layers(pipeline.model, inputs_on, batches, clock, step=step)
    e2e_compiled = None
    if compiled:
        with torch.no_grad():
            fast = pipeline.for_inference(compile=True)
            e2e_compiled = time_end_to_end(
                fast, inputs_on, batches, clock, step, thresholds, name, runtime="torch compiled"
            )
    return e2e, gains, layers, e2e_compiled


def _run(
    name: str,
    size,
    scale,
    min_channels,
    clock: Clock,
    batches: list[int],
    opts: list[str],
    seed: int,
    bank_n: int | None,
    predictor_arch: str | None,
    progress: bool,
    bank_choice: str,
    pipeline,
    thresholds: list[float],
    stock,
) -> dict:
    """The setup, the predictor and the bank, then the phases in order: routes, mixed, end to end (with a
    pipeline), overhead, options."""
    device = clock.device
    load_start = load_average()
    setup = make_setup(name, size, scale, min_channels, seed, pipeline)
    # Routed where the pipeline was loaded (its predictor stays there), before its exits move to the bench's device.
    n_routed = None if pipeline is None else max(ROUTING_INPUTS, batches[-1])
    routed = None if pipeline is None else routed_mixes(pipeline, setup.inputs(n_routed), thresholds)
    model = setup.model.to(device).eval()
    inputs_on = {b: tuple(x.to(device) for x in setup.inputs(b)) for b in batches}
    ratio_batch = 1 if 1 in batches else batches[0]
    mixes = bench_mixes(model.num_routes, routed)
    groups = variants(opts)
    # Predictor and bank first: a predictor arch that cannot read these inputs fails before any timing.
    predictor, xs = make_predictor(
        model, predictor_arch, inputs_on[ratio_batch], seed, setup.input_kinds, f"backbone {name!r}"
    )
    with_bank = setup.ships_bank if bank_choice == "auto" else bank_choice == "on"
    bank_n = (setup.default_bank_inputs if bank_n is None else bank_n) if with_bank else None
    bank, spec = build_bank(setup, bank_n, device, progress) if with_bank else (None, None)

    mix_steps = len(mixes) * sum(b >= 2 for b in batches)
    # With a pipeline and --opt compile, the whole routed call is timed compiled as well (end_to_end_compiled).
    compiled = pipeline is not None and "compile" in opts
    # End to end per threshold and batch (again compiled), then per batch the rewrites and two routes' layers.
    e2e_steps = 0 if pipeline is None else len(thresholds) * len(batches) * (1 + compiled) + 3 * len(batches)
    total = len(batches) * model.num_routes * (1 + len(groups)) + mix_steps + e2e_steps + 1
    with Steps(total, f"bench {name}", progress) as step:
        routes, route_ms = time_routes(model, batches, ratio_batch, inputs_on, clock, step)
        mixed = time_mixes(model, mixes, batches, inputs_on, route_ms, seed, clock, step)
        e2e, gains, layers, e2e_compiled = (
            (None, None, None, None)
            if pipeline is None
            else _time_pipeline(pipeline, stock, compiled, inputs_on, batches, clock, step, thresholds, name)
        )
        overhead, overhead_fraction = time_overhead(
            model, predictor, xs, bank, spec, setup, batches, ratio_batch, inputs_on, route_ms, bank_choice, clock
        )
        step("predictor + bank")
        options = time_options(model, groups, batches, inputs_on, route_ms, clock, step)
    phases = {
        "end_to_end": e2e,
        "routes": routes,
        "mixed": mixed,
        "overhead": overhead,
        "overhead_fraction": overhead_fraction,
        "options": options,
    }
    report = bench_report(
        name,
        setup,
        model,
        device,
        batches,
        clock.reps,
        clock.warmup,
        seed,
        opts,
        ratio_batch,
        predictor,
        bank,
        bank_n,
        bank_choice,
        load_start,
        phases,
    )
    report["settings"]["mixes_from"] = mixes_from(n_routed, thresholds)
    report["settings"]["rewrites"] = None if pipeline is None else dict(pipeline.rewrites)
    if pipeline is not None:
        report["rewrites"], report["layers"] = gains, layers
    if compiled:
        report["end_to_end_compiled"] = e2e_compiled
    return report
