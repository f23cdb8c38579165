"""``fiancee bench`` on tiny shapes: report structure and invariants, the tree vs per-sample routes,
speed options on CPU, and the CLI's errors. Timings are never asserted (they depend on the machine's load)."""

import json
import re

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
        assert row["fraction"] == pytest.approx(  # the report rounds it to 4 decimals
            (row["predictor_ms"] + row["bank_ms"]) / row["smallest_route_ms"], rel=1e-2, abs=5e-5
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


@pytest.fixture(scope="module")
def faces_pipeline(tmp_path_factory):
    """A faces pipeline folder: the shipped exits, an untrained tiny predictor, the paper's threshold router."""
    from fiancee.pipeline import FianceePipeline
    from fiancee.predictor import QualityPredictor, predictor_features
    from fiancee.routing import ThresholdRouter
    from fiancee.tasks import get_task
    from fiancee.tasks.base import weights_dir
    from fiancee.train.exits import load_exits

    task = get_task("faces")
    _, model = load_exits(weights_dir("faces", "exits"))
    xs = predictor_features("tiny", model, task.sample_inputs(2, seed=0, split="train"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        predictor = QualityPredictor("tiny", len(model.attach_after), [list(xs[0].shape[1:])])
    out = tmp_path_factory.mktemp("faces") / "p"
    FianceePipeline(task, model, predictor, ThresholdRouter(model.route_macs())).save_pretrained(out)
    return out


def test_a_pipeline_gives_the_bench_its_exits_and_its_routing(faces_pipeline, one_thread):
    report = run_bench("faces", batches="2", pipeline=faces_pipeline, **QUICK)
    assert set(report["source"]) == {"commit", "dirty"}
    _check_structure(report, num_routes=4)
    assert report["settings"]["exit_weights"] == "the pipeline's"
    assert report["settings"]["mixes_from"].startswith("the pipeline's router on 128 test inputs")
    for mix in report["mixed"]["mixes"]:
        assert sum(mix["shares"]) == pytest.approx(1, abs=1e-3)
    # the headline: the whole routed call against the backbone, per threshold, on the bench's batch and threads
    e2e = report["end_to_end"]
    assert e2e["runtime"] == "torch" and e2e["thresholds"] == [0.05, 0.1]
    assert [(r["threshold"], r["batch"], r["threads"]) for r in e2e["rows"]] == [(0.05, 2, 1), (0.1, 2, 1)]
    for r in e2e["rows"]:
        assert (
            set(r) == E2E_FIELDS | {"segments_ms", "glue_ms"} and r["task"] == "faces" and sum(r["route_counts"]) == 2
        )
        assert min(r["backbone_ms"], r["routed_ms"], r["macs_speedup"]) > 0 and r["backbone_iqr_ms"] >= 0
        assert r["speedup"] == round(r["backbone_ms"] / r["routed_ms"], 4)
    table = format_table(report).splitlines()
    assert table[2].startswith("end to end: the routed call (torch)") and table[4].split()[:4] == [
        "task",
        "T",
        "batch",
        "threads",
    ]
    # Timed rewritten (its backbone too), and what the rewrites buy beside the pipeline as loaded, interleaved.
    counts = report["settings"]["rewrites"]
    assert counts["batchnorms_folded"] > 0 and counts["transposed_convolutions_replaced"] > 0
    gains = report["rewrites"]
    assert gains["threshold"] == 0.1 and gains["rewrites"] == counts and [r["batch"] for r in gains["rows"]] == [2]
    for r in gains["rows"]:
        assert min(r["stock_backbone_ms"], r["stock_routed_ms"], r["backbone_ms"], r["routed_ms"]) > 0
        assert r["routed_gain"] == pytest.approx(r["stock_routed_ms"] / r["routed_ms"])
    assert any(line.startswith("inference rewrites (pipe.for_inference(), T = 0.1)") for line in table)
    # Layer by layer: the first exit and the backbone, every layer call timed alone, MACs summing to the route's.
    layers = report["layers"]["rows"]
    assert [(r["batch"], r["route"]) for r in layers] == [(2, 0), (2, 3)]
    by_route = {r["route"]: r for r in report["routes"]}
    for r in layers:
        assert r["macs"] == by_route[r["route"]]["macs"] * 2  # the route's MACs per input, at batch 2
        assert r["layers_ms"] == pytest.approx(sum(x["ms"] for x in r["layers"]), abs=1e-3)
        assert r["other_ms"] == pytest.approx(r["route_ms"] - r["layers_ms"], abs=1e-3)
        assert any("->3 " in x["layer"] for x in r["layers"])  # the RGB head, named by its shape
    with pytest.raises(ValueError, match="scale and min channels come from the pipeline"):
        run_bench("faces", scale="1/4", pipeline=faces_pipeline, **QUICK)
    with pytest.raises(ValueError, match="with its task as the backbone"):
        run_bench("oasis", size="tiny", pipeline=faces_pipeline, **QUICK)


def test_the_onnx_bench_leads_with_the_pipelines_own_export(faces_pipeline, one_thread):
    pytest.importorskip("onnxruntime")
    from fiancee.bench import format_onnx_table, run_onnx_bench

    report = run_onnx_bench("faces", batches="2", threads=(1,), pipeline=faces_pipeline, **QUICK)
    assert list(report)[list(report).index("load_average") + 1] == "end_to_end"
    from fiancee.results import git_commit

    assert report["source"] == git_commit()  # the code it measured: the checkout's commit and its changed files
    e2e = report["end_to_end"]
    assert e2e["runtime"] == "onnx" and "predictor inside the trunk segment" in e2e["baseline"]
    assert any("predictor inside the trunk segment" in n for n in report["notes"])
    assert [(r["threshold"], r["batch"], r["threads"]) for r in e2e["rows"]] == [(0.05, 2, 1), (0.1, 2, 1)]
    assert all(set(r) == E2E_FIELDS and r["task"] == "faces" for r in e2e["rows"])
    assert format_onnx_table(report).splitlines()[2].startswith("end to end: the routed call (onnx)")


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
    (["--thresholds", "0.1,x"], "LPIPS values in (0, 1] separated by commas"),
    (["--thresholds", "0.1,1.5"], "thresholds must lie in (0, 1]"),
    (["--thresholds", ","], "at least one LPIPS value"),
    (["--thresholds", "0.1"], "give --pipeline too"),
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


# ----------------------------------------------------------------------------------------------
# End to end: the routed call against the backbone (fiancee.bench.end_to_end)

E2E_FIELDS = {
    "task",
    "runtime",
    "threshold",
    "batch",
    "threads",
    "backbone_ms",
    "backbone_iqr_ms",
    "routed_ms",
    "routed_iqr_ms",
    "speedup",
    "route_counts",
    "route_shares",
    "macs_per_input",
    "macs_saved",
    "macs_speedup",
    "ms_follow_macs",
}


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
        inputs = {b: backbone.example_inputs(b) for b in (1, 3)}
    pipe = FianceePipeline(None, model, predictor, ThresholdRouter(model.route_macs()), task_spec="oasis")
    return pipe, inputs


def _fake_time_ms(monkeypatch) -> list[float]:
    """``time_ms`` as the bench's clock calls it, but every call takes 1, 2, 3, ... ms in call order."""
    import fiancee.bench.measure as measure

    given: list[float] = []

    def fake(fn, device, reps, warmup):
        assert (reps, warmup) == (1, 0)  # one timed call each: the clock interleaves, not time_ms
        fn()
        given.append(float(len(given) + 1))
        return {"median_ms": given[-1], "iqr_ms": 0.0}

    monkeypatch.setattr(measure, "time_ms", fake)
    return given


def test_the_clock_interleaves_warmup_and_timed_calls(monkeypatch):
    from fiancee.bench.measure import Clock

    given = _fake_time_ms(monkeypatch)
    log: list[str] = []
    a, b = Clock(torch.device("cpu"), reps=3, warmup=2).interleaved(lambda: log.append("A"), lambda: log.append("B"))
    assert "".join(log) == "AB" * 5  # 2 warm-up rounds, then 3 timed rounds, A and B in turns
    assert given == [1, 2, 3, 4, 5, 6]  # A took the odd calls, B the even ones
    assert a == {"median_ms": 3.0, "iqr_ms": 2.0} and b == {"median_ms": 4.0, "iqr_ms": 2.0}


def test_end_to_end_rows_come_from_the_recorded_medians(monkeypatch, tiny_pipeline, one_thread):
    from fiancee.bench.end_to_end import time_end_to_end
    from fiancee.bench.measure import Clock

    pipe, inputs = tiny_pipeline
    _fake_time_ms(monkeypatch)  # backbone and routed in turns: 1, 2 | 3, 4 | 5, 6 ms per row
    with torch.no_grad():
        section = time_end_to_end(pipe, inputs, [1, 3], Clock(torch.device("cpu"), reps=3, warmup=0))
    assert section["thresholds"] == [0.05, 0.1] and section["runtime"] == "torch"
    assert section["backbone_macs"] == int(pipe.route_macs[-1])
    assert [(r["threshold"], r["batch"]) for r in section["rows"]] == [(0.05, 1), (0.05, 3), (0.1, 1), (0.1, 3)]
    for r in section["rows"]:
        assert set(r) == E2E_FIELDS | {"segments_ms", "glue_ms"} and r["task"] == "oasis" and r["threads"] == 1
        out = pipe(*inputs[r["batch"]], max_lpips=r["threshold"])
        assert r["route_counts"] == torch.bincount(out.routes, minlength=pipe.model.num_routes).tolist()
        assert sum(r["route_shares"]) == pytest.approx(1, abs=1e-3)
        assert r["macs_per_input"] == pytest.approx(float(out.macs.mean()), abs=1)
        # the backbone took calls 1, 3, 5 and the routed call 2, 4, 6 of each row's clock; then the segments, one
        # round of all of them per rep: segment j took calls 7 + j, 7 + n + j, 7 + 2n + j (its median the middle)
        n = len(r["segments_ms"])
        k = (6 + 3 * n) * section["rows"].index(r)
        assert (r["backbone_ms"], r["routed_ms"]) == (k + 3, k + 4)
        assert list(r["segments_ms"]) == ["trunk"] + (["bank"] if pipe.bank is not None else []) + [
            "predictor",
            "router",
            "tree",
        ]
        assert list(r["segments_ms"].values()) == [k + 7 + n + j for j in range(n)]
        assert r["glue_ms"] == pytest.approx(r["routed_ms"] - sum(r["segments_ms"].values()))
        assert r["speedup"] == round(r["backbone_ms"] / r["routed_ms"], 4)
        assert r["macs_speedup"] == round(section["backbone_macs"] / float(out.macs.mean()), 4)
        assert r["ms_follow_macs"] == pytest.approx(r["speedup"] / r["macs_speedup"], rel=1e-3)
        assert r["macs_saved"] == pytest.approx(1 - 1 / r["macs_speedup"], abs=1e-3)


def test_end_to_end_under_onnx_runtime(tmp_path, tiny_pipeline, one_thread):
    pytest.importorskip("onnxruntime")
    from fiancee.bench.end_to_end import time_end_to_end_onnx
    from fiancee.bench.measure import Clock
    from fiancee.export import export_pipeline

    pipe, inputs = tiny_pipeline
    export_pipeline(pipe, tmp_path / "onnx")
    clock = Clock(torch.device("cpu"), reps=2, warmup=1)
    section = time_end_to_end_onnx(tmp_path / "onnx", inputs, [1, 3], [1, 2], clock, "oasis", thresholds=[0.1])
    assert section["runtime"] == "onnx" and "predictor inside the trunk segment" in section["baseline"]
    assert [(r["threads"], r["batch"]) for r in section["rows"]] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    for r in section["rows"]:
        assert set(r) == E2E_FIELDS and r["runtime"] == "onnx" and r["threshold"] == 0.1
        assert min(r["backbone_ms"], r["routed_ms"], r["macs_speedup"]) > 0
        assert r["speedup"] == round(r["backbone_ms"] / r["routed_ms"], 4)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"thresholds": (0.05, 1.5)}, "thresholds must lie in (0, 1]"),
        ({"thresholds": ()}, "thresholds must list at least one LPIPS value"),
        ({"thresholds": ("0.1",)}, "thresholds must be a number in (0, 1]"),
        ({"batches": []}, "give at least one batch size"),
        ({"batches": ""}, "batch sizes must be positive integers"),
    ],
)
def test_end_to_end_refuses_bad_input_in_one_line_before_work(tmp_path, tiny_pipeline, kwargs, message):
    from fiancee.bench import run_onnx_bench
    from fiancee.bench.end_to_end import time_end_to_end
    from fiancee.bench.measure import Clock

    pipe, inputs = tiny_pipeline
    missing = tmp_path / "no-such-pipeline"  # loading it would fail: the arguments are refused first
    calls = [
        lambda: run_bench("faces", pipeline=missing, **{"batches": "1", **kwargs}, **QUICK),
        lambda: run_onnx_bench("faces", pipeline=missing, **{"batches": "1", **kwargs}, **QUICK),
        lambda: time_end_to_end(pipe, inputs, **{"batches": [1], **kwargs}, clock=Clock(torch.device("cpu"), 1, 0)),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=re.escape(message)) as e:
            call()
        assert "\n" not in str(e.value)


def test_reports_without_a_pipeline_have_no_end_to_end_section(oasis_report):
    assert oasis_report["end_to_end"] is None
    assert format_table(oasis_report).splitlines()[2].startswith("route")
