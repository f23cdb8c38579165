"""The end-to-end pipeline on the real faces backbone: predictor -> router -> mixed-exit tree, as a folder."""

import json
import subprocess
import sys

import pytest
import torch

from fiancee.evaluate import evaluate_pipeline
from fiancee.pipeline import FianceePipeline
from fiancee.predictor import load_predictor, predict
from fiancee.report import threshold_row
from fiancee.routing import CalibratedRouter, OracleRouter, StaticRouter
from fiancee.tables import build_lpips_table
from fiancee.train.exits import load_exits, make_config, train_exits
from fiancee.train.predictor import train_predictor_for_run


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    run = root / "exits"
    train_exits(make_config("faces", preset="smoke", steps=2, batch_size=4), run, device="cpu", progress=False)
    train_predictor_for_run(run, root / "predictor", n=48, epochs=2, error_n=16, progress=False)
    task, model = load_exits(run)
    predictor, _ = load_predictor(root / "predictor", model)
    cal = build_lpips_table(model, task, 32, 99, "train", cache=False)
    router = CalibratedRouter(costs=model.route_macs()).fit(
        predict(predictor, model, cal["inputs"]), cal["lpips"], [0.1, 0.3], 0.9
    )
    FianceePipeline(task, model, predictor, router).save(root / "pipeline")
    return root / "pipeline"


def test_pipeline_round_trip_and_tree_execution(pipeline_dir):
    pipe = FianceePipeline.from_pretrained(pipeline_dir)
    (z,) = pipe.task.sample_inputs(6, seed=1, split="test")
    out = pipe(z, max_lpips=0.3)
    assert out.images.shape == (6, 3, 64, 64)
    assert out.predicted_lpips.shape == (6, 3) and out.routes.shape == (6,)
    # The batch ran once through the tree: every image equals its own route run alone.
    for i, r in enumerate(out.routes.tolist()):
        alone = pipe.model(z[i : i + 1], route=r)
        assert (out.images[i : i + 1] - alone).abs().max().item() <= 1e-5
    # Every input is charged its route and the predictor (no bank here).
    assert 0 < pipe.predictor_macs() == pipe.overhead_macs()
    assert torch.equal(out.macs, pipe.route_macs[out.routes] + pipe.predictor_macs())
    # Forced routes bypass the router but still run as one tree.
    forced = pipe(z, max_lpips=0.3, routes=torch.full((6,), 3))
    torch.testing.assert_close(forced.images, pipe.model.backbone(z))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        pipe(z, max_lpips=0)


def test_one_pass_through_the_trunk_gives_the_same_images_and_counts_every_mac(pipeline_dir):
    """The trunk runs once (the stem and stage 1 are not computed twice), the images are those of the
    separate predictor + mixed tree, and FlopCounterMode around one call sees exactly the MACs reported."""
    from torch.utils.flop_counter import FlopCounterMode

    pipe = FianceePipeline.from_pretrained(pipeline_dir)
    assert pipe.predictor.reads_features
    (z,) = pipe.task.sample_inputs(8, seed=2, split="test")
    routes = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    counter = FlopCounterMode(display=False)
    with counter:
        out = pipe(z, max_lpips=0.3, routes=routes)
    assert counter.get_total_flops() / 2 == pytest.approx(float(out.macs.sum()), rel=1e-12)
    separate = pipe.model.mixed(z, routes=routes)
    assert (out.images - separate).abs().max().item() <= 1e-5
    torch.testing.assert_close(out.predicted_lpips, pipe.predict(z), rtol=1e-5, atol=1e-6)
    with counter:  # routed by the router: still every MAC accounted for
        out = pipe(z, max_lpips=0.3)
    assert counter.get_total_flops() / 2 == pytest.approx(float(out.macs.sum()), rel=1e-12)


def test_segment_calls_are_the_routed_call_cut_into_its_parts(pipeline_dir):
    """What the bench times segment by segment is the call itself: the same routes and the same images."""
    pipe = FianceePipeline.from_pretrained(pipeline_dir)
    (z,) = pipe.task.sample_inputs(6, seed=3, split="test")
    out = pipe(z, max_lpips=0.3)
    calls = pipe.segment_calls(z, max_lpips=0.3)
    assert list(calls) == ["trunk", "predictor", "router", "tree"]  # no bank in this pipeline
    assert torch.equal(calls["router"]().cpu().long(), out.routes)
    assert (calls["tree"]() - out.images).abs().max().item() <= 1e-6
    torch.testing.assert_close(calls["predictor"]().cpu(), out.predicted_lpips)
    per_input = pipe.segment_calls(z, max_lpips=[0.3, 0.1, 0.3, 0.1, 0.3, 0.1])
    assert torch.equal(per_input["router"]().cpu().long(), pipe(z, max_lpips=[0.3, 0.1] * 3).routes)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        pipe.segment_calls(z, max_lpips=2.0)


def test_pipeline_refuses_other_weights(pipeline_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(pipeline_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["backbone_fingerprint"] = "0" * 16
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="built for backbone weights"):
        FianceePipeline.from_pretrained(bad)


def test_report_holds_the_required_keys(pipeline_dir, tmp_path):
    report = evaluate_pipeline(pipeline_dir, [0.1, 0.3], n=16, out=tmp_path / "rep", progress=False)
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [r["threshold"] for r in saved["thresholds"]] == [0.1, 0.3]
    for row in saved["thresholds"]:
        for key in (
            "threshold",
            "compliance",
            "macs_saved",
            "route_macs_saved",
            "overhead_macs",
            "oracle_macs_saved",
            "exit_shares",
        ):
            assert key in row
        assert row["overhead_macs"] > 0
        assert row["macs_saved"] == pytest.approx(
            row["route_macs_saved"] - row["overhead_macs"] / saved["route_gmacs"][-1] / 1e9
        )
        assert abs(sum(row["exit_shares"]) - 1) < 1e-9
        assert row["oracle_macs_saved"] >= row["oracle_macs_saved_at_compliance"] - 1e-12 or row["compliance"] < 1
    for name in ("report.html", "shares.png", "densities.png", "saved.png", "examples.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert report["html"].endswith("report.html")
    # The image strip: every exit (1-based), the backbone, then the routed outputs at two thresholds.
    assert [e["label"] for e in saved["examples"]] == [
        "exit 1",
        "exit 2",
        "exit 3",
        "backbone",
        "routed, T = 0.1",
        "routed, T = 0.3",
    ]
    assert saved["route_names"] == ["exit 1", "exit 2", "exit 3", "backbone"]
    for row, t in zip(saved["examples"][-2:], (0.1, 0.3)):  # a routed output above T is marked as a miss
        for caption in row["captions"]:
            assert caption.endswith(" > T") == (float(caption.split(": ")[1].split()[0]) > t), caption
    page = (tmp_path / "rep" / "report.html").read_text()
    top = saved["thresholds"][0]
    # The headline comes first, in percent, with the paper's rule beside ours.
    assert page.index(f"{100 * top['macs_saved']:.1f}%") < page.index("examples.png") < page.index("shares.png")
    assert "paper's rule" in page and "Guarantee" in page and "exit 0" not in page


def test_the_image_strip_shows_the_headline_threshold_and_the_strictest():
    from fiancee.evaluate import strip_thresholds

    assert strip_thresholds([0.05, 0.075, 0.1, 0.2, 0.3]) == [0.05, 0.1]  # routes differ most at the strictest
    assert strip_thresholds([0.1, 0.3]) == [0.1, 0.3]  # nothing stricter: the one nearest 0.2
    assert strip_thresholds([0.3, 0.12]) == [0.12, 0.3]
    assert strip_thresholds([0.2]) == [0.2]


def test_report_shows_net_accounting_when_the_rows_carry_it(tmp_path):
    import numpy as np

    from fiancee.report import write_report

    true = torch.tensor([[0.05, 0.02], [0.3, 0.08], [0.4, 0.3], [0.2, 0.1]])  # [N=4, E=2]
    macs = [10.0, 20.0, 40.0]
    rows = [threshold_row(true, torch.tensor([0, 1, 2, 1]), macs, 0.1)]
    for key in ("route_macs_saved", "overhead_macs"):  # a report written before the net accounting
        rows[0].pop(key)
    html = write_report(
        tmp_path / "plain",
        rows=rows,
        true_lpips=true.numpy(),
        macs=np.array(macs),
        density_routes=[],
        meta={"task": "t", "router": "calibrated"},
    ).read_text()
    assert "routes only" in html and "overhead per input" not in html
    rows[0].update(route_macs_saved=0.5, overhead_macs=2.0)
    html = write_report(
        tmp_path / "net",
        rows=rows,
        true_lpips=true.numpy(),
        macs=np.array(macs),
        density_routes=[],
        meta={"task": "t", "router": "calibrated"},
    ).read_text()
    assert "net MACs saved" in html and "overhead per input" in html and "5.00%" in html  # 2 of 40 MACs
    # The best single route at equal compliance (3 of 4 meet T: only the backbone does alone) and the gain.
    assert "best single route" in html and "<td>backbone: 0.0%</td>" in html
    for key in ("static_route", "static_macs_saved", "static_compliance", "conditional_gain"):
        rows[0].pop(key)  # a report written before the static baseline
    html = write_report(
        tmp_path / "old",
        rows=rows,
        true_lpips=true.numpy(),
        macs=np.array(macs),
        density_routes=[],
        meta={"task": "t", "router": "calibrated"},
    ).read_text()
    assert "best single route" in html and "<td>-</td><td>-</td>" in html


def test_threshold_row_against_hand_computed_numbers():
    true = torch.tensor([[0.05, 0.02], [0.3, 0.08], [0.4, 0.3]])  # [N=3, E=2]
    macs = [10.0, 20.0, 40.0]
    routes = torch.tensor([0, 1, 2])
    row = threshold_row(true, routes, macs, 0.1)
    assert row["compliance"] == 1.0
    assert row["macs_saved"] == pytest.approx(1 - (10 + 20 + 40) / 3 / 40)
    assert row["exit_shares"] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert row["oracle_macs_saved"] == pytest.approx(row["macs_saved"])  # this is the oracle's choice
    static = threshold_row(true, StaticRouter(0).route(true, 0.1), macs, 0.1)
    assert static["compliance"] == pytest.approx(1 / 3) and static["macs_saved"] == pytest.approx(0.75)
    # At compliance 1/3 the best router sends everyone to exit 0: the same saving.
    assert static["oracle_macs_saved_at_compliance"] == pytest.approx(0.75)
    assert static["saving_vs_oracle_at_compliance"] == pytest.approx(1.0)
    oracle = OracleRouter(macs).route(true, 0.1)
    assert oracle.tolist() == [0, 1, 2]
    # Net of an overhead of 2 MACs per input (predictor + bank): the oracle columns stay routes-only.
    net = threshold_row(true, routes, macs, 0.1, overhead_macs=2.0)
    assert net["route_macs_saved"] == pytest.approx(row["macs_saved"]) and net["overhead_macs"] == 2.0
    assert net["macs_saved"] == pytest.approx(1 - ((10 + 20 + 40) / 3 + 2) / 40)
    assert (
        net["oracle_macs_saved"] == pytest.approx(row["oracle_macs_saved"])
        and "routes only" in net["oracle_accounting"]
    )


def test_static_baseline_is_the_cheapest_single_route_at_equal_compliance():
    from fiancee.evaluate import format_thresholds_table

    # Route 0 meets T = 0.1 on 1 input of 3, route 1 on 2, the backbone (LPIPS 0) on all 3.
    true = torch.tensor([[0.05, 0.02], [0.3, 0.08], [0.4, 0.3]])
    macs = [10.0, 20.0, 40.0]
    # The router meets T everywhere: only the backbone does as a single route, which saves nothing.
    row = threshold_row(true, torch.tensor([0, 1, 2]), macs, 0.1)
    assert (row["static_route"], row["static_macs_saved"], row["static_compliance"]) == (2, 0.0, 1.0)
    assert row["conditional_gain"] == pytest.approx(1 - 70 / 3 / 40)
    # Compliance 2/3: route 0 (1 of 3) falls short, route 1 (2 of 3) is the cheapest that matches.
    row = threshold_row(true, torch.tensor([1, 1, 1]), macs, 0.1, overhead_macs=2.0)
    assert (row["static_route"], row["static_macs_saved"]) == (1, 0.5)
    assert row["static_compliance"] == pytest.approx(2 / 3)
    assert row["conditional_gain"] == pytest.approx(-2 / 40)  # the same route, plus the predictor's overhead
    # Compliance 1/3: the shallowest exit already matches it.
    row = threshold_row(true, torch.tensor([0, 0, 0]), macs, 0.1)
    assert (row["static_route"], row["static_macs_saved"], row["conditional_gain"]) == (0, 0.75, 0.0)
    # Not the lowest index, the fewest MACs: here route 1 is cheaper than route 0.
    row = threshold_row(true, torch.tensor([0, 0, 0]), [30.0, 20.0, 40.0], 0.1)
    assert (row["static_route"], row["static_macs_saved"]) == (1, 0.5)
    report = {"thresholds": [threshold_row(true, torch.tensor([0, 1, 2]), macs, 0.1)], "html": "r.html"}
    report["route_names"] = ["exit 1", "exit 2", "backbone"]
    text = format_thresholds_table(report)
    assert "static@c" in text and "backbone 0.0%" in text and "+41.7%" in text
    from fiancee.demo import summary_lines

    lines = summary_lines({**report, "router": "calibrated"}, "faces", 3)
    assert [line for line in lines if "best single route" in line] == [
        "  best single route at the same compliance (a static exit): backbone saves 0.0%; routing per input adds +41.7%"
    ]


def test_evaluate_cli_bad_threshold_one_line(pipeline_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "fiancee", "evaluate", str(pipeline_dir), "--thresholds", "1.5", "--n", "4"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "(0, 1]" in proc.stderr and "Traceback" not in proc.stderr


def test_targets_check_names_the_shortfall_and_its_cause():
    from fiancee.evaluate import targets_check

    row = {
        "threshold": 0.1,
        "compliance": 0.96,
        "macs_saved": 0.12,
        "oracle_macs_saved": 0.3,
        "oracle_macs_saved_at_compliance": 0.35,
        "saving_vs_oracle_at_compliance": 0.12 / 0.35,
    }
    check = targets_check([{**row, "threshold": 0.2}, row])
    assert check["threshold"] == 0.1 and not check["met"]
    assert any("the exits cap it" in n and "0.380 short" in n for n in check["shortfalls"])
    assert any("0.34 of the oracle's" in n for n in check["shortfalls"])
    good = {**row, "macs_saved": 0.6, "oracle_macs_saved": 0.7, "saving_vs_oracle_at_compliance": 0.95}
    assert targets_check([good])["met"]
    ranking = targets_check([{**row, "oracle_macs_saved": 0.6}])
    assert any("predictor's ranking" in n for n in ranking["shortfalls"])


def test_a_pipeline_with_a_bank_charges_its_faiss_search_and_shares_the_trunk():
    """With a per-class patch bank: FlopCounterMode sees the routes and the predictor; the FAISS search it
    cannot see is entries x key dim per query (flat index of the query's class); the sum is out.macs."""
    from torch.utils.flop_counter import FlopCounterMode

    from fiancee.backbones import build_backbone
    from fiancee.bank import BankSpec, build_feature_bank, majority_labels
    from fiancee.exits import ExitGenerator
    from fiancee.predictor import QualityPredictor
    from fiancee.routing import ThresholdRouter

    torch.manual_seed(0)
    backbone = build_backbone("oasis", "tiny").eval()
    g = torch.Generator().manual_seed(3)
    maps = torch.nn.functional.one_hot(torch.randint(0, 3, (12, 4, 4), generator=g), 5).permute(0, 3, 1, 2).float()
    maps = maps.repeat_interleave(8, 2).repeat_interleave(8, 3)  # [12, 5, 32, 32], classes 0..2 only
    inputs = (maps, torch.randn(12, 8, generator=g))
    bank = build_feature_bank(
        backbone,
        tuple(x[:8] for x in inputs),
        BankSpec(mode="patch", key_stage=1, value_stage=2, grid=(2, 2), max_per_class=3),
        label_channels=5,
        task="tiny",
    )
    model = ExitGenerator(backbone, [1, 2], "1/2", 4, guide=bank.guide_spec).eval()
    h = backbone.features(*inputs, taps=(1,)).taps[1]
    predictor = QualityPredictor("tiny", 2, [list(h.shape[1:])], width=4, hidden=(8,)).eval()
    pipe = FianceePipeline(None, model, predictor, ThresholdRouter(model.route_macs()), bank=bank, task_spec="tiny")
    query = tuple(x[8:] for x in inputs)
    query = (
        torch.cat(
            [query[0][:3], torch.nn.functional.one_hot(torch.full((1, 32, 32), 4), 5).permute(0, 3, 1, 2).float()]
        ),
        query[1],
    )  # the last input's class 4 is not in the bank: searched in the whole index
    routes = torch.tensor([0, 1, 2, 0])
    counter = FlopCounterMode(display=False)
    with counter:
        out = pipe(*query, max_lpips=0.2, routes=routes)
    counts = {int(c): int(n) for c, n in bank.manifest["per_class_counts"].items()}
    d = bank.keys.shape[1]
    faiss = sum(
        counts.get(int(c), 0) * d if counts.get(int(c), 0) else len(bank) * d
        for c in majority_labels(query[0], (2, 2)).flatten()
    )
    assert counter.get_total_flops() / 2 + faiss == pytest.approx(float(out.macs.sum()), rel=1e-12)
    assert pipe.overhead_macs() == pipe.predictor_macs() + 4 * len(bank) * d  # the bound: the whole index
    same = model.mixed(*query, routes=routes, guide=bank.guide)
    assert (out.images - same).abs().max().item() <= 1e-5


def test_a_guarantee_router_is_stated_and_checked_in_the_report(pipeline_dir, tmp_path):
    from fiancee.evaluate import guarantee_check
    from fiancee.routing import guarantee_min_inputs

    pipe = FianceePipeline.from_pretrained(pipeline_dir)
    n = guarantee_min_inputs(0.1, 0.2)
    cal = build_lpips_table(pipe.model, pipe.task, n, 98, "train", cache=False)
    pipe.router = CalibratedRouter(costs=pipe.model.route_macs()).fit_guarantee(
        pipe.predict(*cal["inputs"]), cal["lpips"], [0.1, 0.3], 0.1, 0.2
    )
    report = evaluate_pipeline(pipe, [0.1, 0.3], n=16, out=tmp_path / "rep", progress=False)
    g = report["guarantee"]
    assert g["statement"] == pipe.router.guarantee() and (g["epsilon"], g["delta"]) == (0.1, 0.2)
    for check, row in zip(g["test"], report["thresholds"]):
        assert check["miss_rate"] == pytest.approx(1 - row["compliance"])
        assert check["holds"] == (check["miss_rate"] <= 0.1 + 1e-12)
    assert guarantee_check(OracleRouter(pipe.model.route_macs()), report["thresholds"]) is None
