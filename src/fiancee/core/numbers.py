"""What a config may hold where a number is expected: finite numbers and integers, never bools."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["finite", "is_int"]


def finite(value: Any) -> bool:
    """A finite int or float (``True`` is not a number here: JSON ``true`` is a flag)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)
