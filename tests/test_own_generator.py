"""A user's generator through every command (docs/own-generator.md), on the guide's own module.

The module is the ``mymodule.py`` block of docs/own-generator.md, written into a temporary folder on
PYTHONPATH: a two-input generator whose second input is an attribute vector (a condition, not a label
map). Every command runs through the CLI's ``main`` with ``--task mymodule:MyTask`` (smoke sizes, in
this process: a fresh interpreter per command cost 6 s of imports each), and the saved pipeline is loaded
in a fresh process by its recorded spec (trusted: a folder's module:attr runs only when the user chooses it)
and with ``backbone=``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-generator.md"
SPEC = "mymodule:MyTask"


def _module_source() -> str:
    blocks = re.findall(r"```python\n(# mymodule\.py\n.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "docs/own-generator.md must hold exactly one ```python block starting with # mymodule.py"
    return blocks[0]


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_generator")
    (root / "mymodule.py").write_text(_module_source(), encoding="utf-8")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), src]),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "FIANCEE_CACHE": str(root / "cache"),
    }
    sys.path.insert(0, str(root))
    try:
        import mymodule

        yield root, env, mymodule
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("mymodule", None)


def _fiancee(capsys, *argv: str) -> str:
    """One CLI command in this process (the working folder is the user's); returns its stdout."""
    from fiancee.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 0, f"fiancee {' '.join(argv)} failed:\n{err[-3000:]}"
    return out


def test_the_bank_and_the_predictor_read_the_declared_inputs(user):
    from fiancee.tables import sample_table_inputs
    from fiancee.tasks import get_task
    from fiancee.train.bank import BANK_STREAM, bank_inputs

    _, _, mymodule = user
    task = get_task(SPEC)
    assert isinstance(task, mymodule.MyTask) and task.spec == SPEC
    z, attrs = task.sample_inputs(6, seed=BANK_STREAM + 3, split="train")
    (bz, battrs), population = bank_inputs(task, 6, 2, seed=3)
    # The attributes are kept as drawn, each paired with the same 2 fixed noise vectors.
    assert torch.equal(battrs, attrs.repeat_interleave(2, 0))
    assert torch.equal(bz[:2], bz[2:4]) and not torch.equal(bz[0], bz[1]) and not torch.equal(bz[:2], z[:2])
    assert population == {"inputs": 12, "conditions": 6, "noises": 2, "split": "train", "seed": 3}
    # The predictor's table: without noises, n draws of both inputs; with noises, the same crossing.
    tz, tattrs = sample_table_inputs(task, 5, 0, "train")
    assert torch.equal(tattrs, task.sample_inputs(5, 0, "train")[1]) and torch.equal(
        tz, task.sample_inputs(5, 0, "train")[0]
    )
    cz, cattrs = sample_table_inputs(task, 5, 0, "train", noises=3)
    assert torch.equal(cattrs, tattrs.repeat_interleave(3, 0)) and torch.equal(cz[:3], cz[3:6])


@pytest.mark.slow
def test_every_command_and_from_pretrained_in_a_fresh_process(user, capsys, monkeypatch, one_thread):
    root, env, mymodule = user
    monkeypatch.chdir(root)
    monkeypatch.setenv("FIANCEE_CACHE", env["FIANCEE_CACHE"])
    _fiancee(
        capsys,
        "build-bank",
        "--task",
        SPEC,
        "--out",
        "bank",
        "--n",
        "24",
        "--noises",
        "2",
        "--max-per-class",
        "32",
        "--no-progress",
    )
    manifest = json.loads((root / "bank" / "manifest.json").read_text())
    assert manifest["task"] == SPEC and manifest["mode"] == "global" and manifest["label_channels"] is None
    assert manifest["population"] == {"inputs": 48, "conditions": 24, "noises": 2, "split": "train", "seed": 0}

    _fiancee(
        capsys, "train-exits", "--task", SPEC, "--bank", "bank", "--preset", "smoke", "--out", "exits", "--no-progress"
    )
    config = json.loads((root / "exits" / "config.json").read_text())
    assert config["task"] == SPEC and config["attach_after"] == [1, 2]

    # A folder's module:attr runs only when the user names it (docs/errors.md, "Code a folder names"):
    # refused in one line, then run with --task SPEC or --trust-task-code.
    from fiancee.cli import main

    capsys.readouterr()
    assert main(["evaluate-exits", "exits", "--n", "4", "--no-fid", "--json"]) == 2
    assert "loading a folder imports no module:attr code" in capsys.readouterr().err
    report = json.loads(_fiancee(capsys, "evaluate-exits", "exits", "--n", "4", "--no-fid", "--json", "--task", SPEC))
    assert [e["after_stage"] for e in report["exits"]] == [1, 2]
    _fiancee(
        capsys,
        "train-predictor",
        "exits",
        "--out",
        "predictor",
        "--n",
        "16",
        "--epochs",
        "2",
        "--error-n",
        "8",
        "--no-progress",
        "--trust-task-code",
    )
    pconfig = json.loads((root / "predictor" / "config.json").read_text())
    assert pconfig["task"] == SPEC and pconfig["noises"] is None
    assert pconfig["inputs"] == [{"name": "z", "kind": "noise"}, {"name": "attrs", "kind": "condition"}]
    assert pconfig["predictor"]["arch"] == "tiny"  # not conv: the task has no label map

    _fiancee(
        capsys,
        "demo",
        "--task",
        SPEC,
        "--exits",
        "exits",
        "--out",
        "demo",
        "--n",
        "8",
        "--n-predictor",
        "16",
        "--n-calibrate",
        "8",
        "--target-compliance",
        "0.9",
        "--no-progress",
    )  # too few for a guarantee
    pipe_config = json.loads((root / "demo" / "pipeline" / "config.json").read_text())
    assert pipe_config["task"] == SPEC
    _fiancee(
        capsys, "evaluate", "demo/pipeline", "--thresholds", "0.1,0.2", "--n", "8", "--out", "report", "--task", SPEC
    )
    assert (root / "report" / "report.json").is_file()

    _fiancee(
        capsys,
        "bench",
        "--backbone",
        "mymodule:make_task",
        "--batch",
        "1,2",
        "--reps",
        "2",
        "--warmup",
        "0",
        "--bank-inputs",
        "8",
        "--json",
        "bench.json",
        "--no-progress",
    )
    bench = json.loads((root / "bench.json").read_text())
    assert bench["settings"]["backbone"] == "mymodule:make_task" and len(bench["routes"]) == 3
    assert bench["overhead"]["bank_mode"] == "global" and bench["overhead"]["predictor_arch"] == "tiny"

    # A fresh process: the recorded spec is resolved when trusted, and a backbone passed in is checked and used.
    script = """
import json, sys, torch
import mymodule
from fiancee.pipeline import FianceePipeline
try:
    FianceePipeline.from_pretrained("demo/pipeline")
    unasked = ""
except ValueError as e:
    unasked = str(e)
pipe = FianceePipeline.from_pretrained("demo/pipeline", trust_task_code=True)
z, attrs = mymodule.MyTask().sample_inputs(6, seed=1)
a = pipe(z, attrs, max_lpips=0.1)
mine = mymodule.load_weights(mymodule.AttrGenerator()).eval()
other = FianceePipeline.from_pretrained("demo/pipeline", backbone=mine)
assert other.model.backbone is mine and other.task is None
b = other(z, attrs, max_lpips=0.1)
changed = mymodule.AttrGenerator()  # other weights: refused
try:
    FianceePipeline.from_pretrained("demo/pipeline", backbone=changed)
    refused = ""
except ValueError as e:
    refused = str(e)
print(json.dumps({"task": type(pipe.task).__name__, "shape": list(a.images.shape),
                  "same": torch.equal(a.images, b.images), "exits": a.routes.tolist(),
                  "refused": refused, "unasked": unasked}))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["task"] == "MyTask" and out["shape"] == [6, 3, 32, 32] and out["same"]
    assert all(0 <= e <= 2 for e in out["exits"]) and "was built for backbone weights" in out["refused"]
    assert "names task 'mymodule:MyTask': loading a folder imports no module:attr code" in out["unasked"]


def test_an_unimportable_spec_is_one_line_and_exit_2(user):
    root, env, _ = user
    for spec, expected in (
        ("mymodule:Nope", "module 'mymodule' has no attribute 'Nope'"),
        ("missing_module_xyz:MyTask", "cannot import module 'missing_module_xyz'"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "fiancee", "train-exits", "--task", spec, "--out", "never"],
            capture_output=True,
            text=True,
            env=env,
            cwd=root,
            timeout=120,
        )
        assert r.returncode == 2 and expected in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert spec in r.stderr and not (root / "never").exists()


def test_an_entry_point_and_a_registered_name_resolve_too(user):
    from fiancee import register_task
    from fiancee.tasks import TASKS, get_task

    root, env, mymodule = user
    # An installed package declares the task in its metadata (group fiancee.tasks).
    dist = root / "my_gan_package-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-gan-package\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fiancee.tasks]\nattr-gan = mymodule:MyTask\n")
    task = get_task("attr-gan")
    assert isinstance(task, mymodule.MyTask) and task.spec == "attr-gan"
    r = subprocess.run(
        [sys.executable, "-m", "fiancee", "sample", "--task", "attr-gan", "--out", "samples", "--n", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    assert r.returncode == 0 and (root / "samples" / "grid.png").is_file(), r.stderr
    # In one process, a name registered by hand (a class or a zero-argument factory).
    register_task("my-gan", lambda: mymodule.MyTask())
    try:
        assert get_task("my-gan").spec == "my-gan"
    finally:
        TASKS.unregister("my-gan")
