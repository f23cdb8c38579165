"""The calibration methods and their guarantees over many splits (fiancee.guarantee): tiny synthetic tables, seconds."""

import json
import math

import pytest
import torch

from fiancee.guarantee import (
    METHODS,
    accepted_index,
    calibration_range,
    max_misses,
    min_calibration,
    range_check,
    split_study,
)
from fiancee.routing import CalibratedRouter, margin_grid, margin_misses, router_from_config

COSTS = [1.0, 2.0, 3.0, 10.0]  # three exits, then the backbone


def _table(n: int, seed: int, scale: float = 1.0):
    """Three exits of decreasing true LPIPS and an optimistic, noisy predictor (it needs a positive margin)."""
    g = torch.Generator().manual_seed(seed)
    true = scale * torch.rand(n, 3, generator=g) * torch.tensor([0.2, 0.14, 0.08])
    return 0.85 * true + 0.03 * torch.randn(n, 3, generator=g), true


def _slack(p: float, splits: int) -> float:
    return 3 * math.sqrt(p * (1 - p) / splits)  # 3 standard errors of a share over `splits` draws


@pytest.fixture(scope="module")
def study():
    pred, true = _table(6000, 0)
    return split_study(pred, true, COSTS, [0.1], [0.05, 0.1], n_cal=300, splits=300, seed=0, delta=0.1)


def _row(study, t, eps, method):
    return next(r for r in study["rows"] if r["threshold"] == t and r["epsilon"] == eps and r["method"] == method)


@pytest.mark.parametrize("method", ["ltt", "ucb"])
def test_high_probability_methods_exceed_epsilon_in_at_most_delta_of_the_draws(study, method):
    s = study["splits"]
    for eps in (0.05, 0.1):
        row = _row(study, 0.1, eps, method)
        # The theorem's setting: calibration drawn i.i.d. from the table, the table's miss rate the true one.
        assert row["iid"]["share_above"] <= 0.1 + _slack(0.1, s), (method, eps, row["iid"])
        # Disjoint splits, measured on the other 5700 inputs: the same within their own noise.
        assert row["share_above"] <= 0.1 + _slack(0.1, s) + 0.03, (method, eps, row)
        assert row["saved_mean"] > 0.2  # and not by sending everyone to the backbone


def test_crc_mean_miss_rate_is_at_most_epsilon(study):
    for eps in (0.05, 0.1):
        row = _row(study, 0.1, eps, "crc")
        se = row["miss_sd"] / math.sqrt(study["splits"])
        assert row["miss_mean"] <= eps + 3 * se, row
        assert row["iid"]["miss_mean"] <= eps + 3 * row["iid"]["miss_sd"] / math.sqrt(study["splits"])
        # Not vacuous: CRC spends most of its budget (an expected-risk bound is close to epsilon, not far below).
        assert row["miss_mean"] > 0.6 * eps


def test_the_methods_order_as_their_promises_do(study):
    for eps in (0.05, 0.1):
        rows = {m: _row(study, 0.1, eps, m) for m in METHODS}
        # The average fit and CRC aim at the mean; the high-probability methods keep a margin above it.
        assert rows["ltt"]["miss_mean"] < rows["crc"]["miss_mean"] <= rows["average"]["miss_mean"] + 1e-12
        assert rows["ltt"]["saved_mean"] < rows["crc"]["saved_mean"]
        # Hoeffding-Bentkus is never tighter than the exact binomial for a 0/1 miss.
        assert rows["ucb"]["miss_mean"] <= rows["ltt"]["miss_mean"] + 1e-12
        assert rows["average"]["share_above"] > 0.2  # no guarantee: above epsilon in many splits


def test_familywise_over_thresholds_holds_with_bonferroni():
    pred, true = _table(6000, 1)
    s = split_study(
        pred, true, COSTS, [0.05, 0.1, 0.15], [0.05], n_cal=400, splits=300, seed=1, delta=0.1, methods=["ltt", "ucb"]
    )
    for f in s["family"]:
        bon = f["bonferroni"]
        assert bon["delta_each"] == pytest.approx(0.1 / 3)
        assert bon["min_calibration"] == min_calibration(f["method"], 0.05, 0.1 / 3)
        assert bon["iid_share_any_above"] <= 0.1 + _slack(0.1, 300), f
        # Bonferroni never accepts more than the per-threshold fit does.
        assert bon["iid_share_any_above"] <= f["iid_share_any_above"] + 1e-12
        per = {r["threshold"]: r["saved_mean"] for r in s["rows"] if r["method"] == f["method"]}
        assert all(b <= per[t] + 1e-9 for t, b in zip(s["thresholds"], bon["saved_mean"]))


def test_study_is_deterministic_with_a_seed():
    pred, true = _table(1500, 2)
    kw = dict(n_cal=200, splits=100, delta=0.1)
    a = split_study(pred, true, COSTS, [0.1], [0.1], seed=5, **kw)
    b = split_study(pred, true, COSTS, [0.1], [0.1], seed=5, **kw)
    c = split_study(pred, true, COSTS, [0.1], [0.1], seed=6, **kw)
    assert json.dumps(a) == json.dumps(b)
    assert json.dumps(a["rows"]) != json.dumps(c["rows"])


@pytest.mark.parametrize("method", ["crc", "ltt", "ucb"])
def test_the_router_fit_and_the_study_choose_by_one_rule(method):
    """What the study computes for a calibration set is the margin CalibratedRouter fits on it."""
    pred, true = _table(2000, 3)
    cal = torch.randperm(2000, generator=torch.Generator().manual_seed(0))[:400]
    fit = {
        "crc": lambda r: r.fit_crc(pred[cal], true[cal], 0.1, 0.05),
        "ltt": lambda r: r.fit_guarantee(pred[cal], true[cal], 0.1, 0.05, 0.1),
        "ucb": lambda r: r.fit_ucb(pred[cal], true[cal], 0.1, 0.05, 0.1),
    }[method](CalibratedRouter(costs=COSTS))
    grid = margin_grid(pred, 0.1)  # the whole table's grid, as the study uses
    miss, _ = margin_misses(pred[cal], true[cal], 0.1, grid, COSTS)
    if method == "crc":
        miss = miss.flip(0).cummax(dim=0).values.flip(0)
    idx = int(accepted_index(miss.sum(1).float(), max_misses(method, 400, 0.05, 0.1)))
    assert fit.margin(0.1) == pytest.approx(float(grid[idx]), abs=1e-12)
    assert fit.method == method and fit.guarantee()


def test_rules_and_sizes():
    from scipy.stats import binom

    k = max_misses("ltt", 1000, 0.05, 0.1)
    assert binom.cdf(k, 1000, 0.05) <= 0.1 < binom.cdf(k + 1, 1000, 0.05)
    assert max_misses("ucb", 1000, 0.05, 0.1, "clopper-pearson") == k
    assert 0 <= max_misses("ucb", 1000, 0.05, 0.1) < k  # Hoeffding-Bentkus: looser for a 0/1 loss
    assert max_misses("crc", 1000, 0.05) == 49  # (49 + 1) / 1001 <= 0.05 < (50 + 1) / 1001
    assert max_misses("average", 1000, 0.05) == 49  # the split-conformal level of CalibratedRouter.fit
    assert min_calibration("ltt", 0.05, 0.1) == 45 == min_calibration("ucb", 0.05, 0.1)
    assert min_calibration("crc", 0.05) == 19 and max_misses("crc", 19, 0.05) == 0 and max_misses("crc", 18, 0.05) == -1
    assert max_misses("ltt", 44, 0.05, 0.1) == -1 and max_misses("ltt", 45, 0.05, 0.1) == 0
    counts = torch.tensor([[5.0, 3.0, 4.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert accepted_index(counts, 3).tolist() == [3, 0]  # the scan from the top stops at the 4 misses


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda p, t: split_study(p, t, COSTS, [0.1], [0.05], n_cal=30, splits=100), "needs at least 45 calibration"),
        (lambda p, t: split_study(p, t, COSTS, [0.1], [0.0], n_cal=300, splits=100), "epsilon must be a number in"),
        (lambda p, t: split_study(p, t, COSTS, [0.1], [1.0], n_cal=300, splits=100), "epsilon must be a number in"),
        (
            lambda p, t: split_study(p, t, COSTS, [0.1], [0.1], n_cal=300, splits=100, delta=1.5),
            "delta must be a number in",
        ),
        (
            lambda p, t: split_study(p, t, COSTS, [0.1], [0.1], n_cal=300, n_test=800, splits=100),
            "exceed the table's 1000",
        ),
        (lambda p, t: split_study(p, t, COSTS, [0.1], [0.1], n_cal=300, splits=20), "splits must be an integer >= 100"),
        (lambda p, t: split_study(p, t[:, :2], COSTS, [0.1], [0.1], n_cal=300, splits=100), "same shape"),
        (lambda p, t: split_study(p, t, COSTS[:3], [0.1], [0.1], n_cal=300, splits=100), "costs must be 4"),
        (lambda p, t: split_study(p, t, COSTS, [1.5], [0.1], n_cal=300, splits=100), "threshold must lie in"),
        (
            lambda p, t: split_study(p, t, COSTS, [0.1], [0.1], n_cal=300, splits=100, methods=["magic"]),
            "method must be one of",
        ),
        (
            lambda p, t: split_study(p, t, COSTS, [0.1], [0.1], n_cal=300, splits=100, bound="chernoff"),
            "bound must be one of",
        ),
        (
            lambda p, t: split_study(p, t, COSTS, [0.05, 0.1], [0.05], n_cal=50, splits=100, methods=["ltt"]),
            "for 2 thresholds at once",
        ),
        (lambda p, t: CalibratedRouter().fit_crc(p[:10], t[:10], 0.1, 0.05), "needs at least 19 calibration"),
        (lambda p, t: CalibratedRouter().fit_ucb(p[:44], t[:44], 0.1, 0.05, 0.1), "needs at least 45 calibration"),
        (
            lambda p, t: CalibratedRouter().fit_guarantee(p[:50], t[:50], [0.05, 0.1], 0.05, 0.1, familywise=True),
            "at 2 thresholds at once needs at least 59",
        ),
    ],
)
def test_bad_arguments_are_refused_in_one_line_before_any_work(call, match, monkeypatch):
    import fiancee.routing

    def no_work(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(fiancee.routing, "margin_misses", no_work)
    pred, true = _table(1000, 4)
    with pytest.raises(ValueError, match=match) as e:
        call(pred, true)
    assert "\n" not in str(e.value)


def test_router_configs_round_trip_and_old_ones_load():
    pred, true = _table(400, 5)
    routers = [
        CalibratedRouter(costs=COSTS).fit_crc(pred, true, [0.05, 0.1], 0.05),
        CalibratedRouter(costs=COSTS).fit_ucb(pred, true, [0.05, 0.1], 0.05, 0.1, bound="clopper-pearson"),
        CalibratedRouter(costs=COSTS).fit_guarantee(pred, true, [0.05, 0.1], 0.05, 0.1, familywise=True),
        CalibratedRouter(costs=COSTS).fit(pred, true, [0.05, 0.1], 0.9),
    ]
    for r in routers:
        back = router_from_config(json.loads(json.dumps(r.to_config())))
        assert back.to_config() == r.to_config() and back.guarantee() == r.guarantee()
        assert torch.equal(back.route(pred, 0.1), r.route(pred, 0.1))
    assert "at every one of the thresholds 0.05, 0.1 at once" in routers[2].guarantee()
    assert "on average" in routers[0].guarantee() and routers[3].guarantee() is None
    # A config saved before methods and calibration ranges were recorded (pipeline folders of earlier
    # versions): LTT when it has epsilon and delta, average otherwise; no range, so no input check.
    old = {k: v for k, v in routers[2].to_config().items() if k not in ("method", "bound", "familywise", "calibration")}
    back = router_from_config(old)
    assert back.method == "ltt" and back.calibration is None and back.check_inputs(pred) is None
    old_avg = {
        k: v for k, v in routers[3].to_config().items() if k not in ("method", "bound", "familywise", "calibration")
    }
    assert router_from_config(old_avg).method == "average"
    for bad in (
        {"method": "crc", "delta": 0.1},
        {"method": "magic"},
        {"familywise": 1},
        {"calibration": {"n": 3}},
        {"method": "average", "bound": "clopper-pearson", "epsilon": None, "delta": None},
    ):
        with pytest.raises(ValueError):
            router_from_config({**routers[2].to_config(), **bad})


def test_range_check_warns_on_shifted_inputs_only():
    pred, _ = _table(3000, 6)
    cal = calibration_range(pred[:1000])
    same = range_check(cal, pred[1000:])
    assert not same["warn"] and same["message"] is None
    shifted, _ = _table(1000, 7, scale=1.6)  # larger LPIPS than anything calibrated
    moved = range_check(cal, shifted)
    assert moved["warn"] and "look unlike the calibration set" in moved["message"]
    assert moved["outside_share"] > 3 * moved["expected_share"]
    router = CalibratedRouter(costs=COSTS).fit_guarantee(pred[:1000], _table(3000, 6)[1][:1000], 0.1)
    assert router.check_inputs(shifted)["warn"] and not router.check_inputs(pred[1000:])["warn"]


def test_shifted_study_reports_the_shifted_miss_rate():
    pred, true = _table(1500, 8)
    s_pred, s_true = _table(800, 9, scale=1.4)
    s = split_study(pred, true, COSTS, [0.1], [0.05], n_cal=300, splits=100, seed=0, shifted=(0.8 * s_pred, s_true))
    row = _row(s, 0.1, 0.05, "ltt")
    # An even more optimistic predictor on harder inputs: the calibrated margin no longer suffices.
    assert row["shifted"]["miss_mean"] > row["miss_mean"] and row["shifted"]["miss_mean"] > 0.05
    assert s["paper_rule"][0]["shifted"]["miss_mean"] > s["paper_rule"][0]["miss_mean"]
    assert s["shifted_inputs"] == 800


def test_task_shift_hook():
    from fiancee.tasks.base import parse_shift
    from fiancee.tasks.faces import FacesTask

    task = FacesTask()
    (z,) = task.sample_inputs(8, 3, "test")
    (zs,) = task.shifted_inputs(8, 3, "test", "norm:2")
    assert torch.allclose(zs, 2 * z)
    assert torch.allclose(task.shifted_inputs(8, 3, "test", "norm")[0], 1.5 * z)
    for bad, match in (
        ("size:2", "has no input shift"),
        ("norm:-1", "S > 0"),
        ("norm:x", "S > 0"),
        (3, "has no input shift"),
    ):
        with pytest.raises(ValueError, match=match):
            task.shifted_inputs(8, 3, "test", bad)

    class Plain:
        name, shifts = "plain", {}

    with pytest.raises(ValueError, match="declares no input shifts"):
        parse_shift(Plain(), "norm:2")


def test_fashion_shift_draws_only_the_named_classes():
    from fiancee.tasks.fashion import FashionTask, find_data_dir

    try:
        find_data_dir(None)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    task = FashionTask()
    label, z = task.shifted_inputs(50, 0, "test", "classes:5,7")
    garment = label.argmax(1)  # [B, H, W]: 0 background, class + 1 on the garment
    present = {int(v) - 1 for v in garment.unique() if v > 0}
    assert present <= {5, 7} and label.shape[0] == 50 and z.shape[0] == 50
    with pytest.raises(ValueError, match="class numbers in 0..9"):
        task.shifted_inputs(5, 0, "test", "classes:12")


def test_report_section_and_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from fiancee.evaluate import split_study_for_report
    from fiancee.plots import save_risk_plot, save_risk_saved_plot, save_shift_plot
    from fiancee.report import _split_study_html

    pred, true = _table(1200, 10)
    router = CalibratedRouter(costs=COSTS).fit_guarantee(pred[:500], true[:500], [0.05, 0.1], 0.05, 0.1)
    study = split_study_for_report(
        router, (pred[:500], true[:500]), (pred[500:], true[500:]), COSTS, 0.0, [0.05, 0.1], splits=100
    )
    assert study["thresholds"] == [0.1] and study["own_method"] == "ltt" and study["n_cal"] == 500
    page = _split_study_html(study)
    assert "guarantee.png" in page and "Learn-then-Test" in page and "class=hl" in page
    assert save_risk_plot(study, tmp_path / "r.png", highlight="ltt").stat().st_size > 0
    s = split_study(
        pred, true, COSTS, [0.05, 0.1], [0.05, 0.1], n_cal=300, splits=100, shifted=(pred[:200], true[:200])
    )
    assert save_risk_saved_plot(s, tmp_path / "s.png").stat().st_size > 0
    assert save_shift_plot(s, tmp_path / "h.png").stat().st_size > 0


def test_cli_refuses_bad_arguments_before_loading(tmp_path, capsys):
    from fiancee.cli import main

    missing = str(tmp_path / "no_pipeline")
    for argv, match in (
        (["--epsilons", "0,0.1"], "epsilon must be a number in"),
        (["--splits", "10"], "splits must be an integer >= 100"),
        (["--n", "500", "--n-cal", "400", "--n-test", "200"], "exceed the table's 500"),
        (["--n-cal", "30"], "needs at least"),
        (["--methods", "ltt,magic"], "method must be one of"),
    ):
        code = main(["guarantee", missing, "--out", str(tmp_path / "o"), *argv])
        err = capsys.readouterr().err
        assert code == 2 and match in err and err.count("\n") == 1, err
        assert not (tmp_path / "o").exists()
