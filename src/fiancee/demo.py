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

__all__ = ["run_demo"]


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
    from .train.exits import PRESETS, make_config, train_exits
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
        run = Path(exits)
        check_exits_run(run, task)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if exits is not None:
        _say(f"1/4 exits: the run {run}")
    else:
        run = resolve_task(task).pretrained_exits()
        if retrain or run is None or not (run / "latest.json").is_file():
            why = "--retrain" if retrain else f"no trained exits shipped for {task!r}"
            run = out / "exits"
            _say(f"1/4 training the exits of {task!r} ({preset} preset, {why}) into {run}")
            config = make_config(task, preset=preset, seed=seed)
            train_exits(config, run, resume=(run / "config.json").is_file(), progress=progress)
        else:
            _say(f"1/4 exits: the run shipped with fiancee, {run} (--retrain to train them again)")

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

    goal = (
        f"target compliance {target_compliance}"
        if target_compliance is not None
        else f"expected miss rate <= {epsilon:g}, Conformal Risk Control"
        if method == "crc"
        else f"miss rate <= {epsilon:g} with probability >= {1 - delta:g}, "
        + ("Learn-then-Test" if method == "ltt" else "upper confidence bound")
    )
    _say(f"3/4 calibrating the router on {n_calibrate} held-out inputs ({goal})")
    # The step `fiancee assemble-pipeline` runs: the run's exits (and bank) with this predictor, the router
    # fitted on held-out inputs, the folder written whole; its calibration table goes into the report.
    pipe_dir, pipe, (cal_predicted, cal_lpips) = assemble_pipeline(
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
        pipe,
        thresholds,
        n=n_eval,
        seed=seed,
        out=out / "report",
        progress=progress,
        calibration=(cal_predicted, cal_lpips),
    )
    row = min(report["thresholds"], key=lambda r: abs(r["threshold"] - 0.1))
    _say(f"pipeline saved to {pipe_dir}")
    print(f"At LPIPS <= {row['threshold']:g} ({report['router']} router, {n_eval} test inputs of {task!r}):")
    print(
        f"  MACs saved vs the backbone, net of the predictor and bank search: {row['macs_saved']:.1%} "
        f"(routes only: {row['route_macs_saved']:.1%}; overhead {row['overhead_macs'] / 1e6:.2f} MMACs per input)"
    )
    print(f"  compliance (true LPIPS <= threshold): {row['compliance']:.1%}")
    print(
        f"  oracle's saving: {row['oracle_macs_saved']:.1%} (strict), "
        f"{row['oracle_macs_saved_at_compliance']:.1%} at the same compliance"
    )
    print(f"  exit shares: {' / '.join(f'{s:.2f}' for s in row['exit_shares'])} (backbone last)")
    if report.get("guarantee"):
        g = report["guarantee"]
        print(
            f"  guarantee: {g['statement']}; on the test inputs: miss rate {1 - row['compliance']:.1%} "
            f"vs epsilon {g['epsilon']:.1%}"
        )
    study = report.get("split_study")
    if study:
        own = [
            r
            for r in study["rows"]
            if r["method"] == study["own_method"] and abs(r["epsilon"] - study["own_epsilon"]) < 1e-9
        ]
        if own:
            r = own[0]
            print(
                f"  over {study['splits']} random calibration / test splits ({study['n_cal']} / {study['n_test']} of "
                f"the {study['n_table']} held-out inputs) at LPIPS <= {r['threshold']:g}: "
                f"miss rate {r['miss_mean']:.1%} "
                f"on average (90th percentile {r['miss_p90']:.1%}); net MACs saved {r['saved_mean']:.1%} "
                f"+- {r['saved_sd']:.1%}"
            )
            if study["own_method"] in ("ltt", "ucb"):
                print(
                    f"  true miss rate above epsilon in {r['iid']['share_above']:.1%} of {study['splits']} i.i.d. "
                    f"calibration draws (the guarantee allows delta = {study['delta']:.0%}); "
                    "the test inputs' miss rate "
                    f"in {r['share_above']:.1%} of the splits (that adds the {study['n_test']} test inputs' own noise)"
                )
    targets = report.get("targets")
    if targets and not targets["met"]:
        for note in targets["shortfalls"]:
            print(f"  short of target: {note}")
    print(f"report: {report['html']}")
    return report
