"""``fiancee guarantee``: a pipeline's calibration methods over many calibration / test splits, and under shift.

Reads a pipeline folder (its exits and predictor), measures the true LPIPS of every exit on ``n`` held-out
inputs of its task (:func:`fiancee.tables.build_lpips_table`, cached) and its predictions for them, then
runs :func:`fiancee.guarantee.split_study`: every method calibrated on ``splits`` random calibration sets
and measured on the rest. With ``shift`` (a shift the task declares: faces ``norm:1.5``, fashion
``classes:0,2,4,6``) a second table of shifted inputs is measured, every split's router is tested on it,
and the calibration range check (:func:`fiancee.guarantee.range_check`) is run on both.

Writes ``guarantee.json`` and the figures ``risk.png`` (realized vs requested miss rate, share of splits
above epsilon), ``saved.png`` (net MACs saved vs epsilon) and, with a shift, ``shift.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["run_guarantee_study", "summary_lines", "write_figures", "figures_from_result", "DEFAULT_EPSILONS"]

DEFAULT_EPSILONS = (0.02, 0.05, 0.1, 0.15, 0.2)


def run_guarantee_study(
    pipeline,
    out: str | Path,
    *,
    thresholds: Sequence[float] = (0.05, 0.1),
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    delta: float = 0.1,
    n: int = 5000,
    n_cal: int = 1000,
    n_test: int | None = None,
    splits: int = 500,
    seed: int = 0,
    methods: Sequence[str] | None = None,
    bound: str = "hoeffding-bentkus",
    shift: str | None = None,
    shift_n: int = 2000,
    progress: bool = True,
) -> dict:
    """The study of the pipeline folder ``pipeline`` (module docstring): writes ``guarantee.json`` and the figures
    under ``out``; returns the result with the figures' and the JSON's paths."""
    from .extras import require
    from .guarantee import _count, calibration_range, range_check, split_study
    from .io import write_json
    from .pipeline import FianceePipeline

    # Arguments first, before loading anything or minutes of LPIPS.
    require("matplotlib", "the guarantee figures")
    ts, eps, delta, methods, bound = _check_choices(thresholds, epsilons, delta, methods, bound)
    n, n_cal, splits, n_test = _check_sizes(n, n_cal, n_test, splits)
    _check_calibration(methods, eps, delta, bound, n_cal, len(ts))
    if shift is not None:
        shift_n = _count(shift_n, "shift_n", 1)
    out = Path(out)

    folder = Path(pipeline)
    pipe = FianceePipeline.from_pretrained(folder)
    table, predicted, s_table, shifted = _measure(pipe, n, seed, shift, shift_n, progress)
    costs = pipe.route_macs.tolist()
    study = split_study(
        predicted,
        table["lpips"],
        costs,
        ts,
        eps,
        n_cal=n_cal,
        n_test=n_test,
        splits=splits,
        seed=seed,
        delta=delta,
        methods=methods,
        bound=bound,
        overhead_macs=pipe.overhead_macs(),
        shifted=shifted,
    )
    # The range check: fitted on the first n_cal inputs, tried on the other held-out inputs of the same
    # distribution (how often it warns by chance) and on the shifted ones.
    cal = calibration_range(predicted[:n_cal])
    checks = {"calibration_inputs": n_cal, "same_distribution": range_check(cal, predicted[n_cal:])}
    if shifted is not None:
        checks["shifted"] = range_check(cal, shifted[0])
    result = {
        "task": pipe.task.name,
        "pipeline": str(folder),
        **_provenance(pipe),
        "table": {
            "n": n,
            "seed": seed,
            "split": "test",
            "key": table["key"],
            "lpips_net": "alex",
            "exit_lpips_mean": [float(v) for v in table["lpips"].mean(0)],
        },
        "shift": None
        if shift is None
        else {
            "spec": shift,
            "description": pipe.task.shifts[shift.partition(":")[0]],
            "n": shift_n,
            "key": s_table["key"],
            "exit_lpips_mean": [float(v) for v in s_table["lpips"].mean(0)],
        },
        "range_check": checks,
        "study": study,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "guarantee.json", result)
    return {**result, "figures": write_figures(result, out), "json": str(out / "guarantee.json")}


def _check_choices(thresholds, epsilons, delta, methods, bound) -> tuple[list, list, float, list, str]:
    from .guarantee import METHODS, _unit, check_bound, check_method
    from .routing import check_threshold

    ts = sorted({check_threshold(t) for t in thresholds})
    eps = sorted({_unit(x, "epsilon") for x in epsilons})
    if not ts or not eps:
        raise ValueError("give at least one threshold and one epsilon")
    delta = _unit(delta, "delta")
    methods = list(dict.fromkeys(check_method(m) for m in (methods or METHODS)))
    return ts, eps, delta, methods, check_bound(bound)


def _check_sizes(n, n_cal, n_test, splits) -> tuple[int, int, int, int]:
    from .guarantee import _count

    n, n_cal, splits = _count(n, "n", 2), _count(n_cal, "n_cal", 1), _count(splits, "splits", 100)
    n_test = n - n_cal if n_test is None else _count(n_test, "n_test", 1)
    if n_cal + n_test > n:
        raise ValueError(f"calibration ({n_cal}) + test ({n_test}) inputs exceed the table's {n} inputs (--n)")
    return n, n_cal, splits, n_test


def _check_calibration(methods: list, eps: list, delta: float, bound: str, n_cal: int, n_thresholds: int) -> None:
    """Refused when ``n_cal`` is short of what a method needs at an epsilon (the high-probability methods at
    delta / thresholds, the study's Bonferroni fit), before any table is measured."""
    from .guarantee import HIGH_PROBABILITY, min_calibration

    for m in methods:
        for x in eps:
            need = min_calibration(m, x, delta / (n_thresholds if m in HIGH_PROBABILITY else 1), bound)
            if need > n_cal:
                several = n_thresholds > 1 and m in HIGH_PROBABILITY
                at_once = f" for {n_thresholds} thresholds at once" if several else ""
                raise ValueError(
                    f"{m} at epsilon {x:g}{at_once} needs at least {need} calibration inputs; got n_cal={n_cal}"
                )


def _measure(pipe, n: int, seed: int, shift: str | None, shift_n: int, progress: bool) -> tuple:
    """``(table, predicted, shifted table, (shifted predicted, shifted true))``: the true LPIPS of every exit on
    ``n`` held-out inputs and the predictor's estimates, and the same on ``shift_n`` shifted inputs (None, None
    without a shift)."""
    from .tables import build_lpips_table

    task = pipe.task
    if shift is not None:
        from .tasks.base import parse_shift

        parse_shift(task, shift)  # a shift the task does not declare is refused before the tables
    table = build_lpips_table(
        pipe.model, task, n, seed, "test", pipe.guide, cache=pipe.guide is None, progress=progress
    )
    predicted = pipe.predict(*table["inputs"])  # [N, E]
    s_table = shifted = None
    if shift is not None:
        s_table = build_lpips_table(
            pipe.model,
            task,
            shift_n,
            seed,
            "test",
            pipe.guide,
            cache=pipe.guide is None,
            shift=shift,
            progress=progress,
        )
        shifted = (pipe.predict(*s_table["inputs"]), s_table["lpips"])
    return table, predicted, s_table, shifted


def _provenance(pipe) -> dict:
    """The result's ``fingerprints`` of the weights studied and the ``pipeline_router`` they ship with."""
    from .io import tensor_fingerprint

    config = pipe.router.to_config()
    return {
        "fingerprints": {
            "backbone": tensor_fingerprint(pipe.model.backbone.state_dict()),
            "branches": tensor_fingerprint(pipe.model.branches.state_dict()),
            "predictor": tensor_fingerprint(pipe.predictor.state_dict()),
        },
        "pipeline_router": {
            k: config.get(k) for k in ("method", "epsilon", "delta", "fit_size", "thresholds", "margins")
        },
    }


def write_figures(result: dict, folder: str | Path, prefix: str = "") -> dict:
    """The figures of a guarantee result (what :func:`run_guarantee_study` returns or wrote to guarantee.json,
    or the ``data.printed`` of a result file): ``PREFIXrisk.png``, ``PREFIXsaved.png`` and, with a shift,
    ``PREFIXshift.png`` under ``folder``. They are drawn from the numbers alone, so a committed result file
    redraws its documents' figures."""
    from .plots import save_risk_plot, save_risk_saved_plot, save_shift_plot

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study = result["study"]
    figures = {
        "risk": str(save_risk_plot(study, folder / f"{prefix}risk.png")),
        "saved": str(save_risk_saved_plot(study, folder / f"{prefix}saved.png")),
    }
    if result.get("shift"):
        figures["shift"] = str(
            save_shift_plot(study, folder / f"{prefix}shift.png", shift=f"shifted inputs ({result['shift']['spec']})")
        )
    return figures


def figures_from_result(path: str | Path, folder: str | Path, prefix: str = "") -> dict:
    """:func:`write_figures` from a committed result file (``results/guarantee_faces.json``: its ``data.printed``
    is what ``fiancee guarantee --json`` printed)."""
    from .io import loads_strict

    data = loads_strict(Path(path).read_text())["data"]  # a result file (fiancee.results), read without importing it
    return write_figures(data.get("printed", data), folder, prefix)


def summary_lines(result: dict) -> list[str]:
    """What the command prints: one line per threshold, epsilon and method."""
    s = result["study"]
    lines = [
        f"{result['task']}: {s['splits']} splits of {s['n_table']} held-out inputs ({s['n_cal']} calibration, "
        f"{s['n_test']} test), delta {s['delta']:g}; miss rate on the test inputs and net MACs saved",
        f"{'T':>6}{'eps':>6} {'method':<8}{'miss mean':>10}{'p90':>8}{'>eps':>7}{'iid >eps':>9}{'saved':>8}{'sd':>6}"
        f"{'n min':>7}" + (f"{'shifted miss':>14}" if result.get("shift") else ""),
    ]
    for r in s["rows"]:
        line = (
            f"{r['threshold']:>6g}{r['epsilon']:>6g} {r['method']:<8}{r['miss_mean']:>10.2%}{r['miss_p90']:>8.2%}"
            f"{r['share_above']:>7.1%}{r['iid']['share_above']:>9.1%}{r['saved_mean']:>8.1%}{r['saved_sd']:>6.1%}"
            f"{r['min_calibration']:>7}"
        )
        if result.get("shift"):
            line += f"{r['shifted']['miss_mean']:>14.2%}"
        lines.append(line)
    for f in s["family"]:
        if "bonferroni" in f:
            lines.append(
                f"family ({', '.join(f'{t:g}' for t in s['thresholds'])}), {f['method']} at eps {f['epsilon']:g}: "
                f"splits with some threshold above eps {f['share_any_above']:.1%} (delta each), "
                f"{f['bonferroni']['share_any_above']:.1%} (Bonferroni, delta / {len(s['thresholds'])} each)"
            )
    for name, c in result["range_check"].items():
        if isinstance(c, dict):
            lines.append(
                f"range check, {name.replace('_', ' ')} inputs: {c['outside_share']:.1%} outside the calibration "
                f"range (expected {c['expected_share']:.1%}), " + ("WARNS" if c["warn"] else "no warning")
            )
    return lines
