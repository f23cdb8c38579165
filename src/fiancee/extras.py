"""Optional dependencies: which ``pip install fiancee[...]`` extra brings each one.

A feature that needs an optional package asks for it with :func:`require` before doing any work, so
a user without it reads one line naming the extra instead of a traceback minutes later.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingDependency", "require", "install_hint"]

# import name -> (pip package, extra of fiancee that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "matplotlib": ("matplotlib", "plots"),
    "faiss": ("faiss-cpu", "bank"),
    "pytorch_msssim": ("pytorch-msssim", "test"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "runtime"),
    "ray": ("ray[serve]", "serve"),
    "prometheus_client": ("prometheus-client", "serve"),
    "locust": ("locust", "serve"),
}


class MissingDependency(ImportError):
    """An optional package is not installed; the message says which extra installs it."""


def install_hint(module: str | None) -> str | None:
    """``pip install 'fiancee[extra]'`` for a missing optional module, or None if it is not one."""
    top = (module or "").split(".")[0]
    if top not in EXTRAS:
        return None
    package, extra = EXTRAS[top]
    return f"pip install 'fiancee[{extra}]' (or {package}; 'fiancee[all]' installs every optional package)"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependency` saying that ``purpose`` needs it and how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = install_hint(module) or f"pip install {module}"
        raise MissingDependency(f"{purpose} needs {module!r}, which is not installed: {hint}", name=module) from e
