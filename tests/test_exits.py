"""Exit branches and their execution on tiny backbones (CPU, seconds)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fiancee.backbones import G2DConfig, G2DGenerator, OASISConfig, OASISGenerator
from fiancee.exits import ExitGenerator, GuideSpec
from fiancee.metrics.macs import count_macs
from fiancee.staged import StagedSequential


def tiny_dcgan(**kwargs) -> StagedSequential:
    seq = nn.Sequential(
        nn.ConvTranspose2d(16, 32, 4, 1, 0, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),  # 4x4
        nn.ConvTranspose2d(32, 16, 4, 2, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),  # 8x8
        nn.ConvTranspose2d(16, 8, 4, 2, 1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),  # 16x16
        nn.ConvTranspose2d(8, 3, 4, 2, 1, bias=False),
        nn.Tanh(),  # 32x32
    )
    return StagedSequential(seq, [0, 3, 6, 9], example_input=torch.randn(1, 16, 1, 1), **kwargs)


def build(name: str, seed: int = 0, guide: GuideSpec | None = None) -> ExitGenerator:
    torch.manual_seed(seed)
    if name == "oasis":
        backbone = OASISGenerator(OASISConfig.tiny())
        model = ExitGenerator(backbone, backbone.config.exits, "1/2", 4, guide=guide)
    elif name == "g2d":
        backbone = G2DGenerator(G2DConfig.tiny())
        model = ExitGenerator(backbone, backbone.config.exits, "1/2", 4, guide=guide)
    else:
        backbone = tiny_dcgan()
        model = ExitGenerator(backbone, [1, 2], "1/2", 4, guide=guide)
    # Make BatchNorm running stats non-trivial so eval mode is a real test of the tree.
    model.train()
    with torch.no_grad():
        for r in range(model.num_routes):
            model(*backbone.example_inputs(4), route=r, guide=_guide_for(model, 4))
    return model.eval()


def _guide_for(model: ExitGenerator, batch: int):
    spec = model.guide_spec
    if spec is None:
        return None
    g = torch.Generator().manual_seed(123)
    return torch.randn(batch, spec.channels, 4, 4, generator=g)


NAMES = ["oasis", "g2d", "sequential"]


@pytest.mark.parametrize("name", NAMES)
def test_route_shapes(name):
    model = build(name)
    inputs = model.backbone.example_inputs(3)
    full = model.backbone(*inputs)
    assert full.shape[0] == 3 and full.shape[1] == 3
    for r in range(model.num_routes):
        out = model(*inputs, route=r)
        assert out.shape == full.shape
        assert torch.isfinite(out).all() and out.abs().max() <= 1
    # The last route is the backbone itself.
    torch.testing.assert_close(model(*inputs, route=model.num_routes - 1), full)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_tree_equals_per_sample_routes(name):
    model = build(name)
    torch.manual_seed(1)
    inputs = model.backbone.example_inputs(7)
    exits = torch.tensor([0, model.num_routes - 1, 1, 0, model.num_routes - 1, 1, 0])
    with torch.no_grad():
        mixed = model(*inputs, route=exits)
        for i, r in enumerate(exits.tolist()):
            alone = model(*(x[i : i + 1] for x in inputs), route=r)
            assert (mixed[i : i + 1] - alone).abs().max().item() <= 1e-5


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_mixed_tree_property(data):
    model = MODELS["oasis"]
    batch = data.draw(st.integers(1, 6))
    exits = torch.tensor(data.draw(st.lists(st.integers(0, model.num_routes - 1), min_size=batch, max_size=batch)))
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    inputs = model.backbone.example_inputs(batch)
    with torch.no_grad():
        mixed = model(*inputs, route=exits)
        per_route = {r: model(*inputs, route=r) for r in set(exits.tolist())}
    for i, r in enumerate(exits.tolist()):
        assert (mixed[i] - per_route[r][i]).abs().max().item() <= 1e-5


MODELS = {"oasis": build("oasis")}


@pytest.mark.parametrize("name", NAMES)
def test_macs_strictly_increase_with_depth(name):
    macs = build(name).route_macs()
    assert all(a < b for a, b in zip(macs, macs[1:])), macs


@pytest.mark.parametrize("name", NAMES)
def test_no_sample_pays_for_a_route_it_does_not_take(name):
    model = build(name)
    per_route = model.route_macs(batch_size=1)
    exits = torch.tensor([0, 0, 1, model.num_routes - 1])
    inputs = model.backbone.example_inputs(len(exits))
    mixed = count_macs(model, *inputs, route=exits, meta=False)
    # The tree costs exactly the sum of each sample's own route.
    assert mixed == sum(per_route[r] for r in exits.tolist())
    # Running everyone to the deepest exit needed costs more.
    assert mixed < len(exits) * per_route[-1]


def test_meta_count_equals_real_count():
    model = build("oasis")
    inputs = model.backbone.example_inputs(1)
    for r in range(model.num_routes):
        assert count_macs(model, *inputs, route=r) == count_macs(model, *inputs, route=r, meta=False)


def test_guide_first_block_grows_by_half():
    model = build("oasis", guide=GuideSpec("first", channels=6))
    assert model.guided[0]
    for branch in (b for b, g in zip(model.branches, model.guided) if g):
        c_in = branch.block_channels[0][0]
        assert branch.guide_extra == [c_in // 2] + [0] * (len(branch.block_channels) - 1)
        first_conv = branch.blocks[0].block.norm_0.norm.num_features
        assert first_conv == c_in + c_in // 2
    inputs = model.backbone.example_inputs(2)
    guide = _guide_for(model, 2)
    out = model(*inputs, route=0, guide=guide)
    assert out.shape == model.backbone(*inputs).shape
    # A callable guide is applied to the key-stage features.
    seen = {}

    def guide_fn(h, cond):
        seen["shape"] = tuple(h.shape)
        seen["cond"] = cond
        return guide

    torch.testing.assert_close(model(*inputs, route=0, guide=guide_fn), out)
    c_key = model.backbone.stage_channels[model.key_stage - 1][1]
    assert seen["shape"][:2] == (2, c_key)
    assert seen["cond"].shape[1] == model.backbone.config.cond_channels  # the label map travels with it
    with pytest.raises(ValueError, match="guide"):
        model(*inputs, route=0)


def test_guide_every_block_gets_three_channels():
    model = build("g2d", guide=GuideSpec("every", channels=3))
    for branch in model.branches:
        assert branch.guide_extra == [3] * len(branch.block_channels)
        for block, (c_in, _) in zip(branch.blocks, branch.block_channels):
            assert block.block.body[0].num_features == c_in + 3
    inputs = model.backbone.example_inputs(5)
    guide = torch.rand(5, 3, 8, 8) * 2 - 1
    exits = torch.tensor([0, 2, 1, 1, 0])
    with torch.no_grad():
        mixed = model(*inputs, route=exits, guide=guide)
        for i, r in enumerate(exits.tolist()):
            alone = model(*(x[i : i + 1] for x in inputs), route=r, guide=guide[i : i + 1])
            assert (mixed[i : i + 1] - alone).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "exits, match",
    [
        (torch.tensor([0, 9]), "0..3"),
        (torch.tensor([[0, 1]]), "1-D integer"),
        (torch.tensor([0.0, 1.0]), "1-D integer"),
        (torch.tensor([0, 1, 2]), "3 entries for a batch of 2"),
    ],
)
def test_bad_exit_assignments_are_refused(exits, match):
    model = MODELS["oasis"]
    with pytest.raises(ValueError, match=match):
        model(*model.backbone.example_inputs(2), route=exits)


def test_bad_route_and_exit_lists_are_refused():
    model = MODELS["oasis"]
    with pytest.raises(ValueError, match="int in 0..3"):
        model(*model.backbone.example_inputs(1), route=4)
    with pytest.raises(ValueError, match="strictly increasing"):
        ExitGenerator(model.backbone, [2, 1], "1/2", 4)
    with pytest.raises(ValueError, match="1..3"):
        ExitGenerator(model.backbone, [4], "1/2", 4)
    with pytest.raises(ValueError, match="scale factor"):
        ExitGenerator(model.backbone, [1], 0, 4)


def test_the_feature_tap_loop_keeps_what_was_asked_and_stops_after_it():
    from fiancee.backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("oasis", "tiny").eval()
    label, z = backbone.example_inputs(2)
    with torch.no_grad():
        f = backbone.features(label, z, taps=(0, 2))
        h, cond = backbone.stem(label, z)
        h2 = backbone.stages[1](backbone.stages[0](h, cond), cond)
        assert set(f.taps) == {0, 2} and f.image is None and torch.equal(f.cond, cond)
        assert torch.equal(f.taps[0], h) and torch.equal(f.taps[2], h2)
        full = backbone.features(label, z, image=True)
        assert full.taps == {} and torch.equal(full.image, backbone(label, z))
    with pytest.raises(ValueError, match="taps must be stage counts"):
        backbone.features(label, z, taps=(backbone.num_stages + 1,))


@pytest.mark.parametrize("name", ["oasis", "sequential"])
def test_mixed_from_continues_the_tree_from_computed_features(name):
    """The pipeline computes the trunk once and continues from it: same images as the whole tree,
    from the stem's output or from the key stage, with a callable guide or its tensor."""
    guide = GuideSpec("every", 3) if name == "sequential" else None
    model = build(name, guide=guide)
    torch.manual_seed(2)
    inputs = model.backbone.example_inputs(5)
    exits = torch.tensor([0, model.num_routes - 1, 1, 0, 1])
    g = _guide_for(model, 5)
    with torch.no_grad():
        whole = model.mixed(*inputs, routes=exits, guide=g)
        k = model.key_stage
        f = model.backbone.features(*inputs, taps=(0, k))
        for start in (0, k):
            out = model.mixed_from(f.taps[start], f.cond, start, exits, guide=g)
            assert (out - whole).abs().max().item() <= 1e-5
        if guide is not None:  # a callable guide is applied to the key-stage features
            fn = lambda h, cond: g  # noqa: E731
            assert (model.mixed_from(f.taps[k], f.cond, k, exits, guide=fn) - whole).abs().max().item() <= 1e-5
        with pytest.raises(ValueError, match="start must be a stage count"):
            model.mixed_from(f.taps[k], f.cond, k + 1, exits, guide=g)
        with pytest.raises(ValueError, match="entries for a batch"):
            model.mixed_from(f.taps[k], f.cond, k, exits[:3], guide=g)


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_on_one_route_skips_the_selections_bit_for_bit(name, monkeypatch):
    """Every input on one route: the stages and branch run on the whole batch (no index_select, no index_copy_),
    with exactly the general tree's values, from the stem or from the key stage, with or without a guide."""
    guide = GuideSpec("every", 3) if name == "sequential" else None
    model = build(name, guide=guide)
    torch.manual_seed(3)
    inputs = model.backbone.example_inputs(5)
    g = _guide_for(model, 5)
    k = model.key_stage
    with torch.no_grad():
        f = model.backbone.features(*inputs, taps=(0, k))
        for r in range(model.num_routes):
            routes = torch.full((5,), r)
            general = model._branching_tree(f.taps[0], f.cond, 0, routes, g)
            assert torch.equal(model.mixed(*inputs, routes=routes, guide=g), general)
            assert torch.equal(model.mixed_from(f.taps[k], f.cond, k, routes, guide=g), general)
        calls = []
        for op in ("index_select", "index_copy_"):
            original = getattr(torch.Tensor, op)
            monkeypatch.setattr(torch.Tensor, op, lambda *a, _o=original, _n=op, **kw: calls.append(_n) or _o(*a, **kw))
        model.mixed(*inputs, routes=torch.full((5,), 1), guide=g)
        assert calls == []
        model.mixed(*inputs, routes=torch.tensor([0, 1, 1, 1, 1]), guide=g)
        assert calls  # a mixed batch still selects its rows


def test_spade_blocks_resize_the_label_map_once_with_the_same_values(monkeypatch):
    """A SPADE ResBlock resizes the condition once for its two or three SPADE layers: the same output, bit for
    bit, as every layer resizing it itself (the computation before); a condition already at the block's size is
    not resized at all."""
    import torch.nn.functional as F

    from fiancee.backbones import oasis

    backbone = MODELS["oasis"].backbone
    label, z = backbone.example_inputs(3)
    cond = backbone.condition(label, z)

    def spade_before(spade, x):  # the SPADE forward before: it resized the full-size condition itself
        actv = spade.shared(F.interpolate(cond, size=x.shape[-2:], mode="nearest"))
        return spade.norm(x) * (1 + spade.gamma(actv)) + spade.beta(actv)

    def before(block, x):  # the ResBlock forward before, every SPADE given the full-size condition
        each = spade_before
        x_s = block.conv_s(each(block.norm_s, x)) if block.learned_shortcut else x
        dx = block.conv_0(F.leaky_relu(each(block.norm_0, x), 0.2))
        return x_s + block.conv_1(F.leaky_relu(each(block.norm_1, dx), 0.2))

    calls = []
    resize = F.interpolate
    monkeypatch.setattr(oasis.F, "interpolate", lambda *a, **kw: calls.append(kw.get("size")) or resize(*a, **kw))
    with torch.no_grad():
        h, _ = backbone.stem(label, z)
        for stage in backbone.stages:
            calls.clear()
            new = stage.block(h, cond)
            assert calls == ([] if h.shape[-2:] == cond.shape[-2:] else [h.shape[-2:]])  # one resize, or none
            assert torch.equal(new, before(stage.block, h))
            h = stage(h, cond)


# --- Branches that inherit the backbone's weights (exits.Branch.inherit_) ------------------------


@pytest.mark.parametrize("name", ["oasis", "g2d", "dcgan"])
def test_inherited_branches_at_full_width_are_the_backbone(name):
    """At SF 1 every channel is kept, so an inherited branch is an exact copy of the rest of the backbone."""
    from fiancee.exits import channel_importance

    trained = build(name)  # non-trivial BatchNorm statistics
    backbone = trained.backbone
    model = ExitGenerator(backbone, trained.attach_after, 1, 1).eval()
    x = backbone.example_inputs(4)
    counts = model.inherit_(channel_importance(backbone, x))
    assert counts["copied"] > 0 and counts["fresh"] == 0
    reference = backbone(*x)
    for r in range(model.num_routes - 1):
        assert torch.allclose(model.route(*x, route=r), reference, atol=1e-5)


def test_inherited_narrow_branches_keep_the_most_active_channels():
    from fiancee.exits import channel_importance

    model = build("dcgan")
    backbone = model.backbone
    importance = channel_importance(backbone, backbone.example_inputs(8))
    model.inherit_(importance)
    branch = model.branches[0]  # after stage 1: blocks mirror stages 2 and 3, 16 -> 8 and 8 -> 4 channels
    kept = torch.topk(importance[1], 8).indices.sort().values
    stage_w = backbone.stages[1].module[0].weight  # ConvTranspose2d [in 32, out 16, 4, 4]
    assert torch.equal(branch.blocks[0].module[0].weight, stage_w[:, kept])  # full-width input, kept outputs
    kept2 = torch.topk(importance[2], 4).indices.sort().values
    assert torch.equal(branch.blocks[1].module[0].weight, backbone.stages[2].module[0].weight[kept][:, kept2])
    assert torch.equal(branch.blocks[0].module[1].running_mean, backbone.stages[1].module[1].running_mean[kept])


def test_inherited_narrow_spectral_norms_are_converged():
    """A narrowed spectrally normalised weight is a new matrix: its singular vectors are re-estimated after
    inheriting, so in eval mode every normalised weight has spectral norm 1 (not the ~2.7 that the
    backbone's vectors gave) and the untrained branch is not over-sensitive to its input."""
    from fiancee.exits import channel_importance

    torch.manual_seed(0)
    backbone = OASISGenerator(OASISConfig.tiny()).eval()
    model = ExitGenerator(backbone, backbone.config.exits, "1/2", 4)
    model.inherit_(channel_importance(backbone, backbone.example_inputs(8)))
    model.eval()
    norms = [
        torch.linalg.matrix_norm(sub.weight.flatten(1), 2).item()
        for sub in model.branches.modules()
        if getattr(sub, "parametrizations", None) is not None and "weight" in sub.parametrizations
    ]
    assert norms and max(norms) < 1 + 1e-3 and min(norms) > 1 - 1e-3


def test_inherited_guide_channels_start_at_zero():
    """The bank's guide enters as extra input channels of the first block (OASIS mode): they start at zero,
    so the inherited block first computes what the backbone did, and learns to use the guide."""
    from fiancee.exits import channel_importance

    plain = build("oasis")  # every branch's first block mirrors a stage that changes width (learned shortcut)
    guided = ExitGenerator(plain.backbone, plain.attach_after, 1, 1, guide=GuideSpec("first", 5)).eval()
    x = plain.backbone.example_inputs(2)
    assert guided.inherit_(channel_importance(plain.backbone, x))["fresh"] == 0
    g = torch.randn(2, 5, 8, 8)
    reference = plain.backbone(*x)
    for r in range(guided.num_routes - 1):
        assert torch.allclose(guided.route(*x, route=r, guide=g), reference, atol=1e-5)


def test_a_guide_that_would_make_a_route_dearer_than_the_backbone_is_left_out():
    # The tiny OASIS's last branch reads full-width features at the highest resolution: x1.5 input channels
    # plus the adapter would cost more than the backbone's last stage, so that branch is built unguided.
    plain = build("oasis")
    model = build("oasis", guide=GuideSpec("first", channels=6))
    costs = model.route_macs()
    last = len(model.attach_after) - 1
    assert model.guided == [True] * last + [False]
    assert max(costs[:-1]) <= costs[-1]
    assert costs[last] == plain.route_macs()[last]  # the capped route costs what it does without a bank
    kept = model.branches[last]
    model.branches[last] = type(kept)(
        model.backbone, model.attach_after[last], model.scale, model.min_channels, GuideSpec("first", channels=6)
    )
    assert model.route_cost(last) > costs[-1]  # what the cap avoided
    model.branches[last] = kept
    # The unguided branch ignores whatever guide the others get.
    inputs = model.backbone.example_inputs(2)
    guide = _guide_for(model, 2)
    torch.testing.assert_close(model(*inputs, route=last, guide=guide), model(*inputs, route=last, guide=guide + 1.0))


def test_a_route_dearer_than_the_backbone_is_refused_before_training():
    # A user's generator whose exit head is far wider than its own output layer.
    def dear_head(piece: nn.Module, in_channels: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, 512, 3, padding=1), nn.Conv2d(512, 3, 3, padding=1))

    dear = tiny_dcgan(narrow_head=dear_head)
    with pytest.raises(ValueError, match=r"exit after stage 1 would cost .* more than the backbone's"):
        ExitGenerator(dear, [1, 2], "1/2", 4)


def test_building_exits_leaves_the_backbone_in_its_mode():
    # The cost check counts MACs in eval mode; it must not put a frozen (eval) backbone back into training
    # mode, where a forward would update its BatchNorm statistics and change its fingerprint.
    backbone = tiny_dcgan().eval()
    model = ExitGenerator(backbone, [1, 2], "1/2", 4)
    assert model.training and model.branches[0].training
    assert not any(m.training for m in backbone.modules())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("guided", [False, True])
def test_route_images_share_the_trunk_and_equal_each_route_alone(name, guided):
    from fiancee.tables import route_images

    model = build(name, guide=GuideSpec("first", channels=6) if guided else None)
    inputs = model.backbone.example_inputs(5)
    # A guide computed from the key-stage features, as a bank's is (a tensor would fit one batch only).
    guide = (lambda h, cond: h[:, :1, :4, :4].expand(-1, 6, -1, -1) * 0.5) if guided else None
    images = route_images(model, inputs, batch_size=3, guide=guide)  # two batches, the last one short
    assert len(images) == model.num_routes
    for r, got in enumerate(images):  # each route alone on the same batches (batch size changes kernels' rounding)
        alone = [model(*(x[s : s + 3] for x in inputs), route=r, guide=guide) for s in (0, 3)]
        assert torch.equal(got, torch.cat(alone)), f"route {r}"
