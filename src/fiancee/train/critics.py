"""Discriminators for branch training, with their adversarial losses (paper eq. 1, 3, 4).

Each exit branch competes with its own discriminator (S1.1.2, S1.2.2). A critic bundles a
discriminator network with the loss it is trained with, behind one interface:

- ``d_loss(real, fake, inputs)``: the discriminator's loss (real = the backbone's image);
- ``g_loss(fake, inputs, real)``: ``(adversarial, feature_matching)`` for the branch.

Kinds:

- ``dcgan``: the standard DCGAN discriminator (strided convs, BatchNorm, LeakyReLU 0.2) with the
  non-saturating BCE loss. Used for ``faces``, whose pretrained generator ships without its
  discriminator: each branch gets a fresh one of the kind the generator was trained with.
- ``patch``: a multi-scale PatchGAN (the MegaPortraits recipe): the same patch discriminator at full
  and half resolution, hinge loss, and feature matching on its intermediate activations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DCGANDiscriminator", "PatchDiscriminator", "MultiScalePatchDiscriminator", "Critic", "build_critic"]


class DCGANDiscriminator(nn.Module):
    """Strided 4x4 convs halving the resolution down to 4x4, then a 4x4 conv to one logit."""

    def __init__(self, image_size: int, channels: int = 3, width: int = 64, max_width: int = 512):
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"DCGAN discriminator needs a power-of-two image size >= 8; got {image_size}")
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        size, c = image_size // 2, width
        while size > 4:
            c_out = min(c * 2, max_width)
            layers += [nn.Conv2d(c, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
            size, c = size // 2, c_out
        self.features = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, 1, 4, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(x)
        return self.out(x).flatten(1), feats  # [B, 1], activations for feature matching


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``layers`` strided 4x4 convs, instance-free (spectral norm keeps it tame)."""

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = []
        c_in, c = channels, width
        for i in range(layers):
            stride = 2 if i < layers - 1 else 1
            blocks.append(nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Conv2d(c_in, c, 4, stride, 1)), nn.LeakyReLU(0.2)))
            c_in, c = c, min(c * 2, 512)
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Conv2d(c_in, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return self.out(x), feats  # [B, 1, h, w] patch logits


class MultiScalePatchDiscriminator(nn.Module):
    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3, scales: int = 2):
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminator(channels, width, layers) for _ in range(scales))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, feats = [], []
        for i, d in enumerate(self.scales):
            xi = x if i == 0 else F.avg_pool2d(x, 2 ** i)
            lg, ft = d(xi)
            logits.append(lg)
            feats += ft
        return logits, feats


def _as_list(x):
    return x if isinstance(x, list) else [x]


class Critic(nn.Module):
    """A discriminator plus its loss (``bce`` non-saturating or ``hinge``)."""

    def __init__(self, net: nn.Module, loss: str):
        super().__init__()
        if loss not in ("bce", "hinge"):
            raise ValueError(f"adversarial loss must be 'bce' or 'hinge'; got {loss!r}")
        self.net = net
        self.loss = loss

    def forward(self, x: torch.Tensor):
        return self.net(x)

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor, inputs=None) -> torch.Tensor:
        real_logits, _ = self.net(real)
        fake_logits, _ = self.net(fake.detach())
        total = real.new_zeros(())
        for r, f in zip(_as_list(real_logits), _as_list(fake_logits)):
            if self.loss == "bce":
                total = total + F.binary_cross_entropy_with_logits(r, torch.ones_like(r)) \
                    + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))
            else:
                total = total + F.relu(1 - r).mean() + F.relu(1 + f).mean()
        return total

    def g_loss(self, fake: torch.Tensor, inputs=None, real: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        fake_logits, fake_feats = self.net(fake)
        adv = fake.new_zeros(())
        for f in _as_list(fake_logits):
            adv = adv + (F.binary_cross_entropy_with_logits(f, torch.ones_like(f)) if self.loss == "bce" else -f.mean())
        fm = fake.new_zeros(())
        if real is not None:
            with torch.no_grad():
                _, real_feats = self.net(real)
            fm = sum(F.l1_loss(a, b) for a, b in zip(fake_feats, real_feats)) / max(len(fake_feats), 1)
        return adv, fm


def build_critic(kind: str, image_size: int, channels: int = 3, width: int = 64) -> Critic:
    """A fresh critic of ``kind`` (``dcgan`` or ``patch``) for images of ``image_size`` px."""
    if kind == "dcgan":
        return Critic(DCGANDiscriminator(image_size, channels, width), "bce")
    if kind == "patch":
        layers = max(2, min(4, int(math.log2(image_size)) - 3))
        return Critic(MultiScalePatchDiscriminator(channels, width, layers), "hinge")
    raise ValueError(f"unknown critic kind {kind!r}; expected 'dcgan' or 'patch'")
