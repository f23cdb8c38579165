"""Task ``fashion``: semantic image synthesis (the paper's OASIS pipeline) on Fashion-MNIST.

Fashion-MNIST (Xiao et al. 2017, MIT licence) holds 70,000 real 28x28 gray images of ten garment
classes. Each image becomes a semantic label map (:func:`label_maps`):

1. pad 28x28 -> 32x32 with background (so four x2 upsamplings from 4x4 land on it);
2. foreground = pixels brighter than ``threshold`` (out of 255);
3. clean specks: foreground components (8-connected) smaller than ``min_component`` pixels are
   dropped, so a stray bright pixel does not become a garment;
4. label = garment class + 1 on the foreground, 0 (background) elsewhere: 11 classes, one-hot.

The generator (OASIS, :mod:`fiancee.backbones.oasis`) takes the one-hot map and a per-image noise
vector broadcast over it, and draws the garment's texture inside the silhouette.

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

from ..backbones.oasis import OASISConfig, OASISGenerator
from ..backbones.oasis_discriminator import UNetDiscriminator
from ..io import build_bounded, load_tensors, read_json, tensor_fingerprint
from .base import InputSpec, Task, check_split, find_weights, weights_dir

__all__ = [
    "CLASS_NAMES", "NUM_LABELS", "BACKGROUND", "DEFAULT_DATA_DIR", "IDX_FILES", "find_data_dir", "read_idx",
    "load_fashion_mnist", "pad_images", "clean_specks", "label_maps", "one_hot", "FashionData", "load_split",
    "FashionTask", "default_weights_dir", "load_fashion_backbone", "load_fashion_discriminator",
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
        raise ValueError(f"{path}: expected an idx file of unsigned bytes (magic 0x0008); got {zero:#x}/{dtype_code:#x}")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} ({int(np.prod(shape))} values), file holds {body.size} (truncated?)")
    return body.reshape(shape)


def load_fashion_mnist(split: str, data: str | os.PathLike | None = None, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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


def label_maps(images: torch.Tensor, labels: torch.Tensor, threshold: int = DEFAULT_THRESHOLD,
               min_component: int = DEFAULT_MIN_COMPONENT) -> torch.Tensor:
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


def default_weights_dir() -> Path:
    """``$FIANCEE_WEIGHTS/fashion`` if set, else the trained backbone shipped in the package."""
    return find_weights("fashion")


def load_fashion_backbone(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> OASISGenerator:
    """The trained OASIS generator from a folder holding ``config.json`` + ``backbone.safetensors``."""
    folder = Path(weights) if weights is not None else default_weights_dir()
    cfg_path, w_path = folder / "config.json", folder / "backbone.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise FileNotFoundError(
            f"expected a fashion backbone folder with config.json and backbone.safetensors at {folder}; "
            "train one with `fiancee train-backbone --task fashion`"
        )
    cfg = read_json(cfg_path)
    if "generator" not in cfg:
        raise ValueError(f"{cfg_path} has no 'generator' entry (the OASISConfig arguments)")
    gen = cfg["generator"]
    if not isinstance(gen, dict):
        raise ValueError(f"{cfg_path}: field 'generator' must be a JSON object; got {gen!r}")
    # Probe without spectral norm: its power iteration is slow on the meta device, and it only adds weights.
    model = build_bounded(lambda: OASISGenerator(OASISConfig(**gen)), w_path, cfg_path,
                          probe=lambda: OASISGenerator(OASISConfig(**{**gen, "spectral": False})))
    state = load_tensors(w_path, device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{w_path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval().requires_grad_(False)


DISCRIMINATOR_FILE = "discriminator.safetensors"


def load_fashion_discriminator(weights: str | os.PathLike | None = None,
                               device: str | torch.device = "cpu") -> UNetDiscriminator | None:
    """The backbone's U-Net discriminator from its folder (``discriminator.safetensors`` + ``config.json``'s
    ``discriminator`` entry, written by ``fiancee train-backbone`` / ``fiancee export-backbone``), or None
    when the folder holds none (backbones exported before the discriminator was kept)."""
    folder = Path(weights) if weights is not None else default_weights_dir()
    cfg_path, w_path = folder / "config.json", folder / DISCRIMINATOR_FILE
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    entry = cfg.get("discriminator") if isinstance(cfg, dict) else None
    if entry is None and not w_path.is_file():
        return None
    if not isinstance(entry, dict) or not w_path.is_file():
        raise ValueError(f"{folder}: a discriminator needs both {DISCRIMINATOR_FILE} and config.json's 'discriminator' "
                         f"entry (num_classes, in_channels, channels); found only one")
    from ..io import config_int, config_int_list

    args = {"num_classes": config_int(entry, "num_classes", cfg_path, minimum=1),
            "in_channels": config_int(entry, "in_channels", cfg_path, minimum=1),
            "channels": config_int_list(entry, "channels", cfg_path, minimum=1)}
    model = build_bounded(lambda: UNetDiscriminator(**args), w_path, cfg_path)
    state = load_tensors(w_path, device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{w_path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval().requires_grad_(False)


class FashionTask(Task):
    name = "fashion"
    description = "OASIS semantic image synthesis on Fashion-MNIST label maps (32x32, 11 classes)"
    exits = (1, 2, 3)
    default_scale = "1/4"
    default_min_channels = 8
    image_size = (SIZE, SIZE)
    image_channels = 3
    inputs = (InputSpec("label", "label_map"), InputSpec("z", "noise"))
    # Patches searched per garment class (OASIS mode, S1.1.1): 250 maps x 8 fixed noises.
    bank_defaults = {"mode": "patch", "grid": (4, 4), "max_per_class": 512, "n": 250, "noises": 8}

    def __init__(self, data: str | os.PathLike | None = None, weights: str | os.PathLike | None = None):
        self.data = data
        self.weights = weights
        self._z_dim: int | None = None
        self._cache: dict[str, FashionData] = {}

    def pretrained_exits(self) -> Path:
        return weights_dir(self.name, "exits")

    def _folder(self) -> Path:
        return Path(self.weights) if self.weights is not None else weights_dir(self.name)

    @property
    def critic_kind(self) -> str:
        """``oasis`` (copies of the backbone's own U-Net discriminator, eq. 3) when the backbone folder
        holds its discriminator; ``dcgan`` (a fresh critic, :meth:`critic_note`) otherwise."""
        return "oasis" if (self._folder() / DISCRIMINATOR_FILE).is_file() else "dcgan"

    def critic_note(self) -> str | None:
        if self.critic_kind == "oasis":
            return None
        return (f"note: the fashion backbone folder {self._folder()} holds no {DISCRIMINATOR_FILE}: the exits' critics "
                "are fresh DCGAN discriminators, not copies of the backbone's own (paper eq. 3); export one from the "
                "backbone's training run with `fiancee export-backbone RUN`")

    def load_discriminator(self, device: str | torch.device = "cpu") -> UNetDiscriminator | None:
        return load_fashion_discriminator(self.weights, device)

    def real_images(self, n: int, seed: int, split: str = "test") -> torch.Tensor:
        """The ``n`` real garments whose label maps ``sample_inputs(n, seed, split)`` uses, as RGB ``[n, 3, 32, 32]``."""
        return self.split(split).images[self.sample_indices(n, seed, split)].repeat(1, 3, 1, 1)

    def label_accuracy(self, images: torch.Tensor, n: int, seed: int, split: str = "test") -> float | None:
        """Accuracy of the label classifier (:func:`classifier_folder`: beside the backbone, else the shipped
        one) on generated garments for ``sample_inputs(n, seed, split)``; None when there is none."""
        from ..classifier import accuracy, load_classifier

        if images.shape[0] != n:
            raise ValueError(f"expected the {n} images generated for these inputs; got {images.shape[0]}")
        folder = classifier_folder(self._folder())
        if folder is None:
            return None
        if getattr(self, "_classifier", None) is None:
            self._classifier = load_classifier(folder)
        return accuracy(self._classifier, images, self.split(split).classes[self.sample_indices(n, seed, split)])

    def split(self, split: str) -> FashionData:
        if split not in self._cache:
            self._cache[split] = load_split(check_split(split), self.data)
        return self._cache[split]

    def z_dim(self) -> int:
        if self._z_dim is None:
            folder = Path(self.weights) if self.weights is not None else default_weights_dir()
            self._z_dim = int(read_json(folder / "config.json")["generator"]["z_dim"])
        return self._z_dim

    def load_backbone(self, device: str | torch.device = "cpu") -> OASISGenerator:
        model = load_fashion_backbone(self.weights, device)
        self._z_dim = model.config.z_dim
        return model

    def sample_indices(self, n: int, seed: int, split: str = "test") -> torch.Tensor:
        """Which images of the split the ``n`` label maps come from (a seeded permutation)."""
        total = len(self.split(split))
        if not 0 < n <= total:
            raise ValueError(f"n must lie in 1..{total} (the {split} split's size); got {n}")
        return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]

    def sample_inputs(self, n: int, seed: int, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """(one-hot label maps ``[n, 11, 32, 32]``, noise ``[n, z_dim]``) from real label maps of the split."""
        idx = self.sample_indices(n, seed, split)
        label = one_hot(self.split(split).maps[idx])
        z = torch.randn(n, self.z_dim(), generator=torch.Generator().manual_seed(seed + 1))
        return label, z

    shifts = {"classes": "label maps of some garment classes only (classes:0,2,4,6: T-shirt/top, Pullover, Coat, "
                         "Shirt; 0..9 in Fashion-MNIST's order)"}

    def shifted_inputs(self, n: int, seed: int, split: str, shift: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``classes:a,b,...``: ``n`` label maps drawn (seeded) from the split's items of those classes only,
        with noise as :meth:`sample_inputs` draws it."""
        from .base import parse_shift

        _, arg = parse_shift(self, shift)
        try:
            wanted = sorted({int(c) for c in (arg or "").split(",") if c.strip()})
        except ValueError:
            wanted = []
        if not wanted or not all(0 <= c < len(CLASS_NAMES) for c in wanted):
            raise ValueError(f"shift classes:A,B,... needs class numbers in 0..{len(CLASS_NAMES) - 1}; got {shift!r}")
        data = self.split(split)
        pool = torch.nonzero(torch.isin(data.classes, torch.tensor(wanted))).flatten()
        if not 0 < n <= pool.numel():
            raise ValueError(f"n must lie in 1..{pool.numel()} (the {split} split's items of classes {wanted}); got {n}")
        idx = pool[torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(seed))[:n]]
        z = torch.randn(n, self.z_dim(), generator=torch.Generator().manual_seed(seed + 1))
        return one_hot(data.maps[idx]), z


def train_label_classifier(out: str | os.PathLike, *, data: str | os.PathLike | None = None, seed: int = 0,
                           epochs: int = 2, train_limit: int | None = None, progress: bool = True) -> dict:
    """Train the label classifier on the real training set; write it to ``out`` and report its test accuracy."""
    import time

    from ..checks import check_counts
    from ..classifier import accuracy, save_classifier, train_classifier

    check_counts(epochs=epochs, train_limit=train_limit)
    t0 = time.time()
    train = load_split("train", data, limit=train_limit)
    test = load_split("test", data)
    model = train_classifier(train.images, train.classes, epochs=epochs, seed=seed, progress=progress)
    real_acc = accuracy(model, test.images, test.classes)
    # The thread count changes the order of float reductions, hence the weights: recorded so that a
    # rerun can match it (docs/tasks.md).
    info = {"seed": seed, "epochs": epochs, "train_images": len(train), "real_test_accuracy": round(real_acc, 4),
            "seconds": round(time.time() - t0, 1), "torch_threads": torch.get_num_threads()}
    save_classifier(model, out, info)
    return info


@torch.no_grad()
def generate(model: OASISGenerator, label: torch.Tensor, z: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """Backbone images ``[N, 3, 32, 32]`` for inputs ``[N, 11, 32, 32]``, ``[N, z_dim]``, in batches."""
    return torch.cat([model(label[i : i + batch_size], z[i : i + batch_size]) for i in range(0, len(label), batch_size)])


def fid_reference_sets(task: FashionTask, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The real images FID compares with, as RGB ``[n, 3, 32, 32]``: the ``n`` test items whose label
    maps are used, and ``n`` training images (seeded) for the real-vs-real floor."""
    test = task.split("test")
    train = task.split("train")
    idx_train = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 2))[:n]
    return test.images[task.sample_indices(n, seed, "test")].repeat(1, 3, 1, 1), train.images[idx_train].repeat(1, 3, 1, 1)


def classifier_folder(weights: str | os.PathLike | None) -> Path | None:
    """Where the label classifier for a backbone folder is: ``classifier.safetensors`` beside the backbone,
    else the shipped one (a backbone being trained is scored by the same fixed judge as the committed
    one, so its numbers compare); None when neither exists."""
    for folder in (Path(weights) if weights is not None else None, default_weights_dir()):
        if folder is not None and (folder / "classifier.safetensors").is_file():
            return folder
    return None


def evaluate_fashion_backbone(*, weights: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
                              n: int = 1000, seed: int = 0, fid: bool = True, fid_floor: bool = True,
                              out: str | os.PathLike | None = None, classifier: str | os.PathLike | None = None) -> dict:
    """Label accuracy and FID of the backbone on ``n`` label maps of the real test set.

    - label accuracy: the classifier (``classifier`` folder, default :func:`classifier_folder`; trained on
      the real training set) applied to the generated garments; its accuracy on the real images of
      the same ``n`` test items is reported beside it as the ceiling;
    - FID: generated images vs the real test images the label maps come from (``n`` each; FID is
      biased upward at small ``n``, so compare numbers only at equal ``n``); ``fid_floor`` adds the FID
      between those real test images and ``n`` real training images, what a perfect generator would
      score at this ``n``. Real-set statistics are cached.
    ``out``: also write ``metrics.json`` and ``grid.png`` (generated, real below each row of 8).
    """
    from ..checks import check_counts
    from ..classifier import accuracy, load_classifier

    check_counts(n=n)
    task = FashionTask(data=data, weights=weights)
    folder = Path(weights) if weights is not None else default_weights_dir()
    clf_folder = Path(classifier) if classifier is not None else classifier_folder(weights)
    if clf_folder is None or not (clf_folder / "classifier.safetensors").is_file():
        where = clf_folder if clf_folder is not None else folder
        raise FileNotFoundError(f"no label classifier in {where}: run `fiancee train-classifier --task fashion --out {where}`")
    clf = load_classifier(clf_folder)
    model = task.load_backbone()
    idx = task.sample_indices(n, seed, "test")
    label, z = task.sample_inputs(n, seed, "test")
    test = task.split("test")
    real, classes = test.images[idx], test.classes[idx]
    fake = generate(model, label, z)  # [n, 3, 32, 32]
    result = {
        # Of the weights evaluated, not re-read from the folder: a training run re-exports it meanwhile.
        "n": n, "seed": seed, "weights_fingerprint": tensor_fingerprint(model.state_dict()),
        "classifier_fingerprint": read_json(clf_folder / "classifier.json").get("fingerprint")
        if (clf_folder / "classifier.json").is_file() else None,
        "label_accuracy": round(accuracy(clf, fake, classes), 4),
        "real_label_accuracy": round(accuracy(clf, real, classes), 4),
    }
    if fid:
        from ..metrics.fid import compute_stats, frechet_distance

        test_rgb, train_rgb = fid_reference_sets(task, n, seed)
        mu_r, s_r = compute_stats(test_rgb, cache=True)
        mu_f, s_f = compute_stats(fake)
        result["fid"] = round(frechet_distance(mu_r, s_r, mu_f, s_f), 3)
        if fid_floor:
            mu_t, s_t = compute_stats(train_rgb, cache=True)
            result["fid_real_train_vs_test"] = round(frechet_distance(mu_r, s_r, mu_t, s_t), 3)
    if out is not None:
        from ..io import write_json
        from ..plots import save_grid

        out = Path(out)
        rows = [torch.cat([fake[i : i + 8], real[i : i + 8].repeat(1, 3, 1, 1)]) for i in range(0, min(n, 32), 8)]
        save_grid(torch.cat(rows), out / "grid.png", ncol=8)
        write_json(out / "metrics.json", result)
    return result
