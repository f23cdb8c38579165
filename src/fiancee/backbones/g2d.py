"""The MegaPortraits G2D decoder (Drobyshev et al., 2022) as a staged generator.

Paper setting (Table S9, S1.2.1): a 1x1 conv from the 1536-channel volume projection to 512
channels at 64x64; six ResBlock2D at 512; three upsampling ResBlock2D 512 -> 256 -> 128 -> 64
reaching 512x512 (upsample first, then the block); ReLU, 3x3 conv to 3, tanh. 213 GMACs.
ResBlock2D = BatchNorm, h-swish, 3x3 conv, BatchNorm, h-swish, 3x3 conv, plus a 1x1 conv skip
when the channel count changes. Exits after blocks 2, 4 and 6 (branch lengths 7, 5, 3).

Structural assumptions (not given by the paper, chosen to reproduce its GMACs; docs/architecture.md):
the first conv of a block maps fin -> fout and the second fout -> fout; upsampling is bilinear x2,
in the backbone as in the branches; the stem is a plain 1x1 conv (the projection of the 96x16
volume to 1536 channels happens upstream).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_spatial
from ..staged import StagedGenerator

__all__ = ["G2DConfig", "G2DGenerator", "ResBlock2D"]


@dataclass
class G2DConfig:
    in_channels: int = 1536
    in_size: int = 64
    width: int = 512
    num_res: int = 6
    up_channels: tuple[int, ...] = (256, 128, 64)
    exits: tuple[int, ...] = (2, 4, 6)

    def __post_init__(self):
        self.up_channels = tuple(int(c) for c in self.up_channels)
        self.exits = tuple(int(e) for e in self.exits)

    @property
    def out_size(self) -> int:
        return self.in_size * 2 ** len(self.up_channels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def paper(cls) -> "G2DConfig":
        return cls()

    @classmethod
    def tiny(cls) -> "G2DConfig":
        return cls(in_channels=12, in_size=8, width=16, num_res=4, up_channels=(12, 8), exits=(2, 4))


class ResBlock2D(nn.Module):
    """BN, h-swish, 3x3 conv, BN, h-swish, 3x3 conv; 1x1 conv skip when the width changes."""

    def __init__(self, fin: int, fout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(fin),
            nn.Hardswish(),
            nn.Conv2d(fin, fout, 3, padding=1),
            nn.BatchNorm2d(fout),
            nn.Hardswish(),
            nn.Conv2d(fout, fout, 3, padding=1),
        )
        self.skip = nn.Conv2d(fin, fout, 1) if fin != fout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class _Stage(nn.Module):
    def __init__(self, block: nn.Module, upsample: bool):
        super().__init__()
        self.block = block
        self.upsample = upsample

    def forward(self, h: torch.Tensor, cond: None = None) -> torch.Tensor:
        if self.upsample:
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        return self.block(h)


class _Head(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 3, 3, padding=1)

    def forward(self, h: torch.Tensor, cond: None = None) -> torch.Tensor:
        return torch.tanh(self.conv(F.relu(h)))


class G2DGenerator(StagedGenerator):
    """Input: the projected feature volume ``[B, in_channels, in_size, in_size]``."""

    def __init__(self, config: G2DConfig | None = None):
        super().__init__()
        self.config = config = config or G2DConfig()
        self.proj = nn.Conv2d(config.in_channels, config.width, 1)
        widths = [config.width] * (config.num_res + 1) + list(config.up_channels)
        ups = [False] * config.num_res + [True] * len(config.up_channels)
        self.stage_channels = [(widths[i], widths[i + 1]) for i in range(len(ups))]
        self.stages = nn.ModuleList(_Stage(ResBlock2D(a, b), up) for (a, b), up in zip(self.stage_channels, ups))
        self.head = _Head(widths[-1])

    input_names = ("volume",)

    def check_inputs(self, *inputs: torch.Tensor) -> int:
        batch = super().check_inputs(*inputs)
        (volume,) = inputs
        cfg = self.config
        if volume.dim() != 4 or volume.shape[1] != cfg.in_channels:
            raise ValueError(f"volume must be [B, {cfg.in_channels}, H, W]; got {list(volume.shape)}")
        check_spatial(volume, (cfg.in_size, cfg.in_size), "volume")
        return batch

    def stem(self, volume: torch.Tensor) -> tuple[torch.Tensor, None]:
        cfg = self.config
        if volume.dim() != 4 or volume.shape[1] != cfg.in_channels:
            raise ValueError(f"volume must be [B, {cfg.in_channels}, H, W]; got {list(volume.shape)}")
        return self.proj(volume), None

    def make_branch_stage(self, index: int, in_channels: int, out_channels: int) -> nn.Module:
        return _Stage(ResBlock2D(in_channels, out_channels), upsample=self.stages[index].upsample)

    def make_branch_head(self, in_channels: int) -> nn.Module:
        return _Head(in_channels)

    def example_inputs(self, batch_size: int = 1, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        cfg = self.config
        return (torch.randn(batch_size, cfg.in_channels, cfg.in_size, cfg.in_size, device=device),)
