"""Evaluate trained exits: MACs, LPIPS vs the backbone, FID, and an image grid (paper Figs. 2, 4, 5).

An exit's quality is always measured against the backbone's image for the same input (section 4):
LPIPS per image (AlexNet, v0.1), summarised by mean / median / 90th percentile, and FID between the
exit's images and the backbone's images of the same held-out inputs (for a third-party generator with
no data set of its own, the backbone's distribution is the one an exit should reproduce).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .core.args import check_counts, check_int
from .io import write_json
from .tables import build_lpips_table, per_image_lpips, route_images
from .train.exits import load_exits, run_guide

__all__ = [
    "route_images",
    "per_image_lpips",
    "measure_exits",
    "evaluate_exits",
    "evaluate_pipeline",
    "targets_check",
    "guarantee_check",
    "oracle_savings",
    "DEFAULT_THRESHOLDS",
    "format_exits_table",
    "format_thresholds_table",
]

DEFAULT_THRESHOLDS = (0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3)


@torch.no_grad()
def measure_exits(
    run_dir: str | Path, *, n: int, seed: int = 0, fid: bool = True, device: str = "cpu", progress: bool = False
) -> dict:
    """Images of every route for ``n`` held-out inputs, per-image LPIPS of every exit vs the backbone
    (arrays) and FID vs the backbone's images; what ``evaluate_exits`` and the bank ablation summarise."""
    from .train.run import RunDir

    check_int(n, "n", minimum=2)
    task, model = load_exits(run_dir, device=device)
    guide = run_guide(run_dir, model)
    inputs = tuple(x.to(device) for x in task.sample_inputs(n, seed=seed, split="test"))
    images = route_images(model, inputs, guide=guide)
    reference = images[-1]
    macs = model.route_macs()
    backbone_feats = None
    if fid:
        from .metrics.fid import fid_from_features, inception_features

        # Features, not D x D statistics: with n <= 2048 images fid_from_features takes the exact
        # low-rank route (an n x n SVD instead of two 2048 x 2048 eigendecompositions per exit).
        backbone_feats = inception_features(reference)
    exits = []
    iterator = range(model.num_routes - 1)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="evaluate-exits", unit="exit")
    for r in iterator:
        # "exit" is the 1-based number users read (exit 1..E, then the backbone); "route" the API's
        # 0-based index (model(..., route=route), route_macs()[route]).
        entry = {
            "exit": r + 1,
            "route": r,
            "after_stage": model.attach_after[r],
            "macs": int(macs[r]),
            "lpips": per_image_lpips(images[r], reference, task.to_lpips_images).numpy(),
            "psnr": per_image_psnr(images[r], reference),
            "fid": None,
        }
        if backbone_feats is not None:
            entry["fid"] = float(fid_from_features(inception_features(images[r]), backbone_feats))
        exits.append(entry)
    return {
        "config": RunDir(run_dir).read_config(),
        "task": task,
        "model": model,
        "inputs": inputs,
        "images": images,
        "macs": macs,
        "exits": exits,
    }


def per_image_psnr(images: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """PSNR in dB of every image ``[N, C, H, W]`` against ``reference``, both in [-1, 1] (peak-to-peak 2),
    clamped to that range first (what would be written out); identical images get 100 dB."""
    a, b = images.float().clamp(-1, 1), reference.float().clamp(-1, 1)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return torch.where(mse > 0, 10 * torch.log10(4.0 / mse.clamp_min(1e-20)), torch.full_like(mse, 100.0)).numpy()


def oracle_savings(lpips: np.ndarray, macs, thresholds=DEFAULT_THRESHOLDS) -> list[dict]:
    """What the strict oracle saves at each threshold: every input on the cheapest route whose true LPIPS
    meets it (the backbone otherwise). ``lpips`` is ``[n, E]``; routes only, no predictor (an upper bound
    for any router with these exits)."""
    from .report import threshold_row
    from .routing import OracleRouter

    true = torch.as_tensor(lpips, dtype=torch.float64)
    oracle = OracleRouter(list(macs))
    # The report's own strict-oracle row, so evaluate-exits and the pipeline report can never disagree.
    rows = [threshold_row(true, oracle.route(true, t), macs, t) for t in thresholds]
    return [
        {"threshold": r["threshold"], "macs_saved": r["oracle_macs_saved"], "shares": r["oracle_exit_shares"]}
        for r in rows
    ]


def evaluate_exits(
    run_dir: str | Path,
    *,
    n: int = 500,
    seed: int = 0,
    fid: bool = True,
    grid_columns: int = 8,
    out: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Per-exit MACs, LPIPS (mean / median / p90) and FID on ``n`` held-out inputs; writes
    ``exits.json`` and ``exits_grid.png`` under ``out`` (nothing when ``out`` is None: a run folder,
    possibly one shipped with the package, is never written into). Exits are numbered 1..E, each
    entry also carries its 0-based ``route`` index."""
    check_counts(grid_columns=grid_columns)
    m = measure_exits(run_dir, n=n, seed=seed, fid=fid, device=device, progress=progress)
    macs = m["macs"]
    exits = []
    for e in m["exits"]:
        lp = e["lpips"]
        exits.append(
            {
                "exit": e["exit"],
                "route": e["route"],
                "after_stage": e["after_stage"],
                "macs": e["macs"],
                "macs_ratio": macs[e["route"]] / macs[-1],
                "lpips_mean": float(lp.mean()),
                "lpips_median": float(np.median(lp)),
                "lpips_p90": float(np.percentile(lp, 90)),
                # beside LPIPS only: the paper judges an exit by LPIPS against the backbone's image (section 4)
                "psnr_mean": float(e["psnr"].mean()),
                "fid": e["fid"],
            }
        )
    report = {
        "run": str(run_dir),
        "task": m["task"].name,
        "n": n,
        "seed": seed,
        "lpips_net": "alex",
        "fid_reference": "backbone images of the same inputs",
        "backbone_macs": int(macs[-1]),
        "exits": exits,
        "oracle": oracle_savings(np.stack([e["lpips"] for e in m["exits"]], axis=1), macs),
    }
    if out is None:
        report["grid"] = None
        return report
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "exits.json", report)
    from .plots import save_grid

    cols = min(grid_columns, n)
    rows = torch.cat([im[:cols] for im in m["images"]])  # one row per exit, the backbone last
    save_grid(rows, out / "exits_grid.png", ncol=cols)
    report["grid"] = str(out / "exits_grid.png")
    return report


def format_exits_table(report: dict) -> str:
    """What ``fiancee evaluate-exits`` prints: an :func:`evaluate_exits` report as a table, one row per exit."""
    lines = [
        f"{report['task']}: {report['n']} held-out inputs, LPIPS ({report['lpips_net']}) and FID vs the backbone",
        f"{'':<9}{'after':>6}{'GMACs':>9}{'ratio':>7}{'mean':>8}{'median':>8}{'p90':>8}{'FID':>9}",
    ]
    for e in report["exits"]:
        fid = f"{e['fid']:>9.2f}" if e["fid"] is not None else f"{'-':>9}"
        lines.append(
            f"{'exit ' + str(e['exit']):<9}{'stage ' + str(e['after_stage']):>6}{e['macs'] / 1e9:>9.3f}"
            f"{e['macs_ratio']:>7.3f}{e['lpips_mean']:>8.4f}{e['lpips_median']:>8.4f}"
            f"{e['lpips_p90']:>8.4f}{fid}"
        )
    lines.append(
        f"{'backbone':<9}{'':>6}{report['backbone_macs'] / 1e9:>9.3f}{1:>7.3f}{0:>8.4f}{0:>8.4f}{0:>8.4f}{'-':>9}"
    )
    lines.append(f"grid (rows: exit 1..{len(report['exits'])}, then the backbone): {report['grid']}")
    return "\n".join(lines)


def evaluate_pipeline(
    pipeline,
    thresholds=DEFAULT_THRESHOLDS,
    *,
    n: int = 500,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
    calibration=None,
    splits: int = 500,
) -> dict:
    """Route ``n`` held-out inputs at every threshold and compare with the oracle (paper section 5).

    Writes ``report.json``, ``report.html`` and PNG plots under ``out`` (default ``PIPELINE/report``).
    True LPIPS of every exit is measured once for all inputs; each router then only chooses routes.

    A calibrated router that recorded its calibration range checks the test inputs against it and the
    report warns (without stopping) when they look unlike the calibration inputs. ``calibration``: the
    (predicted, true) LPIPS ``[N, E]`` the router was fitted on; with it the report adds the guarantee over
    ``splits`` random calibration / test splits of those and the test inputs together, at the headline
    threshold (:func:`split_study_for_report`); by default the table the pipeline folder keeps, if any.
    """
    from .extras import require
    from .pipeline import FianceePipeline
    from .report import route_name, write_report
    from .routing import check_threshold

    # Arguments first: a typo (or a missing plotting package) should not cost the pipeline's loading time.
    require("matplotlib", "the report's plots")
    thresholds = sorted(check_threshold(t) for t in thresholds)
    if not thresholds:
        raise ValueError("give at least one threshold in (0, 1]")
    check_int(n, "n", minimum=2)
    folder = None
    if not isinstance(pipeline, FianceePipeline):
        folder = Path(pipeline)
        pipeline = FianceePipeline.from_pretrained(folder)
    if pipeline.task is None:
        raise ValueError(
            f"this pipeline holds no task (loaded with backbone= for task {pipeline.task_spec!r}): pass "
            "task= to FianceePipeline.from_pretrained, the inputs are drawn from it"
        )
    if calibration is None:
        calibration = getattr(pipeline, "calibration", None)  # kept in the folder by assemble_pipeline
    table = build_lpips_table(
        pipeline.model, pipeline.task, n, seed, "test", pipeline.guide, cache=pipeline.guide is None, progress=progress
    )
    true = table["lpips"]  # [N, E]
    predicted = pipeline.predict(*table["inputs"])  # [N, E]
    macs = pipeline.route_macs.tolist()
    # Every input also pays the predictor and the bank's search (the trunk is shared, inside its route):
    # macs_saved is net of it, route_macs_saved is the routes-only figure.
    overhead = pipeline.overhead_macs()
    rows, paper_rows = _threshold_rows(pipeline.router, true, predicted, macs, thresholds, overhead)
    density = _density_routes(pipeline.router, true, predicted)
    meta = _report_meta(pipeline, n, seed, true, predicted, rows, paper_rows, overhead)
    if calibration is not None:
        meta["split_study"] = split_study_for_report(
            pipeline.router, calibration, (predicted, true), macs, overhead, thresholds, splits=splits, seed=seed
        )
    out = Path(out) if out is not None else (folder or Path(".")) / "report"
    examples = example_rows(pipeline, table["inputs"], true, predicted, thresholds)
    html_path = write_report(
        out, rows=rows, true_lpips=true.numpy(), macs=macs, density_routes=density, meta=meta, examples=examples
    )
    names = [route_name(r, len(macs) - 1) for r in range(len(macs))]
    return {
        **meta,
        "thresholds": rows,
        "route_gmacs": [m / 1e9 for m in macs],
        "route_names": names,
        "html": str(html_path),
        "report": str(out / "report.json"),
    }


def _threshold_rows(
    router, true: torch.Tensor, predicted: torch.Tensor, macs: list, thresholds: list, overhead: float
) -> tuple[list[dict], list[dict]]:
    """The report's rows for ``router`` and for the paper's rule (no calibration, shown for comparison), one per
    threshold, on the same inputs."""
    from .report import threshold_row
    from .routing import ThresholdRouter

    rows = [threshold_row(true, router.route(predicted, t), macs, t, overhead) for t in thresholds]
    paper = ThresholdRouter(macs)  # the paper's rule, no calibration: shown for comparison
    paper_rows = [threshold_row(true, paper.route(predicted, t), macs, t, overhead) for t in thresholds]
    return rows, paper_rows


def _density_routes(router, true: torch.Tensor, predicted: torch.Tensor) -> list[tuple[float, np.ndarray]]:
    """Per exit whose mean true LPIPS is a threshold in (0, 1]: that threshold and the true LPIPS of the routed
    outputs at it (the report's densities, paper Fig. 9)."""
    from .routing import true_lpips_of

    density = []
    for r in range(true.shape[1]):
        t = float(true[:, r].mean())
        if 0 < t <= 1:
            routes = router.route(predicted, t)
            density.append((t, true_lpips_of(routes, true).numpy()))
    return density


def _report_meta(
    pipeline,
    n: int,
    seed: int,
    true: torch.Tensor,
    predicted: torch.Tensor,
    rows: list[dict],
    paper_rows: list[dict],
    overhead: float,
) -> dict:
    """The report's run details: the router, the targets, its guarantee checked, and its calibration range check
    on these inputs (a warning printed when they look unlike the calibration inputs)."""
    router = pipeline.router
    meta = {
        "task": pipeline.task.name,
        "n": n,
        "seed": seed,
        "router": router.kind,
        "router_config": router.to_config(),
        "lpips_net": "alex",
        "exit_lpips_mean": [float(v) for v in true.mean(0)],
        "paper_threshold_router": paper_rows,
    }
    meta["targets"] = targets_check(rows)
    meta["overhead_macs"] = overhead
    meta["guarantee"] = guarantee_check(router, rows)
    check = router.check_inputs(predicted) if hasattr(router, "check_inputs") else None
    meta["calibration_check"] = check
    if check is not None and check["warn"]:
        import sys

        print(f"warning: {check['message']}", file=sys.stderr, flush=True)
    return meta


def format_thresholds_table(report: dict) -> str:
    """What ``fiancee evaluate`` prints: an :func:`evaluate_pipeline` report, one row per threshold, and its
    HTML path."""
    names = " / ".join(report.get("route_names") or [])
    lines = [
        f"{'T':>6}{'compliance':>12}{'MACs saved':>12}{'oracle':>9}{'oracle@c':>10}{'static@c':>16}{'gain':>8}"
        f"  shares ({names})"
    ]
    for r in report["thresholds"]:
        shares = " / ".join(f"{s:.0%}" for s in r["exit_shares"])
        lines.append(
            f"{r['threshold']:>6.3f}{r['compliance']:>12.1%}{r['macs_saved']:>12.1%}"
            f"{r['oracle_macs_saved']:>9.1%}{r['oracle_macs_saved_at_compliance']:>10.1%}{_static_text(r, report):>16}"
            f"{_gain_text(r):>8}  {shares}"
        )
    lines.append(f"report: {report['html']}")
    return "\n".join(lines)


def _static_text(row: dict, report: dict) -> str:
    """The best single route at the row's compliance and its saving, e.g. ``exit 2 45.0%`` (``-`` before it was
    measured)."""
    if row.get("static_route") is None:
        return "-"
    names = report.get("route_names") or []
    r = row["static_route"]
    name = names[r] if r < len(names) else f"route {r}"
    return f"{name} {row['static_macs_saved']:.1%}"


def _gain_text(row: dict) -> str:
    return "-" if row.get("conditional_gain") is None else f"{row['conditional_gain']:+.1%}"


@torch.no_grad()
def strip_thresholds(thresholds) -> list[float]:
    """The two thresholds of the image strip, ascending: the headline's (nearest 0.1) and the strictest
    one below it, else the one nearest 0.2 (one threshold when only one is given)."""
    # The strictest threshold is where the routes differ from input to input: above the headline a good
    # set of exits sends nearly every input to exit 1, and both rows would look alike.
    head_t = min(thresholds, key=lambda v: abs(v - 0.1))
    others = [t for t in thresholds if t != head_t]
    stricter = [t for t in others if t < head_t]
    second = min(stricter) if stricter else min(others, key=lambda v: abs(v - 0.2), default=None)
    return sorted([head_t] + ([] if second is None else [second]))


def example_rows(
    pipeline, inputs: tuple[torch.Tensor, ...], true: torch.Tensor, predicted: torch.Tensor, thresholds, k: int = 6
) -> list[dict]:
    """Rows of the report's image strip for the first ``k`` of ``inputs``: every exit (caption: its true
    LPIPS vs the backbone), the backbone, then the routed outputs at two thresholds (the headline's, nearest
    0.1, and the strictest below it, else the one nearest 0.2; caption: the route taken and its LPIPS,
    marked ``> T`` when it misses the threshold).
    ``true`` / ``predicted``: ``[N, E]`` for ``inputs``."""
    from .report import route_name
    from .routing import true_lpips_of

    k = min(k, inputs[0].shape[0])
    head = tuple(x[:k] for x in inputs)
    images = route_images(pipeline.model, head, guide=pipeline.guide)  # one [k, C, H, W] per route
    num_exits = len(images) - 1
    rows = [
        {
            "label": route_name(r, num_exits),
            "images": images[r],
            "captions": [f"LPIPS {float(v):.3f}" for v in true[:k, r]],
        }
        for r in range(num_exits)
    ]
    rows.append({"label": "backbone", "images": images[-1], "captions": ["reference"] * k})
    for t in strip_thresholds(thresholds):
        routes = pipeline.router.route(predicted[:k], t).cpu()
        got = true_lpips_of(routes, true[:k].cpu())
        rows.append(
            {
                "label": f"routed, T = {t:g}",
                "images": torch.stack([images[int(r)][i] for i, r in enumerate(routes)]),
                # An output above T (the router's miss, which the guarantee bounds) says so.
                "captions": [
                    f"{route_name(int(r), num_exits)}: {float(v):.3f}" + (" > T" if float(v) > t else "")
                    for r, v in zip(routes, got)
                ],
            }
        )
    return rows


def split_study_for_report(
    router, calibration, test, macs, overhead: float, thresholds, *, splits: int = 500, seed: int = 0
) -> dict | None:
    """The guarantee of ``router``'s own method over many splits, for its report: the calibration pairs and the
    test pairs pooled (both held out from the predictor, from the same distribution), ``router.fit_size``
    calibration inputs per split and the rest as test inputs, every method at the headline threshold (nearest
    0.1) and at the requested miss rates 0.02..0.2 plus the router's own (:func:`fiancee.guarantee.split_study`).
    None for a router that is not a fitted CalibratedRouter or a pool too small for a test input."""
    from .guarantee import METHODS, min_calibration, split_study

    if getattr(router, "kind", None) != "calibrated" or not router.fitted or not router.fit_size:
        return None
    predicted = torch.cat([torch.as_tensor(calibration[0]).double().cpu(), test[0].double().cpu()])
    true = torch.cat([torch.as_tensor(calibration[1]).double().cpu(), test[1].double().cpu()])
    n_cal = int(router.fit_size)
    if predicted.shape[0] <= n_cal:
        return None
    own = router.epsilon if router.epsilon is not None else 1.0 - float(router.target)
    delta = router.delta if router.delta is not None else 0.1
    eps = sorted({0.02, 0.05, 0.1, 0.15, 0.2} | ({round(own, 6)} if 0 < own < 1 else set()))
    # Only the miss rates every method can certify with the router's calibration size.
    eps = [x for x in eps if all(min_calibration(m, x, delta) <= n_cal for m in METHODS)]
    if not eps:
        return None
    head = min(thresholds, key=lambda v: abs(v - 0.1))
    study = split_study(
        predicted,
        true,
        macs,
        [head],
        eps,
        n_cal=n_cal,
        splits=splits,
        seed=seed,
        delta=delta,
        bound=router.bound or "hoeffding-bentkus",
        overhead_macs=overhead,
    )
    return {**study, "own_method": router.method, "own_epsilon": own}


def guarantee_check(router, rows: list[dict]) -> dict | None:
    """The router's stated guarantee (``CalibratedRouter.guarantee()``) checked on the report's test inputs:
    per threshold the miss rate (share of outputs with true LPIPS > T) against epsilon. One test set is one
    draw: the guarantee allows a miss rate above epsilon in up to a share delta of such draws. None when the
    router was not fitted for a guarantee."""
    statement = router.guarantee() if hasattr(router, "guarantee") else None
    if statement is None:
        return None
    checks = [
        {
            "threshold": r["threshold"],
            "miss_rate": 1 - r["compliance"],
            "epsilon": router.epsilon,
            "holds": 1 - r["compliance"] <= router.epsilon + 1e-12,
        }
        for r in rows
    ]
    return {
        "statement": statement,
        "method": getattr(router, "method", "ltt"),
        "epsilon": router.epsilon,
        "delta": router.delta,
        "calibration_inputs": router.fit_size,
        "test": checks,
        "holds_everywhere": all(c["holds"] for c in checks),
    }


def targets_check(
    rows: list[dict], threshold: float = 0.1, compliance: float = 0.95, saved: float = 0.5, of_oracle: float = 0.9
) -> dict | None:
    """How the row nearest ``threshold`` compares with the project's targets, and why it falls short.

    Targets: compliance >= 0.95 and MACs saved >= 0.5 at LPIPS <= 0.1 (the paper saves "up to a half"),
    and a saving >= 90% of the oracle's at equal compliance. The explanation is derived from the
    numbers: when even the strict oracle cannot save ``saved``, the exits are the limit; otherwise the
    predictor's ranking is.
    """
    if not rows:
        return None
    row = min(rows, key=lambda r: abs(r["threshold"] - threshold))
    ratio = row["saving_vs_oracle_at_compliance"]
    notes = []
    if row["compliance"] < compliance:
        notes.append(f"compliance {row['compliance']:.3f} is {compliance - row['compliance']:.3f} below {compliance}")
    if row["macs_saved"] < saved:
        why = (
            f"the exits cap it: even the oracle saves only {row['oracle_macs_saved']:.3f} with every output compliant"
            if row["oracle_macs_saved"] < saved
            else f"the oracle would save {row['oracle_macs_saved']:.3f}: the predictor's ranking loses the rest"
        )
        notes.append(f"MACs saved {row['macs_saved']:.3f} is {saved - row['macs_saved']:.3f} short of {saved} ({why})")
    if ratio is not None and ratio < of_oracle:
        notes.append(
            f"the saving is {ratio:.2f} of the oracle's at equal compliance "
            f"({row['oracle_macs_saved_at_compliance']:.3f}), {of_oracle - ratio:.2f} short of {of_oracle}"
        )
    return {
        "threshold": row["threshold"],
        "compliance": row["compliance"],
        "macs_saved": row["macs_saved"],
        "saving_vs_oracle_at_compliance": ratio,
        "targets": {"compliance": compliance, "macs_saved": saved, "of_oracle": of_oracle},
        "met": not notes,
        "shortfalls": notes,
    }
