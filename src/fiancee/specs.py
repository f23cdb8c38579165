"""Named things a user can bring: one resolver for task specs and bank key functions.

A spec names an object three ways (stylegan2-ada's ``class_name`` habit, timm's registry):

- a name registered in-process (:meth:`Registry.register`), built-ins included;
- ``package.module:attr`` (``attr`` may be dotted): the module is imported from ``sys.path``, so
  ``PYTHONPATH`` or an installed package works;
- the name of an entry point in the registry's group (``fiancee.tasks``, ``fiancee.key_functions``),
  declared by an installed package.

Folders store the spec string they were made with, and folders are shared and downloaded like
checkpoints: a spec read from a folder (``lookup(spec, recorded_in=FILE)``) resolves only to registered
names and entry points, code the user registered or installed. Its ``module:attr`` is refused before
anything is imported, unless the user chose that code: by naming the spec themselves (a command's
``--task``, a loader's ``task=``) or by trusting the folder (a loader's ``trust_task_code=True``,
:func:`allow_folder_code`), as diffusers loads a repository's own code only with ``trust_remote_code=True``.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import metadata
from typing import Any, Callable, Iterator

__all__ = ["Registry", "SpecError", "allow_folder_code"]

# The module:attr specs a folder may name in this context: (every one, these ones); see allow_folder_code.
_ALLOWED: ContextVar[tuple[bool, frozenset]] = ContextVar("fiancee_folder_code", default=(False, frozenset()))


class SpecError(ValueError):
    """A spec that names nothing usable; the message names the spec and what was expected."""


class Registry:
    """Name -> object, open to ``module:attr`` specs and to entry points of ``group``.

    ``what`` names the kind of object in messages (``"task"``); ``expect`` says what ``attr`` must be;
    ``allow`` how a user runs the code a folder names (``{spec}`` is replaced by the spec).
    """

    def __init__(
        self,
        what: str,
        group: str,
        expect: str,
        allow: str = "pass trust_task_code=True to the loader (--trust-task-code)",
    ):
        self.what, self.group, self.expect, self.allow = what, group, expect, allow
        self._items: dict[str, Any] = {}

    def register(self, name: str, obj: Any) -> None:
        if not isinstance(name, str) or not name or ":" in name or not callable(obj):
            raise ValueError(
                f"a {self.what} is registered under a non-empty name without ':' with a callable; "
                f"got {name!r} -> {type(obj).__name__}"
            )
        self._items[name] = obj

    def add(self, name: str) -> Callable[[Any], Any]:
        """Decorator form of :meth:`register` (timm's ``@register_model``): ``@REGISTRY.add("name")``."""

        def decorate(obj: Any) -> Any:
            self.register(name, obj)
            return obj

        return decorate

    def get(self, name: str) -> Any:
        """The object registered in-process under ``name`` (no import, no entry point)."""
        if name not in self._items:
            raise SpecError(f"unknown {self.what} {name!r}; expected one of {', '.join(self.names()) or 'none'}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def unregister(self, name: str) -> None:
        """Forget an in-process name (a no-op for names it does not hold)."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[str]:
        """The in-process names in the order they were registered (built-ins first, as a command lists them)."""
        return list(self._items)

    def expected(self) -> str:
        known = ", ".join(self.names()) or "none"
        return (
            f"a registered name ({known}), 'package.module:attr' naming {self.expect} on sys.path, "
            f"or an entry point of group '{self.group}'"
        )

    def lookup(self, spec: str, *, recorded_in: Any = None) -> Any:
        """The object ``spec`` names (not called). Raises :class:`SpecError` naming the spec.

        ``recorded_in``: the folder file ``spec`` was read from (None: the user named it). A folder's
        ``module:attr`` is refused before its module is imported unless :func:`allow_folder_code` allows it.
        """
        if not isinstance(spec, str) or not spec.strip():
            where = "" if recorded_in is None else f"{recorded_in}: "
            raise SpecError(
                f"{where}a {self.what} spec must be a non-empty string; got {spec!r}; expected {self.expected()}"
            )
        if spec in self._items:
            return self._items[spec]
        if ":" in spec:
            if recorded_in is not None and not _folder_code_allowed(spec):
                raise SpecError(
                    f"{recorded_in} names {self.what} {spec!r}: loading a folder imports no module:attr "
                    f"code, only registered {self.what}s and entry points of '{self.group}'; if you trust "
                    f"this code, {self.allow.format(spec=spec)}"
                )
            return self._import(spec)
        for ep in _entry_points(self.group):
            if ep.name == spec:
                try:
                    return ep.load()
                except Exception as e:  # a broken installed package: say which entry point
                    raise SpecError(
                        f"{self.what} {spec!r}: entry point {ep.value!r} of group '{self.group}' failed "
                        f"to load ({type(e).__name__}: {e})"
                    ) from None
        raise SpecError(f"unknown {self.what} {spec!r}; expected {self.expected()}")

    def _import(self, spec: str) -> Any:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise SpecError(f"{self.what} {spec!r}: expected 'package.module:attr' naming {self.expect}")
        try:
            obj = importlib.import_module(module_name)
        except ImportError as e:
            raise SpecError(
                f"{self.what} {spec!r}: cannot import module {module_name!r} ({e}); expected "
                f"'package.module:attr' naming {self.expect} on sys.path (PYTHONPATH or an installed package)"
            ) from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise SpecError(
                    f"{self.what} {spec!r}: module {module_name!r} has no attribute {attr!r}; expected {self.expect}"
                )
            obj = getattr(obj, part)
        return obj


@contextmanager
def allow_folder_code(*specs: str, every: bool = False) -> Iterator[None]:
    """Within the block, folders may name these ``module:attr`` specs (the user named them), or any with
    ``every=True`` (the user trusts the folders: a loader's ``trust_task_code=True``). For a workflow that
    loads folders itself (``with allow_folder_code("mymodule:MyTask"): evaluate_exits(run)``); blocks nest
    and add up. A registered name or an entry point needs no allowing."""
    if not isinstance(every, bool) or any(not isinstance(s, str) or not s for s in specs):
        raise ValueError(
            f"allow_folder_code takes spec strings and every=True/False; got {list(specs)!r}, every={every!r}"
        )
    was_every, named = _ALLOWED.get()
    token = _ALLOWED.set((was_every or every, named | frozenset(specs)))
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def _folder_code_allowed(spec: str) -> bool:
    every, named = _ALLOWED.get()
    return every or spec in named


def _entry_points(group: str) -> list:
    try:
        return list(metadata.entry_points(group=group))
    except Exception:  # a malformed installed distribution must not break built-in names
        return []


def call_factory(factory: Callable[..., Any], kwargs: dict) -> Any:
    """``factory(**kwargs)`` with the ``None`` values left out (a user's factory need not take them)."""
    return factory(**{k: v for k, v in kwargs.items() if v is not None})
