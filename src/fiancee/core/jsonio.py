"""Strict JSON: only finite numbers are JSON (no NaN, no Infinity, no number that overflows to infinity)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["loads_strict", "read_json", "require_keys"]


class _NonFinite:
    """What NaN, Infinity or an overflowing number parses to, until the walk that names its field."""

    def __init__(self, problem: str):
        self.problem = problem


def _path(obj: Any, where: str = "") -> tuple[str, str] | None:
    """(problem, field) of the first non-finite number in ``obj``, in document order; None when there is none."""
    if isinstance(obj, _NonFinite):
        return obj.problem, where
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        found = _path(value, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key)
        if found:
            return found
    return None


def _keep_bad(pairs: list) -> dict:
    # A key written twice keeps its last value in JSON; a non-finite first one must still be refused.
    obj = dict(pairs)
    for key, value in pairs:
        if isinstance(value, _NonFinite) or (isinstance(value, (dict, list)) and _path(value)):
            obj[key] = value
    return obj


def loads_strict(text: str) -> Any:
    """``json.loads`` refusing NaN, Infinity and numbers that overflow to infinity, naming the field that holds
    one (``router.costs[0]``)."""
    bad = []

    def constant(token: str) -> _NonFinite:
        bad.append(token)
        return _NonFinite(f"{token} is not JSON (only finite numbers are)")

    def finite_float(token: str) -> float | _NonFinite:
        value = float(token)
        if math.isfinite(value):
            return value
        bad.append(token)  # 1e999 parses to inf
        return _NonFinite(f"{token} overflows to infinity")

    obj = json.loads(text, parse_constant=constant, parse_float=finite_float)
    if bad:  # parsed again keeping every bad value (a valid file is parsed once, with no hook)
        problem, where = _path(
            json.loads(text, parse_constant=constant, parse_float=finite_float, object_pairs_hook=_keep_bad)
        )
        raise ValueError(problem + (f", in field {where!r}" if where else ""))
    return obj


def read_json(path: str | os.PathLike, required: tuple[str, ...] = ()) -> Any:
    """Parse a JSON file; with ``required`` it must be an object holding those keys (a clear error
    instead of a KeyError deep in the reader when a file was hand-edited or written by another tool)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a JSON file at {path}")
    try:
        obj = loads_strict(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON (truncated or corrupt?): {e}") from None
    except (ValueError, RecursionError) as e:  # NaN / Infinity / overflow, or absurd nesting
        raise ValueError(f"{path} is not strict JSON: {e}") from None
    return require_keys(obj, required, path) if required else obj


def require_keys(obj: Any, keys: tuple[str, ...], source: str | os.PathLike) -> dict:
    """``obj`` is a dict holding ``keys``, else a ValueError naming ``source`` and what it lacks."""
    if not isinstance(obj, dict):
        raise ValueError(f"{source} must hold a JSON object with {list(keys)}; got a {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{source} lacks {missing} (expected keys {list(keys)})")
    return obj
