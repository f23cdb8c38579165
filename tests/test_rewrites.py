"""Inference rewrites (fiancee.rewrites): the same images from every built-in generator and its exits, the original
left as it was, and a rewritten pipeline that runs but is never saved."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fiancee.backbones import build_backbone
from fiancee.exits import ExitGenerator
from fiancee.pipeline import FianceePipeline
from fiancee.predictor import QualityPredictor
from fiancee.rewrites import COLUMN_ROWS, ColumnsConvTranspose2d, MatmulConvTranspose2d, fold_batchnorm, for_inference
from fiancee.routing import ThresholdRouter


def _randomize_batchnorms(model: nn.Module, seed: int) -> None:
    """Running statistics and affine parameters away from (0, 1), so that a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(m.num_features, generator=g))
                m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def _all_routes(model: ExitGenerator, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(*inputs, route=r) for r in range(model.num_routes)]


def test_the_faces_generator_and_its_exits_give_the_same_images(faces_backbone):
    torch.manual_seed(0)
    model = ExitGenerator(faces_backbone, [1, 2, 3], "1/4", 8).eval()
    _randomize_batchnorms(model, 1)
    (z,) = faces_backbone.example_inputs(3)
    before = [p.detach().clone() for p in model.parameters()]
    expected = _all_routes(model, (z,))
    fast, counts = for_inference(model)
    # The backbone's first layer (1x1 -> 4x4) and the four RGB heads; every BatchNorm after a convolution.
    # Every transposed convolution: the first layer (1x1 -> 4x4) as a matrix product, the rest as columns (the RGB
    # heads always, the others on small inputs only).
    assert counts["transposed_convolutions_replaced"] == 5 + 4 + 3 + 2  # the backbone, then each branch
    assert counts["batchnorms_folded"] == 4 + 3 + 2 + 1  # the backbone, then the branches after stages 1, 2, 3
    assert isinstance(fast.backbone.main[0], MatmulConvTranspose2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, ColumnsConvTranspose2d) for m in fast.branches.modules())
    # Float rounding only: the random statistics scale activations well past trained ones (real weights: ~1e-6).
    for want, got in zip(expected, _all_routes(fast, (z,))):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # The stages (views onto the backbone's layers, outside the registry) run the rewritten layers too.
    with torch.no_grad():
        z4 = z[:, :, None, None]
        torch.testing.assert_close(fast.backbone.stages[0](z4), model.backbone.stages[0](z4), atol=1e-5, rtol=0)
    # The original is untouched: same weights, same modules, same images.
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert isinstance(model.backbone.main[0], nn.ConvTranspose2d) and isinstance(model.backbone.main[1], nn.BatchNorm2d)
    for want, got in zip(expected, _all_routes(model, (z,))):
        assert torch.equal(got, want)


def test_spectral_norms_are_baked_and_spade_fused_without_touching_the_original():
    torch.manual_seed(0)
    backbone = build_backbone("oasis", "tiny").eval()
    model = ExitGenerator(backbone, [1, 2, 3], "1/2", 4).eval()
    inputs = backbone.example_inputs(2)
    expected = _all_routes(model, inputs)
    fast, counts = for_inference(model)
    assert counts["parametrizations_baked"] > 0 and counts["modules_fused"] > 0
    assert not any(hasattr(m, "parametrizations") for m in fast.modules())
    for want, got in zip(expected, _all_routes(fast, inputs)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # The deep copy shares the parametrized classes with the original: the original still has its weights.
    assert any(hasattr(m, "parametrizations") for m in model.modules())
    for want, got in zip(expected, _all_routes(model, inputs)):
        assert torch.equal(got, want)
    # Inference only: nothing in the copy asks for gradients.
    assert not any(p.requires_grad for p in fast.parameters())


def test_columns_and_matmul_transposed_convolutions_equal_the_layer_they_replace():
    torch.manual_seed(0)
    head = nn.ConvTranspose2d(6, 3, 4, 2, 1, bias=True)
    stem = nn.ConvTranspose2d(5, 7, 4, 1, 0, bias=True)
    x = torch.randn(2, 6, 5, 7)
    z = torch.randn(3, 5, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(ColumnsConvTranspose2d(head)(x), head(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(MatmulConvTranspose2d(stem)(z), stem(z), atol=1e-5, rtol=0)
        # Any other input size runs the original layer.
        y = torch.randn(1, 5, 3, 3)
        assert torch.equal(MatmulConvTranspose2d(stem)(y), stem(y))
        # A wide layer: columns on small inputs only (at most COLUMN_ROWS pixels over the batch).
        wide = nn.ConvTranspose2d(8, 16, 4, 2, 1)
        small, large = torch.randn(2, 8, 4, 4), torch.randn(3, 8, 4, 4)
        assert 2 * 4 * 4 <= COLUMN_ROWS < 3 * 4 * 4
        cols = ColumnsConvTranspose2d(wide, always=False)
        torch.testing.assert_close(cols(small), wide(small), atol=1e-5, rtol=0)
        assert torch.equal(cols(large), wide(large))


def test_a_batchnorm_without_a_convolution_before_it_stays():
    seq = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, affine=False)).eval()
    _randomize_batchnorms(seq, 2)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        want = seq(x)
        assert fold_batchnorm(seq) == 1
        torch.testing.assert_close(seq(x), want, atol=1e-5, rtol=0)
    assert [type(m).__name__ for m in seq] == ["ReLU", "BatchNorm2d", "Conv2d"]


def test_a_convolution_shared_with_a_container_that_reads_it_unnormalized_is_not_folded():
    conv, bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
    model = nn.ModuleDict({"normed": nn.Sequential(conv, bn), "raw": nn.Sequential(conv, nn.ReLU())}).eval()
    _randomize_batchnorms(model, 3)
    assert fold_batchnorm(model) == 0
    assert model["normed"][0] is conv and model["raw"][0] is conv and model["normed"][1] is bn


def test_a_rewritten_pipeline_routes_alike_and_refuses_to_be_saved(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone("oasis", "tiny").eval()
    model = ExitGenerator(backbone, [1, 2], "1/2", 4).eval()
    inputs = backbone.example_inputs(4)
    h = backbone.features(*inputs, taps=(1,)).taps[1]
    predictor = QualityPredictor("tiny", 2, [list(h.shape[1:])], width=4, hidden=(8,)).eval()
    pipe = FianceePipeline(None, model, predictor, ThresholdRouter(model.route_macs()), task_spec="tiny")
    fast = pipe.for_inference()
    assert pipe.rewrites is None and fast.rewrites["parametrizations_baked"] > 0
    assert fast.for_inference() is fast and fast.model is not pipe.model
    a, b = pipe(*inputs, max_lpips=0.2), fast(*inputs, max_lpips=0.2)
    assert torch.equal(a.routes, b.routes) and torch.equal(a.macs, b.macs)
    torch.testing.assert_close(b.images, a.images, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="rewritten for inference.*save the pipeline it came from"):
        fast.save_pretrained(tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_for_inference_names_what_it_expected():
    with pytest.raises(ValueError, match="torch.nn.Module; got str"):
        for_inference("model")


def _tiny_pipeline():
    torch.manual_seed(0)
    backbone = build_backbone("oasis", "tiny").eval()
    model = ExitGenerator(backbone, [1, 2], "1/2", 4).eval()
    h = backbone.features(*backbone.example_inputs(1), taps=(1,)).taps[1]
    predictor = QualityPredictor("tiny", 2, [list(h.shape[1:])], width=4, hidden=(8,)).eval()
    return FianceePipeline(None, model, predictor, ThresholdRouter(model.route_macs()), task_spec="tiny"), backbone


def test_compile_is_checked_before_anything_is_compiled(monkeypatch):
    pipe, _ = _tiny_pipeline()
    with pytest.raises(ValueError, match="compile must be True or False"):
        pipe.for_inference(compile="yes")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("fiancee.rewrites.shutil.which", lambda name: None)
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        pipe.for_inference(compile=True)
    assert not any(getattr(m, "_compiled_call_impl", None) for m in pipe.model.modules())


@pytest.mark.slow
def test_a_compiled_pipeline_gives_the_same_images_at_two_batch_sizes():
    pipe, backbone = _tiny_pipeline()
    fast = pipe.for_inference()
    compiled = fast.for_inference(compile=True)
    assert compiled.compiled and not fast.compiled and compiled.rewrites == fast.rewrites
    segments = [*compiled.model.backbone.stages, compiled.model.backbone.head, *compiled.model.branches]
    assert all(m._compiled_call_impl is not None for m in segments)
    with pytest.raises(ValueError, match="compiled already"):
        compiled.for_inference()
    # Two batch sizes, split into other sub-batches by the tree: the second recompiles each segment for any batch.
    for n in (4, 3):
        inputs = backbone.example_inputs(n)
        want = pipe(*inputs, max_lpips=0.2, routes=torch.arange(n) % 3)
        got = compiled(*inputs, max_lpips=0.2, routes=torch.arange(n) % 3)
        torch.testing.assert_close(got.images, want.images, atol=1e-4, rtol=0)
