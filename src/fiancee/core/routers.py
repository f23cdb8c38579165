"""Every router kind in numpy: its config fields with their checks, its own checks, its rule; registered by kind.

A router config is what :meth:`fiancee.routing.Router.to_config` writes (``{"kind": ..., "costs": ..., ...}``);
pipeline folders and ONNX manifests hold one. The torch routers of :mod:`fiancee.routing` point here by
their ``kind``: :func:`fiancee.routing.router_from_config` and :class:`fiancee.runtime.OnnxPipeline` check a
config with :func:`check_router_config`, and the runtime routes with :func:`route_numpy`. A new kind is one
:class:`RoutingRule` subclass registered with :func:`register_rule` (and a torch router registered under the
same kind in :data:`fiancee.routing.ROUTERS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from .numbers import finite, is_int
from .rules import EPS, cheapest_meeting, check_threshold, margin_at, oracle_misses, route_costs, spend_misses

__all__ = [
    "Field",
    "RoutingRule",
    "RULES",
    "register_rule",
    "unregister_rule",
    "rule_for",
    "check_router_config",
    "route_numpy",
    "numbers",
    "number",
    "count",
    "FLAG",
    "checked_by_router",
    "ThresholdRule",
    "OracleRule",
    "StaticRule",
    "CalibratedRule",
    "check_compliance",
    "check_route",
    "check_exit",
    "check_margins",
    "upgrade_config",
]


@dataclass(frozen=True)
class Field:
    """One field of a router config: ``ok(value)`` says whether it may hold ``value`` (None: the router class
    checks it itself), ``expected`` says what in words. ``optional``: null is allowed too; ``required``:
    the config must hold it (the router's constructor has no default for it); ``numeric``: it holds numbers."""

    ok: Callable[[Any], bool] | None
    expected: str
    optional: bool = False
    required: bool = False
    numeric: bool = True

    def problem(self, key: str, value: Any) -> str | None:
        """What is wrong with ``value`` in field ``key``, in one line; None when nothing is."""
        if self.ok is None or (value is None and self.optional) or self.ok(value):
            return None
        expected = self.expected + (" or null" if self.optional else "")
        if self.numeric:  # every number finite and of its type: a NaN margin or cost would compare false
            return f"field {key!r} must hold finite numbers of the right type; got {value!r} (expected {expected})"
        return f"field {key!r} must be {expected}; got {value!r}"


def numbers(optional: bool = False) -> Field:
    return Field(lambda v: isinstance(v, list) and all(finite(x) for x in v), "a list of finite numbers", optional)


def number(optional: bool = False) -> Field:
    return Field(finite, "a finite number", optional)


def count(optional: bool = False, required: bool = False) -> Field:
    return Field(lambda v: is_int(v) and v >= 0, "an integer >= 0", optional, required)


FLAG = Field(lambda v: isinstance(v, bool), "true or false", numeric=False)


def checked_by_router(expected: str) -> Field:
    return Field(None, expected, numeric=False)


class RoutingRule:
    """A router kind: the fields of its config (in the order ``to_config`` writes them, after ``kind``), the
    checks of a config beyond the fields' types (:meth:`check`) and the rule (:meth:`route`)."""

    kind: ClassVar[str] = ""
    fields: ClassVar[dict[str, Field]] = {"costs": numbers(optional=True)}
    # Fields this kind renamed, old name -> new name: configs written before are read with the new names
    # (:func:`upgrade_config`), and the router's constructor may take the old name as a deprecated keyword.
    renamed: ClassVar[dict[str, str]] = {}

    def check(self, config: dict, num_routes: int | None = None) -> None:
        """Refuse a config whose fields have their types but not this kind's sense; with ``num_routes`` (the
        routes of the model it will route for: a deployed router), also what routing needs."""

    def route(self, config: dict, predicted: np.ndarray, threshold: float) -> np.ndarray:
        """Routes ``[B]`` (int64, E = the backbone) for ``predicted [B, E]`` at a checked ``threshold``."""
        raise NotImplementedError


RULES: dict[str, RoutingRule] = {}


def register_rule(cls: type[RoutingRule]) -> type[RoutingRule]:
    """Class decorator: make ``cls`` the rule of ``cls.kind``."""
    if not isinstance(cls.kind, str) or not cls.kind or "costs" not in cls.fields:
        raise ValueError(f"a routing rule declares a non-empty kind and its fields, costs among them; got {cls!r}")
    RULES[cls.kind] = cls()
    return cls


def unregister_rule(kind: str) -> None:
    """Forget a kind (a no-op for kinds never registered)."""
    RULES.pop(kind, None)


def rule_for(kind: Any) -> RoutingRule:
    if not isinstance(kind, str) or kind not in RULES:  # a list or a dict kind is unhashable: refused, not a TypeError
        raise ValueError(f"router config must be a dict with kind in {sorted(RULES)}; got kind {kind!r}")
    return RULES[kind]


def upgrade_config(config: Any) -> Any:
    """``config`` with the fields its kind renamed (:attr:`RoutingRule.renamed`) under their new names: a copy
    when one is renamed, else ``config`` itself (anything that is not a known kind's config too)."""
    if not isinstance(config, dict) or not isinstance(config.get("kind"), str) or config["kind"] not in RULES:
        return config
    renames = RULES[config["kind"]].renamed
    if not any(key in config for key in renames):
        return config
    # both spellings present: the new one wins
    return {renames.get(k, k): v for k, v in config.items() if not (k in renames and renames[k] in config)}


def check_router_config(config: Any, num_routes: int | None = None) -> dict:
    """``config`` checked: a known kind, every field one the kind takes and of its type, costs >= 0, the kind's
    own checks; with ``num_routes``, fit to route a model of that many routes (one cost per route). Returns it,
    with renamed fields under their new names (:func:`upgrade_config`: a config written before still loads)."""
    if not isinstance(config, dict) or not isinstance(config.get("kind"), str) or config["kind"] not in RULES:
        raise ValueError(f"router config must be a dict with kind in {sorted(RULES)}; got {config!r}")
    config = upgrade_config(config)
    kind = config["kind"]
    rule = RULES[kind]
    for key, value in config.items():
        if key == "kind":
            continue
        if key not in rule.fields:
            raise ValueError(
                f"router config: unknown field {key!r} for kind {kind!r} (it takes {', '.join(rule.fields)})"
            )
        problem = rule.fields[key].problem(key, value)
        if problem:
            raise ValueError(f"router config: {problem}")
    for key, field in rule.fields.items():
        if field.required and key not in config:
            raise ValueError(f"router config for kind {kind!r}: field {key!r} is missing (expected {field.expected})")
    costs = config.get("costs")
    if costs is not None and any(c < 0 for c in costs):
        raise ValueError(f"router config: costs must be >= 0; got {costs!r}")
    if num_routes is not None and costs is not None and len(costs) != num_routes:
        raise ValueError(
            f"router config: costs must hold {num_routes} numbers (the exits, then the backbone); got {costs!r}"
        )
    try:
        rule.check(config, num_routes)
    except ValueError as e:
        raise ValueError(f"router config for kind {kind!r}: {e}") from None
    return config


def route_numpy(config: dict, predicted: np.ndarray, threshold: float) -> np.ndarray:
    """Routes ``[B]`` (int64) for ``predicted [B, E]`` at ``threshold``, by the router ``config``
    (:meth:`fiancee.routing.Router.to_config`): the same rule and ties as that router in torch."""
    rule = rule_for(config.get("kind") if isinstance(config, dict) else None)
    config = upgrade_config(config)
    t = check_threshold(threshold)
    if (
        not isinstance(predicted, np.ndarray)
        or predicted.ndim != 2
        or predicted.shape[1] < 1
        or not np.issubdtype(predicted.dtype, np.floating)
    ):
        got = (
            f"{predicted.dtype} {list(predicted.shape)}"
            if isinstance(predicted, np.ndarray)
            else type(predicted).__name__
        )
        raise ValueError(f"predicted must be a floating-point [B, E] array (one column per exit branch); got {got}")
    return rule.route(config, predicted, t)


# ----------------------------------------------------------------------------------------------
# The built-in kinds (fiancee.routing documents each).


def _meets(predicted: np.ndarray, t: float) -> np.ndarray:
    # torch compares a float tensor with a Python float in the tensor's dtype (float32 for a predictor's
    # output): so does this, or values at T would round differently.
    return predicted <= predicted.dtype.type(t)


@register_rule
class ThresholdRule(RoutingRule):
    """Paper section 3.2: the cheapest exit whose predicted LPIPS <= T, else the backbone."""

    kind = "threshold"

    def route(self, config, predicted, threshold):
        return cheapest_meeting(_meets(predicted, threshold), config.get("costs"))


def check_compliance(compliance: Any, costs: Sequence[float] | None) -> float:
    """An oracle's compliance lies in [0, 1] (0: the oracle "at equal compliance" with a router that missed
    every input); below 1 it needs costs to know which misses save most."""
    if not (0.0 <= float(compliance) <= 1.0):
        raise ValueError(f"compliance must lie in [0, 1]; got {compliance}")
    if compliance < 1.0 and costs is None:
        raise ValueError("an oracle with compliance < 1 needs costs (route MACs) to know which misses save most")
    return float(compliance)


@register_rule
class OracleRule(RoutingRule):
    """The threshold rule on the true LPIPS; at compliance c < 1 the ``floor((1 - c) B)`` misses it may spend
    go where they save the most."""

    kind = "oracle"
    fields = {**RoutingRule.fields, "compliance": number()}

    def check(self, config, num_routes=None):
        check_compliance(config.get("compliance", 1.0), config.get("costs"))

    def route(self, config, predicted, threshold):
        routes = cheapest_meeting(_meets(predicted, threshold), config.get("costs"))
        misses = oracle_misses(float(config.get("compliance", 1.0)), predicted.shape[0])
        if misses > 0:
            routes = spend_misses(routes, route_costs(config.get("costs"), predicted.shape[1] + 1), misses)
        return routes


def check_route(route: Any, num_routes: int | None = None) -> int:
    """A static router's route index: an integer >= 0, and one of the model's ``num_routes`` routes."""
    if not is_int(route) or route < 0:
        raise ValueError(f"route must be a route index >= 0 (E = the backbone); got {route!r}")
    if num_routes is not None and route >= num_routes:
        raise ValueError(
            f"static route {route} does not exist: routes are 0..{num_routes - 1} ({num_routes - 1} = backbone)"
        )
    return route


check_exit = check_route  # the name before the field was called route (kept for one release)


@register_rule
class StaticRule(RoutingRule):
    """Every input on one fixed route; the threshold is ignored. The field was called ``exit`` before."""

    kind = "static"
    fields = {**RoutingRule.fields, "route": count(required=True)}
    renamed = {"exit": "route"}

    def check(self, config, num_routes=None):
        check_route(config["route"], num_routes)

    def route(self, config, predicted, threshold):
        route = check_route(config["route"], predicted.shape[1] + 1)
        return np.full(predicted.shape[0], route, dtype=np.int64)


def check_margins(thresholds: Sequence[float], margins: Sequence[float]) -> list[tuple[float, float]]:
    """A calibrated router's (threshold, margin) pairs, sorted by threshold; every threshold in (0, 1]."""
    if len(thresholds) != len(margins):
        raise ValueError(f"thresholds and margins must pair up; got {len(thresholds)} and {len(margins)}")
    return sorted((check_threshold(t), float(m)) for t, m in zip(thresholds, margins))


@register_rule
class CalibratedRule(RoutingRule):
    """The threshold rule on ``predicted + margin(T)`` in float64, compared with ``T + EPS``."""

    kind = "calibrated"
    fields = {
        **RoutingRule.fields,
        "thresholds": numbers(),
        "margins": numbers(),
        "target": number(optional=True),
        "fit_size": count(optional=True),
        "epsilon": number(optional=True),
        "delta": number(optional=True),
        "method": checked_by_router("a method of fiancee.risk"),
        "bound": checked_by_router("a bound of fiancee.risk"),
        "familywise": FLAG,
        "calibration": checked_by_router("a calibration range (fiancee.risk)"),
    }

    def check(self, config, num_routes=None):
        ts, ms = config.get("thresholds", []), config.get("margins", [])
        pairs = check_margins(ts, ms)
        if num_routes is not None:  # routed as written: fitted, and sorted as the router writes them
            if not pairs:
                raise ValueError("a deployed calibrated router must be fitted (it has no thresholds)")
            if pairs != [(float(t), float(m)) for t, m in zip(ts, ms)]:
                raise ValueError(f"thresholds must be sorted as the router writes them; got {ts!r}")

    def margin(self, config: dict, threshold: float) -> float:
        if not config.get("thresholds"):
            raise ValueError("this calibrated router is not fitted (no thresholds)")
        return margin_at(config["thresholds"], config["margins"], threshold)

    def route(self, config, predicted, threshold):
        m = self.margin(config, threshold)
        return cheapest_meeting(predicted.astype(np.float64) + m <= threshold + EPS, config.get("costs"))
