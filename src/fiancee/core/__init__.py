"""The torch-free core: the rules both the PyTorch side and the exported runtime run, written once.

numpy and the standard library only (FAISS is passed in by the caller that needs it), so that
:mod:`fiancee.runtime` runs an export without PyTorch and :mod:`fiancee.routing`, :mod:`fiancee.io` and
:mod:`fiancee.bank` wrap the same functions (faiss ``contrib/``'s habit: the numpy implementation is the
single source, the torch flavour wraps it). It imports nothing else of fiancee.

- :mod:`~fiancee.core.numbers`: what counts as a finite number or an integer in a config.
- :mod:`~fiancee.core.args`: the scalar argument checks every public function and command runs first
  (counts, numbers in a range, integer lists, choices, flags), each refusing in one line.
- :mod:`~fiancee.core.files`: path confinement (nothing a folder loads lies outside it) and file digests.
- :mod:`~fiancee.core.jsonio`: strict JSON (no NaN, Infinity or overflow to infinity).
- :mod:`~fiancee.core.manifest`: the names and constants of an ONNX export's manifest.
- :mod:`~fiancee.core.folders`: the one folder header (``kind``, ``format``) and how old headers are read.
- :mod:`~fiancee.core.renames`: renamed arguments and attributes (``attach_after``, ``routes``), the old names
  kept for one release with a DeprecationWarning.
- :mod:`~fiancee.core.search`: FAISS search with its cost count, and reading an index with its checks.
- :mod:`~fiancee.core.rules`: the routing rules in numpy: thresholds, route costs, the cheapest route
  meeting T, the calibrated margin, the oracle's misses.
- :mod:`~fiancee.core.routers`: every router kind's config fields and numpy rule, registered by kind.
"""

from .args import (
    check_bool,
    check_choice,
    check_counts,
    check_float,
    check_int,
    check_int_list,
    check_optional_int,
    check_unit,
)
from .files import file_sha256, resolve_inside
from .jsonio import loads_strict, read_json, require_keys
from .numbers import finite, is_int
from .routers import (
    RULES,
    Field,
    RoutingRule,
    check_router_config,
    register_rule,
    route_numpy,
    rule_for,
    unregister_rule,
)
from .rules import (
    EPS,
    cheapest_meeting,
    check_threshold,
    check_thresholds,
    margin_at,
    oracle_misses,
    route_costs,
    spend_misses,
    threshold_groups,
)
from .search import read_index, search_classes, search_counted

__all__ = [
    "check_bool",
    "check_choice",
    "check_counts",
    "check_float",
    "check_int",
    "check_int_list",
    "check_optional_int",
    "check_unit",
    "file_sha256",
    "resolve_inside",
    "loads_strict",
    "read_json",
    "require_keys",
    "finite",
    "is_int",
    "RULES",
    "Field",
    "RoutingRule",
    "check_router_config",
    "register_rule",
    "route_numpy",
    "rule_for",
    "unregister_rule",
    "EPS",
    "check_threshold",
    "check_thresholds",
    "threshold_groups",
    "cheapest_meeting",
    "margin_at",
    "oracle_misses",
    "route_costs",
    "spend_misses",
    "read_index",
    "search_classes",
    "search_counted",
]
