"""Strict JSON: only finite numbers are JSON (no NaN, no Infinity, no number that overflows to infinity)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["loads_strict", "read_json", "require_keys"]


def _not_json(token: str):
    raise ValueError(f"{token} is not JSON (only finite numbers are)")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise ValueError(f"{token} overflows to infinity")
    return value


def loads_strict(text: str) -> Any:
    """``json.loads`` refusing NaN, Infinity and numbers that overflow to infinity."""
    return json.loads(text, parse_constant=_not_json, parse_float=_finite_float)


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
