"""A bank as a folder: written whole, read with every part checked against the others.

::

    manifest.json          kind "fiancee-feature-bank", format, mode, stages, grid, per-class counts,
                           backbone fingerprint
    entries.safetensors    keys [N, D], values, classes [N], source input [N], grid cell [N], RGB patches
    index_all.faiss        FAISS index over all entries (global mode; the fallback in patch mode)
    index_class_<c>.faiss  one FAISS index per class with entries (patch mode with label maps)

Reading checks the fingerprint of the backbone's weights: a bank built from other weights is refused.
:meth:`fiancee.bank.FeatureBank.save_pretrained` and :meth:`fiancee.bank.FeatureBank.from_pretrained` (the old
names :meth:`~fiancee.bank.FeatureBank.save` and :func:`fiancee.bank.load_bank` still work) are the object's side
of these two. A manifest with the old version key ``format_version`` still loads (:mod:`fiancee.core.folders`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io import atomic_folder, load_tensors, read_manifest, read_whole_folder, resolve_inside, save_tensors, write_json
from .index import _faiss, _read_index, _write_index
from .keys import KEY_FUNCTIONS
from .manifest import FORMAT, KIND, _backbone_fingerprint, _check_entries, _check_manifest

__all__ = ["write_folder", "read_folder"]


def write_folder(
    path: str | os.PathLike, manifest: dict, tensors: dict, indexes: dict, *, overwrite: bool = False
) -> Path:
    """Write the bank folder whole (:func:`fiancee.io.atomic_folder`): built in a hidden sibling and swapped in
    once complete, so a killed build never leaves half a bank; a folder of another kind is never replaced.
    ``tensors`` are the entries (keys, values, classes, source, cell, rgb), ``indexes`` map ``"all"`` and class
    ids to FAISS indexes (a GPU index is written from its CPU copy)."""
    path = Path(path)
    with atomic_folder(path, kind=KIND, what="feature bank", overwrite=overwrite) as tmp:
        save_tensors(tmp / "entries.safetensors", tensors)
        cpu = getattr(_faiss(), "index_gpu_to_cpu", None)
        for name, index in indexes.items():
            if cpu is not None and type(index).__name__.startswith("Gpu"):
                index = cpu(index)
            _write_index(index, tmp / ("index_all.faiss" if name == "all" else f"index_class_{name}.faiss"))
        write_json(tmp / "manifest.json", manifest)
    return path


@read_whole_folder("manifest.json")  # a save swapping the folder mid-load makes it load again
def read_folder(path: str | os.PathLike, backbone) -> tuple[dict, dict, dict]:
    """``(manifest, entry tensors, indexes)`` of a bank folder built from ``backbone``'s weights (else a
    ValueError), every part checked against the others before it is used."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no feature bank at {path} (build one with `fiancee build-bank`)")
    manifest = read_manifest(
        resolve_inside(path, "manifest.json"),
        kind=KIND,
        version=FORMAT,
        what="feature bank manifest",
        required=("backbone_fingerprint", "mode", "per_class_counts"),
        hint="; rebuild it with `fiancee build-bank`",
    )
    mine = _backbone_fingerprint(backbone)
    if manifest["backbone_fingerprint"] != mine:
        raise ValueError(
            f"the bank at {path} was built from a backbone with weights fingerprint "
            f"{manifest['backbone_fingerprint']}, but this backbone's fingerprint is {mine}: its keys and values "
            "would not match this backbone's features; rebuild it with `fiancee build-bank`"
        )
    counts = _check_manifest(manifest, path / "manifest.json")
    if manifest["mode"] == "global":  # a folder's module:attr is code the user must allow (fiancee.specs)
        KEY_FUNCTIONS.lookup(manifest["key_function"], recorded_in=path / "manifest.json")
    t = load_tensors(resolve_inside(path, "entries.safetensors"))
    missing = {"keys", "values", "classes", "source", "cell", "rgb"} - set(t)
    if missing:
        raise ValueError(f"{path}/entries.safetensors lacks {sorted(missing)}")
    n, d = _check_entries(t, counts, manifest, path)
    indexes: dict = {"all": _read_index(resolve_inside(path, "index_all.faiss"), n, d)}
    if manifest["mode"] == "patch" and manifest.get("label_channels") is not None:
        for c, count in counts.items():
            if count > 0:
                indexes[c] = _read_index(resolve_inside(path, f"index_class_{c}.faiss"), count, d)
    return manifest, t, indexes
