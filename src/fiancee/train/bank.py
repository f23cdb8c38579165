"""Build a task's feature bank and time it (``fiancee build-bank``, ``fiancee bank-latency``).

The workflow around :mod:`fiancee.bank`: resolve the task, draw the population from its declared
inputs (:func:`bank_inputs`), build with its declared defaults (``Task.bank_defaults``), write the folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from ..bank import KIND, BankSpec, build_feature_bank, load_bank, retrieval_latency
from ..bank import key_function as resolve_key_function
from ..checks import check_counts
from ..exits import ExitGenerator
from ..extras import require
from ..io import check_replaceable
from ..tasks.base import Task, cross_noises, declared_inputs
from ..tasks.registry import resolve_task, task_spec

__all__ = ["BANK_STREAM", "bank_inputs", "label_channels", "build_bank", "bank_latency"]

# Bank inputs are drawn from a stream of the training split that exit training never draws from
# (its per-step seeds are small integers): an exact copy of a training input in the bank would teach
# the branches to copy the guide instead of generating (the retrieved value would be the target).
BANK_STREAM = 10**12


def bank_inputs(task: Task, n: int, noises: int, seed: int) -> tuple[tuple[torch.Tensor, ...], dict]:
    """The inputs a bank is populated from (training split only), as the task declares them.

    A task with a label map or conditions and a noise input: ``n`` draws of the label map / conditions
    x a fixed set of ``noises`` noise draws (4.1: "500 semantic maps ... 100 different inputs using a
    fixed set of 3D noises"). A task whose inputs are all noise (or none is): ``n`` draws.
    """
    if n <= 0 or noises <= 0:
        raise ValueError(f"bank population sizes must be positive; got n={n}, noises={noises}")
    first = task.sample_inputs(n, seed=BANK_STREAM + seed, split="train")
    kinds = [s.kind for s in declared_inputs(task, first)]
    if all(k == "noise" for k in kinds) or "noise" not in kinds:
        return first, {"inputs": n, "split": "train", "seed": seed}
    crossed = cross_noises(task, first, noises, BANK_STREAM + seed + 1)
    kept = "label_maps" if "label_map" in kinds else "conditions"
    return crossed, {"inputs": n * noises, kept: n, "noises": noises, "split": "train", "seed": seed}


def label_channels(task: Task, inputs: tuple[torch.Tensor, ...]) -> int | None:
    """Channels of the task's declared label map (the bank searches per class of it), or None."""
    for spec, x in zip(declared_inputs(task, inputs), inputs):
        if spec.kind == "label_map":
            return int(x.shape[1])
    return None


def build_bank(
    task: "str | Task",
    out: str | os.PathLike,
    *,
    mode: str | None = None,
    n: int | None = None,
    noises: int | None = None,
    grid: tuple[int, int] | None = None,
    max_per_class: int | None = None,
    key_function: str = "pool2",
    index: str = "flat",
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    device: str = "cpu",
    data: str | None = None,
    weights: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Build the bank of a task (a spec or a Task) with its declared defaults (``Task.bank_defaults``) and
    write it to ``out``; returns the manifest. Key stage = the task's first exit stage, value stage = the
    middle stage. The manifest stores the task's spec."""
    if Path(out).exists() and not overwrite:
        raise ValueError(f"{out} already exists; choose another --out or remove it")
    check_replaceable(out, KIND, "feature bank")
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0) for v in (n, noises)):
        raise ValueError(f"bank population sizes must be positive; got n={n}, noises={noises}")
    check_counts(max_per_class=max_per_class, batch_size=batch_size)
    require("faiss", "the feature bank")  # before minutes of feature extraction
    task = resolve_task(task, data=data, weights=weights)
    d = task.bank_defaults
    if (d["mode"] if mode is None else mode) == "global":
        resolve_key_function(key_function)  # a bad spec fails before the backbone is loaded
    backbone = task.load_backbone(device)

    def given(value, default):  # None means "the task's default"; 0 is a value (and refused below)
        return default if value is None else value

    spec = BankSpec(
        mode=given(mode, d["mode"]),
        key_stage=task.attach_after[0],
        value_stage=max(task.attach_after[0], backbone.num_stages // 2),
        grid=tuple(given(grid, d["grid"])),
        max_per_class=given(max_per_class, d["max_per_class"]),
        key_function=key_function,
        index=index,
        fps_seed=seed,
    )
    inputs, population = bank_inputs(task, given(n, d["n"]), given(noises, d["noises"]), seed)
    bank = build_feature_bank(
        backbone,
        inputs,
        spec,
        label_channels=label_channels(task, inputs),
        task=task_spec(task),
        population=population,
        batch_size=batch_size,
        progress=progress,
        device=device,
    )
    bank.save_pretrained(out, overwrite=overwrite)
    return bank.manifest


def bank_latency(
    bank_path: str | os.PathLike,
    task: "str | Task",
    *,
    threads: int | None = 1,
    reps: int = 50,
    batch_sizes: Sequence[int] = (1, 32),
    device: str = "cpu",
    data: str | None = None,
    weights: str | None = None,
) -> dict:
    """:func:`retrieval_latency` of a bank folder against the task's smallest route (exits with the
    task's default scale, untrained: latency does not depend on the weights' values).

    ``threads`` fixes torch's and FAISS's thread counts for the measurement (1 = the real-time,
    batch-1 setting the paper assumes; on a shared CPU more threads mostly measure contention).
    """
    check_counts(threads=threads, reps=reps)
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers; got {list(batch_sizes)}")
    task = resolve_task(task, data=data, weights=weights)
    backbone = task.load_backbone(device)
    bank = load_bank(bank_path, backbone, device=device)
    model = ExitGenerator(
        backbone, task.attach_after, task.default_scale, task.default_min_channels, guide=bank.guide_spec
    )
    model = model.to(device).eval()
    import faiss

    old_torch, old_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    if threads is not None:
        if threads <= 0:
            raise ValueError(f"threads must be positive; got {threads}")
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    try:
        rows = retrieval_latency(
            bank, model, lambda b: task.sample_inputs(b, seed=0, split="test"), batch_sizes=batch_sizes, reps=reps
        )
    finally:
        torch.set_num_threads(old_torch)
        faiss.omp_set_num_threads(old_faiss)
    return {
        "task": task_spec(task),
        "bank": str(bank_path),
        "mode": bank.mode,
        "entries": len(bank),
        "threads": threads,
        "scale": task.default_scale,
        "min_channels": task.default_min_channels,
        "results": rows,
    }
