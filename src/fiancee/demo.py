"""``make demo`` / ``fiancee demo``: the whole method end to end on one task.

1. exits: the task's shipped quick-preset run (``Task.pretrained_exits``: ``fiancee/weights/<task>/exits``,
   or ``$FIANCEE_WEIGHTS/<task>/exits``), or a fresh ``train-exits --preset quick`` (``preset``) with
   ``retrain=True`` or when the task ships none;
2. predictor: inputs x true LPIPS of every exit on training inputs, then the library's default recipe
   (MAE + AdamW, the paper's MegaPortraits recipe, S1.2.2);
3. router: a calibrated threshold router, its margins fitted on held-out inputs the predictor never saw.
   By default with a guarantee (``method="ltt"``, Learn-then-Test, ``CalibratedRouter.fit_guarantee``): with
   probability >= 1 - ``delta`` over the calibration draw, at most ``epsilon`` of new outputs miss the
   threshold (defaults 0.05 and 0.1); ``method="ucb"`` the same statement by an upper confidence bound,
   ``method="crc"`` an expected miss rate <= ``epsilon`` (Conformal Risk Control; :mod:`fiancee.guarantee`).
   With ``target_compliance`` given instead, the average-compliance fit (``CalibratedRouter.fit``:
   split-conformal margins, no guarantee). This step and the save below are
   :func:`fiancee.assemble.assemble_pipeline` (``fiancee assemble-pipeline``);
4. the pipeline is saved as one folder and evaluated on test inputs: report.json + report.html, with the
   guarantee checked on those test inputs and over 500 random calibration / test splits of the calibration
   and test inputs together (the report's figure for its headline threshold).

It ends by printing, for LPIPS <= 0.1, the net MACs saved (routes, predictor and bank search all
charged), the routes-only saving, the compliance, the guarantee and the oracle's saving.
"""

from __future__ import annotations

from pathlib import Path

from .evaluate import DEFAULT_THRESHOLDS

__all__ = ["run_demo", "summary_lines"]


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_demo(
    task,
    out: str | Path = "out/demo",
    *,
    retrain: bool = False,
    seed: int = 0,
    thresholds=DEFAULT_THRESHOLDS,
    epsilon: float = 0.05,
    delta: float = 0.1,
    target_compliance: float | None = None,
    method: str = "ltt",
    n_predictor: int = 2000,
    n_calibrate: int = 1000,
    n_eval: int = 1000,
    preset: str = "quick",
    exits: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """The whole method on ``task`` (a spec: built-in name, ``module:attr`` or entry point; or a Task).

    ``exits``: a train-exits run of this task to use instead of the committed or a fresh one.
    """
    from .assemble import assemble_pipeline, check_calibration_args, check_exits_run
    from .core.args import check_choice, check_int
    from .evaluate import evaluate_pipeline
    from .extras import require
    from .specs import allow_folder_code
    from .tasks.registry import resolve_task, task_spec
    from .train.exits import PRESETS
    from .train.predictor import train_predictor_for_run

    # Arguments first, before minutes of work: a bad one should fail now, not at step 4.
    # The report's plots need matplotlib (fiancee[plots]); without it the demo would train a predictor
    # and leave a half-written folder before saying so.
    require("matplotlib", "the demo's report")
    task = task_spec(resolve_task(task))
    check_choice(preset, "preset", sorted(PRESETS))
    check_int(n_predictor, "n_predictor", minimum=2)
    check_int(n_eval, "n_eval", minimum=2)
    method, thresholds = check_calibration_args(method, epsilon, delta, target_compliance, n_calibrate, thresholds)
    if exits is not None:
        check_exits_run(Path(exits), task)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = {"method": method, "epsilon": epsilon, "delta": delta, "target_compliance": target_compliance}
    shipped = None if (retrain or exits is not None) else _shipped_pipeline(task, seed, wanted)
    if shipped is not None:
        return _evaluate_shipped(shipped, task, out, thresholds=thresholds, n_eval=n_eval, seed=seed, progress=progress)
    run = _exits_run(task, exits, out, retrain=retrain, preset=preset, seed=seed, progress=progress)

    _say("2/4 predictor: true LPIPS of every exit on training inputs, then MAE + AdamW (paper S1.2.2)")
    pred_dir = out / "predictor"
    # What the predictor reads and whether noises are crossed follow the task's declared inputs.
    with allow_folder_code(task):  # the run records the task the user named (checked above, or trained here)
        summary = train_predictor_for_run(
            run, pred_dir, n=n_predictor, seed=seed, progress=progress, error_n=min(500, n_predictor)
        )
    _say(
        "   predictor mean relative error (mean over exits): "
        + ", ".join(f"{k}: {v['mean_relative_error']:.3f}" for k, v in summary["error"]["sets"].items())
    )

    goal = _goal(method, epsilon, delta, target_compliance)
    _say(f"3/4 calibrating the router on {n_calibrate} held-out inputs ({goal})")
    # The step `fiancee assemble-pipeline` runs: the run's exits (and bank) with this predictor, the router
    # fitted on held-out inputs, the folder written whole; its calibration table goes into the report.
    pipe_dir, pipe, calibration = assemble_pipeline(
        run,
        pred_dir,
        out / "pipeline",
        thresholds=thresholds,
        method=method,
        epsilon=epsilon,
        delta=delta,
        target_compliance=target_compliance,
        n_calibrate=n_calibrate,
        seed=seed,
        task=task,
        predictor_inputs=n_predictor,
        progress=progress,
        overwrite=True,
    )

    _say(f"4/4 evaluating the pipeline on {n_eval} test inputs at thresholds {list(thresholds)}")
    report = evaluate_pipeline(
        pipe, thresholds, n=n_eval, seed=seed, out=out / "report", progress=progress, calibration=calibration
    )
    _say(f"pipeline saved to {pipe_dir}")
    print("\n".join(summary_lines(report, task, n_eval)))
    return report


def _shipped_pipeline(task: str, seed: int, wanted: dict) -> Path | None:
    """The pipeline the task ships (exits, predictor and router together, ``Task.pretrained_pipeline``) when
    it was calibrated as asked (method, epsilon, delta, target compliance, seed), else None.

    A task whose LPIPS tables cost minutes per thousand inputs (upscale: 28 GMACs a tile for the backbone and
    its three exits) ships its whole pipeline, so the demo only measures it; other calibrations are built here."""
    from .assemble import calibration_provenance
    from .core.jsonio import read_json
    from .tasks.registry import resolve_task

    folder = resolve_task(task).pretrained_pipeline()
    if folder is None or not (folder / "config.json").is_file():
        return None
    provenance = read_json(folder / "config.json").get("provenance") or {}
    recorded = {k: provenance.get(k) for k in wanted}
    if provenance.get("seed") != seed or recorded != calibration_provenance(**wanted):
        _say(f"the shipped pipeline was calibrated with {recorded}, seed {provenance.get('seed')}: building one here")
        return None
    return folder


def _evaluate_shipped(
    folder: Path, task: str, out: Path, *, thresholds, n_eval: int, seed: int, progress: bool
) -> dict:
    """Steps 1-3 from the shipped pipeline (copied to ``out/pipeline``, for the commands that follow), then step 4."""
    from .evaluate import evaluate_pipeline
    from .pipeline import FianceePipeline

    _say(
        f"1-3/4 the pipeline shipped with fiancee, {folder}: exits, predictor and calibrated router "
        "(--retrain builds them here)"
    )
    pipe = FianceePipeline.from_pretrained(folder, task=task)
    pipe_dir = pipe.save_pretrained(out / "pipeline")
    _say(f"4/4 evaluating the pipeline on {n_eval} test inputs at thresholds {list(thresholds)}")
    report = evaluate_pipeline(
        pipe, thresholds, n=n_eval, seed=seed, out=out / "report", progress=progress, calibration=pipe.calibration
    )
    _say(f"pipeline saved to {pipe_dir}")
    print("\n".join(summary_lines(report, task, n_eval)))
    return report


def _exits_run(task: str, exits, out: Path, *, retrain: bool, preset: str, seed: int, progress: bool) -> Path:
    """Step 1: the run whose exits the demo uses: ``exits`` if given, else the task's shipped run, else
    (or with ``retrain``) a fresh ``train-exits --preset`` run in ``out/exits``."""
    from .tasks.registry import resolve_task
    from .train.exits import make_config, train_exits

    if exits is not None:
        _say(f"1/4 exits: the run {exits}")
        return Path(exits)
    run = resolve_task(task).pretrained_exits()
    if retrain or run is None or not (run / "latest.json").is_file():
        why = "--retrain" if retrain else f"no trained exits shipped for {task!r}"
        run = out / "exits"
        _say(f"1/4 training the exits of {task!r} ({preset} preset, {why}) into {run}")
        config = make_config(task, preset=preset, seed=seed)
        train_exits(config, run, resume=(run / "config.json").is_file(), progress=progress)
    else:
        _say(f"1/4 exits: the run shipped with fiancee, {run} (--retrain to train them again)")
    return run


_METHOD_GOALS = {
    "crc": "expected miss rate <= {epsilon:g}, Conformal Risk Control",
    "ltt": "miss rate <= {epsilon:g} with probability >= {confidence:g}, Learn-then-Test",
    "ucb": "miss rate <= {epsilon:g} with probability >= {confidence:g}, upper confidence bound",
}


def _goal(method: str, epsilon: float, delta: float, target_compliance: float | None) -> str:
    """What the router is calibrated for, in words (the demo's step 3 line)."""
    if target_compliance is not None:
        return f"target compliance {target_compliance}"
    return _METHOD_GOALS[method].format(epsilon=epsilon, confidence=1 - delta)


def summary_lines(report: dict, task: str, n_eval: int) -> list[str]:
    """What the demo prints at the end: the figures at LPIPS <= 0.1 (the paper's headline threshold)."""
    row = min(report["thresholds"], key=lambda r: abs(r["threshold"] - 0.1))
    lines = [
        f"At LPIPS <= {row['threshold']:g} ({report['router']} router, {n_eval} test inputs of {task!r}):",
        f"  MACs saved vs the backbone, net of the predictor and bank search: {row['macs_saved']:.1%} "
        f"(routes only: {row['route_macs_saved']:.1%}; overhead {row['overhead_macs'] / 1e6:.2f} MMACs per input)",
        f"  compliance (true LPIPS <= threshold): {row['compliance']:.1%}",
        f"  oracle's saving: {row['oracle_macs_saved']:.1%} (strict), "
        f"{row['oracle_macs_saved_at_compliance']:.1%} at the same compliance",
        f"  best single route at the same compliance (a static exit): {report['route_names'][row['static_route']]} "
        f"saves {row['static_macs_saved']:.1%}; routing per input adds {row['conditional_gain']:+.1%}",
        f"  exit shares: {' / '.join(f'{s:.2f}' for s in row['exit_shares'])} (backbone last)",
    ]
    if report.get("guarantee"):
        g = report["guarantee"]
        lines.append(
            f"  guarantee: {g['statement']}; on the test inputs: miss rate {1 - row['compliance']:.1%} "
            f"vs epsilon {g['epsilon']:.1%}"
        )
    lines += _split_study_lines(report.get("split_study"))
    targets = report.get("targets")
    if targets and not targets["met"]:
        lines += [f"  short of target: {note}" for note in targets["shortfalls"]]
    lines.append(f"report: {report['html']}")
    return lines


def _split_study_lines(study: dict | None) -> list[str]:
    """The report's calibration / test split study at the router's own method and epsilon."""
    if not study:
        return []
    own = [
        r
        for r in study["rows"]
        if r["method"] == study["own_method"] and abs(r["epsilon"] - study["own_epsilon"]) < 1e-9
    ]
    if not own:
        return []
    r = own[0]
    lines = [
        f"  over {study['splits']} random calibration / test splits ({study['n_cal']} / {study['n_test']} of "
        f"the {study['n_table']} held-out inputs) at LPIPS <= {r['threshold']:g}: miss rate "
        f"{r['miss_mean']:.1%} on average (90th percentile {r['miss_p90']:.1%}); net MACs saved "
        f"{r['saved_mean']:.1%} +- {r['saved_sd']:.1%}"
    ]
    from .risk import HIGH_PROBABILITY

    if study["own_method"] in HIGH_PROBABILITY:
        lines.append(
            f"  true miss rate above epsilon in {r['iid']['share_above']:.1%} of {study['splits']} i.i.d. "
            f"calibration draws (the guarantee allows delta = {study['delta']:.0%}); the test inputs' miss "
            f"rate in {r['share_above']:.1%} of the splits (that adds the {study['n_test']} test inputs' own noise)"
        )
    return lines
