"""The guiding feature bank (paper section 3.3, 4.1 "database", S1.1.1, S1.2.1).

A bank is a small key-value database built once from the frozen backbone. At inference the
features after the *key stage* (the stage before the first exit) are turned into keys, the nearest
stored keys are found with FAISS, and their values are glued into a *guide* tensor that every exit
branch takes as an extra input (:class:`fiancee.exits.GuideSpec`). The paper finds that it lifts the
earliest (cheapest) exits most (Fig. 8, Table S1), which lets the router send more inputs to them.

Two modes:

- ``patch`` (OASIS, S1.1.1): keys = key-stage features cut into a grid of non-overlapping patches,
  each flattened; values = the features at the *value stage* (the middle of the backbone) cut into
  the same grid. A query image is cut the same way, every patch retrieves its nearest key, and the
  value patches are glued back on the grid -> ``[B, C_value, H_value, W_value]``; the branches take it
  as ``GuideSpec("first", C_value)``. When the task has label maps, a patch's class is its majority
  label and it is searched only among bank entries of that class (S1.1.1: "the closest key from the
  database with corresponding semantic class"). A class without entries falls back to the index of
  all entries.
- ``global`` (MegaPortraits, S1.2.1): one key per input from a named key function (default: key-stage
  features average-pooled to 2x2), value = the backbone's RGB image of that entry; the retrieved image
  is concatenated, resized, to every branch block: ``GuideSpec("every", 3)``.

Redundancy is cut by farthest-point sampling (S1.1.1, "up to 5K for each semantic class"):
:func:`farthest_point_sampling`, per class, up to ``max_per_class`` entries.

A bank is a folder (:meth:`FeatureBank.save`)::

    manifest.json          format version, mode, stages, grid, per-class counts, backbone fingerprint
    entries.safetensors    keys [N, D], values, classes [N], source input [N], grid cell [N], RGB patches
    index_all.faiss        FAISS index over all entries (global mode; the fallback in patch mode)
    index_class_<c>.faiss  one FAISS index per class with entries (patch mode with label maps)

Loading checks the fingerprint of the backbone's weights: a bank built from other weights is refused.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .exits import GuideSpec
from .checks import check_counts
from .io import (atomic_folder, check_replaceable, read_whole_folder, config_int, config_int_list, config_str, load_tensors, read_manifest,
                 resolve_inside, save_tensors, tensor_fingerprint, write_json)
from .core.search import read_index, search_classes
from .specs import Registry, SpecError

__all__ = [
    "FORMAT_VERSION", "KEY_FUNCTIONS", "register_key_function", "farthest_point_sampling", "cut_patches",
    "glue_patches", "majority_labels", "BankSpec", "FeatureBank", "collect_features", "build_feature_bank",
    "load_bank", "retrieval_latency", "start_images", "key_function",
]

FORMAT_VERSION = 1
KIND = "fiancee-feature-bank"
INDEX_KINDS = ("flat", "ivf", "hnsw")
MODES = ("patch", "global")


# ----------------------------------------------------------------------------------------------
# Key functions (global mode): features after the key stage [B, C, H, W] -> keys [B, D].
# Named, so a saved bank says which one it was built with and a loaded bank uses the same one.

def _pool(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def key(h: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(h.float(), size).flatten(1)  # [B, C * size * size]

    return key


# Key functions are named like tasks (fiancee.specs): a built-in name, package.module:attr naming a
# callable, or an entry point of group fiancee.key_functions; a bank stores the spec it was built with.
KEY_FUNCTIONS = Registry("key function", "fiancee.key_functions", "a callable [B, C, H, W] -> [B, D]")
KEY_FUNCTIONS.register("mean", _pool(1))  # channel means: appearance, no layout
KEY_FUNCTIONS.register("pool2", _pool(2))  # 2x2 average pooling keeps the coarse layout (pose) as well
KEY_FUNCTIONS.register("flatten", lambda h: h.float().flatten(1))


def register_key_function(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Add a key function for global mode (S1.2.1 uses head angles + expression codes as keys).

    A bank built with it stores ``name``; a fresh process must register it again, or name it
    ``package.module:attr`` (resolved wherever the module is importable).
    """
    if not name or not callable(fn):
        raise ValueError("a key function needs a name and a callable [B, C, H, W] -> [B, D]")
    KEY_FUNCTIONS.register(name, fn)


def key_function(spec: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The key function ``spec`` names (registered name, ``module:attr`` or entry point)."""
    fn = KEY_FUNCTIONS.lookup(spec)
    if not callable(fn):
        raise SpecError(f"key function {spec!r} names a {type(fn).__name__}; expected {KEY_FUNCTIONS.expect}")
    return fn


# ----------------------------------------------------------------------------------------------
# Farthest-point sampling (S1.1.1, ref. [20]).

@torch.no_grad()
def farthest_point_sampling(points: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``k`` points of ``points [N, D]`` chosen greedily, each the farthest (L2) from
    those already chosen; the first is drawn with ``seed``. Returns all N indices when ``k >= N``.

    The chosen set covers the key space evenly, so near-duplicate keys (S1.1.1: "redundancy in the
    key space is rather probable") are dropped first.
    """
    if points.dim() != 2:
        raise ValueError(f"points must be [N, D]; got {list(points.shape)}")
    n = points.shape[0]
    if k <= 0:
        raise ValueError(f"k must be positive; got {k}")
    if k >= n:
        return torch.arange(n)
    x = points.float()
    start = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = start
    min_d = ((x - x[start]) ** 2).sum(1)  # [N] squared distance to the chosen set
    for i in range(1, k):
        nxt = int(torch.argmax(min_d))
        chosen[i] = nxt
        min_d = torch.minimum(min_d, ((x - x[nxt]) ** 2).sum(1))
    return chosen


# ----------------------------------------------------------------------------------------------
# Patches.

def _check_grid(shape: Sequence[int], grid: tuple[int, int], what: str) -> tuple[int, int]:
    h, w = shape[-2:]
    gh, gw = grid
    if gh <= 0 or gw <= 0 or h % gh or w % gw:
        raise ValueError(f"{what} of size {h}x{w} cannot be cut into a {gh}x{gw} grid of equal patches")
    return h // gh, w // gw


def cut_patches(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, gh * gw, C, H/gh, W/gw]``, patches in row-major grid order."""
    b, c = x.shape[:2]
    gh, gw = grid
    ph, pw = _check_grid(x.shape, grid, "a feature map")
    x = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, ph, pw]
    return x.reshape(b, gh * gw, c, ph, pw)


def glue_patches(patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`cut_patches`: ``[B, gh * gw, C, ph, pw]`` -> ``[B, C, gh * ph, gw * pw]``."""
    b, g, c, ph, pw = patches.shape
    gh, gw = grid
    if g != gh * gw:
        raise ValueError(f"{g} patches do not fill a {gh}x{gw} grid")
    x = patches.reshape(b, gh, gw, c, ph, pw).permute(0, 3, 1, 4, 2, 5)  # [B, C, gh, ph, gw, pw]
    return x.reshape(b, c, gh * ph, gw * pw)


def majority_labels(label: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Class of every grid cell = its majority label: one-hot ``[B, L, H, W]`` -> ``[B, gh * gw]``.

    Average pooling of the one-hot map gives each label's share of the cell; the largest share wins
    (ties go to the lower label index).
    """
    _check_grid(label.shape, grid, "a label map")
    share = F.adaptive_avg_pool2d(label.float(), grid)  # [B, L, gh, gw]
    return share.argmax(1).flatten(1)  # [B, gh * gw]


# ----------------------------------------------------------------------------------------------
# FAISS indexes.

_FAISS = None


def _faiss():
    global _FAISS
    if _FAISS is None:
        from .extras import require

        _FAISS = require("faiss", "the feature bank")  # one line naming fiancee[bank] when FAISS is missing
    return _FAISS


def _make_index(keys: np.ndarray, kind: str):
    """An exact flat L2 index by default; IVF or HNSW (approximate) for large banks."""
    faiss = _faiss()
    n, d = keys.shape
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
    elif kind == "ivf":
        nlist = max(1, int(np.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        index.train(keys)
        index.nprobe = min(nlist, 8)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32)
        index.hnsw.efSearch = 64
    else:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
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
        faiss.write_index(index, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_index(path: Path, ntotal: int, d: int):
    """Read a FAISS index holding ``ntotal`` keys of dimension ``d`` (what the manifest and the entries say),
    its header checked before FAISS allocates what it claims (:func:`fiancee.core.search.read_index`)."""
    return read_index(_faiss(), path, ntotal, d, claimed_by="the bank's manifest and entries hold")


def _check_manifest(manifest: dict, source: Path) -> dict[int, int]:
    """The manifest's fields a loader relies on, type-checked; returns the per-class counts."""
    if manifest["mode"] not in MODES:
        raise ValueError(f"{source}: field 'mode' must be one of {MODES}; got {manifest['mode']!r}")
    pcc = manifest["per_class_counts"]
    if not isinstance(pcc, dict) or not all(isinstance(k, str) and k.lstrip("-").isdigit() and isinstance(v, int)
                                             and not isinstance(v, bool) and v >= 0 for k, v in pcc.items()):
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
        raise ValueError(f"{path}: manifest.json says keys are {manifest.get('key_dim')!r}-dimensional; "
                         f"entries.safetensors holds {d}-dimensional keys")
    if sum(counts.values()) != n or manifest.get("entries", n) != n:
        raise ValueError(f"{path}: manifest.json's per_class_counts add up to {sum(counts.values())} entries "
                         f"(entries: {manifest.get('entries')!r}), but entries.safetensors holds {n}")
    for name in ("values", "classes", "source", "cell", "rgb"):
        if t[name].dim() == 0 or int(t[name].shape[0]) != n:
            raise ValueError(f"{path}/entries.safetensors: {name} has {list(t[name].shape)[:1]} rows; keys have {n}")
    classes = t["classes"]
    start = 0
    for c in sorted(counts):
        span = classes[start:start + counts[c]]
        if span.numel() and not bool((span == c).all()):
            raise ValueError(f"{path}: manifest.json gives class {c} {counts[c]} entries from row {start}, "
                             "but entries.safetensors holds other classes there (counts disagree with entries)")
        start += counts[c]
    key_shape = manifest.get("key_shape")
    if key_shape is not None and manifest["mode"] == "patch":
        grid = manifest.get("grid") or [1, 1]
        want = (key_shape[0] * (key_shape[1] // grid[0]) * (key_shape[2] // grid[1])) if len(key_shape) == 3 else None
        if want is not None and want != d:
            raise ValueError(f"{path}: keys are {d}-dimensional; the manifest's key_shape {key_shape} and grid {grid} "
                             f"give {want}")
    return n, d


# ----------------------------------------------------------------------------------------------
# The bank.

@dataclass
class BankSpec:
    """How a bank is built. ``grid`` is the patch grid on the key-stage features (patch mode);
    ``max_per_class`` caps every class after farthest-point sampling (global mode: the whole bank)."""

    mode: str = "patch"
    key_stage: int = 1
    value_stage: int = 2
    grid: tuple[int, int] = (4, 4)
    max_per_class: int = 512
    key_function: str = "pool2"
    index: str = "flat"
    fps_seed: int = 0

    def __post_init__(self):
        if len(tuple(self.grid)) != 2 or min(int(g) for g in self.grid) < 1:
            raise ValueError(f"grid must be two positive counts (rows, columns) like (4, 4); got {self.grid!r}")
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        if self.mode not in MODES:
            raise ValueError(f"bank mode must be one of {MODES}; got {self.mode!r}")
        if self.index not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}; got {self.index!r}")
        if self.max_per_class <= 0:
            raise ValueError(f"max entries per class must be positive; got {self.max_per_class}")
        if self.mode == "global":
            key_function(self.key_function)


@dataclass
class FeatureBank:
    """Keys, values and FAISS indexes; :meth:`guide` is the callable the exits take (``guide(h, cond)``).

    Entries are stored sorted by class, so class ``c`` owns rows ``offsets[c] : offsets[c] + counts[c]``
    and a hit at row ``i`` of class ``c``'s index is entry ``offsets[c] + i``.
    """

    manifest: dict
    keys: torch.Tensor  # [N, D] float32
    values: torch.Tensor  # patch: [N, C_value, ph, pw]; global: [N, 3, H, W]
    classes: torch.Tensor  # [N] int64 (0 when the task has no label maps)
    source: torch.Tensor  # [N] which bank input the entry came from
    cell: torch.Tensor  # [N] grid cell of the entry (patch mode; 0 in global mode)
    rgb: torch.Tensor  # [N, 3, rh, rw]: the backbone's image of the entry (patch: the cell's pixels)
    indexes: dict = field(default_factory=dict)  # "all" and class ids -> FAISS index
    _device_values: dict = field(default_factory=dict, repr=False)

    # -- description ------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.manifest["mode"]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.manifest["grid"])

    @property
    def label_channels(self) -> int | None:
        return self.manifest.get("label_channels")

    @property
    def guide_spec(self) -> GuideSpec:
        if self.mode == "patch":
            return GuideSpec("first", int(self.values.shape[1]))
        return GuideSpec("every", int(self.values.shape[1]))

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def offsets(self) -> dict[int, tuple[int, int]]:
        """Class -> (first row, count). Read from the manifest once: every search needs it, and at batch 1
        the per-call work around FAISS is most of a retrieval's time."""
        counts = self.manifest["per_class_counts"]
        cached = self.__dict__.get("_offsets")
        if cached is None or cached[0] is not counts:
            out, start = {}, 0
            for c, n in sorted((int(c), int(n)) for c, n in counts.items()):
                out[c] = (start, n)
                start += n
            cached = (counts, out)
            self.__dict__["_offsets"] = cached
        return cached[1]

    # -- retrieval --------------------------------------------------------------------------
    def query_keys(self, h: torch.Tensor) -> torch.Tensor:
        """Key-stage features ``[B, C, H, W]`` -> query keys ``[B, Q, D]`` (Q = grid cells, or 1)."""
        want = tuple(self.manifest["key_shape"])
        if tuple(h.shape[1:]) != want:
            raise ValueError(f"the bank expects key-stage features [B, {', '.join(map(str, want))}] "
                             f"(stage {self.manifest['key_stage']}); got {list(h.shape)}")
        if self.mode == "patch":
            return cut_patches(h.float(), self.grid).flatten(2)  # [B, G, C * ph * pw]
        return key_function(self.manifest["key_function"])(h)[:, None]  # [B, 1, D]

    def query_classes(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Class of every query ``[B, Q]``: majority label per grid cell, or 0 without label maps."""
        q = self.grid[0] * self.grid[1] if self.mode == "patch" else 1
        lc = self.label_channels
        if self.mode == "global" or lc is None:
            return torch.zeros(batch, q, dtype=torch.long)
        if cond is None or cond.dim() != 4 or cond.shape[1] < lc:
            raise ValueError(f"this bank searches per semantic class: the condition must start with the "
                             f"{lc}-channel label map; got {None if cond is None else list(cond.shape)}")
        return majority_labels(cond[:, :lc], self.grid).cpu()

    @torch.no_grad()
    def search(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Entry index of the nearest key for every query ``[B, Q]`` (int64, CPU)."""
        return self.search_with_macs(h, cond)[0]

    @torch.no_grad()
    def search_with_macs(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`search`, and the MACs every input's queries cost ``[B]`` (float64, CPU).

        A distance between a query and a key of dimension D is counted as D MACs (``torch.utils.flop_counter``
        cannot see FAISS, so the pipeline adds these): a flat index computes one per key it holds, so a query
        costs ``entries x D`` (the entries of the class index it searches, with label maps); IVF and HNSW count
        the distances FAISS reports having computed (``indexIVF_stats.ndis``, plus ``nlist`` distances to the
        coarse centroids per query for IVF; ``hnsw_stats.ndis``), shared evenly by the queries of one call.
        """
        ids, macs, _ = self.search_with_distances(h, cond)
        return ids, macs

    @torch.no_grad()
    def search_with_distances(self, h: torch.Tensor, cond: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`search_with_macs`, and the L2 distance of every query key to the entry it retrieved
        ``[B, Q]`` (float32, CPU): what FAISS returned with the ids, no second search (paper Fig. 10 plots
        the routed exit against it)."""
        queries = self.query_keys(h).detach().to("cpu", torch.float32)  # [B, Q, D]
        b, q, d = queries.shape
        flat = queries.reshape(b * q, d).numpy()
        classes, starts = None, {}
        if not (self.mode == "global" or self.label_channels is None):
            classes = self.query_classes(cond, b).reshape(-1).numpy()
            starts = {c: start for c, (start, _) in self.offsets().items()}
        # A class the bank never saw searches every key (documented in docs/bank.md).
        found, macs, dist = search_classes(_faiss(), self.indexes, starts, flat, classes, d)  # per query
        return (torch.from_numpy(found).view(b, q), torch.from_numpy(macs).view(b, q).sum(1),
                torch.from_numpy(np.sqrt(np.maximum(dist, 0))).view(b, q))

    def search_macs_bound(self) -> int:
        """MACs of one input's search with flat indexes in the worst case: every query against the largest
        index it may search (exact for a bank without classes). Approximate indexes: the same bound
        (they compute fewer distances; :meth:`search_with_macs` gives their measured count)."""
        q = self.grid[0] * self.grid[1] if self.mode == "patch" else 1
        reachable = [i for k, i in self.indexes.items() if k != "all"]
        # The whole-bank index serves only classes without their own index (or banks without classes).
        if self.mode == "global" or self.label_channels is None or any(
                c not in self.indexes for c in range(int(self.label_channels))):
            reachable.append(self.indexes["all"])
        return q * max(int(i.ntotal) for i in reachable) * int(self.keys.shape[1])

    def _values_on(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._device_values:
            self._device_values[key] = self.values.to(device)
        return self._device_values[key]

    def assemble(self, ids: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """The guide tensor for entry indices ``ids [B, Q]``."""
        values = self._values_on(torch.device(device))
        picked = values.index_select(0, ids.reshape(-1).to(values.device))
        if self.mode == "patch":
            b = ids.shape[0]
            return glue_patches(picked.view(b, -1, *values.shape[1:]), self.grid)  # [B, C_value, Hv, Wv]
        return picked  # [B, 3, H, W]

    def guide(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The callable the exits take: key-stage features (+ condition) -> guide tensor on ``h``'s device."""
        return self.assemble(self.search(h, cond), h.device)

    def start_images(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The RGB "start images" of Fig. S12: every cell filled with the backbone's pixels of the
        entry it retrieved (patch mode), or the retrieved image (global mode). ``[B, 3, H, W]``."""
        ids = self.search(h, cond)
        picked = self.rgb.index_select(0, ids.reshape(-1))
        if self.mode == "patch":
            return glue_patches(picked.view(ids.shape[0], -1, *self.rgb.shape[1:]), self.grid)
        return picked

    def to(self, device: str | torch.device) -> "FeatureBank":
        """Keep the values on ``device`` and, with CUDA and a GPU build of FAISS, the indexes too."""
        device = torch.device(device)
        self._values_on(device)
        if device.type == "cuda":
            self.indexes = {k: _to_gpu(v) for k, v in self.indexes.items()}
        return self

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the bank folder whole (:func:`fiancee.io.atomic_folder`): built in a hidden sibling and
        swapped in once complete, so a killed build never leaves half a bank; a folder of another kind
        is never replaced."""
        path = Path(path)
        with atomic_folder(path, kind=KIND, what="feature bank", overwrite=overwrite) as tmp:
            save_tensors(tmp / "entries.safetensors", {
                "keys": self.keys, "values": self.values, "classes": self.classes, "source": self.source,
                "cell": self.cell, "rgb": self.rgb,
            })
            cpu = getattr(_faiss(), "index_gpu_to_cpu", None)
            for name, index in self.indexes.items():
                if cpu is not None and type(index).__name__.startswith("Gpu"):
                    index = cpu(index)
                _write_index(index, tmp / ("index_all.faiss" if name == "all" else f"index_class_{name}.faiss"))
            write_json(tmp / "manifest.json", self.manifest)
        return path


def _backbone_fingerprint(backbone) -> str:
    return tensor_fingerprint(backbone.state_dict())


@read_whole_folder("manifest.json")  # a save swapping the folder mid-load makes it load again
def load_bank(path: str | os.PathLike, backbone, device: str | torch.device | None = None) -> FeatureBank:
    """Read a bank folder and check it was built from ``backbone``'s weights (else a ValueError)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no feature bank at {path} (build one with `fiancee build-bank`)")
    manifest = read_manifest(resolve_inside(path, "manifest.json"), kind=KIND, version_key="format_version",
                             version=FORMAT_VERSION, what="feature bank manifest",
                             required=("backbone_fingerprint", "mode", "per_class_counts"),
                             hint="; rebuild it with `fiancee build-bank`")
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
    bank = FeatureBank(manifest=manifest, keys=t["keys"], values=t["values"], classes=t["classes"],
                       source=t["source"], cell=t["cell"], rgb=t["rgb"], indexes=indexes)
    if device is not None:
        bank.to(device)
    return bank


# ----------------------------------------------------------------------------------------------
# Building.

@torch.no_grad()
def collect_features(backbone, inputs: tuple[torch.Tensor, ...], key_stage: int, value_stage: int,
                     batch_size: int = 64, progress: bool = False, device: str | torch.device = "cpu"):
    """Run the backbone once over ``inputs``: features after the key stage, after the value stage,
    the images, and the condition (CPU tensors). Stages count from 1."""
    n = inputs[0].shape[0]
    if not 1 <= key_stage <= value_stage <= backbone.num_stages:
        raise ValueError(f"need 1 <= key stage <= value stage <= {backbone.num_stages}; got {key_stage}, {value_stage}")
    keys, values, images, conds = [], [], [], []
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="bank features", unit="batch", dynamic_ncols=True)
    for s in starts:
        f = backbone.features(*(x[s : s + batch_size].to(device) for x in inputs), taps=(key_stage, value_stage),
                              image=True)
        keys.append(f.taps[key_stage].float().cpu())
        values.append(f.taps[value_stage].float().cpu())
        images.append(f.image.float().cpu())
        conds.append(None if f.cond is None else f.cond.cpu())
    cond_all = None if conds[0] is None else torch.cat(conds)
    return torch.cat(keys), torch.cat(values), torch.cat(images), cond_all


def build_feature_bank(backbone, inputs: tuple[torch.Tensor, ...], spec: BankSpec, *, label_channels: int | None = None,
                       task: str | None = None, population: dict | None = None, batch_size: int = 64,
                       progress: bool = False, device: str | torch.device = "cpu") -> FeatureBank:
    """Populate a bank from ``inputs`` (S1.1.1: once, before training the exits), cut redundancy
    with farthest-point sampling per class, and index it."""
    t0 = time.perf_counter()
    hk, hv, images, cond = collect_features(backbone, inputs, spec.key_stage, spec.value_stage, batch_size, progress, device)
    n = hk.shape[0]
    if spec.mode == "patch":
        grid = spec.grid
        kp = cut_patches(hk, grid)  # [N, G, Ck, ph, pw]
        vp = cut_patches(hv, grid)  # [N, G, Cv, vh, vw]
        rp = cut_patches(images, grid)  # [N, G, 3, rh, rw]
        g = kp.shape[1]
        keys = kp.flatten(2).reshape(n * g, -1)  # [N * G, D]
        values = vp.reshape(n * g, *vp.shape[2:])
        rgb = rp.reshape(n * g, *rp.shape[2:])
        source = torch.arange(n).repeat_interleave(g)
        cell = torch.arange(g).repeat(n)
        if label_channels is not None:
            classes = majority_labels(cond[:, :label_channels], grid).reshape(-1)  # [N * G]
        else:
            classes = torch.zeros(n * g, dtype=torch.long)
    else:
        keys = key_function(spec.key_function)(hk)  # [N, D]
        values = images  # [N, 3, H, W]: the RGB image is the value (S1.2.1)
        rgb = images
        source = torch.arange(n)
        cell = torch.zeros(n, dtype=torch.long)
        classes = torch.zeros(n, dtype=torch.long)
        label_channels = None  # one key per input: no per-patch classes

    # Farthest-point sampling per class, then entries sorted by class (see FeatureBank).
    chosen, counts = [], {}
    for c in torch.unique(classes).tolist():
        rows = torch.nonzero(classes == c).squeeze(1)
        pick = rows[farthest_point_sampling(keys[rows], spec.max_per_class, seed=spec.fps_seed + int(c))]
        chosen.append(pick)
        counts[str(int(c))] = int(pick.numel())
    sel = torch.cat(chosen)
    keys, values, rgb = keys[sel].contiguous(), values[sel].contiguous(), rgb[sel].contiguous()
    classes, source, cell = classes[sel], source[sel], cell[sel]

    np_keys = keys.numpy().astype(np.float32)
    indexes: dict = {"all": _make_index(np_keys, spec.index)}
    if label_channels is not None:
        start = 0
        for c in sorted(int(k) for k in counts):
            m = counts[str(c)]
            indexes[c] = _make_index(np.ascontiguousarray(np_keys[start : start + m]), spec.index)
            start += m

    manifest = {
        "kind": "fiancee-feature-bank", "format_version": FORMAT_VERSION, "task": task, "mode": spec.mode,
        "key_stage": spec.key_stage, "value_stage": spec.value_stage,
        "grid": list(spec.grid) if spec.mode == "patch" else None,
        "key_function": spec.key_function if spec.mode == "global" else None,
        "key_shape": list(hk.shape[1:]), "key_dim": int(keys.shape[1]), "value_shape": list(values.shape[1:]),
        "label_channels": label_channels, "index": spec.index, "max_per_class": spec.max_per_class,
        "fps_seed": spec.fps_seed, "entries": int(keys.shape[0]), "candidates": int(n * (g if spec.mode == "patch" else 1)),
        "per_class_counts": counts, "fallback": "index_all for classes without entries",
        "backbone_class": type(backbone).__name__, "backbone_fingerprint": _backbone_fingerprint(backbone),
        "population": population or {"inputs": n}, "build_seconds": round(time.perf_counter() - t0, 2),
    }
    return FeatureBank(manifest=manifest, keys=keys, values=values, classes=classes, source=source, cell=cell,
                       rgb=rgb, indexes=indexes)


# ----------------------------------------------------------------------------------------------
# Latency and pictures.

@torch.no_grad()
def retrieval_latency(bank: FeatureBank, model, inputs_fn: Callable[[int], tuple[torch.Tensor, ...]] | None = None,
                      batch_sizes: Sequence[int] = (1, 32), reps: int = 50, warmup: int = 5) -> list[dict]:
    """Median wall time of retrieval (keys -> FAISS -> guide tensor) next to the median time of the
    smallest route (exit 1, route index 0; guide given as a tensor) in the same process, per batch size.

    The paper reports up to 5 ms, 16% of its smallest branch, on a P40 (S1.1.1). Timed by
    :func:`fiancee.timing.time_ms` (CUDA events on a GPU).
    """
    from .timing import time_ms

    check_counts(reps=reps)
    model = model.eval()
    device = next(model.parameters()).device
    out = []
    for bs in batch_sizes:
        inputs = tuple(x.to(device) for x in (inputs_fn(bs) if inputs_fn else model.backbone.example_inputs(bs)))
        f = model.backbone.features(*inputs, taps=(model.key_stage,))
        h, cond = f.taps[model.key_stage], f.cond
        g = bank.guide(h, cond)

        warmup = min(warmup, reps)
        r_ms = time_ms(lambda: bank.guide(h, cond), device, reps, warmup)["median_ms"]
        s_ms = time_ms(lambda: model(*inputs, exit=0, guide=g), device, reps, warmup)["median_ms"]
        out.append({"batch_size": bs, "retrieval_ms": round(r_ms, 4), "smallest_route_ms": round(s_ms, 4),
                    "fraction": round(r_ms / s_ms, 4), "device": str(device), "entries": len(bank)})
    return out


@torch.no_grad()
def start_images(bank: FeatureBank, backbone, inputs: tuple[torch.Tensor, ...], key_stage: int | None = None):
    """(backbone images, start images) for ``inputs``: the Fig. S12 pair."""
    key_stage = key_stage or bank.manifest["key_stage"]
    f = backbone.features(*inputs, taps=(key_stage,), image=True)
    return f.image, bank.start_images(f.taps[key_stage], f.cond)
