"""Figures: image grids (PNG) and, later, the report plots. Matplotlib is imported lazily."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .io import atomic_path

__all__ = ["save_grid", "to_uint8", "save_kde_panels"]


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
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = arr[i]
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return path


def save_kde_panels(panels, path: str | Path, *, bandwidth: float = 0.3, xlabel: str = "LPIPS", title: str | None = None,
                    points: int = 256) -> Path:
    """Kernel-density curves, one panel per ``(title, {label: values})`` entry, side by side (PNG, atomic).

    ``bandwidth`` is scipy's ``bw_method`` factor (the paper's Fig. 8 uses 0.3). All panels share one
    x range so curves can be compared across panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
