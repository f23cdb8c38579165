"""fiancee.assemble: a pipeline folder from an exit run and a predictor (the demo's step 3 as a library step).

One small demo (48 predictor, calibration and test inputs) on the committed faces exits, shared by the slow
tests; the step run on its predictor must write the same router, predictor and branches as the demo wrote into
OUT/pipeline. The argument checks need no demo.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import fiancee
import fiancee.tables
import fiancee.train.exits
from fiancee.assemble import (
    CALIBRATION_SEED_OFFSET,
    FITS,
    assemble_pipeline,
    calibrate_router,
    check_calibration_args,
    summary_lines,
)
from fiancee.demo import run_demo
from fiancee.pipeline import FianceePipeline
from fiancee.risk import METHODS

EXITS = Path(fiancee.__file__).parent / "weights" / "faces" / "exits"
N = 48  # >= 45, the fewest calibration inputs for the default guarantee (epsilon 0.05, delta 0.1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("assemble")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FIANCEE_WEIGHTS", raising=False)  # the committed exits, which the step is given below
        mp.setenv("FIANCEE_CACHE", str(root / "cache_demo"))
        run_demo("faces", root / "demo", n_predictor=N, n_calibrate=N, n_eval=N, progress=False)
    return root


@pytest.fixture(scope="module")
def assembled(demo):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIANCEE_CACHE", str(demo / "cache_step"))  # the calibration table computed again, not reused
        return assemble_pipeline(
            EXITS, demo / "demo" / "predictor", demo / "pipeline", n_calibrate=N, seed=0, progress=False
        )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # the demo fixture: about 30 s
def test_the_folder_loads_and_routes(assembled):
    path, pipe, (predicted, true) = assembled
    assert path == assembled.path and pipe is assembled.pipeline
    assert predicted.shape == true.shape == (N, pipe.model.num_routes - 1)
    loaded = FianceePipeline.from_pretrained(path)
    (z,) = loaded.task.sample_inputs(4, seed=1, split="test")
    out = loaded(z, max_lpips=0.1)
    assert out.images.shape[0] == 4 and out.exits.shape == (4,)
    assert torch.equal(out.exits, pipe(z, max_lpips=0.1).exits)
    assert loaded.router.to_config() == pipe.router.to_config()
    assert loaded.provenance == {
        "exits_run": str(EXITS),
        "seed": 0,
        "target_compliance": None,
        "method": "ltt",
        "epsilon": 0.05,
        "delta": 0.1,
        "calibration_inputs": N,
        "predictor_inputs": N,
    }
    lines = summary_lines(assembled)
    assert "Learn-then-Test" in lines[0] and str(path) in lines[-1]


@pytest.mark.slow  # the demo fixture: about 30 s
def test_the_step_writes_what_the_demo_writes(demo, assembled):
    mine, theirs = assembled.path, demo / "demo" / "pipeline"
    for name in ("branches.safetensors", "predictor/weights.safetensors", "predictor/config.json"):
        assert _sha(mine / name) == _sha(theirs / name), name
    a, b = (json.loads((p / "config.json").read_text()) for p in (mine, theirs))
    assert a.pop("save_id") != b.pop("save_id")
    assert a == b  # the router (margins, calibration range), the provenance, the fingerprints


@pytest.mark.slow  # the demo fixture: about 30 s
def test_calibrate_router_is_the_steps_router(demo, assembled):
    pipe = assembled.pipeline
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIANCEE_CACHE", str(demo / "cache_step"))
        router, (predicted, true) = calibrate_router(pipe.model, pipe.task, pipe.predictor, n=N, seed=0)
    assert router.to_config() == pipe.router.to_config()
    assert torch.equal(predicted, assembled.calibration[0]) and torch.equal(true, assembled.calibration[1])
    # the calibration inputs come from the split the task names for them (upscale: photos no exit trained on)
    assert pipe.task.calibration_split == "train"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIANCEE_CACHE", str(demo / "cache_step"))
        mp.setattr(pipe.task, "calibration_split", "test", raising=False)
        _, (_, other) = calibrate_router(pipe.model, pipe.task, pipe.predictor, n=N, seed=0)
        table = fiancee.tables.build_lpips_table(pipe.model, pipe.task, N, CALIBRATION_SEED_OFFSET, "test", None)
    assert torch.equal(other, table["lpips"]) and not torch.equal(other, true)


def test_every_calibration_method_has_its_fit():
    assert set(FITS) == set(METHODS)
    assert check_calibration_args("ltt", 0.05, 0.1, 0.9, 2, [0.1]) == ("average", [0.1])
    assert check_calibration_args("crc", 0.05, 0.1, None, 19, 0.2) == ("crc", [0.2])


@pytest.fixture
def no_work(monkeypatch):
    """Loading the exits or building an LPIPS table fails the test: a refusal must come before them."""

    def fail(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(fiancee.train.exits, "load_exits", fail)
    monkeypatch.setattr(fiancee.tables, "build_lpips_table", fail)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "crc", "target_compliance": 0.9}, "method 'crc' takes epsilon"),
        ({"method": "average"}, "takes its target"),
        ({"method": "bogus"}, "method must be one of"),
        ({"n_calibrate": 20}, "needs at least 45 calibration inputs; got n_calibrate=20"),
        ({"method": "crc", "n_calibrate": 10}, "expected miss rate <= 0.05 needs at least 19"),
        ({"epsilon": float("nan")}, "epsilon must be a number in"),
        ({"delta": "0.1"}, "delta must be a number in"),
        ({"target_compliance": 1.5}, r"target_compliance must be a number in \(0, 1\]"),
        ({"thresholds": []}, "at least one threshold"),
        ({"thresholds": [0.1, 2]}, r"threshold must lie in \(0, 1\]"),
        ({"n_calibrate": 48.0}, "n_calibrate must be an integer"),
        ({"seed": "0"}, "seed must be an integer"),
    ],
)
def test_bad_arguments_are_refused_in_one_line_before_work(tmp_path, no_work, kwargs, match):
    args = {"n_calibrate": N, "seed": 0, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match) as e:
        assemble_pipeline(EXITS, tmp_path / "predictor", tmp_path / "pipeline", **args)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "pipeline").exists()


@pytest.mark.slow  # the demo fixture: about 30 s
def test_folders_that_do_not_fit_are_refused_before_work(demo, assembled, tmp_path, no_work):
    predictor = demo / "demo" / "predictor"
    cases = [
        ((EXITS, EXITS, tmp_path / "a"), "holds a folder of kind 'fiancee-exits-run', not a quality predictor"),
        ((predictor, predictor, tmp_path / "b"), "kind 'fiancee-predictor', not an exit-training run"),
        ((EXITS, predictor, predictor), "refusing to replace it with a pipeline"),  # out holds the predictor
        ((EXITS, predictor, assembled.path), "already exists; pass overwrite=True"),
    ]
    for args, match in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=match) as e:
            assemble_pipeline(*args, n_calibrate=N, progress=False)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="holds exits of task 'faces', not of 'fashion'"):
        assemble_pipeline(EXITS, predictor, tmp_path / "c", n_calibrate=N, task="fashion", progress=False)


@pytest.mark.slow  # the demo fixture: about 30 s
def test_a_predictor_of_other_exits_is_refused_before_the_table(demo, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the calibration table was built for a predictor of other exits")

    monkeypatch.setattr(fiancee.tables, "build_lpips_table", fail)
    other = tmp_path / "predictor"
    shutil.copytree(demo / "demo" / "predictor", other)
    config = json.loads((other / "config.json").read_text())
    config["fingerprints"]["exits"] = "0" * 16  # as trained for another run's branches
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="was trained for exits weights") as e:
        assemble_pipeline(EXITS, other, tmp_path / "pipeline", n_calibrate=N, progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "pipeline").exists()
