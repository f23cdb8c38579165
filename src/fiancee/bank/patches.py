"""Patch mode's grid (paper S1.1.1): feature maps cut into non-overlapping patches and glued back, and
every grid cell's class (its majority label)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["cut_patches", "glue_patches", "majority_labels"]


def _check_grid(shape: Sequence[int], grid: tuple[int, int], what: str) -> tuple[int, int]:
    h, w = shape[-2:]
    gh, gw = grid
    if gh <= 0 or gw <= 0 or h % gh or w % gw:
        raise ValueError(f"{what} of size {h}x{w} cannot be cut into a {gh}x{gw} grid of equal patches")
    return h // gh, w // gw


def cut_patches(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, gh * gw, C, H/gh, W/gw]``, patches in row-major grid order."""
    b, c = x.shape[:2]
    gh, gw = grid
    ph, pw = _check_grid(x.shape, grid, "a feature map")
    x = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, ph, pw]
    return x.reshape(b, gh * gw, c, ph, pw)


def glue_patches(patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`cut_patches`: ``[B, gh * gw, C, ph, pw]`` -> ``[B, C, gh * ph, gw * pw]``."""
    b, g, c, ph, pw = patches.shape
    gh, gw = grid
    if g != gh * gw:
        raise ValueError(f"{g} patches do not fill a {gh}x{gw} grid")
    x = patches.reshape(b, gh, gw, c, ph, pw).permute(0, 3, 1, 4, 2, 5)  # [B, C, gh, ph, gw, pw]
    return x.reshape(b, c, gh * ph, gw * pw)


def majority_labels(label: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Class of every grid cell = its majority label: one-hot ``[B, L, H, W]`` -> ``[B, gh * gw]``.

    Average pooling of the one-hot map gives each label's share of the cell; the largest share wins
    (ties go to the lower label index).
    """
    _check_grid(label.shape, grid, "a label map")
    share = F.adaptive_avg_pool2d(label.float(), grid)  # [B, L, gh, gw]
    return share.argmax(1).flatten(1)  # [B, gh * gw]
