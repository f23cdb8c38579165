"""The feature bank itself (paper section 3.3, S1.1.1, S1.2.1): keys, values and FAISS indexes, the search
that turns key-stage features into entry ids (with its cost), and the guide tensor the exits take."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.search import search_classes
from ..exits import GuideSpec
from .folder import read_folder, write_folder
from .index import _faiss, _to_gpu
from .keys import key_function
from .patches import cut_patches, glue_patches, majority_labels

__all__ = ["FeatureBank", "load_bank", "start_images"]


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
            raise ValueError(
                f"the bank expects key-stage features [B, {', '.join(map(str, want))}] "
                f"(stage {self.manifest['key_stage']}); got {list(h.shape)}"
            )
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
            raise ValueError(
                f"this bank searches per semantic class: the condition must start with the "
                f"{lc}-channel label map; got {None if cond is None else list(cond.shape)}"
            )
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
    def search_with_distances(
        self, h: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`search_with_macs`, and the L2 distance of every query key to the entry it retrieved
        ``[B, Q]`` (float32, CPU): what FAISS returned with the ids, no second search (paper Fig. 10 plots
        the routed exit against it)."""
        queries = self.query_keys(h).detach().to("cpu", torch.float32)  # [B, Q, D]
        b, q, d = queries.shape
        flat = queries.reshape(b * q, d).numpy()
        finite = np.isfinite(flat)
        if not finite.all():  # FAISS would return id -1 for them, an IndexError further on
            raise ValueError(
                f"the key-stage features (stage {self.manifest['key_stage']}) given to the bank search "
                f"hold NaN or Inf ({int((~finite).sum())} of {finite.size} query-key values); "
                "expected finite numbers"
            )
        classes, starts = None, {}
        if not (self.mode == "global" or self.label_channels is None):
            classes = self.query_classes(cond, b).reshape(-1).numpy()
            starts = {c: start for c, (start, _) in self.offsets().items()}
        # A class the bank never saw searches every key (documented in docs/bank.md).
        found, macs, dist = search_classes(_faiss(), self.indexes, starts, flat, classes, d)  # per query
        return (
            torch.from_numpy(found).view(b, q),
            torch.from_numpy(macs).view(b, q).sum(1),
            torch.from_numpy(np.sqrt(np.maximum(dist, 0))).view(b, q),
        )

    def search_macs_bound(self) -> int:
        """MACs of one input's search with flat indexes in the worst case: every query against the largest
        index it may search (exact for a bank without classes). Approximate indexes: the same bound
        (they compute fewer distances; :meth:`search_with_macs` gives their measured count)."""
        q = self.grid[0] * self.grid[1] if self.mode == "patch" else 1
        reachable = [i for k, i in self.indexes.items() if k != "all"]
        # The whole-bank index serves only classes without their own index (or banks without classes).
        if (
            self.mode == "global"
            or self.label_channels is None
            or any(c not in self.indexes for c in range(int(self.label_channels)))
        ):
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
    def save_pretrained(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the bank folder whole (:func:`fiancee.bank.folder.write_folder`): built in a hidden sibling
        and swapped in once complete, so a killed build never leaves half a bank; a folder of another kind
        is never replaced. :meth:`from_pretrained` reads it."""
        return write_folder(
            path,
            self.manifest,
            {
                "keys": self.keys,
                "values": self.values,
                "classes": self.classes,
                "source": self.source,
                "cell": self.cell,
                "rgb": self.rgb,
            },
            self.indexes,
            overwrite=overwrite,
        )

    save = save_pretrained  # the name before save_pretrained / from_pretrained became the pair of every object

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, backbone, device: str | torch.device | None = None
    ) -> "FeatureBank":
        """Read a bank folder and check it was built from ``backbone``'s weights (:func:`load_bank`)."""
        return load_bank(path, backbone, device)


def load_bank(path: str | os.PathLike, backbone, device: str | torch.device | None = None) -> FeatureBank:
    """Read a bank folder and check it was built from ``backbone``'s weights (else a ValueError)
    (:func:`fiancee.bank.folder.read_folder`)."""
    manifest, t, indexes = read_folder(path, backbone)
    bank = FeatureBank(
        manifest=manifest,
        keys=t["keys"],
        values=t["values"],
        classes=t["classes"],
        source=t["source"],
        cell=t["cell"],
        rgb=t["rgb"],
        indexes=indexes,
    )
    if device is not None:
        bank.to(device)
    return bank


@torch.no_grad()
def start_images(bank: FeatureBank, backbone, inputs: tuple[torch.Tensor, ...], key_stage: int | None = None):
    """(backbone images, start images) for ``inputs``: the Fig. S12 pair."""
    key_stage = key_stage or bank.manifest["key_stage"]
    f = backbone.features(*inputs, taps=(key_stage,), image=True)
    return f.image, bank.start_images(f.taps[key_stage], f.cond)
