"""The task registry: a spec string -> a :class:`~fiancee.tasks.base.Task` (see :mod:`fiancee.specs`).

A task is named by a built-in name (``faces``, ``fashion``), by ``package.module:attr`` where ``attr``
is a ``Task`` subclass or a zero-argument callable returning a ``Task`` (imported from ``sys.path``),
or by an entry point in the group ``fiancee.tasks``. :func:`register_task` adds a name in-process.
Run configs, bank manifests and pipeline folders store the spec they were made with; loading them
resolves it here, by :func:`resolve_folder_task`: a folder's own ``module:attr`` is code the user did
not choose (folders are shared like checkpoints), so it resolves only when the user names it
(``task=``, ``--task``) or trusts the folder (``trust_task_code=True``, :func:`fiancee.specs.allow_folder_code`).
"""

from __future__ import annotations

import os

from ..specs import Registry, SpecError, allow_folder_code, call_factory
from .base import Task

__all__ = [
    "TASKS",
    "register_task",
    "resolve_task",
    "resolve_folder_task",
    "check_task_spec",
    "task_spec",
    "allow_folder_code",
    "SpecError",
]

TASKS = Registry(
    "task",
    "fiancee.tasks",
    "a Task subclass or a zero-argument callable returning a Task",
    allow="pass task={spec!r} (--task {spec}) or trust_task_code=True (--trust-task-code)",
)


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


def check_task_spec(spec: str, *, recorded_in: "str | os.PathLike | None" = None) -> str:
    """``spec`` if it names a Task subclass or a callable (without calling it), else a :class:`SpecError`.

    ``recorded_in``: the folder file ``spec`` was read from; its ``module:attr`` is then refused before
    anything is imported unless allowed (:func:`fiancee.specs.allow_folder_code`).
    """
    _factory(spec, recorded_in)
    return spec


def _factory(spec: str, recorded_in):
    """What ``spec`` names, checked to be a Task subclass or a callable before anything calls it."""
    obj = TASKS.lookup(spec, recorded_in=recorded_in)
    if isinstance(obj, type) and not issubclass(obj, Task):
        raise SpecError(
            f"task {spec!r} names the class {obj.__name__}, which is not a fiancee Task subclass; "
            f"expected {TASKS.expect}"
        )
    if not callable(obj):
        raise SpecError(f"task {spec!r} names a {type(obj).__name__}, not a class or callable; expected {TASKS.expect}")
    return obj


def resolve_task(
    spec: "str | Task",
    *,
    data: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    recorded_in: "str | os.PathLike | None" = None,
) -> Task:
    """The task ``spec`` names (a Task passes through); ``data`` / ``weights`` go to its factory when given.

    ``spec`` is one the user named; a spec read from a folder passes the file as ``recorded_in`` (see
    :func:`resolve_folder_task`). The returned task remembers its spec (``task.spec``), which is what
    folders made with it store.
    """
    if isinstance(spec, Task):
        return spec
    task = call_factory(_factory(spec, recorded_in), {"data": data, "weights": weights})
    if not isinstance(task, Task):
        raise SpecError(f"task {spec!r} returned a {type(task).__name__}; expected {TASKS.expect}")
    task.spec = spec
    return task


def resolve_folder_task(
    recorded: str,
    recorded_in: str | os.PathLike,
    *,
    task: "str | Task | None" = None,
    trust_task_code: bool = False,
    data: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
) -> Task:
    """The task a folder loader uses: ``task`` when the user gives one (a Task or a spec, resolved as the
    user's), else the spec ``recorded`` in the file ``recorded_in``, resolved to registered names and entry
    points only. Its ``module:attr`` is imported only with ``trust_task_code=True`` or inside
    :func:`fiancee.specs.allow_folder_code`; otherwise one :class:`SpecError` naming the spec, the file and
    how to allow it, before anything is imported or called."""
    if not isinstance(trust_task_code, bool):
        raise ValueError(f"trust_task_code must be True or False; got {trust_task_code!r}")
    if task is not None:
        return resolve_task(task, data=data, weights=weights)
    with allow_folder_code(every=trust_task_code):
        return resolve_task(recorded, data=data, weights=weights, recorded_in=recorded_in)


def task_spec(task: Task) -> str:
    """The spec a folder made with ``task`` stores: the one it was resolved from, else its name."""
    return getattr(task, "spec", None) or task.name
