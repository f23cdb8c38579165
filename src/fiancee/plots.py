"""Figures: image grids and strips (PNG), and the report's plots. Matplotlib is imported lazily.

Exits are labelled as users read them: ``exit 1`` .. ``exit E`` (shallowest first), then ``backbone``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .io import atomic_path

__all__ = [
    "save_grid",
    "to_uint8",
    "save_kde_panels",
    "save_image_strip",
    "save_saved_plot",
    "save_shares_plot",
    "save_density_plot",
    "save_route_distance_plot",
    "save_risk_plot",
    "save_risk_saved_plot",
    "save_shift_plot",
]


def _pyplot():
    from .extras import require

    matplotlib = require("matplotlib", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _route_label(r: int, num_routes: int) -> str:
    return "backbone" if r == num_routes - 1 else f"exit {r + 1}"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` in [-1, 1] -> ``[B, H, W, 3]`` uint8 (gray repeated to RGB)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1 or 3, H, W]; got {list(images.shape)}")
    x = images.detach().float().cpu().clamp(-1, 1)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_grid(images: torch.Tensor, path: str | Path, ncol: int = 8, pad: int = 2) -> Path:
    """Write ``images`` ([-1, 1]) as one PNG grid, ``ncol`` per row, row-major; atomic."""
    from PIL import Image

    arr = to_uint8(images)
    n, h, w, _ = arr.shape
    ncol = max(1, min(ncol, n))
    nrow = math.ceil(n / ncol)
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = arr[i]
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return path


def save_kde_panels(
    panels,
    path: str | Path,
    *,
    bandwidth: float = 0.3,
    xlabel: str = "LPIPS",
    title: str | None = None,
    points: int = 256,
) -> Path:
    """Kernel-density curves, one panel per ``(title, {label: values})`` entry, side by side (PNG, atomic).

    ``bandwidth`` is scipy's ``bw_method`` factor (the paper's Fig. 8 uses 0.3). All panels share one
    x range so curves can be compared across panels.
    """
    plt = _pyplot()
    from scipy.stats import gaussian_kde

    panels = list(panels)
    if not panels:
        raise ValueError("no panels to plot")
    everything = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for _, d in panels for v in d.values()])
    lo, hi = float(everything.min()), float(everything.max())
    pad = 0.1 * (hi - lo) + 1e-6
    xs = np.linspace(lo - pad, hi + pad, points)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels):
        for label, values in series.items():
            v = np.asarray(values, dtype=np.float64).ravel()
            if v.size < 2 or np.ptp(v) == 0:
                raise ValueError(f"panel {name!r}, series {label!r}: need at least 2 distinct values for a KDE")
            ax.plot(xs, gaussian_kde(v, bw_method=bandwidth)(xs), label=f"{label} (mean {v.mean():.3f})")
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def save_image_strip(rows, path: str | Path, *, cell: float = 1.6) -> Path:
    """One row per ``(label, images [K, C, H, W] in [-1, 1], captions [K])``, the same K inputs in every
    row; the label left of the row, each caption under its image (PNG, atomic)."""
    plt = _pyplot()
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to draw")
    k = rows[0][1].shape[0]
    if any(r[1].shape[0] != k or len(r[2]) != k for r in rows):
        raise ValueError("every row needs the same number of images and captions")
    fig, axes = plt.subplots(len(rows), k, figsize=(cell * k + 1.4, (cell + 0.3) * len(rows)), squeeze=False)
    for (label, images, captions), line in zip(rows, axes):
        arr = to_uint8(images)
        for j, ax in enumerate(line):
            ax.imshow(arr[j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(captions[j], fontsize=8, labelpad=2)
        line[0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center", labelpad=6)
    fig.subplots_adjust(wspace=0.06, hspace=0.35)
    return _save(fig, path)


def save_saved_plot(rows: list[dict], paper_rows: list[dict], path: str | Path, router: str = "calibrated") -> Path:
    """MACs saved (left) and compliance (right) in percent per threshold: the router, the paper's rule
    on the same predictions, and the oracles (the report's headline figure)."""
    plt = _pyplot()
    t = [r["threshold"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    ours = f"ours ({router} router)"
    a.plot(t, [100 * r["macs_saved"] for r in rows], "o-", color="C0", label=ours)
    if paper_rows:
        a.plot(
            [r["threshold"] for r in paper_rows],
            [100 * r["macs_saved"] for r in paper_rows],
            "s--",
            color="C1",
            label="paper's rule (P <= T)",
        )
        b.plot(
            [r["threshold"] for r in paper_rows],
            [100 * r["compliance"] for r in paper_rows],
            "s--",
            color="C1",
            label="paper's rule (P <= T)",
        )
    a.plot(
        t,
        [100 * r["oracle_macs_saved_at_compliance"] for r in rows],
        ":",
        color="C2",
        label="oracle at equal compliance",
    )
    a.plot(t, [100 * r["oracle_macs_saved"] for r in rows], ":", color="gray", label="oracle, every output <= T")
    b.plot(t, [100 * r["compliance"] for r in rows], "o-", color="C0", label=ours)
    for ax, name in ((a, "MACs saved vs the backbone (%)"), (b, "outputs with LPIPS <= T (%)")):
        ax.set_xlabel("LPIPS threshold T")
        ax.set_ylabel(name)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    a.set_ylim(0, 100)
    b.set_ylim(0, 102)  # from 0, and room for the points at 100% above the frame
    b.set_yticks(range(0, 101, 20))
    a.set_title("Compute saved")
    b.set_title("Compliance")
    # One legend for both panels, below them: inside either axes it would cover points of some run.
    handles, labels = a.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), frameon=False)
    return _save(fig, path)


def save_shares_plot(rows: list[dict], macs, path: str | Path) -> Path:
    """Stacked share of inputs per route, one bar per threshold (evenly spaced, so close thresholds do
    not merge), and the mean GMACs per input against the backbone's (cf. paper Figs. 3, 7)."""
    plt = _pyplot()
    macs = np.asarray([float(m) for m in macs])
    t = [r["threshold"] for r in rows]
    shares = np.array([r["exit_shares"] for r in rows])  # [T, R]
    x = np.arange(len(t))
    fig, ax = plt.subplots(figsize=(9, 4))
    bottom = np.zeros(len(t))
    for r in range(shares.shape[1]):
        ax.bar(
            x,
            100 * shares[:, r],
            bottom=bottom,
            width=0.7,
            label=_route_label(r, shares.shape[1]),
            color="0.75" if r == shares.shape[1] - 1 else f"C{r}",
        )
        bottom += 100 * shares[:, r]
    ax.set_xticks(x, [f"{v:g}" for v in t])
    ax.set_xlabel("LPIPS threshold T")
    ax.set_ylabel("share of inputs (%)")
    ax.set_ylim(0, 100)
    ax2 = ax.twinx()
    ax2.plot(x, [r["mean_gmacs"] for r in rows], "k-o", label="mean GMACs per input (right axis)")
    ax2.axhline(macs[-1] / 1e9, color="k", ls="--", lw=1, label=f"backbone: {macs[-1] / 1e9:.3g} GMACs (right axis)")
    ax2.set_ylim(0, macs[-1] / 1e9 * 1.05)
    ax2.set_ylabel("GMACs per input")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(
        handles[0] + handles2[0],
        handles[1] + handles2[1],
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=3,
        frameon=False,
    )
    ax.set_title("Where the inputs go, and the mean cost per input (cf. paper Figs. 3, 7)")
    fig.tight_layout()
    return _save(fig, path)


def _kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    from scipy.stats import gaussian_kde

    if len(values) < 2 or np.allclose(values, values[0]):
        return np.zeros_like(grid)
    return gaussian_kde(values)(grid)


def save_density_plot(true_lpips: np.ndarray, routed, path: str | Path) -> Path:
    """``true_lpips [N, E]``: per-image LPIPS of every exit alone (solid); ``routed``: per exit, (T, true
    LPIPS of the routed outputs when the predictor routes at T = that exit's mean LPIPS) (dashed)."""
    plt = _pyplot()
    true_lpips = np.asarray(true_lpips)
    grid = np.linspace(0, max(0.05, float(true_lpips.max())), 300)
    fig, ax = plt.subplots(figsize=(9, 4))
    for r in range(true_lpips.shape[1]):
        c = f"C{r}"
        ax.plot(grid, _kde(true_lpips[:, r], grid), color=c, label=f"exit {r + 1} alone")
        if r < len(routed):
            t, chosen = routed[r]
            ax.plot(
                grid,
                _kde(np.asarray(chosen), grid),
                color=c,
                ls="--",
                label=f"routed at T = {t:.3f} (exit {r + 1}'s mean)",
            )
            ax.axvline(t, color=c, lw=0.8, ls=":")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("LPIPS vs the backbone's image (per image)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.set_title("Single exits vs routing by the predictor P at T (cf. paper Fig. 9)")
    fig.tight_layout()
    return _save(fig, path)


def save_route_distance_plot(
    routes: np.ndarray,
    distances: np.ndarray,
    num_routes: int,
    path: str | Path,
    *,
    bandwidth: float = 0.5,
    threshold: float | None = None,
) -> Path:
    """Paper Fig. 10's form: for every route, a KDE (scipy ``bw_method`` = ``bandwidth``) of the distances of
    the inputs routed there, scaled by their number (so the curves' areas are the inputs per route);
    a route with fewer than two distinct distances is drawn as ticks at its values."""
    plt = _pyplot()
    from scipy.stats import gaussian_kde

    routes, distances = np.asarray(routes), np.asarray(distances, dtype=np.float64)
    if routes.shape != distances.shape or routes.ndim != 1 or routes.size == 0:
        raise ValueError(f"expected one route and one distance per input; got {routes.shape} and {distances.shape}")
    lo, hi = float(distances.min()), float(distances.max())
    pad = 0.1 * (hi - lo) + 1e-6
    xs = np.linspace(lo - pad, hi + pad, 300)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for r in range(num_routes):
        d = distances[routes == r]
        label = f"{_route_label(r, num_routes)} ({d.size} inputs)"
        if d.size >= 2 and np.ptp(d) > 0:
            ax.plot(xs, d.size * gaussian_kde(d, bw_method=bandwidth)(xs), color=f"C{r}", label=label)
        elif d.size:
            ax.plot(d, np.zeros_like(d), "|", color=f"C{r}", markersize=12, label=label)
    ax.set_xlabel("mean L2 distance of the input's key patches to their retrieved bank entries")
    ax.set_ylabel("inputs (density x count)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    what = f"routed at T = {threshold:g}" if threshold is not None else "routed"
    ax.set_title(f"Exit {what} vs distance to the bank (cf. paper Fig. 10; KDE bw {bandwidth})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# The guarantee over many calibration splits (fiancee.guarantee.split_study's result)

_METHOD_LABEL = {
    "average": "average compliance (no guarantee)",
    "crc": "CRC (expected miss rate)",
    "ltt": "LTT (prob. >= 1 - delta)",
    "ucb": "UCB (prob. >= 1 - delta)",
}
_METHOD_COLOR = {"average": "C7", "crc": "C2", "ltt": "C0", "ucb": "C3"}
# average and CRC often choose the same margins (they differ only where an input's miss is not monotone in
# the margin): average is drawn dashed with open marks so that the two stay visible on top of each other.
_METHOD_STYLE = {
    "average": dict(ls="--", marker="o", mfc="none", ms=6),
    "crc": dict(ls="-", marker="o", ms=3),
    "ltt": dict(ls="-", marker="o", ms=3),
    "ucb": dict(ls="-", marker="o", ms=3),
}


def _study_series(study: dict, threshold: float, method: str, part: str | None = None):
    rows = sorted(
        (r for r in study["rows"] if r["threshold"] == threshold and r["method"] == method), key=lambda r: r["epsilon"]
    )
    pick = (lambda r: r) if part is None else (lambda r: r[part])
    return np.array([r["epsilon"] for r in rows]), [pick(r) for r in rows]


def _method_label(study: dict, m: str) -> str:
    label = _METHOD_LABEL.get(m, m)
    return label.replace("UCB", f"UCB, {study['bound']}") if m == "ucb" else label


def _study_title(study: dict, what: str) -> str:
    return (
        f"{what}: {study['splits']} random splits, {study['n_cal']} calibration / {study['n_test']} test inputs "
        f"of {study['n_table']}, delta = {study['delta']:g}"
    )


def save_risk_plot(study: dict, path: str | Path, *, highlight: str | None = None, thresholds=None) -> Path:
    """Top: the realized miss rate on the test inputs against the requested epsilon, per method (line: mean
    over the splits, band: 10th-90th percentile) with the diagonal; bottom: the share of splits whose miss
    rate exceeds epsilon, with delta (what the high-probability methods promise to stay under). One
    column per threshold; ``highlight`` draws one method thicker (a pipeline's own)."""
    plt = _pyplot()
    ts = list(thresholds or study["thresholds"])
    fig, axes = plt.subplots(2, len(ts), figsize=(4.6 * len(ts) + 0.6, 7.2), squeeze=False, sharex=True)
    eps_max = max(study["epsilons"])
    for j, t in enumerate(ts):
        top, bottom = axes[0, j], axes[1, j]
        top.plot([0, eps_max * 1.05], [0, eps_max * 1.05], color="k", lw=0.8, ls="--", label="requested = realized")
        for m in study["methods"]:
            x, rows = _study_series(study, t, m)
            lw = 2.6 if m == highlight else 1.4
            c = _METHOD_COLOR.get(m, None)
            style = _METHOD_STYLE.get(m, {})
            top.plot(x, [r["miss_mean"] for r in rows], color=c, lw=lw, label=_method_label(study, m), **style)
            top.fill_between(x, [r["miss_p10"] for r in rows], [r["miss_p90"] for r in rows], color=c, alpha=0.12)
            bottom.plot(x, [r["iid"]["share_above"] for r in rows], color=c, lw=lw, **style)
            bottom.plot(x, [r["share_above"] for r in rows], color=c, lw=0.8, ls=":")
        bottom.axhline(study["delta"], color="k", lw=0.8, ls="-.", label=f"delta = {study['delta']:g}")
        bottom.plot(
            [],
            [],
            color="k",
            lw=1.4,
            label="share of draws whose true miss rate > epsilon (calibration drawn i.i.d. from the table)",
        )
        bottom.plot(
            [],
            [],
            color="k",
            lw=0.8,
            ls=":",
            label="share of splits whose test-input miss rate > epsilon (adds the test inputs' own noise)",
        )
        top.set_title(f"LPIPS <= {t:g}")
        top.set_ylabel("miss rate on the test inputs")
        bottom.set_ylabel("share above epsilon")
        bottom.set_xlabel("requested epsilon (miss rate)")
        bottom.set_ylim(-0.02, 1.02)
        for ax in (top, bottom):
            ax.set_xlim(0, eps_max * 1.05)
            ax.grid(alpha=0.3)
        top.set_ylim(bottom=0)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    h2, l2 = axes[1, 0].get_legend_handles_labels()
    fig.suptitle(_study_title(study, "Requested vs realized miss rate"), fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 0.97))
    fig.legend(handles + h2, labels + l2, fontsize=8, loc="lower center", ncol=2, frameon=False)
    return _save(fig, path)


def save_risk_saved_plot(study: dict, path: str | Path, *, highlight: str | None = None, thresholds=None) -> Path:
    """Net MACs saved (routes + predictor and bank overhead) against the requested epsilon, per method (line:
    mean over the splits, band: 10th-90th percentile), beside the strict oracle's saving (every output <= T)."""
    plt = _pyplot()
    ts = list(thresholds or study["thresholds"])
    fig, axes = plt.subplots(1, len(ts), figsize=(4.6 * len(ts) + 0.6, 3.8), squeeze=False)
    oracle = {o["threshold"]: o["saved"] for o in study["oracle"]}
    for j, t in enumerate(ts):
        ax = axes[0, j]
        for m in study["methods"]:
            x, rows = _study_series(study, t, m)
            c = _METHOD_COLOR.get(m, None)
            ax.plot(
                x,
                [100 * r["saved_mean"] for r in rows],
                color=c,
                lw=2.6 if m == highlight else 1.4,
                label=_method_label(study, m),
                **_METHOD_STYLE.get(m, {}),
            )
            ax.fill_between(
                x, [100 * r["saved_p10"] for r in rows], [100 * r["saved_p90"] for r in rows], color=c, alpha=0.12
            )
        ax.axhline(100 * oracle[t], color="gray", ls=":", label="oracle, every output <= T (routes only)")
        ax.set_title(f"LPIPS <= {t:g}")
        ax.set_xlabel("requested epsilon (miss rate)")
        ax.set_ylabel("net MACs saved vs the backbone (%)")
        ax.set_xlim(0, max(study["epsilons"]) * 1.05)
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(_study_title(study, "Compute saved"), fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)
    return _save(fig, path)


def save_shift_plot(study: dict, path: str | Path, *, shift: str = "shifted inputs", thresholds=None) -> Path:
    """Mean miss rate against the requested epsilon on the calibration distribution's test inputs (solid) and
    on the shifted inputs (dashed), per method, with the diagonal; the paper's rule (margin 0) as marks."""
    plt = _pyplot()
    ts = list(thresholds or study["thresholds"])
    fig, axes = plt.subplots(1, len(ts), figsize=(4.6 * len(ts) + 0.6, 4.0), squeeze=False)
    paper = {p["threshold"]: p for p in study["paper_rule"]}
    eps_max = max(study["epsilons"])
    for j, t in enumerate(ts):
        ax = axes[0, j]
        for m in study["methods"]:
            x, rows = _study_series(study, t, m)
            c = _METHOD_COLOR.get(m, None)
            ax.plot(x, [r["miss_mean"] for r in rows], "o-", color=c, lw=1.4, ms=3, label=_method_label(study, m))
            ax.plot(x, [r["shifted"]["miss_mean"] for r in rows], "s--", color=c, lw=1.4, ms=3)
            # (average and CRC may coincide: the legend names both, the lines overlap)
        top = max(eps_max, *(r["shifted"]["miss_p90"] for r in study["rows"] if r["threshold"] == t))
        ax.plot([0, eps_max * 1.05], [0, eps_max * 1.05], color="k", lw=0.8, ls="--")
        p = paper.get(t)
        if p is not None:
            ax.axhline(p["miss_mean"], color="C1", lw=0.9, label="paper's rule (no margin), calibration distribution")
            ax.axhline(p["shifted"]["miss_mean"], color="C1", lw=0.9, ls="--", label=f"paper's rule, {shift}")
            top = max(top, p["shifted"]["miss_mean"], p["miss_mean"])
        ax.set_ylim(0, top * 1.08)
        ax.set_xlim(0, eps_max * 1.05)
        ax.set_title(f"LPIPS <= {t:g}")
        ax.set_xlabel("requested epsilon (miss rate)")
        ax.set_ylabel("mean miss rate")
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(f"Calibrated on one distribution, tested on it (solid) and on {shift} (dashed)", fontsize=10)
    fig.tight_layout(rect=(0, 0.13, 1, 0.95))
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)
    return _save(fig, path)
