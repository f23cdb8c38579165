"""The bank ablation (paper Table S1, Fig. 8, Fig. S12), kept for the old import path: it is one case of the
exit-quality study, :func:`fiancee.exit_quality.exit_quality` with ``bank_ablation=True`` (the command:
``fiancee exit-quality NOBANK_RUN BANK_RUN --bank-ablation --out DIR``).

Two runs of ``fiancee train-exits`` on the same task with the same budget (steps, batch size, recipe,
scale, seed), one with ``--bank``. Both are evaluated on the same held-out inputs: per exit, LPIPS
against the backbone's image (mean / median / p90) and FID against the backbone's images, side by
side (the analogue of Table S1); kernel-density curves of per-image LPIPS with and without the bank
(Fig. 8: bandwidth 0.3); and a grid of the bank's "start images" (Fig. S12).
"""

from __future__ import annotations

from pathlib import Path

from .exit_quality import BUDGET_KEYS, exit_quality
from .exit_quality import ablation_table as markdown_table

__all__ = ["BUDGET_KEYS", "bank_ablation", "evaluate_arm", "markdown_table"]


def evaluate_arm(run_dir: str | Path, *, n: int, seed: int, fid: bool, device: str = "cpu") -> dict:
    """Per-exit per-image LPIPS (arrays) and FID vs the backbone for one trained run."""
    from .evaluate import measure_exits

    return measure_exits(run_dir, n=n, seed=seed, fid=fid, device=device)


def bank_ablation(
    nobank_run: str | Path,
    bank_run: str | Path,
    out: str | Path,
    *,
    n: int = 500,
    seed: int = 0,
    fid: bool = True,
    device: str = "cpu",
    bandwidth: float = 0.3,
    grid_columns: int = 8,
) -> dict:
    """Evaluate both arms on the same ``n`` held-out inputs; write ``ablation.json``, ``ablation.md``,
    ``lpips_kde.png`` and ``start_images.png`` under ``out`` (and the study's ``exit_quality.json`` / ``.md``);
    returns the ablation's JSON report. No label accuracy: the ablation's table has none."""
    return exit_quality(
        [nobank_run, bank_run],
        n=n,
        seed=seed,
        fid=fid,
        accuracy=False,
        device=device,
        out=out,
        bandwidth=bandwidth,
        bank_ablation=True,
        grid_columns=grid_columns,
    )["ablation"]
