"""The bank's FAISS indexes: made (exact flat L2, or IVF / HNSW for large banks), moved to the GPU, written,
and read with their header checked (:func:`fiancee.core.search.read_index`). The search with its cost count
is the torch-free core's (:func:`fiancee.core.search.search_classes`), shared with the ONNX runtime.

FAISS is optional (``fiancee[bank]``): it is imported on first use, with one line naming the extra when missing.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..core.search import read_index

__all__ = ["INDEX_KINDS"]


_FAISS = None


def _faiss():
    global _FAISS
    if _FAISS is None:
        from ..extras import require

        _FAISS = require("faiss", "the feature bank")  # one line naming fiancee[bank] when FAISS is missing
    return _FAISS


def _flat(faiss, keys: np.ndarray):
    return faiss.IndexFlatL2(keys.shape[1])


def _ivf(faiss, keys: np.ndarray):
    n, d = keys.shape
    nlist = max(1, int(np.sqrt(n)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    index.train(keys)
    index.nprobe = min(nlist, 8)
    return index


def _hnsw(faiss, keys: np.ndarray):
    index = faiss.IndexHNSWFlat(keys.shape[1], 32)
    index.hnsw.efSearch = 64
    return index


# An exact flat L2 index by default; IVF or HNSW (approximate) for large banks.
_INDEX_BUILDERS = {"flat": _flat, "ivf": _ivf, "hnsw": _hnsw}
INDEX_KINDS = tuple(_INDEX_BUILDERS)


def _make_index(keys: np.ndarray, kind: str):
    """The index of ``kind`` (:data:`INDEX_KINDS`) holding ``keys`` [N, D] (float32)."""
    if kind not in _INDEX_BUILDERS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
    index = _INDEX_BUILDERS[kind](_faiss(), keys)
    index.add(keys)
    return index


def _to_gpu(index):
    """Move an index to the GPU when CUDA and a GPU build of FAISS are both present."""
    faiss = _faiss()
    if not torch.cuda.is_available() or not hasattr(faiss, "StandardGpuResources"):
        return index
    res = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(res, torch.cuda.current_device(), index)
    gpu._fiancee_res = res  # the resources must live as long as the index
    return gpu


def _write_index(index, path: Path) -> None:
    faiss = _faiss()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            faiss.write_index(index, tmp)
        except RuntimeError as e:  # FAISS reports a failed fwrite with strerror(errno) in its text
            if os.strerror(errno.ENOSPC) in str(e):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
            raise
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_index(path: Path, ntotal: int, d: int):
    """Read a FAISS index holding ``ntotal`` keys of dimension ``d`` (what the manifest and the entries say),
    its header checked before FAISS allocates what it claims (:func:`fiancee.core.search.read_index`)."""
    return read_index(_faiss(), path, ntotal, d, claimed_by="the bank's manifest and entries hold")
