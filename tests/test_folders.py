"""One vocabulary and one folder protocol (issue 30, item 5; docs/architecture.md, "Folders").

Every folder (and report file) fiancee writes names itself with ``"kind"`` and ``"format"``, kinds spelled one
way (:mod:`fiancee.core.folders`); folders written with the old headers and field names (the committed weights
among them) still load. ``attach_after`` / ``routes`` replace the three meanings of ``exits``; the old names
still work for one release, with a DeprecationWarning.
"""

from __future__ import annotations

import ast
import json
import shutil
import warnings
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import fiancee
from fiancee.core import folders
from fiancee.core.folders import (
    BENCH,
    BENCH_ONNX,
    EXITS_RUN,
    FASHION_BACKBONE,
    FEATURE_BANK,
    KINDS,
    OLD_KINDS,
    PIPELINE,
    PREDICTOR,
    RESULT,
    check_header,
    header,
    upgrade,
)
from fiancee.io import check_replaceable, folder_kind, read_manifest

PACKAGE = Path(fiancee.__file__).resolve().parent
WEIGHTS = PACKAGE / "weights"
ROOT = PACKAGE.parents[1]


def _header(obj: dict) -> dict:
    return {"kind": obj["kind"], "format": obj["format"]}


def _to_old(
    path: Path, kind: str | None, *, renames: dict | None = None, version_key: str | None = "format", change=None
) -> None:
    """Rewrite a folder file the way the release before wrote it: its kind spelled ``kind`` (None: no kind),
    its version under ``version_key`` (None: no version) and fields renamed back (``renames``: new -> old)."""
    obj = json.loads(path.read_text())
    old = {} if kind is None else {"kind": kind}
    if version_key is not None:
        old[version_key] = obj["format"]
    for key, value in obj.items():
        if key not in ("kind", "format"):
            old[(renames or {}).get(key, key)] = value
    if change is not None:
        change(old)
    path.write_text(json.dumps(old))


# ----------------------------------------------------------------------------------------------
# Tiny objects of every folder kind: a G2D backbone (random, seeded), its exits, a predictor, a bank.


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from fiancee.backbones import G2DConfig, G2DGenerator
    from fiancee.bank import BankSpec, build_feature_bank
    from fiancee.exits import ExitGenerator
    from fiancee.pipeline import FianceePipeline
    from fiancee.predictor import QualityPredictor, exits_fingerprints, predictor_features
    from fiancee.routing import StaticRouter

    root = tmp_path_factory.mktemp("folders")
    torch.manual_seed(0)
    backbone = G2DGenerator(G2DConfig.tiny()).eval().requires_grad_(False)
    model = ExitGenerator(backbone, backbone.config.exits, "1/2", 4).eval()
    inputs = backbone.example_inputs(6)
    xs = predictor_features("tiny", model, inputs)
    predictor = QualityPredictor("tiny", model.num_routes - 1, [list(xs[0].shape[1:])]).eval()
    pipe = FianceePipeline(None, model, predictor, StaticRouter(1, costs=model.route_macs()), task_spec="faces")
    pipe.save_pretrained(root / "pipeline")
    predictor.save_pretrained(root / "predictor", fingerprints=exits_fingerprints(model))
    spec = BankSpec(mode="global", key_stage=model.key_stage, value_stage=model.key_stage, max_per_class=4)
    bank = build_feature_bank(backbone, inputs, spec)
    bank.save_pretrained(root / "bank")
    return SimpleNamespace(
        root=root, backbone=backbone, model=model, predictor=predictor, pipe=pipe, bank=bank, inputs=inputs
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-step exit-training run of the faces task (smoke preset)."""
    from fiancee.train.exits import make_config, train_exits

    out = tmp_path_factory.mktemp("run") / "exits"
    train_exits(make_config("faces", preset="smoke", steps=1, batch_size=2), out, device="cpu", progress=False)
    return out


# ----------------------------------------------------------------------------------------------
# (a) Every writer writes the one header.


def test_every_folder_writer_writes_kind_and_format(tiny, run, tmp_path):
    from fiancee.backbones import OASISConfig, OASISGenerator
    from fiancee.train.backbone import export_backbone

    written = {
        PIPELINE: tiny.root / "pipeline" / "config.json",
        PREDICTOR: tiny.root / "predictor" / "config.json",
        FEATURE_BANK: tiny.root / "bank" / "manifest.json",
        EXITS_RUN: run / "config.json",
        FASHION_BACKBONE: export_backbone(OASISGenerator(OASISConfig.tiny()), tmp_path / "backbone") / "config.json",
    }
    assert json.loads((tiny.root / "pipeline" / "predictor" / "config.json").read_text())["kind"] == PREDICTOR
    for kind, path in written.items():
        obj = json.loads(path.read_text())
        assert _header(obj) == {"kind": kind, "format": 1}, path
        assert "format_version" not in obj and "exits" not in obj and "guided_exits" not in obj, path
        assert folder_kind(path.parent) == kind
    assert json.loads(written[PIPELINE].read_text())["attach_after"] == tiny.model.attach_after
    assert json.loads(written[PIPELINE].read_text())["router"] == {
        "kind": "static",
        "costs": tiny.pipe.router.costs,
        "route": 1,
    }
    assert json.loads(written[EXITS_RUN].read_text())["attach_after"] == [1, 2, 3]


def test_every_report_writer_writes_kind_and_format():
    from fiancee.bench.report import bench_report, onnx_report
    from fiancee.results import stamp

    model = SimpleNamespace(scale=Fraction(1, 2), min_channels=4, attach_after=[1, 2])
    setup = SimpleNamespace(settings={}, notes=[])
    predictor = SimpleNamespace(arch="tiny")
    phases = {"routes": [], "mixed": {"mixes": []}, "overhead": {}, "overhead_fraction": 0.0, "options": {}}
    bench = bench_report(
        "g2d", setup, model, torch.device("cpu"), [1], 1, 0, 0, [], 1, predictor, None, None, "off", None, phases
    )
    onnx = onnx_report("g2d", setup, model, [1], [1], 1, 0, 0, 17, predictor, [], None, [], 0.0)
    result = stamp("x", "fiancee macs", {"a": 1})
    for kind, obj in ((BENCH, bench), (BENCH_ONNX, onnx), (RESULT, result)):
        assert _header(obj) == {"kind": kind, "format": 1} and "format_version" not in obj
    assert bench["settings"]["exits_after_stages"] == [1, 2]


def _string_constants(tree: ast.AST):
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def test_no_writer_spells_a_kind_the_old_way():
    """Kinds and the version key are spelled in one place (fiancee.core.folders): no other module of the package
    names an old kind, ``format_version``, or a kind of a folder it writes that is not in the table."""
    old = set(OLD_KINDS) - {"exits"}  # "exits" is also a folder name (weights/<task>/exits)
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "core" / "folders.py":
            continue
        tree = ast.parse(path.read_text())
        for node in _string_constants(tree):
            assert node.value not in old | {"format_version"}, f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            name = getattr(call.func, "id", getattr(call.func, "attr", None))
            if name not in ("atomic_folder", "check_replaceable", "make_header", "read_manifest", "check_header"):
                continue
            at = {"check_replaceable": 1, "make_header": 0}.get(name)  # the kind given by position
            kinds = [k.value for k in call.keywords if k.arg == "kind"] + ([] if at is None else call.args[at : at + 1])
            for kind in kinds:
                if isinstance(kind, ast.Constant):
                    assert kind.value in KINDS, f"{path.relative_to(PACKAGE)}:{call.lineno}: kind {kind.value!r}"


# ----------------------------------------------------------------------------------------------
# (b) Old headers still load.


def test_the_committed_folders_keep_their_old_headers_and_load():
    """The committed weights were written before the one header: they load through the compatibility table
    (results record fingerprints of them, so they are never rewritten)."""
    from fiancee.train.exits import load_exits, read_run_config
    from fiancee.train.run import RunDir

    for task in ("faces", "fashion"):
        path = WEIGHTS / task / "exits"
        raw = json.loads((path / "config.json").read_text())
        assert raw["kind"] == "exits" and "exits" in raw and "format" not in raw  # as committed
        assert folder_kind(path) == EXITS_RUN and header(raw) == (EXITS_RUN, 1)
        config = read_run_config(RunDir(path))
        assert config["attach_after"] == raw["exits"] and "exits" not in config
    raw = json.loads((WEIGHTS / "fashion" / "config.json").read_text())
    assert "kind" not in raw and raw["format_version"] == 1
    assert folder_kind(WEIGHTS / "fashion") == FASHION_BACKBONE
    task, model = load_exits(WEIGHTS / "faces" / "exits")
    assert model.attach_after == list(task.attach_after) == [1, 2, 3]


def test_committed_results_and_bench_reports_load_with_their_old_header():
    from fiancee.results import load_result, load_results

    results = load_results(ROOT / "results")
    assert results and all(header(r) == (RESULT, 1) for r in results.values())
    for path in sorted((ROOT / "benchmarks").glob("*.json")):
        assert header(json.loads(path.read_text()))[0] in (BENCH, BENCH_ONNX), path
    assert load_result(next((ROOT / "results").glob("*.json")))["kind"] == RESULT


def test_an_old_pipeline_folder_loads_and_routes_alike(tiny, tmp_path):
    from fiancee.pipeline import FianceePipeline

    old = tmp_path / "old"
    shutil.copytree(tiny.root / "pipeline", old)

    def static_exit(config):
        config["router"] = {"kind": "static", "costs": config["router"]["costs"], "exit": config["router"]["route"]}

    _to_old(old / "config.json", "fiancee_pipeline", renames={"attach_after": "exits"}, change=static_exit)
    _to_old(old / "predictor" / "config.json", "quality_predictor")
    raw = json.loads((old / "config.json").read_text())
    assert raw["kind"] == "fiancee_pipeline" and raw["exits"] == [2, 4] and raw["router"]["exit"] == 1
    assert folder_kind(old) == PIPELINE and folder_kind(old / "predictor") == PREDICTOR
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*renamed", category=DeprecationWarning)  # not a deprecated use
        loaded = FianceePipeline.from_pretrained(old, backbone=tiny.backbone)
    assert loaded.model.attach_after == tiny.model.attach_after and loaded.router.fixed_route == 1
    with torch.no_grad():
        a, b = tiny.pipe(*tiny.inputs, max_lpips=0.1), loaded(*tiny.inputs, max_lpips=0.1)
    assert torch.equal(a.images, b.images) and torch.equal(a.routes, b.routes)
    # saved again, it is written the new way
    loaded.save_pretrained(tmp_path / "again")
    assert _header(json.loads((tmp_path / "again" / "config.json").read_text())) == {"kind": PIPELINE, "format": 1}


def test_an_old_predictor_and_an_old_bank_load(tiny, tmp_path):
    from fiancee.bank import FeatureBank, load_bank
    from fiancee.predictor import QualityPredictor, load_predictor

    shutil.copytree(tiny.root / "predictor", tmp_path / "predictor")
    _to_old(tmp_path / "predictor" / "config.json", "quality_predictor")
    predictor = QualityPredictor.from_pretrained(tmp_path / "predictor", tiny.model)
    same, config = load_predictor(tmp_path / "predictor", tiny.model)
    assert config["kind"] == PREDICTOR and config["format"] == 1  # read as this release writes it
    for p in (predictor, same):
        assert all(torch.equal(a, b) for a, b in zip(p.state_dict().values(), tiny.predictor.state_dict().values()))

    shutil.copytree(tiny.root / "bank", tmp_path / "bank")
    _to_old(tmp_path / "bank" / "manifest.json", FEATURE_BANK, version_key="format_version")
    assert "format_version" in json.loads((tmp_path / "bank" / "manifest.json").read_text())
    for bank in (
        FeatureBank.from_pretrained(tmp_path / "bank", tiny.backbone),
        load_bank(tmp_path / "bank", tiny.backbone),
    ):
        assert torch.equal(bank.keys, tiny.bank.keys) and bank.manifest == tiny.bank.manifest


def test_an_old_run_loads(run, tmp_path):
    from fiancee.train.exits import load_exits

    old = tmp_path / "old"
    shutil.copytree(run, old)
    _to_old(
        old / "config.json",
        "exits",
        renames={"attach_after": "exits", "guided_attach_after": "guided_exits"},
        version_key=None,
    )
    assert folder_kind(old) == EXITS_RUN
    _, new_model = load_exits(run)
    _, old_model = load_exits(old)
    assert all(torch.equal(a, b) for a, b in zip(new_model.state_dict().values(), old_model.state_dict().values()))


def test_old_kind_names_are_one_kind_when_replacing(tiny, tmp_path):
    shutil.copytree(tiny.root / "pipeline", tmp_path / "p")
    _to_old(tmp_path / "p" / "config.json", "fiancee_pipeline", renames={"attach_after": "exits"})
    assert check_replaceable(tmp_path / "p", PIPELINE) == tmp_path / "p"
    assert check_replaceable(tmp_path / "p", "fiancee_pipeline") == tmp_path / "p"  # an old name given
    with pytest.raises(ValueError, match="holds a folder of kind 'fiancee-pipeline'; refusing to replace it"):
        check_replaceable(tmp_path / "p", PREDICTOR, "quality predictor")


def test_the_header_table():
    assert header({"kind": "quality_predictor", "format": 1}) == (PREDICTOR, 1)
    assert header({"kind": "fiancee-feature-bank", "format_version": 1}) == (FEATURE_BANK, 1)
    assert header({"kind": "exits", "task": "faces"}) == (EXITS_RUN, 1)  # runs had no version
    assert header({"generator": {}, "format_version": 1}) == (FASHION_BACKBONE, 1)
    assert header({"kind": "demo"}) == ("demo", None) and header([1]) == (None, None) and header({}) == (None, None)
    assert upgrade({"kind": "fiancee_onnx", "format": 1, "exits": [1], "x": 2}) == {
        "kind": "fiancee-onnx",
        "format": 1,
        "attach_after": [1],
        "x": 2,
    }
    assert upgrade({"kind": "exits", "exits": [1], "attach_after": [2]})["attach_after"] == [2]  # the new name wins
    assert folders.make_header(PIPELINE, 1) == {"kind": PIPELINE, "format": 1}
    with pytest.raises(ValueError, match="kind must be one of"):
        folders.make_header("fiancee_pipeline", 1)
    with pytest.raises(ValueError, match=r"x is not a quality predictor config \(kind='fiancee-pipeline'"):
        check_header(
            {"kind": PIPELINE, "format": 1}, kind=PREDICTOR, version=1, what="quality predictor config", source="x"
        )
    with pytest.raises(ValueError, match="x: bank format 2; this fiancee reads format 1; rebuild"):
        check_header(
            {"kind": FEATURE_BANK, "format": 2}, kind=FEATURE_BANK, version=1, what="bank", source="x", hint="; rebuild"
        )


def test_read_manifest_returns_the_new_spelling(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"kind": "fiancee_pipeline", "format": 1, "exits": [1, 2]}))
    assert read_manifest(path, kind=PIPELINE, version=1, what="pipeline config", required=("attach_after",)) == {
        "kind": PIPELINE,
        "format": 1,
        "attach_after": [1, 2],
    }


# ----------------------------------------------------------------------------------------------
# The vocabulary: attach_after (1-based stages) and routes (0-based per input); old names deprecated.


def test_old_names_still_work_with_a_warning(tiny):
    from fiancee.routing import StaticRouter, router_from_config

    model, x = tiny.model, tiny.inputs
    routes = torch.tensor([0, 2, 1, 0, 2, 1])
    with torch.no_grad():
        want = model(*x, route=routes)
        with pytest.warns(DeprecationWarning, match="'exit=' is renamed 'route='"):
            assert torch.equal(model(*x, exit=routes), want)
        with pytest.warns(DeprecationWarning, match="'exits=' is renamed 'routes='"):
            assert torch.equal(model.mixed(*x, exits=routes), want)
        with pytest.warns(DeprecationWarning, match="'exit=' is renamed 'route='"):
            assert torch.equal(model.route(*x, exit=1), model.route(*x, route=1))
        with pytest.warns(DeprecationWarning, match="'exits' is renamed 'attach_after'"):
            assert model.exits == model.attach_after == [2, 4]
        out = tiny.pipe(*x, max_lpips=0.1, routes=routes)
        assert torch.equal(out.routes, routes)
        with pytest.warns(DeprecationWarning, match="'exits' is renamed 'routes'"):
            assert out.exits is out.routes
        with pytest.warns(DeprecationWarning, match="'exits=' is renamed 'routes='"):
            assert torch.equal(tiny.pipe(*x, max_lpips=0.1, exits=routes).images, out.images)
    with pytest.raises(ValueError, match="pass routes= only"):
        tiny.pipe(*x, max_lpips=0.1, routes=routes, exits=routes)
    with pytest.raises(ValueError, match="pass route="):
        model(*x)
    with pytest.warns(DeprecationWarning, match="'exit=' is renamed 'route='"):
        assert StaticRouter(exit=2).fixed_route == 2
    with pytest.warns(DeprecationWarning):
        assert StaticRouter(2).exit == 2
    assert StaticRouter(2).to_config() == {"kind": "static", "costs": None, "route": 2}
    assert router_from_config({"kind": "static", "exit": 2}).to_config() == StaticRouter(2).to_config()


def test_a_task_that_declares_only_exits_still_works():
    from fiancee.tasks.base import Task

    class Old(Task):
        name, description, exits = "old", "a task written before attach_after", (1, 2)

        def load_backbone(self, device="cpu"):
            raise NotImplementedError

        def sample_inputs(self, n, seed, split="test"):
            raise NotImplementedError

    class New(Old):
        attach_after = (2, 3)

    assert Old.attach_after == Old().attach_after == Old().exits == (1, 2)
    assert New().attach_after == New().exits == (2, 3)
    task = New()
    task.exits = (1,)  # a task that sets the old attribute in its __init__
    assert task.attach_after == (1,)
    assert "attach_after" in fiancee.tasks.get_task("faces").describe()
