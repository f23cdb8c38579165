"""The bank ablation (paper Table S1, Fig. 8, Fig. S12): exits trained with and without the bank.

Two runs of ``fiancee train-exits`` on the same task with the same budget (steps, batch size, recipe,
scale, seed), one with ``--bank``. Both are evaluated on the same held-out inputs: per exit, LPIPS
against the backbone's image (mean / median / p90) and FID against the backbone's images, side by
side (the analogue of Table S1); kernel-density curves of per-image LPIPS with and without the bank
(Fig. 8: bandwidth 0.3); and a grid of the bank's "start images" (Fig. S12).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .io import atomic_write_text, write_json

__all__ = ["evaluate_arm", "bank_ablation", "BUDGET_KEYS"]

# What must match for the two arms to count as "the same training budget".
BUDGET_KEYS = ("task", "scale", "min_channels", "recipe", "preset", "steps", "batch_size", "seed")


def evaluate_arm(run_dir: str | Path, *, n: int, seed: int, fid: bool, device: str = "cpu") -> dict:
    """Per-exit per-image LPIPS (arrays) and FID vs the backbone for one trained run."""
    from .evaluate import measure_exits

    return measure_exits(run_dir, n=n, seed=seed, fid=fid, device=device)


def _summary(lp: np.ndarray) -> dict:
    return {"mean": float(lp.mean()), "median": float(np.median(lp)), "p90": float(np.percentile(lp, 90))}


def bank_ablation(nobank_run: str | Path, bank_run: str | Path, out: str | Path, *, n: int = 500, seed: int = 0,
                  fid: bool = True, device: str = "cpu", bandwidth: float = 0.3, grid_columns: int = 8) -> dict:
    """Evaluate both arms on the same ``n`` held-out inputs; write ``ablation.json``, ``ablation.md``,
    ``lpips_kde.png`` and ``start_images.png`` under ``out``; returns the JSON report."""
    from .extras import require
    from .plots import save_grid, save_kde_panels
    from .train.exits import run_bank_path
    from .train.run import RunDir

    require("matplotlib", "the ablation's KDE plot")
    if n < 2:
        raise ValueError(f"n must be at least 2 held-out inputs; got {n}")
    ca, cb = RunDir(nobank_run).read_config(), RunDir(bank_run).read_config()
    if ca.get("bank") is not None:
        raise ValueError(f"{nobank_run} was trained with a bank ({ca['bank']}); the first run must be the one without")
    if cb.get("bank") is None:
        raise ValueError(f"{bank_run} was trained without a bank; the second run must use --bank")
    differ = [k for k in BUDGET_KEYS if ca.get(k) != cb.get(k)]
    if differ:
        raise ValueError("the two runs must share the training budget; they differ in "
                         + ", ".join(f"{k} ({ca.get(k)!r} vs {cb.get(k)!r})" for k in differ))
    a = evaluate_arm(nobank_run, n=n, seed=seed, fid=fid, device=device)
    b = evaluate_arm(bank_run, n=n, seed=seed, fid=fid, device=device)

    rows = []
    for ea, eb in zip(a["exits"], b["exits"]):
        rows.append({
            "exit": ea["exit"], "route": ea["route"], "after_stage": ea["after_stage"],
            "macs_without": ea["macs"], "macs_with": eb["macs"],
            "lpips_without": _summary(ea["lpips"]), "lpips_with": _summary(eb["lpips"]),
            "fid_without": ea["fid"], "fid_with": eb["fid"],
        })
    budget = {k: ca.get(k) for k in BUDGET_KEYS}
    report = {
        "task": ca["task"], "n": n, "seed": seed, "lpips_net": "alex", "fid_reference": "backbone images of the same inputs",
        "runs": {"without": str(nobank_run), "with": str(bank_run)}, "bank": str(run_bank_path(bank_run)), "budget": budget,
        "exits": rows,
        "per_image_lpips": {"without": [e["lpips"].round(5).tolist() for e in a["exits"]],
                            "with": [e["lpips"].round(5).tolist() for e in b["exits"]]},
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    panels = [(f"exit {r['exit']} (after stage {r['after_stage']})",
               {"without bank": a["exits"][i]["lpips"], "with bank": b["exits"][i]["lpips"]}) for i, r in enumerate(rows)]
    save_kde_panels(panels, out / "lpips_kde.png", bandwidth=bandwidth, xlabel="LPIPS vs backbone",
                    title=f"{ca['task']}: per-image LPIPS with and without the bank (n={n}, KDE bw {bandwidth})")

    # Fig. S12 analogue: backbone image, start image (retrieved), exit 1 (route 0) with and without the bank.
    from .bank import load_bank, start_images

    bank = load_bank(run_bank_path(bank_run), b["model"].backbone)
    cols = min(grid_columns, n)
    head = tuple(x[:cols] for x in b["inputs"])
    backbone_img, start = start_images(bank, b["model"].backbone, head)
    save_grid(torch.cat([backbone_img.cpu(), start.cpu(), b["images"][0][:cols], a["images"][0][:cols]]),
              out / "start_images.png", ncol=cols)
    report["plots"] = {"kde": str(out / "lpips_kde.png"), "start_images": str(out / "start_images.png"),
                       "start_images_rows": ["backbone", "start image (retrieved)", "exit 1 with bank", "exit 1 without bank"]}
    write_json(out / "ablation.json", report)
    atomic_write_text(out / "ablation.md", markdown_table(report))
    return report


def markdown_table(report: dict) -> str:
    """The side-by-side table (Table S1 analogue) as markdown."""
    lines = [
        f"Task `{report['task']}`, n = {report['n']} held-out inputs (seed {report['seed']}); LPIPS ({report['lpips_net']}) "
        "and FID vs the backbone's images; budget: " + ", ".join(f"{k}={v}" for k, v in report["budget"].items()
                                                              if k not in ("recipe",)),
        "",
        "| exit | after stage | GMACs w/o | GMACs with | LPIPS mean w/o | LPIPS mean with | LPIPS median w/o | "
        "LPIPS median with | LPIPS p90 w/o | LPIPS p90 with | FID w/o | FID with |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x, d=4):
        return "-" if x is None else f"{x:.{d}f}"

    for r in report["exits"]:
        lines.append(
            f"| {r['exit']} | {r['after_stage']} | {r['macs_without'] / 1e9:.4f} | {r['macs_with'] / 1e9:.4f} | "
            f"{f(r['lpips_without']['mean'])} | {f(r['lpips_with']['mean'])} | {f(r['lpips_without']['median'])} | "
            f"{f(r['lpips_with']['median'])} | {f(r['lpips_without']['p90'])} | {f(r['lpips_with']['p90'])} | "
            f"{f(r['fid_without'], 2)} | {f(r['fid_with'], 2)} |"
        )
    return "\n".join(lines) + "\n"
