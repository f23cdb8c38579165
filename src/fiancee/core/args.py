"""Scalar argument checks, written once: counts, numbers in a range, integer lists, choices, flags.

Every public function and command of fiancee checks its scalar arguments here before any work, so a bad one
fails at once in one line naming the argument and what was expected: ``n must be an integer >= 2; got 1.5``.
Each check returns the value in its plain Python type (a numpy integer comes back an ``int``) and raises
``ValueError``, which the CLI prints as one line (exit 2). Config fields use the same checks with the file and
the field as the name (:func:`fiancee.io.config_int`); tensors are checked in :mod:`fiancee.checks`.

Rules shared by every check: a bool is never a number (``True`` would pass as 1 otherwise), a string is never
a number (``"12"`` is what a config or a caller got wrong, not a count), and a float is never an integer
(``int(1.5)`` would silently truncate a count or a stage number).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Sequence

__all__ = [
    "int_expected",
    "float_expected",
    "is_integer",
    "is_real",
    "check_int",
    "check_optional_int",
    "check_counts",
    "check_float",
    "check_unit",
    "check_int_list",
    "check_choice",
    "check_bool",
]


def _refuse(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{name} must be {expected}; got {value!r}")


def is_integer(value: Any) -> bool:
    """An integer of Python or numpy, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number of Python or numpy (int or float), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def int_expected(minimum: int | None = None, maximum: int | None = None) -> str:
    """``an integer >= 2``, ``an integer in 0..4``: what :func:`check_int` asks for, in words."""
    if minimum is not None and maximum is not None:
        return f"an integer in {minimum}..{maximum}"
    if minimum is not None:
        return f"an integer >= {minimum}"
    return "an integer" if maximum is None else f"an integer <= {maximum}"


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int``, if it is an integer (not a bool, a float or a string) in ``[minimum, maximum]``."""
    if not is_integer(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _refuse(name, int_expected(minimum, maximum), value)
    return int(value)


def check_optional_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
    """:func:`check_int`, with None ("use the default") passing as None."""
    if value is None:
        return None
    if not is_integer(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _refuse(name, int_expected(minimum, maximum) + " or None", value)
    return int(value)


def check_counts(**counts: Any) -> None:
    """Each named count is an integer >= 1 (None = "use the default", passes); ``batch_size`` is named
    "batch size" (as a user reads it): ``--epochs 0`` or ``--batch-size -1`` fails before any work."""
    for name, value in counts.items():
        if value is not None:
            check_int(value, name.replace("_", " "), minimum=1)


def float_expected(
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    finite: bool = True,
) -> str:
    """``a number in (0, 1]``, ``a finite number > 0``: what :func:`check_float` asks for, in words."""
    if low is not None and high is not None:
        return f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    what = "a finite number" if finite else "a number"
    if low is not None:
        return f"{what} {'>' if open_low else '>='} {low:g}"
    if high is not None:
        return f"{what} {'<' if open_high else '<='} {high:g}"
    return what


def check_float(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a ``float``, if it is a real number (not a bool or a string) within the bounds: ``low`` /
    ``high`` included unless ``open_low`` / ``open_high``. NaN is always refused (it compares false with every
    bound, so it would pass them); infinity too unless ``finite=False``."""
    expected = float_expected(low, high, open_low=open_low, open_high=open_high, finite=finite)
    if not is_real(value):
        raise _refuse(name, expected, value)
    x = float(value)
    if math.isnan(x) or (finite and math.isinf(x)):
        raise _refuse(name, expected, value)
    if low is not None and (x <= low if open_low else x < low):
        raise _refuse(name, expected, value)
    if high is not None and (x >= high if open_high else x > high):
        raise _refuse(name, expected, value)
    return x


def check_unit(value: Any, name: str, *, open_low: bool = True, open_high: bool = True) -> float:
    """A number in the unit interval, open at both ends unless told: a miss rate, a confidence, a share."""
    return check_float(value, name, low=0.0, high=1.0, open_low=open_low, open_high=open_high)


def check_int_list(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    nonempty: bool = True,
    increasing: bool = False,
) -> list[int]:
    """``value`` (a list, tuple, range, or any iterable but a string or a mapping) as a list of ``int``: every
    item an integer in ``[minimum, maximum]``; at least one with ``nonempty``; strictly increasing with
    ``increasing`` (stage numbers, split points)."""
    adjectives = [word for word, on in (("non-empty", nonempty), ("strictly increasing", increasing)) if on]
    expected = (
        " ".join(["a", ", ".join(adjectives), "list of integers"] if adjectives else ["a list of integers"])
        + int_expected(minimum, maximum)[len("an integer") :]
    )
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise _refuse(name, expected, value)
    items = list(value)
    if (nonempty and not items) or not all(
        is_integer(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum) for v in items
    ):
        raise _refuse(name, expected, value if isinstance(value, (list, tuple)) else items)
    out = [int(v) for v in items]
    if increasing and any(a >= b for a, b in zip(out, out[1:])):
        raise _refuse(name, expected, value if isinstance(value, (list, tuple)) else items)
    return out


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices`` (compared with ``==``; an unhashable value is simply not one)."""
    if not any(_same(value, c) for c in choices):
        words = [repr(c) if isinstance(c, str) else str(c) for c in choices]
        expected = " or ".join(words) if len(words) <= 2 else f"one of {', '.join(words)}"
        raise _refuse(name, expected, value)
    return value


def _same(a: Any, b: Any) -> bool:
    try:  # True == 1 in Python, but a flag is not a choice of number; an array compares elementwise
        return isinstance(a, bool) == isinstance(b, bool) and bool(a == b)
    except (TypeError, ValueError):
        return False


def check_bool(value: Any, name: str) -> bool:
    """``True`` or ``False`` (not 0 / 1, not a string: a flag read as truthy would hide a typo)."""
    if not isinstance(value, bool):
        raise _refuse(name, "True or False", value)
    return value
