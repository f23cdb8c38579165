"""Mixed batches: samples taking different routes, run as the mixed-exit tree (:meth:`ExitGenerator.mixed`).

The seeded mixes are uniform over the routes, and skewed like the faces demo's exit shares. The tree is
timed against (a) the *ideal*, every sample paying its own route's per-sample cost measured alone at the same
batch size, ``sum_i t(r_i, B) / B``; (b) the whole batch run to the *deepest* route any sample needs,
``t(max_i r_i, B)``; (c) the samples *grouped* by route, each group run on its own with ``route`` (stages
shared by several routes recomputed per group). Ratios are ``other / tree``: above 1 the tree is faster.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .measure import Clock

__all__ = ["DEMO_SHARES", "skewed_shares", "mix_routes", "mix_exits", "demo_mixes", "time_mixes"]

# Exit shares of the faces demo's calibrated router at LPIPS <= 0.1 (README), shallowest exit
# first, the backbone last: the skewed mix (resampled for other route counts, :func:`skewed_shares`).
DEMO_SHARES = (0.01, 0.17, 0.47, 0.35)


def skewed_shares(num_routes: int) -> tuple[float, ...]:
    """:data:`DEMO_SHARES` for ``num_routes`` routes: the demo's cumulative share curve over the
    route position in [0, 1], read at ``num_routes`` equal steps (the same curve for any count)."""
    demo = np.asarray(DEMO_SHARES, dtype=float)
    if num_routes == len(demo):
        return tuple(float(s) for s in demo)
    cdf = np.interp(np.linspace(0, 1, num_routes + 1), np.linspace(0, 1, len(demo) + 1), np.r_[0, np.cumsum(demo)])
    return tuple(float(s) for s in np.diff(cdf))


def mix_routes(shares: Sequence[float], batch: int, seed: int) -> torch.Tensor:
    """``[batch]`` route indices (0-based) holding the shares as closely as whole samples allow (largest
    remainders), in a seeded random order."""
    if batch < 1 or not shares or min(shares) < 0 or sum(shares) <= 0:
        raise ValueError(f"a mix needs a positive batch and non-negative shares; got batch={batch}, shares={shares}")
    p = np.asarray(shares, dtype=float) / float(sum(shares))
    raw = p * batch
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[: batch - int(counts.sum())]] += 1
    routes = torch.repeat_interleave(torch.arange(len(p)), torch.from_numpy(counts))
    return routes[torch.randperm(batch, generator=torch.Generator().manual_seed(seed))]


mix_exits = mix_routes  # the name before routes were called routes (kept for one release)


def demo_mixes(num_routes: int) -> list[tuple[str, tuple[float, ...]]]:
    """The two mixes every bench times: ``uniform`` over the routes and ``skewed`` (:func:`skewed_shares`)."""
    return [("uniform", tuple([1.0 / num_routes] * num_routes)), ("skewed", skewed_shares(num_routes))]


def _grouped(model, inputs: tuple[torch.Tensor, ...], routes: torch.Tensor) -> torch.Tensor:
    """The alternative to the tree: every route's samples as their own batch through ``route``."""
    out = None
    for r in range(model.num_routes):
        rows = (routes == r).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        images = model.route(*(x.index_select(0, rows) for x in inputs), route=r)
        if out is None:
            out = images.new_empty((routes.numel(), *images.shape[1:]))
        out.index_copy_(0, rows, images)
    return out


def time_mixes(
    model,
    mixes: list[tuple[str, tuple[float, ...]]],
    batches: list[int],
    inputs_on: dict[int, tuple[torch.Tensor, ...]],
    route_ms: dict[int, list[dict]],
    seed: int,
    clock: Clock,
    step: Callable[[str], None],
) -> dict:
    """The mixed phase at every batch of at least 2: the tree against the ideal, the deepest-needed route and
    grouped routes per mix; the headline is the mix the tree does worst on against the ideal, at the largest
    batch (all None without such a batch)."""
    mix_batches = [b for b in batches if b >= 2]
    entries = []
    for mix_name, shares in mixes:
        per_batch = {}
        for b in mix_batches:
            routes = mix_routes(shares, b, seed).to(clock.device)
            per_batch[str(b)] = _mix_row(model, inputs_on[b], routes, route_ms[b], clock)
            step(f"mix {mix_name} batch {b}")
        entries.append({"name": mix_name, "shares": [round(s, 4) for s in shares], "per_batch": per_batch})
    mixed = {
        "batch": None,
        "mix": None,
        "tree_vs_ideal": None,
        "tree_vs_deepest": None,
        "tree_vs_grouped": None,
        "mixes": entries,
    }
    if mix_batches:
        top = mix_batches[-1]
        worst = min(entries, key=lambda m: m["per_batch"][str(top)]["tree_vs_ideal"])
        row = worst["per_batch"][str(top)]
        mixed.update(
            batch=top,
            mix=worst["name"],
            tree_vs_ideal=row["tree_vs_ideal"],
            tree_vs_deepest=row["tree_vs_deepest"],
            tree_vs_grouped=row["tree_vs_grouped"],
        )
    return mixed


def _mix_row(model, inputs: tuple[torch.Tensor, ...], routes: torch.Tensor, route_ms: list[dict], clock: Clock) -> dict:
    """One mix at one batch: ``route_ms`` are the routes' times at this batch size."""
    b = routes.numel()
    counts = torch.bincount(routes.cpu(), minlength=model.num_routes).tolist()
    tree = clock(lambda: model.mixed(*inputs, routes=routes))["median_ms"]
    grouped = clock(lambda: _grouped(model, inputs, routes))["median_ms"]
    ideal = sum(n * route_ms[r]["median_ms"] / b for r, n in enumerate(counts))
    deepest = route_ms[int(routes.max())]["median_ms"]
    diff = (model.mixed(*inputs, routes=routes) - _grouped(model, inputs, routes)).abs().max()
    return {
        "counts": counts,
        "tree_ms": round(tree, 4),
        "ideal_ms": round(ideal, 4),
        "deepest_ms": round(deepest, 4),
        "grouped_ms": round(grouped, 4),
        "tree_vs_ideal": round(ideal / tree, 4),
        "tree_vs_deepest": round(deepest / tree, 4),
        "tree_vs_grouped": round(grouped / tree, 4),
        "max_abs_diff_tree_vs_grouped": float(diff),
    }
