"""The rules of risk control for a calibrated router: which margins a method accepts, and what it promises.

Pure functions of counts and sizes (no routing, no tables): how many calibration misses a margin may have
and still be accepted (:func:`max_misses`), the fewest calibration inputs a method needs
(:func:`min_calibration`), the scan from the largest margin down (:func:`accepted_index`), a router's
guarantee in words (:func:`statement`), and the calibration range that routed inputs are compared with
(:func:`calibration_range`, :func:`range_check`). :class:`fiancee.routing.CalibratedRouter` fits with
them; :func:`fiancee.guarantee.split_study` studies them over many splits. The methods and what each
promises: :mod:`fiancee.guarantee`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .core.args import check_int, check_unit

__all__ = [
    "METHODS",
    "BOUNDS",
    "GUARANTEED",
    "HIGH_PROBABILITY",
    "check_method",
    "check_bound",
    "max_misses",
    "min_calibration",
    "accepted_index",
    "hb_pvalue",
    "statement",
    "method_name",
    "calibration_range",
    "check_calibration_range",
    "range_check",
]

METHODS = ("average", "crc", "ltt", "ucb")
BOUNDS = ("hoeffding-bentkus", "clopper-pearson")
GUARANTEED = ("crc", "ltt", "ucb")  # the methods that state a guarantee
HIGH_PROBABILITY = ("ltt", "ucb")  # the methods whose statement holds with probability >= 1 - delta

_NAMES = {
    "average": "average compliance (split-conformal level, no guarantee)",
    "crc": "Conformal Risk Control",
    "ltt": "Learn-then-Test, binomial p-values, fixed-sequence testing",
    "ucb": "upper confidence bound",
}


def check_method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return method


def check_bound(bound) -> str:
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {', '.join(BOUNDS)}; got {bound!r}")
    return bound


def _unit(value, name: str) -> float:
    return check_unit(value, name)


def _count(value, name: str, minimum: int) -> int:
    return check_int(value, name, minimum=minimum)


# ----------------------------------------------------------------------------------------------
# The rules: how many calibration misses a margin may have and still be accepted


def hb_pvalue(misses: np.ndarray, n: int, epsilon: float) -> np.ndarray:
    """Hoeffding-Bentkus p-value of H0 "miss rate > epsilon" after ``misses`` of ``n`` (Bates et al. 2021,
    Angelopoulos et al. 2021, eq. for p^HB): ``min(exp(-n h1(min(r, eps), eps)), e * P(Binom(n, eps) <= misses))``,
    ``r = misses / n``, ``h1(a, b) = a log(a / b) + (1 - a) log((1 - a) / (1 - b))``."""
    from scipy.special import xlogy
    from scipy.stats import binom

    k = np.asarray(misses, dtype=np.float64)
    r = np.minimum(k / n, epsilon)
    h1 = xlogy(r, r / epsilon) + xlogy(1 - r, (1 - r) / (1 - epsilon))
    hoeffding = np.exp(-n * h1)
    bentkus = math.e * binom.cdf(np.ceil(k), n, epsilon)
    return np.minimum(hoeffding, bentkus)


def max_misses(
    method: str, n: int, epsilon: float, delta: float | None = None, bound: str = "hoeffding-bentkus"
) -> int:
    """The most calibration misses (of ``n``) with which a margin is accepted; -1 when none is (``n`` too small).

    ``average``: ``n - ceil((n + 1)(1 - epsilon))`` (at least 0: the level is capped at full compliance);
    ``crc``: ``floor((n + 1) epsilon - 1)``, applied to monotonized misses; ``ltt``: the largest ``k`` with
    ``P(Binom(n, epsilon) <= k) <= delta``; ``ucb``: the largest ``k`` whose upper confidence bound
    (``bound``) at level ``1 - delta`` is below ``epsilon``.
    """
    check_method(method)
    n = _count(n, "n", 1)
    epsilon = _unit(epsilon, "epsilon")
    if method == "average":
        return max(0, n - math.ceil((n + 1) * (1 - epsilon) - 1e-9))
    if method == "crc":
        return math.floor((n + 1) * epsilon - 1 + 1e-9)
    delta = _unit(delta, "delta")
    ks = np.arange(n + 1)
    if method == "ltt" or check_bound(bound) == "clopper-pearson":
        from scipy.stats import binom

        p = binom.cdf(ks, n, epsilon)
    else:
        p = hb_pvalue(ks, n, epsilon)
    ok = np.nonzero(p <= delta)[0]  # p rises with k: the accepted counts are 0..K
    return int(ok[-1]) if ok.size else -1


def min_calibration(method: str, epsilon: float, delta: float | None = None, bound: str = "hoeffding-bentkus") -> int:
    """The fewest calibration inputs with which ``method`` can accept any margin but "everyone on the backbone"
    (even with no miss at all): 1 for ``average``, ``ceil(1 / epsilon) - 1`` for ``crc``,
    ``ceil(log(delta) / log(1 - epsilon))`` for ``ltt`` and ``ucb`` (both bounds give ``(1 - epsilon)^n`` at no
    miss)."""
    check_method(method)
    epsilon = _unit(epsilon, "epsilon")
    if method == "average":
        return 1
    if method == "crc":
        n = max(1, math.ceil(1 / epsilon - 1 - 1e-9))
        while max_misses("crc", n, epsilon) < 0:
            n += 1
        return n
    delta = _unit(delta, "delta")
    check_bound(bound)
    return math.ceil(math.log(delta) / math.log1p(-epsilon))


def accepted_index(counts: torch.Tensor, k_max: int | torch.Tensor) -> torch.Tensor:
    """Index of the smallest margin from which every larger one has at most ``k_max`` misses.

    ``counts [..., M]``: calibration misses at each margin of the grid (ascending; the last, everyone on the
    backbone, has none). The scan runs from the largest margin down and stops at the first rejected one
    (fixed-sequence testing); the answer is the margin just above it, or 0 when none is rejected.
    """
    bad = counts > (torch.as_tensor(k_max, dtype=counts.dtype) + 0.5)  # [..., M]; counts are whole numbers
    m = counts.shape[-1]
    any_bad = bad.any(dim=-1)
    last_bad = (m - 1) - bad.flip(-1).to(torch.int8).argmax(dim=-1)  # argmax: the first True from the top
    return torch.where(any_bad, (last_bad + 1).clamp(max=m - 1), torch.zeros_like(last_bad))


def statement(
    method: str,
    epsilon: float | None,
    delta: float | None,
    n: int | None,
    *,
    bound: str | None = None,
    thresholds: Sequence[float] = (),
    familywise: bool = False,
) -> str | None:
    """A calibrated router's guarantee in words (None for ``average``)."""
    if method == "average" or epsilon is None:
        return None
    if method == "crc":
        return (
            f"on average over the draw of the {n} calibration inputs, at most {epsilon:.1%} of new inputs miss "
            "the threshold (Conformal Risk Control)"
        )
    where = ""
    if familywise and len(thresholds) > 1:
        ts = ", ".join(f"{t:g}" for t in thresholds)
        where = f" at every one of the thresholds {ts} at once (Bonferroni: delta / {len(thresholds)} each)"
    if method == "ltt":
        how = "Learn-then-Test, binomial p-values"
    else:
        how = f"upper confidence bound, {bound or 'hoeffding-bentkus'}"
    return (
        f"with probability >= {1 - delta:g} over the {n} calibration inputs, at most {epsilon:.1%} of new inputs "
        f"miss the threshold{where} ({how})"
    )


def method_name(method: str, bound: str | None = None) -> str:
    name = _NAMES[check_method(method)]
    return f"{name} ({bound})" if method == "ucb" and bound else name


# ----------------------------------------------------------------------------------------------
# The calibration range: do routed inputs look like the calibration inputs?


def calibration_range(predicted: torch.Tensor, quantile: float = 0.01) -> dict:
    """What :func:`range_check` compares routed inputs with: per exit the ``quantile`` and ``1 - quantile``
    quantiles of the calibration inputs' predicted LPIPS, and the share of calibration inputs outside that
    box on some exit (what exchangeable inputs show, about ``2 * quantile`` per exit)."""
    p = torch.as_tensor(predicted).double()
    if p.dim() != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(f"calibration range needs predicted LPIPS [N, E]; got {list(p.shape)}")
    q = _unit(quantile, "quantile")
    low = torch.quantile(p, q, dim=0)
    high = torch.quantile(p, 1 - q, dim=0)
    outside = ((p < low) | (p > high)).any(dim=1)
    return {
        "n": int(p.shape[0]),
        "quantile": q,
        "low": [float(v) for v in low],
        "high": [float(v) for v in high],
        "mean": [float(v) for v in p.mean(0)],
        "outside": int(outside.sum()),
    }


def check_calibration_range(cal, what: str = "calibration range") -> dict:
    """``cal`` as :func:`calibration_range` writes it (read back from JSON), or a one-line ValueError."""
    if not isinstance(cal, dict):
        raise ValueError(f"{what} must be a JSON object; got {cal!r}")
    keys = {"n", "quantile", "low", "high", "mean", "outside"}
    if set(cal) != keys:
        raise ValueError(f"{what} must have the fields {sorted(keys)}; got {sorted(cal)}")
    ok = (
        isinstance(cal["n"], int)
        and not isinstance(cal["n"], bool)
        and cal["n"] >= 1
        and isinstance(cal["outside"], int)
        and not isinstance(cal["outside"], bool)
        and 0 <= cal["outside"] <= cal["n"]
        and all(
            isinstance(cal[k], list)
            and cal[k]
            and len(cal[k]) == len(cal["low"])
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in cal[k])
            for k in ("low", "high", "mean")
        )
        and isinstance(cal["quantile"], (int, float))
        and 0 < cal["quantile"] < 0.5
    )
    if not ok:
        raise ValueError(
            f"{what}: fields must hold counts, a quantile in (0, 0.5) and equal-length lists of finite numbers"
        )
    return cal


def range_check(cal: dict, predicted: torch.Tensor, alpha: float = 1e-3) -> dict:
    """Whether routed inputs look unlike the calibration inputs, judged by their predicted LPIPS.

    Counts the routed inputs whose predicted LPIPS lies outside the calibration box (``cal`` from
    :func:`calibration_range`) on some exit, and compares that share with the calibration set's own
    (``(outside + 1) / (n + 1)``, what an exchangeable input shows) by a one-sided Fisher exact test (both
    shares are estimates); ``warn`` when its p-value is below ``alpha``. A warning means the guarantee's assumption
    is in doubt for these inputs; no warning does not prove it holds (a shift inside the box, e.g. more of one kind of
    input, passes unseen).
    """
    from scipy.stats import fisher_exact

    p = torch.as_tensor(predicted).double()
    low, high = torch.tensor(cal["low"], dtype=torch.float64), torch.tensor(cal["high"], dtype=torch.float64)
    if p.dim() != 2 or p.shape[1] != low.numel():
        raise ValueError(f"predicted LPIPS must be [B, {low.numel()}] like the calibration set; got {list(p.shape)}")
    out = (p < low) | (p > high)  # [B, E]
    b = int(p.shape[0])
    k = int(out.any(dim=1).sum())
    expected = (cal["outside"] + 1) / (cal["n"] + 1)
    o = cal["outside"] + 1  # one more than seen: a new input can fall outside where none of the n did
    pvalue = float(fisher_exact([[k, b - k], [o, cal["n"] + 1 - o]], alternative="greater")[1]) if b else 1.0
    warn = bool(b and k / b > expected and pvalue < alpha)
    result = {
        "inputs": b,
        "outside": k,
        "outside_share": k / b if b else 0.0,
        "expected_share": expected,
        "pvalue": pvalue,
        "warn": warn,
        "outside_share_per_exit": [float(v) for v in out.double().mean(0)],
        "mean": [float(v) for v in p.mean(0)],
        "calibration_mean": list(cal["mean"]),
    }
    result["message"] = (
        (
            f"{k / b:.1%} of the {b} routed inputs have a predicted LPIPS outside the range of {cal['n']} "
            f"calibration inputs (central {1 - 2 * cal['quantile']:.0%} per exit), against {expected:.1%} expected "
            f"for inputs like them (p = {pvalue:.1e}): these inputs look unlike the calibration set, "
            "and the guarantee assumes they are alike"
        )
        if warn
        else None
    )
    return result
