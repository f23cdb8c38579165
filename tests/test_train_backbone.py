"""The OASIS training recipe for the fashion backbone: losses, LabelMix, U-Net discriminator, resume."""

import json

import pytest
import torch

from fiancee.cli import main
from fiancee.io import load_tensors, write_json
from fiancee.tasks.fashion import load_fashion_backbone
from fiancee.train.backbone import (
    BackboneTrainConfig,
    balanced_cross_entropy,
    class_balance_weights,
    labelmix_mask,
    train_backbone,
)
from fiancee.train.discriminators import UNetDiscriminator


def tiny_config(**kw) -> BackboneTrainConfig:
    gen = dict(
        label_channels=11,
        z_dim=4,
        channels=(16, 16, 8, 8, 8),
        out_size=(32, 32),
        spade_hidden=8,
        channel_unit=8,
        spectral=True,
        exits=(1, 2, 3),
    )
    base = dict(
        generator=gen,
        disc_channels=(8, 8, 16),
        batch_size=4,
        steps=4,
        train_limit=64,
        checkpoint_every=2,
        log_every=1,
        seed=3,
    )
    base.update(kw)
    return BackboneTrainConfig(**base)


def test_class_balance_gives_every_present_class_the_same_weight():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, :2, :2] = 3  # 4 pixels of class 3
    target[1, :, :4] = 5  # 32 pixels of class 5
    w = class_balance_weights(target, 11)
    totals = [w[target == c].sum().item() for c in (0, 3, 5)]
    assert totals == pytest.approx([totals[0]] * 3)
    assert w.mean().item() == pytest.approx(1.0)
    assert w[target == 3][0] > w[target == 5][0] > w[target == 0][0]


def test_balanced_cross_entropy_uses_channel_c_plus_1():
    lmap = torch.randint(0, 11, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    perfect = torch.full((2, 12, 8, 8), -20.0).scatter_(1, (lmap + 1)[:, None], 20.0)
    shifted = torch.full((2, 12, 8, 8), -20.0).scatter_(1, lmap[:, None], 20.0)  # the "fake" reading
    assert balanced_cross_entropy(perfect, lmap).item() < 1e-6
    assert balanced_cross_entropy(shifted, lmap).item() > 10


def test_labelmix_mask_is_binary_and_constant_per_class():
    lmap = torch.randint(0, 11, (16, 32, 32), generator=torch.Generator().manual_seed(1))
    mask = labelmix_mask(lmap, torch.Generator().manual_seed(2))
    assert mask.shape == (16, 1, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}
    for b in range(16):
        for c in lmap[b].unique():
            assert mask[b, 0][lmap[b] == c].unique().numel() == 1
    assert 0.2 < mask.mean().item() < 0.8  # about half the classes are kept


def test_unet_discriminator_segments_at_full_resolution():
    d = UNetDiscriminator(num_classes=11, channels=(8, 16, 32))
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 12, 32, 32)
    with pytest.raises(ValueError, match="divisible by 8"):
        d(torch.randn(1, 3, 36, 36))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        d(torch.randn(1, 1, 32, 32))


def test_resume_continues_exactly_where_a_straight_run_would_be(tmp_path):
    straight = train_backbone(tiny_config(), tmp_path / "a", progress=False)
    assert straight["steps"] == 4
    train_backbone(tiny_config(steps=2), tmp_path / "b", progress=False)
    resumed = train_backbone(tiny_config(), tmp_path / "b", resume=True, progress=False)
    assert resumed["resumed_from"] == 2
    a, b = (
        load_tensors(tmp_path / "a" / "checkpoint.safetensors"),
        load_tensors(tmp_path / "b" / "checkpoint.safetensors"),
    )
    assert set(a) == set(b) and any(k.startswith("opt_d.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # training moved the weights away from their initialisation
    torch.manual_seed(3)
    from fiancee.backbones.oasis import OASISConfig, OASISGenerator

    fresh = OASISGenerator(OASISConfig(**tiny_config().generator)).state_dict()
    assert not torch.equal(fresh["fc.weight"], a["G.fc.weight"])
    # run folder: config first, one stats line per step, an exported EMA backbone that loads
    assert json.loads((tmp_path / "a" / "config.json").read_text())["seed"] == 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    g = load_fashion_backbone(tmp_path / "a" / "backbone")
    meta = json.loads((tmp_path / "a" / "backbone" / "config.json").read_text())
    assert meta["trained_steps"] == 4 and meta["train_config"]["steps"] == 4
    label = torch.nn.functional.one_hot(torch.zeros(1, 32, 32, dtype=torch.long), 11).permute(0, 3, 1, 2).float()
    assert g(label, torch.zeros(1, 4)).shape == (1, 3, 32, 32)


def test_run_folder_guards(tmp_path):
    train_backbone(tiny_config(steps=1), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="--resume"):
        train_backbone(tiny_config(steps=1), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="different settings.*lr_g"):
        train_backbone(tiny_config(steps=2, lr_g=1e-3), tmp_path / "r", resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train_backbone(tiny_config(), tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(ValueError, match="unknown training config keys"):
        BackboneTrainConfig.from_dict({"learning_rate": 1})


def test_cli_train_backbone(tmp_path, capsys):
    cfg = tmp_path / "tiny.json"
    write_json(cfg, tiny_config().to_dict())
    rc = main(
        [
            "train-backbone",
            "--task",
            "fashion",
            "--config",
            str(cfg),
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "1",
            "--seed",
            "4",
        ]
    )
    assert rc == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == 4
    assert (
        main(
            [
                "train-backbone",
                "--task",
                "fashion",
                "--config",
                str(tmp_path / "nope.json"),
                "--out",
                str(tmp_path / "run2"),
            ]
        )
        == 2
    )
    assert "expected a JSON file" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_backbone_run_resumes_to_the_weights_of_a_straight_run(tmp_path, one_thread):
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors import safe_open

    config = tiny_config(steps=24, checkpoint_every=4, log_every=1)
    cfg = tmp_path / "tiny.json"
    write_json(cfg, config.to_dict())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(out, *extra):
        return [
            sys.executable,
            "-m",
            "fiancee",
            "train-backbone",
            "--task",
            "fashion",
            "--config",
            str(cfg),
            "--out",
            str(out),
            *extra,
        ]

    def checkpoint_step(out) -> int:
        with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
            return int(f.metadata()["step"])

    out = tmp_path / "killed"
    proc = subprocess.Popen(cli(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoint.safetensors").is_file() and checkpoint_step(out) >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run, no chance to clean up
    proc.wait()
    killed_at = checkpoint_step(out)
    assert 8 <= killed_at < 24, "the run finished before it could be killed: make it longer"
    subprocess.run(cli(out, "--resume"), env=env, check=True, capture_output=True)
    # The straight run in this process, on one thread like the CLI runs: the same arithmetic.
    straight = tmp_path / "straight"
    train_backbone(config, straight, progress=False)
    a, b = load_tensors(out / "checkpoint.safetensors"), load_tensors(straight / "checkpoint.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 25))  # nothing lost, nothing repeated
