"""The folder protocol: one header for every folder (and report file) fiancee writes, and how old ones are read.

Every folder names itself in its ``config.json`` / ``manifest.json`` (and a report file at its top) with two
keys: ``"kind"`` (one of :data:`KINDS`, spelled ``fiancee-<what>``) and ``"format"`` (an integer: the layout of
that kind's files). Earlier releases spelled kinds four ways (``fiancee_pipeline``, ``quality_predictor``,
``exits``, ...), kept the version under ``format_version`` for some kinds, and wrote the fashion backbone with
no kind at all. Such folders are still read: :func:`header` reads a header through :data:`OLD_KINDS` and
:data:`OLD_VERSION_KEY`, and :func:`upgrade` also renames the fields a kind renamed (:data:`OLD_FIELDS`). The
committed folders under ``fiancee/weights`` and the committed reports keep their old headers (results record
fingerprints of them) and load this way.

Torch-free: :mod:`fiancee.io` (the PyTorch side) and :mod:`fiancee.runtime` (an ONNX export's manifest) read
headers with it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PIPELINE",
    "PREDICTOR",
    "FEATURE_BANK",
    "EXITS_RUN",
    "ONNX",
    "BENCH",
    "BENCH_ONNX",
    "RESULT",
    "UPSCALE",
    "FASHION_BACKBONE",
    "BACKBONE_RUN",
    "KINDS",
    "OLD_KINDS",
    "OLD_VERSION_KEY",
    "OLD_FIELDS",
    "canonical_kind",
    "make_header",
    "header",
    "upgrade",
    "check_header",
]

PIPELINE = "fiancee-pipeline"  # FianceePipeline.save_pretrained
PREDICTOR = "fiancee-predictor"  # QualityPredictor.save_pretrained (fiancee train-predictor)
FEATURE_BANK = "fiancee-feature-bank"  # FeatureBank.save_pretrained (fiancee build-bank); manifest.json
EXITS_RUN = "fiancee-exits-run"  # an exit-training run (fiancee train-exits)
ONNX = "fiancee-onnx"  # an ONNX export (fiancee export); manifest.json
BENCH = "fiancee-bench"  # a bench report file (fiancee bench --json)
BENCH_ONNX = "fiancee-bench-onnx"  # an ONNX bench report file
RESULT = "fiancee-result"  # a result file (results/*.json, fiancee.results)
UPSCALE = "fiancee-upscale"  # upscaled images (fiancee upscale); summary.json
FASHION_BACKBONE = "fiancee-fashion-backbone"  # a trained fashion backbone (fiancee train-backbone / export-backbone)
BACKBONE_RUN = "fiancee-backbone-run"  # a backbone training run: recognised by its fields, it has no header
KINDS = (
    PIPELINE,
    PREDICTOR,
    FEATURE_BANK,
    EXITS_RUN,
    ONNX,
    BENCH,
    BENCH_ONNX,
    RESULT,
    UPSCALE,
    FASHION_BACKBONE,
    BACKBONE_RUN,
)

# Kinds as earlier releases spelled them (folders written then still load).
OLD_KINDS = {
    "fiancee_pipeline": PIPELINE,
    "quality_predictor": PREDICTOR,
    "exits": EXITS_RUN,
    "fiancee_onnx": ONNX,
    "fashion_backbone": FASHION_BACKBONE,
    "backbone_run": BACKBONE_RUN,
}
# The version key earlier releases wrote for banks, results, bench reports and the fashion backbone.
OLD_VERSION_KEY = "format_version"
# Kinds whose old folders held no version at all: they are format 1.
_UNVERSIONED = {EXITS_RUN: 1}
# Fields a kind renamed, old name -> new name: the stages branches attach after (1-based) were "exits".
OLD_FIELDS = {
    PIPELINE: {"exits": "attach_after"},
    ONNX: {"exits": "attach_after"},
    EXITS_RUN: {"exits": "attach_after", "guided_exits": "guided_attach_after"},
}


def canonical_kind(kind: Any) -> Any:
    """``kind`` spelled the one way (an old spelling mapped by :data:`OLD_KINDS`; anything else unchanged)."""
    return OLD_KINDS.get(kind, kind) if isinstance(kind, str) else kind


def make_header(kind: str, version: int) -> dict:
    """The two keys a folder's config / manifest starts with."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    return {"kind": kind, "format": version}


def header(obj: Any) -> tuple[Any, Any]:
    """``(kind, format)`` of a folder's config / manifest, old spellings read as new ones; ``(None, None)`` for
    something that is no fiancee header (not a dict, no kind, and not one of the two kindless layouts)."""
    if not isinstance(obj, dict):
        return None, None
    kind = obj.get("kind")
    if not isinstance(kind, str):
        if "generator" in obj and OLD_VERSION_KEY in obj:  # the fashion backbone before it had a kind
            kind = FASHION_BACKBONE
        elif "generator" in obj and "disc_channels" in obj:  # a backbone run's config (its training settings)
            kind = BACKBONE_RUN
        else:
            return None, None
    kind = canonical_kind(kind)
    if "format" in obj:
        return kind, obj["format"]
    return kind, obj.get(OLD_VERSION_KEY, _UNVERSIONED.get(kind))


def upgrade(obj: dict) -> dict:
    """A copy of a header-bearing dict as this release writes it: ``kind`` and ``format`` spelled the new way
    (old ``format_version`` dropped) and the kind's renamed fields (:data:`OLD_FIELDS`) under their new names."""
    kind, version = header(obj)
    if kind is None:
        return dict(obj)
    renames = OLD_FIELDS.get(kind, {})
    out = {"kind": kind, "format": version}
    for key, value in obj.items():
        if key in ("kind", "format", OLD_VERSION_KEY):
            continue
        new = renames.get(key, key)
        if new != key and new in obj:  # both spellings present: the new one wins
            continue
        out[new] = value
    return out


def check_header(obj: Any, *, kind: str, version: int, what: str, source: Any, hint: str = "") -> dict:
    """``obj`` (a folder's config / manifest read from ``source``) upgraded (:func:`upgrade`), refused in one line
    unless it is a ``kind`` (new or old spelling) of format ``version``."""
    have, have_version = header(obj)
    if have != canonical_kind(kind):
        got = obj.get("kind") if isinstance(obj, dict) else f"a JSON {type(obj).__name__}"
        raise ValueError(f"{source} is not a {what} (kind={got!r}; expected {canonical_kind(kind)!r})")
    if have_version != version:
        raise ValueError(f"{source}: {what} format {have_version!r}; this fiancee reads format {version}{hint}")
    return upgrade(obj)
