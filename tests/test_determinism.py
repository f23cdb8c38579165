"""A seed fixes everything on CPU: the inputs drawn, exit training, predictor training, the demo's figures."""

import json

import pytest
import torch

from fiancee.demo import run_demo
from fiancee.io import load_tensors
from fiancee.tasks import get_task
from fiancee.train.exits import make_config, train_exits
from fiancee.train.run import RunDir


@pytest.mark.parametrize("name", ["faces", "fashion"])
def test_sampling_is_fixed_by_the_seed(name):
    task = get_task(name)
    a, b, c = (task.sample_inputs(8, seed=s, split="train") for s in (4, 4, 5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[-1], c[-1])  # the noise differs with the seed


def _branches(out):
    return load_tensors(out / RunDir(out).latest()["dir"] / "branches.safetensors")


@pytest.mark.slow
def test_exit_training_is_bitwise_reproducible(tmp_path, one_thread):
    weights = []
    for name in ("a", "b"):
        train_exits(
            make_config("faces", preset="smoke", steps=3, batch_size=2, seed=3),
            tmp_path / name,
            device="cpu",
            progress=False,
        )
        weights.append(_branches(tmp_path / name))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    train_exits(
        make_config("faces", preset="smoke", steps=3, batch_size=2, seed=4),
        tmp_path / "c",
        device="cpu",
        progress=False,
    )
    other = _branches(tmp_path / "c")
    assert any(not torch.equal(weights[0][k], other[k]) for k in other)


@pytest.mark.slow
def test_demo_figures_are_reproducible(tmp_path, monkeypatch, one_thread):
    # Small sets so that it runs in seconds; each run computes its LPIPS tables in its own cache.
    reports, predictors = [], []
    for name in ("a", "b"):
        monkeypatch.setenv("FIANCEE_CACHE", str(tmp_path / f"cache_{name}"))
        report = run_demo("faces", tmp_path / name, n_predictor=48, n_calibrate=48, n_eval=48, progress=False)
        reports.append(json.dumps(report["thresholds"], sort_keys=True, default=float))
        predictors.append(load_tensors(tmp_path / name / "predictor" / "weights.safetensors"))
    assert reports[0] == reports[1]
    assert all(torch.equal(predictors[0][k], predictors[1][k]) for k in predictors[0])
