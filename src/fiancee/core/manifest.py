"""The manifest of an ONNX export (``fiancee export`` writes it, :mod:`fiancee.runtime` reads it).

Its header is kind ``fiancee-onnx``, format 1 (:mod:`fiancee.core.folders`); exports written before say
``fiancee_onnx`` and hold ``exits`` where this format holds ``attach_after``: they still load.
"""

from __future__ import annotations

from .folders import ONNX

__all__ = ["FORMAT", "KIND", "FIELDS"]

FORMAT = 1
KIND = ONNX
# The fields every manifest of this format holds (``bank`` is optional: a pipeline without a bank has none).
FIELDS = (
    "inputs",
    "attach_after",
    "key_stage",
    "num_stages",
    "segments",
    "route_macs",
    "predictor_macs",
    "router",
    "files",
)
