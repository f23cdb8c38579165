"""The end-to-end pipeline on the real faces backbone: predictor -> router -> mixed-exit tree, as a folder."""

import json
import subprocess
import sys

import pytest
import torch

from fiancee.evaluate import evaluate_pipeline
from fiancee.pipeline import FianceePipeline
from fiancee.predictor import load_predictor, predict
from fiancee.tables import build_lpips_table
from fiancee.train.predictor import train_predictor_for_run
from fiancee.report import threshold_row
from fiancee.routing import CalibratedRouter, OracleRouter, StaticRouter
from fiancee.train.exits import load_exits, make_config, train_exits


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    run = root / "exits"
    train_exits(make_config("faces", preset="smoke", steps=2, batch_size=4), run, device="cpu", progress=False)
    train_predictor_for_run(run, root / "predictor", n=48, epochs=2, error_n=16, progress=False)
    task, model = load_exits(run)
    predictor, _ = load_predictor(root / "predictor", model)
    cal = build_lpips_table(model, task, 32, 99, "train", cache=False)
    router = CalibratedRouter(costs=model.route_macs()).fit(predict(predictor, model, cal["inputs"]), cal["lpips"], [0.1, 0.3], 0.9)
    FianceePipeline(task, model, predictor, router).save(root / "pipeline")
    return root / "pipeline"


def test_pipeline_round_trip_and_tree_execution(pipeline_dir):
    pipe = FianceePipeline.from_pretrained(pipeline_dir)
    (z,) = pipe.task.sample_inputs(6, seed=1, split="test")
    out = pipe(z, max_lpips=0.3)
    assert out.images.shape == (6, 3, 64, 64)
    assert out.predicted_lpips.shape == (6, 3) and out.exits.shape == (6,)
    # The batch ran once through the tree: every image equals its own route run alone.
    for i, r in enumerate(out.exits.tolist()):
        alone = pipe.model(z[i : i + 1], exit=r)
        assert (out.images[i : i + 1] - alone).abs().max().item() <= 1e-5
    # Every input is charged its route and the predictor (no bank here).
    assert 0 < pipe.predictor_macs() == pipe.overhead_macs()
    assert torch.equal(out.macs, pipe.route_macs[out.exits] + pipe.predictor_macs())
    # Forced routes bypass the router but still run as one tree.
    forced = pipe(z, max_lpips=0.3, exits=torch.full((6,), 3))
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
        out = pipe(z, max_lpips=0.3, exits=routes)
    assert counter.get_total_flops() / 2 == pytest.approx(float(out.macs.sum()), rel=1e-12)
    separate = pipe.model.mixed(z, exits=routes)
    assert (out.images - separate).abs().max().item() <= 1e-5
    torch.testing.assert_close(out.predicted_lpips, pipe.predict(z), rtol=1e-5, atol=1e-6)
    with counter:  # routed by the router: still every MAC accounted for
        out = pipe(z, max_lpips=0.3)
    assert counter.get_total_flops() / 2 == pytest.approx(float(out.macs.sum()), rel=1e-12)


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
        for key in ("threshold", "compliance", "macs_saved", "oracle_macs_saved", "exit_shares"):
            assert key in row
        assert abs(sum(row["exit_shares"]) - 1) < 1e-9
        assert row["oracle_macs_saved"] >= row["oracle_macs_saved_at_compliance"] - 1e-12 or row["compliance"] < 1
    for name in ("report.html", "shares.png", "densities.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert report["html"].endswith("report.html")


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


def test_evaluate_cli_bad_threshold_one_line(pipeline_dir):
    proc = subprocess.run([sys.executable, "-m", "fiancee", "evaluate", str(pipeline_dir), "--thresholds", "1.5", "--n", "4"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "(0, 1]" in proc.stderr and "Traceback" not in proc.stderr


def test_targets_check_names_the_shortfall_and_its_cause():
    from fiancee.evaluate import targets_check

    row = {"threshold": 0.1, "compliance": 0.96, "macs_saved": 0.12, "oracle_macs_saved": 0.3,
           "oracle_macs_saved_at_compliance": 0.35, "saving_vs_oracle_at_compliance": 0.12 / 0.35}
    check = targets_check([{**row, "threshold": 0.2}, row])
    assert check["threshold"] == 0.1 and not check["met"]
    assert any("the exits cap it" in n and "0.380 short" in n for n in check["shortfalls"])
    assert any("0.34 of the oracle's" in n for n in check["shortfalls"])
    good = {**row, "macs_saved": 0.6, "oracle_macs_saved": 0.7, "saving_vs_oracle_at_compliance": 0.95}
    assert targets_check([good])["met"]
    ranking = targets_check([{**row, "oracle_macs_saved": 0.6}])
    assert any("predictor's ranking" in n for n in ranking["shortfalls"])
