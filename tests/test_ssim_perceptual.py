"""SSIM / MS-SSIM (checked against pytorch-msssim) and the VGG perceptual loss."""

from __future__ import annotations

import pytest
import pytorch_msssim
import torch
import torch.nn.functional as F

from fiancee.metrics.lpips import TappedBackbone
from fiancee.metrics.perceptual import VGG_LAYER_WEIGHTS, VGGPerceptualLoss
from fiancee.metrics.ssim import MS_SSIM_WEIGHTS, ms_ssim, ms_ssim_scales, ssim
from fiancee.metrics.weights import lpips_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(n: int, size: int, seed: int, noise: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """A structured image batch in [0, 1] and a noisy copy, [n, 3, size, size] each."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(
        torch.rand(n, 3, max(size // 8, 2), max(size // 8, 2), generator=g),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
    )
    y = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, y


# ----------------------------------------------------------------------------- SSIM / MS-SSIM


def test_ssim_matches_pytorch_msssim():
    x, y = _pair(2, 48, seed=0)
    ref = pytorch_msssim.ssim(x, y, data_range=1.0, size_average=False)
    torch.testing.assert_close(ssim(x, y, value_range=(0.0, 1.0)), ref, rtol=1e-4, atol=1e-5)


def test_ms_ssim_five_scales_matches_pytorch_msssim():
    x, y = _pair(2, 176, seed=1)
    ref = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False)
    out = ms_ssim(x, y, value_range=(0.0, 1.0))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert (out < 0.99).all()


def test_ms_ssim_fewer_scales_is_the_renormalized_formula():
    # Our 3-scale fallback equals pytorch-msssim's MS-SSIM with the first 3 weights renormalized
    # (checked on images large enough for pytorch-msssim's own size guard).
    x, y = _pair(2, 176, seed=2)
    w = torch.tensor(MS_SSIM_WEIGHTS[:3])
    ref = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False, weights=(w / w.sum()).tolist())
    torch.testing.assert_close(ms_ssim(x, y, value_range=(0.0, 1.0), scales=3), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size,scales", [(16, 1), (32, 2), (64, 3), (128, 4), (160, 4), (161, 5), (256, 5)])
def test_scales_for_small_images(size, scales):
    assert ms_ssim_scales(size) == scales


@pytest.mark.parametrize("size", [32, 64])
def test_ms_ssim_small_images_work_as_a_loss(size):
    x, y = _pair(2, size, seed=3)
    x, y = x * 2 - 1, y * 2 - 1  # the project's [-1, 1]
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-6)
    y = y.requires_grad_(True)
    val = ms_ssim(x, y)  # [2]
    assert val.shape == (2,) and ((val > 0) & (val < 0.999)).all()
    (1 - val).mean().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_value_range_sets_the_constants():
    # The same picture in [0, 1] or in [-1, 1] gives the same SSIM when the range is stated.
    x, y = _pair(2, 64, seed=4)
    torch.testing.assert_close(ssim(x, y, value_range=(0.0, 1.0)), ssim(2 * x - 1, 2 * y - 1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        ms_ssim(x, y, value_range=(0.0, 1.0)), ms_ssim(2 * x - 1, 2 * y - 1), rtol=1e-5, atol=1e-6
    )
    # The wrong range changes the answer: the range is not a formality.
    assert not torch.allclose(ssim(x, y, value_range=(0.0, 255.0)), ssim(x, y, value_range=(0.0, 1.0)), atol=1e-3)


def test_ssim_errors():
    x = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ValueError, match="larger than 160"):
        ms_ssim(x, x, scales=5)
    with pytest.raises(ValueError, match="at least 11 px"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="one shape"):
        ssim(x, torch.zeros(1, 3, 64, 32))
    with pytest.raises(ValueError, match="high > low"):
        ssim(x, x, value_range=(1.0, 0.0))


# ----------------------------------------------------------------------------- VGG perceptual loss


@pytest.fixture(scope="module")
def vgg_loss() -> VGGPerceptualLoss:
    return VGGPerceptualLoss()


def test_vgg_loss_zero_for_identical_positive_otherwise(vgg_loss):
    x, y = _pair(2, 64, seed=5)
    x, y = x * 2 - 1, y * 2 - 1
    assert vgg_loss(x, x.clone()).item() == 0.0
    assert vgg_loss(x, y).item() > 0.01


def test_vgg_loss_gradients_reach_the_image_only(vgg_loss):
    x, y = _pair(2, 64, seed=6)
    fake = (x * 2 - 1).requires_grad_(True)
    target = (y * 2 - 1).requires_grad_(True)
    loss = vgg_loss(fake, target)
    loss.backward()
    assert torch.isfinite(fake.grad).all() and fake.grad.abs().sum() > 0
    assert target.grad is None  # the reference image is detached
    assert all(not p.requires_grad for p in vgg_loss.parameters())
    with torch.no_grad():  # a small step against the gradient lowers the loss
        lower = vgg_loss(fake - 0.02 * fake.grad / fake.grad.abs().max(), target)
    assert lower < loss


def test_vgg_loss_is_the_weighted_sum_of_layer_l1s(vgg_loss):
    x, y = _pair(1, 64, seed=7)
    x, y = x * 2 - 1, y * 2 - 1
    backbone = TappedBackbone("vgg", lpips_weights("vgg"))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        fx, fy = backbone(((x + 1) / 2 - mean) / std), backbone(((y + 1) / 2 - mean) / std)
        per_layer = [F.l1_loss(a, b) for a, b in zip(fx, fy)]
        expected = sum(w * layer_loss for w, layer_loss in zip(VGG_LAYER_WEIGHTS, per_layer))
        torch.testing.assert_close(vgg_loss(x, y), expected, rtol=1e-5, atol=1e-7)
        only_last = VGGPerceptualLoss((0, 0, 0, 0, 1))
        torch.testing.assert_close(only_last(x, y), per_layer[-1], rtol=1e-5, atol=1e-7)
        # [0, 1] inputs with normalize=True, and gray inputs, follow the same conventions as LPIPS.
        torch.testing.assert_close(
            VGGPerceptualLoss(normalize=True)((x + 1) / 2, (y + 1) / 2), expected, rtol=1e-5, atol=1e-7
        )
        torch.testing.assert_close(
            vgg_loss(x[:, :1], y[:, :1]), vgg_loss(x[:, :1].repeat(1, 3, 1, 1), y[:, :1].repeat(1, 3, 1, 1))
        )
    assert VGG_LAYER_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def test_vgg_loss_errors(vgg_loss):
    with pytest.raises(ValueError, match="expected 5 layer weights"):
        VGGPerceptualLoss((1.0, 1.0))
    with pytest.raises(ValueError, match="same shape"):
        vgg_loss(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"got \(1, 2, 64, 64\)"):
        vgg_loss(torch.zeros(1, 2, 64, 64), torch.zeros(1, 2, 64, 64))
