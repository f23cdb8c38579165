"""The task registry: a spec string -> a :class:`~fiancee.tasks.base.Task` (see :mod:`fiancee.specs`).

A task is named by a built-in name (``faces``, ``fashion``), by ``package.module:attr`` where ``attr``
is a ``Task`` subclass or a zero-argument callable returning a ``Task`` (imported from ``sys.path``),
or by an entry point in the group ``fiancee.tasks``. :func:`register_task` adds a name in-process.
Run configs, bank manifests and pipeline folders store the spec they were made with; loading them
resolves it here.
"""

from __future__ import annotations

import os

from ..specs import Registry, SpecError, call_factory
from .base import Task

__all__ = ["TASKS", "register_task", "resolve_task", "check_task_spec", "task_spec", "SpecError"]

TASKS = Registry("task", "fiancee.tasks", "a Task subclass or a zero-argument callable returning a Task")


def _faces(weights: str | os.PathLike | None = None, data: str | os.PathLike | None = None) -> Task:
    from .faces import FacesTask

    return FacesTask(weights=weights)


def _fashion(data: str | os.PathLike | None = None, weights: str | os.PathLike | None = None) -> Task:
    from .fashion import FashionTask

    return FashionTask(data=data, weights=weights)


def _upscale(weights: str | os.PathLike | None = None, data: str | os.PathLike | None = None) -> Task:
    from .upscale import UpscaleTask

    return UpscaleTask(weights=weights)


TASKS.register("faces", _faces)
TASKS.register("fashion", _fashion)
TASKS.register("upscale", _upscale)


def register_task(name: str, factory) -> None:
    """Make ``name`` resolve to ``factory`` (a Task subclass or a callable returning a Task) in this process.

    Folders made with it store ``name``: a fresh process must register it again (or use a
    ``module:attr`` spec, which resolves anywhere the module is importable).
    """
    TASKS.register(name, factory)


def check_task_spec(spec: str) -> str:
    """``spec`` if it names a Task subclass or a callable (without calling it), else a :class:`SpecError`."""
    obj = TASKS.lookup(spec)
    if isinstance(obj, type) and not issubclass(obj, Task):
        raise SpecError(f"task {spec!r} names the class {obj.__name__}, which is not a fiancee Task subclass; "
                        f"expected {TASKS.expect}")
    if not callable(obj):
        raise SpecError(f"task {spec!r} names a {type(obj).__name__}, not a class or callable; expected {TASKS.expect}")
    return spec


def resolve_task(spec: "str | Task", *, data: str | os.PathLike | None = None,
                 weights: str | os.PathLike | None = None) -> Task:
    """The task ``spec`` names (a Task passes through); ``data`` / ``weights`` go to its factory when given.

    The returned task remembers its spec (``task.spec``), which is what folders made with it store.
    """
    if isinstance(spec, Task):
        return spec
    check_task_spec(spec)
    task = call_factory(TASKS.lookup(spec), {"data": data, "weights": weights})
    if not isinstance(task, Task):
        raise SpecError(f"task {spec!r} returned a {type(task).__name__}; expected {TASKS.expect}")
    task.spec = spec
    return task


def task_spec(task: Task) -> str:
    """The spec a folder made with ``task`` stores: the one it was resolved from, else its name."""
    return getattr(task, "spec", None) or task.name
