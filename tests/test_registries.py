"""Every registered predictor head, critic and export target gets the same checks (timm's habit: tests
parametrized over the registry), and a new one written in one file gets them too: the toy head and the toy
critic in tests/fixtures are registered for their cases and unregistered after."""

from __future__ import annotations

import contextlib
import inspect
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fiancee.backbones.oasis_discriminator import UNetDiscriminator
from fiancee.export_targets import EXPORT_TARGETS, ExportTarget, export, get_target, load_exported
from fiancee.predictor import ARCHS, FEATURE_ARCHS, FoldedPredictor, QualityPredictor, load_predictor, save_predictor
from fiancee.predictor.heads import HEADS, arch_names, get_head
from fiancee.train.critics import CRITIC_KINDS, CRITICS, build_critic
from fiancee.train.exits import build_critics, critic_kind
from fiancee.train.losses import Recipe
from fiancee.train.predictor import check_arch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOYS = {"toy head": (HEADS, FIXTURES / "toy_head.py"), "toy critic": (CRITICS, FIXTURES / "toy_critic.py")}


@contextlib.contextmanager
def registered(case: str):
    """``case`` itself for a registered name; for a toy, its file run (its decorator registers ``toy``) and
    the name unregistered afterwards, so that other tests see the real registry."""
    if case not in TOYS:
        yield case
        return
    registry, path = TOYS[case]
    assert "toy" not in registry
    runpy.run_path(str(path))
    try:
        assert "toy" in registry
        yield "toy"
    finally:
        registry.unregister("toy")


def test_the_built_in_names_keep_their_order():
    assert ARCHS == arch_names() == ("mlp", "conv", "features", "tiny") and FEATURE_ARCHS == ("features", "tiny")
    assert CRITIC_KINDS == ("dcgan", "patch", "oasis")
    assert EXPORT_TARGETS.in_order() == ["onnx"]


# ----------------------------------------------------------------------------------------------
# Predictor heads


@pytest.mark.parametrize("case", [*HEADS.in_order(), "toy head"])
def test_every_head_builds_runs_folds_and_saves(case, tmp_path):
    with registered(case) as arch:
        head = get_head(arch)
        shapes = head.example_shapes
        assert shapes and head.fits(shapes), f"head {arch!r}: example_shapes must be shapes it reads"
        assert isinstance(head.reads_features, bool) and head.reads
        torch.manual_seed(0)
        QualityPredictor(arch, 2, shapes)  # its defaults build
        torch.manual_seed(0)
        p = QualityPredictor(arch, 3, shapes, width=4, hidden=(8,))
        torch.manual_seed(0)
        again = QualityPredictor(arch, 3, shapes, width=4, hidden=(8,)).state_dict()  # one seed, one predictor
        assert list(again) == list(p.state_dict()) and all(torch.equal(again[k], v) for k, v in p.state_dict().items())
        xs = [torch.randn(5, *s) * 2 + 1 for s in shapes]
        p.fit_statistics(xs, torch.rand(5, 3))
        # Training mode: the standardized network, gradients reach every parameter.
        p.train()
        out = p(*xs)
        assert out.shape == (5, 3)
        out.sum().backward()
        assert all(q.grad is not None for q in p.parameters())
        # Inference: the folded copy computes the same function.
        p.eval()
        with torch.no_grad():
            assert isinstance(p.folded(), FoldedPredictor)
            assert torch.allclose(p(*xs), out.detach(), atol=1e-5)
        assert not any("folded" in k for k in p.state_dict())
        with pytest.raises(ValueError, match="per-sample shapes"):
            p(*[x[:, :1] for x in xs])
        if not head.fits([[2, 2, 2, 2, 2]]):
            with pytest.raises(ValueError, match=f"arch '{arch}' reads"):
                QualityPredictor(arch, 3, [[2, 2, 2, 2, 2]])
        # A folder round trip gives the same predictor.
        save_predictor(p, tmp_path / "p", fingerprints={"backbone": "b", "exits": "e"})
        q, config = load_predictor(tmp_path / "p")
        assert config["predictor"]["arch"] == arch and q.config() == p.config()
        with torch.no_grad():
            assert torch.equal(q(*xs), p(*xs))
        # The workflow accepts it where the declared inputs allow it.
        kinds = ["label_map", "noise"] if head.cannot_read(["noise"]) else ["noise"]
        check_arch(arch, kinds, "a task")
    assert "toy" not in HEADS


def test_an_unknown_head_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"arch must be one of \('mlp', 'conv', 'features', 'tiny'\); got 'toy'"):
        QualityPredictor("toy", 2, [[4]])
    with pytest.raises(ValueError, match="use 'mlp', 'features' or 'tiny'"):
        check_arch("conv", ["noise"], "task t")


# ----------------------------------------------------------------------------------------------
# Critics


@pytest.mark.parametrize("case", [*CRITICS.in_order(), "toy critic"])
def test_every_critic_builds_and_gives_both_losses(case):
    """On a 16 px image with a 3-class label map; the ``oasis`` kind copies a tiny U-Net discriminator, the
    others ignore it."""
    with registered(case) as kind:
        torch.manual_seed(0)
        disc = UNetDiscriminator(num_classes=3, channels=(4, 8))
        critic = build_critic(kind, 16, 3, 4, discriminator=disc, label_index=0, seed=1)
        assert any(p.requires_grad for p in critic.parameters())
        label = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 16, 16)), 3).permute(0, 3, 1, 2).float()
        real = torch.rand(2, 3, 16, 16) * 2 - 1
        fake = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
        d = critic.d_loss(real, fake, (label,))
        assert d.dim() == 0 and torch.isfinite(d)
        d.backward()
        assert fake.grad is None  # the discriminator's loss does not reach the branch
        adv, fm = critic.g_loss(fake, (label,), real)
        assert adv.dim() == 0 and fm.dim() == 0 and torch.isfinite(adv + fm)
        adv.backward()
        assert fake.grad is not None and torch.isfinite(fake.grad).all()
        if kind != "oasis":  # what exit training builds for a task that names the kind
            task = SimpleNamespace(name="t", critic_kind=kind, image_size=(16, 16), image_channels=3)
            assert critic_kind(task, Recipe(name="r", critic="task")) == kind
            assert len(build_critics(task, Recipe(name="r", critic=kind), 2)) == 2
    assert "toy" not in CRITICS


def test_an_unknown_critic_is_refused_in_one_line():
    with pytest.raises(ValueError, match="unknown critic kind 'toy'; expected one of"):
        build_critic("toy", 16)
    task = SimpleNamespace(name="t", critic_kind="toy")
    with pytest.raises(ValueError, match="unknown critic 'toy' \\(task 't' declares it\\)"):
        critic_kind(task, Recipe(name="r", critic="task"))


# ----------------------------------------------------------------------------------------------
# Export targets


@pytest.mark.parametrize("name", EXPORT_TARGETS.in_order())
def test_every_export_target_is_complete(name, tmp_path):
    target = get_target(name)
    assert isinstance(target, ExportTarget) and target.kind and target.description
    for method in ("export", "load"):
        assert getattr(type(target), method) is not getattr(ExportTarget, method), f"{name} lacks {method}()"
    for options in (target.export_options, target.load_options):
        assert isinstance(options, tuple) and all(isinstance(o, str) and o.isidentifier() for o in options)
    # Options it does not take are refused before any work.
    with pytest.raises(ValueError, match=f"export target '{name}' takes export options"):
        export(tmp_path / "no-pipeline", tmp_path / "out", target=name, no_such_option=1)
    assert not (tmp_path / "out").exists()


def test_the_onnx_target_names_the_export_function_and_the_runtime():
    from fiancee.export import KIND, export_pipeline

    target = get_target("onnx")
    assert target.kind == KIND
    assert set(target.export_options) <= set(inspect.signature(export_pipeline).parameters)
    runtime = pytest.importorskip("fiancee.runtime")
    assert set(target.load_options) <= set(inspect.signature(runtime.OnnxPipeline).parameters)


def test_an_unknown_target_or_folder_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"target must be one of \('onnx',\); got 'tensorrt'"):
        export(tmp_path, tmp_path / "out", target="tensorrt")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text('{"kind": "quality_predictor"}')
    with pytest.raises(ValueError, match="is no exported pipeline"):
        load_exported(tmp_path / "x")
