"""ONNX export and the torch-free runtime: the same images (within 1e-4, float32), routes and MACs as PyTorch on
the faces pipeline (shipped exits, a briefly trained predictor, a calibrated router) and on a fashion pipeline with
a per-class patch bank; the runtime imports without torch; bad folders and inputs are one clear line."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fiancee.cli import main
from fiancee.pipeline import FianceePipeline
from fiancee.runtime import OnnxPipeline, route_numpy

N = 256  # test inputs compared per pipeline (issue 19)
pytestmark = pytest.mark.usefixtures("one_thread")  # many small convolutions: see conftest.py


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """The shipped faces exits, a `tiny` predictor trained briefly on a real LPIPS table (regressing log LPIPS,
    so the exported trunk ends in the predictor's exp; the fashion pipeline below regresses LPIPS), a calibrated
    router; saved as a pipeline folder and exported with the command line."""
    from fiancee.predictor import QualityPredictor, predictor_features, train_predictor
    from fiancee.routing import CalibratedRouter
    from fiancee.tables import build_lpips_table
    from fiancee.tasks.base import weights_dir
    from fiancee.train.exits import load_exits

    root = tmp_path_factory.mktemp("faces_export")
    task, model = load_exits(weights_dir("faces", "exits"))
    table = build_lpips_table(model, task, 48, 5, "train", cache=False)
    xs = predictor_features("tiny", model, table["inputs"])
    torch.manual_seed(0)
    predictor = QualityPredictor("tiny", len(model.attach_after), [list(xs[0].shape[1:])], target="log")
    train_predictor(predictor, xs, table["lpips"], epochs=5, batch_size=16)
    router = CalibratedRouter(costs=model.route_macs()).fit(predictor(*xs).detach(), table["lpips"], [0.1, 0.2], 0.8)
    FianceePipeline(task, model, predictor, router).save(root / "pipeline")
    assert main(["export", str(root / "pipeline"), "--out", str(root / "onnx")]) == 0
    return root


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """The committed fashion backbone, a per-class patch bank, fresh exits guided by it, a `conv` predictor
    trained briefly on their true LPIPS, the paper's threshold router; exported from the object."""
    from fiancee.bank import BankSpec, build_feature_bank
    from fiancee.exits import ExitGenerator
    from fiancee.export import export_pipeline
    from fiancee.predictor import QualityPredictor, predictor_features, train_predictor
    from fiancee.routing import ThresholdRouter
    from fiancee.tables import build_lpips_table
    from fiancee.tasks import get_task

    root = tmp_path_factory.mktemp("fashion_export")
    task = get_task("fashion")
    backbone = task.load_backbone()
    population = task.sample_inputs(32, seed=1, split="train")
    bank = build_feature_bank(
        backbone,
        population,
        BankSpec(mode="patch", key_stage=1, value_stage=2, grid=(4, 4), max_per_class=16),
        label_channels=11,
        task="fashion",
    )
    torch.manual_seed(0)
    # Random init (the paper's): an untrained *inherited* branch keeps the spectral-norm vectors of its random
    # init, so its weights are not normalised and it amplifies 1e-6 float differences to 1e-2 (not an export matter).
    model = ExitGenerator(
        backbone, task.attach_after, task.default_scale, task.default_min_channels, guide=bank.guide_spec
    ).eval()
    table = build_lpips_table(model, task, 16, 5, "train", guide=bank.guide, cache=False)
    xs = predictor_features("conv", model, table["inputs"])
    predictor = QualityPredictor(
        "conv", len(model.attach_after), [list(x.shape[1:]) for x in xs], width=8, hidden=(16,)
    )
    train_predictor(predictor, xs, table["lpips"], epochs=3, batch_size=16)
    pipe = FianceePipeline(task, model, predictor, ThresholdRouter(model.route_macs()), bank=bank, task_spec="fashion")
    manifest = export_pipeline(pipe, root / "onnx")
    return pipe, manifest, root / "onnx"


def _compare(ref, got, what: str) -> float:
    assert np.array_equal(got.routes, ref.routes.numpy()), f"{what}: routes differ"
    assert np.array_equal(got.macs, ref.macs.numpy()), f"{what}: MACs differ"
    np.testing.assert_allclose(got.predicted_lpips, ref.predicted_lpips.numpy(), rtol=0, atol=1e-4)
    diff = float(np.abs(got.images - ref.images.numpy()).max())
    assert got.images.dtype == np.float32 and got.images.shape == tuple(ref.images.shape)
    assert diff <= 1e-4, f"{what}: images differ by {diff}"
    print(f"{what}: routes equal, max |image difference| {diff:.2e}")  # the figure docs/deploy.md quotes (pytest -s)
    return diff


def test_faces_export_equals_pytorch(faces):
    pipe = FianceePipeline.from_pretrained(faces / "pipeline")
    onnx = OnnxPipeline(faces / "onnx", threads=1)
    (z,) = pipe.task.sample_inputs(N, seed=0, split="test")
    # Below 0.1 the router uses its margin fitted at 0.1: at the median prediction + that margin, half the inputs
    # qualify for exit 1 and the rest go deeper, so the tree splits.
    # Halfway between two neighbouring predictions around the median: no input sits on the threshold, where
    # float rounding (ORT's kernels against torch's) would decide its route.
    p = pipe.predict(z)[:, 0].sort().values
    i = len(p) // 2
    mid = float(p[i - 1] + p[i]) / 2 + pipe.router.margin(0.1)
    assert mid < 0.1
    seen = set()
    for t in (mid, 0.2):
        ref = pipe(z, max_lpips=t)
        got = onnx(z.numpy(), max_lpips=t)
        _compare(ref, got, f"faces T={t}")
        seen |= set(got.routes.tolist())
    assert len(seen) >= 2, f"the thresholds should mix routes; got only {seen}"
    forced = np.arange(N) % pipe.model.num_routes  # every route, interleaved: the tree splits at every exit
    _compare(
        pipe(z, max_lpips=0.1, routes=torch.from_numpy(forced)),
        onnx(z.numpy(), max_lpips=0.1, routes=forced),
        "faces forced",
    )
    # Batch size 1 goes through the same graphs (dynamic batch dimension).
    one = onnx(z[:1].numpy(), max_lpips=0.1)
    assert one.images.shape == (1, 3, 64, 64)


def test_a_batch_on_one_route_runs_whole_bit_for_bit(faces):
    """Every input on one route: its segments run on the whole batch, with exactly the general tree's images."""
    pipe = FianceePipeline.from_pretrained(faces / "pipeline")
    onnx = OnnxPipeline(faces / "onnx", threads=1)
    (z,) = pipe.task.sample_inputs(6, seed=1, split="test")
    trunk = dict(zip(onnx._trunk_outputs, onnx._trunk.run(None, {"input0": z.numpy()})))
    for r in range(onnx.num_routes):
        routes = np.full(6, r, dtype=np.int64)
        general = onnx._branching_tree(trunk["h"], trunk.get("cond"), routes, None)
        assert np.array_equal(onnx(z.numpy(), max_lpips=0.1, routes=routes).images, general)


def _thread_settings(options) -> dict:
    """What a ``SessionOptions`` says about threads, read back from it."""
    try:
        spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # never set: ONNX Runtime's default (spinning on)
        spinning = None
    return {
        "intra": options.intra_op_num_threads,
        "inter": options.inter_op_num_threads,
        "mode": options.execution_mode.name,
        "spinning": spinning,
    }


def test_sessions_with_threads_run_sequentially_without_spinning(faces):
    import onnxruntime as ort

    from fiancee.runtime import session_options

    want = {"intra": 2, "inter": 1, "mode": "ORT_SEQUENTIAL", "spinning": "0"}
    assert _thread_settings(session_options(ort, 2)) == want
    assert _thread_settings(session_options(ort, None))["spinning"] is None  # no threads given: the defaults
    onnx = OnnxPipeline(faces / "onnx", threads=3)
    for sess in (onnx._trunk, onnx._head, *onnx._branches, *onnx._stages.values()):
        assert _thread_settings(sess.get_session_options()) == {**want, "intra": 3}


def test_faces_manifest_describes_the_pipeline(faces):
    pipe = FianceePipeline.from_pretrained(faces / "pipeline")
    m = json.loads((faces / "onnx" / "manifest.json").read_text())
    assert (m["kind"], m["format"], m["opset"]) == ("fiancee-onnx", 1, 17)
    assert m["inputs"] == [{"name": "z", "kind": "noise", "shape": [100], "dtype": "float32"}]
    assert [s["file"] for s in m["segments"]] == [
        "trunk.onnx",
        "stage_2.onnx",
        "stage_3.onnx",
        "stage_4.onnx",
        "branch_0.onnx",
        "branch_1.onnx",
        "branch_2.onnx",
        "head.onnx",
    ]
    assert m["route_macs"] == [int(v) for v in pipe.route_macs.tolist()] == [r["macs"] for r in m["routes"]]
    assert m["routes"][0]["segments"] == ["trunk", "branch 0"]
    assert m["routes"][-1]["segments"] == ["trunk", "stage 2", "stage 3", "stage 4", "head"]
    assert m["router"] == pipe.router.to_config() and m["predictor_macs"] == pipe.predictor_macs()
    config = json.loads((faces / "pipeline" / "config.json").read_text())
    assert m["fingerprints"]["backbone"] == config["backbone_fingerprint"]
    assert m["fingerprints"]["branches"] == config["branches_fingerprint"]
    assert m["fingerprints"]["pipeline_save_id"] == config["save_id"] and m["bank"] is None


@pytest.mark.slow
def test_fashion_export_with_a_bank_equals_pytorch(fashion):
    pipe, manifest, folder = fashion
    assert manifest["bank"]["mode"] == "patch" and manifest["bank"]["label_channels"] == 11
    assert (folder / "bank" / "index_all.faiss").is_file() and (folder / "guide.onnx").is_file()
    onnx = OnnxPipeline(folder, threads=1)
    inputs = pipe.task.sample_inputs(N, seed=0, split="test")
    predicted = pipe.predict(*inputs)[:, 0]
    t = float(predicted.median())  # half the inputs qualify for the first exit: routes mix
    ref = pipe(*inputs, max_lpips=t)
    got = onnx(*(x.numpy() for x in inputs), max_lpips=t)
    _compare(ref, got, "fashion")
    assert len(set(got.routes.tolist())) >= 2
    assert (got.macs > pipe.route_macs.numpy()[got.routes] + pipe.predictor_macs()).all()  # the FAISS search is charged
    forced = np.arange(N) % pipe.model.num_routes
    _compare(
        pipe(*inputs, max_lpips=t, routes=torch.from_numpy(forced)),
        onnx(*(x.numpy() for x in inputs), max_lpips=t, routes=forced),
        "fashion forced",
    )


def test_the_runtime_imports_and_runs_without_torch(faces, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from importlib.abc import MetaPathFinder

        class NoTorch(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this process")
                return None

        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from fiancee.runtime import OnnxPipeline

        z = np.load({str(tmp_path / "z.npy")!r})
        out = OnnxPipeline({str(faces / "onnx")!r}, threads=1)(z, max_lpips=0.2)
        assert "torch" not in sys.modules, "torch was imported"
        np.save({str(tmp_path / "images.npy")!r}, out.images)
        np.save({str(tmp_path / "routes.npy")!r}, out.routes)
    """)
    pipe = FianceePipeline.from_pretrained(faces / "pipeline")
    (z,) = pipe.task.sample_inputs(16, seed=3, split="test")
    np.save(tmp_path / "z.npy", z.numpy())
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env())
    assert run.returncode == 0, run.stderr
    ref = pipe(z, max_lpips=0.2)
    assert np.array_equal(np.load(tmp_path / "routes.npy"), ref.routes.numpy())
    assert np.abs(np.load(tmp_path / "images.npy") - ref.images.numpy()).max() <= 1e-4


def _env():
    import os

    env = dict(os.environ)
    src = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_routers_in_numpy_match_fiancee_routing():
    from fiancee.routing import CalibratedRouter, OracleRouter, StaticRouter, ThresholdRouter

    g = torch.Generator().manual_seed(0)
    predicted = (torch.rand(500, 3, generator=g) * 0.4).float()
    predicted[:5] = 0.1  # exactly on the threshold: compared in float32 by both
    true = (predicted + 0.05 * torch.randn(500, 3, generator=g)).clamp_min(0)
    costs = [10.0, 20.0, 30.0, 40.0]
    routers = [
        ThresholdRouter(),
        ThresholdRouter(costs),
        StaticRouter(1, costs),
        OracleRouter(costs, compliance=0.9),
        CalibratedRouter(costs=costs).fit(predicted, true, [0.1, 0.2], 0.9),
        CalibratedRouter(costs=[40.0, 10.0, 30.0, 20.0]).fit(predicted, true, [0.15], 0.8),
    ]
    for router in routers:
        for t in (0.05, 0.1, 0.15, 0.3):
            want = router.route(predicted, t).numpy()
            got = route_numpy(router.to_config(), predicted.numpy(), t)
            assert np.array_equal(got, want), (router.to_config()["kind"], t)


def test_bad_folders_and_inputs_are_one_clear_line(faces, tmp_path):
    with pytest.raises(FileNotFoundError, match="no exported pipeline at"):
        OnnxPipeline(tmp_path / "missing")
    bad = tmp_path / "bad"
    shutil.copytree(faces / "onnx", bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(ValueError, match="format 99; this fiancee reads format 1"):
        OnnxPipeline(bad)
    (bad / "manifest.json").write_text(
        json.dumps({**manifest, "files": {**manifest["files"], "../pipeline/config.json": "0"}})
    )
    with pytest.raises(ValueError, match="leaves the folder"):
        OnnxPipeline(bad)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    data = (bad / "branch_1.onnx").read_bytes()
    (bad / "branch_1.onnx").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    with pytest.raises(ValueError, match="not the file this manifest was written with"):
        OnnxPipeline(bad)

    onnx = OnnxPipeline(faces / "onnx", threads=1)
    z = np.zeros((2, 100), dtype=np.float32)
    with pytest.raises(ValueError, match=r"z must be a float32 numpy array \[B, 100\]; got float32 \[2, 99\]"):
        onnx(z[:, :99], max_lpips=0.1)
    with pytest.raises(ValueError, match=r"got float64 \[2, 100\]"):
        onnx(z.astype(np.float64), max_lpips=0.1)
    with pytest.raises(ValueError, match=r"expected 1 input\(s\)"):
        onnx(z, z, max_lpips=0.1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        onnx(np.full((2, 100), np.nan, dtype=np.float32), max_lpips=0.1)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        onnx(z, max_lpips=0)
    with pytest.raises(ValueError, match="routes must be 2 integers"):
        onnx(z, max_lpips=0.1, routes=np.array([0, 7]))


def test_an_export_with_the_old_manifest_header_still_loads(faces, tmp_path):
    """An export written before the one folder header (kind "fiancee_onnx", field "exits") loads as it did."""
    from fiancee.export_targets import load_exported
    from fiancee.io import folder_kind

    old = tmp_path / "old"
    shutil.copytree(faces / "onnx", old)
    manifest = json.loads((old / "manifest.json").read_text())
    assert "exits" not in manifest and manifest["attach_after"] == [1, 2, 3]
    manifest = {("exits" if k == "attach_after" else k): v for k, v in manifest.items()}
    (old / "manifest.json").write_text(json.dumps({**manifest, "kind": "fiancee_onnx"}))
    assert folder_kind(old) == "fiancee-onnx"
    z = np.random.default_rng(0).standard_normal((8, 100)).astype(np.float32)
    want = OnnxPipeline(faces / "onnx", threads=1)(z, max_lpips=0.1)
    runtime = load_exported(old, threads=1)
    got = runtime(z, max_lpips=0.1)
    assert runtime.attach_after == [1, 2, 3]
    assert np.array_equal(got.images, want.images) and np.array_equal(got.routes, want.routes)
    with pytest.warns(DeprecationWarning, match="'exits' is renamed 'routes'"):
        assert got.exits is got.routes


def test_export_command_refuses_before_any_work(faces, capsys):
    out = faces / "onnx"
    for argv, message in [
        (["export", str(faces / "pipeline"), "--out", str(out)], "already exists; pass --overwrite"),
        (
            ["export", str(faces / "pipeline"), "--out", str(faces / "pipeline"), "--overwrite"],
            "holds a folder of kind 'fiancee-pipeline'",
        ),
        (
            ["export", str(faces / "pipeline"), "--out", str(faces / "x"), "--opset", "5"],
            "--opset must be an integer in 13..21",
        ),
        (["export", str(faces / "nowhere"), "--out", str(faces / "y")], "no pipeline folder at"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (faces / "x").exists() and not (faces / "y").exists()


def test_onnx_bench_reports_both_runtimes_per_case(tmp_path, capsys):
    """Structure only (reps=1 on the tiny reference OASIS): no timing is asserted; BENCHMARKS.md holds the numbers."""
    assert (
        main(
            [
                "bench",
                "--backbone",
                "oasis",
                "--size",
                "tiny",
                "--runtime",
                "onnx",
                "--batch",
                "1,3",
                "--threads",
                "1",
                "--reps",
                "1",
                "--warmup",
                "0",
                "--json",
                str(tmp_path / "onnx.json"),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "onnx.json").read_text())
    assert report["kind"] == "fiancee-bench-onnx" and report["settings"]["threads"] == [1]
    num_routes = len(report["settings"]["exits_after_stages"]) + 1
    cases = [r["case"] for r in report["rows"] if r["batch"] == 3]
    # No pipeline to route with: every route alone, and the uniform mix as the tree.
    assert cases == [f"route {r}" for r in range(num_routes)] + ["mixed uniform"]
    assert len(report["rows"]) == 2 * (num_routes + 1) and report["settings"]["mixes_from"].startswith("no pipeline")
    for row in report["rows"]:
        assert (
            row["torch_ms"] > 0
            and row["onnx_ms"] > 0
            and row["speedup"] == pytest.approx(row["torch_ms"] / row["onnx_ms"], rel=1e-3)
        )
        assert row["routes_equal"] and row["max_abs_diff"] <= 1e-4 and sum(row["counts"]) == row["batch"]
    assert "torch / onnx" in capsys.readouterr().out
    assert (
        main(
            [
                "bench",
                "--backbone",
                "oasis",
                "--size",
                "tiny",
                "--runtime",
                "onnx",
                "--opt",
                "bf16",
                "--json",
                str(tmp_path / "x.json"),
            ]
        )
        == 2
    )
    assert "--opt and --device do not apply" in capsys.readouterr().err
