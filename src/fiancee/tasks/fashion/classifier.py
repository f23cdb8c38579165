"""A small garment classifier, the fashion task's analogue of the paper's segmentation score (mIoU).

It is trained on the real Fashion-MNIST training images (padded to 32x32, gray, in [-1, 1]) and then
classifies generated garments: the fraction it assigns to the class of the label map they were drawn
from is the backbone's *label accuracy*. Generated images are RGB; they are read as gray by averaging
the three channels (the real data is gray).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...io import (
    build_bounded,
    config_int,
    load_tensors,
    read_json,
    require_keys,
    save_tensors,
    tensor_fingerprint,
    write_json,
)

__all__ = [
    "LabelClassifier",
    "to_gray",
    "train_classifier",
    "classify",
    "accuracy",
    "save_classifier",
    "load_classifier",
]


class LabelClassifier(nn.Module):
    """Three conv blocks (32 -> 16 -> 8 -> 4 px) and a linear layer: ``[B, 1, 32, 32]`` -> logits ``[B, 10]``."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.width = width
        self.num_classes = num_classes
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(4 * w * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (1, 32, 32):
            raise ValueError(f"classifier expects gray images [B, 1, 32, 32] in [-1, 1]; got {list(x.shape)}")
        return self.fc(self.features(x).flatten(1))


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` or ``[B, 1, H, W]`` -> ``[B, 1, H, W]`` (mean of the channels)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1 or 3, H, W]; got {list(images.shape)}")
    return images.mean(dim=1, keepdim=True)


def train_classifier(
    images: torch.Tensor,
    classes: torch.Tensor,
    *,
    epochs: int = 2,
    batch_size: int = 128,
    lr: float = 2e-3,
    width: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> LabelClassifier:
    """Train on gray images ``[N, 1, 32, 32]`` in [-1, 1] with classes ``[N]`` (Adam, seeded shuffling)."""
    from tqdm import tqdm

    if images.shape[0] != classes.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {classes.shape[0]} classes")
    torch.manual_seed(seed)
    model = LabelClassifier(width=width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=epochs * steps_per_epoch, desc="classifier", disable=not progress, dynamic_ncols=True)
    for _ in range(epochs):
        perm = torch.randperm(len(images), generator=g)
        for start in range(0, len(images), batch_size):
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(model(images[idx]), classes[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def classify(model: LabelClassifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted classes ``[N]`` of images (RGB or gray) in [-1, 1]."""
    gray = to_gray(images)
    return torch.cat([model(gray[i : i + batch_size]).argmax(1) for i in range(0, len(gray), batch_size)])


def accuracy(model: LabelClassifier, images: torch.Tensor, classes: torch.Tensor) -> float:
    return (classify(model, images) == classes).float().mean().item()


def save_classifier(model: LabelClassifier, folder: str | os.PathLike, info: dict) -> None:
    folder = Path(folder)
    state = model.state_dict()
    save_tensors(folder / "classifier.safetensors", state)
    write_json(
        folder / "classifier.json",
        {"width": model.width, "num_classes": model.num_classes, "fingerprint": tensor_fingerprint(state), **info},
    )


def load_classifier(folder: str | os.PathLike) -> LabelClassifier:
    folder = Path(folder)
    meta = read_json(folder / "classifier.json")
    meta = require_keys(meta, ("width", "num_classes"), folder / "classifier.json")
    for key in ("width", "num_classes"):
        config_int(meta, key, folder / "classifier.json", minimum=1)
    weights = folder / "classifier.safetensors"
    model = build_bounded(
        lambda: LabelClassifier(width=meta["width"], num_classes=meta["num_classes"]),
        weights,
        folder / "classifier.json",
    )
    model.load_state_dict(load_tensors(weights), strict=True)
    return model.eval().requires_grad_(False)
