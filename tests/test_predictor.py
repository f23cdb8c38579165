"""Quality predictor: LPIPS tables, architectures, the two training recipes, folders, error reports."""

import json

import pytest
import torch

from fiancee.backbones import OASISConfig, OASISGenerator
from fiancee.cli import main
from fiancee.evaluate import per_image_lpips
from fiancee.exits import ExitGenerator
from fiancee.predictor import (
    QualityPredictor,
    exits_fingerprints,
    key_features,
    load_predictor,
    predict,
    predictor_features,
    relative_error,
    save_predictor,
    train_predictor,
)
from fiancee.tables import build_lpips_table, predictor_error, sample_table_inputs
from fiancee.tasks import get_task
from fiancee.tasks.base import InputSpec, Task, check_split


@pytest.fixture(scope="module")
def faces(faces_task, faces_backbone):
    """The real faces backbone (pretrained DCGAN) with untrained 1/4-width exits: real LPIPS, real spread."""
    torch.manual_seed(0)
    model = ExitGenerator(faces_backbone, faces_task.attach_after, "1/4", 16).eval()
    return faces_task, model


class TinyLabelTask(Task):
    """A label-map task on the tiny OASIS config (random blob maps): the conv predictor's input format."""

    name = "tiny-labels"
    description = "tiny OASIS on random label maps (tests)"
    exits = (1, 2)
    default_scale = "1/2"
    default_min_channels = 4
    image_size = (32, 32)
    inputs = (InputSpec("label", "label_map"), InputSpec("z", "noise"))

    def __init__(self):
        torch.manual_seed(0)
        self.backbone = OASISGenerator(OASISConfig.tiny()).eval().requires_grad_(False)

    def load_backbone(self, device="cpu"):
        return self.backbone

    def sample_inputs(self, n, seed, split="test"):
        g = torch.Generator().manual_seed(seed * 2 + (split == "test"))
        check_split(split)
        cfg = self.backbone.config
        coarse = torch.randint(0, cfg.label_channels, (n, 1, 4, 8), generator=g).float()
        maps = torch.nn.functional.interpolate(coarse, size=cfg.out_size, mode="nearest").long()[:, 0]
        label = torch.nn.functional.one_hot(maps, cfg.label_channels).permute(0, 3, 1, 2).float()
        return label, torch.randn(n, cfg.z_dim, generator=g)


def test_lpips_table_is_the_true_lpips_and_is_cached(faces, tmp_path):
    task, model = faces
    table = build_lpips_table(model, task, 12, 0, "train", cache=tmp_path)
    lp = table["lpips"]
    assert lp.shape == (12, 3) and not table["cached"]
    assert torch.all(lp > 0) and lp.std() > 0  # untrained exits differ from the backbone, by input
    z = table["inputs"][0]
    assert torch.equal(z, task.sample_inputs(12, 0, "train")[0])
    with torch.no_grad():
        direct = per_image_lpips(model(z[:4], route=1), model(z[:4], route=3), task.to_lpips_images)
    assert torch.allclose(direct, lp[:4, 1], atol=1e-5)
    again = build_lpips_table(model, task, 12, 0, "train", cache=tmp_path)
    assert again["cached"] and torch.equal(again["lpips"], lp) and again["key"] == table["key"]
    # Other exit weights, other inputs: other keys (a stale table is never served).
    assert build_lpips_table(model, task, 12, 1, "train", cache=False)["key"] != table["key"]
    with torch.no_grad():
        model.branches[0].head.seq[0].weight.mul_(1.01)
    try:
        assert build_lpips_table(model, task, 12, 0, "train", cache=False)["key"] != table["key"]
    finally:
        with torch.no_grad():
            model.branches[0].head.seq[0].weight.div_(1.01)


def test_noise_recipe_crosses_maps_with_fixed_noises():
    task = TinyLabelTask()
    label, z = sample_table_inputs(task, 3, 0, "train", noises=4, noise_seed=5)
    assert label.shape[0] == z.shape[0] == 12
    assert torch.equal(label[0], label[3]) and not torch.equal(label[0], label[4])  # map-major
    assert torch.equal(z[:4], z[4:8])  # the same 4 noises for every map
    held, z_same = sample_table_inputs(task, 2, 0, "test", noises=4, noise_seed=5)
    _, z_new = sample_table_inputs(task, 2, 0, "test", noises=4, noise_seed=6)
    assert torch.equal(z_same[:4], z[:4]) and not torch.equal(z_new[:4], z[:4])
    assert not torch.equal(held[0], label[0])  # held-out maps
    # Table S3's set: every held-out map once, taking the training noises in turn (6 maps, K = 4).
    paired_maps, z_paired = sample_table_inputs(task, 6, 0, "test", noises=4, noise_seed=5, pairing="pair")
    plain_maps, z_own = sample_table_inputs(task, 6, 0, "test")
    assert torch.equal(paired_maps, plain_maps) and z_paired.shape == z_own.shape
    assert torch.equal(z_paired[:4], z[:4]) and torch.equal(z_paired[4:], z[:2])
    with pytest.raises(ValueError, match="pairing must be"):
        sample_table_inputs(task, 6, 0, "test", noises=4, pairing="zip")
    with pytest.raises(ValueError, match="no label map"):
        sample_table_inputs(get_task("faces"), 3, 0, "train", noises=4)


@pytest.mark.parametrize("arch", ["mlp", "conv", "features", "tiny"])
def test_architectures_read_their_inputs(arch):
    task = TinyLabelTask()
    torch.manual_seed(0)
    model = ExitGenerator(task.backbone, task.attach_after, "1/2", 4).eval()
    inputs = task.sample_inputs(5, 0, "train")
    if arch == "mlp":
        xs = (inputs[1],)
    else:
        xs = predictor_features(arch, model, inputs)
    p = QualityPredictor(arch, 2, [list(x.shape[1:]) for x in xs], width=8, hidden=(16,))
    assert p(*xs).shape == (5, 2)
    if arch in ("features", "tiny"):
        assert torch.equal(xs[0], key_features(model, *inputs)) and p.reads_features
    with pytest.raises(ValueError, match="per-sample shapes"):
        p(*(x[:, :1] if x.dim() == 2 else x[:, :, :2] for x in xs))
    with pytest.raises(ValueError, match="arch"):
        QualityPredictor("transformer", 2, [[4]])


@pytest.mark.parametrize(
    "arch,shapes", [("tiny", [[32, 4, 4]]), ("features", [[8, 6, 6]]), ("conv", [[5, 8, 8], [3]]), ("mlp", [[6], [4]])]
)
@pytest.mark.parametrize("target", ["lpips", "log"])
def test_folded_inference_is_the_standardized_network(arch, shapes, target):
    """Eval mode without autograd runs the folded copy; it computes the same function, follows weight edits,
    and never enters the state dict."""
    torch.manual_seed(0)
    p = QualityPredictor(arch, 3, shapes, width=8, hidden=(16,), target=target)
    xs = [torch.randn(7, *s) * 3 + 1 for s in shapes]
    p.fit_statistics(xs, torch.rand(7, 3))
    p.eval()

    def slow():
        with torch.enable_grad():
            y = (p.standardized(*xs) * p.y_std + p.y_mean).detach()
            return y.exp() if target == "log" else y

    with torch.no_grad():
        assert torch.allclose(p(*xs), slow(), atol=1e-5)
        assert p.folded() is p.folded()  # cached while nothing changed
        p.mlp[-1].bias.add_(0.5)
        p.in0_std.mul_(2.0)
        assert torch.allclose(p(*xs), slow(), atol=1e-5)  # refolded after the edits
        assert torch.allclose(p(*xs, check=False), slow(), atol=1e-5)
    assert not any("folded" in k for k in p.state_dict())
    bad = [x.clone() for x in xs]
    bad[0].view(-1)[0] = float("nan")
    with torch.no_grad(), pytest.raises(ValueError, match="NaN"):
        p(*bad)


def test_the_tiny_head_costs_under_one_percent_of_the_faces_backbone():
    """The default predictor on faces' key-stage features [512, 4, 4]: <= 1 % of the 104.6 MMAC backbone,
    against 6.6 MMACs for Table S7's head on the same features."""
    from fiancee.metrics.macs import count_macs

    x = torch.zeros(1, 512, 4, 4)
    tiny = count_macs(QualityPredictor("tiny", 3, [[512, 4, 4]]), x)
    assert tiny <= 0.01 * 104_628_224 and tiny < count_macs(QualityPredictor("features", 3, [[512, 4, 4]]), x) / 10
    from fiancee.predictor import TINY_WIDTH

    assert (
        QualityPredictor("tiny", 3, [[512, 4, 4]]).config()["width"] == TINY_WIDTH
    )  # defaults resolved into the config


@pytest.mark.parametrize("recipe", ["mse-sgd", "mae-adamw"])
def test_both_recipes_learn_a_learnable_quality(recipe):
    # A synthetic but exact target: LPIPS depends smoothly on z (the predictor must rank inputs).
    g = torch.Generator().manual_seed(0)
    z = torch.randn(640, 10, generator=g)
    base = 0.2 + 0.05 * torch.tanh(z[:, :2].sum(1, keepdim=True))
    lpips = base + torch.tensor([[0.08, 0.04, 0.0]])  # [N, 3]
    p = QualityPredictor("mlp", 3, [[10]], hidden=(64, 32))
    hist = train_predictor(
        p,
        (z[:512],),
        lpips[:512],
        recipe=recipe,
        epochs=25,
        batch_size=32,
        lr=None if recipe == "mse-sgd" else 3e-3,
        seed=0,
    )
    assert hist[-1] < 0.3 * hist[0]
    held = relative_error(p(z[512:]).detach(), lpips[512:])
    constant = relative_error(lpips[:512].mean(0).expand(128, 3), lpips[512:])  # predicting the mean
    assert torch.all(held < 0.5 * constant), (held, constant)
    # Ranking on held-out inputs, which is what routing needs.
    pred = p(z[512:]).detach()
    ranks = lambda x: x.argsort().argsort().float()  # noqa: E731
    assert (ranks(pred[:, 0]) - ranks(lpips[512:, 0])).abs().mean() < 16  # of 128 ranks


def test_the_log_target_learns_a_quality_spread_over_factors_and_predicts_lpips_units():
    """LPIPS that differ by factors (a router decides at the low end): the log target regresses log LPIPS, its
    outputs come back in LPIPS units, and it ranks the low end better than regressing LPIPS itself."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(640, 10, generator=g)
    lpips = (0.03 * torch.exp(1.2 * z[:, :1])).clamp_max(0.9) * torch.tensor([[1.0, 0.8]])  # [N, 2]
    ranks = lambda x: x.argsort().argsort().float()  # noqa: E731
    low = lpips[512:, 0] < lpips[512:, 0].median()  # the held-out half a router would send to an exit
    errors = {}
    for target in ("lpips", "log"):
        torch.manual_seed(0)
        p = QualityPredictor("mlp", 2, [[10]], hidden=(32,), target=target)
        train_predictor(p, (z[:512],), lpips[:512], recipe="mae-adamw", epochs=25, batch_size=32, lr=3e-3, seed=0)
        pred = p(z[512:]).detach()
        if target == "log":
            assert p.config()["target"] == "log" and bool((pred > 0).all())
            assert torch.allclose(p.y_mean, lpips[:512].log().mean(0))  # statistics of the log target
            assert 0.5 < float(pred.median() / lpips[512:].median()) < 2.0  # LPIPS units, not logs
        errors[target] = float((ranks(pred[low, 0]) - ranks(lpips[512:][low, 0])).abs().mean())
    assert errors["log"] < errors["lpips"], errors
    assert "target" not in QualityPredictor("mlp", 2, [[10]]).config()  # folders before targets load as lpips
    with pytest.raises(ValueError, match="target must be one of"):
        QualityPredictor("mlp", 2, [[10]], target="sqrt")


def test_training_is_seeded():
    z = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    y = (z[:, :2].abs() * 0.1 + 0.1).clone()
    outs = []
    for _ in range(2):
        torch.manual_seed(3)  # initial weights; train_predictor's seed fixes the batch order
        p = QualityPredictor("mlp", 2, [[6]], hidden=(8,))
        train_predictor(p, (z,), y, epochs=3, seed=4)
        outs.append(p(z).detach())
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="recipe"):
        train_predictor(p, (z,), y, recipe="adam")
    with pytest.raises(ValueError, match=r"lpips must be \[N, 2\]"):
        train_predictor(p, (z,), y[:, :1])


def test_folder_round_trip_and_refusal_for_other_exits(faces, tmp_path):
    task, model = faces
    table = build_lpips_table(model, task, 32, 0, "train", cache=tmp_path / "cache")
    xs = predictor_features("features", model, table["inputs"])
    p = QualityPredictor("features", 3, [list(xs[0].shape[1:])], width=8, hidden=(16,))
    train_predictor(p, xs, table["lpips"], epochs=2, seed=0)
    save_predictor(p, tmp_path / "pred", fingerprints=exits_fingerprints(model), extra={"task": "faces"})
    back, config = load_predictor(tmp_path / "pred", model=model)
    z = table["inputs"]
    assert torch.equal(predict(back, model, z), predict(p, model, z))
    assert config["task"] == "faces" and config["predictor"]["arch"] == "features"
    torch.manual_seed(1)
    other = ExitGenerator(task.load_backbone(), task.attach_after, "1/4", 16).eval()
    with pytest.raises(ValueError, match="trained for exits weights"):
        load_predictor(tmp_path / "pred", model=other)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_predictor(tmp_path / "nothing")


def test_error_report_sets(faces, tmp_path):
    task, model = faces
    p = QualityPredictor("mlp", 3, [[100]], hidden=(16,))
    report = predictor_error(p, model, task, n=8, cache=tmp_path)
    assert list(report["sets"]) == ["held_out"]
    entry = report["sets"]["held_out"]
    assert entry["n"] == 8 and len(entry["relative_error"]) == 3 and entry["mean_relative_error"] > 0
    label_task = TinyLabelTask()
    lmodel = ExitGenerator(label_task.backbone, label_task.attach_after, "1/2", 4).eval()
    lp = QualityPredictor(
        "conv",
        2,
        [[label_task.backbone.config.label_channels, 32, 32], [label_task.backbone.config.z_dim]],
        width=8,
        hidden=(16,),
    )
    rep = predictor_error(lp, lmodel, label_task, n=2, train_noises=3, cache=False)
    assert list(rep["sets"]) == ["train_noises", "new_noises"]
    assert rep["sets"]["train_noises"]["n"] == rep["sets"]["new_noises"]["n"] == 2  # n maps, one noise each


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train-predictor", str(tmp_path / "missing"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json" in err[0]
    assert main(["predictor-error", str(tmp_path / "missing")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_a_log_target_predictor_round_trips_and_a_bad_target_is_one_line(tmp_path):
    torch.manual_seed(0)
    p = QualityPredictor("mlp", 2, [[6]], hidden=(8,), target="log")
    z = torch.randn(16, 6)
    p.fit_statistics((z,), torch.rand(16, 2) * 0.3)
    save_predictor(p, tmp_path / "pred", fingerprints={"backbone": "0" * 16, "exits": "1" * 16})
    back, config = load_predictor(tmp_path / "pred")
    assert back.target == "log" and config["predictor"]["target"] == "log"
    with torch.no_grad():
        assert torch.equal(back(z), p.eval()(z))
    cfg = json.loads((tmp_path / "pred" / "config.json").read_text())
    cfg["predictor"]["target"] = "sqrt"
    (tmp_path / "pred" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="has target 'sqrt'; expected 'lpips' or 'log'"):
        load_predictor(tmp_path / "pred")
