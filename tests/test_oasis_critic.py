"""Eq. 3's critics: the backbone export keeps its U-Net discriminator, and every exit's critic starts as
an exact copy of it, trained with OASIS's balanced N+1-class loss conditioned on the label map."""

import json
import shutil

import pytest
import torch
from test_exit_quality import small_data  # noqa: F401 (a fixture: $FIANCEE_DATA = 300 real images per split)
from test_train_backbone import tiny_config

from fiancee.cli import main
from fiancee.io import load_tensors
from fiancee.tasks.fashion import FashionTask, load_fashion_backbone, load_fashion_discriminator
from fiancee.train.backbone import export_checkpoint, train_backbone
from fiancee.train.critics import OASISCritic
from fiancee.train.exits import build_critics, critic_kind, make_config, train_exits
from fiancee.train.losses import Recipe
from fiancee.train.run import RunDir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("bb") / "run"
    train_backbone(tiny_config(steps=2, checkpoint_every=2), run, progress=False)
    return run


@pytest.fixture()
def tiny_weights(tiny_run, tmp_path, monkeypatch):
    """$FIANCEE_WEIGHTS/fashion = the tiny run's export (generator + discriminator)."""
    shutil.copytree(tiny_run / "backbone", tmp_path / "weights" / "fashion")
    monkeypatch.setenv("FIANCEE_WEIGHTS", str(tmp_path / "weights"))
    return tmp_path / "weights" / "fashion"


def test_the_export_keeps_the_discriminator_and_a_checkpoint_exports_the_same(tiny_run, tmp_path):
    folder = tiny_run / "backbone"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["discriminator"]["num_classes"] == 11 and cfg["discriminator"]["channels"] == [8, 8, 16]
    d = load_fashion_discriminator(folder)
    ckpt = load_tensors(tiny_run / "checkpoint.safetensors")
    for k, v in d.state_dict().items():
        assert torch.equal(v, ckpt[f"D.{k}"]), k
    assert d(torch.zeros(1, 3, 32, 32)).shape == (1, 12, 32, 32)
    # Without training: the same files (BatchNorm statistics re-measured on the same seeded batches).
    result = export_checkpoint(tiny_run, tmp_path / "again")
    assert result["step"] == 2
    for name in ("backbone.safetensors", "discriminator.safetensors"):
        a, b = load_tensors(folder / name), load_tensors(tmp_path / "again" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == cfg
    # The CLI: one line on a folder that is no run.
    assert main(["export-backbone", str(tmp_path / "again"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_a_backbone_folder_without_a_discriminator_still_loads_and_falls_back_to_dcgan(tiny_run, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(tiny_run / "backbone", folder)
    (folder / "discriminator.safetensors").unlink()
    cfg = json.loads((folder / "config.json").read_text())
    half = {**cfg}
    del half["discriminator"]
    (folder / "config.json").write_text(json.dumps(half))
    assert load_fashion_discriminator(folder) is None
    load_fashion_backbone(folder)
    task = FashionTask(weights=folder)
    assert task.critic_kind == "dcgan" and "discriminator.safetensors" in task.critic_note()
    with pytest.raises(ValueError, match="ships none"):
        critic_kind(task, Recipe(name="oasis", critic="oasis"))
    # Half a discriminator (weights without their config entry) is refused in one line.
    shutil.copy(tiny_run / "backbone" / "discriminator.safetensors", folder)
    with pytest.raises(ValueError, match="found only one"):
        load_fashion_discriminator(folder)


def test_the_committed_backbone_ships_its_discriminator_and_a_folder_without_one_refuses_oasis(tmp_path, monkeypatch):
    from fiancee.tasks.base import weights_dir

    monkeypatch.delenv("FIANCEE_WEIGHTS", raising=False)
    task = FashionTask()
    assert task.load_discriminator() is not None and task.critic_kind == "oasis"  # eq. 3 by default
    # The same backbone without its discriminator: fresh critics by default, an explicit oasis refused.
    shipped = weights_dir("fashion")
    (tmp_path / "w" / "fashion").mkdir(parents=True)
    for name in ("backbone.safetensors", "config.json", "classifier.safetensors", "classifier.json"):
        shutil.copy(shipped / name, tmp_path / "w" / "fashion" / name)
    config_json = json.loads((tmp_path / "w" / "fashion" / "config.json").read_text())
    config_json.pop("discriminator", None)
    (tmp_path / "w" / "fashion" / "config.json").write_text(json.dumps(config_json))
    monkeypatch.setenv("FIANCEE_WEIGHTS", str(tmp_path / "w"))
    assert FashionTask().critic_kind == "dcgan"
    config = make_config("fashion", preset="smoke", steps=1, batch_size=2, recipe_overrides={"critic": "oasis"})
    with pytest.raises(ValueError, match="oasis critic copies the backbone's own discriminator"):
        train_exits(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_oasis_critics_start_as_exact_copies_and_train(small_data, tiny_weights, tmp_path):  # noqa: F811 (pytest fixture)
    task = FashionTask()
    assert task.critic_kind == "oasis" and task.critic_note() is None
    # quick keeps the adversarial term when the critic is the backbone's own discriminator (eq. 3)
    assert make_config("fashion", preset="quick").recipe["adversarial"] == 1.0
    disc = task.load_discriminator()
    critics = build_critics(task, Recipe(name="oasis"), 3, seed=0)
    assert all(isinstance(c, OASISCritic) and c.label_index == 0 for c in critics)
    for c in critics:
        got = c.net.state_dict()
        assert got.keys() == disc.state_dict().keys()
        assert all(torch.equal(v, got[k]) for k, v in disc.state_dict().items())
        assert c.net is not disc and all(p.requires_grad for p in c.net.parameters())
    # Its loss reads the label map: a perfect segmentation of the real image scores ~0 on real pixels.
    inputs = task.sample_inputs(2, seed=0, split="train")
    real = task.reference(task.load_backbone(), inputs)
    assert torch.isfinite(critics[0].d_loss(real, real.clone(), inputs)) and int(critics[0].draws) == 1

    out = tmp_path / "run"
    config = make_config("fashion", preset="smoke", steps=2, batch_size=2, checkpoint_every=2, seed=1)
    assert config.recipe["adversarial"] > 0 and config.recipe["critic"] == "task"
    train_exits(config, out, device="cpu", progress=False)
    run = RunDir(out)
    assert run.read_config()["critic_kind"] == "oasis"
    stats = run.read_stats()
    assert all(f"exit{i}/adv" in stats[-1] and f"exit{i}/d" in stats[-1] for i in range(3))
    comps, _ = run.load_checkpoint(["critics"])
    trained = comps["critics"]
    ref = disc.state_dict()
    assert int(trained["critics.0.draws"]) == 2
    key = next(k for k in ref if k.endswith("original"))
    assert not torch.equal(trained[f"critics.0.net.{key}"], ref[key])  # the copy was trained
    # A resumed run refuses critics of another kind (the backbone folder lost its discriminator).
    (tiny_weights / "discriminator.safetensors").unlink()
    cfg = json.loads((tiny_weights / "config.json").read_text())
    del cfg["discriminator"]
    (tiny_weights / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="critics are 'oasis'"):
        train_exits(
            make_config(
                "fashion",
                preset="smoke",
                steps=3,
                batch_size=2,
                checkpoint_every=2,
                seed=1,
                recipe_overrides={"adversarial": 1.0},
            ),
            out,
            resume=True,
            progress=False,
        )
