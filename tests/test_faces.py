"""Task ``faces``: the pretrained DCGAN of gan-face-generate 1.1.1, loaded into our own staged module."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from fiancee.cli import main
from fiancee.exits import ExitGenerator
from fiancee.tasks.faces import DCGANFaceGenerator, FacesTask, load_face_state_dict


@pytest.fixture(scope="module")
def task(faces_task):
    return faces_task


@pytest.fixture(scope="module")
def backbone(faces_backbone):
    return faces_backbone


def test_same_image_as_the_packages_own_generator(backbone):
    # The package's models module imports only torch; its other modules need torchvision.
    from gan_face_generate.models import Generator

    theirs = Generator(ngpu=0, nc=3, nz=100, ngf=64)
    theirs.load_state_dict(load_face_state_dict(), strict=True)
    theirs.eval()
    z = torch.randn(6, 100, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = theirs(z[:, :, None, None])
        ours = backbone(z)
    assert ours.shape == (6, 3, 64, 64)
    assert (ours - ref).abs().max().item() < 1e-5
    # a real generator: images differ between inputs and use the tanh range
    assert (ours[0] - ours[1]).abs().mean() > 0.05
    assert ours.min() < -0.5 and ours.max() > 0.5


def test_parameter_names_are_the_pretrained_files(backbone):
    assert set(backbone.state_dict()) == set(load_face_state_dict())
    # stages and head are views onto main: no weight is stored twice
    assert sum(p.numel() for p in backbone.parameters()) == sum(
        v.numel() for k, v in load_face_state_dict().items() if "running" not in k and "num_batches" not in k
    )
    assert not any(p.requires_grad for p in backbone.parameters()) and not backbone.training


def test_stages_and_exit_routes(backbone, task):
    assert backbone.num_stages == 4 and backbone.stage_channels == [(100, 512), (512, 256), (256, 128), (128, 64)]
    (z,) = task.sample_inputs(2, seed=0)
    h, cond = backbone.stem(z)
    sizes = []
    for stage in backbone.stages:
        h = stage(h, cond)
        sizes.append(tuple(h.shape[1:]))
    assert sizes == [(512, 4, 4), (256, 8, 8), (128, 16, 16), (64, 32, 32)]
    torch.manual_seed(0)
    model = ExitGenerator(copy.deepcopy(backbone), task.exits, task.default_scale, task.default_min_channels).eval()
    with torch.no_grad():
        for route in range(model.num_routes):
            assert model(z, exit=route).shape == (2, 3, 64, 64)
        assert torch.equal(model(z, exit=model.num_routes - 1), backbone(z))
    # branch of exit 1 mirrors stages 2..4 (256, 128, 64 channels) at SF 1/2 with a floor of 32
    assert (task.default_scale, task.default_min_channels) == ("1/2", 32)
    widths = [m.out_channels for m in model.branches[0].modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert widths == [128, 64, 32, 3]


def test_deepcopy_keeps_views_on_the_copied_weights(backbone):
    twin = copy.deepcopy(backbone)
    with torch.no_grad():
        twin.main[0].weight.zero_()
    assert twin.stages[0].seq[0].weight.abs().sum() == 0
    assert backbone.stages[0].seq[0].weight.abs().sum() > 0


def test_inputs_are_seeded_and_splits_differ(task):
    (a,) = task.sample_inputs(4, seed=7, split="test")
    (b,) = task.sample_inputs(4, seed=7, split="test")
    (c,) = task.sample_inputs(4, seed=7, split="train")
    assert a.shape == (4, 100) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="split"):
        task.sample_inputs(4, seed=7, split="val")


def test_lpips_view_is_the_image_itself(task, backbone):
    x = backbone(*task.sample_inputs(2, seed=1))
    assert torch.equal(task.to_lpips_images(x), x)  # already 64 px and RGB


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "weights.tar"
    torch.save({"something_else": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="netG_state_dict"):
        FacesTask(weights=bad).load_backbone()
    with pytest.raises(ValueError, match=r"z must be \[B, 100\]"):
        DCGANFaceGenerator().stem(torch.zeros(2, 99))


def test_cli_sample_writes_the_backbones_images(tmp_path, task, backbone):
    assert main(["sample", "--task", "faces", "--out", str(tmp_path), "--n", "3", "--seed", "5"]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["grid.png", "sample_00000.png", "sample_00001.png", "sample_00002.png"]
    with torch.no_grad():
        ref = backbone(*task.sample_inputs(3, seed=5))
    expected = ((ref[2].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sample_00002.png")), expected)


def test_cli_unknown_task_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--task", "cats", "--out", str(tmp_path)])
    assert e.value.code == 2
