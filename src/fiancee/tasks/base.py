"""The Task interface: everything the pipeline needs to know about one generator and its data.

A task names a pretrained staged generator, says where its exits go and how wide their branches
start, draws inputs for it, and says what "comparing two images" means for it (the paper measures
an exit's quality as LPIPS between the exit's image and the backbone's image for the same input).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn.functional as F

from ..staged import StagedGenerator

__all__ = ["Task", "SPLITS", "WEIGHTS_ENV", "weights_dir", "find_weights", "check_split"]

SPLITS = ("train", "test")

# The trained artifacts this project commits (the fashion backbone and classifier, the faces exits)
# ship inside the package, so a checkout, an editable install and a wheel all read the same files.
WEIGHTS_ENV = "FIANCEE_WEIGHTS"


def weights_dir(*parts: str) -> Path:
    """Where a trained artifact is read from: ``$FIANCEE_WEIGHTS/<parts>`` when that variable is set,
    else the copy shipped in the package (``fiancee/weights/<parts>``). The path may not exist."""
    root = os.environ.get(WEIGHTS_ENV)
    base = Path(root) if root else Path(__file__).resolve().parents[1] / "weights"
    return base.joinpath(*parts)


def find_weights(*parts: str) -> Path:
    """:func:`weights_dir`, or a one-line ``FileNotFoundError`` naming the folder when it is absent."""
    path = weights_dir(*parts)
    if not path.exists():
        where = f"${WEIGHTS_ENV} is {os.environ[WEIGHTS_ENV]!r}" if os.environ.get(WEIGHTS_ENV) else \
            f"set {WEIGHTS_ENV} to a folder holding {'/'.join(parts)}"
        raise FileNotFoundError(f"no trained artifact {'/'.join(parts)!r} at {path} ({where})")
    return path


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    return split


class Task(ABC):
    """One generator + its inputs. Subclasses fill the class attributes and the abstract methods."""

    name: str
    description: str
    exits: tuple[int, ...]  # exits attach after these stages (1-based)
    default_scale: str  # branch width scale factor SF (paper S1.1.1)
    default_min_channels: int  # channel floor of the scale rule
    image_size: tuple[int, int]  # (H, W) of the backbone's output
    image_channels: int = 3

    @abstractmethod
    def load_backbone(self, device: str | torch.device = "cpu") -> StagedGenerator:
        """The pretrained backbone, in eval mode, with gradients off."""

    @abstractmethod
    def sample_inputs(self, n: int, seed: int, split: str = "test") -> tuple[torch.Tensor, ...]:
        """``n`` generator inputs; the same (n, seed, split) always gives the same tensors.

        ``split`` separates the inputs used to fit things (predictor, bank) from those used to
        evaluate them, so the two never overlap.
        """

    def reference(self, backbone: StagedGenerator, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The image every exit is compared with: the backbone's own output (paper section 4)."""
        with torch.no_grad():
            return backbone(*inputs)

    def to_lpips_images(self, x: torch.Tensor) -> torch.Tensor:
        """Images as LPIPS should see them: ``[B, 3, H', W']`` in [-1, 1], at least 64 px a side.

        LPIPS's AlexNet has too little spatial extent below 64 px, so smaller images are resized up
        (bilinear); gray images are repeated to 3 channels.
        """
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 1 or 3, H, W]; got {list(x.shape)}")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        h, w = x.shape[-2:]
        if min(h, w) < 64:
            factor = 64 / min(h, w)
            x = F.interpolate(x, size=(round(h * factor), round(w * factor)), mode="bilinear", align_corners=False)
        return x.clamp(-1, 1)

    def describe(self) -> dict:
        return {
            "name": self.name, "description": self.description, "exits": list(self.exits),
            "default_scale": self.default_scale, "default_min_channels": self.default_min_channels,
            "image_size": list(self.image_size), "image_channels": self.image_channels,
        }
