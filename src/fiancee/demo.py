"""``make demo`` / ``fiancee demo``: the whole method end to end on one task.

1. exits: the quick-preset run shipped with the package (``fiancee/weights/<task>/exits``, or
   ``$FIANCEE_WEIGHTS/<task>/exits``), or a fresh ``train-exits --preset quick`` with ``retrain=True``
   or when the task has no shipped run (fashion);
2. predictor: inputs x true LPIPS of every exit on training inputs, then the paper's MSE + SGD recipe;
3. router: a calibrated threshold router, its margins fitted on held-out inputs the predictor never saw
   so that ``target_compliance`` of the outputs truly meet each threshold. The demo asks for 0.96 so
   that the compliance measured on a separate test set stays >= 0.95 despite sampling noise (about
   +-0.7% for 1000 inputs at 0.95);
4. the pipeline is saved as one folder and evaluated on test inputs: report.json + report.html.

It ends by printing, for LPIPS <= 0.1, the MACs saved, the compliance and the oracle's saving.
"""

from __future__ import annotations

from pathlib import Path

from .evaluate import DEFAULT_THRESHOLDS

__all__ = ["run_demo", "committed_exits"]


def committed_exits(task: str) -> Path:
    """The task's shipped exit run (it may not exist: only faces ships one)."""
    from .tasks.base import weights_dir

    return weights_dir(task, "exits")


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_demo(task: str = "faces", out: str | Path = "out/demo", *, retrain: bool = False, seed: int = 0,
             thresholds=DEFAULT_THRESHOLDS, target_compliance: float = 0.96, n_predictor: int = 2000,
             n_calibrate: int = 1000, n_eval: int = 1000, progress: bool = True) -> dict:
    from .pipeline import FianceePipeline
    from .predictor import build_lpips_table, load_predictor, predict, train_predictor_for_run
    from .routing import CalibratedRouter
    from .train.exits import load_exits, make_config, train_exits
    from .bank import load_bank
    from .evaluate import evaluate_pipeline
    from .train.run import RunDir

    from .routing import check_threshold
    from .tasks import get_task

    # Arguments first, before minutes of work: a bad one should fail now, not at step 4.
    get_task(task)
    thresholds = [check_threshold(t) for t in thresholds]
    if not thresholds:
        raise ValueError("give at least one threshold in (0, 1]")
    if not 0 < target_compliance <= 1:
        raise ValueError(f"target compliance must lie in (0, 1]; got {target_compliance}")
    for name, value in (("n_predictor", n_predictor), ("n_calibrate", n_calibrate), ("n_eval", n_eval)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2; got {value!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = committed_exits(task)
    if retrain or not (run / "latest.json").is_file():
        why = "--retrain" if retrain else f"no trained exits at {run}"
        run = out / "exits"
        _say(f"1/4 training the exits of {task!r} (quick preset, {why}) into {run}")
        if (run / "config.json").is_file():
            train_exits(make_config(task, preset="quick", seed=seed), run, resume=True, progress=progress)
        else:
            train_exits(make_config(task, preset="quick", seed=seed), run, progress=progress)
    else:
        _say(f"1/4 exits: the quick-preset run shipped with fiancee, {run} (--retrain to train them again)")

    _say("2/4 predictor: true LPIPS of every exit on training inputs, then MSE + SGD (paper S1.1.2)")
    pred_dir = out / "predictor"
    labelled = task == "fashion"
    summary = train_predictor_for_run(run, pred_dir, n=n_predictor, seed=seed, progress=progress,
                                      noises=10 if labelled else None, error_n=min(500, n_predictor))
    _say("   predictor mean relative error (mean over exits): "
         + ", ".join(f"{k}: {v['mean_relative_error']:.3f}" for k, v in summary["error"]["sets"].items()))

    _say(f"3/4 calibrating the router on {n_calibrate} held-out inputs (target compliance {target_compliance})")
    task_obj, model = load_exits(run)
    # The run's bank (if it used one) is loaded once: its guide drives calibration, the bank goes
    # into the pipeline folder.
    bank_cfg = RunDir(run).read_config().get("bank")
    bank_path = None if bank_cfg is None else Path(bank_cfg)
    bank = None if bank_path is None else load_bank(bank_path, model.backbone)
    guide = None if bank is None else bank.guide
    predictor, _ = load_predictor(pred_dir, model)
    # Held-out for the predictor: the training split under another seed (new z; for fashion new
    # noise vectors with training maps), never the test inputs the report is measured on.
    cal = build_lpips_table(model, task_obj, n_calibrate, seed + 7919, "train", guide, cache=guide is None,
                            progress=progress)
    costs = model.route_macs()
    router = CalibratedRouter(costs=costs).fit(predict(predictor, model, cal["inputs"]), cal["lpips"],
                                               list(thresholds), target_compliance)
    pipe = FianceePipeline(task_obj, model, predictor, router, bank=bank, bank_path=bank_path,
                           provenance={"exits_run": str(run), "seed": seed, "target_compliance": target_compliance,
                                       "calibration_inputs": n_calibrate, "predictor_inputs": n_predictor})
    pipe_dir = pipe.save(out / "pipeline")

    _say(f"4/4 evaluating the pipeline on {n_eval} test inputs at thresholds {list(thresholds)}")
    report = evaluate_pipeline(pipe, thresholds, n=n_eval, seed=seed, out=out / "report", progress=progress)
    row = min(report["thresholds"], key=lambda r: abs(r["threshold"] - 0.1))
    _say(f"pipeline saved to {pipe_dir}")
    print(f"At LPIPS <= {row['threshold']:g} ({report['router']} router, {n_eval} test inputs of {task!r}):")
    print(f"  MACs saved vs the backbone: {row['macs_saved']:.1%}")
    print(f"  compliance (true LPIPS <= threshold): {row['compliance']:.1%}")
    print(f"  oracle's saving: {row['oracle_macs_saved']:.1%} (strict), "
          f"{row['oracle_macs_saved_at_compliance']:.1%} at the same compliance")
    print(f"  exit shares: {' / '.join(f'{s:.2f}' for s in row['exit_shares'])} (backbone last)")
    targets = report.get("targets")
    if targets and not targets["met"]:
        for note in targets["shortfalls"]:
            print(f"  short of target: {note}")
    print(f"report: {report['html']}")
    return report
