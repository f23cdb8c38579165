"""FAISS: the nearest key of every query with what finding it cost, and reading an index safely.

The caller passes the ``faiss`` module (it asked for it with a line naming the extra that installs it,
:func:`fiancee.extras.require`), so that this module imports nothing optional.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

__all__ = ["search_counted", "search_classes", "read_index"]


def search_counted(faiss, index, queries: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest entry of every query ``[N, d]`` (float32), the MACs of the distances computed per query, and
    the squared L2 distance to the entry found (FAISS's own, from the same search).

    The MACs count what the index computed (:meth:`fiancee.bank.FeatureBank.search_with_macs`): a flat index
    every key once; IVF the coarse centroids plus the probed lists' keys (FAISS's ``indexIVF_stats``); HNSW
    the distances of the graph walk (``hnsw_stats``); each distance costs ``d`` MACs. IVF and HNSW count
    per call, so the count is shared evenly by the call's queries.
    """
    n = queries.shape[0]
    flat = type(index) in (faiss.IndexFlatL2, faiss.IndexFlat)
    inner = index if flat else faiss.downcast_index(index)  # flat: no per-call downcast
    if isinstance(inner, faiss.IndexIVF):
        faiss.cvar.indexIVF_stats.reset()
        dist, ids = index.search(queries, 1)
        distances = faiss.cvar.indexIVF_stats.ndis + n * inner.nlist  # probed lists + coarse centroids
        return ids[:, 0], np.full(n, distances * d / max(n, 1), dtype=np.float64), dist[:, 0]
    if isinstance(inner, faiss.IndexHNSW):
        faiss.cvar.hnsw_stats.reset()
        dist, ids = index.search(queries, 1)
        return ids[:, 0], np.full(n, faiss.cvar.hnsw_stats.ndis * d / max(n, 1), dtype=np.float64), dist[:, 0]
    dist, ids = index.search(queries, 1)
    return ids[:, 0], np.full(n, float(index.ntotal) * d, dtype=np.float64), dist[:, 0]  # flat: every key once


def search_classes(
    faiss, indexes: dict, starts: dict[int, int], queries: np.ndarray, classes: np.ndarray | None, d: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`search_counted` for queries ``[N, d]`` of a bank with one index per class: a query of class ``c``
    searches ``indexes[c]`` (whose entry 0 is the bank's entry ``starts[c]``), a query of a class without its
    own index searches ``indexes["all"]`` (nearest key of any class; docs/bank.md), and every query does so
    when ``classes`` is None. Returns the bank's entry ids ``[N]``, the MACs ``[N]`` and the squared
    distances ``[N]`` (float32)."""
    n = queries.shape[0]
    found = np.empty(n, dtype=np.int64)
    macs = np.zeros(n, dtype=np.float64)
    dist = np.zeros(n, dtype=np.float32)  # squared L2, as FAISS reports it
    if classes is None:
        found[:], macs[:], dist[:] = search_counted(faiss, indexes["all"], queries, d)
        return found, macs, dist
    for c in np.unique(classes):
        rows = np.nonzero(classes == c)[0]
        part = np.ascontiguousarray(queries[rows])
        if int(c) in starts and int(c) in indexes:
            ids, cost, dd = search_counted(faiss, indexes[int(c)], part, d)
            found[rows], macs[rows], dist[rows] = ids + starts[int(c)], cost, dd
        else:
            found[rows], macs[rows], dist[rows] = search_counted(faiss, indexes["all"], part, d)
    return found, macs, dist


def read_index(faiss, path: Path, ntotal: int, d: int, claimed_by: str = "the manifest says"):
    """Read a FAISS index holding ``ntotal`` keys of dimension ``d`` (``claimed_by``: who says so, for messages).

    The header (every index type starts with fourcc, d: int32, ntotal: int64) is checked against that,
    and the file must be large enough to hold the keys, before FAISS reads it: FAISS allocates what the
    header claims, so a corrupt header claiming 64 GiB would otherwise be allocated first. What FAISS
    read is checked again.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FAISS index file missing: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(45)
    if len(head) < 16:
        raise ValueError(f"{path} is not a readable FAISS index (truncated or corrupt?): {size} bytes")
    claim_d, claim_n = struct.unpack_from("<iq", head, 4)
    if (claim_d, claim_n) != (d, ntotal):
        raise ValueError(
            f"{path} claims {claim_n} keys of dimension {claim_d}; {claimed_by} "
            f"{ntotal} of dimension {d} (a corrupt or mismatched file)"
        )
    stored = 4 * ntotal * d
    # Flat indexes: after the header (2 dummies, is_trained: 1 byte, metric: int32 at 33; L2 / inner product
    # have no metric argument) comes the length of the key table, which is what FAISS allocates.
    if head[:4] in (b"IxF2", b"IxFI") and len(head) >= 45 and struct.unpack_from("<i", head, 33)[0] in (0, 1):
        (codes,) = struct.unpack_from("<Q", head, 37)
        if codes != ntotal * d:
            raise ValueError(f"{path} claims a key table of {codes} floats; expected {ntotal * d} (a corrupt file)")
    if size < stored:
        raise ValueError(
            f"{path} is not a readable FAISS index (truncated or corrupt?): it holds {size} bytes, "
            f"less than the {stored} its {ntotal} keys need"
        )
    try:
        index = faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as e:
        raise ValueError(f"{path} is not a readable FAISS index (truncated or corrupt?): {e}") from None
    if index.ntotal != ntotal or index.d != d:
        raise ValueError(f"{path} holds {index.ntotal} keys of dimension {index.d}; expected {ntotal} of dimension {d}")
    return index
