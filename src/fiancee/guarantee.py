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
from typing import Sequence

import numpy as np
import torch

__all__ = ["METHODS", "BOUNDS", "check_method", "check_bound", "max_misses", "min_calibration", "accepted_index",
           "hb_pvalue", "split_study", "calibration_range", "range_check", "statement"]

from .risk import (BOUNDS, GUARANTEED, HIGH_PROBABILITY, METHODS, _count, _unit, accepted_index,  # noqa: F401
                   calibration_range, check_bound, check_calibration_range, check_method, hb_pvalue, max_misses,
                   method_name, min_calibration, range_check, statement)

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
    return {"miss_mean": float(miss.mean()), "miss_sd": float(miss.std()) if s > 1 else 0.0,
            "miss_p10": mq["p10"], "miss_p50": mq["p50"], "miss_p90": mq["p90"], "share_above": above,
            "saved_mean": float(saved.mean()), "saved_sd": float(saved.std()) if s > 1 else 0.0,
            "saved_p10": sq["p10"], "saved_p90": sq["p90"]}


def _membership(perm: torch.Tensor, start: int, stop: int, n: int) -> torch.Tensor:
    w = torch.zeros(perm.shape[0], n, dtype=torch.float32)
    w.scatter_(1, perm[:, start:stop], 1.0)
    return w  # [S, N] 1 where the input is in the part


def split_study(predicted, true, costs: Sequence[float], thresholds: Sequence[float], epsilons: Sequence[float], *,
                n_cal: int, n_test: int | None = None, splits: int = 500, seed: int = 0, delta: float = 0.1,
                methods: Sequence[str] = METHODS, bound: str = "hoeffding-bentkus", overhead_macs: float = 0.0,
                shifted: tuple | None = None, keep_splits: bool = False) -> dict:
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
    from .routing import (_route_costs, check_threshold, cheapest_meeting, margin_grid, margin_misses,
                          true_lpips_of)

    # Arguments first: every refusal before any work.
    predicted, true = _as_table(predicted, "predicted LPIPS"), _as_table(true, "true LPIPS")
    if predicted.shape != true.shape:
        raise ValueError(f"predicted {list(predicted.shape)} and true {list(true.shape)} LPIPS must have the same shape")
    n, e = predicted.shape
    c = [float(x) for x in costs]
    if len(c) != e + 1 or not all(math.isfinite(x) and x >= 0 for x in c) or c[-1] <= 0:
        raise ValueError(f"costs must be {e + 1} finite MACs >= 0 (the exits, then the backbone > 0); got {costs!r}")
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
    bound = check_bound(bound)
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
    need = {m: {f"{x:g}": min_calibration(m, x, delta, bound) for x in eps} for m in methods}
    short = [(m, x, k) for m in methods for x, k in need[m].items() if k > n_cal]
    if short:
        m, x, k = max(short, key=lambda s: s[2])
        raise ValueError(f"{m} at epsilon {x} needs at least {k} calibration inputs (even with no miss at all); "
                         f"got n_cal={n_cal}")
    shift = None
    if shifted is not None:
        if not isinstance(shifted, (tuple, list)) or len(shifted) != 2:
            raise ValueError("shifted must be a pair (predicted, true) of [N', E] tables")
        shift = (_as_table(shifted[0], "shifted predicted LPIPS"), _as_table(shifted[1], "shifted true LPIPS"))
        if shift[0].shape != shift[1].shape or shift[0].shape[1] != e:
            raise ValueError(f"the shifted tables must both be [N', {e}]; got {list(shift[0].shape)}, {list(shift[1].shape)}")
    fam = len(ts) > 1
    fam_k = {}  # the Bonferroni fits need their own sizes
    for m in HIGH_PROBABILITY:
        if fam and m in methods:
            for x in eps:
                k = min_calibration(m, x, delta / len(ts), bound)
                if k > n_cal:
                    raise ValueError(f"{m} at epsilon {x:g} for {len(ts)} thresholds at once (delta / {len(ts)} each) "
                                     f"needs at least {k} calibration inputs; got n_cal={n_cal}")
                fam_k[(m, x)] = k

    g = torch.Generator().manual_seed(seed)
    perm = torch.rand(splits, n, generator=g).argsort(dim=1)  # [S, N]: one random order of the table per split
    w_cal = _membership(perm, 0, n_cal, n)  # [S, N]
    w_test = _membership(perm, n_cal, n_cal + n_test, n)  # [S, N]
    # The theorem's own setting beside the splits: calibration inputs drawn i.i.d. (with replacement) from the
    # table, whose miss rate over the whole table is then the fitted router's true miss rate.
    draws = torch.randint(n, (splits, n_cal), generator=g)
    w_iid = torch.zeros(splits, n, dtype=torch.float32).scatter_add_(1, draws, torch.ones(splits, n_cal))
    route_cost = _route_costs(c, e + 1, "cpu") / c[-1]  # [E + 1] as a share of the backbone
    over = overhead / c[-1]
    deltas = {m: [delta] + ([delta / len(ts)] if fam and m in HIGH_PROBABILITY else []) for m in methods}
    ks = {(m, x, d): max_misses(m, n_cal, x, d, bound) for m in methods for x in eps for d in deltas[m]}

    rows, paper, oracle = [], [], []
    realized: dict = {}  # (part, method, epsilon, delta) -> [T][S], for the family-wise shares
    for t in ts:
        grid = margin_grid(predicted, t)  # [M]
        miss, routes = margin_misses(predicted, true, t, grid, c)  # [M, N] bool, [M, N]
        cost = route_cost[routes].float()  # [M, N]
        mono = miss.flip(0).cummax(dim=0).values.flip(0)  # [M, N]: misses at this margin or any larger one
        miss_t, mono_t = miss.T.float(), mono.T.float()  # [N, M]
        # Calibration misses per split and margin [S, M] (exact: sums of 0/1 in float32).
        counts = {"split": (w_cal @ miss_t, w_cal @ mono_t if "crc" in methods else None),
                  "iid": (w_iid @ miss_t, w_iid @ mono_t if "crc" in methods else None)}
        test_miss = (w_test @ miss_t) / n_test  # [S, M]
        test_cost = (w_test @ cost.T) / n_test  # [S, M]
        pop_miss, pop_cost = miss.double().mean(1), cost.double().mean(1)  # [M]: the table as the population
        if shift is not None:
            s_miss, s_routes = margin_misses(shift[0], shift[1], t, grid, c)
            s_rate, s_cost = s_miss.double().mean(1), route_cost[s_routes].mean(1)  # [M]
        for x in eps:
            for m in methods:
                for d in deltas[m]:
                    raw, mon = counts["split"]
                    idx = accepted_index(mon if m == "crc" else raw, ks[(m, x, d)])  # [S]
                    r = test_miss.gather(1, idx[:, None]).squeeze(1).double()
                    saved = 1 - test_cost.gather(1, idx[:, None]).squeeze(1).double() - over
                    raw, mon = counts["iid"]
                    idx_iid = accepted_index(mon if m == "crc" else raw, ks[(m, x, d)])
                    realized.setdefault(("split", m, x, d), []).append(r)
                    realized.setdefault(("iid", m, x, d), []).append(pop_miss[idx_iid])
                    if d != delta:
                        realized.setdefault(("saved", m, x, d), []).append(saved)
                        continue
                    margins = grid[idx]
                    mq = _quantiles(margins)
                    row = {"id": f"T{t:g}_e{x:g}_{m}", "threshold": t, "epsilon": x, "method": m, **_summary(r, saved, x),
                           "margin_mean": float(margins.mean()), "margin_p10": mq["p10"], "margin_p90": mq["p90"],
                           "min_calibration": need[m][f"{x:g}"],
                           "iid": _summary(pop_miss[idx_iid], 1 - pop_cost[idx_iid] - over, x)}
                    if shift is not None:
                        row["shifted"] = _summary(s_rate[idx], 1 - s_cost[idx] - over, x)
                    if keep_splits:
                        row["per_split"] = {"miss": r.tolist(), "saved": saved.tolist()}
                    rows.append(row)
        # The paper's rule (margin 0) and the strict oracle, on the same splits / table, for reference.
        r0 = cheapest_meeting(predicted, t, c)
        miss0 = (true_lpips_of(r0, true) > t).float()
        p_miss = ((w_test @ miss0) / n_test).double()
        p_saved = 1 - (w_test @ route_cost[r0].float()) / n_test - over
        entry = {"threshold": t, "miss_mean": float(p_miss.mean()),
                 **{f"miss_{k}": v for k, v in _quantiles(p_miss).items()}, "saved_mean": float(p_saved.mean())}
        if shift is not None:
            rs = cheapest_meeting(shift[0], t, c)
            entry["shifted"] = {"miss_mean": float((true_lpips_of(rs, shift[1]) > t).double().mean()),
                                "saved_mean": float(1 - route_cost[rs].mean() - over)}
        paper.append(entry)
        ro = cheapest_meeting(true, t, c)
        oracle.append({"threshold": t, "saved": float(1 - route_cost[ro].mean())})

    family = []
    if fam:
        def share(part, m, x, d):
            per = torch.stack(realized[(part, m, x, d)])  # [T, S]
            return float((per > x + 1e-12).any(0).double().mean())

        for m in methods:
            for x in eps:
                item = {"id": f"e{x:g}_{m}", "method": m, "epsilon": x, "share_any_above": share("split", m, x, delta),
                        "iid_share_any_above": share("iid", m, x, delta)}
                if m in HIGH_PROBABILITY:
                    d = delta / len(ts)
                    sv = torch.stack(realized[("saved", m, x, d)])
                    item["bonferroni"] = {"delta_each": d, "min_calibration": fam_k[(m, x)],
                                          "share_any_above": share("split", m, x, d),
                                          "iid_share_any_above": share("iid", m, x, d),
                                          "saved_mean": [float(v) for v in sv.mean(1)],
                                          "miss_mean": [float(v) for v in torch.stack(realized[("split", m, x, d)]).mean(1)]}
                family.append(item)

    return {"n_table": n, "n_cal": n_cal, "n_test": n_test, "splits": splits, "seed": seed, "delta": delta,
            "bound": bound, "methods": methods, "thresholds": ts, "epsilons": eps, "grid_step": 1e-3,
            "backbone_macs": c[-1], "overhead_macs": overhead, "route_macs": c,
            "min_calibration": need, "rows": rows, "paper_rule": paper, "oracle": oracle, "family": family,
            "shifted_inputs": None if shift is None else int(shift[0].shape[0])}
