"""Table S1 / Fig. 8 tooling (exit quality against real data, with vs without the bank, over seeds; the bank
ablation: one run per arm against the backbone, Fig. S12's start images) and Fig. 10 tooling (routed exit vs
the distance of the key patches to their retrieved bank entries), on the committed fashion backbone with tiny
runs."""

import json

import numpy as np
import pytest
import torch
from test_fashion import _write_idx

from fiancee.bank import BankSpec, build_feature_bank
from fiancee.cli import main
from fiancee.exit_quality import exit_quality, routes_vs_bank_distance
from fiancee.exits import ExitGenerator
from fiancee.pipeline import FianceePipeline
from fiancee.predictor import QualityPredictor
from fiancee.routing import ThresholdRouter
from fiancee.tasks.fashion import (
    IDX_FILES,
    FashionTask,
    evaluate_fashion_backbone,
    fid_reference_sets,
    load_fashion_mnist,
)
from fiancee.train.exits import make_config, train_exits


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """$FIANCEE_DATA = the first 300 real images of each split: every task made in this module reads them
    (the exit runs draw training maps without labelling all 60,000; inherit-init scores 256 of them)."""
    folder = tmp_path_factory.mktemp("fmnist")
    for split, (img_name, lab_name) in IDX_FILES.items():
        images, labels = load_fashion_mnist(split, limit=300)
        _write_idx(folder / img_name, images.numpy())
        _write_idx(folder / lab_name, labels.numpy())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIANCEE_DATA", str(folder))
        yield folder


@pytest.fixture(scope="module")
def fashion_bank(small_data, tmp_path_factory):
    task = FashionTask()
    backbone = task.load_backbone()
    # Test-split maps x 2 fixed noises keep it fast (the real bank uses training maps, docs/bank.md).
    label, _ = task.sample_inputs(24, seed=5, split="test")
    noises = torch.randn(2, backbone.config.z_dim, generator=torch.Generator().manual_seed(0))
    inputs = (label.repeat_interleave(2, 0), noises.repeat(24, 1))
    spec = BankSpec(mode="patch", key_stage=1, value_stage=2, grid=(4, 4), max_per_class=40)
    bank = build_feature_bank(
        backbone,
        inputs,
        spec,
        label_channels=11,
        task="fashion",
        population={"inputs": 48, "label_maps": 24, "noises": 2},
    )
    path = tmp_path_factory.mktemp("bank") / "bank"
    bank.save(path)
    return task, backbone, bank, path


def test_the_pipeline_exposes_its_own_search_distances_and_fig10_relates_them_to_routes(fashion_bank, tmp_path):
    task, backbone, bank, _ = fashion_bank
    torch.manual_seed(0)
    model = ExitGenerator(backbone, task.exits, "1/4", 8, guide=bank.guide_spec).eval()
    label, z = task.sample_inputs(6, seed=0, split="test")
    h = backbone.features(label, z, taps=(1,)).taps[1]
    predictor = QualityPredictor("tiny", 3, [list(h.shape[1:])], width=4, hidden=(8,)).eval()
    pipe = FianceePipeline(task, model, predictor, ThresholdRouter(model.route_macs()), bank=bank)
    out = pipe(label, z, max_lpips=0.2)
    assert out.bank_distances.shape == (6, 16)
    # The distances are those of the entries the search retrieved: ||query key - retrieved key||.
    ids = bank.search(h, label)
    want = (bank.query_keys(h) - bank.keys[ids]).norm(dim=-1)
    assert torch.allclose(out.bank_distances, want, rtol=1e-4, atol=1e-4)
    assert (out.bank_distances > 0).any()

    report = routes_vs_bank_distance(pipe, threshold=0.2, n=10, seed=1, batch_size=4, out=tmp_path / "fig10")
    assert sum(r["inputs"] for r in report["routes"]) == 10 and len(report["routes"]) == 4
    assert len(report["per_input"]["distance"]) == 10 and min(report["per_input"]["distance"]) > 0
    assert (tmp_path / "fig10" / "bank_distance.png").stat().st_size > 1000
    assert json.loads((tmp_path / "fig10" / "bank_distance.json").read_text())["threshold"] == 0.2
    no_bank = FianceePipeline(
        task, ExitGenerator(backbone, task.exits, "1/4", 8).eval(), predictor, ThresholdRouter(model.route_macs())
    )
    with pytest.raises(ValueError, match="no bank"):
        routes_vs_bank_distance(no_bank, threshold=0.2, n=4)


@pytest.fixture(scope="module")
def runs(fashion_bank, tmp_path_factory):
    _, _, _, bank = fashion_bank
    root = tmp_path_factory.mktemp("runs")
    out = []
    for seed, b in ((0, None), (1, None), (0, str(bank))):
        run = root / f"s{seed}{'_bank' if b else ''}"
        train_exits(
            make_config("fashion", preset="smoke", steps=1, batch_size=2, checkpoint_every=1, seed=seed, bank=b),
            run,
            device="cpu",
            progress=False,
        )
        out.append(str(run))
    return out


@pytest.mark.slow
def test_exit_quality_reports_accuracy_lpips_per_arm_with_spread_and_the_kde(runs, tmp_path):
    report = exit_quality(runs, n=6, seed=0, fid=False, out=tmp_path / "q")
    without, with_ = report["arms"]["without bank"], report["arms"]["with bank"]
    assert len(without["runs"]) == 2 and sorted(without["seeds"]) == [0, 1] and len(with_["runs"]) == 1
    assert [r["name"] for r in without["rows"]] == ["exit 1", "exit 2", "exit 3", "backbone"]
    for row in without["rows"][:-1]:
        assert row["lpips_mean"]["runs"] == 2 and row["lpips_mean"]["std"] > 0  # two seeds, two sets of exits
        assert row["lpips_p90"]["max"] >= row["lpips_mean"]["min"]
        assert 0 <= row["label_accuracy"]["mean"] <= 1 and row["fid"] is None
    assert with_["rows"][0]["lpips_mean"]["std"] == 0.0 and with_["rows"][0]["lpips_mean"]["runs"] == 1
    # The backbone row is the backbone's own evaluation on the same inputs.
    bb = without["rows"][-1]
    assert bb["lpips_mean"]["mean"] == 0 and bb["label_accuracy"]["std"] == 0
    ref = evaluate_fashion_backbone(n=6, seed=0, fid=False)
    assert bb["label_accuracy"]["mean"] == pytest.approx(ref["label_accuracy"], abs=1e-4)
    # Fig. 8: pooled per-image LPIPS per arm, scipy bw_method 0.3 = a kernel std of 0.3 x the sample's.
    kde = report["kde"]
    assert kde["bw_method"] == 0.3 and (tmp_path / "q" / "lpips_kde.png").stat().st_size > 1000
    pooled = np.concatenate([report["per_image_lpips"][r][0] for r in without["runs"]])
    first = next(s for s in kde["series"] if s["exit"] == "exit 1" and s["arm"] == "without bank")
    assert first["values"] == 12 and first["kernel_std"] == pytest.approx(0.3 * pooled.std(ddof=1), rel=1e-3)
    saved = json.loads((tmp_path / "q" / "exit_quality.json").read_text())
    assert saved["arms"]["without bank"]["rows"][0]["lpips_mean"] == without["rows"][0]["lpips_mean"]
    assert "± " in (tmp_path / "q" / "exit_quality.md").read_text()


@pytest.mark.slow
def test_exit_quality_fid_is_against_the_real_images_of_the_inputs(runs, one_thread):
    # The same real images evaluate-backbone compares with (the test items whose label maps are used).
    task = FashionTask()
    assert torch.equal(task.real_images(4, 0), fid_reference_sets(task, 4, 0)[0])
    report = exit_quality([runs[2]], n=4, seed=0, accuracy=False)
    rows = report["arms"]["with bank"]["rows"]
    assert report["fid_reference"] == "real images" and [r["name"] for r in rows][-1] == "backbone"
    assert all(r["fid"]["mean"] > 0 and r["fid"]["runs"] == 1 for r in rows) and rows[0]["label_accuracy"] is None
    # The low-rank route gives evaluate-backbone's number (D x D statistics) for the backbone's images.
    ref = evaluate_fashion_backbone(n=4, seed=0, fid=True, fid_floor=False)
    assert rows[-1]["fid"]["mean"] == pytest.approx(ref["fid"], abs=2e-3)


def test_exit_quality_cli_and_refusals(runs, tmp_path, capsys):
    assert main(["exit-quality", runs[0], "--n", "3", "--no-fid", "--out", str(tmp_path / "a")]) == 0
    table = (tmp_path / "a" / "exit_quality.md").read_text()
    assert "without bank" in table and "with bank" not in table and not (tmp_path / "a" / "lpips_kde.png").exists()
    assert main(["exit-quality", runs[0], str(tmp_path), "--n", "3", "--out", str(tmp_path / "b")]) == 2
    assert "not a run folder" in capsys.readouterr().err and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="listed twice"):
        exit_quality([runs[0], runs[0]], n=3)


@pytest.mark.slow
def test_the_bank_ablation_is_the_study_with_one_run_per_arm_against_the_backbone(runs, tmp_path, capsys):
    from fiancee.bank_ablation import bank_ablation
    from fiancee.evaluate import measure_exits

    # runs[0] and runs[2]: seed 0, one budget, without and with the bank (what `bank-ablation` compared).
    out = tmp_path / "a"
    assert (
        main(
            [
                "exit-quality",
                runs[0],
                runs[2],
                "--bank-ablation",
                "--n",
                "4",
                "--no-fid",
                "--no-accuracy",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "LPIPS median w/o" in printed and "start images:" in printed
    saved = json.loads((out / "ablation.json").read_text())
    assert list(saved) == [
        "task",
        "n",
        "seed",
        "lpips_net",
        "fid_reference",
        "runs",
        "bank",
        "budget",
        "exits",
        "per_image_lpips",
        "plots",
    ]
    assert saved["runs"] == {"without": runs[0], "with": runs[2]} and saved["budget"]["seed"] == 0
    # The numbers are evaluate-exits' own measurement of each run against the backbone's images.
    for arm, run in (("without", runs[0]), ("with", runs[2])):
        m = measure_exits(run, n=4, seed=0, fid=False)
        for row, e in zip(saved["exits"], m["exits"], strict=True):
            lp = e["lpips"]
            assert row[f"lpips_{arm}"] == {
                "mean": float(lp.mean()),
                "median": float(np.median(lp)),
                "p90": float(np.percentile(lp, 90)),
            }
            assert row[f"macs_{arm}"] == e["macs"] and row[f"fid_{arm}"] is None and row["exit"] == e["exit"]
        assert saved["per_image_lpips"][arm] == [e["lpips"].round(5).tolist() for e in m["exits"]]
    for name in ("ablation.md", "lpips_kde.png", "start_images.png", "exit_quality.json", "exit_quality.md"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "exit_quality.json").read_text())["fid_reference"] is None  # --no-fid
    # The old library function is a thin wrapper over the study.
    old = bank_ablation(runs[0], runs[2], tmp_path / "b", n=4, fid=False)
    assert {k: v for k, v in old.items() if k != "plots"} == {k: v for k, v in saved.items() if k != "plots"}
    assert (tmp_path / "b" / "ablation.md").read_text() == (out / "ablation.md").read_text()
    # One run per arm, of one budget, without the bank first: refused before any work.
    assert main(["exit-quality", runs[1], runs[2], "--bank-ablation", "--n", "4", "--out", str(tmp_path / "c")]) == 2
    assert "differ in seed (1 vs 0)" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert main(["exit-quality", runs[0], runs[1], "--bank-ablation", "--n", "4", "--out", str(tmp_path / "c")]) == 2
    assert "the second run must use --bank" in capsys.readouterr().err


def test_a_backbone_folder_without_a_classifier_is_judged_by_the_shipped_one(tmp_path):
    import shutil

    from fiancee.tasks.base import weights_dir

    shipped = weights_dir("fashion")
    run_backbone = tmp_path / "backbone"  # what train-backbone exports: no classifier beside it
    run_backbone.mkdir()
    for name in ("backbone.safetensors", "config.json"):
        shutil.copy(shipped / name, run_backbone / name)
    ref = evaluate_fashion_backbone(n=6, seed=0, fid=False)
    got = evaluate_fashion_backbone(weights=run_backbone, n=6, seed=0, fid=False)
    assert (
        got["label_accuracy"] == ref["label_accuracy"]
        and got["classifier_fingerprint"] == ref["classifier_fingerprint"]
    )
    assert got["classifier_fingerprint"] == json.loads((shipped / "classifier.json").read_text())["fingerprint"]
    assert FashionTask(weights=run_backbone).label_accuracy(torch.zeros(6, 3, 32, 32), 6, 0) is not None
    with pytest.raises(FileNotFoundError, match="no label classifier in .*empty"):
        evaluate_fashion_backbone(weights=run_backbone, n=6, seed=0, fid=False, classifier=tmp_path / "empty")
