"""Discriminators for branch training, with their adversarial losses (paper eq. 1, 3, 4).

Each exit branch competes with its own discriminator (S1.1.2, S1.2.2). A critic bundles a
discriminator network with the loss it is trained with, behind one interface:

- ``d_loss(real, fake, inputs)``: the discriminator's loss (real = the backbone's image);
- ``g_loss(fake, inputs, real)``: ``(adversarial, feature_matching)`` for the branch.

Kinds, registered in :data:`CRITICS` (a new kind is one builder function with ``@CRITICS.add("name")``,
here or in any module imported before training; a task names its kind in ``Task.critic_kind``):

- ``dcgan``: the standard DCGAN discriminator (strided convs, BatchNorm, LeakyReLU 0.2) with the
  non-saturating BCE loss. Used for ``faces``, whose pretrained generator ships without its
  discriminator: each branch gets a fresh one of the kind the generator was trained with.
- ``patch``: a multi-scale PatchGAN (the MegaPortraits recipe): the same patch discriminator at full
  and half resolution, hinge loss, and feature matching on its intermediate activations.
- ``oasis`` (paper eq. 3, S1.1.2): a copy of the backbone's own discriminator, weights included
  (``Task.load_discriminator``: for ``fashion`` the U-Net segmenter it was trained with), trained with
  OASIS's loss conditioned on the label map: N+1-class cross-entropy, class-balanced on the real
  (backbone) image, "fake" on the branch's image, plus LabelMix consistency
  (:mod:`fiancee.train.backbone`'s pieces, the backbone's own recipe).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..specs import Registry

__all__ = [
    "DCGANDiscriminator",
    "PatchDiscriminator",
    "MultiScalePatchDiscriminator",
    "Critic",
    "OASISCritic",
    "CRITICS",
    "CRITIC_KINDS",
    "build_critic",
]

# A builder is called as ``builder(image_size, channels, width, discriminator=..., label_index=...,
# lambda_labelmix=..., seed=...)`` (what :func:`build_critic` is given) and ignores what it does not use.
CRITICS = Registry("critic", "fiancee.critics", "a critic builder (image_size, channels, width, **options) -> critic")


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
            blocks.append(
                nn.Sequential(
                    nn.utils.parametrizations.spectral_norm(nn.Conv2d(c_in, c, 4, stride, 1)), nn.LeakyReLU(0.2)
                )
            )
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
            xi = x if i == 0 else F.avg_pool2d(x, 2**i)
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
                total = (
                    total
                    + F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                    + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))
                )
            else:
                total = total + F.relu(1 - r).mean() + F.relu(1 + f).mean()
        return total

    def g_loss(
        self, fake: torch.Tensor, inputs=None, real: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
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


class OASISCritic(nn.Module):
    """OASIS's adversarial loss (Sushko et al. 2021) around an N+1-class segmenter ``net``.

    ``label_index``: which of the generator's inputs is the one-hot label map ``[B, L, H, W]``.
    Discriminator: the real (backbone) image's pixels -> their class (balanced cross-entropy), the
    branch's pixels -> "fake", and LabelMix: on a mix of the two by a mask of random classes, the logits
    must equal the same mix of its logits on each (MSE, weight ``lambda_labelmix``). Branch: its pixels
    should be segmented as the label map's classes (balanced cross-entropy). No feature matching.
    The LabelMix masks are drawn from ``seed`` and a counter kept as a buffer, so a resumed run (the
    counter is in the checkpoint) draws the masks an uninterrupted one would have drawn.
    """

    def __init__(self, net: nn.Module, label_index: int, lambda_labelmix: float = 10.0, seed: int = 0):
        super().__init__()
        self.net = net
        self.label_index = int(label_index)
        self.lambda_labelmix = float(lambda_labelmix)
        self.seed = int(seed)
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _label_map(self, inputs, image: torch.Tensor) -> torch.Tensor:
        if inputs is None or len(inputs) <= self.label_index:
            raise ValueError(
                f"the oasis critic needs the generator's inputs with the label map at position {self.label_index}"
            )
        label = inputs[self.label_index]  # [B, L, h, w] one-hot
        if label.dim() != 4:
            raise ValueError(f"the oasis critic expects a one-hot label map [B, L, H, W]; got {list(label.shape)}")
        if label.shape[-2:] != image.shape[-2:]:
            label = F.interpolate(label.float(), size=image.shape[-2:], mode="nearest")
        return label.argmax(1)  # [B, H, W]

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor, inputs=None) -> torch.Tensor:
        from ..backbones.oasis_discriminator import FAKE
        from .backbone import balanced_cross_entropy, labelmix_mask

        lmap = self._label_map(inputs, real)
        fake = fake.detach()
        out_real, out_fake = self.net(real), self.net(fake)
        loss = balanced_cross_entropy(out_real, lmap) + F.cross_entropy(out_fake, torch.full_like(lmap, FAKE))
        if self.lambda_labelmix > 0:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.draws))
            self.draws += 1
            mask = labelmix_mask(lmap.cpu(), g).to(real.device)  # [B, 1, H, W]
            out_mix = self.net(mask * real + (1 - mask) * fake)
            loss = loss + self.lambda_labelmix * F.mse_loss(out_mix, mask * out_real + (1 - mask) * out_fake)
        return loss

    def g_loss(
        self, fake: torch.Tensor, inputs=None, real: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from .backbone import balanced_cross_entropy

        return balanced_cross_entropy(self.net(fake), self._label_map(inputs, fake)), fake.new_zeros(())


@CRITICS.add("dcgan")
def dcgan_critic(image_size: int, channels: int = 3, width: int = 64, **options) -> Critic:
    """A fresh DCGAN discriminator with the non-saturating BCE loss."""
    return Critic(DCGANDiscriminator(image_size, channels, width), "bce")


@CRITICS.add("patch")
def patch_critic(image_size: int, channels: int = 3, width: int = 64, **options) -> Critic:
    """A fresh two-scale PatchGAN with the hinge loss (the MegaPortraits recipe)."""
    layers = max(2, min(4, int(math.log2(image_size)) - 3))
    return Critic(MultiScalePatchDiscriminator(channels, width, layers), "hinge")


@CRITICS.add("oasis")
def oasis_critic(
    image_size: int,
    channels: int = 3,
    width: int = 64,
    *,
    discriminator: nn.Module | None = None,
    label_index: int | None = None,
    lambda_labelmix: float = 10.0,
    seed: int = 0,
    **options,
) -> OASISCritic:
    """A trainable copy of ``discriminator`` (the backbone's own, weights and all) with OASIS's loss, reading
    the label map at ``label_index`` of the generator's inputs (paper eq. 3)."""
    if discriminator is None or label_index is None:
        raise ValueError(
            "the oasis critic copies the backbone's discriminator and reads its label map: "
            "pass discriminator= and label_index="
        )
    net = copy.deepcopy(discriminator).train().requires_grad_(True)
    return OASISCritic(net, label_index, lambda_labelmix, seed)


# The built-in kinds, for compatibility (the registry is the source: it also holds kinds registered later).
CRITIC_KINDS = tuple(CRITICS.in_order())


def build_critic(
    kind: str,
    image_size: int,
    channels: int = 3,
    width: int = 64,
    *,
    discriminator: nn.Module | None = None,
    label_index: int | None = None,
    lambda_labelmix: float = 10.0,
    seed: int = 0,
) -> "Critic | OASISCritic":
    """A critic of the registered ``kind`` for images of ``image_size`` px: ``dcgan`` and ``patch`` are fresh;
    ``oasis`` is a trainable copy of ``discriminator`` (the backbone's own, weights and all) reading the label
    map at ``label_index`` of the generator's inputs."""
    if not isinstance(kind, str) or kind not in CRITICS:
        raise ValueError(f"unknown critic kind {kind!r}; expected one of {tuple(CRITICS.in_order())}")
    return CRITICS.get(kind)(
        image_size,
        channels,
        width,
        discriminator=discriminator,
        label_index=label_index,
        lambda_labelmix=lambda_labelmix,
        seed=seed,
    )
