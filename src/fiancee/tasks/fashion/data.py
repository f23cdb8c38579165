"""Fashion-MNIST on disk and as label maps: the idx files, the padding and the semantic maps the generator takes.

Fashion-MNIST (Xiao et al. 2017, MIT licence) holds 70,000 real 28x28 gray images of ten garment
classes. Each image becomes a semantic label map (:func:`label_maps`):

1. pad 28x28 -> 32x32 with background (so four x2 upsamplings from 4x4 land on it);
2. foreground = pixels brighter than ``threshold`` (out of 255);
3. clean specks: foreground components (8-connected) smaller than ``min_component`` pixels are
   dropped, so a stray bright pixel does not become a garment;
4. label = garment class + 1 on the foreground, 0 (background) elsewhere: 11 classes, one-hot.

Data location, first that exists: the ``data`` argument, ``$FIANCEE_DATA``, then
``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``). A folder must hold the
four standard idx files (``train-images-idx3-ubyte.gz`` ...).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..base import check_split

__all__ = [
    "CLASS_NAMES",
    "NUM_LABELS",
    "BACKGROUND",
    "DEFAULT_DATA_DIR",
    "IDX_FILES",
    "DEFAULT_THRESHOLD",
    "DEFAULT_MIN_COMPONENT",
    "SIZE",
    "find_data_dir",
    "read_idx",
    "load_fashion_mnist",
    "pad_images",
    "clean_specks",
    "label_maps",
    "one_hot",
    "FashionData",
    "load_split",
]

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
BACKGROUND = 0
NUM_LABELS = len(CLASS_NAMES) + 1  # background + ten garments
DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEFAULT_THRESHOLD = 10  # of 255: the background of Fashion-MNIST is 0, dark garments start near 10
DEFAULT_MIN_COMPONENT = 4  # pixels: smaller bright islands are specks, not garment parts
SIZE = 32


def find_data_dir(data: str | os.PathLike | None = None) -> Path:
    """The folder holding the four idx .gz files; a clear error says what is missing where."""
    needed = [f for pair in IDX_FILES.values() for f in pair]
    candidates: list[tuple[str, Path]] = []
    if data is not None:
        candidates.append(("--data", Path(data)))
    elif os.environ.get("FIANCEE_DATA"):
        candidates.append(("$FIANCEE_DATA", Path(os.environ["FIANCEE_DATA"])))
    else:
        candidates.append(("default", DEFAULT_DATA_DIR))
    source, folder = candidates[0]
    missing = [f for f in needed if not (folder / f).is_file()]
    if not missing:
        return folder
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {source} folder {folder} does not exist. Install Debian's "
            f"dataset-fashion-mnist (make install-data) or point --data / FIANCEE_DATA at a folder "
            f"holding {', '.join(needed)}"
        )
    raise FileNotFoundError(f"Fashion-MNIST folder {folder} ({source}) lacks {', '.join(missing)}")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (gzipped or not): big-endian header, then unsigned bytes."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise ValueError(f"{path} is not an idx file (only {len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(
            f"{path}: expected an idx file of unsigned bytes (magic 0x0008); got {zero:#x}/{dtype_code:#x}"
        )
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(
            f"{path}: header says shape {shape} ({int(np.prod(shape))} values), file holds {body.size} (truncated?)"
        )
    return body.reshape(shape)


def load_fashion_mnist(
    split: str, data: str | os.PathLike | None = None, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw images ``[N, 28, 28]`` uint8 and labels ``[N]`` int64 (0..9) of a split."""
    check_split(split)
    folder = find_data_dir(data)
    img_file, lab_file = IDX_FILES[split]
    images = read_idx(folder / img_file)
    labels = read_idx(folder / lab_file)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise ValueError(f"{folder}: expected images [N, 28, 28] and labels [N]; got {images.shape} and {labels.shape}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def pad_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 28, 28]`` -> float ``[N, 1, 32, 32]`` in [-1, 1], padded with background (-1)."""
    x = images.float().div(127.5).sub(1)[:, None]  # [N, 1, 28, 28]
    pad = (SIZE - images.shape[-1]) // 2
    return F.pad(x, (pad, pad, pad, pad), value=-1.0)


def clean_specks(mask: torch.Tensor, min_component: int) -> torch.Tensor:
    """Drop 8-connected components of a bool mask ``[N, H, W]`` smaller than ``min_component`` pixels."""
    from scipy import ndimage

    if min_component <= 1:
        return mask.clone()
    # One labelling call for the whole stack; the structuring element is flat along N so that
    # components never join across images.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    ids, _ = ndimage.label(mask.numpy(), structure=structure)  # [N, H, W], 0 = background
    sizes = np.bincount(ids.ravel())
    keep = (sizes[ids] >= min_component) & (ids > 0)
    return torch.from_numpy(keep)


def label_maps(
    images: torch.Tensor,
    labels: torch.Tensor,
    threshold: int = DEFAULT_THRESHOLD,
    min_component: int = DEFAULT_MIN_COMPONENT,
) -> torch.Tensor:
    """Semantic label maps ``[N, 32, 32]`` int64 in 0..10 (0 = background, class c -> c + 1)."""
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images [N, H, W]; got {images.dtype} {list(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"expected one label per image ({images.shape[0]}); got {list(labels.shape)}")
    pad = (SIZE - images.shape[-1]) // 2
    padded = F.pad(images.long(), (pad, pad, pad, pad), value=0)  # [N, 32, 32]
    fg = clean_specks(padded > threshold, min_component)
    return torch.where(fg, labels[:, None, None] + 1, BACKGROUND)


def one_hot(maps: torch.Tensor, num_labels: int = NUM_LABELS) -> torch.Tensor:
    """``[N, H, W]`` int -> ``[N, L, H, W]`` float one-hot."""
    if maps.min() < 0 or maps.max() >= num_labels:
        raise ValueError(f"label values must lie in 0..{num_labels - 1}; got {int(maps.min())}..{int(maps.max())}")
    return F.one_hot(maps, num_labels).permute(0, 3, 1, 2).float()


@dataclass
class FashionData:
    """One split in memory: images ``[N, 1, 32, 32]`` in [-1, 1], label maps ``[N, 32, 32]``, classes ``[N]``."""

    images: torch.Tensor
    maps: torch.Tensor
    classes: torch.Tensor

    def __len__(self) -> int:
        return len(self.classes)


def load_split(split: str, data: str | os.PathLike | None = None, limit: int | None = None) -> FashionData:
    raw, classes = load_fashion_mnist(split, data, limit)
    return FashionData(images=pad_images(raw), maps=label_maps(raw, classes), classes=classes)
