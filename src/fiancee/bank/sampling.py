"""Farthest-point sampling (paper S1.1.1, ref. [20]): cuts the bank's redundancy, per class."""

from __future__ import annotations

import torch

__all__ = ["farthest_point_sampling"]


@torch.no_grad()
def farthest_point_sampling(points: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``k`` points of ``points [N, D]`` chosen greedily, each the farthest (L2) from
    those already chosen; the first is drawn with ``seed``. Returns all N indices when ``k >= N``.

    The chosen set covers the key space evenly, so near-duplicate keys (S1.1.1: "redundancy in the
    key space is rather probable") are dropped first.
    """
    if points.dim() != 2:
        raise ValueError(f"points must be [N, D]; got {list(points.shape)}")
    n = points.shape[0]
    if k <= 0:
        raise ValueError(f"k must be positive; got {k}")
    if k >= n:
        return torch.arange(n)
    x = points.float()
    start = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = start
    min_d = ((x - x[start]) ** 2).sum(1)  # [N] squared distance to the chosen set
    for i in range(1, k):
        nxt = int(torch.argmax(min_d))
        chosen[i] = nxt
        min_d = torch.minimum(min_d, ((x - x[nxt]) ** 2).sum(1))
    return chosen
