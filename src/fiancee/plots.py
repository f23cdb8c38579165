"""Figures: image grids (PNG) and, later, the report plots. Matplotlib is imported lazily."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .io import atomic_path

__all__ = ["save_grid", "to_uint8"]


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
