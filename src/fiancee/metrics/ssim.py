"""SSIM and MS-SSIM (Wang et al. 2003, ref. [80] of the paper), differentiable, with an explicit input
range. MS-SSIM is a term of the MegaPortraits branch loss (paper Eq. 4, ``L_MS-SSIM = 1 - MS-SSIM``).

Images are first mapped from their ``value_range`` to [0, 1]. Then, as in the reference
implementation (and pytorch-msssim, which the tests compare against): an 11-tap Gaussian window
(sigma 1.5) applied without padding ("valid"), C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1; per
scale the contrast-structure term ``cs``; between scales a 2x2 average pool;
MS-SSIM = prod_j max(cs_j, eps)^w_j (j < M) * max(ssim_M, eps)^w_M.

Small images. Five scales with an 11 px window need a shorter side above (11 - 1) * 2^4 = 160 px:
at the coarsest scale the window must still fit. For smaller images (the 64 px faces, 32 px
Fashion-MNIST of the quick presets) ``ms_ssim`` uses the largest number of scales M that fits,
``side > (win - 1) * 2^(M - 1)`` (64 px -> 3 scales, 32 px -> 2, 11..20 px -> 1 = plain SSIM), with
the first M standard weights renormalized to sum to 1. Pass ``scales=`` to fix M yourself.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["ssim", "ms_ssim", "MS_SSIM_WEIGHTS", "ms_ssim_scales"]

# Wang, Simoncelli, Bovik 2003, Table 1 (coarsest scale last).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_K1, _K2 = 0.01, 0.03
# Negative terms are clipped (as relu in the reference), but at a tiny positive value: the gradient
# of t^w at t = 0 is infinite for w < 1 and would turn a whole training step into NaN.
_EPS = 1e-6


def _window(win_size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    r = torch.arange(win_size, dtype=like.dtype, device=like.device) - (win_size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return g.view(1, 1, 1, win_size).repeat(channels, 1, 1, 1)  # [C, 1, 1, win]: depthwise, separable


def _blur(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    x = F.conv2d(x, win, groups=c)  # along W
    return F.conv2d(x, win.transpose(2, 3), groups=c)  # along H


def _ssim_cs(
    x: torch.Tensor, y: torch.Tensor, data_range: float, win: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel SSIM and contrast-structure, each [B, C]."""
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    mu_x, mu_y = _blur(x, win), _blur(y, win)
    var_x = _blur(x * x, win) - mu_x**2
    var_y = _blur(y * y, win) - mu_y**2
    cov = _blur(x * y, win) - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def _to_unit(
    x: torch.Tensor, y: torch.Tensor, value_range: tuple[float, float], win_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks, then both images mapped from ``value_range`` to [0, 1].

    SSIM's luminance term compares means, (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1): it assumes
    non-negative intensities and is not invariant to shifting them. So images are always brought to
    [0, 1] (data range 1) first, and the same picture gives the same SSIM in any representation.
    """
    if x.ndim != 4 or x.shape != y.shape:
        raise ValueError(
            f"expected two image batches [B, C, H, W] of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    if win_size % 2 != 1:
        raise ValueError(f"win_size must be odd, got {win_size}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(
            f"SSIM with an {win_size} px window needs images of at least {win_size} px, got {tuple(x.shape[-2:])}"
        )
    return (x - lo) / (hi - lo), (y - lo) / (hi - lo)


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
    win_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """SSIM per image, [B] (mean over channels and positions); 1 for identical images.

    ``value_range``: the range the images live in (default [-1, 1]); they are mapped to [0, 1].
    """
    x, y = _to_unit(x, y, value_range, win_size)
    s, _ = _ssim_cs(x, y, 1.0, _window(win_size, sigma, x.shape[1], x))
    return s.mean(1)


def ms_ssim_scales(size: int, win_size: int = 11, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """How many MS-SSIM scales fit a shorter side of ``size`` px: the largest M <= max_scales with
    ``size > (win_size - 1) * 2^(M - 1)`` (at least 1)."""
    m = 1
    while m < max_scales and size > (win_size - 1) * 2**m:
        m += 1
    return m


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
    scales: int | None = None,
    weights: Sequence[float] | None = None,
    win_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """MS-SSIM per image, [B]; 1 for identical images. Differentiable (use ``1 - ms_ssim`` as a loss).

    ``scales=None`` picks 5 scales when the images allow it, fewer for small images (module
    docstring); ``weights`` overrides the per-scale exponents (their count sets the scales).
    """
    x, y = _to_unit(x, y, value_range, win_size)
    if weights is None:
        m = scales if scales is not None else ms_ssim_scales(min(x.shape[-2:]), win_size)
        if not 1 <= m <= len(MS_SSIM_WEIGHTS):
            raise ValueError(f"scales must be in 1..{len(MS_SSIM_WEIGHTS)}, got {m}")
        w = torch.tensor(MS_SSIM_WEIGHTS[:m], dtype=x.dtype, device=x.device)
        w = w / w.sum()  # the 5-scale weights sum to 1; keep that for fewer scales
    else:
        w = torch.as_tensor(list(weights), dtype=x.dtype, device=x.device)
        m = len(w)
    needed = (win_size - 1) * 2 ** (m - 1)
    if min(x.shape[-2:]) <= needed:
        raise ValueError(
            f"MS-SSIM with {m} scales and an {win_size} px window needs images larger than "
            f"{needed} px, got {tuple(x.shape[-2:])}; use fewer scales (scales=None picks them)"
        )
    win = _window(win_size, sigma, x.shape[1], x)
    terms = []  # M x [B, C]
    for j in range(m):
        s, cs = _ssim_cs(x, y, 1.0, win)
        if j < m - 1:
            terms.append(cs.clamp_min(_EPS))
            pad = [h % 2 for h in x.shape[-2:]]  # odd sizes: pad so no row/column is dropped
            x = F.avg_pool2d(x, 2, padding=pad)
            y = F.avg_pool2d(y, 2, padding=pad)
    terms.append(s.clamp_min(_EPS))
    val = torch.prod(torch.stack(terms) ** w.view(-1, 1, 1), dim=0)  # [B, C]
    return val.mean(1)
