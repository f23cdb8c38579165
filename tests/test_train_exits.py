"""Exit training on the real faces backbone: run folders, recipes, torchrun + DDP, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fiancee.cli import main
from fiancee.train.exits import load_exits, make_config, train_exits
from fiancee.train.losses import RECIPES, get_recipe, lr_at
from fiancee.train.run import RunDir

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fiancee", *args]


def test_recipes_hold_the_papers_numbers():
    oasis, mp = get_recipe("oasis"), get_recipe("megaportraits")
    assert (oasis.adversarial, oasis.vgg, oasis.lpips, oasis.optimizer, oasis.lr, oasis.betas) == (
        1.0,
        10.0,
        5.0,
        "adam",
        4e-4,
        (0.0, 0.999),
    )
    assert (mp.vgg, mp.ms_ssim, mp.l1, mp.feature_matching) == (18.0, 0.84, 0.16, 40.0)
    assert (mp.optimizer, mp.lr, mp.betas, mp.eps, mp.weight_decay, mp.critic) == (
        "adamw",
        2e-4,
        (0.05, 0.999),
        1e-8,
        1e-2,
        "patch",
    )
    assert lr_at(mp, 0, 100) == pytest.approx(2e-4) and lr_at(mp, 100, 100) == pytest.approx(1e-6)
    assert lr_at(mp, 50, 100) == pytest.approx((2e-4 + 1e-6) / 2)
    with pytest.raises(ValueError, match="unknown recipe fields"):
        RECIPES["oasis"].replace(bogus=1)
    with pytest.raises(ValueError, match="learning rate must be a number in \\(0, 1\\); got -0.1"):
        RECIPES["oasis"].replace(lr=-0.1)
    with pytest.raises(ValueError, match="unknown schedule 'linear'; expected one of \\['constant', 'cosine'\\]"):
        RECIPES["oasis"].replace(schedule="linear")


def test_train_exits_takes_a_learning_rate_and_schedule_and_records_them():
    from fiancee.cli import build_parser
    from fiancee.cli.exits import exit_config

    line = "train-exits --task faces --preset smoke --lr 1e-4 --schedule cosine --out runs/never"
    recipe = exit_config(build_parser().parse_args(line.split())).to_dict()["recipe"]
    assert (recipe["lr"], recipe["schedule"], recipe["lr_min"]) == (1e-4, "cosine", 0.0)
    rec = get_recipe("oasis").replace(lr=1e-4, schedule="cosine")
    assert lr_at(rec, 0, 10) == pytest.approx(1e-4) and lr_at(rec, 10, 10) == 0.0
    default = exit_config(build_parser().parse_args(line.split()[:5] + ["--out", "runs/never"])).to_dict()["recipe"]
    assert (default["lr"], default["schedule"]) == (4e-4, "constant")
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("nope")


@pytest.mark.parametrize("recipe", ["oasis", "megaportraits"])
def test_a_short_run_is_a_complete_folder(tmp_path, recipe):
    out = tmp_path / "run"
    config = make_config("faces", recipe=recipe, preset="smoke", steps=2, batch_size=2, checkpoint_every=1, seed=3)
    train_exits(config, out, device="cpu", progress=False)
    run = RunDir(out)
    cfg = run.read_config()
    assert cfg["task"] == "faces" and cfg["recipe"]["name"] == recipe and cfg["kind"] == "fiancee-exits-run"
    stats = run.read_stats()
    assert [r["step"] for r in stats] == [1, 2]
    for i in range(3):  # per-exit losses logged separately
        assert f"exit{i}/g" in stats[-1] and f"exit{i}/d" in stats[-1]
    if recipe == "megaportraits":
        assert "exit0/fm" in stats[-1] and "exit0/ms_ssim" in stats[-1] and "exit0/l1" in stats[-1]
    latest = run.latest()
    assert latest["step"] == 2
    folder = out / latest["dir"]
    assert {p.name for p in folder.iterdir()} == {
        "branches.safetensors",
        "critics.safetensors",
        "opt_g.safetensors",
        "opt_d.safetensors",
        "state.json",
    }
    assert not list((out / "checkpoints").glob(".*tmp"))  # no half-written checkpoint left behind
    task, model = load_exits(out)
    assert not model.training and model.num_routes == 4
    with pytest.raises(ValueError, match="already holds a run"):
        train_exits(config, out, device="cpu", progress=False)


def test_resume_refuses_a_different_config(tmp_path):
    out = tmp_path / "run"
    train_exits(make_config("faces", preset="smoke", steps=1, batch_size=2), out, device="cpu", progress=False)
    other = make_config("faces", preset="smoke", steps=2, batch_size=2, scale="1/4")  # the task default is 1/2
    with pytest.raises(ValueError, match="cannot resume .* scale"):
        train_exits(other, out, resume=True, device="cpu", progress=False)
    assert RunDir(out).read_config()["steps"] == 1  # a refused resume writes nothing
    # A run continued to a longer budget names that budget (exits exported from it say how long they trained).
    train_exits(
        make_config("faces", preset="smoke", steps=2, batch_size=2), out, resume=True, device="cpu", progress=False
    )
    assert RunDir(out).read_config()["steps"] == 2 and RunDir(out).latest()["step"] == 2


def test_evaluate_exits_cli_json(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train-exits",
                "--task",
                "faces",
                "--preset",
                "smoke",
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--out",
                str(out),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate-exits", str(out), "--n", "4", "--json", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads(capsys.readouterr().out)
    exits = report["exits"]
    assert len(exits) == 3
    for e in exits:
        for key in ("macs", "lpips_mean", "lpips_median", "lpips_p90", "fid"):
            assert isinstance(e[key], (int, float)), key
        assert 0 <= e["lpips_mean"] <= 1.5 and e["fid"] >= 0
        assert 0 < e["psnr_mean"] < 100  # an untrained exit differs from the backbone's image
    assert [e["macs"] for e in exits] == sorted(e["macs"] for e in exits)
    assert exits[-1]["macs"] < report["backbone_macs"]
    # Users read exits 1..E; the API's 0-based route index rides along.
    assert [e["exit"] for e in exits] == [1, 2, 3] and [e["route"] for e in exits] == [0, 1, 2]
    assert (tmp_path / "eval" / "exits_grid.png").is_file()
    assert not (out / "eval").exists()  # the run folder is never written into
    # The same --out again is refused (one line, nothing replaced) unless --overwrite.
    assert main(["evaluate-exits", str(out), "--n", "4", "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err


@pytest.mark.slow
def test_torchrun_two_processes_keep_identical_replicas(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "fiancee",
        "train-exits",
        "--task",
        "faces",
        "--preset",
        "smoke",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "3",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    # torchrun runs `python -m fiancee` when given -m: keep the same interpreter and package.
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = RunDir(out)
    assert run.read_config()["world_size"] == 2
    state = json.loads((out / run.latest()["dir"] / "state.json").read_text())
    prints = state["replica_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    assert [r["step"] for r in run.read_stats()] == [1, 2, 3]  # rank 0 alone writes


@pytest.mark.slow
def test_killed_run_resumes_and_the_loss_curve_continues(tmp_path, one_thread):
    out = tmp_path / "killed"
    args = (
        "train-exits",
        "--task",
        "faces",
        "--preset",
        "smoke",
        "--steps",
        "12",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "2",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
        "--seed",
        "5",
    )
    proc = subprocess.Popen(_cli(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = RunDir(out)
    deadline = time.time() + 240
    while time.time() < deadline:
        latest = run.latest() if (out / "latest.json").exists() else None
        if latest and latest["step"] >= 4 and len(run.read_stats()) > latest["step"]:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    killed_at = run.latest()["step"]
    assert 4 <= killed_at < 12
    subprocess.run(_cli(*args, "--resume"), env=ENV, check=True, capture_output=True)
    steps = [r["step"] for r in run.read_stats()]
    assert steps == list(range(1, 13))  # same step count, no gap and no repeat
    assert run.latest()["step"] == 12

    # The resumed run is the run that was never interrupted: same batches, same weights. The straight
    # run goes through the same CLI in this process, on one thread like the subprocesses.
    ref = tmp_path / "straight"
    assert main([*args[:-7], "--out", str(ref), "--no-progress", "--device", "cpu", "--seed", "5"]) == 0
    from fiancee.io import load_tensors

    a = load_tensors(out / run.latest()["dir"] / "branches.safetensors")
    b = load_tensors(ref / RunDir(ref).latest()["dir"] / "branches.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_crash_inside_a_checkpoint_write_loses_nothing_before_it(tmp_path, monkeypatch, one_thread):
    """Dies while checkpoint 4 is half written: latest stays at 2, the half folder is never read,
    and the resumed run ends with the weights of a run that never died."""
    import fiancee.train.run as run_module

    real_save = run_module.save_tensors
    calls = {"n": 0}

    def dying_save(path, tensors, metadata=None):
        if ".step_00000004.tmp" in str(path):
            calls["n"] += 1
            if calls["n"] == 2:  # the second component of checkpoint 4
                raise OSError("disk vanished mid-checkpoint")
        return real_save(path, tensors, metadata)

    config = make_config("faces", preset="smoke", steps=6, batch_size=2, checkpoint_every=2, seed=7)
    out = tmp_path / "crashed"
    monkeypatch.setattr(run_module, "save_tensors", dying_save)
    with pytest.raises(OSError, match="disk vanished"):
        train_exits(config, out, device="cpu", progress=False)
    monkeypatch.setattr(run_module, "save_tensors", real_save)
    run = RunDir(out)
    assert run.latest()["step"] == 2
    assert not (out / "checkpoints" / "step_00000004").exists()  # only the temporary half folder
    train_exits(config, out, resume=True, device="cpu", progress=False)
    assert run.latest()["step"] == 6 and [r["step"] for r in run.read_stats()] == list(range(1, 7))
    assert not list((out / "checkpoints").glob(".step_*.tmp"))

    train_exits(config, tmp_path / "straight", device="cpu", progress=False)
    a = run.load_checkpoint(["branches"])[0]["branches"]
    b = RunDir(tmp_path / "straight").load_checkpoint(["branches"])[0]["branches"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_inherit_and_feature_distillation_are_recorded_and_resume_checks_them(tmp_path):
    out = tmp_path / "run"
    config = make_config(
        "faces", preset="smoke", steps=2, batch_size=2, checkpoint_every=1, recipe_overrides={"features": 1.0}
    )
    assert config.init == "inherit"  # the default
    train_exits(config, out, device="cpu", progress=False)
    run = RunDir(out)
    assert run.read_config()["init"] == "inherit" and run.read_config()["recipe"]["features"] == 1.0
    assert "exit0/feat" in run.read_stats()[-1]
    folder = out / run.latest()["dir"]
    assert (folder / "adapters.safetensors").is_file()  # trained with the branches, resumed with them
    task, model = load_exits(out)  # inference loads the branches alone
    exported = RunDir(out).export(tmp_path / "slim")
    assert not list(exported.rglob("adapters.safetensors"))
    other = make_config(
        "faces", preset="smoke", steps=3, batch_size=2, init="random", recipe_overrides={"features": 1.0}
    )
    with pytest.raises(ValueError, match="cannot resume .* init"):
        train_exits(other, out, resume=True, device="cpu", progress=False)
    train_exits(
        make_config(
            "faces", preset="smoke", steps=3, batch_size=2, checkpoint_every=1, recipe_overrides={"features": 1.0}
        ),
        out,
        resume=True,
        device="cpu",
        progress=False,
    )
    assert [r["step"] for r in RunDir(out).read_stats()] == [1, 2, 3]


@pytest.mark.slow
def test_fixed_inputs_train_from_a_kept_trunk_and_resume_to_the_same_weights(tmp_path, one_thread):
    # 4 fixed inputs, batches of 2: the trunk runs once per input; a run stopped after step 2 and resumed
    # (its kept trunk lost with the process) ends with the weights of the straight run.
    from fiancee.io import load_tensors

    make = lambda steps: make_config(
        "faces",
        preset="smoke",
        steps=steps,
        batch_size=2,
        checkpoint_every=1,  # noqa: E731
        seed=1,
        fixed_inputs=4,
    )
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train_exits(make(4), straight, device="cpu", progress=False)
    train_exits(make(4), stopped, device="cpu", progress=False, stop_after=2)
    assert RunDir(stopped).read_config()["fixed_inputs"] == 4
    with pytest.raises(ValueError, match="cannot resume .* fixed_inputs"):
        train_exits(
            make_config("faces", preset="smoke", steps=4, batch_size=2, seed=1),
            stopped,
            resume=True,
            device="cpu",
            progress=False,
        )
    train_exits(make(4), stopped, resume=True, device="cpu", progress=False)
    a = load_tensors(straight / RunDir(straight).latest()["dir"] / "branches.safetensors")
    b = load_tensors(stopped / RunDir(stopped).latest()["dir"] / "branches.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fixed inputs must be an integer >= the batch size"):
        make_config("faces", preset="smoke", batch_size=4, fixed_inputs=3)


def test_a_run_warm_starts_from_exported_exits_and_refuses_other_geometry(tmp_path):
    """Training on from shipped (float16) branches: the new run starts from their weights, records their
    fingerprint, resumes without naming them again; exits of another geometry are refused in one line."""
    from fiancee.io import load_tensors, tensor_fingerprint

    first = tmp_path / "first"
    train_exits(make_config("faces", preset="smoke", steps=2, batch_size=2), first, device="cpu", progress=False)
    shipped = RunDir(first).export(tmp_path / "shipped", dtype="float16")
    start = {
        k: v.float() if v.is_floating_point() else v
        for k, v in load_tensors(shipped / RunDir(shipped).latest()["dir"] / "branches.safetensors").items()
    }
    on = tmp_path / "on"
    train_exits(
        make_config("faces", preset="smoke", steps=3, batch_size=2, checkpoint_every=1),
        on,
        device="cpu",
        progress=False,
        warm_start=shipped,
        stop_after=1,
    )
    assert RunDir(on).read_config()["warm_start"] == tensor_fingerprint(start)
    # one Adam step from the shipped weights moves no parameter by more than about the learning rate
    lr = RunDir(on).read_stats()[-1]["lr"]
    _, model = load_exits(on)
    got = {f"branches.{k}": v.detach() for k, v in model.branches.named_parameters()}  # BatchNorm's buffers move freely
    assert set(got) <= set(start)
    assert max((v - start[k]).abs().max().item() for k, v in got.items()) <= 3 * lr
    assert max((v - start[k]).abs().max().item() for k, v in got.items()) > 0  # it trained
    # resumed without --warm-start: the checkpoint holds the weights, the recorded fingerprint stays
    train_exits(
        make_config("faces", preset="smoke", steps=3, batch_size=2, checkpoint_every=1),
        on,
        resume=True,
        device="cpu",
        progress=False,
    )
    assert [r["step"] for r in RunDir(on).read_stats()] == [1, 2, 3]
    assert RunDir(on).read_config()["warm_start"] == tensor_fingerprint(start)
    with pytest.raises(ValueError, match="warm start: .* has scale '1/2', this run asks '1/4'"):
        train_exits(
            make_config("faces", scale="1/4", preset="smoke", steps=2, batch_size=2),
            tmp_path / "other",
            device="cpu",
            progress=False,
            warm_start=shipped,
        )
    assert not (tmp_path / "other").exists()  # refused before the folder was made
    with pytest.raises(ValueError, match="warm start: .* is not an exit-training run"):
        train_exits(make_config("faces", preset="smoke", steps=2, batch_size=2), tmp_path / "x", warm_start=tmp_path)
