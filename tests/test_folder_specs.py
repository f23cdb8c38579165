"""Loading a folder calls only code the user chose (issue 30, item 8; docs/errors.md, "Code a folder names").

A pipeline, run or bank folder records the spec of its task (its bank: of its key function). Folders are
shared and downloaded like checkpoints, so a recorded spec resolves only to registered names and entry
points; a recorded ``module:attr`` is refused in one line before its module is imported, unless the user
names it (``task=``) or trusts the folder (``trust_task_code=True``, ``allow_folder_code``). Each refusal
is tried on the cheapest folder that reaches it (a config.json alone: the spec is resolved before anything
else is read), ``os:abort`` in a fresh process; the allowed loads on real folders of the user's module of
docs/own-generator.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_own_generator import SPEC, _module_source

from fiancee.pipeline import FianceePipeline
from fiancee.specs import SpecError, allow_folder_code
from fiancee.train.exits import load_exits

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
SRC = str(Path(__file__).resolve().parents[1] / "src")
TRUST = "pass task='{spec}' (--task {spec}) or trust_task_code=True (--trust-task-code)"
# docs/errors.md's rows (bad input, entry point, message), each tried below.
ROWS = [
    (
        "pipeline folder whose config.json names `os:abort` as its task",
        "FianceePipeline.from_pretrained",
        "names task 'os:abort': loading a folder imports no module:attr code, only registered tasks and entry points "
        "of 'fiancee.tasks'; if you trust this code, pass task='os:abort' (--task os:abort) or trust_task_code=True "
        "(--trust-task-code)",
    ),
    (
        "run folder whose config.json names `tempfile:mkdtemp` as its task",
        "load_exits",
        "names task 'tempfile:mkdtemp': loading a folder imports no module:attr code",
    ),
    (
        "bank manifest naming its key function by `module:attr`",
        "load_bank",
        "loading a folder imports no module:attr code, only registered key functions and entry points of "
        "'fiancee.key_functions'; if you trust this code, pass trust_task_code=True to the loader (--trust-task-code)",
    ),
]


def _pipeline_folder(path: Path, spec: str) -> Path:
    """A pipeline config.json whose fields all have the right type: loading reads it, then resolves the spec."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(
        json.dumps(
            {
                "kind": "fiancee_pipeline",
                "format": 1,
                "task": spec,
                "exits": [1, 2],
                "scale": "1/2",
                "min_channels": 4,
                "backbone_fingerprint": "0" * 16,
                "router": {"kind": "static", "exit": 0},
            }
        )
    )
    return path


def _run_folder(path: Path, spec: str) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"kind": "exits", "task": spec, "scale": "1/2", "min_channels": 4}))
    return path


LOADERS = {
    "pipeline": (_pipeline_folder, lambda folder, **kw: FianceePipeline.from_pretrained(folder, **kw)),
    "run": (_run_folder, lambda folder, **kw: load_exits(folder, **kw)),
}


@pytest.fixture
def side_effects(tmp_path, monkeypatch):
    """A module on sys.path that writes a marker file when imported; yields (spec, marker)."""
    marker = tmp_path / "imported.marker"
    name = f"fiancee_sidefx_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "def keys(h):\n    return h.float().flatten(1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name, marker
    sys.modules.pop(name, None)


def _refused_in_one_line(error: SpecError, spec: str, file: Path) -> None:
    message = str(error)
    assert "\n" not in message and f"'{spec}'" in message and str(file) in message, message
    assert "loading a folder imports no module:attr code" in message and TRUST.format(spec=spec) in message, message


@pytest.mark.parametrize("kind", LOADERS)
def test_a_folder_naming_mkdtemp_is_refused_and_nothing_is_called(kind, tmp_path, monkeypatch):
    make, load = LOADERS[kind]
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where tempfile.mkdtemp would make its directory
    folder = make(tmp_path / kind, "tempfile:mkdtemp")
    with pytest.raises(SpecError) as e:
        load(folder)
    _refused_in_one_line(e.value, "tempfile:mkdtemp", folder / "config.json")
    assert ROWS[1][2] in str(e.value) and list(temp.iterdir()) == []


@pytest.mark.parametrize("kind", LOADERS)
def test_a_folder_naming_a_module_with_import_side_effects_is_refused_before_importing(kind, tmp_path, side_effects):
    name, marker = side_effects
    make, load = LOADERS[kind]
    folder = make(tmp_path / kind, f"{name}:Task")
    with pytest.raises(SpecError) as e:
        load(folder)
    _refused_in_one_line(e.value, f"{name}:Task", folder / "config.json")
    assert not marker.exists() and name not in sys.modules
    # Allowed, the module is imported (and what it names, not a Task, refused as before).
    with pytest.raises(SpecError, match="has no attribute 'Task'"):
        load(folder, trust_task_code=True)
    assert marker.exists()


def test_os_abort_in_a_folder_is_one_line_and_exit_2_not_an_abort(tmp_path):
    """`fiancee evaluate` / `evaluate-exits` on folders naming os:abort (before: SIGABRT, exit 134)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    pipe = _pipeline_folder(tmp_path / "pipeline", "os:abort")
    run = _run_folder(tmp_path / "run", "os:abort")
    commands = (
        (["evaluate", str(pipe), "--thresholds", "0.1", "--n", "2", "--out", str(tmp_path / "r1")], pipe),
        (["evaluate-exits", str(run), "--n", "2", "--no-fid", "--out", str(tmp_path / "r2")], run),
    )
    for argv, folder in commands:
        r = subprocess.run(
            [sys.executable, "-m", "fiancee", *argv], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
        )
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(folder / "config.json") in lines[0] and ROWS[0][2] in lines[0], r.stderr


def test_a_bank_naming_its_key_function_by_module_attr_is_refused_before_importing(tmp_path, side_effects):
    import torch

    from fiancee.backbones import build_backbone
    from fiancee.bank import BankSpec, build_feature_bank, load_bank

    name, marker = side_effects
    torch.manual_seed(0)
    backbone = build_backbone("g2d", "tiny").eval()
    spec = BankSpec(
        mode="global",
        key_stage=backbone.config.exits[0],
        value_stage=backbone.num_stages // 2,
        max_per_class=8,
        key_function="flatten",
    )
    build_feature_bank(backbone, backbone.example_inputs(6), spec).save(tmp_path / "bank")
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    manifest["key_function"] = f"{name}:keys"  # the same function, named by a module that runs code on import
    (tmp_path / "bank" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SpecError) as e:
        load_bank(tmp_path / "bank", backbone)
    message = str(e.value)
    assert f"names key function '{name}:keys'" in message and str(tmp_path / "bank" / "manifest.json") in message
    assert ROWS[2][2] in message and "\n" not in message
    assert not marker.exists() and name not in sys.modules
    with allow_folder_code(f"{name}:keys"):
        bank = load_bank(tmp_path / "bank", backbone)
    assert marker.exists() and len(bank) == 6


# ----------------------------------------------------------------------------------------------
# What the user chose loads: the spec named by the user, the folder trusted, registered names.


@pytest.fixture(scope="module")
def user_folders(tmp_path_factory):
    """A run (one training step) and a pipeline folder of the user's module of docs/own-generator.md."""
    from fiancee.predictor import QualityPredictor, key_features
    from fiancee.routing import StaticRouter
    from fiancee.train.exits import make_config, train_exits

    root = tmp_path_factory.mktemp("user_folders")
    (root / "mymodule.py").write_text(_module_source(), encoding="utf-8")
    sys.path.insert(0, str(root))
    try:
        train_exits(make_config(SPEC, preset="smoke", steps=1, batch_size=2), root / "exits", progress=False)
        task, model = load_exits(root / "exits", task=SPEC)
        features = key_features(model, *task.sample_inputs(2, seed=0))
        predictor = QualityPredictor("tiny", model.num_routes - 1, [list(features.shape[1:])])
        FianceePipeline(task, model, predictor, StaticRouter(1, costs=model.route_macs())).save(root / "pipeline")
        yield root
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("mymodule", None)


@pytest.mark.parametrize("kind", ["run", "pipeline"])
def test_a_users_own_task_loads_when_named_or_trusted_and_only_then(kind, user_folders):
    folder = user_folders / ("exits" if kind == "run" else "pipeline")
    load = LOADERS[kind][1]

    def task_of(loaded):
        return loaded[0] if kind == "run" else loaded.task

    with pytest.raises(SpecError) as e:
        load(folder)
    _refused_in_one_line(e.value, SPEC, folder / "config.json")
    for how in ({"task": SPEC}, {"trust_task_code": True}):
        task = task_of(load(folder, **how))
        assert type(task).__name__ == "MyTask" and task.spec == SPEC
    with allow_folder_code(SPEC):  # what a workflow that loads folders itself is run inside
        assert task_of(load(folder)).spec == SPEC
    with allow_folder_code("mymodule:make_task"):  # another spec allowed: not this one
        with pytest.raises(SpecError):
            load(folder)
    with pytest.raises(ValueError, match="trust_task_code must be True or False"):
        load(folder, trust_task_code="yes")


@pytest.mark.parametrize("kind", LOADERS)
def test_a_registered_name_needs_no_switch(kind, tmp_path):
    """``faces`` resolves and loading goes on (to the next check: these folders hold no weights)."""
    make, load = LOADERS[kind]
    folder = make(tmp_path / kind, "faces")
    expected = "was built for backbone weights" if kind == "pipeline" else "trained with exits after stages"
    if kind == "run":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "exits": [9]}))
    with pytest.raises(ValueError, match=expected):
        load(folder)


def test_a_spec_the_user_names_keeps_working():
    from fiancee.tasks import get_task

    assert get_task("faces").spec == "faces"
    with pytest.raises(SpecError, match="names the class JSONDecoder, which is not a fiancee Task subclass"):
        get_task("json:JSONDecoder")


# ----------------------------------------------------------------------------------------------
# docs/errors.md holds a row for each refusal (ROWS).


@pytest.mark.parametrize("bad,entry,message", ROWS)
def test_docs_table_has_the_row(bad, entry, message):
    assert f"| {bad} | `{entry}` | {message} |" in DOCS.read_text(encoding="utf-8")
