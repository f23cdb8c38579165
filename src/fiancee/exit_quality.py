"""Exit quality against real data (paper Table S1, Fig. 8), the bank ablation (Table S1, Fig. 8, Fig. S12)
and routing vs bank distance (Fig. 10).

- :func:`exit_quality`: for one or more ``fiancee train-exits`` runs of one task (with and without the
  bank, several seeds), per exit and for the backbone: FID against the real images whose conditions
  the inputs use (``Task.real_images``; Table S1's FID), the label accuracy of a classifier trained on
  real data on the generated images (``Task.label_accuracy``; our analogue of Table S1's mIoU), and
  mean / median / p90 LPIPS against the backbone's image. Runs are grouped into arms (without / with a
  bank); each arm reports the mean and the spread (sample standard deviation, min, max) over its runs.
  With both arms, per-exit KDE curves of per-image LPIPS (Fig. 8: Gaussian kernels, bandwidth 0.3 as
  scipy's ``bw_method`` factor, i.e. a kernel standard deviation of 0.3 x the sample's, seaborn's
  convention), pooled over the arm's runs.
- the same study with ``bank_ablation=True``: exactly one run without and one with the bank, of one
  training budget (seed included), FID against the backbone's images of the same inputs instead of real
  ones; adds the side-by-side table (``ablation.json``, ``ablation.md``: :func:`ablation_table`) and a grid
  of the bank's "start images" (``start_images.png``, Fig. S12).
- :func:`routes_vs_bank_distance`: for a pipeline with a patch bank, the exit each held-out input is
  routed to at a threshold against the L2 distance of its key patches to the bank entries they
  retrieved (the distances of the pipeline's own search, :attr:`fiancee.pipeline.PipelineOutput.bank_distances`);
  Fig. 10 plots the routed exit against the distance to the guiding images (its KDE: bandwidth 0.5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .io import atomic_write_text, tensor_fingerprint, write_json

__all__ = [
    "ARMS",
    "BUDGET_KEYS",
    "FID_REFERENCES",
    "ablation_table",
    "exit_quality",
    "markdown_table",
    "measure_run_quality",
    "routes_vs_bank_distance",
]

ARMS = ("without bank", "with bank")
METRICS = ("fid", "label_accuracy", "lpips_mean", "lpips_p90")
# What the runs of one comparison must share (the bank and the seed are what varies).
SHARED_KEYS = ("task", "scale", "min_channels", "recipe", "preset", "steps", "batch_size", "init")
# What the two runs of the bank ablation must share to count as "the same training budget": one run per arm, so
# the seed too; the ablation refuses runs that differ.
BUDGET_KEYS = ("task", "scale", "min_channels", "recipe", "preset", "steps", "batch_size", "seed")
# What an exit's FID is measured against: the real images whose conditions the inputs use (Table S1), or the
# backbone's images of the same inputs (the bank ablation, as evaluate-exits).
FID_REFERENCES = {"real": "real images", "backbone": "backbone images of the same inputs"}
START_IMAGE_ROWS = ("backbone", "start image (retrieved)", "exit 1 with bank", "exit 1 without bank")


def _route_row(
    name: str,
    route: int,
    after_stage: int | None,
    macs: int,
    lpips: np.ndarray | None,
    images: torch.Tensor,
    task,
    n: int,
    seed: int,
    real_feats,
    fid: bool,
    accuracy: bool,
    measured_fid: float | None = None,
) -> dict:
    row = {
        "name": name,
        "route": route,
        "after_stage": after_stage,
        "macs": int(macs),
        "lpips_mean": 0.0 if lpips is None else float(lpips.mean()),
        "lpips_median": 0.0 if lpips is None else float(np.median(lpips)),
        "lpips_p90": 0.0 if lpips is None else float(np.percentile(lpips, 90)),
        "fid": measured_fid,
        "label_accuracy": None,
    }
    if fid and real_feats is not None:
        from .metrics.fid import fid_from_features, inception_features

        # Features kept, not D x D statistics: with n <= 2048 the exact low-rank route is far cheaper.
        row["fid"] = float(fid_from_features(real_feats, inception_features(images)))
    if accuracy:
        acc = task.label_accuracy(images, n, seed, "test")
        row["label_accuracy"] = None if acc is None else float(acc)
    return row


def _check_fid_reference(fid_reference: str) -> None:
    if fid_reference not in FID_REFERENCES:
        raise ValueError(f"fid_reference must be one of {sorted(FID_REFERENCES)}; got {fid_reference!r}")


def _measure(run_dir: str | Path, *, n: int, seed: int, fid: bool, fid_reference: str, device: str) -> dict:
    from .evaluate import measure_exits

    # Against the backbone, measure_exits computes each exit's FID itself (what evaluate-exits reports).
    return measure_exits(run_dir, n=n, seed=seed, fid=fid and fid_reference == "backbone", device=device)


def measure_run_quality(
    run_dir: str | Path,
    *,
    n: int,
    seed: int = 0,
    fid: bool = True,
    accuracy: bool = True,
    device: str = "cpu",
    backbone_rows: dict | None = None,
    fid_reference: str = "real",
) -> dict:
    """One run: a row per exit and one for the backbone, plus the per-image LPIPS arrays (``[E][n]``).

    ``fid_reference``: ``"real"`` measures FID against the real images whose conditions the inputs use (none for a
    task without a data set of its own), ``"backbone"`` against the backbone's images of the same inputs (the
    backbone's own row then has none). ``backbone_rows`` caches the backbone's row by (backbone weights, n, seed,
    fid, accuracy, reference), and the real images' Inception features, across the runs of one comparison: the same
    backbone on the same inputs gives the same images.
    """
    _check_fid_reference(fid_reference)
    m = _measure(run_dir, n=n, seed=seed, fid=fid, fid_reference=fid_reference, device=device)
    return _run_quality(
        run_dir,
        m,
        n=n,
        seed=seed,
        fid=fid,
        accuracy=accuracy,
        fid_reference=fid_reference,
        cache=backbone_rows if backbone_rows is not None else {},
    )


def _run_quality(
    run_dir: str | Path, m: dict, *, n: int, seed: int, fid: bool, accuracy: bool, fid_reference: str, cache: dict
) -> dict:
    """:func:`measure_run_quality`'s rows from one :func:`fiancee.evaluate.measure_exits` measurement ``m``."""
    from .train.exits import run_bank_path

    task, images, macs = m["task"], m["images"], m["macs"]
    real_feats = None
    if fid and fid_reference == "real":
        if ("real", n, seed) not in cache:  # the same real images for every run of the comparison
            real = task.real_images(n, seed, "test")
            if real is not None:
                from .metrics.fid import inception_features

                real = inception_features(real)
            cache[("real", n, seed)] = real
        real_feats = cache[("real", n, seed)]
    rows = [
        _route_row(
            f"exit {e['exit']}",
            e["route"],
            e["after_stage"],
            e["macs"],
            e["lpips"],
            images[e["route"]],
            task,
            n,
            seed,
            real_feats,
            fid,
            accuracy,
            e["fid"],
        )
        for e in m["exits"]
    ]
    key = (tensor_fingerprint(m["model"].backbone.state_dict()), n, seed, fid, accuracy, fid_reference)
    if key not in cache:
        cache[key] = _route_row(
            "backbone", len(rows), None, macs[-1], None, images[-1], task, n, seed, real_feats, fid, accuracy
        )
    rows.append(dict(cache[key]))
    config = m["config"]
    bank = run_bank_path(run_dir)
    if fid_reference == "real":
        reference = None if real_feats is None else FID_REFERENCES["real"]
    else:
        reference = FID_REFERENCES["backbone"] if fid else None
    return {
        "run": str(run_dir),
        "task": task.name,
        "bank": None if bank is None else str(bank),
        "seed": config.get("seed"),
        "config": {k: config.get(k) for k in SHARED_KEYS},
        "fid_reference": reference,
        "rows": rows,
        "per_image_lpips": [e["lpips"] for e in m["exits"]],
    }


def _spread(values: list) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    a = np.asarray(vals, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
        "runs": int(a.size),
    }


def _check_ablation_pair(runs: list[str], configs: list[dict]) -> None:
    """The bank ablation: one run without the bank, then one with it, of one training budget."""
    if len(runs) != 2:
        raise ValueError(
            "the bank ablation compares exactly two runs, the first trained without a bank and the "
            f"second with one; got {len(runs)}"
        )
    (a, b), (ca, cb) = runs, configs
    if ca.get("bank") is not None:
        raise ValueError(f"{a} was trained with a bank ({ca['bank']}); the first run must be the one without")
    if cb.get("bank") is None:
        raise ValueError(f"{b} was trained without a bank; the second run must use --bank")
    differ = [k for k in BUDGET_KEYS if ca.get(k) != cb.get(k)]
    if differ:
        raise ValueError(
            "the two runs must share the training budget; they differ in "
            + ", ".join(f"{k} ({ca.get(k)!r} vs {cb.get(k)!r})" for k in differ)
        )


def exit_quality(
    runs,
    *,
    n: int = 500,
    seed: int = 0,
    fid: bool = True,
    accuracy: bool = True,
    device: str = "cpu",
    out: str | Path | None = None,
    bandwidth: float = 0.3,
    progress: bool = False,
    bank_ablation: bool = False,
    grid_columns: int = 8,
) -> dict:
    """Table S1 (and, with runs of both arms, Fig. 8) for ``runs``: a list of exit-run folders of one task.

    All runs are measured on the same ``n`` held-out inputs (``seed``). Under ``out``: ``exit_quality.json``
    and ``exit_quality.md`` (atomic writes), and ``lpips_kde.png`` when both arms are present.

    ``bank_ablation``: ``runs`` are one run trained without the bank and one with it, of one training budget
    (:data:`BUDGET_KEYS`; refused otherwise); FID is measured against the backbone's images of the same inputs, and
    ``report["ablation"]`` holds the side-by-side report (Table S1 analogue, :func:`ablation_table`). Under ``out``
    also ``ablation.json``, ``ablation.md`` and ``start_images.png`` (Fig. S12: backbone image, start image,
    exit 1 with and without the bank, for the first ``grid_columns`` inputs).
    """
    runs = [str(r) for r in runs]
    configs = _check_study(runs, n=n, bandwidth=bandwidth, grid_columns=grid_columns, bank_ablation=bank_ablation)
    if out is not None and any(c.get("bank") for c in configs) and not all(c.get("bank") for c in configs):
        from .extras import require

        require("matplotlib", "the Fig. 8 KDE plot")
    fid_reference = "backbone" if bank_ablation else "real"
    columns = min(grid_columns, n)
    measured, heads = _measure_runs(
        runs,
        n=n,
        seed=seed,
        fid=fid,
        accuracy=accuracy,
        fid_reference=fid_reference,
        device=device,
        heads_columns=columns if bank_ablation and out is not None else 0,
        progress=progress,
    )
    arms = _arms(measured)
    report = {
        "task": measured[0]["task"],
        "n": n,
        "seed": seed,
        "lpips_net": "alex",
        "lpips_reference": "the backbone's image for the same input",
        "fid_reference": measured[0]["fid_reference"] if fid else None,
        "label_accuracy": "classifier trained on real data, on the generated images" if accuracy else None,
        "spread": "mean, sample standard deviation, min and max over the arm's runs",
        "differing_settings": sorted(k for k in SHARED_KEYS if len({repr(c.get(k)) for c in configs}) > 1),
        "arms": arms,
        "runs": [{k: m[k] for k in ("run", "bank", "seed", "rows")} for m in measured],
        "per_image_lpips": {m["run"]: [np.round(v, 5).tolist() for v in m["per_image_lpips"]] for m in measured},
        "kde": None,
        "ablation": _ablation_report(measured, configs, n=n, seed=seed) if bank_ablation else None,
    }
    if out is None:
        return report
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if len(arms) == 2:
        report["kde"] = _save_kde(measured, arms, out, task=report["task"], n=n, bandwidth=bandwidth)
    if bank_ablation:
        _save_start_images(measured[1]["bank"], heads, out / "start_images.png", columns)
        report["ablation"]["plots"] = {
            "kde": str(out / "lpips_kde.png"),
            "start_images": str(out / "start_images.png"),
            "start_images_rows": list(START_IMAGE_ROWS),
        }
        write_json(out / "ablation.json", report["ablation"])
        atomic_write_text(out / "ablation.md", ablation_table(report["ablation"]))
    write_json(out / "exit_quality.json", report)
    atomic_write_text(out / "exit_quality.md", markdown_table(report))
    return report


def _check_study(runs: list[str], *, n, bandwidth, grid_columns, bank_ablation: bool) -> list[dict]:
    """The runs' configs, every argument and the comparison checked before any measuring (a wrong folder or a
    mixed comparison is refused in one line)."""
    from .checks import check_counts, check_int
    from .train.exits import read_run_config
    from .train.run import RunDir

    if not runs:
        raise ValueError("give at least one exit-training run folder")
    if len(set(runs)) != len(runs):
        raise ValueError(f"a run is listed twice: {runs}")
    check_int(n, "n", minimum=2)
    if not 0 < bandwidth:
        raise ValueError(f"bandwidth must be positive; got {bandwidth}")
    check_counts(grid_columns=grid_columns)
    configs = [read_run_config(RunDir(r)) for r in runs]  # refuses a folder that is not an exit-training run
    tasks = {c["task"] for c in configs}
    if len(tasks) != 1:
        raise ValueError(f"all runs must be of one task; got {sorted(tasks)}")
    if bank_ablation:
        _check_ablation_pair(runs, configs)
    return configs


def _measure_runs(runs, *, n, seed, fid, accuracy, fid_reference, device, heads_columns: int, progress: bool):
    """Every run measured on the same inputs; with ``heads_columns``, also what the start-image grid needs of
    each run (its backbone, the first inputs and their exit-1 images), not all ``n``."""
    cache: dict = {}
    measured, heads = [], []
    iterator = runs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(runs, desc="exit-quality", unit="run")
    for r in iterator:
        m = _measure(r, n=n, seed=seed, fid=fid, fid_reference=fid_reference, device=device)
        measured.append(
            _run_quality(r, m, n=n, seed=seed, fid=fid, accuracy=accuracy, fid_reference=fid_reference, cache=cache)
        )
        if heads_columns:
            c = heads_columns
            heads.append((m["model"].backbone, tuple(x[:c].clone() for x in m["inputs"]), m["images"][0][:c].clone()))
        del m
    num_rows = {len(m["rows"]) for m in measured}
    if len(num_rows) != 1:
        raise ValueError(f"the runs have different numbers of exits: {sorted(num_rows)}")
    return measured, heads


def _arms(measured: list[dict]) -> dict:
    """Per arm (without / with the bank) present: its runs and, per route, each metric's spread over them."""
    arms = {}
    for arm in ARMS:
        members = [m for m in measured if (m["bank"] is not None) == (arm == "with bank")]
        if not members:
            continue
        rows = []
        for i, row in enumerate(members[0]["rows"]):
            rows.append(
                {
                    "name": row["name"],
                    "route": row["route"],
                    "after_stage": row["after_stage"],
                    "macs": row["macs"],
                    **{k: _spread([m["rows"][i][k] for m in members]) for k in METRICS},
                }
            )
        arms[arm] = {
            "runs": [m["run"] for m in members],
            "seeds": [m["seed"] for m in members],
            "banks": sorted({str(m["bank"]) for m in members if m["bank"] is not None}),
            "rows": rows,
        }
    return arms


def _save_kde(measured: list[dict], arms: dict, out: Path, *, task: str, n: int, bandwidth: float) -> dict:
    """Fig. 8: per exit, the KDE of per-image LPIPS of each arm (pooled over its runs); returns the report's
    ``kde`` entry."""
    from .plots import save_kde_panels

    panels, kde = [], []
    for i, row in enumerate(arms["without bank"]["rows"][:-1]):
        series = {}
        for arm in ARMS:
            pooled = np.concatenate(
                [m["per_image_lpips"][i] for m in measured if (m["bank"] is not None) == (arm == "with bank")]
            )
            series[f"{arm} ({len(arms[arm]['runs'])} run{'s' if len(arms[arm]['runs']) > 1 else ''})"] = pooled
            kde.append(
                {
                    "exit": row["name"],
                    "arm": arm,
                    "values": int(pooled.size),
                    "kernel_std": float(bandwidth * pooled.std(ddof=1)),
                }
            )
        panels.append((f"{row['name']} (after stage {row['after_stage']})", series))
    save_kde_panels(
        panels,
        out / "lpips_kde.png",
        bandwidth=bandwidth,
        xlabel="LPIPS vs backbone",
        title=f"{task}: per-image LPIPS with and without the bank (n={n} per run, KDE bw_method {bandwidth})",
    )
    return {
        "path": str(out / "lpips_kde.png"),
        "bw_method": bandwidth,
        "series": kde,
        "pooled": "per-image LPIPS of every run of the arm",
    }


def _ablation_report(measured: list[dict], configs: list[dict], *, n: int, seed: int) -> dict:
    """The bank ablation's side by side (``ablation.json``): per exit, MACs, LPIPS mean / median / p90 and FID
    against the backbone's images, without and with the bank; every per-image LPIPS. ``plots`` is filled in once
    they are written."""
    a, b = measured

    def lpips(row: dict) -> dict:
        return {"mean": row["lpips_mean"], "median": row["lpips_median"], "p90": row["lpips_p90"]}

    rows = [
        {
            "exit": ra["route"] + 1,
            "route": ra["route"],
            "after_stage": ra["after_stage"],
            "macs_without": ra["macs"],
            "macs_with": rb["macs"],
            "lpips_without": lpips(ra),
            "lpips_with": lpips(rb),
            "fid_without": ra["fid"],
            "fid_with": rb["fid"],
        }
        for ra, rb in zip(a["rows"][:-1], b["rows"][:-1])
    ]  # the exits; the backbone row is the last
    return {
        "task": configs[0]["task"],
        "n": n,
        "seed": seed,
        "lpips_net": "alex",
        "fid_reference": FID_REFERENCES["backbone"],
        "runs": {"without": a["run"], "with": b["run"]},
        "bank": b["bank"],
        "budget": {k: configs[0].get(k) for k in BUDGET_KEYS},
        "exits": rows,
        "per_image_lpips": {
            "without": [v.round(5).tolist() for v in a["per_image_lpips"]],
            "with": [v.round(5).tolist() for v in b["per_image_lpips"]],
        },
        "plots": None,
    }


def _save_start_images(bank_path: str, heads: list, path: Path, columns: int) -> Path:
    """Fig. S12 analogue, one row each: backbone image, start image (retrieved), exit 1 with the bank, without."""
    from .bank import load_bank, start_images
    from .plots import save_grid

    (_, _, without), (backbone, inputs, with_bank) = heads
    bank = load_bank(bank_path, backbone)
    backbone_img, start = start_images(bank, backbone, inputs)
    return save_grid(torch.cat([backbone_img.cpu(), start.cpu(), with_bank, without]), path, ncol=columns)


def _fmt(cell: dict | None, digits: int, scale: float = 1.0) -> str:
    if cell is None:
        return "-"
    text = f"{cell['mean'] * scale:.{digits}f}"
    if cell["runs"] > 1:
        text += f" ± {cell['std'] * scale:.{digits}f}"
    return text


def markdown_table(report: dict) -> str:
    """Table S1 analogue: one row per (arm, exit) and the backbone; mean ± sample std over the arm's runs."""
    lines = [
        f"Task `{report['task']}`, n = {report['n']} held-out inputs (seed {report['seed']}). FID vs "
        f"{report['fid_reference'] or 'nothing (not measured)'}; label accuracy: "
        f"{report['label_accuracy'] or 'not measured'}; LPIPS ({report['lpips_net']}) vs the backbone. "
        "Cells: mean ± sample std over the arm's runs.",
        "",
        "| arm | runs | route | GMACs | FID | label accuracy % | LPIPS mean | LPIPS p90 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    backbone = None
    for arm, body in report["arms"].items():
        for row in body["rows"]:
            if row["name"] == "backbone":
                backbone = row
                continue
            lines.append(
                f"| {arm} | {len(body['runs'])} | {row['name']} | {row['macs'] / 1e9:.4f} | {_fmt(row['fid'], 2)} | "
                f"{_fmt(row['label_accuracy'], 1, 100)} | {_fmt(row['lpips_mean'], 4)} | {_fmt(row['lpips_p90'], 4)} |"
            )
    if backbone is not None:
        lines.append(
            f"| backbone | - | backbone | {backbone['macs'] / 1e9:.4f} | {_fmt(backbone['fid'], 2)} | "
            f"{_fmt(backbone['label_accuracy'], 1, 100)} | 0 | 0 |"
        )
    if report.get("differing_settings"):
        lines += [
            "",
            "Note: the runs differ in " + ", ".join(report["differing_settings"]) + " (not only bank and seed).",
        ]
    return "\n".join(lines) + "\n"


def ablation_table(ablation: dict) -> str:
    """The bank ablation's side-by-side table (Table S1 analogue) as markdown, from ``report["ablation"]``."""
    lines = [
        (
            f"Task `{ablation['task']}`, n = {ablation['n']} held-out inputs (seed {ablation['seed']}); LPIPS "
            f"({ablation['lpips_net']}) and FID vs the backbone's images; budget: "
            + ", ".join(f"{k}={v}" for k, v in ablation["budget"].items() if k not in ("recipe",))
        ),
        "",
        (
            "| exit | after stage | GMACs w/o | GMACs with | LPIPS mean w/o | LPIPS mean with | LPIPS median w/o | "
            "LPIPS median with | LPIPS p90 w/o | LPIPS p90 with | FID w/o | FID with |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x, d=4):
        return "-" if x is None else f"{x:.{d}f}"

    for r in ablation["exits"]:
        lines.append(
            f"| {r['exit']} | {r['after_stage']} | {r['macs_without'] / 1e9:.4f} | {r['macs_with'] / 1e9:.4f} | "
            f"{f(r['lpips_without']['mean'])} | {f(r['lpips_with']['mean'])} | {f(r['lpips_without']['median'])} | "
            f"{f(r['lpips_with']['median'])} | {f(r['lpips_without']['p90'])} | {f(r['lpips_with']['p90'])} | "
            f"{f(r['fid_without'], 2)} | {f(r['fid_with'], 2)} |"
        )
    return "\n".join(lines) + "\n"


@torch.no_grad()
def routes_vs_bank_distance(
    pipeline,
    *,
    threshold: float,
    n: int = 500,
    seed: int = 0,
    batch_size: int = 64,
    out: str | Path | None = None,
    bandwidth: float = 0.5,
) -> dict:
    """Fig. 10 analogue: the routed exit of ``n`` held-out inputs at ``threshold`` against the mean L2
    distance of each input's key patches to the bank entries they retrieved (one search: the pipeline's).

    Returns per route the inputs routed there and the mean / median of their distances, and the
    per-input arrays; under ``out``: ``bank_distance.json`` and ``bank_distance.png`` (a KDE per route of
    the distances, scaled by the number of inputs routed there, as the paper's Fig. 10).
    """
    from .checks import check_int
    from .pipeline import FianceePipeline
    from .report import route_name
    from .routing import check_threshold

    threshold = check_threshold(threshold)
    check_int(n, "n", minimum=2)
    if not isinstance(pipeline, FianceePipeline):
        pipeline = FianceePipeline.from_pretrained(pipeline)
    if pipeline.bank is None:
        raise ValueError(
            "this pipeline has no bank: the distance to retrieved bank entries needs one (fiancee build-bank, "
            "train-exits --bank)"
        )
    if pipeline.task is None:
        raise ValueError("this pipeline holds no task: the held-out inputs are drawn from it")
    inputs = pipeline.task.sample_inputs(n, seed, "test")
    routes, distances = [], []
    for s in range(0, n, batch_size):
        res = pipeline(*(x[s : s + batch_size] for x in inputs), max_lpips=threshold)
        routes.append(res.routes)
        distances.append(res.bank_distances.mean(1))  # [b]: mean over the input's key patches
    routes_t, dist_t = torch.cat(routes).numpy(), torch.cat(distances).double().numpy()
    num_routes = pipeline.model.num_routes
    per_route = []
    for r in range(num_routes):
        d = dist_t[routes_t == r]
        per_route.append(
            {
                "route": r,
                "name": route_name(r, num_routes - 1),
                "inputs": int(d.size),
                "distance_mean": float(d.mean()) if d.size else None,
                "distance_median": float(np.median(d)) if d.size else None,
            }
        )
    # Spearman correlation of distance and route (ties averaged): does a farther bank match go deeper?
    from scipy.stats import spearmanr

    rho = spearmanr(dist_t, routes_t).statistic if np.ptp(routes_t) > 0 and np.ptp(dist_t) > 0 else None
    report = {
        "task": pipeline.task.name,
        "n": n,
        "seed": seed,
        "threshold": threshold,
        "distance": "mean over the input's key patches of the L2 distance to the retrieved bank entry",
        "routes": per_route,
        "spearman_distance_vs_route": None if rho is None else float(rho),
        "per_input": {"route": routes_t.tolist(), "distance": np.round(dist_t, 5).tolist()},
        "plot": None,
    }
    if out is not None:
        from .plots import save_route_distance_plot

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        report["plot"] = str(
            save_route_distance_plot(
                routes_t, dist_t, num_routes, out / "bank_distance.png", bandwidth=bandwidth, threshold=threshold
            )
        )
        write_json(out / "bank_distance.json", report)
    return report
