"""The OASIS discriminator (Sushko et al., 2021, section 3.1): a U-Net segmenter with N + 1 classes.

Instead of one real/fake score per image, the discriminator labels every pixel with one of the N
semantic classes (real image) or the extra class "fake". Its encoder is a stack of residual
down-sampling blocks, its decoder residual up-sampling blocks fed with the encoder's features of the
same resolution (skip connections), and a 1x1 conv gives the ``N + 1`` logits per pixel.
Spectral norm on every conv, as in OASIS. Channel 0 is "fake"; channel ``c + 1`` is semantic class ``c``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["UNetDiscriminator", "FAKE"]

FAKE = 0  # index of the extra "fake" class in the discriminator's output


class _ResBlock(nn.Module):
    """LeakyReLU -> conv3x3 -> LeakyReLU -> conv3x3, plus a 1x1 shortcut; optional x2 down or up."""

    def __init__(self, fin: int, fout: int, resample: str | None):
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up'; got {resample!r}")
        self.resample = resample
        self.conv_0 = spectral_norm(nn.Conv2d(fin, fout, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(fout, fout, 3, padding=1))
        self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        dx = self.conv_1(F.leaky_relu(self.conv_0(F.leaky_relu(x, 0.2)), 0.2))
        out = self.conv_s(x) + dx
        if self.resample == "down":
            out = F.avg_pool2d(out, 2)
        return out


class UNetDiscriminator(nn.Module):
    """``[B, in_channels, H, W]`` -> logits ``[B, num_classes + 1, H, W]`` (channel 0 = fake).

    ``channels`` lists the encoder widths, one x2 down-sampling each: (32, 64, 128) on 32x32 images
    reaches 4x4. H and W must be divisible by ``2 ** len(channels)``.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, channels: Sequence[int] = (32, 64, 128)):
        super().__init__()
        if int(num_classes) < 1 or int(in_channels) < 1:
            raise ValueError(f"num_classes and in_channels must be positive; got {num_classes}, {in_channels}")
        channels = [int(c) for c in channels]
        if not channels:
            raise ValueError("channels must list at least one encoder width")
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.channels = channels
        widths = [in_channels, *channels]
        self.encoder = nn.ModuleList(_ResBlock(widths[i], widths[i + 1], "down") for i in range(len(channels)))
        # Decoder block j undoes encoder block (depth - 1 - j); from the second on it also takes the
        # encoder's output of the same resolution (skip connection, concatenated).
        dec = []
        c_in = channels[-1]
        for j in range(len(channels)):
            c_out = channels[max(len(channels) - 2 - j, 0)]
            skip = channels[len(channels) - 1 - j] if j > 0 else 0
            dec.append(_ResBlock(c_in + skip, c_out, "up"))
            c_in = c_out
        self.decoder = nn.ModuleList(dec)
        self.out = spectral_norm(nn.Conv2d(c_in, num_classes + 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"discriminator expects [B, {self.in_channels}, H, W]; got {list(x.shape)}")
        div = 2 ** len(self.channels)
        if x.shape[-1] % div or x.shape[-2] % div:
            raise ValueError(f"image size {list(x.shape[-2:])} must be divisible by {div}")
        feats = []
        h = x
        for block in self.encoder:
            h = block(h)
            feats.append(h)  # resolutions H/2, H/4, ...
        for j, block in enumerate(self.decoder):
            if j > 0:
                h = torch.cat([h, feats[len(feats) - 1 - j]], dim=1)
            h = block(h)
        return self.out(h)  # [B, N + 1, H, W]

    def config(self) -> dict:
        """The constructor arguments (what an exported backbone folder records beside the weights)."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "channels": list(self.channels)}
