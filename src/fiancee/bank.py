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
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .exits import GuideSpec
from .io import load_tensors, read_manifest, save_tensors, tensor_fingerprint, write_json

__all__ = [
    "FORMAT_VERSION", "KEY_FUNCTIONS", "register_key_function", "farthest_point_sampling", "cut_patches",
    "glue_patches", "majority_labels", "BankSpec", "FeatureBank", "collect_features", "build_feature_bank",
    "build_bank", "load_bank", "retrieval_latency", "bank_latency", "start_images", "TASK_DEFAULTS", "bank_inputs",
]

FORMAT_VERSION = 1
INDEX_KINDS = ("flat", "ivf", "hnsw")
MODES = ("patch", "global")
# Bank inputs are drawn from a stream of the training split that exit training never draws from
# (its per-step seeds are small integers): an exact copy of a training input in the bank would teach
# the branches to copy the guide instead of generating (the retrieved value would be the target).
_BANK_STREAM = 10**12


# ----------------------------------------------------------------------------------------------
# Key functions (global mode): features after the key stage [B, C, H, W] -> keys [B, D].
# Named, so a saved bank says which one it was built with and a loaded bank uses the same one.

def _pool(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def key(h: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(h.float(), size).flatten(1)  # [B, C * size * size]

    return key


KEY_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": _pool(1),  # channel means: appearance, no layout
    "pool2": _pool(2),  # 2x2 average pooling keeps the coarse layout (pose) as well
    "flatten": lambda h: h.float().flatten(1),
}


def register_key_function(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Add a key function for global mode (S1.2.1 uses head angles + expression codes as keys)."""
    if not name or not callable(fn):
        raise ValueError("a key function needs a name and a callable [B, C, H, W] -> [B, D]")
    KEY_FUNCTIONS[name] = fn


def _key_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in KEY_FUNCTIONS:
        raise ValueError(f"unknown key function {name!r}; registered: {sorted(KEY_FUNCTIONS)}")
    return KEY_FUNCTIONS[name]


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

def _faiss():
    from .extras import require

    return require("faiss", "the feature bank")  # one line naming fiancee[bank] when FAISS is missing


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


def _read_index(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"bank index file missing: {path}")
    try:
        return _faiss().read_index(str(path))
    except RuntimeError as e:
        raise ValueError(f"{path} is not a readable FAISS index (truncated or corrupt?): {e}") from None


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
            _key_function(self.key_function)


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
        out, start = {}, 0
        for c, n in sorted((int(c), int(n)) for c, n in self.manifest["per_class_counts"].items()):
            out[c] = (start, n)
            start += n
        return out

    # -- retrieval --------------------------------------------------------------------------
    def query_keys(self, h: torch.Tensor) -> torch.Tensor:
        """Key-stage features ``[B, C, H, W]`` -> query keys ``[B, Q, D]`` (Q = grid cells, or 1)."""
        want = tuple(self.manifest["key_shape"])
        if tuple(h.shape[1:]) != want:
            raise ValueError(f"the bank expects key-stage features [B, {', '.join(map(str, want))}] "
                             f"(stage {self.manifest['key_stage']}); got {list(h.shape)}")
        if self.mode == "patch":
            return cut_patches(h.float(), self.grid).flatten(2)  # [B, G, C * ph * pw]
        return _key_function(self.manifest["key_function"])(h)[:, None]  # [B, 1, D]

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
        queries = self.query_keys(h).detach().to("cpu", torch.float32)  # [B, Q, D]
        b, q, d = queries.shape
        flat = queries.reshape(b * q, d).numpy()
        found = np.empty(b * q, dtype=np.int64)
        if self.mode == "global" or self.label_channels is None:
            found[:] = self.indexes["all"].search(flat, 1)[1][:, 0]
            return torch.from_numpy(found).view(b, q)
        cls = self.query_classes(cond, b).reshape(-1).numpy()
        spans = self.offsets()
        for c in np.unique(cls):
            rows = np.nonzero(cls == c)[0]
            if int(c) in spans and int(c) in self.indexes:
                start, _ = spans[int(c)]
                found[rows] = self.indexes[int(c)].search(np.ascontiguousarray(flat[rows]), 1)[1][:, 0] + start
            else:  # a class the bank never saw: nearest key of any class (documented in docs/bank.md)
                found[rows] = self.indexes["all"].search(np.ascontiguousarray(flat[rows]), 1)[1][:, 0]
        return torch.from_numpy(found).view(b, q)

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
        """Write the bank folder atomically: everything goes into a temporary sibling folder that
        is renamed to ``path`` once complete, so a killed build never leaves half a bank."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ValueError(f"{path} already exists; choose another --out or remove it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
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
            if path.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
                os.replace(path, trash / "bank")
                os.replace(tmp, path)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path


def _backbone_fingerprint(backbone) -> str:
    return tensor_fingerprint(backbone.state_dict())


def load_bank(path: str | os.PathLike, backbone, device: str | torch.device | None = None) -> FeatureBank:
    """Read a bank folder and check it was built from ``backbone``'s weights (else a ValueError)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no feature bank at {path} (build one with `fiancee build-bank`)")
    manifest = read_manifest(path / "manifest.json", kind="fiancee-feature-bank", version_key="format_version",
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
    t = load_tensors(path / "entries.safetensors")
    missing = {"keys", "values", "classes", "source", "cell", "rgb"} - set(t)
    if missing:
        raise ValueError(f"{path}/entries.safetensors lacks {sorted(missing)}")
    indexes: dict = {"all": _read_index(path / "index_all.faiss")}
    if manifest["mode"] == "patch" and manifest.get("label_channels") is not None:
        for c, n in manifest["per_class_counts"].items():
            if int(n) > 0:
                indexes[int(c)] = _read_index(path / f"index_class_{int(c)}.faiss")
    bank = FeatureBank(manifest=manifest, keys=t["keys"], values=t["values"], classes=t["classes"],
                       source=t["source"], cell=t["cell"], rgb=t["rgb"], indexes=indexes)
    if bank.indexes["all"].ntotal != len(bank):
        raise ValueError(f"{path}: index_all.faiss holds {bank.indexes['all'].ntotal} keys, entries hold {len(bank)}")
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
        h, cond = backbone.stem(*(x[s : s + batch_size].to(device) for x in inputs))
        for i, stage in enumerate(backbone.stages):
            h = stage(h, cond)
            if i + 1 == key_stage:
                keys.append(h.float().cpu())
            if i + 1 == value_stage:
                values.append(h.float().cpu())
        images.append(backbone.head(h, cond).float().cpu())
        conds.append(None if cond is None else cond.cpu())
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
        keys = _key_function(spec.key_function)(hk)  # [N, D]
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


# Task defaults: fashion searches patches per garment class (OASIS mode), faces one key per image
# (MegaPortraits mode). Sizes keep a CPU build under a minute.
TASK_DEFAULTS = {
    "fashion": {"mode": "patch", "grid": (4, 4), "max_per_class": 512, "n": 250, "noises": 8},
    "faces": {"mode": "global", "grid": (4, 4), "max_per_class": 1024, "n": 4096, "noises": 1},
}


def bank_inputs(task, n: int, noises: int, seed: int) -> tuple[tuple[torch.Tensor, ...], dict]:
    """The inputs a bank is populated from (training split only).

    Conditional tasks (label map + noise): ``n`` label maps x a fixed set of ``noises`` noise vectors
    (4.1: "500 semantic maps ... 100 different inputs using a fixed set of 3D noises"). Unconditional
    tasks: ``n`` noise samples.
    """
    if n <= 0 or noises <= 0:
        raise ValueError(f"bank population sizes must be positive; got n={n}, noises={noises}")
    first = task.sample_inputs(n, seed=_BANK_STREAM + seed, split="train")
    if len(first) == 1:
        return first, {"inputs": n, "split": "train", "seed": seed}
    label, z = first
    fixed = torch.randn(noises, z.shape[1], generator=torch.Generator().manual_seed(_BANK_STREAM + seed + 1))
    labels = label.repeat_interleave(noises, 0)  # [n * noises, L, H, W]
    zs = fixed.repeat(n, 1)  # [n * noises, z_dim]
    return (labels, zs), {"inputs": n * noises, "label_maps": n, "noises": noises, "split": "train", "seed": seed}


def build_bank(task_name: str, out: str | os.PathLike, *, mode: str | None = None, n: int | None = None,
               noises: int | None = None, grid: tuple[int, int] | None = None, max_per_class: int | None = None,
               key_function: str = "pool2", index: str = "flat", seed: int = 0, batch_size: int = 64,
               progress: bool = True, device: str = "cpu", data: str | None = None, weights: str | None = None,
               overwrite: bool = False) -> dict:
    """Build the bank of a task with its defaults (:data:`TASK_DEFAULTS`) and write it to ``out``;
    returns the manifest. Key stage = the task's first exit stage, value stage = the middle stage."""
    from .tasks import get_task

    if Path(out).exists() and not overwrite:
        raise ValueError(f"{out} already exists; choose another --out or remove it")
    _faiss()  # before minutes of feature extraction
    task = get_task(task_name, data=data, weights=weights)
    d = TASK_DEFAULTS.get(task_name, TASK_DEFAULTS["faces"])
    backbone = task.load_backbone(device)
    def given(value, default):  # None means "the task's default"; 0 is a value (and refused below)
        return default if value is None else value

    spec = BankSpec(
        mode=given(mode, d["mode"]), key_stage=task.exits[0], value_stage=max(task.exits[0], backbone.num_stages // 2),
        grid=tuple(given(grid, d["grid"])), max_per_class=given(max_per_class, d["max_per_class"]),
        key_function=key_function, index=index, fps_seed=seed,
    )
    inputs, population = bank_inputs(task, given(n, d["n"]), given(noises, d["noises"]), seed)
    lc = getattr(getattr(backbone, "config", None), "label_channels", None)
    bank = build_feature_bank(backbone, inputs, spec, label_channels=lc, task=task_name, population=population,
                              batch_size=batch_size, progress=progress, device=device)
    bank.save(out, overwrite=overwrite)
    return bank.manifest


# ----------------------------------------------------------------------------------------------
# Latency and pictures.

@torch.no_grad()
def retrieval_latency(bank: FeatureBank, model, inputs_fn: Callable[[int], tuple[torch.Tensor, ...]] | None = None,
                      batch_sizes: Sequence[int] = (1, 32), reps: int = 50, warmup: int = 5) -> list[dict]:
    """Median wall time of retrieval (keys -> FAISS -> guide tensor) next to the median time of the
    smallest route (exit 1, route index 0; guide given as a tensor) in the same process, per batch size.

    The paper reports up to 5 ms, 16% of its smallest branch, on a P40 (S1.1.1). Timed by
    :func:`fiancee.bench.time_ms` (CUDA events on a GPU).
    """
    from .bench import time_ms

    model = model.eval()
    device = next(model.parameters()).device
    out = []
    for bs in batch_sizes:
        inputs = tuple(x.to(device) for x in (inputs_fn(bs) if inputs_fn else model.backbone.example_inputs(bs)))
        h, cond = model.backbone.stem(*inputs)
        for i in range(model.key_stage):
            h = model.backbone.stages[i](h, cond)
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
    h, cond = backbone.stem(*inputs)
    hk = None
    for i, stage in enumerate(backbone.stages):
        h = stage(h, cond)
        if i + 1 == key_stage:
            hk = h
    return backbone.head(h, cond), bank.start_images(hk, cond)


def bank_latency(bank_path: str | os.PathLike, task_name: str, *, threads: int | None = 1, reps: int = 50,
                 batch_sizes: Sequence[int] = (1, 32), device: str = "cpu", data: str | None = None,
                 weights: str | None = None) -> dict:
    """:func:`retrieval_latency` of a bank folder against the task's smallest route (exits with the
    task's default scale, untrained: latency does not depend on the weights' values).

    ``threads`` fixes torch's and FAISS's thread counts for the measurement (1 = the real-time,
    batch-1 setting the paper assumes; on a shared CPU more threads mostly measure contention).
    """
    from .exits import ExitGenerator
    from .tasks import get_task

    task = get_task(task_name, data=data, weights=weights)
    backbone = task.load_backbone(device)
    bank = load_bank(bank_path, backbone, device=device)
    model = ExitGenerator(backbone, task.exits, task.default_scale, task.default_min_channels, guide=bank.guide_spec)
    model = model.to(device).eval()
    faiss = _faiss()
    old_torch, old_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    if threads is not None:
        if threads <= 0:
            raise ValueError(f"threads must be positive; got {threads}")
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    try:
        rows = retrieval_latency(bank, model, lambda b: task.sample_inputs(b, seed=0, split="test"),
                                 batch_sizes=batch_sizes, reps=reps)
    finally:
        torch.set_num_threads(old_torch)
        faiss.omp_set_num_threads(old_faiss)
    return {"task": task_name, "bank": str(bank_path), "mode": bank.mode, "entries": len(bank), "threads": threads,
            "scale": task.default_scale, "min_channels": task.default_min_channels, "results": rows}
