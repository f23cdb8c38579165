"""Calibration with a stated guarantee, and the study that shows it over many calibration splits.

The routing rule lives in :mod:`fiancee.routing` (:class:`~fiancee.routing.CalibratedRouter`: the cheapest
exit whose ``predicted + margin <= T``). What differs between the methods here is only how the margin is
chosen from held-out (predicted, true) LPIPS pairs, and what that choice promises about the *miss rate*:
the share of new inputs whose output has a true LPIPS above T.

Methods (``METHODS``), all searching LTT's fixed grid of margins (:func:`fiancee.routing.margin_grid`) from
the largest (every input on the backbone, no miss) down, and keeping the smallest margin from which every
larger one is accepted:

- ``average``: the reference without a guarantee (:meth:`CalibratedRouter.fit`): accepted when the
  calibration inputs meet T at the split-conformal level ``ceil((n + 1)(1 - epsilon)) / n``. Its expected
  compliance is >= 1 - epsilon only when each input's miss can only fall as the margin grows, which the
  cheapest-route rule does not ensure (a larger margin may move an input from a good exit to a worse one).
- ``crc``: Conformal Risk Control (Angelopoulos et al. 2022): the same level on each input's
  *monotonized* miss (a miss at margin m counts if the input misses at any margin >= m), which is what
  makes the proof go through: ``E[miss rate] <= epsilon`` over the draw of the calibration inputs.
  Accepted while ``(misses + 1) / (n + 1) <= epsilon``.
- ``ltt``: Learn-then-Test (Angelopoulos et al. 2021) with exact binomial p-values
  ``P(Binom(n, epsilon) <= misses)`` and fixed-sequence testing: with probability >= 1 - delta over the
  calibration draw, the miss rate is <= epsilon. Needs no monotonicity.
- ``ucb``: an upper-confidence-bound calibration (RCPS, Bates et al. 2021; the "UCB" of Fast yet Safe,
  Jazbec et al. 2024): accepted while an upper confidence bound of the miss rate at level 1 - delta stays
  below epsilon. ``bound="hoeffding-bentkus"`` (default) is the Hoeffding-Bentkus bound of RCPS, valid for
  any loss in [0, 1]; ``bound="clopper-pearson"`` is the exact binomial bound, and for a 0/1 miss with this
  grid it accepts exactly what ``ltt`` accepts (the binomial p-value is Clopper-Pearson inverted, and a scan
  from the top is fixed-sequence testing). The same probability statement as ``ltt``; RCPS proves it for a
  miss rate that falls as the margin grows.

Several thresholds at once: with ``familywise=True`` the high-probability methods test every threshold at
``delta / len(thresholds)`` (Bonferroni over thresholds), so that with probability >= 1 - delta the miss
rate is <= epsilon at *every* fitted threshold simultaneously. CRC's statement is an expectation per
threshold and holds for all of them without a correction.

Every statement assumes the inputs routed later are exchangeable with the calibration inputs (drawn
from the same distribution, in no particular order); :func:`calibration_range` and :func:`range_check`
flag routed inputs that do not look like them.

:func:`split_study` repeats the calibration over many random calibration / test splits of one table and
reports, per threshold and method, the realized miss rate and the MACs saved; vectorised over splits.
Each row carries an ``id`` (``T0.05_e0.1_ltt``) that result files and documents address it by.

The rules themselves (accepted miss counts, sizes, statements, the range check) live in :mod:`fiancee.risk`,
which :class:`~fiancee.routing.CalibratedRouter` fits with; they are re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "METHODS",
    "BOUNDS",
    "check_method",
    "check_bound",
    "max_misses",
    "min_calibration",
    "accepted_index",
    "hb_pvalue",
    "split_study",
    "calibration_range",
    "range_check",
    "statement",
]

# Re-exported for the report and older imports: the calibration methods live in fiancee.risk.
from .risk import (  # noqa: F401
    BOUNDS,
    GUARANTEED,
    HIGH_PROBABILITY,
    METHODS,
    _count,
    _unit,
    accepted_index,
    calibration_range,
    check_bound,
    check_calibration_range,
    check_method,
    hb_pvalue,
    max_misses,
    method_name,
    min_calibration,
    range_check,
    statement,
)

# ----------------------------------------------------------------------------------------------
# The study: many calibration / test splits


def _as_table(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double()
    if t.dim() != 2 or t.shape[1] < 1:
        raise ValueError(f"{name} must be [N, E] (one column per exit, backbone excluded); got {list(t.shape)}")
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    return t


def _quantiles(x: torch.Tensor) -> dict:
    q = torch.quantile(x, torch.tensor([0.1, 0.5, 0.9], dtype=x.dtype))
    return {"p10": float(q[0]), "p50": float(q[1]), "p90": float(q[2])}


def _summary(miss: torch.Tensor, saved: torch.Tensor, epsilon: float) -> dict:
    s = miss.numel()
    above = float((miss > epsilon + 1e-12).double().mean())
    mq, sq = _quantiles(miss), _quantiles(saved)
    return {
        "miss_mean": float(miss.mean()),
        "miss_sd": float(miss.std()) if s > 1 else 0.0,
        "miss_p10": mq["p10"],
        "miss_p50": mq["p50"],
        "miss_p90": mq["p90"],
        "share_above": above,
        "saved_mean": float(saved.mean()),
        "saved_sd": float(saved.std()) if s > 1 else 0.0,
        "saved_p10": sq["p10"],
        "saved_p90": sq["p90"],
    }


def _membership(perm: torch.Tensor, start: int, stop: int, n: int) -> torch.Tensor:
    w = torch.zeros(perm.shape[0], n, dtype=torch.float32)
    w.scatter_(1, perm[:, start:stop], 1.0)
    return w  # [S, N] 1 where the input is in the part


def split_study(
    predicted,
    true,
    costs: Sequence[float],
    thresholds: Sequence[float],
    epsilons: Sequence[float],
    *,
    n_cal: int,
    n_test: int | None = None,
    splits: int = 500,
    seed: int = 0,
    delta: float = 0.1,
    methods: Sequence[str] = METHODS,
    bound: str = "hoeffding-bentkus",
    overhead_macs: float = 0.0,
    shifted: tuple | None = None,
    keep_splits: bool = False,
) -> dict:
    """Calibrate every method on ``splits`` random calibration sets of one table and measure each on the rest.

    ``predicted`` / ``true``: ``[N, E]`` per-input predicted and true LPIPS of every exit (held-out inputs the
    predictor never trained on); ``costs``: MACs of every route, the backbone last; ``overhead_macs``: what
    every input pays beyond its route (predictor, bank search). Each split draws ``n_cal`` calibration
    inputs and ``n_test`` test inputs (default: all the others) without replacement, seeded by ``seed``.
    Per threshold, epsilon and method: the realized miss rate on the test inputs over the splits (mean,
    10/50/90th percentiles, share of splits above epsilon), the net MACs saved (mean, sd, 10/90th
    percentiles) and the margin chosen; ``min_calibration`` per method and epsilon.

    ``shifted=(predicted, true)``: a second table from a shifted input distribution; every split's router
    (fitted on the first table) is also measured on all of it (``row["shifted"]``).

    With several thresholds, ``family`` gives per high-probability method the share of splits in which the
    miss rate exceeds epsilon at *some* threshold, for the per-threshold fit (delta each) and the
    Bonferroni fit (delta / thresholds each). Every method searches the same fixed grid of margins
    (:func:`fiancee.routing.margin_grid` of the whole table): what each would choose on its own
    calibration set, to the grid's step.
    """
    from .routing import _route_costs, cheapest_meeting

    # Arguments first: every refusal before any work.
    predicted, true, c = _check_tables(predicted, true, costs)
    n, e = predicted.shape
    ts, eps, delta, methods, bound = _check_choices(thresholds, epsilons, delta, methods, bound)
    splits, n_cal, n_test, overhead = _check_sizes(n, splits, n_cal, n_test, seed, overhead_macs)
    need = _calibration_needs(methods, eps, delta, bound, n_cal)
    shift = _check_shifted(shifted, e)
    fam_k = _family_needs(methods, eps, delta, bound, n_cal, len(ts))

    w_cal, w_test, w_iid = _draw_splits(seed, splits, n, n_cal, n_test)
    deltas = {m: [delta] + ([delta / len(ts)] if len(ts) > 1 and m in HIGH_PROBABILITY else []) for m in methods}
    s = _Study(
        costs=c,
        route_cost=_route_costs(c, e + 1, "cpu") / c[-1],
        over=overhead / c[-1],
        w_cal=w_cal,
        w_test=w_test,
        w_iid=w_iid,
        n_test=n_test,
        methods=methods,
        eps=eps,
        delta=delta,
        deltas=deltas,
        ks={(m, x, d): max_misses(m, n_cal, x, d, bound) for m in methods for x in eps for d in deltas[m]},
        need=need,
        fam_k=fam_k,
        shift=shift,
        keep_splits=keep_splits,
    )

    rows, paper, oracle = [], [], []
    realized: dict = {}  # (part, method, epsilon, delta) -> [T][S], for the family-wise shares
    for t in ts:
        rows += _threshold_rows(s, _margins(s, predicted, true, t), t, realized)
        paper.append(_paper_rule(s, predicted, true, t))
        ro = cheapest_meeting(true, t, c)  # the strict oracle on the whole table, for reference
        oracle.append({"threshold": t, "saved": float(1 - s.route_cost[ro].mean())})
    family = _family(s, realized, len(ts)) if len(ts) > 1 else []

    return {
        "n_table": n,
        "n_cal": n_cal,
        "n_test": n_test,
        "splits": splits,
        "seed": seed,
        "delta": delta,
        "bound": bound,
        "methods": methods,
        "thresholds": ts,
        "epsilons": eps,
        "grid_step": 1e-3,
        "backbone_macs": c[-1],
        "overhead_macs": overhead,
        "route_macs": c,
        "min_calibration": need,
        "rows": rows,
        "paper_rule": paper,
        "oracle": oracle,
        "family": family,
        "shifted_inputs": None if shift is None else int(shift[0].shape[0]),
    }


# -- the study's arguments, checked in this order (the first wrong one is the one reported)


def _check_tables(predicted, true, costs) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    predicted, true = _as_table(predicted, "predicted LPIPS"), _as_table(true, "true LPIPS")
    if predicted.shape != true.shape:
        raise ValueError(
            f"predicted {list(predicted.shape)} and true {list(true.shape)} LPIPS must have the same shape"
        )
    e = predicted.shape[1]
    c = [float(x) for x in costs]
    if len(c) != e + 1 or not all(math.isfinite(x) and x >= 0 for x in c) or c[-1] <= 0:
        raise ValueError(f"costs must be {e + 1} finite MACs >= 0 (the exits, then the backbone > 0); got {costs!r}")
    return predicted, true, c


def _check_choices(thresholds, epsilons, delta, methods, bound) -> tuple[list, list, float, list, str]:
    from .routing import check_threshold

    ts = sorted({check_threshold(t) for t in thresholds})
    if not ts:
        raise ValueError("give at least one threshold in (0, 1]")
    eps = sorted({_unit(x, "epsilon") for x in epsilons})
    if not eps:
        raise ValueError("give at least one epsilon in (0, 1)")
    delta = _unit(delta, "delta")
    methods = list(dict.fromkeys(check_method(m) for m in methods))
    if not methods:
        raise ValueError(f"give at least one method of {', '.join(METHODS)}")
    return ts, eps, delta, methods, check_bound(bound)


def _check_sizes(n: int, splits, n_cal, n_test, seed, overhead_macs) -> tuple[int, int, int, float]:
    splits = _count(splits, "splits", 100)
    n_cal = _count(n_cal, "n_cal", 1)
    n_test = n - n_cal if n_test is None else _count(n_test, "n_test", 1)
    if n_test < 1 or n_cal + n_test > n:
        raise ValueError(f"calibration ({n_cal}) + test ({n_test}) inputs exceed the table's {n} inputs")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    overhead = float(overhead_macs)
    if not math.isfinite(overhead) or overhead < 0:
        raise ValueError(f"overhead_macs must be a finite number >= 0; got {overhead_macs!r}")
    return splits, n_cal, n_test, overhead


def _calibration_needs(methods: list, eps: list, delta: float, bound: str, n_cal: int) -> dict:
    """``min_calibration`` per method and epsilon (``{method: {"0.1": k}}``); refused when ``n_cal`` is short of
    any, naming the largest need."""
    need = {m: {f"{x:g}": min_calibration(m, x, delta, bound) for x in eps} for m in methods}
    short = [(m, x, k) for m in methods for x, k in need[m].items() if k > n_cal]
    if short:
        m, x, k = max(short, key=lambda s: s[2])
        raise ValueError(
            f"{m} at epsilon {x} needs at least {k} calibration inputs (even with no miss at all); got n_cal={n_cal}"
        )
    return need


def _check_shifted(shifted, e: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if shifted is None:
        return None
    if not isinstance(shifted, (tuple, list)) or len(shifted) != 2:
        raise ValueError("shifted must be a pair (predicted, true) of [N', E] tables")
    shift = (_as_table(shifted[0], "shifted predicted LPIPS"), _as_table(shifted[1], "shifted true LPIPS"))
    if shift[0].shape != shift[1].shape or shift[0].shape[1] != e:
        raise ValueError(
            f"the shifted tables must both be [N', {e}]; got {list(shift[0].shape)}, {list(shift[1].shape)}"
        )
    return shift


def _family_needs(methods: list, eps: list, delta: float, bound: str, n_cal: int, n_thresholds: int) -> dict:
    """With several thresholds, the Bonferroni fits' own sizes ``{(method, epsilon): k}`` (delta / thresholds
    each), per high-probability method; refused when ``n_cal`` is short of one."""
    fam_k = {}
    if n_thresholds < 2:
        return fam_k
    for m in HIGH_PROBABILITY:
        if m not in methods:
            continue
        for x in eps:
            k = min_calibration(m, x, delta / n_thresholds, bound)
            if k > n_cal:
                raise ValueError(
                    f"{m} at epsilon {x:g} for {n_thresholds} thresholds at once (delta / {n_thresholds} "
                    f"each) needs at least {k} calibration inputs; got n_cal={n_cal}"
                )
            fam_k[(m, x)] = k
    return fam_k


# -- the study itself


def _draw_splits(seed: int, splits: int, n: int, n_cal: int, n_test: int) -> tuple[torch.Tensor, ...]:
    """The memberships ``[S, N]`` of every split's calibration and test inputs, and of the i.i.d. draws."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.rand(splits, n, generator=g).argsort(dim=1)  # [S, N]: one random order of the table per split
    w_cal = _membership(perm, 0, n_cal, n)  # [S, N]
    w_test = _membership(perm, n_cal, n_cal + n_test, n)  # [S, N]
    # The theorem's own setting beside the splits: calibration inputs drawn i.i.d. (with replacement) from the
    # table, whose miss rate over the whole table is then the fitted router's true miss rate.
    draws = torch.randint(n, (splits, n_cal), generator=g)
    w_iid = torch.zeros(splits, n, dtype=torch.float32).scatter_add_(1, draws, torch.ones(splits, n_cal))
    return w_cal, w_test, w_iid


@dataclass
class _Study:
    """What every threshold of :func:`split_study` shares: the checked arguments and the drawn splits."""

    costs: list  # MACs per route, the backbone last
    route_cost: torch.Tensor  # [E + 1] as a share of the backbone
    over: float  # the overhead as a share of the backbone
    w_cal: torch.Tensor  # [S, N] 1 where the input calibrates the split
    w_test: torch.Tensor  # [S, N] 1 where it tests it
    w_iid: torch.Tensor  # [S, N] how often the split's i.i.d. draw took it
    n_test: int
    methods: list
    eps: list
    delta: float
    deltas: dict  # method -> the deltas it is fitted at: its own, then (several thresholds) the Bonferroni one
    ks: dict  # (method, epsilon, delta) -> the most calibration misses accepted
    need: dict  # min_calibration per method and epsilon
    fam_k: dict  # (method, epsilon) -> the Bonferroni fit's min_calibration
    shift: tuple | None  # the shifted (predicted, true) tables
    keep_splits: bool


@dataclass
class _Margins:
    """One threshold's misses and costs at every margin of the grid, per split and over the whole table."""

    grid: torch.Tensor  # [M]
    counts: dict  # "split" / "iid" -> (calibration misses [S, M], monotonized misses [S, M] or None)
    test_miss: torch.Tensor  # [S, M]
    test_cost: torch.Tensor  # [S, M]
    pop_miss: torch.Tensor  # [M]: the table as the population
    pop_cost: torch.Tensor  # [M]
    shifted: tuple | None  # (miss rate [M], cost [M]) on the shifted table


def _margins(s: _Study, predicted: torch.Tensor, true: torch.Tensor, t: float) -> _Margins:
    from .routing import margin_grid, margin_misses

    grid = margin_grid(predicted, t)  # [M]
    miss, routes = margin_misses(predicted, true, t, grid, s.costs)  # [M, N] bool, [M, N]
    cost = s.route_cost[routes].float()  # [M, N]
    mono = miss.flip(0).cummax(dim=0).values.flip(0)  # [M, N]: misses at this margin or any larger one
    miss_t, mono_t = miss.T.float(), mono.T.float()  # [N, M]
    # Calibration misses per split and margin [S, M] (exact: sums of 0/1 in float32).
    counts = {
        "split": (s.w_cal @ miss_t, s.w_cal @ mono_t if "crc" in s.methods else None),
        "iid": (s.w_iid @ miss_t, s.w_iid @ mono_t if "crc" in s.methods else None),
    }
    test_miss = (s.w_test @ miss_t) / s.n_test  # [S, M]
    test_cost = (s.w_test @ cost.T) / s.n_test  # [S, M]
    pop_miss, pop_cost = miss.double().mean(1), cost.double().mean(1)  # [M]: the table as the population
    shifted = None
    if s.shift is not None:
        s_miss, s_routes = margin_misses(s.shift[0], s.shift[1], t, grid, s.costs)
        shifted = (s_miss.double().mean(1), s.route_cost[s_routes].mean(1))  # [M]
    return _Margins(grid, counts, test_miss, test_cost, pop_miss, pop_cost, shifted)


def _accepted(counts: tuple, method: str, k) -> torch.Tensor:
    """Per split, the index of the accepted margin ``[S]``: CRC tests the monotonized misses, the others the raw."""
    raw, mono = counts
    return accepted_index(mono if method == "crc" else raw, k)


def _threshold_rows(s: _Study, tab: _Margins, t: float, realized: dict) -> list[dict]:
    """Every epsilon and method at threshold ``t``, fitted on every split; each delta's realized miss rates (and
    the Bonferroni fits' savings) also go to ``realized`` for the family-wise shares."""
    rows = []
    for x in s.eps:
        for m in s.methods:
            for d in s.deltas[m]:
                idx = _accepted(tab.counts["split"], m, s.ks[(m, x, d)])  # [S]
                r = tab.test_miss.gather(1, idx[:, None]).squeeze(1).double()
                saved = 1 - tab.test_cost.gather(1, idx[:, None]).squeeze(1).double() - s.over
                idx_iid = _accepted(tab.counts["iid"], m, s.ks[(m, x, d)])
                realized.setdefault(("split", m, x, d), []).append(r)
                realized.setdefault(("iid", m, x, d), []).append(tab.pop_miss[idx_iid])
                if d != s.delta:
                    realized.setdefault(("saved", m, x, d), []).append(saved)
                    continue
                rows.append(_row(s, tab, t, x, m, idx, idx_iid, r, saved))
    return rows


def _row(
    s: _Study,
    tab: _Margins,
    t: float,
    x: float,
    m: str,
    idx: torch.Tensor,
    idx_iid: torch.Tensor,
    r: torch.Tensor,
    saved: torch.Tensor,
) -> dict:
    """One row of the study: method ``m`` at threshold ``t`` and epsilon ``x`` (its own delta)."""
    margins = tab.grid[idx]
    mq = _quantiles(margins)
    row = {
        "id": f"T{t:g}_e{x:g}_{m}",
        "threshold": t,
        "epsilon": x,
        "method": m,
        **_summary(r, saved, x),
        "margin_mean": float(margins.mean()),
        "margin_p10": mq["p10"],
        "margin_p90": mq["p90"],
        "min_calibration": s.need[m][f"{x:g}"],
        "iid": _summary(tab.pop_miss[idx_iid], 1 - tab.pop_cost[idx_iid] - s.over, x),
    }
    if tab.shifted is not None:
        row["shifted"] = _summary(tab.shifted[0][idx], 1 - tab.shifted[1][idx] - s.over, x)
    if s.keep_splits:
        row["per_split"] = {"miss": r.tolist(), "saved": saved.tolist()}
    return row


def _paper_rule(s: _Study, predicted: torch.Tensor, true: torch.Tensor, t: float) -> dict:
    """The paper's rule (margin 0) on the same splits (and the shifted table), for reference."""
    from .routing import cheapest_meeting, true_lpips_of

    r0 = cheapest_meeting(predicted, t, s.costs)
    miss0 = (true_lpips_of(r0, true) > t).float()
    p_miss = ((s.w_test @ miss0) / s.n_test).double()
    p_saved = 1 - (s.w_test @ s.route_cost[r0].float()) / s.n_test - s.over
    entry = {
        "threshold": t,
        "miss_mean": float(p_miss.mean()),
        **{f"miss_{k}": v for k, v in _quantiles(p_miss).items()},
        "saved_mean": float(p_saved.mean()),
    }
    if s.shift is not None:
        rs = cheapest_meeting(s.shift[0], t, s.costs)
        entry["shifted"] = {
            "miss_mean": float((true_lpips_of(rs, s.shift[1]) > t).double().mean()),
            "saved_mean": float(1 - s.route_cost[rs].mean() - s.over),
        }
    return entry


def _family(s: _Study, realized: dict, n_thresholds: int) -> list[dict]:
    """Per method and epsilon, the share of splits whose miss rate exceeds epsilon at *some* threshold: each
    threshold fitted at delta, and (high-probability methods) the Bonferroni fit at delta / thresholds."""

    def share(part, m, x, d):
        per = torch.stack(realized[(part, m, x, d)])  # [T, S]
        return float((per > x + 1e-12).any(0).double().mean())

    family = []
    for m in s.methods:
        for x in s.eps:
            item = {
                "id": f"e{x:g}_{m}",
                "method": m,
                "epsilon": x,
                "share_any_above": share("split", m, x, s.delta),
                "iid_share_any_above": share("iid", m, x, s.delta),
            }
            if m in HIGH_PROBABILITY:
                d = s.delta / n_thresholds
                sv = torch.stack(realized[("saved", m, x, d)])
                miss = torch.stack(realized[("split", m, x, d)])
                item["bonferroni"] = {
                    "delta_each": d,
                    "min_calibration": s.fam_k[(m, x)],
                    "share_any_above": share("split", m, x, d),
                    "iid_share_any_above": share("iid", m, x, d),
                    "saved_mean": [float(v) for v in sv.mean(1)],
                    "miss_mean": [float(v) for v in miss.mean(1)],
                }
            family.append(item)
    return family
