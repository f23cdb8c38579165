"""Serving routed generation (docs/serve.md): per-input thresholds in one batch, request validation as pure
functions, the batch handler without Ray, the command's refusals, and one end-to-end run on Ray Serve (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_pipeline():
    """Tiny OASIS with exits, an untrained tiny predictor and the paper's threshold router (no task)."""
    from fiancee.backbones import build_backbone
    from fiancee.exits import ExitGenerator
    from fiancee.pipeline import FianceePipeline
    from fiancee.predictor import QualityPredictor, predictor_features
    from fiancee.routing import ThresholdRouter

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = build_backbone("oasis", "tiny")
        model = ExitGenerator(backbone, backbone.config.exits, "1/4", 4).eval()
        xs = predictor_features("tiny", model, backbone.example_inputs(2))
        predictor = QualityPredictor("tiny", len(model.attach_after), [list(xs[0].shape[1:])])
        with torch.no_grad():  # untrained, it predicts around 0: lifted into (0, 1) where thresholds live
            [m for m in predictor.modules() if getattr(m, "bias", None) is not None][-1].bias += 0.2
        inputs = backbone.example_inputs(8)
    pipe = FianceePipeline(None, model, predictor, ThresholdRouter(model.route_macs()), task_spec="oasis")
    return pipe, inputs


def _mixed_thresholds(predicted: torch.Tensor) -> list[float]:
    """One threshold per input, in turn below every prediction (the backbone) or just at one of its predictions
    (an exit), so that the inputs of one batch take different routes."""
    ts = []
    for i, row in enumerate(predicted.tolist()):
        options = [1e-3] + sorted(v + 1e-6 for v in row)
        ts.append(min(1.0, max(1e-3, options[i % len(options)])))
    return ts


# ----------------------------------------------------------------------------------------------
# One threshold per input (a served batch gathers requests that each asked for their own quality)


def test_each_input_is_routed_by_its_own_threshold_in_one_call(tiny_pipeline, one_thread):
    pipe, inputs = tiny_pipeline
    ts = _mixed_thresholds(pipe.predict(*inputs))
    out = pipe(*inputs, max_lpips=ts)
    assert len(set(out.routes.tolist())) >= 2  # the batch really mixes routes
    for i, t in enumerate(ts):  # every input as if it had come alone with its threshold
        alone = pipe(*(x[i : i + 1] for x in inputs), max_lpips=t)
        assert int(out.routes[i]) == int(alone.routes[0])
        assert float(out.macs[i]) == float(alone.macs[0])
        torch.testing.assert_close(out.images[i : i + 1], alone.images, atol=1e-5, rtol=0)
    same = pipe(*inputs, max_lpips=torch.tensor(ts))  # a tensor works as a list does
    assert torch.equal(same.routes, out.routes)
    one = pipe(*inputs, max_lpips=[ts[0]] * len(ts))  # all equal: the same as one threshold
    assert torch.equal(one.routes, pipe(*inputs, max_lpips=ts[0]).routes)


@pytest.mark.parametrize(
    "value,message",
    [
        ([0.1, 0.2], "threshold must be one number in (0, 1] or 8 of them (one per input); got shape [2]"),
        ([0.1] * 7 + [float("nan")], "threshold must lie in (0, 1] (LPIPS); got nan"),
        ([0.1] * 7 + [1.5], "threshold must lie in (0, 1] (LPIPS); got 1.5"),
        ([0.1] * 7 + ["0.1"], "threshold must be a number in (0, 1]"),
        ([[0.1] * 8], "threshold must be one number in (0, 1] or 8 of them"),
    ],
)
def test_bad_per_input_thresholds_are_one_line(tiny_pipeline, value, message):
    pipe, inputs = tiny_pipeline
    with pytest.raises(ValueError) as e:
        pipe(*inputs, max_lpips=value)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_onnx_runtime_routes_per_input_like_pytorch(tiny_pipeline, tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    from fiancee.export import export_pipeline
    from fiancee.runtime import OnnxPipeline

    pipe, inputs = tiny_pipeline
    export_pipeline(pipe, tmp_path / "onnx")
    onnx = OnnxPipeline(tmp_path / "onnx", threads=1)
    ts = _mixed_thresholds(pipe.predict(*inputs))
    want = pipe(*inputs, max_lpips=ts)
    got = onnx(*(x.numpy() for x in inputs), max_lpips=np.asarray(ts))
    assert got.routes.tolist() == want.routes.tolist() and len(set(got.routes.tolist())) >= 2
    np.testing.assert_allclose(got.macs, want.macs.numpy())
    np.testing.assert_allclose(got.images, want.images.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match=r"max_lpips must be one number in \(0, 1\] or 8 of them \(one per input\)"):
        onnx(*(x.numpy() for x in inputs), max_lpips=[0.1])
