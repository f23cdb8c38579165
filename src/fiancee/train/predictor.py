"""Train a quality predictor for an exit run, and measure a saved one (paper section 3.2, S1.1.2, Tables S3, S4).

The workflow around :mod:`fiancee.predictor`: load the run's exits (and its bank's guide), build the
LPIPS table from the task's declared inputs (:mod:`fiancee.tables`), train, write the folder and its
error report.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..checks import check_choice, check_counts
from ..core.folders import PREDICTOR
from ..io import check_replaceable, read_json
from ..predictor import (
    RECIPES,
    TARGETS,
    QualityPredictor,
    exits_fingerprints,
    load_predictor,
    predictor_features,
    save_predictor,
    train_predictor,
)
from ..predictor.heads import arch_names, get_head
from ..tables import build_lpips_table, predictor_error
from ..tasks.base import declared_inputs
from .exits import load_exits, run_bank_path, run_guide

__all__ = ["DEFAULT_RECIPE", "DEFAULT_EPOCHS", "default_arch", "train_predictor_for_run", "predictor_error_for_folder"]

DEFAULT_NOISES = 10  # fixed noise draws crossed with the training maps when a task has a label map
# The default head (``tiny``) overfits 2000 inputs within a few dozen epochs; MAE + AdamW with weight decay
# (the MegaPortraits recipe, S1.2.2) for 20 epochs ranked held-out faces best of the settings tried
# (docs/predictor.md: Spearman 0.71 against 0.64 for MSE + SGD over 60 epochs).
DEFAULT_RECIPE, DEFAULT_EPOCHS = "mae-adamw", 20


def default_arch(kinds: list[str]) -> str:
    """``tiny`` whatever the inputs: a head on the key-stage features that costs well under 1 % of the
    backbone (they carry the label map, the noise and any condition, and the pipeline computes them once
    for every route). ``conv`` on (label map, noise), Table S7's reading of OASIS's inputs, cost 28 % of
    the fashion backbone (34.7 of 124 MMACs) and ``mlp`` on z ranks faces far worse: docs/predictor.md.
    ``kinds`` stays an argument so that a future default may depend on the declared inputs."""
    return "tiny"


def check_arch(arch: str, kinds: list[str], what: str) -> None:
    """Refuse a head that cannot read inputs of the declared ``kinds`` in one line naming those that can."""
    why = get_head(arch).cannot_read(kinds)
    if why is not None:
        able = [f"{a!r}" for a in arch_names() if get_head(a).cannot_read(kinds) is None]
        use = " or ".join([", ".join(able[:-1]), able[-1]] if len(able) > 1 else able) or "another head"
        raise ValueError(f"arch {arch!r} {why}; {what} declares {kinds} (use {use})")


def train_predictor_for_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    arch: str | None = None,
    recipe: str = DEFAULT_RECIPE,
    target: str = "lpips",
    n: int = 2000,
    noises: int | None = None,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 64,
    seed: int = 0,
    error_n: int = 500,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Train a predictor for a trained exit run and write it to ``out`` with its error report.

    What it reads follows the task's declared inputs (:class:`fiancee.tasks.base.InputSpec`): default
    ``arch`` by :func:`default_arch`. ``target``: what the network regresses (``lpips`` or ``log``,
    :data:`fiancee.predictor.TARGETS`). ``noises``: the fixed noise draws crossed with ``n / noises`` training
    draws of the task's label map and conditions (default 10 for a task with a label map, none otherwise:
    then the table is ``n`` draws of every input).
    """
    # Arguments and the output folder first: a typo must not cost an LPIPS table.
    check_counts(n=n, noises=noises, epochs=epochs, batch_size=batch_size, error_n=error_n)
    check_choice(recipe, "recipe", RECIPES)
    check_choice(target, "target", TARGETS)
    if arch is not None:
        get_head(arch)  # an unknown name: refused in one line
    check_replaceable(out, PREDICTOR, "quality predictor")
    task, model = load_exits(run_dir, device=device)
    specs = declared_inputs(task)
    kinds = [s.kind for s in specs]
    arch = arch or default_arch(kinds)
    check_arch(arch, kinds, f"task {task.name!r}")
    crossable = any(k != "noise" for k in kinds) and "noise" in kinds
    if noises is None and "label_map" in kinds:
        noises = DEFAULT_NOISES
    if noises is not None and not crossable:
        raise ValueError(
            f"task {task.name!r} has no label map or condition to cross noise draws with (inputs "
            f"{kinds}): noises= does not apply (its training set is n draws of its inputs)"
        )
    guide = run_guide(run_dir, model)
    bank = run_bank_path(run_dir)
    guide_key = None if bank is None else _bank_key(bank)
    maps = n if noises is None else max(1, n // noises)
    table = build_lpips_table(
        model, task, maps, seed, "train", guide, noises=noises, noise_seed=seed, guide_key=guide_key, progress=progress
    )
    xs = predictor_features(arch, model, table["inputs"])
    torch.manual_seed(seed)  # the initial weights too: same seed, same predictor, same demo figures
    predictor = QualityPredictor(arch, model.num_routes - 1, [list(x.shape[1:]) for x in xs], target=target)
    history = train_predictor(
        predictor, xs, table["lpips"], recipe=recipe, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress
    )
    error = predictor_error(
        predictor,
        model,
        task,
        n=error_n,
        seed=seed,
        guide=guide,
        guide_key=guide_key,
        train_noises=noises,
        noise_seed=seed,
    )
    error["command_seed"] = seed
    from ..metrics.macs import count_macs

    # What every input pays for the head (on top of the shared trunk when it reads key-stage features).
    predictor_macs = int(count_macs(predictor, *(torch.zeros(1, *s) for s in predictor.input_shapes)))
    extra = {
        "task": task.spec or task.name,
        "run": str(run_dir),
        "recipe": recipe,
        "seed": seed,
        "noise_seed": seed,
        "epochs": epochs,
        "train_inputs": int(table["lpips"].shape[0]),
        "noises": noises,
        "inputs": [{"name": s.name, "kind": s.kind} for s in specs],
        "final_loss": history[-1],
        "attach_after": list(model.attach_after),
        "route_macs": [int(m) for m in model.route_macs()],
        "predictor_macs": predictor_macs,
    }
    save_predictor(predictor, out, fingerprints=exits_fingerprints(model), extra=extra, files={"error.json": error})
    return {"out": str(out), **extra, "error": error}


def predictor_error_for_folder(
    predictor_dir: str | Path, *, run: str | Path | None = None, n: int = 500, seed: int = 0, device: str = "cpu"
) -> dict:
    """:func:`fiancee.tables.predictor_error` of a saved predictor on its exit run (``n`` held-out inputs; with
    training noises, ``n`` test maps each with one of the K training noises, and each with a new noise)."""
    check_counts(n=n)
    config = read_json(Path(predictor_dir) / "config.json")
    run = run if run is not None else config.get("run")
    if run is None:
        raise ValueError(f"{predictor_dir} does not name its exit run; pass run=")
    task, model = load_exits(run, device=device)
    predictor, config = load_predictor(predictor_dir, model=model, device=device)
    guide = run_guide(run, model)
    bank = run_bank_path(run)
    noises = config.get("noises")
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    return predictor_error(
        predictor,
        model,
        task,
        n=n,
        seed=seed,
        guide=guide,
        guide_key=None if bank is None else _bank_key(bank),
        train_noises=noises,
        noise_seed=config.get("noise_seed", 0),
    )


def _bank_key(bank) -> str:
    # The bank's folder name and the fingerprint of its files' bytes identify the guide it gives.
    path = Path(str(bank))
    h = hashlib.sha256(str(path.resolve()).encode())
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f.name.encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]
