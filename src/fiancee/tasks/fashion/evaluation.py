"""The fashion backbone's own workflows: training the label classifier on the real training set, and scoring
the backbone (label accuracy, FID) on real test label maps; both read the data and weights folders."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...backbones.oasis import OASISGenerator
from ...io import read_json, tensor_fingerprint
from .data import load_split
from .task import FashionTask
from .weights import classifier_folder, default_weights_dir

__all__ = ["train_label_classifier", "generate", "fid_reference_sets", "evaluate_fashion_backbone"]


def train_label_classifier(
    out: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    seed: int = 0,
    epochs: int = 2,
    train_limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Train the label classifier on the real training set; write it to ``out`` and report its test accuracy."""
    import time

    from ...checks import check_counts
    from .classifier import accuracy, save_classifier, train_classifier

    check_counts(epochs=epochs, train_limit=train_limit)
    t0 = time.time()
    train = load_split("train", data, limit=train_limit)
    test = load_split("test", data)
    model = train_classifier(train.images, train.classes, epochs=epochs, seed=seed, progress=progress)
    real_acc = accuracy(model, test.images, test.classes)
    # The thread count changes the order of float reductions, hence the weights: recorded so that a
    # rerun can match it (docs/tasks.md).
    info = {
        "seed": seed,
        "epochs": epochs,
        "train_images": len(train),
        "real_test_accuracy": round(real_acc, 4),
        "seconds": round(time.time() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    save_classifier(model, out, info)
    return info


@torch.no_grad()
def generate(model: OASISGenerator, label: torch.Tensor, z: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """Backbone images ``[N, 3, 32, 32]`` for inputs ``[N, 11, 32, 32]``, ``[N, z_dim]``, in batches."""
    return torch.cat(
        [model(label[i : i + batch_size], z[i : i + batch_size]) for i in range(0, len(label), batch_size)]
    )


def fid_reference_sets(task: FashionTask, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The real images FID compares with, as RGB ``[n, 3, 32, 32]``: the ``n`` test items whose label
    maps are used, and ``n`` training images (seeded) for the real-vs-real floor."""
    test = task.split("test")
    train = task.split("train")
    idx_train = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 2))[:n]
    return (
        test.images[task.sample_indices(n, seed, "test")].repeat(1, 3, 1, 1),
        train.images[idx_train].repeat(1, 3, 1, 1),
    )


def evaluate_fashion_backbone(
    *,
    weights: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    n: int = 1000,
    seed: int = 0,
    fid: bool = True,
    fid_floor: bool = True,
    out: str | os.PathLike | None = None,
    classifier: str | os.PathLike | None = None,
) -> dict:
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
    from ...checks import check_counts
    from .classifier import accuracy, load_classifier

    check_counts(n=n)
    task = FashionTask(data=data, weights=weights)
    folder = Path(weights) if weights is not None else default_weights_dir()
    clf_folder = Path(classifier) if classifier is not None else classifier_folder(weights)
    if clf_folder is None or not (clf_folder / "classifier.safetensors").is_file():
        where = clf_folder if clf_folder is not None else folder
        raise FileNotFoundError(
            f"no label classifier in {where}: run `fiancee train-classifier --task fashion --out {where}`"
        )
    clf = load_classifier(clf_folder)
    model = task.load_backbone()
    idx = task.sample_indices(n, seed, "test")
    label, z = task.sample_inputs(n, seed, "test")
    test = task.split("test")
    real, classes = test.images[idx], test.classes[idx]
    fake = generate(model, label, z)  # [n, 3, 32, 32]
    result = {
        # Of the weights evaluated, not re-read from the folder: a training run re-exports it meanwhile.
        "n": n,
        "seed": seed,
        "weights_fingerprint": tensor_fingerprint(model.state_dict()),
        "classifier_fingerprint": read_json(clf_folder / "classifier.json").get("fingerprint")
        if (clf_folder / "classifier.json").is_file()
        else None,
        "label_accuracy": round(accuracy(clf, fake, classes), 4),
        "real_label_accuracy": round(accuracy(clf, real, classes), 4),
    }
    if fid:
        from ...metrics.fid import compute_stats, frechet_distance

        test_rgb, train_rgb = fid_reference_sets(task, n, seed)
        mu_r, s_r = compute_stats(test_rgb, cache=True)
        mu_f, s_f = compute_stats(fake)
        result["fid"] = round(frechet_distance(mu_r, s_r, mu_f, s_f), 3)
        if fid_floor:
            mu_t, s_t = compute_stats(train_rgb, cache=True)
            result["fid_real_train_vs_test"] = round(frechet_distance(mu_r, s_r, mu_t, s_t), 3)
    if out is not None:
        from ...io import write_json
        from ...plots import save_grid

        out = Path(out)
        rows = [torch.cat([fake[i : i + 8], real[i : i + 8].repeat(1, 3, 1, 1)]) for i in range(0, min(n, 32), 8)]
        save_grid(torch.cat(rows), out / "grid.png", ncol=8)
        write_json(out / "metrics.json", result)
    return result
