"""Routing reports: what a quality threshold buys (paper section 3.4, Figs. 3, 7 and 9).

Everything here is a pure function of three arrays measured once on held-out inputs:

- ``true_lpips [N, E]``: LPIPS of every exit vs the backbone's image (the backbone's own is 0);
- ``routes [N]``: the route a router chose for each input (``E`` = the backbone);
- ``macs [R]``: MACs of every route, shallowest first, the backbone last.

so routers can be compared on exactly the same images, and no number is computed twice.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .io import atomic_path, atomic_write_text, write_json
from .routing import OracleRouter, check_threshold, true_lpips_of

__all__ = ["threshold_row", "write_report"]


def _stats(true_lpips: torch.Tensor, routes: torch.Tensor, macs: np.ndarray, threshold: float) -> dict:
    chosen = true_lpips_of(routes, true_lpips).double()
    mean_macs = float(macs[routes.numpy()].mean())
    return {
        "compliance": float((chosen <= threshold).double().mean()),
        "macs_saved": float(1 - mean_macs / macs[-1]),
        "mean_gmacs": mean_macs / 1e9,
        "mean_lpips": float(chosen.mean()),
        "exit_shares": [float((routes == r).double().mean()) for r in range(len(macs))],
    }


def threshold_row(true_lpips: torch.Tensor, routes: torch.Tensor, macs: Sequence[float], threshold: float,
                  overhead_macs: float = 0.0) -> dict:
    """One row of the report: a router's numbers at ``threshold`` next to the oracle's.

    ``true_lpips [N, E]`` (one column per exit, backbone excluded), ``routes [N]`` as the router chose
    them, ``macs [E + 1]`` per route, ``overhead_macs`` what every input pays beyond its route (the
    predictor and the bank's search: ``FianceePipeline.overhead_macs()``). ``macs_saved`` is the net
    saving (routes + overhead), ``route_macs_saved`` the routes-only one. The strict oracle meets T
    everywhere; the oracle "at equal compliance" is the best any router can do while missing T on as
    many inputs as this router did; the oracle rows are routes only (an oracle needs no predictor), and
    ``saving_vs_oracle_at_compliance`` compares routes-only savings.
    """
    t = check_threshold(threshold)
    macs = np.asarray([float(m) for m in macs])
    routes = routes.cpu().long()
    ours = _stats(true_lpips, routes, macs, t)
    strict = _stats(true_lpips, OracleRouter(list(macs)).route(true_lpips, t), macs, t)
    matched = _stats(true_lpips, OracleRouter(list(macs), compliance=ours["compliance"]).route(true_lpips, t), macs, t)
    overhead = float(overhead_macs)
    saved_gmacs = (macs[-1] - macs[routes.numpy()].mean() - overhead) / 1e9
    route_saved = ours["macs_saved"]
    ours = {**ours, "macs_saved": route_saved - overhead / macs[-1], "route_macs_saved": route_saved,
            "overhead_macs": overhead, "mean_gmacs": ours["mean_gmacs"] + overhead / 1e9}
    return {
        "threshold": t,
        **ours,
        "oracle_accounting": "routes only (an oracle needs no predictor)",
        "oracle_macs_saved": strict["macs_saved"],
        "oracle_exit_shares": strict["exit_shares"],
        "oracle_macs_saved_at_compliance": matched["macs_saved"],
        "saving_vs_oracle_at_compliance": (route_saved / matched["macs_saved"]) if matched["macs_saved"] > 0 else None,
        # Section 3.4: GMACs saved per unit of LPIPS given up (mean LPIPS of the outputs; the backbone's is 0).
        "gain_gmacs_per_lpips": (saved_gmacs / ours["mean_lpips"]) if ours["mean_lpips"] > 0 else None,
    }


def _plot_shares(rows: list[dict], macs: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["threshold"] for r in rows]
    shares = np.array([r["exit_shares"] for r in rows])  # [T, R]
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = np.zeros(len(t))
    width = (max(t) - min(t)) / max(len(t), 1) * 0.8 if len(t) > 1 else 0.02
    for r in range(shares.shape[1]):
        name = f"exit {r + 1}" if r < shares.shape[1] - 1 else "backbone"
        ax.bar(t, shares[:, r], bottom=bottom, width=width, label=name)
        bottom += shares[:, r]
    ax.set_xlabel("LPIPS threshold")
    ax.set_ylabel("share of inputs")
    ax2 = ax.twinx()
    ax2.plot(t, [r["mean_gmacs"] for r in rows], "k-o", label="mean GMACs")
    ax2.axhline(macs[-1] / 1e9, color="gray", ls="--", lw=1)
    ax2.set_ylabel("mean GMACs per input")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Exit shares and mean cost per threshold (cf. paper Figs. 3, 7)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    from scipy.stats import gaussian_kde

    if len(values) < 2 or np.allclose(values, values[0]):
        return np.zeros_like(grid)
    return gaussian_kde(values)(grid)


def _plot_densities(true_lpips: np.ndarray, routed: list[tuple[float, np.ndarray]], path: Path) -> None:
    """``true_lpips [N, E]`` as numpy; ``routed``: (threshold, true LPIPS of the routed outputs) per exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, max(0.05, float(true_lpips.max())), 300)
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r in range(true_lpips.shape[1]):
        c = colors[r % len(colors)]
        ax.plot(grid, _kde(true_lpips[:, r], grid), color=c, label=f"exit {r + 1} alone")
        if r < len(routed):
            t, chosen = routed[r]
            ax.plot(grid, _kde(chosen, grid), color=c, ls="--", label=f"P, T = {t:.3f}")
            ax.axvline(t, color=c, lw=0.8, ls=":")
    ax.set_xlabel("LPIPS vs backbone (per image)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("Single exits vs predictor routing at T = each exit's mean (cf. paper Fig. 9)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(out: str | Path, *, rows: list[dict], true_lpips: np.ndarray, macs: np.ndarray,
                 density_routes: list[tuple[float, np.ndarray]], meta: dict) -> Path:
    """Write ``report.json``, two PNG plots and ``report.html`` under ``out``; returns the HTML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {**meta, "route_gmacs": [float(m) / 1e9 for m in macs], "thresholds": rows}
    write_json(out / "report.json", report)
    _plot_shares(rows, macs, out / "shares.png")
    _plot_densities(true_lpips, density_routes, out / "densities.png")
    head = ("<tr><th>T</th><th>compliance</th><th>MACs saved</th><th>oracle saved</th>"
            "<th>oracle saved at equal compliance</th><th>mean GMACs</th><th>GMACs / LPIPS</th><th>exit shares</th></tr>")
    body = "".join(
        f"<tr><td>{r['threshold']:.3f}</td><td>{r['compliance']:.3f}</td><td>{r['macs_saved']:.3f}</td>"
        f"<td>{r['oracle_macs_saved']:.3f}</td><td>{r['oracle_macs_saved_at_compliance']:.3f}</td>"
        f"<td>{r['mean_gmacs']:.4f}</td><td>{'-' if r['gain_gmacs_per_lpips'] is None else format(r['gain_gmacs_per_lpips'], '.3f')}</td>"
        f"<td>{' / '.join(f'{s:.2f}' for s in r['exit_shares'])}</td></tr>"
        for r in rows
    )
    notes = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in meta.items() if not isinstance(v, (list, dict)))
    targets = meta.get("targets")
    if targets:
        verdict = "met" if targets["met"] else "; ".join(targets["shortfalls"])
        notes += f"<li><b>targets at LPIPS &lt;= {targets['threshold']:g}</b>: {html.escape(verdict)}</li>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fiancee report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}}</style>
</head><body>
<h1>fiancee: compute saved at a quality threshold</h1>
<ul>{notes}</ul>
<table>{head}{body}</table>
<h2>Exit shares and mean cost</h2><img src="shares.png" alt="exit shares per threshold">
<h2>Per-image LPIPS: single exits vs routing</h2><img src="densities.png" alt="LPIPS densities">
</body></html>
"""
    atomic_write_text(out / "report.html", page)
    return out / "report.html"
