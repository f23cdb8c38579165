"""Export targets: where a pipeline folder can be exported to, and what runs the result.

Each target is one class registered with ``@EXPORT_TARGETS.add("name")``: the function that writes an
exported folder from a pipeline, the runtime that loads one, the folder ``kind`` its manifest records and
the keyword options each takes. Today there is one, ``onnx`` (:func:`fiancee.export.export_pipeline`, run
by :class:`fiancee.runtime.OnnxPipeline` without PyTorch); a TensorRT, ExecuTorch or CoreML target would be
one more class. :func:`export` and :func:`load_exported` are the generic entry points.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .export import KIND as ONNX_KIND
from .export import export_pipeline
from .io import folder_kind
from .specs import Registry

__all__ = ["EXPORT_TARGETS", "ExportTarget", "get_target", "export", "load_exported"]

EXPORT_TARGETS = Registry(
    "export target", "fiancee.export_targets", "an export target class (a fiancee.export_targets.ExportTarget)"
)


class ExportTarget:
    """The interface of an export target; subclasses set the attributes and both methods."""

    kind = ""  # the ``kind`` of the exported folder's manifest (how :func:`load_exported` recognises it)
    description = ""  # one line for help texts
    export_options: tuple[str, ...] = ()  # keyword options :meth:`export` takes besides (pipeline, out)
    load_options: tuple[str, ...] = ()  # keyword options :meth:`load` takes besides the folder

    def export(self, pipeline: Any, out: str | os.PathLike, **options: Any) -> dict:
        """Write the exported folder ``out`` for ``pipeline`` (a pipeline folder or a ``FianceePipeline``);
        returns its manifest."""
        raise NotImplementedError

    def load(self, folder: str | os.PathLike, **options: Any) -> Any:
        """The runtime object that runs an exported folder (called like a pipeline on a batch of inputs)."""
        raise NotImplementedError


@EXPORT_TARGETS.add("onnx")
class OnnxTarget(ExportTarget):
    """ONNX segments with a dynamic batch, routed by a small runtime on ONNX Runtime (no PyTorch)."""

    kind = ONNX_KIND
    description = "ONNX segments that fiancee.runtime.OnnxPipeline runs with ONNX Runtime, without PyTorch"
    export_options = ("opset", "overwrite")
    load_options = ("threads", "providers")

    def export(self, pipeline, out, **options):
        return export_pipeline(pipeline, out, **options)

    def load(self, folder, **options):
        from .runtime import OnnxPipeline  # imported here: onnxruntime is an optional extra

        return OnnxPipeline(folder, **options)


def get_target(target: str) -> ExportTarget:
    """The registered export target ``target``; refused in one line naming the registered ones."""
    if not isinstance(target, str) or target not in EXPORT_TARGETS:
        raise ValueError(f"target must be one of {tuple(EXPORT_TARGETS.in_order())}; got {target!r}")
    return EXPORT_TARGETS.get(target)()


def _check_options(target: str, given: dict, known: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"export target {target!r} takes {what} options {list(known)}; got {unknown}")


def export(pipeline: Any, out: str | os.PathLike, target: str = "onnx", **options: Any) -> dict:
    """Export ``pipeline`` (a pipeline folder or a ``FianceePipeline``) to the folder ``out`` for ``target``;
    returns the manifest. Options the target does not take are refused before any work."""
    t = get_target(target)
    _check_options(target, options, t.export_options, "export")
    return t.export(pipeline, out, **options)


def load_exported(folder: str | os.PathLike, **options: Any) -> Any:
    """The runtime of the target that wrote ``folder`` (recognised by its manifest's ``kind``)."""
    kind = folder_kind(folder)
    for name in EXPORT_TARGETS.in_order():
        t = EXPORT_TARGETS.get(name)()
        if t.kind == kind:
            _check_options(name, options, t.load_options, "load")
            return t.load(folder, **options)
    kinds = {EXPORT_TARGETS.get(n).kind: n for n in EXPORT_TARGETS.in_order()}
    raise ValueError(f"{Path(folder)} is no exported pipeline (its kind is {kind!r}; expected one of {kinds})")
