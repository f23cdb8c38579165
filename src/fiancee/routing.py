"""Routers: weightless policies that turn per-exit LPIPS (predicted or true) into one route per input.

Paper section 3.2: "given a quality threshold, we want to ... select only the branch that will
achieve it performing the least possible calculations". Every router here shares one interface::

    router.route(lpips, threshold) -> LongTensor [B]

``lpips`` is ``[B, E]``: one column per exit branch, shallowest first (the backbone's LPIPS against
itself is 0 by definition, so it has no column). The answer holds route indices as
:class:`fiancee.exits.ExitGenerator` numbers them: ``0..E-1`` for the branches, ``E`` for the
backbone, ready for ``model(*inputs, route=routes)``.

"Cheapest" follows ``costs`` (the MACs of every route, backbone last, e.g. ``model.route_macs()``);
without costs the route index is the cost (routes are numbered shallowest first, and a deeper exit
runs more of the backbone). Ties go to the lower index.

- :class:`ThresholdRouter`: the paper's policy, the cheapest exit whose predicted LPIPS <= T, else the
  backbone.
- :class:`OracleRouter`: the same rule on the *true* LPIPS: the upper bound no predictor-driven router
  can beat at compliance 1. With ``compliance < 1`` it is the best possible router allowed that share
  of misses (it spends the misses where they save the most).
- :class:`StaticRouter`: one fixed exit for every input (the baseline without a predictor).
- :class:`CalibratedRouter`: the threshold rule on ``predicted + margin``, the margin fitted on
  held-out (predicted, true) pairs so that a requested share of outputs truly meets T. Not in the
  paper: the paper reports the predictor's mean relative error (5-14%, Tables S3/S4) but a router
  trusting it blindly meets T on only ~half of the borderline inputs. ``fit`` meets a compliance
  target on average; ``fit_guarantee`` gives the PAC statement "with probability >= 1 - delta the
  miss rate is <= epsilon" (Learn-then-Test); ``fit_crc`` the expected miss rate <= epsilon (Conformal Risk
  Control); ``fit_ucb`` the PAC statement by an upper confidence bound. The rules that choose the margin,
  and the study of them over many calibration splits, are in :mod:`fiancee.guarantee`.

Routers hold no weights; :meth:`Router.to_config` / :func:`router_from_config` round-trip them
through JSON. Every kind is registered in :data:`ROUTERS` (``@ROUTERS.add("kind")``) and points by its
``kind`` to its numpy rule in :mod:`fiancee.core.routers`, which declares the kind's config fields and checks
and which the torch-free runtime runs: the config fields, their checks, the margins, the route costs and the
oracle's misses are written once there. The built-in kinds compare in torch (tables may be bfloat16 or on
a GPU) with the same rule and ties; a new kind may leave :meth:`Router.route` to its numpy rule.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .core.args import check_bool, check_unit
from .core.renames import UNSET, renamed, warn_renamed
from .core.routers import RoutingRule, check_compliance, check_margins, check_route, check_router_config, rule_for
from .core.rules import EPS as _EPS  # the calibrated rule's tolerance (fiancee.core.rules)
from .core.rules import check_threshold, margin_at, oracle_misses, route_costs, spend_misses
from .specs import Registry

__all__ = [
    "ROUTERS",
    "Router",
    "ThresholdRouter",
    "OracleRouter",
    "StaticRouter",
    "CalibratedRouter",
    "router_from_config",
    "check_threshold",
    "compliance",
    "mean_cost",
    "guarantee_min_inputs",
    "margin_grid",
    "margin_misses",
]

# Router kind -> Router subclass; a config's kind resolves only to a router registered here (no import).
ROUTERS = Registry("router", "fiancee.routers", "a Router subclass")
# The guarantee's margin grid sits off round numbers so that no LPIPS value lands exactly on a grid point.
_GRID_OFFSET = 0.5e-3 / 7


def guarantee_min_inputs(epsilon: float, delta: float) -> int:
    """The fewest calibration inputs that can certify a miss rate <= ``epsilon`` with probability
    >= 1 - ``delta``: even with no miss, the binomial p-value ``(1 - epsilon)^n`` must reach ``delta``."""
    epsilon, delta = check_unit(epsilon, "epsilon"), check_unit(delta, "delta")
    return math.ceil(math.log(delta) / math.log1p(-epsilon))


def _check_lpips(lpips: torch.Tensor, name: str = "lpips") -> torch.Tensor:
    if not isinstance(lpips, torch.Tensor) or lpips.dim() != 2 or lpips.shape[1] < 1:
        shape = list(lpips.shape) if isinstance(lpips, torch.Tensor) else type(lpips).__name__
        raise ValueError(f"{name} must be a [B, E] tensor (one column per exit branch, backbone excluded); got {shape}")
    if not lpips.is_floating_point():
        raise ValueError(f"{name} must be floating point; got {lpips.dtype}")
    if torch.isnan(lpips).any():
        raise ValueError(f"{name} contains NaN")
    return lpips


def _route_costs(costs: Sequence[float] | None, num_routes: int, device) -> torch.Tensor:
    """:func:`fiancee.core.rules.route_costs` as a float64 tensor on ``device``."""
    return torch.as_tensor(route_costs(costs, num_routes), device=device)


def cheapest_meeting(lpips: torch.Tensor, threshold: float, costs: Sequence[float] | None = None) -> torch.Tensor:
    """Route ``[B]``: the cheapest route whose LPIPS <= ``threshold`` (the backbone always qualifies).

    :func:`fiancee.core.rules.cheapest_meeting` in torch: ``lpips <= threshold`` compares in the table's dtype
    (float32, bfloat16, float64), on its device, as every router and the margin scans need."""
    b, e = lpips.shape
    ok = torch.cat([lpips <= threshold, torch.ones(b, 1, dtype=torch.bool, device=lpips.device)], dim=1)  # [B, E+1]
    c = _route_costs(costs, e + 1, lpips.device)
    masked = torch.where(ok, c.expand(b, e + 1), torch.full_like(c, math.inf).expand(b, e + 1))  # [B, E+1]
    return masked.argmin(dim=1)  # argmin returns the first minimum: ties go to the shallower route


def true_lpips_of(routes: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """LPIPS ``[B]`` of the chosen routes (0 for the backbone)."""
    padded = torch.cat([true, torch.zeros(true.shape[0], 1, dtype=true.dtype, device=true.device)], dim=1)
    return padded.gather(1, routes.view(-1, 1).to(true.device)).squeeze(1)


def compliance(routes: torch.Tensor, true: torch.Tensor, threshold: float) -> float:
    """Share of inputs whose chosen route truly meets the threshold."""
    return float((true_lpips_of(routes, true) <= threshold).double().mean())


def mean_cost(routes: torch.Tensor, costs: Sequence[float]) -> float:
    """Mean cost (e.g. MACs) of the chosen routes."""
    c = torch.as_tensor([float(x) for x in costs], dtype=torch.float64)
    return float(c[routes.cpu()].mean())


def margin_grid(predicted: torch.Tensor, threshold: float) -> torch.Tensor:
    """Learn-then-Test's margins for ``predicted [N, E]`` at ``threshold``, ascending ``[M]``: a grid in LPIPS
    units (step 1e-3, off round numbers by ``_GRID_OFFSET``) from just below the smallest cut ``T - predicted``
    to the largest, then one margin past every cut (no input qualifies for an exit: everyone on the backbone).
    Fixed in advance up to the data's range (below the smallest cut and above the largest, routing no longer
    changes), so the hypotheses tested from the top down do not depend on the calibration misses."""
    cuts = threshold - predicted.double().flatten()
    lo, hi = float(cuts.min()), float(cuts.max())
    lo = math.floor(lo * 1000) / 1000
    grid = torch.arange(round(lo * 1000), round(hi * 1000) + 1, dtype=torch.float64) / 1000 + _GRID_OFFSET
    return torch.cat([grid, torch.tensor([hi + 1.0], dtype=torch.float64)])


def margin_misses(
    predicted: torch.Tensor,
    true: torch.Tensor,
    threshold: float,
    margins: torch.Tensor,
    costs: Sequence[float] | None = None,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The calibrated rule at every margin of ``margins [M]``: which inputs miss ``threshold`` ``[M, N]`` (bool)
    and the route each takes ``[M, N]`` (:meth:`CalibratedRouter.route` with that margin: the cheapest exit
    whose ``predicted + margin <= T``, else the backbone)."""
    predicted, true = predicted.double(), true.double()
    b, e = predicted.shape
    misses, routes = [], []
    for s in range(0, margins.numel(), chunk):
        m = margins[s : s + chunk].double()  # [Mc]
        shifted = predicted.unsqueeze(0) + m.view(-1, 1, 1)  # [Mc, N, E]
        mc = shifted.shape[0]
        r = cheapest_meeting(shifted.reshape(mc * b, e), threshold + _EPS, costs).view(mc, b)
        got = true_lpips_of(r.reshape(-1), true.repeat(mc, 1)).view(mc, b)
        misses.append(got > threshold)
        routes.append(r)
    return torch.cat(misses), torch.cat(routes)


class Router:
    """The interface: ``route(lpips [B, E], threshold) -> routes [B]`` (int64, backbone = E).

    A subclass names its ``kind``, is registered in :data:`ROUTERS` under it, and takes its kind's config
    fields (:meth:`rule`'s ``fields``) as constructor arguments, keeping each as an attribute of that name
    (or overriding :meth:`to_config`, as :class:`StaticRouter` does for a field named like a method):
    :meth:`to_config` writes them and :func:`router_from_config` passes them back.
    """

    kind: str = "router"

    def __init__(self, costs: Sequence[float] | None = None):
        self.costs = None if costs is None else [float(c) for c in costs]

    @classmethod
    def rule(cls) -> RoutingRule:
        """This kind's numpy rule, config fields and checks (:mod:`fiancee.core.routers`)."""
        return rule_for(cls.kind)

    def route(self, lpips: torch.Tensor, threshold: float) -> torch.Tensor:
        """By default the kind's numpy rule, on the table moved to the CPU (a dtype numpy holds); the routes
        come back on the table's device."""
        table = _check_lpips(lpips)
        routes = self.rule().route(self.to_config(), table.detach().cpu().numpy(), check_threshold(threshold))
        return torch.from_numpy(routes).to(table.device)

    def __call__(self, lpips: torch.Tensor, threshold: float) -> torch.Tensor:
        return self.route(lpips, threshold)

    def to_config(self) -> dict:
        return {"kind": self.kind, **{name: getattr(self, name) for name in self.rule().fields}}

    @classmethod
    def example(cls, predicted: torch.Tensor, true: torch.Tensor, costs: Sequence[float]) -> "Router":
        """A router of this kind for tables like ``predicted`` / ``true`` ``[N, E]`` (fitted on them if it
        fits): what the tests parametrized over :data:`ROUTERS` route with."""
        return cls(costs=costs)


@ROUTERS.add("threshold")
class ThresholdRouter(Router):
    """Paper section 3.2: the cheapest exit whose *predicted* LPIPS <= T, else the backbone."""

    kind = "threshold"

    def route(self, lpips: torch.Tensor, threshold: float) -> torch.Tensor:
        return cheapest_meeting(_check_lpips(lpips, "predicted LPIPS"), check_threshold(threshold), self.costs)


@ROUTERS.add("oracle")
class OracleRouter(Router):
    """The threshold rule on the *true* LPIPS (pass the true table, not predictions).

    With ``compliance=1`` (default) every output meets T at the least cost any router can reach:
    the upper bound of section 3.2's policy. With ``compliance=c < 1`` it may miss T on
    ``floor((1 - c) * B)`` inputs of the batch and spends the misses where they save the most (those
    go to the cheapest route): the best saving any router can reach at compliance c, to compare a
    calibrated router with "at equal compliance". It needs ``costs`` then.
    """

    kind = "oracle"

    def __init__(self, costs: Sequence[float] | None = None, compliance: float = 1.0):
        super().__init__(costs)
        self.compliance = check_compliance(compliance, costs)

    @classmethod
    def example(cls, predicted, true, costs):
        return cls(costs, compliance=0.9)

    def route(self, lpips: torch.Tensor, threshold: float) -> torch.Tensor:
        true = _check_lpips(lpips, "true LPIPS")
        routes = cheapest_meeting(true, check_threshold(threshold), self.costs)
        misses = oracle_misses(self.compliance, true.shape[0])
        if misses > 0:  # which inputs miss: integers and costs only, so the numpy rule decides for both sides
            spent = spend_misses(routes.cpu().numpy(), route_costs(self.costs, true.shape[1] + 1), misses)
            routes = torch.from_numpy(spent).to(routes.device)
        return routes


@ROUTERS.add("static")
class StaticRouter(Router):
    """Every input on one fixed route (``route`` in 0..E, E = backbone); the threshold is ignored.

    The route is kept as :attr:`fixed_route` (``route`` is the method every router has). ``exit=`` is the
    deprecated name of ``route=`` (it shadowed a builtin), and a config's old field ``"exit"`` still loads.
    """

    kind = "static"

    def __init__(self, route: int = UNSET, costs: Sequence[float] | None = None, *, exit: int = UNSET):
        super().__init__(costs)
        route = renamed("StaticRouter", "exit", exit, "route", route)
        if route is UNSET:
            raise ValueError("StaticRouter needs route= (a route index >= 0, E = the backbone)")
        self.fixed_route = check_route(route)

    @property
    def exit(self) -> int:
        """Deprecated name of :attr:`fixed_route` (removed in the next release)."""
        warn_renamed("StaticRouter", "exit", "fixed_route")
        return self.fixed_route

    def to_config(self) -> dict:
        return {"kind": self.kind, "costs": self.costs, "route": self.fixed_route}

    @classmethod
    def example(cls, predicted, true, costs):
        return cls(predicted.shape[1] // 2, costs)

    def route(self, lpips: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        lpips = _check_lpips(lpips)
        if threshold is not None:
            check_threshold(threshold)
        check_route(self.fixed_route, lpips.shape[1] + 1)
        return torch.full((lpips.shape[0],), self.fixed_route, dtype=torch.int64, device=lpips.device)


@ROUTERS.add("calibrated")
class CalibratedRouter(Router):
    """The threshold rule on ``predicted + margin(T)``; margins fitted so that a share of outputs truly meets T.

    :meth:`fit` takes held-out predictions and true LPIPS (inputs the predictor never trained on) and,
    for each requested threshold, the smallest additive margin ``m`` such that routing with
    ``predicted + m'`` meets the threshold on at least ``target`` of the inputs for every
    ``m' >= m`` (a larger margin only moves inputs to deeper, usually better, exits; taking the
    monotone envelope keeps a lucky dip from being chosen).

    Finite-sample correction: with ``n`` fit inputs the target is raised to ``ceil((n + 1) t) / n``
    (the split-conformal quantile), so that on new inputs from the same distribution the expected
    compliance is at least ``t`` rather than slightly below it.

    With a guarantee instead (:mod:`fiancee.guarantee` states each): :meth:`fit_guarantee` (Learn-then-Test),
    :meth:`fit_crc` (Conformal Risk Control, expected miss rate), :meth:`fit_ucb` (upper confidence bound).
    ``method`` records which fit made the margins (``average`` for :meth:`fit`), ``calibration`` the range
    of the calibration inputs' predicted LPIPS (:meth:`check_inputs` compares routed inputs with it).

    Across thresholds: the margin is fitted per threshold (a margin in LPIPS units at T = 0.1 is not
    the right one at T = 0.3: the predictor's error grows with the LPIPS it predicts). At a threshold
    between two fitted ones the larger of the two neighbouring margins is used (conservative); outside
    the fitted range the nearest end's margin is used, which is only as good as the error is flat
    there; fit on a grid that covers the thresholds you will ask for. Fitting one threshold gives a
    router that uses that one margin everywhere. A guarantee covers the fitted thresholds only.
    """

    kind = "calibrated"

    def __init__(
        self,
        thresholds: Sequence[float] = (),
        margins: Sequence[float] = (),
        target: float | None = None,
        costs: Sequence[float] | None = None,
        fit_size: int | None = None,
        epsilon: float | None = None,
        delta: float | None = None,
        method: str | None = None,
        bound: str | None = None,
        familywise: bool = False,
        calibration: dict | None = None,
    ):
        from .risk import check_bound, check_calibration_range, check_method

        super().__init__(costs)
        pairs = check_margins(thresholds, margins)
        self.thresholds = [t for t, _ in pairs]
        self.margins = [m for _, m in pairs]
        self.target = None if target is None else float(target)
        self.fit_size = fit_size
        if method is None:  # a config written before methods were recorded: LTT with epsilon, else average
            if (epsilon is None) != (delta is None):
                raise ValueError("epsilon and delta of a guarantee come together; got one of them")
            method = "average" if epsilon is None else "ltt"
        self.method = check_method(method)
        needs = {"average": (False, False), "crc": (True, False), "ltt": (True, True), "ucb": (True, True)}[method]
        if (epsilon is not None, delta is not None) != needs:
            raise ValueError(
                f"a {method} router takes "
                + {
                    (False, False): "neither epsilon nor delta",
                    (True, False): "epsilon and no delta",
                    (True, True): "epsilon and delta",
                }[needs]
                + f"; got epsilon={epsilon!r}, delta={delta!r}"
            )
        self.epsilon = None if epsilon is None else check_unit(epsilon, "epsilon")
        self.delta = None if delta is None else check_unit(delta, "delta")
        if bound is not None and method != "ucb":
            raise ValueError(f"bound applies to the ucb method only; got bound={bound!r} for {method}")
        self.bound = check_bound(bound if bound is not None else "hoeffding-bentkus") if method == "ucb" else None
        if not isinstance(familywise, bool) or (familywise and method not in ("ltt", "ucb")):
            raise ValueError(
                f"familywise (Bonferroni over thresholds) applies to ltt and ucb; got {familywise!r} for {method}"
            )
        self.familywise = familywise
        self.calibration = None if calibration is None else check_calibration_range(calibration)

    @property
    def fitted(self) -> bool:
        return bool(self.thresholds)

    @classmethod
    def example(cls, predicted, true, costs):
        return cls(costs=costs).fit(predicted, true, [0.1, 0.2], target_compliance=0.9)

    def _set(
        self,
        ts,
        margins,
        n: int,
        predicted: torch.Tensor,
        *,
        method: str,
        target: float | None,
        epsilon: float | None = None,
        delta: float | None = None,
        bound: str | None = None,
        familywise: bool = False,
    ) -> "CalibratedRouter":
        from .risk import calibration_range

        pairs = sorted(zip((float(t) for t in ts), margins))
        self.thresholds = [t for t, _ in pairs]
        self.margins = [m for _, m in pairs]
        self.target = target
        self.method, self.epsilon, self.delta, self.bound, self.familywise = method, epsilon, delta, bound, familywise
        self.fit_size = n
        self.calibration = calibration_range(predicted)
        return self

    def fit(
        self,
        predicted: torch.Tensor,
        true: torch.Tensor,
        thresholds: float | Sequence[float],
        target_compliance: float = 0.95,
        finite_sample: bool = True,
    ) -> "CalibratedRouter":
        goal = check_unit(target_compliance, "target_compliance", open_high=False)
        check_bool(finite_sample, "finite_sample")
        predicted, true, ts = self._check_fit(predicted, true, thresholds)
        n = predicted.shape[0]
        if finite_sample:
            goal = min(1.0, math.ceil((n + 1) * goal) / n)
        margins = [self._fit_average(predicted, true, t, goal) for t in ts]
        return self._set(ts, margins, n, predicted, method="average", target=float(target_compliance))

    def fit_guarantee(
        self,
        predicted: torch.Tensor,
        true: torch.Tensor,
        thresholds: float | Sequence[float],
        epsilon: float = 0.05,
        delta: float = 0.1,
        familywise: bool = False,
    ) -> "CalibratedRouter":
        """Fit margins with a PAC guarantee (Learn-then-Test, Angelopoulos et al. 2021; as "Fast yet Safe"
        and CALM use it for early exits): with probability >= 1 - ``delta`` over the draw of the
        calibration inputs, the share of new inputs whose output misses the threshold is <= ``epsilon``.

        Margins are tested from the largest (everyone on the backbone, no miss) down (fixed-sequence
        testing, so no union bound and no monotonicity assumption is needed): margin ``m`` is accepted
        while the exact binomial p-value of its calibration misses, ``P(Binom(n, epsilon) <= misses)``,
        is <= ``delta``; the smallest accepted margin is kept. Inputs no exit can bring under T stay on
        the backbone (a miss is never spent on purpose). Needs ``n >= log(delta) / log(1 - epsilon)``
        calibration inputs (:func:`guarantee_min_inputs`); fewer is refused naming that number.

        ``familywise=True``: every threshold is tested at ``delta / len(thresholds)`` (Bonferroni), so that
        the statement holds at all fitted thresholds at once.
        """
        return self._fit_risk("ltt", predicted, true, thresholds, epsilon, delta, familywise=familywise)

    def fit_crc(
        self, predicted: torch.Tensor, true: torch.Tensor, thresholds: float | Sequence[float], epsilon: float = 0.05
    ) -> "CalibratedRouter":
        """Conformal Risk Control (Angelopoulos et al. 2022): the expected share of new inputs that miss the
        threshold, over the draw of the calibration inputs, is <= ``epsilon``. The smallest margin from which
        ``(monotonized misses + 1) / (n + 1) <= epsilon`` on the same grid as :meth:`fit_guarantee`; an input's
        monotonized miss at ``m`` counts a miss at any margin >= ``m`` (the rule does not make misses
        monotone in the margin, CRC's proof needs it). Needs ``n >= 1 / epsilon - 1``."""
        return self._fit_risk("crc", predicted, true, thresholds, epsilon, None)

    def fit_ucb(
        self,
        predicted: torch.Tensor,
        true: torch.Tensor,
        thresholds: float | Sequence[float],
        epsilon: float = 0.05,
        delta: float = 0.1,
        bound: str = "hoeffding-bentkus",
        familywise: bool = False,
    ) -> "CalibratedRouter":
        """Upper-confidence-bound calibration (RCPS, Bates et al. 2021; Fast yet Safe's UCB): the smallest
        margin from which the ``1 - delta`` upper confidence bound of the miss rate stays below ``epsilon``
        (``bound``: ``hoeffding-bentkus`` or ``clopper-pearson``, :mod:`fiancee.guarantee`). With probability
        >= 1 - ``delta`` the miss rate is <= ``epsilon`` when the miss rate falls as the margin grows."""
        from .risk import check_bound

        return self._fit_risk(
            "ucb", predicted, true, thresholds, epsilon, delta, bound=check_bound(bound), familywise=familywise
        )

    def _fit_risk(
        self,
        method: str,
        predicted,
        true,
        thresholds,
        epsilon,
        delta,
        *,
        bound: str | None = None,
        familywise: bool = False,
    ) -> "CalibratedRouter":
        from .risk import accepted_index, max_misses, min_calibration

        epsilon = check_unit(epsilon, "epsilon")
        delta = None if delta is None else check_unit(delta, "delta")
        check_bool(familywise, "familywise")
        predicted, true, ts = self._check_fit(predicted, true, thresholds)
        each = None if delta is None else (delta / len(ts) if familywise else delta)
        n = predicted.shape[0]
        need = min_calibration(method, epsilon, each, bound or "hoeffding-bentkus")
        if n < need:
            what = (
                f"an expected miss rate <= {epsilon:g}"
                if method == "crc"
                else f"a miss rate <= {epsilon:g} with probability >= {1 - delta:g}"
                + (f" at {len(ts)} thresholds at once" if familywise and len(ts) > 1 else "")
            )
            raise ValueError(f"{what} needs at least {need} calibration inputs (even with no miss at all); got {n}")
        k_max = max_misses(method, n, epsilon, each, bound or "hoeffding-bentkus")
        margins = []
        for t in ts:
            grid = margin_grid(predicted, t)
            miss, _ = margin_misses(predicted, true, t, grid, self.costs)  # [M, N]
            if method == "crc":
                miss = miss.flip(0).cummax(dim=0).values.flip(0)  # monotonized: a miss here or at any larger margin
            margins.append(float(grid[int(accepted_index(miss.sum(1), k_max))]))
        return self._set(
            ts,
            margins,
            n,
            predicted,
            method=method,
            target=1.0 - epsilon,
            epsilon=epsilon,
            delta=delta,
            bound=bound,
            familywise=familywise,
        )

    def _check_fit(self, predicted, true, thresholds):
        predicted = _check_lpips(predicted, "predicted LPIPS").double()
        true = _check_lpips(true, "true LPIPS").double()
        if predicted.shape != true.shape:
            raise ValueError(
                f"predicted {list(predicted.shape)} and true {list(true.shape)} LPIPS must have the same shape"
            )
        if predicted.shape[0] == 0:
            raise ValueError(
                "the calibration table is empty (0 inputs): fit needs predicted and true LPIPS of at "
                "least one calibration input"
            )
        ts = [thresholds] if isinstance(thresholds, (int, float)) else list(thresholds)
        if not ts:
            raise ValueError("fit needs at least one threshold")
        return predicted, true, [check_threshold(t) for t in ts]

    def guarantee(self) -> str | None:
        """The guarantee this router was fitted for, in words (None when fitted on average compliance)."""
        from .risk import statement

        return statement(
            self.method,
            self.epsilon,
            self.delta,
            self.fit_size,
            bound=self.bound,
            thresholds=self.thresholds,
            familywise=self.familywise,
        )

    def check_inputs(self, predicted: torch.Tensor) -> dict | None:
        """Whether routed inputs (their predicted LPIPS ``[B, E]``) look unlike the calibration inputs
        (:func:`fiancee.guarantee.range_check`); None for a router saved without its calibration range."""
        from .risk import range_check

        return None if self.calibration is None else range_check(self.calibration, predicted)

    def _fit_average(self, predicted: torch.Tensor, true: torch.Tensor, threshold: float, goal: float) -> float:
        # Input b qualifies for exit i iff predicted[b, i] + m <= T, i.e. m <= cut = T - predicted[b, i].
        # Routing (hence compliance) is constant on every interval (cut_k, cut_k+1]; evaluate it at each
        # cut (the value of the interval ending there) and once past the last cut (nobody qualifies
        # for any exit: everyone on the backbone, compliance 1).
        cuts = torch.unique(threshold - predicted.flatten())  # [K] ascending
        candidates = torch.cat([cuts, cuts[-1:] + 1.0])  # [K+1]
        miss, _ = margin_misses(predicted, true, threshold, candidates, self.costs)
        ok = 1.0 - miss.double().mean(dim=1)
        # The smallest margin from which compliance never drops below the goal again.
        bad = (ok < goal - 1e-12).nonzero().flatten()
        if bad.numel() == 0:
            return float(candidates[0])  # any margin works; below the first cut routing no longer changes
        k = int(bad[-1])  # k < K: past the last cut compliance is 1
        # Just past cut_k, inside the good interval (cut_k, cut_k+1]; the step stays far above _EPS.
        return float(cuts[k] + min(1e-6, float(candidates[k + 1] - cuts[k]) / 2))

    def margin(self, threshold: float) -> float:
        """The margin used at ``threshold`` (see the class notes for thresholds between / outside the fitted ones)."""
        t = check_threshold(threshold)
        if not self.fitted:
            raise ValueError(
                "this CalibratedRouter is not fitted: call fit(predicted, true, thresholds, target_compliance) first"
            )
        return margin_at(self.thresholds, self.margins, t)

    def route(self, lpips: torch.Tensor, threshold: float) -> torch.Tensor:
        predicted = _check_lpips(lpips, "predicted LPIPS")
        t = check_threshold(threshold)
        m = self.margin(t)
        return cheapest_meeting(predicted.double() + m, t + _EPS, self.costs)


def router_from_config(config: dict) -> Router:
    """Rebuild a router from :meth:`Router.to_config` (JSON-safe dict). Its kind resolves only to a router
    registered in :data:`ROUTERS`; its fields are checked by the kind's rule before anything is built
    (:func:`fiancee.core.routers.check_router_config`: every number finite and of its type, since a NaN margin
    or cost would compare false everywhere and silently send every input to one route)."""
    if not isinstance(config, dict) or not isinstance(config.get("kind"), str) or config["kind"] not in ROUTERS:
        raise ValueError(f"router config must be a dict with kind in {ROUTERS.names()}; got {config!r}")
    config = check_router_config(config)  # renamed fields (a static router's old "exit") under their new names
    kwargs = {k: v for k, v in config.items() if k != "kind"}
    try:
        return ROUTERS.get(config["kind"])(**kwargs)
    except TypeError as e:  # a router whose constructor does not take its rule's fields
        raise ValueError(f"router config for kind {config['kind']!r}: {e}") from None
