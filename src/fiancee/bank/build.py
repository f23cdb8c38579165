"""Building a bank from a backbone (paper S1.1.1: once, before training the exits): run the backbone over
the bank's inputs, cut keys and values (patches per grid cell, or one key per input), cut redundancy with
farthest-point sampling per class, sort the entries by class, and index them."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..core.folders import make_header
from .feature_bank import FeatureBank
from .index import INDEX_KINDS, _make_index
from .keys import key_function
from .manifest import FORMAT, KIND, MODES, _backbone_fingerprint
from .patches import cut_patches, majority_labels
from .sampling import farthest_point_sampling

__all__ = ["BankSpec", "collect_features", "build_feature_bank"]


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


@torch.no_grad()
def collect_features(
    backbone,
    inputs: tuple[torch.Tensor, ...],
    key_stage: int,
    value_stage: int,
    batch_size: int = 64,
    progress: bool = False,
    device: str | torch.device = "cpu",
):
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
        f = backbone.features(
            *(x[s : s + batch_size].to(device) for x in inputs), taps=(key_stage, value_stage), image=True
        )
        keys.append(f.taps[key_stage].float().cpu())
        values.append(f.taps[value_stage].float().cpu())
        images.append(f.image.float().cpu())
        conds.append(None if f.cond is None else f.cond.cpu())
    cond_all = None if conds[0] is None else torch.cat(conds)
    return torch.cat(keys), torch.cat(values), torch.cat(images), cond_all


def build_feature_bank(
    backbone,
    inputs: tuple[torch.Tensor, ...],
    spec: BankSpec,
    *,
    label_channels: int | None = None,
    task: str | None = None,
    population: dict | None = None,
    batch_size: int = 64,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> FeatureBank:
    """Populate a bank from ``inputs`` (S1.1.1: once, before training the exits), cut redundancy
    with farthest-point sampling per class, and index it."""
    t0 = time.perf_counter()
    hk, hv, images, cond = collect_features(
        backbone, inputs, spec.key_stage, spec.value_stage, batch_size, progress, device
    )
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
        **make_header(KIND, FORMAT),
        "task": task,
        "mode": spec.mode,
        "key_stage": spec.key_stage,
        "value_stage": spec.value_stage,
        "grid": list(spec.grid) if spec.mode == "patch" else None,
        "key_function": spec.key_function if spec.mode == "global" else None,
        "key_shape": list(hk.shape[1:]),
        "key_dim": int(keys.shape[1]),
        "value_shape": list(values.shape[1:]),
        "label_channels": label_channels,
        "index": spec.index,
        "max_per_class": spec.max_per_class,
        "fps_seed": spec.fps_seed,
        "entries": int(keys.shape[0]),
        "candidates": int(n * (g if spec.mode == "patch" else 1)),
        "per_class_counts": counts,
        "fallback": "index_all for classes without entries",
        "backbone_class": type(backbone).__name__,
        "backbone_fingerprint": _backbone_fingerprint(backbone),
        "population": population or {"inputs": n},
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    return FeatureBank(
        manifest=manifest, keys=keys, values=values, classes=classes, source=source, cell=cell, rgb=rgb, indexes=indexes
    )
