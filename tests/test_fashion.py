"""Task ``fashion``: real Fashion-MNIST, label maps, the committed OASIS backbone and its label classifier."""

import gzip
import struct

import numpy as np
import pytest
import torch

from fiancee.cli import main
from fiancee.exits import ExitGenerator
from fiancee.tasks import get_task
from fiancee.tasks.fashion import (
    IDX_FILES,
    NUM_LABELS,
    clean_specks,
    default_weights_dir,
    find_data_dir,
    generate,
    label_maps,
    load_fashion_backbone,
    load_fashion_mnist,
    one_hot,
    read_idx,
)
from fiancee.tasks.fashion.classifier import accuracy, load_classifier


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """A folder of the four idx files holding the first 200 real images of each split."""
    folder = tmp_path_factory.mktemp("fmnist")
    for split, (img_name, lab_name) in IDX_FILES.items():
        images, labels = load_fashion_mnist(split, limit=200)
        _write_idx(folder / img_name, images.numpy())
        _write_idx(folder / lab_name, labels.numpy())
    return folder


@pytest.fixture(scope="module")
def task(subset):
    return get_task("fashion", data=subset)


def test_real_data_is_fashion_mnist():
    labels = read_idx(find_data_dir() / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10
    images, classes = load_fashion_mnist("test", limit=5)
    assert images.shape == (5, 28, 28) and images.dtype == torch.uint8
    assert classes.tolist() == [9, 2, 1, 1, 6]  # the first test items: ankle boot, pullover, trouser, trouser, shirt


def test_data_folder_errors_name_what_is_missing(tmp_path, monkeypatch, subset):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        find_data_dir(tmp_path / "nowhere")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        find_data_dir(tmp_path)
    monkeypatch.setenv("FIANCEE_DATA", str(subset))
    assert find_data_dir() == subset
    _write_idx(tmp_path / "short.gz", np.zeros((3, 2)))
    raw = gzip.open(tmp_path / "short.gz").read()
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(raw[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short.gz")


def test_label_maps_recipe():
    img = torch.zeros(2, 28, 28, dtype=torch.uint8)
    img[0, 5:20, 8:16] = 200  # a garment
    img[0, 2, 25] = 255  # a speck: one bright pixel
    img[1, 10:12, 10:12] = 5  # below the threshold: background
    maps = label_maps(img, torch.tensor([3, 7]))
    assert maps.shape == (2, 32, 32) and maps.dtype == torch.int64
    assert (maps[0, 7:22, 10:18] == 4).all()  # class 3 -> label 4, shifted by the 2-px padding
    assert maps[0].sum() == 4 * 15 * 8  # the speck is gone
    assert (maps[1] == 0).all()
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 2, 2] = True  # diagonal: 8-connected, 3 pixels
    mask[0, 5, 5] = True
    assert clean_specks(mask, 3).sum() == 3 and not clean_specks(mask, 3)[0, 5, 5]


def test_real_label_maps_carry_the_class(task):
    data = task.split("test")
    assert data.images.shape == (200, 1, 32, 32) and data.images.min() == -1 and data.images.max() <= 1
    for m, c in zip(data.maps, data.classes):
        assert set(m.unique().tolist()) == {0, int(c) + 1}
        assert (m[:2] == 0).all() and (m[:, -2:] == 0).all()  # padding is background
    coverage = (data.maps > 0).float().mean().item()
    assert 0.2 < coverage < 0.6


def test_inputs_are_seeded_one_hot_maps_and_noise(task):
    label, z = task.sample_inputs(6, seed=1, split="test")
    assert label.shape == (6, NUM_LABELS, 32, 32) and z.shape == (6, task.z_dim())
    assert torch.equal(label.sum(1), torch.ones(6, 32, 32))
    label2, z2 = task.sample_inputs(6, seed=1, split="test")
    assert torch.equal(label, label2) and torch.equal(z, z2)
    label3, _ = task.sample_inputs(6, seed=1, split="train")
    assert not torch.equal(label, label3)
    with pytest.raises(ValueError, match="1..200"):
        task.sample_inputs(201, seed=0)
    with pytest.raises(ValueError, match="0..10"):
        one_hot(torch.full((1, 2, 2), 11))


def test_committed_backbone_draws_recognisable_garments(task):
    """The committed weights: backgrounds stay dark and the classifier trained on real images
    recognises the generated garments (the full-size measurement is in docs/tasks.md)."""
    g = task.load_backbone()
    assert not g.training and not any(p.requires_grad for p in g.parameters())
    idx = task.sample_indices(200, seed=0, split="test")
    label, z = task.sample_inputs(200, seed=0, split="test")
    fake = generate(g, label, z)
    assert fake.shape == (200, 3, 32, 32) and fake.min() >= -1 and fake.max() <= 1
    background = label[:, 0].bool()[:, None].expand_as(fake)
    assert fake[background].mean() < -0.8
    assert fake[~background].mean() > fake[background].mean() + 0.5
    clf = load_classifier(default_weights_dir())
    assert accuracy(clf, fake, task.split("test").classes[idx]) >= 0.8
    assert accuracy(clf, task.split("test").images[idx], task.split("test").classes[idx]) >= 0.8


def test_exits_attach_to_the_fashion_backbone(task):
    g = task.load_backbone()
    torch.manual_seed(0)
    model = ExitGenerator(g, task.exits, task.default_scale, task.default_min_channels).eval()
    label, z = task.sample_inputs(3, seed=2)
    with torch.no_grad():
        outs = [model(label, z, exit=r) for r in range(model.num_routes)]
        assert all(o.shape == (3, 3, 32, 32) for o in outs)
        assert torch.equal(outs[-1], task.reference(g, (label, z)))
    assert task.to_lpips_images(outs[0]).shape == (3, 3, 64, 64)


def test_missing_backbone_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-backbone"):
        load_fashion_backbone(tmp_path)


def test_cli_sample_fashion(tmp_path, subset):
    assert main(["sample", "--task", "fashion", "--data", str(subset), "--out", str(tmp_path), "--n", "4"]) == 0
    assert len(list(tmp_path.glob("sample_*.png"))) == 4 and (tmp_path / "grid.png").is_file()
    assert main(["sample", "--task", "fashion", "--data", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2


def test_the_shipped_exits_are_oasis_exits_of_the_shipped_backbone(task, one_thread):
    """fiancee/weights/fashion/exits: trained with critics copied from the backbone's discriminator
    (eq. 3), loadable by the recorded spec, and close to the backbone (docs/fashion.md has the
    full measurement)."""
    from fiancee.tables import per_image_lpips
    from fiancee.train.exits import load_exits
    from fiancee.train.run import RunDir

    run = get_task("fashion").pretrained_exits()
    config = RunDir(run).read_config()
    assert config["task"] == "fashion" and config["critic_kind"] == "oasis" and config["bank"] is None
    loaded_task, model = load_exits(run)
    macs = model.route_macs()
    assert macs == sorted(macs) and macs[0] < 0.45 * macs[-1]
    inputs = task.sample_inputs(16, seed=0, split="test")
    with torch.no_grad():
        ref = model(*inputs, exit=model.num_routes - 1)
        first = model(*inputs, exit=0)
    assert per_image_lpips(first, ref, loaded_task.to_lpips_images).mean() < 0.1
