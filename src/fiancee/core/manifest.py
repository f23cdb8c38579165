"""The manifest of an ONNX export (``fiancee export`` writes it, :mod:`fiancee.runtime` reads it)."""

from __future__ import annotations

__all__ = ["FORMAT", "KIND", "FIELDS"]

FORMAT = 1
KIND = "fiancee_onnx"
# The fields every manifest of this format holds (``bank`` is optional: a pipeline without a bank has none).
FIELDS = ("inputs", "exits", "key_stage", "num_stages", "segments", "route_macs", "predictor_macs", "router", "files")
