"""Milliseconds next to MACs: routes, the mixed-exit tree, the predictor and the bank (``fiancee bench``).

MACs are a proxy; users pay in milliseconds. :func:`run_bench` measures, on one device
(definitions in BENCHMARKS.md):

- **routes**: median wall time of ``ExitGenerator.route(*inputs, exit=r)`` for every route
  (shallowest exit first, the backbone last) at every batch size, over ``reps`` timed calls after
  ``warmup`` untimed ones (:func:`time_ms`), next to its MACs (:meth:`ExitGenerator.route_macs`).
  ``latency_ratio = latency(route) / latency(backbone)`` sits beside
  ``macs_ratio = MACs(route) / MACs(backbone)``: where latency follows MACs the two agree.
- **mixed**: batches whose samples take different routes (seeded mixes: uniform over the routes,
  and skewed like the faces demo's exit shares) run as the mixed-exit tree
  (:meth:`ExitGenerator.mixed`), against (a) the *ideal*, every sample paying its own route's
  per-sample cost measured alone at the same batch size, ``sum_i t(r_i, B) / B``; (b) the whole batch
  run to the *deepest* route any sample needs, ``t(max_i r_i, B)``; (c) the samples *grouped* by route,
  each group run on its own with ``route`` (stages shared by several routes recomputed per group).
  Ratios are ``other / tree``: above 1 the tree is faster.
- **overhead**: the quality predictor's forward (as the pipeline runs it) plus the bank's retrieval
  (:func:`fiancee.bank.retrieval_latency`, only when the backbone's pipeline has a bank: ``bank=auto``)
  as a fraction of the smallest route, at the smallest and the largest batch size (``overhead_fraction``
  is the larger of the two). With the
  fused trunk (``FianceePipeline`` runs the stem and stages up to the key stage once, and the route
  continues from there: :meth:`ExitGenerator.mixed_from`) both read key-stage features every route
  computes anyway, so only the predictor's head and the retrieval are overhead (a predictor reading raw
  inputs, ``mlp`` / ``conv``, is timed on them).
- **options**: ways to make a route faster without changing its image beyond a tolerance
  (channels_last, bf16 / fp16 autocast, torch.compile, CUDA graphs), each alone and all together:
  speedup vs eager fp32 and the max / mean absolute difference of the image, per route and batch.

Weights: a task (``--backbone`` a task spec) runs its committed exits when it has them at the asked
geometry (``Task.pretrained_exits``: faces), else its backbone with untrained exits at the task's
defaults (fashion, a user's task); ``oasis`` and ``g2d`` are the reference architectures with random
weights. The predictor and the bank follow the task's declarations (``Task.inputs``, ``Task.bank_defaults``).
The predictor is untrained and the bank is built from a small population: latency depends on the
shapes, not on the weights' values (documented in every report's ``notes``).
"""

from __future__ import annotations

import copy
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np
import torch

from .timing import cpu_name, load_average, time_ms

__all__ = ["REFERENCE_BACKBONES", "OPTIONS", "GEOMETRY", "DEMO_SHARES", "TOLERANCES", "FASTER", "time_ms", "mix_exits", "skewed_shares",
           "run_bench", "format_table", "run_onnx_bench", "format_onnx_table"]

FORMAT_VERSION = 1
# The reference architectures (fiancee.backbones) benchmarked with random weights; any other name is
# a task spec (a built-in task, package.module:attr naming a Task, an entry point of fiancee.tasks).
REFERENCE_BACKBONES = ("oasis", "g2d")
OPTIONS = ("channels_last", "bf16", "fp16", "compile", "cudagraphs")
_CUDA_ONLY = {
    "fp16": "fp16 autocast is for GPUs (CPU autocast computes in bf16)",
    "cudagraphs": "CUDA graphs record and replay GPU kernels",
}
# Reference backbones: the paper's geometry (Table 1: OASIS SF 1/4, floor 64 channels; Table 2: G2D
# SF 1/3, floor 24). The tiny configurations are only 4 to 64 channels wide, where those floors
# would make every branch a full copy of the backbone (every MACs ratio 1), so they keep the scale
# factors with a floor of 4.
GEOMETRY: dict[tuple[str, str], tuple[str, int]] = {
    ("oasis", "paper"): ("1/4", 64), ("oasis", "tiny"): ("1/4", 4),
    ("g2d", "paper"): ("1/3", 24), ("g2d", "tiny"): ("1/3", 4),
}
# Exit shares of the faces demo's calibrated router at LPIPS <= 0.1 (README), shallowest exit
# first, the backbone last: the skewed mix (resampled for other route counts, :func:`skewed_shares`).
DEMO_SHARES = (0.01, 0.17, 0.47, 0.35)
# What the reference backbones take and the bank they would use (a task declares these itself:
# Task.inputs, Task.bank_defaults). OASIS: a one-hot label map and a noise vector, patches searched per
# semantic class (S1.1.1); G2D: a feature volume kept as it is, one key per image (MegaPortraits, S1.2.1).
_REFERENCE_DECLARATIONS = {
    "oasis": {"inputs": ("label_map", "noise"), "bank": {"mode": "patch", "grid": (4, 4), "max_per_class": 512}},
    "g2d": {"inputs": ("condition",), "bank": {"mode": "global", "grid": (4, 4), "max_per_class": 1024}},
}
# Population of the reference backbones' banks (random inputs): small, because every input runs
# the whole backbone (319 GMACs for paper-scale OASIS). Retrieval time grows with the entries
# searched (flat FAISS index), so the report states the count.
_REFERENCE_BANK_INPUTS = 16
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


# ----------------------------------------------------------------------------------------------
# Timing and mixes


def skewed_shares(num_routes: int) -> tuple[float, ...]:
    """:data:`DEMO_SHARES` for ``num_routes`` routes: the demo's cumulative share curve over the
    route position in [0, 1], read at ``num_routes`` equal steps (the same curve for any count)."""
    demo = np.asarray(DEMO_SHARES, dtype=float)
    if num_routes == len(demo):
        return tuple(float(s) for s in demo)
    cdf = np.interp(np.linspace(0, 1, num_routes + 1), np.linspace(0, 1, len(demo) + 1), np.r_[0, np.cumsum(demo)])
    return tuple(float(s) for s in np.diff(cdf))


def mix_exits(shares: Sequence[float], batch: int, seed: int) -> torch.Tensor:
    """``[batch]`` route indices holding the shares as closely as whole samples allow (largest
    remainders), in a seeded random order."""
    if batch < 1 or not shares or min(shares) < 0 or sum(shares) <= 0:
        raise ValueError(f"a mix needs a positive batch and non-negative shares; got batch={batch}, shares={shares}")
    p = np.asarray(shares, dtype=float) / float(sum(shares))
    raw = p * batch
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[: batch - int(counts.sum())]] += 1
    exits = torch.repeat_interleave(torch.arange(len(p)), torch.from_numpy(counts))
    return exits[torch.randperm(batch, generator=torch.Generator().manual_seed(seed))]


def _grouped(model, inputs: tuple[torch.Tensor, ...], exits: torch.Tensor) -> torch.Tensor:
    """The alternative to the tree: every route's samples as their own batch through ``route``."""
    out = None
    for r in range(model.num_routes):
        rows = (exits == r).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        images = model.route(*(x.index_select(0, rows) for x in inputs), exit=r)
        if out is None:
            out = images.new_empty((exits.numel(), *images.shape[1:]))
        out.index_copy_(0, rows, images)
    return out


# ----------------------------------------------------------------------------------------------
# Arguments


def _parse_batches(batches: str | Sequence[int]) -> list[int]:
    items = batches.split(",") if isinstance(batches, str) else list(batches)
    out = []
    for item in items:
        text = str(item).strip()
        if not text.lstrip("-").isdigit() or int(text) < 1:
            raise ValueError(f"batch sizes must be positive integers separated by commas, like 1,8,32; got {batches!r}")
        out.append(int(text))
    if not out:
        raise ValueError(f"give at least one batch size, like 1,8,32; got {batches!r}")
    return sorted(set(out))


def _parse_options(options: str | Sequence[str] | None, device: torch.device) -> list[str]:
    if options is None:
        return []
    items = options.split(",") if isinstance(options, str) else list(options)
    out = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if item not in OPTIONS:
            raise ValueError(f"unknown option {item!r}; expected some of {', '.join(OPTIONS)} (comma-separated)")
        if item in _CUDA_ONLY and device.type != "cuda":
            raise ValueError(f"option {item!r} needs a CUDA device ({_CUDA_ONLY[item]}); --device is {device}")
        if item not in out:
            out.append(item)
    if "bf16" in out and "fp16" in out:
        raise ValueError("options bf16 and fp16 exclude each other (one autocast dtype); choose one")
    if "compile" in out and device.type == "cpu" and not _cpp_compiler():
        raise ValueError("option 'compile' on cpu needs a C++ compiler for TorchInductor (g++, clang++ or $CXX); none found")
    return out


def _cpp_compiler() -> str | None:
    return os.environ.get("CXX") or next((c for c in ("g++", "clang++", "c++") if shutil.which(c)), None)


def _parse_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be cpu or cuda (or cuda:N); got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda (or cuda:N); got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked, but CUDA is not available to this torch ({torch.__version__})")
    return dev


def _positive(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}; got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# What is measured


@dataclass
class _Setup:
    model: object  # ExitGenerator, eval mode, on the device
    inputs: Callable[[int], tuple[torch.Tensor, ...]]  # batch size -> CPU inputs (seeded)
    bank_inputs: Callable[[int], tuple[tuple[torch.Tensor, ...], dict]]  # n -> (inputs, population)
    default_bank_inputs: int
    settings: dict
    input_kinds: list[str]  # declared kind of every input (label_map / noise / condition)
    bank_defaults: dict  # mode, grid, max_per_class of the bank the library would build
    notes: list[str] = field(default_factory=list)
    # Whether the pipeline this backbone ships with searches a bank: False for a task whose shipped exits
    # were trained without one (then no input pays a retrieval); True for the reference settings (the
    # paper's) and for tasks without shipped exits (their declared default).
    ships_bank: bool = True


def _reference_setup(name: str, size: str | None, scale, min_channels: int | None, seed: int) -> _Setup:
    from .backbones import build_backbone
    from .exits import ExitGenerator

    size = "paper" if size is None else size
    if size not in ("paper", "tiny"):
        raise ValueError(f"size must be 'paper' or 'tiny' for {name}; got {size!r}")
    d_scale, d_min = GEOMETRY[(name, size)]
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        backbone = build_backbone(name, size)
        model = ExitGenerator(backbone, backbone.config.exits, d_scale if scale is None else scale,
                              d_min if min_channels is None else min_channels)

    def draw(n: int, stream: int) -> tuple[torch.Tensor, ...]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + stream)
            return backbone.example_inputs(n)

    def bank_inputs(n: int):
        return draw(n, 10**9), {"inputs": n, "kind": "random example inputs", "seed": seed}

    declared = _REFERENCE_DECLARATIONS[name]
    return _Setup(model, lambda b: draw(b, 0), bank_inputs, _REFERENCE_BANK_INPUTS,
                  {"size": size, "exit_weights": "random", "backbone_weights": "random"}, list(declared["inputs"]),
                  declared["bank"], [f"{name} ({size}): reference architecture with random weights and random example inputs"])


def _task_setup(spec, size: str | None, scale, min_channels: int | None, seed: int) -> _Setup:
    from .exits import parse_scale
    from .tasks.base import declared_inputs
    from .tasks.registry import resolve_task
    from .train.bank import bank_inputs
    from .train.exits import build_exits, load_exits
    from .train.run import RunDir

    task = resolve_task(spec)
    name = task.name
    if size is not None:
        raise ValueError(f"size (paper | tiny) applies to the reference backbones oasis and g2d; {name} has its "
                         f"own pretrained backbone (got size={size!r})")
    scale = task.default_scale if scale is None else scale
    min_channels = task.default_min_channels if min_channels is None else min_channels
    notes = []
    model = None
    ships_bank = True
    run = task.pretrained_exits()  # the task's committed exits, when they have the asked geometry
    if run is not None and (run / "latest.json").is_file():
        config = RunDir(run).read_config()
        if parse_scale(config["scale"]) == parse_scale(scale) and int(config["min_channels"]) == int(min_channels):
            _, model = load_exits(run)
            ships_bank = config.get("bank") is not None
            weights = f"the exits shipped with the package ({run.parent.name}/{run.name}, {config.get('steps')} steps)"
    if model is None:
        model = build_exits(task, task.load_backbone(), scale, min_channels)
        weights = "untrained (latency does not depend on the weights' values)"
    notes.append(f"{name}: the task's pretrained backbone; exits {weights}")
    d = task.bank_defaults
    # global mode: as many inputs as the default bank keeps (farthest-point sampling then keeps them
    # all, so the bank has the default's size at a quarter of the build); patch mode: the default population.
    default_n = d["max_per_class"] if d["mode"] == "global" else d["n"]

    def draw_bank(n: int):
        return bank_inputs(task, n, d["noises"], seed)

    return _Setup(model, lambda b: task.sample_inputs(b, seed, "test"), draw_bank, default_n,
                  {"size": None, "exit_weights": weights, "backbone_weights": "pretrained"},
                  [i.kind for i in declared_inputs(task)], d, notes, ships_bank)


def _build_bank(setup: _Setup, n: int, device: torch.device, progress: bool = False):
    """The bank the library would build for this backbone (mode, grid, cap per class, key and value
    stages as :func:`fiancee.train.bank.build_bank` chooses them), from ``n`` inputs."""
    from .bank import BankSpec, build_feature_bank

    d = setup.bank_defaults
    model = setup.model
    spec = BankSpec(mode=d["mode"], key_stage=model.key_stage,
                    value_stage=max(model.key_stage, model.backbone.num_stages // 2), grid=d["grid"],
                    max_per_class=d["max_per_class"])
    inputs, population = setup.bank_inputs(n)
    # The bank searches per class of the declared label map, if there is one.
    label_channels = next((int(x.shape[1]) for k, x in zip(setup.input_kinds, inputs) if k == "label_map"), None)
    # Small build batches: a paper-scale backbone keeps every stage's features of the batch in memory.
    bank = build_feature_bank(model.backbone, inputs, spec, label_channels=label_channels, population=population,
                              batch_size=8, progress=progress, device=device)
    return bank.to(device), spec


def _predictor(model, arch: str | None, inputs: tuple[torch.Tensor, ...], seed: int, kinds: list[str], what: str):
    """An untrained predictor of the arch the library trains by default for these declared inputs
    (:func:`fiancee.train.predictor.default_arch`) and what it reads."""
    from .predictor import QualityPredictor
    from .train.predictor import check_arch, default_arch

    arch = arch or default_arch(kinds)
    check_arch(arch, kinds, what)
    xs = _predictor_inputs(model, arch, inputs)
    if arch == "mlp" and any(x.dim() != 2 for x in xs):
        raise ValueError(f"predictor arch 'mlp' reads vectors; this backbone's inputs are {[list(x.shape) for x in xs]}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        predictor = QualityPredictor(arch, model.num_routes - 1, [list(x.shape[1:]) for x in xs])
    return predictor.to(xs[0].device).eval(), xs


def _predictor_inputs(model, arch: str, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """What a predictor of ``arch`` reads for ``inputs``, on the model's device (computed, not timed: the
    trunk's key-stage features ``[B, C, h, w]``, or the inputs with 1x1 maps flattened)."""
    from .predictor import FEATURE_ARCHS, key_features

    if arch in FEATURE_ARCHS:
        return (key_features(model, *inputs),)
    return tuple(x.flatten(1) if x.dim() == 4 and x.shape[-2:] == (1, 1) else x for x in inputs)


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


def _option_runner(model, route: int, inputs: tuple[torch.Tensor, ...], opts: Sequence[str],
                   device: torch.device) -> tuple[Callable[[], torch.Tensor], float]:
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
            return model.route(*xs, exit=route, check=check)

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


def _verdict(speedup: float, max_abs: float, mean_abs: float, tol: dict) -> tuple[bool, str]:
    within = max_abs <= tol["max_abs"] and mean_abs <= tol["mean_abs"]
    if not within:
        return within, "out of tolerance"
    return within, "helped" if speedup >= FASTER else "no faster"


def _device_info(device: torch.device) -> dict:
    info = {"type": device.type, "name": cpu_name(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "python": platform.python_version(),
            "platform": platform.platform(terse=True)}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(name=torch.cuda.get_device_name(index), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1),
                    cudnn_benchmark=torch.backends.cudnn.benchmark, cudnn_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_tf32=torch.backends.cuda.matmul.allow_tf32)
    return info


# ----------------------------------------------------------------------------------------------
# The benchmark


@torch.no_grad()
def run_bench(backbone: str, *, size: str | None = None, scale: str | float | Fraction | None = None,
              min_channels: int | None = None, device: str | torch.device = "cpu",
              batches: str | Sequence[int] = (1, 8, 32), reps: int = 20, warmup: int = 5, threads: int | None = None,
              options: str | Sequence[str] | None = None, seed: int = 0, bank_inputs: int | None = None,
              predictor: str | None = None, progress: bool = True, bank: str = "auto") -> dict:
    """Measure the routes, the mixed-exit tree, the predictor + bank and the speed options of
    ``backbone`` (a reference architecture of :data:`REFERENCE_BACKBONES`, or a task spec); returns the JSON-ready report (see the module docstring
    and BENCHMARKS.md for every field).

    ``size`` / ``scale`` / ``min_channels`` default to :data:`GEOMETRY` (oasis, g2d) or the task's
    defaults (faces, fashion). ``batches`` and ``options`` take lists or comma-separated text.
    ``threads`` fixes torch's and FAISS's CPU threads for the run (None: leave them).
    ``bank_inputs`` is the bank's population (default: faces 1024 inputs, fashion 250 label maps x 8
    noises, 16 random inputs for the reference backbones); ``predictor`` the predictor's arch
    (default: what the library trains for these inputs). ``bank``: ``auto`` measures a retrieval only
    when the pipeline this backbone ships with searches a bank (a task whose shipped exits were trained
    without one: no; the reference backbones and tasks without shipped exits: their default bank),
    ``on`` / ``off`` force it.
    Bad arguments raise ``ValueError`` naming what was expected and what came.
    """
    from .exits import parse_scale

    t_start = time.perf_counter()
    if backbone not in REFERENCE_BACKBONES:
        from .tasks.registry import check_task_spec

        check_task_spec(backbone)
    dev = _parse_device(device)
    batch_list = _parse_batches(batches)
    reps = _positive(reps, "reps")
    warmup = _positive(warmup, "warmup", minimum=0)
    seed = _positive(seed, "seed", minimum=0)
    if threads is not None:
        threads = _positive(threads, "threads")
    if bank_inputs is not None:
        bank_inputs = _positive(bank_inputs, "bank inputs")
    if scale is not None:
        parse_scale(scale)
    if min_channels is not None:
        min_channels = _positive(min_channels, "min channels")
    opts = _parse_options(options, dev)
    if bank not in ("auto", "on", "off"):
        raise ValueError(f"bank must be auto, on or off; got {bank!r}")
    if bank == "off" and bank_inputs is not None:
        raise ValueError("bank inputs apply to a bank; got bank='off'")

    try:
        import faiss
    except ImportError:  # the bank step says how to install it
        faiss = None
    old_threads = torch.get_num_threads()
    old_faiss = faiss.omp_get_max_threads() if faiss is not None else None
    if threads is not None:
        torch.set_num_threads(threads)
        if faiss is not None:
            faiss.omp_set_num_threads(threads)
    try:
        report = _run(backbone, size, scale, min_channels, dev, batch_list, reps, warmup, opts, seed, bank_inputs,
                      predictor, progress, bank)
    finally:
        torch.set_num_threads(old_threads)
        if faiss is not None:
            faiss.omp_set_num_threads(old_faiss)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    return report


def _run(name: str, size, scale, min_channels, device: torch.device, batches: list[int], reps: int, warmup: int,
         opts: list[str], seed: int, bank_n: int | None, predictor_arch: str | None, progress: bool,
         bank_choice: str = "auto") -> dict:
    from .bank import retrieval_latency
    from .metrics.macs import count_macs

    load_start = load_average()
    setup = (_reference_setup if name in REFERENCE_BACKBONES else _task_setup)(name, size, scale, min_channels, seed)
    model = setup.model.to(device).eval()
    num_routes = model.num_routes
    inputs_on = {b: tuple(x.to(device) for x in setup.inputs(b)) for b in batches}
    ratio_batch = 1 if 1 in batches else batches[0]
    mix_batches = [b for b in batches if b >= 2]
    mixes = [("uniform", tuple([1.0 / num_routes] * num_routes)), ("skewed", skewed_shares(num_routes))]
    variants = [(o, (o,)) for o in opts] + ([("+".join(opts), tuple(opts))] if len(opts) > 1 else [])
    # Predictor and bank first: a predictor arch that cannot read these inputs fails before any timing.
    predictor, xs = _predictor(model, predictor_arch, inputs_on[ratio_batch], seed, setup.input_kinds, f"backbone {name!r}")
    with_bank = setup.ships_bank if bank_choice == "auto" else bank_choice == "on"
    bank_n = (setup.default_bank_inputs if bank_n is None else bank_n) if with_bank else None
    bank, spec = _build_bank(setup, bank_n, device, progress) if with_bank else (None, None)
    overhead_batches = sorted({ratio_batch, batches[-1]})

    bar = None
    if progress:
        from tqdm import tqdm

        total = len(batches) * num_routes * (1 + len(variants)) + len(mixes) * len(mix_batches) + 1
        bar = tqdm(total=total, desc=f"bench {name}", unit="step", dynamic_ncols=True)

    def step(label: str) -> None:
        if bar is not None:
            bar.set_postfix_str(label, refresh=False)
            bar.update(1)

    try:
        # MACs: counted on shapes (meta tensors), per sample.
        macs = [int(m) for m in model.route_macs(1)]
        backbone_macs = int(count_macs(model.backbone, *model.backbone.example_inputs(1)))
        macs[-1] = backbone_macs

        # Routes, every batch size.
        route_ms: dict[int, list[dict]] = {}
        for b in batches:
            route_ms[b] = []
            for r in range(num_routes):
                route_ms[b].append(time_ms(lambda: model.route(*inputs_on[b], exit=r), device, reps, warmup))
                step(f"route {r} batch {b}")
        routes = []
        for r in range(num_routes):
            per_batch = {}
            for b in batches:
                t = route_ms[b][r]
                per_batch[str(b)] = {"median_ms": round(t["median_ms"], 4), "iqr_ms": round(t["iqr_ms"], 4),
                                     "per_sample_ms": round(t["median_ms"] / b, 4),
                                     "latency_ratio": round(t["median_ms"] / route_ms[b][-1]["median_ms"], 4)}
            backbone_route = r == num_routes - 1
            routes.append({
                "route": r, "name": "backbone" if backbone_route else f"exit after stage {model.exits[r]}",
                "after_stage": None if backbone_route else model.exits[r], "macs": macs[r],
                "macs_ratio": round(macs[r] / backbone_macs, 4),
                "latency_ms": per_batch[str(ratio_batch)]["median_ms"],
                "latency_ratio": per_batch[str(ratio_batch)]["latency_ratio"], "per_batch": per_batch,
            })

        # Mixed batches: the tree against the ideal, the deepest-needed route and grouped routes.
        mixed_entries = []
        for mix_name, shares in mixes:
            per_batch = {}
            for b in mix_batches:
                exits = mix_exits(shares, b, seed).to(device)
                inputs = inputs_on[b]
                counts = torch.bincount(exits.cpu(), minlength=num_routes).tolist()
                tree = time_ms(lambda: model.mixed(*inputs, exits=exits), device, reps, warmup)["median_ms"]
                grouped = time_ms(lambda: _grouped(model, inputs, exits), device, reps, warmup)["median_ms"]
                ideal = sum(n * route_ms[b][r]["median_ms"] / b for r, n in enumerate(counts))
                deepest = route_ms[b][int(exits.max())]["median_ms"]
                diff = (model.mixed(*inputs, exits=exits) - _grouped(model, inputs, exits)).abs().max()
                per_batch[str(b)] = {
                    "counts": counts, "tree_ms": round(tree, 4), "ideal_ms": round(ideal, 4),
                    "deepest_ms": round(deepest, 4), "grouped_ms": round(grouped, 4),
                    "tree_vs_ideal": round(ideal / tree, 4), "tree_vs_deepest": round(deepest / tree, 4),
                    "tree_vs_grouped": round(grouped / tree, 4), "max_abs_diff_tree_vs_grouped": float(diff),
                }
                step(f"mix {mix_name} batch {b}")
            mixed_entries.append({"name": mix_name, "shares": [round(s, 4) for s in shares], "per_batch": per_batch})
        mixed = {"batch": None, "mix": None, "tree_vs_ideal": None, "tree_vs_deepest": None, "tree_vs_grouped": None,
                 "mixes": mixed_entries}
        if mix_batches:
            top = mix_batches[-1]
            worst = min(mixed_entries, key=lambda m: m["per_batch"][str(top)]["tree_vs_ideal"])
            row = worst["per_batch"][str(top)]
            mixed.update(batch=top, mix=worst["name"], tree_vs_ideal=row["tree_vs_ideal"],
                         tree_vs_deepest=row["tree_vs_deepest"], tree_vs_grouped=row["tree_vs_grouped"])

        # Overhead: predictor + bank retrieval against the smallest route, at the smallest and the largest
        # batch. The predictor runs as the pipeline runs it (eval, no autograd, folded, no second finiteness
        # check of trunk features); retrieval only when the pipeline has a bank (``bank_choice``).
        per_batch_overhead = {}
        for b in overhead_batches:
            xs_b = _predictor_inputs(model, predictor.arch, inputs_on[b])
            pred_t = time_ms(lambda: predictor(*xs_b, check=False), device, reps, warmup)["median_ms"]
            retrieval = (retrieval_latency(bank, model, setup.inputs, batch_sizes=(b,), reps=reps, warmup=warmup)[0]
                         if bank is not None else None)
            smallest = route_ms[b][0]["median_ms"]
            bank_ms = 0.0 if retrieval is None else retrieval["retrieval_ms"]
            per_batch_overhead[str(b)] = {
                "predictor_ms": round(pred_t, 4), "bank_ms": round(bank_ms, 4), "smallest_route_ms": round(smallest, 4),
                "smallest_route_ms_in_retrieval_run": None if retrieval is None else retrieval["smallest_route_ms"],
                "fraction": round((pred_t + bank_ms) / smallest, 4),
            }
        first = per_batch_overhead[str(overhead_batches[0])]
        overhead = {
            "batch": overhead_batches[0], "batches": overhead_batches, "predictor_arch": predictor.arch,
            "predictor_ms": first["predictor_ms"], "predictor_macs": int(count_macs(predictor, *xs)) // ratio_batch,
            "bank": "on" if bank is not None else "off", "bank_choice": bank_choice,
            "bank_ms": first["bank_ms"], "bank_mode": None if bank is None else bank.mode,
            "bank_entries": 0 if bank is None else len(bank),
            "bank_population": None if bank is None else bank.manifest["population"],
            "bank_spec": None if spec is None else {
                "mode": spec.mode, "key_stage": spec.key_stage, "value_stage": spec.value_stage,
                "grid": list(spec.grid) if spec.mode == "patch" else None, "max_per_class": spec.max_per_class,
                "key_function": spec.key_function if spec.mode == "global" else None, "index": spec.index},
            "smallest_route_ms": first["smallest_route_ms"],
            "smallest_route_ms_in_retrieval_run": first["smallest_route_ms_in_retrieval_run"],
            "per_batch": per_batch_overhead,
        }
        # The figure a user pays in the worst case over the batch sizes measured.
        overhead_fraction = max(v["fraction"] for v in per_batch_overhead.values())
        overhead["fraction"] = first["fraction"]
        step("predictor + bank")

        # Options: each alone, then all together, against the eager fp32 routes measured above.
        option_entries = []
        for label, group in variants:
            tol = TOLERANCES["reduced" if {"bf16", "fp16"} & set(group) else "float32"]
            entry = {"name": label, "options": list(group), "tolerance": tol, "results": [], "error": None}
            try:
                variant_model = model
                if "channels_last" in group:
                    variant_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
                for b in batches:
                    for r in range(num_routes):
                        ref = model.route(*inputs_on[b], exit=r).float()
                        fn, prepare_s = _option_runner(variant_model, r, inputs_on[b], group, device)
                        out = fn().float()
                        diff = (out - ref).abs()
                        t = time_ms(fn, device, reps, warmup)["median_ms"]
                        speedup = route_ms[b][r]["median_ms"] / t
                        within, verdict = _verdict(speedup, float(diff.max()), float(diff.mean()), tol)
                        entry["results"].append({
                            "batch": b, "route": r, "eager_ms": round(route_ms[b][r]["median_ms"], 4), "ms": round(t, 4),
                            "speedup": round(speedup, 4), "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                            "within_tolerance": within, "verdict": verdict, "prepare_s": round(prepare_s, 2),
                        })
                        step(f"{label} route {r} batch {b}")
            except Exception as e:  # an option the installed stack cannot run is a finding, not a crash
                entry["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            finally:
                if "compile" in group:
                    torch.compiler.reset()
            helped = sum(res["verdict"] == "helped" for res in entry["results"])
            entry["summary"] = f"helped on {helped} of {len(entry['results'])} (route, batch) pairs"
            option_entries.append(entry)
    finally:
        if bar is not None:
            bar.close()

    notes = setup.notes + [
        "latency does not depend on the weights' values: untrained or random weights time the same as trained ones",
        f"predictor: untrained {predictor.arch} QualityPredictor, its forward timed alone as the pipeline runs it "
        "(eval, no autograd, standardization folded): what it reads (the key-stage features every route computes "
        "anyway, or the generator's inputs) is not counted",
        (f"bank: built from {bank_n} inputs with the library's configuration for this backbone; retrieval time "
         "grows with the entries searched") if bank is not None else
        (f"bank: none ({'the shipped exits were trained without one' if bank_choice == 'auto' else 'bank=off'}): "
         "no input pays a retrieval; bank=on measures the default bank"),
        "options apply to single routes; the mixed tree selects samples with data-dependent indexing, which "
        "CUDA graphs cannot capture",
    ]
    if "cudagraphs" in opts:
        notes.append("cudagraphs runs call route(..., check=False): input checks are host syncs, which capture forbids; "
                     "eager timings include them")
    exits_scale = model.scale
    return {
        "kind": "fiancee-bench", "format_version": FORMAT_VERSION,
        "settings": {
            "backbone": name, **setup.settings, "scale": f"{exits_scale.numerator}/{exits_scale.denominator}",
            "min_channels": model.min_channels, "exits_after_stages": list(model.exits), "device": str(device),
            "batches": batches, "reps": reps, "warmup": warmup, "threads": torch.get_num_threads(), "seed": seed,
            "dtype": "float32", "options": opts, "ratio_batch": ratio_batch,
            "mixes": {m["name"]: m["shares"] for m in mixed_entries}, "bank_inputs": bank_n, "bank": bank_choice,
            "predictor_arch": predictor.arch, "tolerances": TOLERANCES, "faster_means_speedup_at_least": FASTER,
            "timing": "CUDA events" if device.type == "cuda" else "time.perf_counter",
        },
        "device": _device_info(device),
        "load_average": {"start": load_start, "end": load_average()},
        "routes": routes,
        "mixed": mixed,
        "overhead": overhead,
        "overhead_fraction": overhead_fraction,
        "options": option_entries,
        "notes": notes,
    }


# ----------------------------------------------------------------------------------------------
# Tables


def _render(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + \
               ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [line(header)] + [line(r) for r in rows]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(report: dict, markdown: bool = False) -> str:
    """A short human summary of a :func:`run_bench` report (aligned text, or Markdown tables)."""
    s, d = report["settings"], report["device"]
    batches = s["batches"]
    title = (f"{s['backbone']}{' (' + s['size'] + ')' if s.get('size') else ''}, SF {s['scale']}, min "
             f"{s['min_channels']} channels, exits: {s['exit_weights']}; {d['name']} ({s['device']}, {s['threads']} "
             f"thread{'s' if s['threads'] != 1 else ''}), torch {d['torch']}, median of {s['reps']} reps")
    out = [title, ""]
    header = (["route", "GMACs", "MACs ratio"] + [f"latency ratio @{b}" for b in batches]
              + [f"ms @{b}" for b in batches])
    rows = [[r["name"], f"{r['macs'] / 1e9:.4g}", _fmt(r["macs_ratio"])]
            + [_fmt(r["per_batch"][str(b)]["latency_ratio"]) for b in batches]
            + [f"{r['per_batch'][str(b)]['median_ms']:.4g}" for b in batches] for r in report["routes"]]
    out += _render(header, rows, markdown)
    m = report["mixed"]
    if m["batch"] is not None:
        out += ["", "mixed-exit tree: other / tree (above 1 the tree is faster)", ""]
        header = ["mix", "batch", "samples per route", "tree ms", "ideal / tree", "deepest / tree", "grouped / tree"]
        rows = [[mix["name"], b, "/".join(map(str, row["counts"])), f"{row['tree_ms']:.4g}", _fmt(row["tree_vs_ideal"]),
                 _fmt(row["tree_vs_deepest"]), _fmt(row["tree_vs_grouped"])]
                for mix in m["mixes"] for b, row in mix["per_batch"].items()]
        out += _render(header, rows, markdown)
    o = report["overhead"]
    pm = o["predictor_macs"]
    pm_text = f"{pm / 1e9:.3g} GMACs" if pm >= 1e9 else f"{pm / 1e6:.3g} MMACs"
    bank_text = (f"bank ({o['bank_mode']}, {o['bank_entries']} entries)" if o.get("bank", "on") == "on"
                 else "no bank")
    per_batch = o.get("per_batch") or {str(o["batch"]): {k: o[k] for k in ("predictor_ms", "bank_ms", "smallest_route_ms")}
                                       | {"fraction": o.get("fraction", report["overhead_fraction"])}}
    out.append("")
    for b, row in per_batch.items():
        out.append(f"overhead at batch {b}: predictor ({o['predictor_arch']}, {pm_text}) {row['predictor_ms']:.4g} ms + "
                   f"{bank_text} {row['bank_ms']:.4g} ms = {100 * row['fraction']:.1f}% of the smallest route "
                   f"({row['smallest_route_ms']:.4g} ms)")
    if report["options"]:
        names = [("after " + str(r["after_stage"])) if r["after_stage"] is not None else "backbone" for r in report["routes"]]
        out += ["", "options: speedup vs eager fp32 per route (exit after stage k; backbone), largest |difference| of "
                    "the image over the routes, verdicts (helped = >= "
                    f"{s.get('faster_means_speedup_at_least', FASTER)}x and within tolerance)", ""]
        header = ["option", "batch"] + names + ["max abs", "mean abs", "helped"]
        rows = []
        for entry in report["options"]:
            if entry["error"]:
                rows.append([entry["name"], "-"] + ["-"] * len(names) + ["-", "-", f"error: {entry['error']}"])
            for b in batches:
                res = [r for r in entry["results"] if r["batch"] == b]
                if not res:
                    continue
                rows.append([entry["name"], str(b)] + [f"{r['speedup']:.2f}" for r in res]
                            + [f"{max(r['max_abs'] for r in res):.1e}", f"{max(r['mean_abs'] for r in res):.1e}",
                               f"{sum(r['verdict'] == 'helped' for r in res)}/{len(res)}"])
        out += _render(header, rows, markdown)
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------
# ONNX Runtime beside PyTorch (`fiancee bench --runtime onnx`)


@torch.no_grad()
def run_onnx_bench(backbone: str, *, size: str | None = None, scale: str | float | Fraction | None = None,
                   min_channels: int | None = None, batches: str | Sequence[int] = (1, 32),
                   threads: Sequence[int] = (1, 2), reps: int = 20, warmup: int = 5, seed: int = 0,
                   predictor: str | None = None, opset: int = 17, progress: bool = True) -> dict:
    """Milliseconds of the same pipeline under PyTorch and under ONNX Runtime (:mod:`fiancee.runtime`), on the
    same CPU in one run: every route (all inputs forced onto it) and the uniform and skewed mixes run as the
    mixed-exit tree, at every batch size and thread count. Both sides run the whole pipeline call (the trunk
    once, the predictor, the route or the tree), so ``torch_ms / onnx_ms`` compares like with like; above 1
    ONNX Runtime is faster. The pipeline is the one :func:`run_bench` times (its backbone and exits, an
    untrained predictor of the default arch, no bank), exported with :func:`fiancee.export.export_pipeline`
    to a temporary folder; every row also records the largest |difference| of the images.
    """
    import tempfile
    from pathlib import Path

    from .export import export_pipeline
    from .extras import require
    from .pipeline import FianceePipeline
    from .routing import ThresholdRouter

    require("onnxruntime", "fiancee bench --runtime onnx")
    from .runtime import OnnxPipeline

    t_start = time.perf_counter()
    if backbone not in REFERENCE_BACKBONES:
        from .tasks.registry import check_task_spec

        check_task_spec(backbone)
    batch_list = _parse_batches(batches)
    thread_list = [_positive(t, "threads") for t in threads]
    if not thread_list:
        raise ValueError("threads must list at least one thread count, like 1,2")
    reps = _positive(reps, "reps")
    warmup = _positive(warmup, "warmup", minimum=0)
    seed = _positive(seed, "seed", minimum=0)
    cpu = torch.device("cpu")
    load_start = load_average()
    setup = (_reference_setup if backbone in REFERENCE_BACKBONES else _task_setup)(backbone, size, scale, min_channels, seed)
    model = setup.model.to(cpu).eval()
    num_routes = model.num_routes
    inputs_on = {b: tuple(x.float() for x in setup.inputs(b)) for b in batch_list}
    pred, _ = _predictor(model, predictor, inputs_on[batch_list[0]], seed, setup.input_kinds, f"backbone {backbone!r}")
    pipe = FianceePipeline(None, model, pred, ThresholdRouter(model.route_macs()), task_spec=backbone)
    mixes = [("uniform", tuple([1.0 / num_routes] * num_routes)), ("skewed", skewed_shares(num_routes))]
    rows = []
    old_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="fiancee-onnx-bench-") as tmp:
        export_pipeline(pipe, Path(tmp) / "onnx", opset=opset)
        total = len(thread_list) * len(batch_list) * (num_routes + len(mixes))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=f"bench onnx {backbone}", unit="step", dynamic_ncols=True)
        try:
            for t in thread_list:
                torch.set_num_threads(t)
                runtime = OnnxPipeline(Path(tmp) / "onnx", threads=t)
                for b in batch_list:
                    xs = inputs_on[b]
                    arrays = tuple(x.numpy() for x in xs)
                    cases = [(f"route {r}", "backbone" if r == num_routes - 1 else f"exit after stage {model.exits[r]}",
                              torch.full((b,), r, dtype=torch.int64)) for r in range(num_routes)]
                    cases += [(f"mixed {name}", f"mixed-exit tree, {name} mix", mix_exits(shares, b, seed))
                              for name, shares in mixes]
                    for key, label, exits in cases:
                        ex = exits.numpy()
                        ref = pipe(*xs, max_lpips=0.1, exits=exits)
                        got = runtime(*arrays, max_lpips=0.1, exits=ex)
                        torch_t = time_ms(lambda: pipe(*xs, max_lpips=0.1, exits=exits), cpu, reps, warmup)
                        onnx_t = time_ms(lambda: runtime(*arrays, max_lpips=0.1, exits=ex), cpu, reps, warmup)
                        rows.append({
                            "case": key, "name": label, "batch": b, "threads": t,
                            "counts": np.bincount(ex, minlength=num_routes).tolist(),
                            "torch_ms": round(torch_t["median_ms"], 4), "onnx_ms": round(onnx_t["median_ms"], 4),
                            "torch_iqr_ms": round(torch_t["iqr_ms"], 4), "onnx_iqr_ms": round(onnx_t["iqr_ms"], 4),
                            "speedup": round(torch_t["median_ms"] / onnx_t["median_ms"], 4),
                            "max_abs_diff": float(np.abs(got.images - ref.images.numpy()).max()),
                            "routes_equal": bool(np.array_equal(got.exits, ref.exits.numpy())),
                        })
                        if bar is not None:
                            bar.set_postfix_str(f"{key} batch {b} threads {t}", refresh=False)
                            bar.update(1)
        finally:
            torch.set_num_threads(old_threads)
            if bar is not None:
                bar.close()
    import onnxruntime

    return {
        "kind": "fiancee-bench-onnx", "format_version": FORMAT_VERSION,
        "settings": {"backbone": backbone, **setup.settings, "scale": f"{model.scale.numerator}/{model.scale.denominator}",
                     "min_channels": model.min_channels, "exits_after_stages": list(model.exits), "batches": batch_list,
                     "threads": thread_list, "reps": reps, "warmup": warmup, "seed": seed, "opset": opset,
                     "predictor_arch": pred.arch, "dtype": "float32", "timing": "time.perf_counter",
                     "mixes": {name: [round(s, 4) for s in shares] for name, shares in mixes}},
        "device": {**_device_info(cpu), "onnxruntime": onnxruntime.__version__},
        "load_average": {"start": load_start, "end": load_average()},
        "rows": rows,
        "notes": setup.notes + [
            "both runtimes time the whole pipeline call with the routes forced (trunk once, predictor, route or tree); "
            "the predictor is untrained: latency does not depend on the weights' values",
            "speedup = torch_ms / onnx_ms: above 1 ONNX Runtime is faster",
        ],
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def format_onnx_table(report: dict, markdown: bool = False) -> str:
    """The :func:`run_onnx_bench` report as one table: ms under PyTorch and ONNX Runtime per case, batch, threads."""
    s, d = report["settings"], report["device"]
    title = (f"{s['backbone']}, SF {s['scale']}, exits: {s['exit_weights']}; {d['name']}, torch {d['torch']}, "
             f"onnxruntime {d['onnxruntime']}, median of {s['reps']} reps")
    header = ["case", "batch", "threads", "torch ms", "onnx ms", "torch / onnx", "max |diff|"]
    rows = [[r["name"], str(r["batch"]), str(r["threads"]), f"{r['torch_ms']:.4g}", f"{r['onnx_ms']:.4g}",
             f"{r['speedup']:.2f}", f"{r['max_abs_diff']:.1e}"] for r in report["rows"]]
    return "\n".join([title, ""] + _render(header, rows, markdown)) + "\n"
