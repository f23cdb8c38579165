"""fiancee: conditional early exits for trained image generators (FIANCEE, CVPR 2023)."""

__version__ = "0.1.0"
__all__ = ["register_task", "__version__"]


def register_task(name: str, factory) -> None:
    """Make the task spec ``name`` resolve to ``factory`` (a Task subclass or a zero-argument callable
    returning a Task) in this process; see :mod:`fiancee.tasks.registry`."""
    from .tasks.registry import register_task as register

    register(name, factory)
