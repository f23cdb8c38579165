"""The fashion task: OASIS semantic image synthesis (the paper's pipeline) on Fashion-MNIST label maps.

The generator (OASIS, :mod:`fiancee.backbones.oasis`) takes the one-hot map (:mod:`.data`) and a per-image noise
vector broadcast over it, and draws the garment's texture inside the silhouette.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...backbones.oasis import OASISGenerator
from ...backbones.oasis_discriminator import UNetDiscriminator
from ...io import read_json
from ..base import InputSpec, Task, check_split, weights_dir
from .data import CLASS_NAMES, SIZE, FashionData, load_split, one_hot
from .weights import (
    DISCRIMINATOR_FILE,
    classifier_folder,
    default_weights_dir,
    load_fashion_backbone,
    load_fashion_discriminator,
)

__all__ = ["FashionTask"]


class FashionTask(Task):
    name = "fashion"
    description = "OASIS semantic image synthesis on Fashion-MNIST label maps (32x32, 11 classes)"
    attach_after = (1, 2, 3)
    default_scale = "1/4"
    default_min_channels = 8
    image_size = (SIZE, SIZE)
    image_channels = 3
    inputs = (InputSpec("label", "label_map"), InputSpec("z", "noise"))
    # Patches searched per garment class (OASIS mode, S1.1.1): 250 maps x 8 fixed noises.
    bank_defaults = {"mode": "patch", "grid": (4, 4), "max_per_class": 512, "n": 250, "noises": 8}

    def __init__(self, data: str | os.PathLike | None = None, weights: str | os.PathLike | None = None):
        self.data = data
        self.weights = weights
        self._z_dim: int | None = None
        self._cache: dict[str, FashionData] = {}

    def pretrained_exits(self) -> Path:
        return weights_dir(self.name, "exits")

    def _folder(self) -> Path:
        return Path(self.weights) if self.weights is not None else weights_dir(self.name)

    @property
    def critic_kind(self) -> str:
        """``oasis`` (copies of the backbone's own U-Net discriminator, eq. 3) when the backbone folder
        holds its discriminator; ``dcgan`` (a fresh critic, :meth:`critic_note`) otherwise."""
        return "oasis" if (self._folder() / DISCRIMINATOR_FILE).is_file() else "dcgan"

    def critic_note(self) -> str | None:
        if self.critic_kind == "oasis":
            return None
        return (
            f"note: the fashion backbone folder {self._folder()} holds no {DISCRIMINATOR_FILE}: the exits' critics "
            "are fresh DCGAN discriminators, not copies of the backbone's own (paper eq. 3); export one from the "
            "backbone's training run with `fiancee export-backbone RUN`"
        )

    def load_discriminator(self, device: str | torch.device = "cpu") -> UNetDiscriminator | None:
        return load_fashion_discriminator(self.weights, device)

    def real_images(self, n: int, seed: int, split: str = "test") -> torch.Tensor:
        """The ``n`` real garments whose label maps ``sample_inputs(n, seed, split)`` uses, as RGB
        ``[n, 3, 32, 32]``."""
        return self.split(split).images[self.sample_indices(n, seed, split)].repeat(1, 3, 1, 1)

    def label_accuracy(self, images: torch.Tensor, n: int, seed: int, split: str = "test") -> float | None:
        """Accuracy of the label classifier (:func:`classifier_folder`: beside the backbone, else the shipped
        one) on generated garments for ``sample_inputs(n, seed, split)``; None when there is none."""
        from .classifier import accuracy, load_classifier

        if images.shape[0] != n:
            raise ValueError(f"expected the {n} images generated for these inputs; got {images.shape[0]}")
        folder = classifier_folder(self._folder())
        if folder is None:
            return None
        if getattr(self, "_classifier", None) is None:
            self._classifier = load_classifier(folder)
        return accuracy(self._classifier, images, self.split(split).classes[self.sample_indices(n, seed, split)])

    def split(self, split: str) -> FashionData:
        if split not in self._cache:
            self._cache[split] = load_split(check_split(split), self.data)
        return self._cache[split]

    def z_dim(self) -> int:
        if self._z_dim is None:
            folder = Path(self.weights) if self.weights is not None else default_weights_dir()
            self._z_dim = int(read_json(folder / "config.json")["generator"]["z_dim"])
        return self._z_dim

    def load_backbone(self, device: str | torch.device = "cpu") -> OASISGenerator:
        model = load_fashion_backbone(self.weights, device)
        self._z_dim = model.config.z_dim
        return model

    def sample_indices(self, n: int, seed: int, split: str = "test") -> torch.Tensor:
        """Which images of the split the ``n`` label maps come from (a seeded permutation)."""
        total = len(self.split(split))
        if not 0 < n <= total:
            raise ValueError(f"n must lie in 1..{total} (the {split} split's size); got {n}")
        return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]

    def sample_inputs(self, n: int, seed: int, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """(one-hot label maps ``[n, 11, 32, 32]``, noise ``[n, z_dim]``) from real label maps of the split."""
        idx = self.sample_indices(n, seed, split)
        label = one_hot(self.split(split).maps[idx])
        z = torch.randn(n, self.z_dim(), generator=torch.Generator().manual_seed(seed + 1))
        return label, z

    shifts = {
        "classes": "label maps of some garment classes only (classes:0,2,4,6: T-shirt/top, Pullover, Coat, "
        "Shirt; 0..9 in Fashion-MNIST's order)"
    }

    def shifted_inputs(self, n: int, seed: int, split: str, shift: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``classes:a,b,...``: ``n`` label maps drawn (seeded) from the split's items of those classes only,
        with noise as :meth:`sample_inputs` draws it."""
        from ..base import parse_shift

        _, arg = parse_shift(self, shift)
        try:
            wanted = sorted({int(c) for c in (arg or "").split(",") if c.strip()})
        except ValueError:
            wanted = []
        if not wanted or not all(0 <= c < len(CLASS_NAMES) for c in wanted):
            raise ValueError(f"shift classes:A,B,... needs class numbers in 0..{len(CLASS_NAMES) - 1}; got {shift!r}")
        data = self.split(split)
        pool = torch.nonzero(torch.isin(data.classes, torch.tensor(wanted))).flatten()
        if not 0 < n <= pool.numel():
            raise ValueError(
                f"n must lie in 1..{pool.numel()} (the {split} split's items of classes {wanted}); got {n}"
            )
        idx = pool[torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(seed))[:n]]
        z = torch.randn(n, self.z_dim(), generator=torch.Generator().manual_seed(seed + 1))
        return one_hot(data.maps[idx]), z
