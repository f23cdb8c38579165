"""Named things a user can bring: one resolver for task specs and bank key functions.

A spec names an object three ways (stylegan2-ada's ``class_name`` habit, timm's registry):

- a name registered in-process (:meth:`Registry.register`), built-ins included;
- ``package.module:attr`` (``attr`` may be dotted): the module is imported from ``sys.path``, so
  ``PYTHONPATH`` or an installed package works;
- the name of an entry point in the registry's group (``fiancee.tasks``, ``fiancee.key_functions``),
  declared by an installed package.

Folders store the spec string they were made with and loading resolves it the same way. Resolving
imports user code: a spec comes from the user (a command line, or a folder the user made), never from
data a folder merely holds.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Callable

__all__ = ["Registry", "SpecError"]


class SpecError(ValueError):
    """A spec that names nothing usable; the message names the spec and what was expected."""


class Registry:
    """Name -> object, open to ``module:attr`` specs and to entry points of ``group``.

    ``what`` names the kind of object in messages (``"task"``); ``expect`` says what ``attr`` must be.
    """

    def __init__(self, what: str, group: str, expect: str):
        self.what, self.group, self.expect = what, group, expect
        self._items: dict[str, Any] = {}

    def register(self, name: str, obj: Any) -> None:
        if not isinstance(name, str) or not name or ":" in name or not callable(obj):
            raise ValueError(f"a {self.what} is registered under a non-empty name without ':' with a callable; "
                             f"got {name!r} -> {type(obj).__name__}")
        self._items[name] = obj

    def unregister(self, name: str) -> None:
        """Forget an in-process name (a no-op for names it does not hold)."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._items)

    def expected(self) -> str:
        known = ", ".join(self.names()) or "none"
        return (f"a registered name ({known}), 'package.module:attr' naming {self.expect} on sys.path, "
                f"or an entry point of group '{self.group}'")

    def lookup(self, spec: str) -> Any:
        """The object ``spec`` names (not called). Raises :class:`SpecError` naming the spec."""
        if not isinstance(spec, str) or not spec.strip():
            raise SpecError(f"a {self.what} spec must be a non-empty string; got {spec!r}; expected {self.expected()}")
        if spec in self._items:
            return self._items[spec]
        if ":" in spec:
            return self._import(spec)
        for ep in _entry_points(self.group):
            if ep.name == spec:
                try:
                    return ep.load()
                except Exception as e:  # a broken installed package: say which entry point
                    raise SpecError(f"{self.what} {spec!r}: entry point {ep.value!r} of group '{self.group}' failed "
                                    f"to load ({type(e).__name__}: {e})") from None
        raise SpecError(f"unknown {self.what} {spec!r}; expected {self.expected()}")

    def _import(self, spec: str) -> Any:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise SpecError(f"{self.what} {spec!r}: expected 'package.module:attr' naming {self.expect}")
        try:
            obj = importlib.import_module(module_name)
        except ImportError as e:
            raise SpecError(f"{self.what} {spec!r}: cannot import module {module_name!r} ({e}); expected "
                            f"'package.module:attr' naming {self.expect} on sys.path (PYTHONPATH or an installed package)") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise SpecError(f"{self.what} {spec!r}: module {module_name!r} has no attribute {attr!r}; "
                                f"expected {self.expect}")
            obj = getattr(obj, part)
        return obj


def _entry_points(group: str) -> list:
    try:
        return list(metadata.entry_points(group=group))
    except Exception:  # a malformed installed distribution must not break built-in names
        return []


def call_factory(factory: Callable[..., Any], kwargs: dict) -> Any:
    """``factory(**kwargs)`` with the ``None`` values left out (a user's factory need not take them)."""
    return factory(**{k: v for k, v in kwargs.items() if v is not None})
