"""The routing rules in numpy (paper section 3.2): the cheapest route whose LPIPS meets T, and its parts.

``lpips`` tables are ``[B, E]``, one column per exit branch, shallowest first; routes are ``0..E-1`` for the
branches and ``E`` for the backbone, which always qualifies (its LPIPS against itself is 0). "Cheapest"
follows ``costs`` (the MACs of every route, backbone last); without costs the route index is the cost.
Ties go to the lower index. :mod:`fiancee.routing` wraps these rules for torch tensors (computing the
comparisons in torch, where tables may be bfloat16 or on a GPU) and :mod:`fiancee.runtime` runs them as
they are.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "EPS",
    "check_threshold",
    "check_thresholds",
    "threshold_groups",
    "route_costs",
    "cheapest_meeting",
    "margin_at",
    "oracle_misses",
    "spend_misses",
]

# The calibrated rule compares predicted + margin with T + EPS: margins are fitted where predicted + m == T
# exactly, and this tolerance keeps float rounding of that sum from flipping the comparison between fit and route.
EPS = 1e-9


def check_threshold(value, name: str = "threshold") -> float:
    """A threshold is an LPIPS value in (0, 1]; anything else is refused, naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number in (0, 1] (an LPIPS value); got {value!r}")
    t = float(value)
    if not (0.0 < t <= 1.0) or math.isnan(t):
        raise ValueError(f"{name} must lie in (0, 1] (LPIPS); got {t}")
    return t


def check_thresholds(value, batch: int, name: str = "threshold") -> float | np.ndarray:
    """One threshold for a whole batch (a number: returned as a float), or one per input (a 1-D sequence or array
    of ``batch`` numbers, each in (0, 1]: returned as float64 ``[batch]``). A served batch gathers requests that
    each asked for their own quality, and each is routed by its own."""
    if isinstance(value, (list, tuple, np.ndarray)):
        ts = np.asarray(value, dtype=object if isinstance(value, (list, tuple)) else None)
        if ts.ndim != 1 or ts.shape[0] != batch:
            raise ValueError(
                f"{name} must be one number in (0, 1] or {batch} of them (one per input); got shape {list(ts.shape)}"
            )
        return np.asarray([check_threshold(t, name) for t in ts.tolist()], dtype=np.float64)
    return check_threshold(value, name)


def threshold_groups(thresholds: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """``(threshold, rows)`` for every distinct value of ``thresholds [B]``, ascending, with the rows (int64) that
    asked for it: a router's rule takes one threshold, so a batch of several is routed group by group."""
    values, inverse = np.unique(thresholds, return_inverse=True)
    return [(float(t), np.nonzero(inverse == i)[0].astype(np.int64)) for i, t in enumerate(values)]


def route_costs(costs: Sequence[float] | None, num_routes: int) -> np.ndarray:
    """The cost of every route ``[num_routes]`` (float64): ``costs``, or the route index without costs."""
    if costs is None:
        return np.arange(num_routes, dtype=np.float64)
    c = np.asarray([float(x) for x in costs], dtype=np.float64)
    if c.size != num_routes:
        raise ValueError(
            f"costs must have one entry per route ({num_routes}: the exits then the backbone); got {c.size}"
        )
    return c


def cheapest_meeting(ok: np.ndarray, costs: Sequence[float] | None) -> np.ndarray:
    """``ok [B, E]`` (exit meets T) -> the cheapest qualifying route ``[B]`` (int64), the backbone always
    qualifying; ties to the lower index (``argmin`` returns the first minimum)."""
    b, e = ok.shape
    ok = np.concatenate([ok, np.ones((b, 1), dtype=bool)], axis=1)  # [B, E+1]
    c = route_costs(costs, e + 1)
    return np.where(ok, c[None, :], np.inf).argmin(axis=1).astype(np.int64)


def margin_at(thresholds: Sequence[float], margins: Sequence[float], t: float) -> float:
    """The calibrated router's margin at threshold ``t`` from its fitted ``thresholds`` / ``margins`` (sorted):
    the nearest end's outside them, the larger neighbour's between two (conservative)."""
    ts, ms = thresholds, margins
    if t <= ts[0]:
        return ms[0]
    if t >= ts[-1]:
        return ms[-1]
    for i in range(len(ts) - 1):
        if ts[i] <= t <= ts[i + 1]:
            if t == ts[i]:
                return ms[i]
            if t == ts[i + 1]:
                return ms[i + 1]
            return max(ms[i], ms[i + 1])
    raise AssertionError("unreachable")


def oracle_misses(compliance: float, batch: int) -> int:
    """How many of ``batch`` inputs an oracle at ``compliance`` may miss T on: ``floor((1 - c) * B)`` (the
    1e-9 keeps a product like 0.1 * 10 = 0.9999... from losing a miss)."""
    return int(math.floor((1.0 - compliance) * batch + 1e-9))


def spend_misses(routes: np.ndarray, costs: np.ndarray, misses: int) -> np.ndarray:
    """The oracle at compliance < 1: send the ``misses`` inputs whose route saves the most over the cheapest
    route (``costs [E+1]``) to that cheapest route; inputs already there save nothing and stay. Ties of
    saving go to the earlier input (a stable sort)."""
    cheapest = int(costs.argmin())
    saving = costs[routes] - costs[cheapest]  # [B] what sending each input to the cheapest route saves
    top = np.argsort(-saving, kind="stable")[:misses]
    routes = routes.copy()
    routes[top[saving[top] > 0]] = cheapest
    return routes
