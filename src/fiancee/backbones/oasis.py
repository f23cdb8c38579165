"""The OASIS generator (Sushko et al., 2021) as a staged generator, tiny to paper scale.

Paper setting (Cityscapes, 256x512): 35 label channels + a 64-d noise vector broadcast over the map
give a 99-channel condition, fed to the first conv and to every SPADE layer; a 3x3 conv 99 -> 1024 at
8x16; six SPADE ResBlocks 1024, 1024, 1024, 512, 256, 128, 64 with x2 nearest upsampling between
blocks; LeakyReLU, 3x3 conv to 3, tanh. 319 GMACs. Exits after blocks 1-4 (S1.1.1, Table S8).

Stage ``i`` is ResBlock ``i`` followed by the x2 upsampling (none after the last block), so a
branch copy of a stage changes resolution exactly as the backbone does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..checks import check_batch, check_one_hot, check_spatial, check_tensor
from ..staged import StagedGenerator

__all__ = ["OASISConfig", "OASISGenerator", "SPADE", "SPADEResBlock", "resize_condition"]


@dataclass
class OASISConfig:
    label_channels: int = 35
    z_dim: int = 64
    channels: tuple[int, ...] = (1024, 1024, 1024, 512, 256, 128, 64)
    out_size: tuple[int, int] = (256, 512)
    spade_hidden: int = 128
    channel_unit: int = 64  # OASIS writes every width as a multiple of 64 (the paper scales this base)
    spectral: bool = True
    exits: tuple[int, ...] = (1, 2, 3, 4)

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.out_size = tuple(int(s) for s in self.out_size)
        self.exits = tuple(int(e) for e in self.exits)
        blocks = len(self.channels) - 1
        if blocks < 2:
            raise ValueError(f"OASIS needs at least 3 channel entries (2 blocks); got {self.channels}")
        div = 2 ** (blocks - 1)
        if any(s % div for s in self.out_size):
            raise ValueError(f"out_size {self.out_size} must be divisible by 2^(blocks-1) = {div}")

    @property
    def init_size(self) -> tuple[int, int]:
        div = 2 ** (len(self.channels) - 2)
        return (self.out_size[0] // div, self.out_size[1] // div)

    @property
    def cond_channels(self) -> int:
        return self.label_channels + self.z_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def paper(cls) -> "OASISConfig":
        """The Cityscapes generator of the paper (Table 1: 319 GMACs)."""
        return cls()

    @classmethod
    def tiny(cls) -> "OASISConfig":
        """For tests: 5 labels, 8-d noise, 4 blocks to 32x32, a few channels."""
        return cls(
            label_channels=5,
            z_dim=8,
            channels=(64, 64, 32, 16, 8),
            out_size=(32, 32),
            spade_hidden=16,
            channel_unit=8,
            exits=(1, 2, 3),
        )


def _sn(module: nn.Module, enabled: bool) -> nn.Module:
    return spectral_norm(module) if enabled else module


def resize_condition(cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``cond`` at ``x``'s resolution ``[B, C_cond, H, W]`` (nearest), as is when it is there already.

    Nearest resizing to the same size copies every pixel, so skipping it changes no value: a block resizes the
    label map once and its two or three SPADE layers read that one copy.
    """
    if tuple(cond.shape[-2:]) == tuple(x.shape[-2:]):
        return cond
    return F.interpolate(cond, size=x.shape[-2:], mode="nearest")


class SPADE(nn.Module):
    """Parameter-free batch norm modulated by the condition: norm(x) * (1 + gamma) + beta."""

    def __init__(self, channels: int, cond_channels: int, hidden: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        actv = self.shared(resize_condition(cond, x))
        fused = self._modules.get("gamma_beta")
        if fused is not None:
            gamma, beta = fused(actv).chunk(2, dim=1)
            return torch.addcmul(beta, self.norm(x), 1 + gamma)
        return self.norm(x) * (1 + self.gamma(actv)) + self.beta(actv)

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        """Run gamma and beta as one convolution (:mod:`fiancee.rewrites`): both read the same activations, and a
        narrow branch's modulation convs (8-12 outputs each) run far slower per MAC than one with both outputs.
        The same sums; the separate convs stay, unused, so the module's weights keep their names."""
        fused = nn.Conv2d(
            self.gamma.in_channels, 2 * self.gamma.out_channels, self.gamma.kernel_size, padding=self.gamma.padding
        )
        fused.weight.copy_(torch.cat([self.gamma.weight, self.beta.weight]))
        fused.bias.copy_(torch.cat([self.gamma.bias, self.beta.bias]))
        self.gamma_beta = fused


class SPADEResBlock(nn.Module):
    """OASIS ResBlock: middle width min(fin, fout), LeakyReLU 0.2 before each conv, learned shortcut."""

    def __init__(self, fin: int, fout: int, cond_channels: int, hidden: int, spectral: bool = True):
        super().__init__()
        fmid = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.norm_0 = SPADE(fin, cond_channels, hidden)
        self.conv_0 = _sn(nn.Conv2d(fin, fmid, 3, padding=1), spectral)
        self.norm_1 = SPADE(fmid, cond_channels, hidden)
        self.conv_1 = _sn(nn.Conv2d(fmid, fout, 3, padding=1), spectral)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, cond_channels, hidden)
            self.conv_s = _sn(nn.Conv2d(fin, fout, 1, bias=False), spectral)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # Every SPADE of the block works at x's resolution (its convs keep the size): one resize for all of them.
        cond = resize_condition(cond, x)
        x_s = self.conv_s(self.norm_s(x, cond)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, cond), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, cond), 0.2))
        return x_s + dx


class _Stage(nn.Module):
    def __init__(self, block: nn.Module, upsample: bool):
        super().__init__()
        self.block = block
        self.upsample = upsample

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block(h, cond)
        return F.interpolate(h, scale_factor=2, mode="nearest") if self.upsample else h


class _Head(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 3, 3, padding=1)

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.conv(F.leaky_relu(h, 0.2)))


class OASISGenerator(StagedGenerator):
    """Inputs: a one-hot label map ``[B, L, H, W]`` and a noise vector ``[B, z_dim]``."""

    def __init__(self, config: OASISConfig | None = None):
        super().__init__()
        self.config = config = config or OASISConfig()
        self.channel_unit = config.channel_unit
        ch, cc = config.channels, config.cond_channels
        self.fc = nn.Conv2d(cc, ch[0], 3, padding=1)
        n = len(ch) - 1
        self.stages = nn.ModuleList(
            _Stage(SPADEResBlock(ch[i], ch[i + 1], cc, config.spade_hidden, config.spectral), upsample=i < n - 1)
            for i in range(n)
        )
        self.stage_channels = [(ch[i], ch[i + 1]) for i in range(n)]
        self.head = _Head(ch[-1])

    input_names = ("label map", "z")

    def check_inputs(self, *inputs: torch.Tensor) -> int:
        if len(inputs) != 2:
            raise ValueError(f"expected 2 inputs (label map, z); got {len(inputs)}")
        label, z = inputs
        cfg = self.config
        # The label map first: its shape says most clearly what kind of input was meant.
        check_one_hot(label, cfg.label_channels)
        check_spatial(label, cfg.out_size, "label map")
        check_tensor(z, "z")
        if z.dim() != 2 or z.shape[1] != cfg.z_dim:
            raise ValueError(f"z must be [B, {cfg.z_dim}]; got {list(z.shape)}")
        return check_batch(inputs, self.input_names, finite_known=("label map",), dtype=self.weights_dtype())

    def condition(self, label: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Label map + noise broadcast over it (OASIS's 3D noise with one vector per image)."""
        cfg = self.config
        if label.dim() != 4 or label.shape[1] != cfg.label_channels:
            raise ValueError(f"label map must be [B, {cfg.label_channels}, H, W] one-hot; got {list(label.shape)}")
        if z.dim() != 2 or z.shape != (label.shape[0], cfg.z_dim):
            raise ValueError(f"z must be [B={label.shape[0]}, {cfg.z_dim}]; got {list(z.shape)}")
        zmap = z[:, :, None, None].expand(-1, -1, *label.shape[-2:])
        return torch.cat([label, zmap], dim=1)  # [B, L + z_dim, H, W]

    def stem(self, label: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond = self.condition(label, z)
        x = F.interpolate(cond, size=self.config.init_size, mode="nearest")
        return self.fc(x), cond

    def make_branch_stage(self, index: int, in_channels: int, out_channels: int) -> nn.Module:
        cfg = self.config
        # SPADE hidden width stays at the backbone's (128): this is what reproduces Table 1.
        block = SPADEResBlock(in_channels, out_channels, cfg.cond_channels, cfg.spade_hidden, cfg.spectral)
        return _Stage(block, upsample=self.stages[index].upsample)

    def make_branch_head(self, in_channels: int) -> nn.Module:
        return _Head(in_channels)

    def example_inputs(self, batch_size: int = 1, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        cfg = self.config
        idx = torch.randint(cfg.label_channels, (batch_size, *cfg.out_size), device=device)
        label = F.one_hot(idx, cfg.label_channels).permute(0, 3, 1, 2).float()
        return label, torch.randn(batch_size, cfg.z_dim, device=device)
