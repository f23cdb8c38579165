"""Mixed batches: samples taking different routes, run as the mixed-exit tree (:meth:`ExitGenerator.mixed`).

The mixes are ones that exist (:func:`bench_mixes`): with a pipeline, the route shares its own router chooses for
the bench's test inputs at each of :data:`ROUTED_THRESHOLDS`, plus uniform; without one (an untrained predictor
routes nothing worth timing), uniform plus every single route. Each is drawn seeded per batch size. The tree is
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

__all__ = [
    "ROUTED_THRESHOLDS",
    "ROUTING_INPUTS",
    "DEMO_SHARES",
    "skewed_shares",
    "mix_routes",
    "mix_exits",
    "bench_mixes",
    "routed_mixes",
    "mixes_from",
    "time_mixes",
]

# The thresholds a pipeline's routing is read at: the reports' strict one and their headline (paper section 3.4).
ROUTED_THRESHOLDS = (0.05, 0.1)
# Test inputs the pipeline routes to measure its shares (at least the largest batch): enough for shares to the
# percent, a trunk pass each.
ROUTING_INPUTS = 128

# The bench's old "skewed" mix: exit shares the faces demo's router chose at LPIPS <= 0.1 with the exits shipped
# when the bench was written. No longer timed (no current pipeline routes so); kept for one release because the
# committed reports in benchmarks/ were measured with it.
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


def bench_mixes(
    num_routes: int, routed: list[tuple[str, tuple[float, ...]]] | None = None, single_routes: bool = True
) -> list[tuple[str, tuple[float, ...]]]:
    """``(name, shares)`` of the mixes a bench times: ``uniform`` over the routes, then the pipeline's ``routed``
    mixes (:func:`routed_mixes`) when there are some, else (with ``single_routes``) ``route r``, every input on
    route r, for every route."""
    uniform = ("uniform", tuple([1.0 / num_routes] * num_routes))
    if routed:
        return [uniform, *routed]
    singles = [(f"route {r}", tuple(float(i == r) for i in range(num_routes))) for r in range(num_routes)]
    return [uniform, *(singles if single_routes else [])]


@torch.no_grad()
def routed_mixes(
    pipeline, inputs: tuple[torch.Tensor, ...], thresholds: Sequence[float] = ROUTED_THRESHOLDS
) -> list[tuple[str, tuple[float, ...]]]:
    """The route shares ``pipeline``'s router chooses for ``inputs`` at each threshold, as mixes named
    ``routed T=<threshold>``: its predictor's LPIPS, then its router, as :meth:`FianceePipeline.__call__` decides."""
    device = next(pipeline.model.parameters()).device
    predicted = pipeline.predict(*(x.to(device) for x in inputs))
    mixes = []
    for t in thresholds:
        routes = pipeline.router.route(predicted, t).cpu().long()
        counts = torch.bincount(routes, minlength=pipeline.model.num_routes).double()
        mixes.append((f"routed T={t:g}", tuple(float(c) for c in counts / counts.sum())))
    return mixes


def mixes_from(routed_inputs: int | None, thresholds: Sequence[float] = ROUTED_THRESHOLDS) -> str:
    """Where a report's mixes come from, in words (its ``settings.mixes_from``): the pipeline's routing of
    ``routed_inputs`` test inputs at ``thresholds``, or (None) no pipeline."""
    if routed_inputs is None:
        return "no pipeline: uniform and every single route"
    at = ", ".join(f"{t:g}" for t in thresholds)
    return f"the pipeline's router on {routed_inputs} test inputs at LPIPS <= {at}, and uniform"


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
