"""``fiancee bench`` on tiny shapes: report structure and invariants, the tree vs per-sample routes,
speed options on CPU, and the CLI's errors. Timings are never asserted (they depend on the machine's load)."""

import json

import pytest
import torch

from fiancee.bench import (
    DEMO_SHARES,
    TOLERANCES,
    bench_mixes,
    format_table,
    mix_exits,
    routed_mixes,
    run_bench,
    skewed_shares,
)
from fiancee.cli import main

QUICK = {"reps": 2, "warmup": 1, "progress": False}


@pytest.fixture(scope="module")
def oasis_report(one_thread):
    return run_bench("oasis", size="tiny", batches="1,4", options="channels_last,bf16", **QUICK)


def _check_structure(report: dict, num_routes: int) -> None:
    routes = report["routes"]
    assert len(routes) == num_routes
    assert [r["route"] for r in routes] == list(range(num_routes))
    assert routes[-1]["name"] == "backbone" and routes[-1]["after_stage"] is None
    assert routes[-1]["macs_ratio"] == 1.0 and routes[-1]["latency_ratio"] == 1.0
    after = [r["after_stage"] for r in routes[:-1]]
    assert after == sorted(after) and after == report["settings"]["exits_after_stages"]
    macs = [r["macs_ratio"] for r in routes]
    assert all(a < b for a, b in zip(macs, macs[1:])), macs  # shallowest first, strictly cheaper
    for r in routes:
        assert r["macs"] > 0 and r["latency_ms"] > 0 and r["latency_ratio"] > 0
        for b in report["settings"]["batches"]:
            row = r["per_batch"][str(b)]
            assert row["median_ms"] > 0 and row["iqr_ms"] >= 0
    mixed = report["mixed"]
    for key in ("tree_vs_ideal", "tree_vs_deepest", "tree_vs_grouped"):
        assert mixed[key] > 0
    assert mixed["batch"] == max(report["settings"]["batches"])
    if report["settings"]["mixes_from"].startswith("no pipeline"):  # uniform, then every route alone
        assert [m["name"] for m in mixed["mixes"]] == ["uniform"] + [f"route {r}" for r in range(num_routes)]
    else:  # uniform, then the pipeline's own routing at each threshold
        assert [m["name"] for m in mixed["mixes"]] == ["uniform", "routed T=0.05", "routed T=0.1"]
    assert set(report["settings"]["mixes"]) == {m["name"] for m in mixed["mixes"]}
    for mix in mixed["mixes"]:
        for b, row in mix["per_batch"].items():
            assert sum(row["counts"]) == int(b)
            assert min(row["tree_ms"], row["ideal_ms"], row["deepest_ms"], row["grouped_ms"]) > 0
            assert row["max_abs_diff_tree_vs_grouped"] < 1e-5  # the tree returns what each route returns
    assert report["overhead_fraction"] > 0
    o = report["overhead"]
    assert o["predictor_ms"] > 0
    assert (
        (o["bank_ms"] > 0 and o["bank_entries"] > 0)
        if o["bank"] == "on"
        else (o["bank_ms"] == 0 and o["bank_entries"] == 0)
    )
    batches = report["settings"]["batches"]
    assert o["batches"] == sorted({batches[0], batches[-1]})  # the smallest and the largest batch
    assert report["overhead_fraction"] == max(row["fraction"] for row in o["per_batch"].values())
    for b, row in o["per_batch"].items():
        assert row["fraction"] == pytest.approx(
            (row["predictor_ms"] + row["bank_ms"]) / row["smallest_route_ms"], rel=1e-2
        )
    assert report["device"]["torch"] == torch.__version__ and report["device"]["threads"] >= 1
    for key in ("backbone", "scale", "min_channels", "batches", "reps", "warmup", "dtype", "options", "seed"):
        assert key in report["settings"]
    json.dumps(report)  # plain JSON values only
    assert "backbone" in format_table(report) and "| route |" in format_table(report, markdown=True)


def test_oasis_tiny_report(oasis_report):
    _check_structure(oasis_report, num_routes=4)
    s = oasis_report["settings"]
    assert (s["backbone"], s["size"], s["scale"], s["min_channels"]) == ("oasis", "tiny", "1/4", 4)
    assert oasis_report["overhead"]["bank_mode"] == "patch"  # OASIS searches patches per class (S1.1.1)
    assert oasis_report["overhead"]["predictor_arch"] == "tiny"  # the default for every task


def test_options_on_cpu_stay_within_tolerance(oasis_report):
    entries = {e["name"]: e for e in oasis_report["options"]}
    assert set(entries) == {"channels_last", "bf16", "channels_last+bf16"}
    for name, entry in entries.items():
        assert entry["error"] is None
        assert len(entry["results"]) == 2 * 4  # every (batch, route)
        tol = TOLERANCES["reduced" if "bf16" in name else "float32"]
        assert entry["tolerance"] == tol
        for row in entry["results"]:
            assert row["within_tolerance"], row
            assert row["max_abs"] <= tol["max_abs"] and row["mean_abs"] <= tol["mean_abs"]
            assert row["ms"] > 0 and row["verdict"] in ("helped", "no faster")
    # channels_last reorders memory, not arithmetic precision
    assert max(r["max_abs"] for r in entries["channels_last"]["results"]) < 1e-4


def test_g2d_tiny_report_and_threads(one_thread):
    before = torch.get_num_threads()
    report = run_bench("g2d", size="tiny", batches=[2, 1], threads=1, **QUICK)
    _check_structure(report, num_routes=3)
    assert report["settings"]["batches"] == [1, 2] and report["settings"]["threads"] == 1
    assert report["overhead"]["bank_mode"] == "global" and report["overhead"]["predictor_arch"] == "tiny"
    assert report["options"] == []
    assert torch.get_num_threads() == before  # restored


def test_faces_uses_the_committed_exits(one_thread):
    report = run_bench("faces", batches="1,2", **QUICK)
    _check_structure(report, num_routes=4)
    assert report["settings"]["exit_weights"].startswith("the exits shipped with the package")
    assert (report["settings"]["scale"], report["settings"]["min_channels"]) == ("1/2", 32)
    # faces' shipped exits were trained without a bank: no input of its pipeline pays a retrieval
    assert report["overhead"]["bank"] == "off" and report["overhead"]["bank_choice"] == "auto"
    forced = run_bench("faces", batches="1", bank_inputs=16, bank="on", **QUICK)
    assert forced["overhead"]["bank"] == "on" and forced["overhead"]["bank_mode"] == "global"
    with pytest.raises(ValueError, match="bank must be auto, on or off"):
        run_bench("faces", bank="maybe")
    with pytest.raises(ValueError, match="bank inputs apply to a bank"):
        run_bench("faces", bank="off", bank_inputs=4)


def test_mixes_hold_their_shares_and_are_seeded():
    exits = mix_exits([0.25] * 4, 8, seed=3)
    assert torch.bincount(exits, minlength=4).tolist() == [2, 2, 2, 2]
    assert torch.equal(exits, mix_exits([0.25] * 4, 8, seed=3))
    assert torch.bincount(mix_exits(DEMO_SHARES, 100, seed=0), minlength=4).tolist() == [1, 17, 47, 35]
    assert skewed_shares(4) == pytest.approx(DEMO_SHARES)
    for n in (2, 3, 5):
        shares = skewed_shares(n)
        assert len(shares) == n and sum(shares) == pytest.approx(1) and min(shares) >= 0
    with pytest.raises(ValueError, match="positive batch"):
        mix_exits([0.5, 0.5], 0, seed=0)


def test_mixes_are_uniform_and_the_pipelines_routing_or_every_single_route():
    from types import SimpleNamespace

    from fiancee.routing import ThresholdRouter

    assert bench_mixes(3) == [
        ("uniform", (1 / 3, 1 / 3, 1 / 3)),
        ("route 0", (1.0, 0.0, 0.0)),
        ("route 1", (0.0, 1.0, 0.0)),
        ("route 2", (0.0, 0.0, 1.0)),
    ]
    assert bench_mixes(3, single_routes=False) == [("uniform", (1 / 3, 1 / 3, 1 / 3))]
    # A stand-in pipeline: predicted LPIPS of 2 exits for 4 inputs, the paper's rule (cheapest exit with P <= T).
    predicted = torch.tensor([[0.04, 0.01], [0.08, 0.03], [0.2, 0.09], [0.3, 0.2]])
    model = SimpleNamespace(num_routes=3, parameters=lambda: iter([torch.zeros(1)]))
    pipe = SimpleNamespace(model=model, predict=lambda *xs: predicted, router=ThresholdRouter([1.0, 2.0, 4.0]))
    routed = routed_mixes(pipe, (torch.zeros(4, 1),))
    # T = 0.05: exit 1 for input 0, exit 2 for input 1, the backbone for 2 and 3; T = 0.1: 2 / 1 / 1.
    assert routed == [("routed T=0.05", (0.25, 0.25, 0.5)), ("routed T=0.1", (0.5, 0.25, 0.25))]
    assert bench_mixes(3, routed) == [("uniform", (1 / 3, 1 / 3, 1 / 3)), *routed]


def test_a_pipeline_gives_the_bench_its_exits_and_its_routing(tmp_path, faces_task, one_thread):
    from fiancee.pipeline import FianceePipeline
    from fiancee.predictor import QualityPredictor, predictor_features
    from fiancee.routing import ThresholdRouter
    from fiancee.tasks.base import weights_dir
    from fiancee.train.exits import load_exits

    _, model = load_exits(weights_dir("faces", "exits"))
    xs = predictor_features("tiny", model, faces_task.sample_inputs(2, seed=0, split="train"))
    torch.manual_seed(0)
    predictor = QualityPredictor("tiny", len(model.attach_after), [list(xs[0].shape[1:])])
    FianceePipeline(faces_task, model, predictor, ThresholdRouter(model.route_macs())).save_pretrained(tmp_path / "p")
    report = run_bench("faces", batches="2", pipeline=tmp_path / "p", **QUICK)
    _check_structure(report, num_routes=4)
    assert report["settings"]["exit_weights"] == "the pipeline's"
    assert report["settings"]["mixes_from"].startswith("the pipeline's router on 128 test inputs")
    for mix in report["mixed"]["mixes"]:
        assert sum(mix["shares"]) == pytest.approx(1, abs=1e-3)
    with pytest.raises(ValueError, match="scale and min channels come from the pipeline"):
        run_bench("faces", scale="1/4", pipeline=tmp_path / "p", **QUICK)
    with pytest.raises(ValueError, match="with its task as the backbone"):
        run_bench("oasis", size="tiny", pipeline=tmp_path / "p", **QUICK)


def test_tree_equals_each_sample_alone_on_its_route(one_thread):
    from fiancee.backbones import build_backbone
    from fiancee.exits import ExitGenerator

    torch.manual_seed(0)
    backbone = build_backbone("oasis", "tiny")
    model = ExitGenerator(backbone, backbone.config.exits, "1/4", 4).eval()
    inputs = backbone.example_inputs(6)
    exits = mix_exits(skewed_shares(model.num_routes), 6, seed=1)
    with torch.no_grad():
        tree = model.mixed(*inputs, exits=exits)
        for i, r in enumerate(exits.tolist()):
            alone = model.route(*(x[i : i + 1] for x in inputs), exit=r)
            torch.testing.assert_close(tree[i : i + 1], alone, rtol=0, atol=1e-5)


def test_cli_writes_the_json(tmp_path, capsys, one_thread):
    out = tmp_path / "bench" / "g2d.json"
    rc = main(
        [
            "bench",
            "--backbone",
            "g2d",
            "--size",
            "tiny",
            "--batch",
            "1,2",
            "--reps",
            "1",
            "--warmup",
            "0",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["kind"] == "fiancee-bench" and report["routes"][-1]["name"] == "backbone"
    printed = capsys.readouterr().out
    assert "exit after stage 2" in printed and str(out) in printed


BAD = [
    (["--opt", "turbo"], "unknown option 'turbo'"),
    (["--opt", "cudagraphs"], "needs a CUDA device"),
    (["--opt", "fp16"], "needs a CUDA device"),
    (["--batch", "0"], "batch sizes must be positive"),
    (["--batch", "1,x"], "batch sizes must be positive"),
    (["--reps", "0"], "reps must be an integer >= 1"),
    (["--threads", "0"], "threads must be an integer >= 1"),
    (["--scale", "3/2"], "scale factor must lie in (0, 1]"),
    (["--min-channels", "0"], "min channels must be an integer >= 1"),
    (["--device", "tpu"], "device must be cpu or cuda"),
    (["--bogus"], "unrecognized arguments"),
]


def _cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors (unknown flags) exit from inside parse_args
        return e.code


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "x.json"
    rc = _cli(["bench", "--backbone", "oasis", "--size", "tiny", "--json", str(out), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_size_applies_to_reference_backbones_only(tmp_path, capsys):
    rc = _cli(["bench", "--backbone", "faces", "--size", "tiny", "--json", str(tmp_path / "x.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "size (paper | tiny) applies to the reference backbones" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    rc = _cli(["bench", "--backbone", "g2d", "--size", "tiny", "--device", "cuda", "--json", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "CUDA is not available" in err and len(err.strip().splitlines()) == 1


def test_a_predictor_that_cannot_read_the_inputs_fails_before_timing(tmp_path, capsys):
    rc = _cli(
        [
            "bench",
            "--backbone",
            "g2d",
            "--size",
            "tiny",
            "--predictor",
            "conv",
            "--json",
            str(tmp_path / "x.json"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "reads a label map" in err and len(err.strip().splitlines()) == 1
