"""The torch-free core (fiancee.core): one implementation, imported by the PyTorch side and by the runtime;
and every registered router, a toy one written in one file included, through the same checks (routes,
config round trip, config checks, the numpy rule equal to the torch router)."""

from __future__ import annotations

import ast
import contextlib
import inspect
import json
import runpy
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fiancee.core as core
from fiancee.core.routers import RULES, check_router_config, route_numpy
from fiancee.routing import ROUTERS, router_from_config

SRC = Path(__file__).resolve().parents[1] / "src"
TOY = Path(__file__).resolve().parent / "fixtures" / "toy_router.py"


# ----------------------------------------------------------------------------------------------
# One core, imported from both sides


def test_the_runtime_and_the_pytorch_side_use_the_core_itself():
    from fiancee import bank, export, io, routing, runtime

    assert runtime.route_numpy is core.route_numpy
    assert runtime.check_router_config is core.check_router_config
    assert runtime.read_index is core.read_index and runtime.search_classes is core.search_classes
    assert runtime.resolve_inside is core.resolve_inside is io.resolve_inside
    assert runtime.read_json is core.read_json is io.read_json and io.loads_strict is core.loads_strict
    assert runtime.file_sha256 is core.file_sha256 is io.file_sha256
    assert runtime.check_thresholds is core.check_thresholds and routing.check_threshold is core.check_threshold
    assert (runtime.FORMAT, runtime.KIND) == (export.FORMAT, export.KIND) == (core.manifest.FORMAT, core.manifest.KIND)
    assert routing.margin_at is core.margin_at and routing.spend_misses is core.spend_misses
    assert routing.check_router_config is core.check_router_config
    assert bank.read_index is core.read_index and bank.search_classes is core.search_classes
    for name in ("_inside", "_strict_json", "_finite", "_cheapest_meeting", "_costs", "_read_index", "_search_counted"):
        assert not hasattr(runtime, name), f"fiancee.runtime keeps a copy: {name}"
    assert not hasattr(bank, "_search_counted")


def test_the_core_and_the_runtime_import_without_torch():
    script = (
        "import sys, fiancee.core, fiancee.runtime; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
        cwd=SRC,
    )
    assert run.returncode == 0, run.stderr


def test_the_core_imports_nothing_else_of_fiancee():
    for path in sorted((SRC / "fiancee" / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                where = f"{path.name}: {ast.unparse(node)}"
                assert node.level <= 1 and not (node.module or "").startswith("fiancee"), where
            elif isinstance(node, ast.Import):
                assert all(
                    a.name.split(".")[0] in ("numpy",) or a.name in sys.stdlib_module_names for a in node.names
                ), f"{path.name}: {ast.unparse(node)}"


def test_strict_json_refuses_nan_infinity_and_overflow(tmp_path):
    for text, message in [
        ('{"a": NaN}', "NaN is not JSON"),
        ('{"a": -Infinity}', "-Infinity is not JSON"),
        ('{"a": 1e999}', "1e999 overflows to infinity"),
    ]:
        with pytest.raises(ValueError, match=message):
            core.loads_strict(text)
        (tmp_path / "x.json").write_text(text)
        with pytest.raises(ValueError, match="is not strict JSON: " + message):
            core.read_json(tmp_path / "x.json")
    assert core.loads_strict('{"a": [1, 2.5e3]}') == {"a": [1, 2500.0]}


def test_an_index_header_is_checked_before_faiss_reads_it(tmp_path):
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexFlatL2(4)
    index.add(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32))
    path = tmp_path / "index.faiss"
    faiss.write_index(index, str(path))
    assert core.read_index(faiss, path, 10, 4).ntotal == 10
    with pytest.raises(ValueError, match="claims 10 keys of dimension 4; the manifest says 11 of dimension 4"):
        core.read_index(faiss, path, 11, 4)
    data = bytearray(path.read_bytes())
    struct.pack_into("<Q", data, 37, 2**34)  # the flat key table's length, what FAISS allocates
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="claims a key table of 17179869184 floats; expected 40"):
        core.read_index(faiss, path, 10, 4)
    ids, macs, dist = core.search_counted(faiss, index, np.zeros((3, 4), np.float32), 4)
    assert ids.shape == (3,) and (macs == 40.0).all() and dist.dtype == np.float32


def test_path_confinement_refuses_leaving_the_folder(tmp_path):
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "link").symlink_to(tmp_path)
    assert core.resolve_inside(tmp_path / "inner", "a.json") == (tmp_path / "inner" / "a.json").resolve()
    for entry, message in [
        ("../a.json", "leaves the folder"),
        ("/etc/passwd", "leaves the folder"),
        ("link/x", "symlink leading out"),
        ("", "must be a relative path"),
    ]:
        with pytest.raises(ValueError, match=message):
            core.resolve_inside(tmp_path / "inner", entry, "file")


# ----------------------------------------------------------------------------------------------
# Every registered router, the toy one included


@contextlib.contextmanager
def registered(case: str):
    """``case`` for a registered kind; for the toy, its file run (its decorators register ``toy`` in both
    registries) and both unregistered afterwards, so that other tests see the real registries."""
    if case != "toy router":
        yield case
        return
    assert "toy" not in ROUTERS and "toy" not in RULES
    runpy.run_path(str(TOY))
    try:
        assert "toy" in ROUTERS and "toy" in RULES
        yield "toy"
    finally:
        ROUTERS.unregister("toy")
        core.unregister_rule("toy")


def _tables(n: int = 300, e: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    predicted = (torch.rand(n, e, generator=g) * 0.4).float()
    predicted[:5] = 0.1  # exactly on a threshold: float32 compared as torch compares it
    true = (predicted + 0.05 * torch.randn(n, e, generator=g)).clamp_min(0)
    return predicted, true


def test_the_router_registry_lists_the_built_in_kinds():
    assert ROUTERS.in_order() == ["threshold", "oracle", "static", "calibrated"]
    assert set(ROUTERS.names()) == set(RULES)


@pytest.mark.parametrize("case", [*ROUTERS.in_order(), "toy router"])
def test_every_router_routes_round_trips_and_matches_its_numpy_rule(case):
    with registered(case) as kind:
        cls = ROUTERS.get(kind)
        rule = cls.rule()
        assert cls.kind == kind and rule is RULES[kind]
        # Its constructor takes exactly its rule's fields (and the old names of renamed ones, deprecated):
        # to_config writes them, router_from_config passes them.
        assert list(inspect.signature(cls.__init__).parameters)[1:] and set(
            list(inspect.signature(cls.__init__).parameters)[1:]
        ) - set(rule.renamed) == set(rule.fields)
        predicted, true = _tables()
        costs = [10.0, 25.0, 30.0, 40.0]
        router = cls.example(predicted, true, costs)
        config = router.to_config()
        assert list(config) == ["kind", *rule.fields]
        assert check_router_config(json.loads(json.dumps(config)), num_routes=4) == config
        back = router_from_config(json.loads(json.dumps(config)))
        assert type(back) is cls and back.to_config() == config
        for dtype in (torch.float32, torch.float64):
            table = predicted.to(dtype)
            for t in (0.05, 0.1, 0.15, 0.3):
                routes = router.route(table, t)
                assert routes.dtype == torch.int64 and routes.shape == (300,)
                assert 0 <= int(routes.min()) and int(routes.max()) <= 3
                assert torch.equal(back.route(table, t), routes)
                assert np.array_equal(route_numpy(config, table.numpy(), t), routes.numpy()), (kind, dtype, t)


@pytest.mark.parametrize("case", [*ROUTERS.in_order(), "toy router"])
def test_every_router_config_refuses_a_bad_field_in_one_line(case):
    with registered(case) as kind:
        cls = ROUTERS.get(kind)
        config = cls.example(*_tables(), [10.0, 25.0, 30.0, 40.0]).to_config()
        with pytest.raises(ValueError, match=f"router config: unknown field 'nonsense' for kind '{kind}'"):
            router_from_config({**config, "nonsense": 1})
        for key, field in cls.rule().fields.items():
            if field.ok is None:  # the router's constructor checks it
                continue
            for bad in ("0.1", float("nan"), [float("inf")], True):
                if field.ok(bad) or (bad is True and not field.numeric):
                    continue
                for check in (router_from_config, lambda c: check_router_config(c, num_routes=4)):
                    with pytest.raises(ValueError, match=f"router config: field '{key}' must") as e:
                        check({**config, key: bad})
                    assert "\n" not in str(e.value)
        with pytest.raises(ValueError, match="costs must hold 4 numbers"):
            check_router_config({**config, "costs": [1.0, 2.0]}, num_routes=4)
        with pytest.raises(ValueError, match="costs must be >= 0"):
            router_from_config({**config, "costs": [1.0, -2.0, 3.0, 4.0]})


def test_router_configs_refuse_what_routing_cannot_use():
    with pytest.raises(ValueError, match=r"router config must be a dict with kind in \['calibrated', 'oracle'"):
        router_from_config({"kind": "magic"})
    with pytest.raises(ValueError, match="router config for kind 'static': field 'route' is missing"):
        router_from_config({"kind": "static"})
    with pytest.raises(ValueError, match="static route 4 does not exist: routes are 0..3"):
        check_router_config({"kind": "static", "route": 4}, num_routes=4)
    with pytest.raises(ValueError, match="static route 4 does not exist: routes are 0..3"):  # the old field name
        check_router_config({"kind": "static", "exit": 4}, num_routes=4)
    with pytest.raises(ValueError, match="compliance must lie in"):
        router_from_config({"kind": "oracle", "compliance": 1.5, "costs": [1, 2]})
    with pytest.raises(ValueError, match="must be fitted"):
        check_router_config({"kind": "calibrated", "thresholds": [], "margins": []}, num_routes=4)
    with pytest.raises(ValueError, match="thresholds must be sorted"):
        check_router_config({"kind": "calibrated", "thresholds": [0.2, 0.1], "margins": [0.0, 0.0]}, num_routes=4)
    with pytest.raises(ValueError, match="thresholds and margins must pair up"):
        router_from_config({"kind": "calibrated", "thresholds": [0.2, 0.1], "margins": [0.0]})
    with pytest.raises(ValueError, match="field 'familywise' must be true or false; got 1"):
        router_from_config({"kind": "calibrated", "familywise": 1})
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\]"):
        route_numpy({"kind": "threshold"}, np.zeros((2, 3), np.float32), 1.5)
