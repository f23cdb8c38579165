"""What is benchmarked: the generator with its exits, seeded inputs at any batch size, and the population and
declarations the predictor and the bank are built from (:class:`Setup`).

A task (``--backbone`` a task spec) runs its committed exits when it has them at the asked geometry
(``Task.pretrained_exits``: faces), else its backbone with untrained exits at the task's defaults (fashion, a
user's task); ``oasis`` and ``g2d`` are the reference architectures with random weights. Latency depends on the
shapes, not on the weights' values (documented in every report's ``notes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .args import REFERENCE_BACKBONES, check_size

__all__ = ["GEOMETRY", "Setup", "make_setup", "load_pipeline"]

# Reference backbones: the paper's geometry (Table 1: OASIS SF 1/4, floor 64 channels; Table 2: G2D
# SF 1/3, floor 24). The tiny configurations are only 4 to 64 channels wide, where those floors
# would make every branch a full copy of the backbone (every MACs ratio 1), so they keep the scale
# factors with a floor of 4.
GEOMETRY: dict[tuple[str, str], tuple[str, int]] = {
    ("oasis", "paper"): ("1/4", 64),
    ("oasis", "tiny"): ("1/4", 4),
    ("g2d", "paper"): ("1/3", 24),
    ("g2d", "tiny"): ("1/3", 4),
}
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


@dataclass
class Setup:
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


def make_setup(name: str, size: str | None, scale, min_channels: int | None, seed: int, pipeline=None) -> Setup:
    """The setup of a reference architecture (:data:`REFERENCE_BACKBONES`) or of a task spec; with ``pipeline``
    (a :class:`fiancee.pipeline.FianceePipeline` of that task, :func:`load_pipeline`) its exits are timed."""
    if pipeline is not None:
        return _task_setup(name, size, scale, min_channels, seed, pipeline)
    return (_reference_setup if name in REFERENCE_BACKBONES else _task_setup)(name, size, scale, min_channels, seed)


def load_pipeline(pipeline, backbone: str, scale, min_channels: int | None):
    """``pipeline`` (a folder or a :class:`fiancee.pipeline.FianceePipeline`) checked against the bench's arguments:
    it must be a pipeline of the task ``backbone`` names, whose geometry it brings (no ``scale`` / ``min_channels``)."""
    from ..pipeline import FianceePipeline
    from ..tasks.registry import resolve_task

    if backbone in REFERENCE_BACKBONES:
        raise ValueError(f"a pipeline is benchmarked with its task as the backbone (--backbone TASK), not {backbone!r}")
    if scale is not None or min_channels is not None:
        raise ValueError("scale and min channels come from the pipeline's exits; leave them out with a pipeline")
    pipe = (
        pipeline if isinstance(pipeline, FianceePipeline) else FianceePipeline.from_pretrained(pipeline, task=backbone)
    )
    if pipe.model.guide_spec is not None:
        raise ValueError("the pipeline's exits read a feature bank's guide, which the bench's timings do not pass")
    task = resolve_task(backbone)
    if pipe.task is None or pipe.task.name != task.name:
        got = "no task" if pipe.task is None else f"task {pipe.task.name!r}"
        raise ValueError(f"the pipeline has {got}; the bench's backbone is task {task.name!r}")
    return pipe


def _reference_setup(name: str, size: str | None, scale, min_channels: int | None, seed: int) -> Setup:
    from ..backbones import build_backbone
    from ..exits import ExitGenerator

    size = "paper" if size is None else size
    check_size(size, name, reference=True)
    d_scale, d_min = GEOMETRY[(name, size)]
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        backbone = build_backbone(name, size)
        model = ExitGenerator(
            backbone,
            backbone.config.exits,
            d_scale if scale is None else scale,
            d_min if min_channels is None else min_channels,
        )

    def draw(n: int, stream: int) -> tuple[torch.Tensor, ...]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + stream)
            return backbone.example_inputs(n)

    def bank_inputs(n: int):
        return draw(n, 10**9), {"inputs": n, "kind": "random example inputs", "seed": seed}

    declared = _REFERENCE_DECLARATIONS[name]
    return Setup(
        model,
        lambda b: draw(b, 0),
        bank_inputs,
        _REFERENCE_BANK_INPUTS,
        {"size": size, "exit_weights": "random", "backbone_weights": "random"},
        list(declared["inputs"]),
        declared["bank"],
        [f"{name} ({size}): reference architecture with random weights and random example inputs"],
    )


def _task_setup(spec, size: str | None, scale, min_channels: int | None, seed: int, pipeline=None) -> Setup:
    from ..tasks.base import declared_inputs
    from ..tasks.registry import resolve_task
    from ..train.bank import bank_inputs

    task = resolve_task(spec)
    name = task.name
    check_size(size, name, reference=False)
    scale = task.default_scale if scale is None else scale
    min_channels = task.default_min_channels if min_channels is None else min_channels
    if pipeline is None:
        model, weights, ships_bank = _task_exits(task, spec, scale, min_channels)
    else:  # the pipeline's own exits: the mixes its router chooses are timed on the routes they choose among
        model, weights, ships_bank = pipeline.model, "the pipeline's", pipeline.bank is not None
    notes = [f"{name}: the task's pretrained backbone; exits {weights}"]
    d = task.bank_defaults
    # global mode: as many inputs as the default bank keeps (farthest-point sampling then keeps them
    # all, so the bank has the default's size at a quarter of the build); patch mode: the default population.
    default_n = d["max_per_class"] if d["mode"] == "global" else d["n"]

    def draw_bank(n: int):
        return bank_inputs(task, n, d["noises"], seed)

    return Setup(
        model,
        lambda b: task.sample_inputs(b, seed, "test"),
        draw_bank,
        default_n,
        {"size": None, "exit_weights": weights, "backbone_weights": "pretrained"},
        [i.kind for i in declared_inputs(task)],
        d,
        notes,
        ships_bank,
    )


def _task_exits(task, spec, scale, min_channels: int) -> tuple[object, str, bool]:
    """The task's committed exits when they have the asked geometry, else untrained ones on its backbone: the
    model, what its weights are, and whether the pipeline it ships with searches a bank."""
    from ..exits import parse_scale
    from ..train.exits import build_exits, load_exits
    from ..train.run import RunDir

    run = task.pretrained_exits()
    if run is not None and (run / "latest.json").is_file():
        config = RunDir(run).read_config()
        if parse_scale(config["scale"]) == parse_scale(scale) and int(config["min_channels"]) == int(min_channels):
            _, model = load_exits(run, task=spec)  # the task the user named, not code the run folder names
            weights = f"the exits shipped with the package ({run.parent.name}/{run.name}, {config.get('steps')} steps)"
            return model, weights, config.get("bank") is not None
    model = build_exits(task, task.load_backbone(), scale, min_channels)
    return model, "untrained (latency does not depend on the weights' values)", True
