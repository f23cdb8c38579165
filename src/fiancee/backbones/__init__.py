"""Reference backbones, each one implementation configurable from tiny to paper scale."""

from __future__ import annotations

import torch

from ..staged import StagedGenerator
from .g2d import G2DConfig, G2DGenerator
from .oasis import OASISConfig, OASISGenerator

__all__ = ["BACKBONES", "SIZES", "build_backbone", "OASISConfig", "OASISGenerator", "G2DConfig", "G2DGenerator"]

BACKBONES = {
    "oasis": (OASISConfig, OASISGenerator),
    "g2d": (G2DConfig, G2DGenerator),
}
SIZES = ("paper", "tiny")  # each config class's constructors of the same names


def build_backbone(name: str, size: str = "paper", device: torch.device | str = "cpu") -> StagedGenerator:
    """A reference backbone with random weights; ``size`` is ``"paper"`` or ``"tiny"``.

    ``device="meta"`` builds it without allocating weights (for counting MACs).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    config_cls, model_cls = BACKBONES[name]
    if size not in SIZES:
        raise ValueError(f"size must be 'paper' or 'tiny'; got {size!r}")
    config = config_cls.paper() if size == "paper" else config_cls.tiny()
    with torch.device(device):
        return model_cls(config)
