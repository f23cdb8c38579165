"""A bank folder's manifest: its header (kind ``fiancee-feature-bank``, ``format``; banks written before kept
the version under ``format_version`` and still load, :mod:`fiancee.core.folders`), the bank's modes, the backbone
fingerprint it records, and the checks a loader runs on the manifest and on the entries against it."""

from __future__ import annotations

from pathlib import Path

from ..core.folders import FEATURE_BANK
from ..io import config_int, config_int_list, config_str, tensor_fingerprint

__all__ = ["FORMAT", "FORMAT_VERSION", "KIND", "MODES"]

FORMAT = 1
FORMAT_VERSION = FORMAT  # the name before every folder's version was its header's "format"
KIND = FEATURE_BANK
MODES = ("patch", "global")


def _backbone_fingerprint(backbone) -> str:
    """The fingerprint of the backbone's weights a bank records: keys and values belong to these weights."""
    return tensor_fingerprint(backbone.state_dict())


def _check_manifest(manifest: dict, source: Path) -> dict[int, int]:
    """The manifest's fields a loader relies on, type-checked; returns the per-class counts."""
    if manifest["mode"] not in MODES:
        raise ValueError(f"{source}: field 'mode' must be one of {MODES}; got {manifest['mode']!r}")
    pcc = manifest["per_class_counts"]
    if not isinstance(pcc, dict) or not all(
        isinstance(k, str) and k.lstrip("-").isdigit() and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in pcc.items()
    ):
        raise ValueError(f"{source}: field 'per_class_counts' must map class numbers to counts >= 0; got {pcc!r}")
    counts = {int(k): v for k, v in pcc.items()}
    if any(c < 0 for c in counts):
        raise ValueError(f"{source}: field 'per_class_counts' has a negative class; got {pcc!r}")
    config_int(manifest, "label_channels", source, minimum=1, optional=True)
    config_int(manifest, "key_stage", source, minimum=1, optional=True)
    config_int(manifest, "entries", source, minimum=0, optional=True)
    config_int(manifest, "key_dim", source, minimum=1, optional=True)
    config_int_list(manifest, "key_shape", source, minimum=1, optional=True)
    grid = config_int_list(manifest, "grid", source, minimum=1, optional=True)
    if grid is not None and len(grid) != 2:
        raise ValueError(f"{source}: field 'grid' must be two positive counts; got {grid!r}")
    if manifest["mode"] == "global":
        config_str(manifest, "key_function", source)
    return counts


def _check_entries(t: dict, counts: dict[int, int], manifest: dict, path: Path) -> tuple[int, int]:
    """The entries agree with the manifest: as many as its per-class counts add up to, sorted by class with
    each class's rows where the counts put them (a search in class c returns rows of class c), one row in
    every tensor per entry. Returns ``(N, D)``."""
    keys = t["keys"]
    if keys.dim() != 2:
        raise ValueError(f"{path}/entries.safetensors: keys must be [N, D]; got {list(keys.shape)}")
    n, d = int(keys.shape[0]), int(keys.shape[1])
    if manifest.get("key_dim", d) != d:
        raise ValueError(
            f"{path}: manifest.json says keys are {manifest.get('key_dim')!r}-dimensional; "
            f"entries.safetensors holds {d}-dimensional keys"
        )
    if sum(counts.values()) != n or manifest.get("entries", n) != n:
        raise ValueError(
            f"{path}: manifest.json's per_class_counts add up to {sum(counts.values())} entries "
            f"(entries: {manifest.get('entries')!r}), but entries.safetensors holds {n}"
        )
    for name in ("values", "classes", "source", "cell", "rgb"):
        if t[name].dim() == 0 or int(t[name].shape[0]) != n:
            raise ValueError(f"{path}/entries.safetensors: {name} has {list(t[name].shape)[:1]} rows; keys have {n}")
    classes = t["classes"]
    start = 0
    for c in sorted(counts):
        span = classes[start : start + counts[c]]
        if span.numel() and not bool((span == c).all()):
            raise ValueError(
                f"{path}: manifest.json gives class {c} {counts[c]} entries from row {start}, "
                "but entries.safetensors holds other classes there (counts disagree with entries)"
            )
        start += counts[c]
    key_shape = manifest.get("key_shape")
    if key_shape is not None and manifest["mode"] == "patch":
        grid = manifest.get("grid") or [1, 1]
        want = (key_shape[0] * (key_shape[1] // grid[0]) * (key_shape[2] // grid[1])) if len(key_shape) == 3 else None
        if want is not None and want != d:
            raise ValueError(
                f"{path}: keys are {d}-dimensional; the manifest's key_shape {key_shape} and grid {grid} give {want}"
            )
    return n, d
