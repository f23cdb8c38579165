"""A pipeline folder from an exit run and a predictor: the router calibrated on held-out inputs, then saved.

The step between ``fiancee train-predictor`` and ``fiancee evaluate`` (and the demo's third step):

1. the run's exits (and its bank, when it was trained with one) and the predictor, whose recorded
   fingerprints must be those of these exits;
2. ``n_calibrate`` held-out inputs: the task's calibration split (the training split unless the task names
   another: :attr:`fiancee.tasks.base.Task.calibration_split`) under the seed ``seed + CALIBRATION_SEED_OFFSET``,
   so never the draws a predictor trained with the same ``seed`` saw, nor the test inputs a report is measured
   on; the true LPIPS of every exit on them and the predictor's estimates;
3. a :class:`fiancee.routing.CalibratedRouter` fitted on those: by default for a guarantee (``method="ltt"``,
   Learn-then-Test: with probability >= 1 - ``delta`` over the calibration draw, at most ``epsilon`` of new
   outputs miss the threshold), ``ucb`` the same by an upper confidence bound, ``crc`` an expected miss rate
   <= ``epsilon`` (:mod:`fiancee.guarantee`); with ``target_compliance`` the average-compliance fit
   (split-conformal margins, no guarantee; the router is not in the paper, whose rule has no margin);
4. a :class:`fiancee.pipeline.FianceePipeline` with its provenance, written whole (``FianceePipeline.save_pretrained``).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from .core.args import check_bool, check_int, check_optional_int, check_unit
from .core.folders import EXITS_RUN, PIPELINE, PREDICTOR
from .evaluate import DEFAULT_THRESHOLDS

__all__ = [
    "CALIBRATION_SEED_OFFSET",
    "FITS",
    "Assembled",
    "check_calibration_args",
    "check_exits_run",
    "calibration_provenance",
    "calibrate_router",
    "assemble_pipeline",
    "summary_lines",
]

# The calibration inputs are drawn with seed + this: a predictor trained with ``seed`` drew its inputs from
# the same (training) split with ``seed``, and a router's margins fitted on the predictor's own training
# inputs would be too small (its error there is lower than on new inputs).
CALIBRATION_SEED_OFFSET = 7919

# Calibration method -> the CalibratedRouter fit that makes it and the arguments it takes after
# (predicted, true, thresholds), in order.
FITS = {
    "average": ("fit", ("target_compliance",)),
    "crc": ("fit_crc", ("epsilon",)),
    "ltt": ("fit_guarantee", ("epsilon", "delta")),
    "ucb": ("fit_ucb", ("epsilon", "delta")),
}


class Assembled(NamedTuple):
    """What :func:`assemble_pipeline` made: the folder, the pipeline it holds, and the calibration table
    ``(predicted [N, E], true LPIPS [N, E])`` of the held-out inputs the router was fitted on (a report's
    split study draws from it)."""

    path: Path
    pipeline: object  # a FianceePipeline
    calibration: tuple


# ----------------------------------------------------------------------------------------------
# Arguments


def check_calibration_args(
    method: str,
    epsilon: float,
    delta: float,
    target_compliance: float | None,
    n_calibrate: int,
    thresholds: float | Sequence[float],
) -> tuple[str, list[float]]:
    """Refuse in one line, before any work, what a calibration cannot do; returns ``(method, thresholds)``:
    the fit that will run (``average`` when ``target_compliance`` is given) and the thresholds as floats.

    Too few calibration inputs for the guarantee asked is refused naming the minimum
    (:func:`fiancee.guarantee.min_calibration`: 45 for ``ltt`` at epsilon 0.05, delta 0.1)."""
    return _check_calibration(method, epsilon, delta, target_compliance, n_calibrate, thresholds, "n_calibrate")


def _check_calibration(method, epsilon, delta, target_compliance, n, thresholds, n_name: str):
    from .guarantee import check_method, min_calibration
    from .routing import check_threshold

    if isinstance(thresholds, numbers.Real) and not isinstance(thresholds, bool):
        thresholds = [thresholds]
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Iterable):
        raise ValueError(f"thresholds must be a list of LPIPS values in (0, 1]; got {thresholds!r}")
    thresholds = [check_threshold(t) for t in thresholds]
    if not thresholds:
        raise ValueError("give at least one threshold in (0, 1]")
    if target_compliance is not None:
        check_unit(target_compliance, "target_compliance", open_high=False)
    check_unit(epsilon, "epsilon")
    check_unit(delta, "delta")
    check_int(n, n_name, minimum=2)
    if check_method(method) == "average" and target_compliance is None:
        raise ValueError("the average-compliance fit takes its target: target_compliance= (--target-compliance)")
    if target_compliance is not None and method not in ("ltt", "average"):
        raise ValueError(
            f"target_compliance is the average-compliance fit; method {method!r} takes epsilon (and delta)"
        )
    if target_compliance is None:
        need = min_calibration(method, epsilon, delta)
        if n < need:
            what = (
                f"an expected miss rate <= {epsilon:g}"
                if method == "crc"
                else f"a miss rate <= {epsilon:g} with probability >= {1 - delta:g}"
            )
            raise ValueError(
                f"{what} needs at least {need} calibration inputs; got {n_name}={n} "
                "(or fit for an average compliance instead: target_compliance=, --target-compliance)"
            )
    return ("average" if target_compliance is not None else method), thresholds


def _held(kind: str | None) -> str:
    """What :func:`fiancee.io.folder_kind` found, in words."""
    return {None: "nothing", "file": "a file", "unrecognised": "files that are not a fiancee folder"}.get(
        kind, f"a folder of kind {kind!r}"
    )


def check_exits_run(exits_run: str | Path, task=None) -> dict:
    """The config of the exit-training run ``exits_run``; refused in one line when it is not one, or when
    ``task`` (a spec or a Task the user names) is not the task it was trained for."""
    from .io import folder_kind
    from .train.run import RunDir

    run = Path(exits_run)
    held = folder_kind(run)
    if held != EXITS_RUN:
        raise ValueError(f"{run} holds {_held(held)}, not an exit-training run (fiancee train-exits writes one)")
    config = RunDir(run).read_config()
    if task is not None:
        from .tasks.registry import task_spec

        want = task if isinstance(task, str) else task_spec(task)
        if config["task"] != want:
            raise ValueError(f"{run} holds exits of task {config['task']!r}, not of {want!r}")
    return config


# ----------------------------------------------------------------------------------------------
# The router (objects in, objects out)


def calibrate_router(
    model,
    task,
    predictor,
    *,
    n: int,
    seed: int,
    thresholds: float | Sequence[float] = DEFAULT_THRESHOLDS,
    method: str = "ltt",
    epsilon: float = 0.05,
    delta: float = 0.1,
    target_compliance: float | None = None,
    guide=None,
    progress: bool = False,
):
    """A :class:`fiancee.routing.CalibratedRouter` for ``model`` (an ExitGenerator), ``task`` (the Task its
    inputs come from) and ``predictor`` (a QualityPredictor for these exits), fitted on ``n`` held-out
    inputs drawn with ``seed + CALIBRATION_SEED_OFFSET`` from ``task.calibration_split`` (``guide``: the bank's
    guide when the exits use one). Returns ``(router, (predicted, true))``: the calibration table too.
    ``method`` / ``epsilon`` / ``delta`` / ``target_compliance``: see :func:`check_calibration_args`."""
    from .predictor import predict
    from .routing import CalibratedRouter
    from .tables import build_lpips_table

    method, thresholds = _check_calibration(method, epsilon, delta, target_compliance, n, thresholds, "n")
    check_int(seed, "seed")
    # Held-out for the predictor: the training split under another seed (new z; for fashion new noise vectors
    # with training maps), or the task's own calibration split (upscale: photos no exit was trained on); never
    # the test inputs a report is measured on.
    cal = build_lpips_table(
        model,
        task,
        n,
        seed + CALIBRATION_SEED_OFFSET,
        task.calibration_split,
        guide,
        cache=guide is None,
        progress=progress,
    )
    costs = model.route_macs()
    cal_predicted = predict(predictor, model, cal["inputs"])
    router = CalibratedRouter(costs=costs)
    fit, takes = FITS[method]
    given = {"target_compliance": target_compliance, "epsilon": epsilon, "delta": delta}
    getattr(router, fit)(cal_predicted, cal["lpips"], list(thresholds), *(given[k] for k in takes))
    return router, (cal_predicted, cal["lpips"])


# ----------------------------------------------------------------------------------------------
# The folder (folders in, a folder out)


def assemble_pipeline(
    exits_run: str | Path,
    predictor_dir: str | Path,
    out: str | Path,
    *,
    thresholds: float | Sequence[float] = DEFAULT_THRESHOLDS,
    method: str = "ltt",
    epsilon: float = 0.05,
    delta: float = 0.1,
    target_compliance: float | None = None,
    n_calibrate: int = 1000,
    seed: int = 0,
    task=None,
    predictor_inputs: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Assembled:
    """Calibrate a router for the exits of ``exits_run`` (a train-exits run) and the predictor in
    ``predictor_dir`` (train-predictor for that run), and write the pipeline folder ``out`` whole.

    ``task``: a spec or Task to use instead of the one the run records (it must be the same task: naming a
    ``module:attr`` allows the run to load it). ``predictor_inputs``: what the provenance records as the
    predictor's training inputs (default: the ``train_inputs`` its folder records, else None). ``out`` is
    refused before any work when it holds something other than a pipeline, or a pipeline without
    ``overwrite``. Returns :class:`Assembled` (the folder, the pipeline, the calibration table).
    """
    from .bank import load_bank
    from .io import check_replaceable, folder_kind
    from .pipeline import FianceePipeline
    from .predictor import load_predictor
    from .train.exits import load_exits, run_bank_path

    # Everything a user can get wrong first: the LPIPS table below takes minutes at the default size.
    method, thresholds = check_calibration_args(method, epsilon, delta, target_compliance, n_calibrate, thresholds)
    check_int(seed, "seed")
    check_bool(overwrite, "overwrite")
    check_optional_int(predictor_inputs, "predictor_inputs")
    out = check_replaceable(out, PIPELINE, "pipeline")
    if not overwrite and folder_kind(out) is not None:
        raise ValueError(
            f"{out} already exists; pass overwrite=True (--overwrite) to replace it, or choose another --out"
        )
    run = Path(exits_run)
    check_exits_run(run, task)
    predictor_dir = Path(predictor_dir)
    held = folder_kind(predictor_dir)
    if held != PREDICTOR:
        raise ValueError(
            f"{predictor_dir} holds {_held(held)}, not a quality predictor (fiancee train-predictor "
            f"{run} --out DIR writes one)"
        )

    task_obj, model = load_exits(run, task=task)
    # The run's bank (if it used one) is loaded once: its guide drives calibration, the bank goes
    # into the pipeline folder.
    bank_cfg = run_bank_path(run)
    bank_path = None if bank_cfg is None else Path(bank_cfg)
    bank = None if bank_path is None else load_bank(bank_path, model.backbone)
    guide = None if bank is None else bank.guide
    # Refused here, before the table, when the predictor was trained for other exit (or backbone) weights.
    predictor, predictor_config = load_predictor(predictor_dir, model)
    if predictor_inputs is None:
        recorded = predictor_config.get("train_inputs")
        predictor_inputs = recorded if isinstance(recorded, int) and not isinstance(recorded, bool) else None
    router, calibration = calibrate_router(
        model,
        task_obj,
        predictor,
        n=n_calibrate,
        seed=seed,
        thresholds=thresholds,
        method=method,
        epsilon=epsilon,
        delta=delta,
        target_compliance=target_compliance,
        guide=guide,
        progress=progress,
    )
    pipe = FianceePipeline(
        task_obj,
        model,
        predictor,
        router,
        bank=bank,
        bank_path=bank_path,
        provenance={
            "exits_run": str(run),
            "seed": seed,
            **calibration_provenance(method, epsilon, delta, target_compliance),
            "calibration_inputs": n_calibrate,
            "predictor_inputs": predictor_inputs,
        },
        calibration=calibration,
    )
    return Assembled(pipe.save_pretrained(out), pipe, calibration)


def calibration_provenance(method: str, epsilon: float, delta: float, target_compliance: float | None) -> dict:
    """How a pipeline's provenance records its calibration: epsilon and delta only where the method uses them
    (the average-compliance fit takes neither, Conformal Risk Control no delta). The demo compares a shipped
    pipeline's record with this for the calibration it is asked for."""
    guaranteed = target_compliance is None
    return {
        "target_compliance": target_compliance,
        "method": method,
        "epsilon": epsilon if guaranteed else None,
        "delta": delta if guaranteed and method != "crc" else None,
    }


def summary_lines(assembled: Assembled) -> list[str]:
    """What ``fiancee assemble-pipeline`` prints: the router's statement, its margin per threshold, the folder."""
    pipe = assembled.pipeline
    router = pipe.router
    n = assembled.calibration[1].shape[0]
    statement = router.guarantee() or (
        f"average compliance >= {router.target:g} expected, fitted on {n} "
        "calibration inputs (split-conformal margins, no guarantee)"
    )
    lines = [f"router: {statement}"]
    lines += [f"  LPIPS <= {t:g}: margin {m:+.4f}" for t, m in zip(router.thresholds, router.margins)]
    lines.append(f"pipeline saved to {assembled.path} (next: fiancee evaluate {assembled.path})")
    return lines
