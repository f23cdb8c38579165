"""Renamed arguments and attributes: the old name still works for one release, with a DeprecationWarning.

The vocabulary (docs/architecture.md): ``attach_after`` are the stages (1-based) branches attach after,
``routes`` the per-input route indices (0-based, route E = the backbone). Before, both were ``exits`` (and a
single route ``exit``, which shadows a builtin).
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["UNSET", "renamed", "warn_renamed"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "not given", where None is a value the caller may pass


def warn_renamed(where: str, old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``where``'s ``old`` is now ``new`` (``stacklevel`` 3: the caller of the function that calls this)."""
    warnings.warn(
        f"{where}: {old!r} is renamed {new!r}; the old name goes in the next release",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def renamed(where: str, old: str, old_value: Any, new: str, new_value: Any, default: Any = UNSET) -> Any:
    """The value of the keyword ``new`` of ``where``, formerly ``old``: ``new_value``, or ``old_value`` (with a
    DeprecationWarning) when only the old keyword was given (the old one is :data:`UNSET` when not given, the new
    one ``default``); both given is refused."""
    if old_value is UNSET:
        return new_value
    if new_value is not default:
        raise ValueError(f"{where}: pass {new}= only ({old}= is its old name)")
    warn_renamed(where, f"{old}=", f"{new}=", stacklevel=4)
    return old_value
