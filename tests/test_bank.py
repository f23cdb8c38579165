"""The guiding feature bank on the real backbones: FPS, per-class FAISS retrieval, folders, fingerprints, CLI."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fiancee.bank import (
    BankSpec,
    build_feature_bank,
    cut_patches,
    farthest_point_sampling,
    glue_patches,
    load_bank,
    majority_labels,
)
from fiancee.exits import ExitGenerator
from fiancee.tasks import get_task
from fiancee.train.bank import bank_inputs

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def faces(faces_task, faces_backbone):
    return faces_task, faces_backbone


@pytest.fixture(scope="module")
def fashion(fashion_backbone):
    return get_task("fashion"), fashion_backbone


def _faces_bank(faces, mode="global", n=48, k=32, index="flat"):
    task, backbone = faces
    inputs, pop = bank_inputs(task, n, 1, seed=0)
    spec = BankSpec(mode=mode, key_stage=1, value_stage=2, grid=(4, 4), max_per_class=k, index=index)
    return build_feature_bank(backbone, inputs, spec, task="faces", population=pop)


def _key_features(backbone, inputs, stage=1):
    h, cond = backbone.stem(*inputs)
    for s in backbone.stages[:stage]:
        h = s(h, cond)
    return h, cond


def test_farthest_point_sampling_is_greedy_and_covers_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])  # 4 tight clusters
    idx = farthest_point_sampling(points, 4, seed=3)
    assert len(set(idx.tolist())) == 4
    assert sorted(set((i // 50) for i in idx.tolist())) == [0, 1, 2, 3]  # one pick per cluster
    # every pick after the first is the point farthest from those already chosen
    idx = farthest_point_sampling(points, 12, seed=1)
    for i in range(1, 12):
        d = torch.cdist(points, points[idx[:i]]).min(1).values
        assert int(idx[i]) == int(d.argmax())
    assert torch.equal(idx, farthest_point_sampling(points, 12, seed=1))  # seeded
    assert torch.equal(farthest_point_sampling(points, 500), torch.arange(200))  # k >= N keeps all
    with pytest.raises(ValueError, match="positive"):
        farthest_point_sampling(points, 0)


def test_patches_round_trip_and_majority_labels():
    x = torch.randn(2, 5, 8, 12)
    p = cut_patches(x, (2, 3))
    assert p.shape == (2, 6, 5, 4, 4)
    assert torch.equal(p[1, 4], x[1, :, 4:8, 4:8])  # row-major cell order
    assert torch.equal(glue_patches(p, (2, 3)), x)
    with pytest.raises(ValueError, match="grid"):
        cut_patches(x, (3, 3))
    label = torch.zeros(1, 3, 4, 4)
    label[0, 0] = 1
    label[0, 0, :2, :2], label[0, 2, :2, :2] = 0, 1  # top-left cell: class 2
    label[0, 0, 2:, 2:], label[0, 1, 2:, 2:] = 0, 1  # bottom-right cell: class 1 ...
    label[0, 0, 3, 2], label[0, 1, 3, 2] = 1, 0  # ... on 3 of its 4 pixels
    assert majority_labels(label, (2, 2)).tolist() == [[2, 0, 0, 1]]


def test_global_bank_save_load_same_guide_and_feeds_every_branch(faces, tmp_path):
    task, backbone = faces
    bank = _faces_bank(faces)
    assert len(bank) == 32 and bank.manifest["candidates"] == 48
    assert bank.guide_spec.mode == "every" and bank.guide_spec.channels == 3
    (z,) = task.sample_inputs(5, seed=0, split="test")
    h, _ = _key_features(backbone, (z,))
    g = bank.guide(h, None)  # [5, 3, 64, 64]: retrieved backbone images
    assert g.shape == (5, 3, 64, 64)
    ids = bank.search(h, None)[:, 0]
    keys = bank.keys
    q = torch.nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)
    assert torch.equal(ids, torch.cdist(q, keys).argmin(1))  # exact nearest neighbour
    assert torch.equal(g, bank.values[ids])

    bank.save(tmp_path / "bank")
    assert {p.name for p in (tmp_path / "bank").iterdir()} == {
        "manifest.json",
        "entries.safetensors",
        "index_all.faiss",
    }
    assert not list(tmp_path.glob(".*"))  # the temporary folder was renamed, nothing left behind
    loaded = load_bank(tmp_path / "bank", backbone)
    assert torch.equal(loaded.guide(h, None), g)
    with pytest.raises(ValueError, match="already exists"):
        bank.save(tmp_path / "bank")

    model = ExitGenerator(backbone, task.attach_after, "1/4", 16, guide=loaded.guide_spec).eval()
    for r in range(model.num_routes):
        assert model(z, route=r, guide=loaded.guide).shape == (5, 3, 64, 64)
    mixed = model(z, route=torch.tensor([0, 1, 2, 3, 0]), guide=loaded.guide)
    assert torch.allclose(mixed[1], model(z[1:2], route=1, guide=loaded.guide)[0], atol=1e-5)


def test_wrong_fingerprint_is_refused(faces, tmp_path):
    task, backbone = faces
    _faces_bank(faces, n=16, k=8).save(tmp_path / "bank")
    other = task.load_backbone()
    with torch.no_grad():
        other.main[0].weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(ValueError, match="fingerprint") as err:
        load_bank(tmp_path / "bank", other)
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert manifest["backbone_fingerprint"] in str(err.value)
    assert load_bank(tmp_path / "bank", backbone) is not None
    with pytest.raises(FileNotFoundError, match="no feature bank"):
        load_bank(tmp_path / "missing", backbone)


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_patch_bank_approximate_indexes(faces, tmp_path, index):
    task, backbone = faces
    bank = _faces_bank(faces, mode="patch", n=24, k=200, index=index)
    assert bank.guide_spec.mode == "first" and bank.guide_spec.channels == 256
    (z,) = task.sample_inputs(3, seed=1, split="test")
    h, _ = _key_features(backbone, (z,))
    g = bank.guide(h, None)
    assert g.shape == (3, 256, 8, 8)  # value stage 2 of the DCGAN: 256 x 8 x 8, glued from a 4x4 grid
    bank.save(tmp_path / index)
    assert torch.equal(load_bank(tmp_path / index, backbone).guide(h, None), g)
    model = ExitGenerator(backbone, task.attach_after, "1/4", 16, guide=bank.guide_spec).eval()
    assert model(z, route=0, guide=bank.guide).shape == (3, 3, 64, 64)


def test_fashion_patch_bank_searches_each_patch_in_its_class(fashion, tmp_path):
    task, backbone = fashion
    # Built from test-split maps only to keep the test fast (bank_inputs reads the 60k training maps).
    label, _ = task.sample_inputs(24, seed=5, split="test")
    noises = torch.randn(2, backbone.config.z_dim, generator=torch.Generator().manual_seed(0))
    inputs = (label.repeat_interleave(2, 0), noises.repeat(24, 1))  # every map x a fixed set of 2 noises
    pop = {"inputs": 48, "label_maps": 24, "noises": 2}
    spec = BankSpec(mode="patch", key_stage=1, value_stage=2, grid=(4, 4), max_per_class=40)
    bank = build_feature_bank(backbone, inputs, spec, label_channels=11, task="fashion", population=pop)
    counts = {int(c): n for c, n in bank.manifest["per_class_counts"].items()}
    assert counts[0] == 40 and all(n <= 40 for n in counts.values())
    # The worst case a pipeline charges: every patch against the largest index it can reach; the whole-bank
    # index only serves classes without their own, so it counts only when some class lacks one.
    d = bank.keys.shape[1]
    reach = max(counts.values()) if len(counts) == 11 else max(len(bank), max(counts.values()))
    assert bank.search_macs_bound() == 16 * reach * d
    bank.save(tmp_path / "bank")
    assert (tmp_path / "bank" / "index_class_0.faiss").is_file()
    loaded = load_bank(tmp_path / "bank", backbone)

    label, z = task.sample_inputs(6, seed=0, split="test")
    h, cond = _key_features(backbone, (label, z))
    ids = loaded.search(h, cond)  # [6, 16]
    want = majority_labels(label, (4, 4))
    have = loaded.classes[ids]
    known = torch.tensor([int(c) in counts for c in want.flatten()]).view_as(want)
    assert known.any() and torch.equal(have[known], want[known])  # every patch answered from its own class
    g = loaded.guide(h, cond)
    assert g.shape == (6, 48, 16, 16) and torch.equal(g, bank.guide(h, cond))
    model = ExitGenerator(backbone, task.attach_after, "1/4", 8, guide=loaded.guide_spec).eval()
    assert model(label, z, route=0, guide=loaded.guide).shape == (6, 3, 32, 32)
    with pytest.raises(ValueError, match="label map"):
        loaded.guide(h, None)


def test_build_bank_cli_and_errors(tmp_path):
    out = tmp_path / "bank"
    cmd = [
        sys.executable,
        "-m",
        "fiancee",
        "build-bank",
        "--task",
        "faces",
        "--out",
        str(out),
        "--n",
        "40",
        "--max-per-class",
        "16",
        "--no-progress",
        "--latency",
        "--reps",
        "3",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert lines[0]["entries"] == 16 and lines[0]["mode"] == "global"
    assert [row["batch_size"] for row in lines[1]["results"]] == [1, 32]
    assert all(row["retrieval_ms"] > 0 and row["smallest_route_ms"] > 0 for row in lines[1]["results"])
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 2 and "already exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(
        cmd[:-6] + ["--out", str(tmp_path / "b2"), "--grid", "4y"], capture_output=True, text=True, env=ENV
    )
    assert r.returncode == 2 and "--grid" in r.stderr


def test_ablation_refuses_arms_of_different_budgets(tmp_path):
    from fiancee.bank_ablation import bank_ablation
    from fiancee.exit_quality import exit_quality
    from fiancee.train.exits import make_config
    from fiancee.train.run import RunDir

    base = make_config("faces", preset="quick", steps=10).to_dict()
    RunDir(tmp_path / "a").write_config({**base, "kind": "exits"})
    RunDir(tmp_path / "a2").write_config({**base, "kind": "exits"})
    RunDir(tmp_path / "b").write_config({**base, "kind": "exits", "bank": "somewhere", "steps": 20})
    RunDir(tmp_path / "b2").write_config({**base, "kind": "exits", "bank": "somewhere", "steps": 20})
    with pytest.raises(ValueError, match=r"share the training budget; they differ in steps \(10 vs 20\)"):
        bank_ablation(tmp_path / "a", tmp_path / "b", tmp_path / "out", n=4)
    with pytest.raises(ValueError, match="trained without a bank"):
        bank_ablation(tmp_path / "a", tmp_path / "a2", tmp_path / "out", n=4)
    with pytest.raises(ValueError, match="the first run must be the one without"):
        bank_ablation(tmp_path / "b", tmp_path / "b2", tmp_path / "out", n=4)
    # The one study refuses the same, before any work: the old command is exit-quality --bank-ablation.
    with pytest.raises(ValueError, match="exactly two runs"):
        exit_quality([tmp_path / "a", tmp_path / "a2", tmp_path / "b"], n=4, bank_ablation=True)
    with pytest.raises(ValueError, match=r"differ in steps \(10 vs 20\)"):
        exit_quality([tmp_path / "a", tmp_path / "b"], n=4, bank_ablation=True)
    assert not (tmp_path / "out").exists()


_TINY = {}


def _tiny_oasis():
    if "bb" not in _TINY:
        from fiancee.backbones import build_backbone

        torch.manual_seed(0)
        _TINY["bb"] = build_backbone("oasis", "tiny").eval()
    return _TINY["bb"]


def _blocky_maps(n: int, classes: list[int], block: int, g: torch.Generator, num_labels: int = 5) -> torch.Tensor:
    """One-hot maps [n, L, 32, 32] whose blocks of ``block`` px each take one of ``classes``."""
    cells = 32 // block
    pick = torch.tensor(classes)[torch.randint(len(classes), (n, cells, cells), generator=g)]
    maps = pick.repeat_interleave(block, 1).repeat_interleave(block, 2)
    return torch.nn.functional.one_hot(maps, num_labels).permute(0, 3, 1, 2).float()


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    present=st.integers(1, 5),
    k=st.integers(1, 10),
    grid=st.sampled_from([(2, 2), (4, 4), (2, 4)]),
    block=st.sampled_from([4, 8, 16]),
)
def test_property_patch_retrieval_answers_every_patch_from_its_own_class(seed, present, k, grid, block):
    backbone = _tiny_oasis()
    g = torch.Generator().manual_seed(seed)
    classes = torch.randperm(5, generator=g)[:present].tolist()  # the bank knows only these classes
    inputs = (_blocky_maps(8, classes, block, g), torch.randn(8, 8, generator=g))
    spec = BankSpec(mode="patch", key_stage=1, value_stage=2, grid=grid, max_per_class=k)
    bank = build_feature_bank(backbone, inputs, spec, label_channels=5, task="tiny")
    counts = {int(c): int(n) for c, n in bank.manifest["per_class_counts"].items() if int(n) > 0}
    assert all(n <= k for n in counts.values()) and set(counts) <= set(classes)

    query = (_blocky_maps(3, list(range(5)), block, g), torch.randn(3, 8, generator=g))  # every class
    h, cond = _key_features(backbone, query)
    ids = bank.search(h, cond)  # [3, cells]
    assert ids.shape == (3, grid[0] * grid[1]) and int(ids.min()) >= 0 and int(ids.max()) < len(bank)
    want = majority_labels(query[0], grid)
    have = bank.classes[ids]
    known = torch.tensor([int(c) in counts for c in want.flatten()]).view_as(want)
    assert torch.equal(have[known], want[known])  # a class the bank holds is answered from that class


def test_a_key_function_named_module_attr_is_recorded_and_resolved_again(tmp_path, monkeypatch):
    # Key functions are named like tasks: a bank built with "module:attr" stores that spec, and
    # loading it imports the function again when the user allows that code (a folder's module:attr is
    # refused otherwise: tests/test_folder_specs.py); a fresh process only needs the module on sys.path.
    (tmp_path / "mykeys.py").write_text("def corners(h):\n    return h[:, :, ::2, ::2].float().flatten(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from fiancee.backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("g2d", "tiny").eval()
    inputs = backbone.example_inputs(6)
    key_stage = backbone.config.exits[0]
    spec = BankSpec(
        mode="global",
        key_stage=key_stage,
        value_stage=backbone.num_stages // 2,
        max_per_class=8,
        key_function="mykeys:corners",
    )
    bank = build_feature_bank(backbone, inputs, spec)
    bank.save(tmp_path / "bank")
    from fiancee.specs import allow_folder_code

    with allow_folder_code("mykeys:corners"):
        loaded = load_bank(tmp_path / "bank", backbone)
    assert loaded.manifest["key_function"] == "mykeys:corners"
    h = backbone.features(*inputs, taps=(key_stage,)).taps[key_stage]
    assert loaded.query_keys(h).shape[-1] == h[:, :, ::2, ::2].flatten(1).shape[1]
    assert torch.equal(loaded.search(h), torch.arange(6)[:, None])  # every input finds itself
    with pytest.raises(ValueError, match="cannot import module 'no_such_keys'"):
        BankSpec(mode="global", key_function="no_such_keys:f")


def test_an_exit_run_keeps_its_own_copy_of_the_bank(faces, tmp_path, one_thread):
    """A run trained with --bank is complete by itself: it loads after the user's bank folder is gone and
    the run moved, its export carries the bank, and a resume must name the same bank."""
    import shutil

    from fiancee.train.exits import load_exits, make_config, run_bank_path, run_guide, train_exits
    from fiancee.train.run import RunDir

    _faces_bank(faces, k=8).save(tmp_path / "user_bank")
    config = make_config(
        "faces", preset="smoke", steps=1, batch_size=2, checkpoint_every=1, bank=str(tmp_path / "user_bank")
    )
    train_exits(config, tmp_path / "run", device="cpu", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["bank"] == "bank" and str(tmp_path) not in json.dumps(saved)  # no path of the machine in the run
    copy = json.loads((tmp_path / "run" / "bank" / "manifest.json").read_text())
    assert copy == json.loads((tmp_path / "user_bank" / "manifest.json").read_text())

    # Another bank (same backbone, another size) or none: a resume is refused before any step.
    _faces_bank(faces, k=12).save(tmp_path / "other_bank")
    later = make_config(
        "faces", preset="smoke", steps=2, batch_size=2, checkpoint_every=1, bank=str(tmp_path / "other_bank")
    )
    with pytest.raises(ValueError, match="not the bank the run was trained with"):
        train_exits(later, tmp_path / "run", resume=True, device="cpu", progress=False)
    none = make_config("faces", preset="smoke", steps=2, batch_size=2, checkpoint_every=1)
    with pytest.raises(ValueError, match="trained with a bank, this command passes none"):
        train_exits(none, tmp_path / "run", resume=True, device="cpu", progress=False)

    shutil.rmtree(tmp_path / "user_bank")
    shutil.move(tmp_path / "run", tmp_path / "moved")
    task, model = load_exits(tmp_path / "moved")
    assert run_bank_path(tmp_path / "moved") == (tmp_path / "moved" / "bank").resolve()
    (z,) = task.sample_inputs(2, seed=0, split="test")
    assert model(z, route=0, guide=run_guide(tmp_path / "moved", model)).shape == (2, 3, 64, 64)
    slim = RunDir(tmp_path / "moved").export(tmp_path / "slim")
    assert (slim / "bank" / "manifest.json").is_file() and load_exits(slim)[1].guide_spec is not None

    # A config naming a bank outside the run (written before runs kept a copy) is refused with the way out.
    legacy = json.loads((slim / "config.json").read_text())
    (slim / "config.json").write_text(json.dumps({**legacy, "bank": str(tmp_path / "other_bank")}))
    with pytest.raises(ValueError, match="must be 'bank' \\(the run's own copy of its bank\\)"):
        load_exits(slim)
