"""Routers (threshold, oracle, static, calibrated): properties on random LPIPS tables (CPU, seconds)."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fiancee.routing import (
    CalibratedRouter,
    OracleRouter,
    StaticRouter,
    ThresholdRouter,
    compliance,
    mean_cost,
    router_from_config,
    true_lpips_of,
)

thresholds = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)


@st.composite
def tables(draw, max_b=40, max_e=5):
    b = draw(st.integers(1, max_b))
    e = draw(st.integers(1, max_e))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    # Mostly decreasing with depth (deeper exits are better), but not always: a real table is noisy.
    base = torch.rand(b, 1, generator=g) * 0.4
    steps = torch.linspace(0.3, 0.0, e).view(1, e)
    return (base + steps + 0.08 * torch.randn(b, e, generator=g)).clamp(0.001, 1.0)


def _macs(e: int) -> list[float]:
    return [10.0 * (i + 1) + i * i for i in range(e + 1)]  # strictly increasing, backbone last


@settings(max_examples=60, deadline=None)
@given(tables(), thresholds)
def test_threshold_router_picks_the_cheapest_exit_meeting_t(lpips, t):
    routes = ThresholdRouter().route(lpips, t)
    e = lpips.shape[1]
    assert routes.dtype == torch.int64 and routes.shape == (lpips.shape[0],)
    for b in range(lpips.shape[0]):
        ok = [i for i in range(e) if lpips[b, i] <= t]
        assert int(routes[b]) == (ok[0] if ok else e)


@settings(max_examples=40, deadline=None)
@given(tables(), thresholds, st.data())
def test_costs_decide_cheapest_not_the_index(lpips, t, data):
    e = lpips.shape[1]
    costs = data.draw(st.lists(st.floats(1.0, 100.0), min_size=e + 1, max_size=e + 1))
    routes = ThresholdRouter(costs=costs).route(lpips, t)
    for b in range(lpips.shape[0]):
        ok = [i for i in range(e) if lpips[b, i] <= t] + [e]
        best = min(costs[i] for i in ok)
        assert costs[int(routes[b])] == best and int(routes[b]) in ok


@settings(max_examples=60, deadline=None)
@given(tables(), thresholds)
def test_oracle_compliance_is_one_and_no_router_beats_its_cost(lpips, t):
    e = lpips.shape[1]
    macs = _macs(e)
    oracle = OracleRouter(costs=macs).route(lpips, t)
    assert compliance(oracle, lpips, t) == 1.0
    # Any other assignment that is fully compliant costs at least as much, sample by sample.
    noisy = (lpips + 0.05 * torch.randn_like(lpips)).clamp(0.0, 1.0)
    other = ThresholdRouter(costs=macs).route(noisy, t)
    fully_ok = true_lpips_of(other, lpips) <= t
    c = torch.tensor(macs)
    assert torch.all(c[oracle][fully_ok] <= c[other][fully_ok])


@settings(max_examples=40, deadline=None)
@given(tables(max_b=60), thresholds, st.floats(0.5, 1.0))
def test_oracle_at_lower_compliance_is_the_best_router_with_that_many_misses(lpips, t, c):
    e = lpips.shape[1]
    macs = _macs(e)
    full = OracleRouter(costs=macs).route(lpips, t)
    partial = OracleRouter(costs=macs, compliance=c).route(lpips, t)
    assert compliance(partial, lpips, t) >= c - 1e-9
    assert mean_cost(partial, macs) <= mean_cost(full, macs) + 1e-9


def test_static_router_and_bad_inputs():
    lpips = torch.rand(5, 3)
    assert StaticRouter(2).route(lpips, 0.1).tolist() == [2] * 5
    assert StaticRouter(3).route(lpips, None).tolist() == [3] * 5  # 3 = the backbone here
    with pytest.raises(ValueError, match="does not exist"):
        StaticRouter(4).route(lpips, 0.1)
    for bad in (0.0, -0.1, 1.5, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="threshold"):
            ThresholdRouter().route(lpips, bad)
    with pytest.raises(ValueError, match=r"\[B, E\]"):
        ThresholdRouter().route(torch.rand(5), 0.1)
    with pytest.raises(ValueError, match="one entry per route"):
        ThresholdRouter(costs=[1, 2]).route(lpips, 0.1)
    with pytest.raises(ValueError, match="needs costs"):
        OracleRouter(compliance=0.9)
    with pytest.raises(ValueError, match="not fitted"):
        CalibratedRouter().route(lpips, 0.1)


@settings(max_examples=30, deadline=None)
@given(tables(max_b=80), st.floats(0.1, 0.6), st.floats(0.5, 0.99), st.integers(0, 2**31 - 1))
def test_calibrated_router_reaches_the_requested_compliance_on_its_fit_data(true, t, target, seed):
    g = torch.Generator().manual_seed(seed)
    predicted = (true + 0.1 * torch.randn(true.shape, generator=g)).clamp(0.0, 1.0)  # an unbiased, noisy predictor
    router = CalibratedRouter().fit(predicted, true, t, target_compliance=target)
    routes = router.route(predicted, t)
    assert compliance(routes, true, t) >= target
    # Never beyond the margin that sends everyone to the backbone (past the last crossing).
    assert router.margin(t) <= t - float(predicted.min()) + 1e-5


def test_calibrated_margin_is_the_smallest_that_reaches_the_target():
    # One exit; predictions exact except for a few optimistic ones: 15 of 20 inputs have true
    # LPIPS 0.05 (fine on the exit), 5 have true 0.3 > T = 0.2 but are predicted 0.10, 0.12, ..., 0.18.
    true = torch.tensor([[0.05]] * 15 + [[0.3]] * 5)
    predicted = torch.tensor([[0.05]] * 15 + [[0.10], [0.12], [0.14], [0.16], [0.18]])
    assert compliance(ThresholdRouter().route(predicted, 0.2), true, 0.2) == pytest.approx(0.75)
    # 90% needs the three highest optimists on the backbone: 0.14 + m > 0.2, i.e. m just above 0.06.
    router = CalibratedRouter().fit(predicted, true, 0.2, target_compliance=0.9, finite_sample=False)
    assert router.margin(0.2) == pytest.approx(0.06, abs=1e-5) and router.margin(0.2) > 0.06
    assert compliance(router.route(predicted, 0.2), true, 0.2) == pytest.approx(0.9)
    assert compliance(CalibratedRouter([0.2], [0.059]).route(predicted, 0.2), true, 0.2) == pytest.approx(0.85)
    # With the finite-sample correction the goal becomes ceil(21 * 0.9) / 20 = 0.95: one more goes.
    corrected = CalibratedRouter().fit(predicted, true, 0.2, target_compliance=0.9)
    assert corrected.margin(0.2) == pytest.approx(0.08, abs=1e-5)


def test_calibration_generalises_to_held_out_inputs_and_beats_the_raw_threshold():
    # An overconfident predictor (predicts 20% below the truth) from a fixed distribution: the raw
    # threshold rule misses T often; the margin fitted on one half holds on the other half.
    g = torch.Generator().manual_seed(0)
    n, e, t = 1200, 3, 0.2
    true = (
        torch.rand(n, 1, generator=g) * 0.3 + torch.tensor([[0.15, 0.08, 0.04]]) + 0.03 * torch.randn(n, e, generator=g)
    ).clamp(0.001, 1)
    predicted = 0.8 * true + 0.02 * torch.randn(n, e, generator=g)
    fit, held = slice(0, n // 2), slice(n // 2, n)
    raw = compliance(ThresholdRouter().route(predicted[held], t), true[held], t)
    router = CalibratedRouter().fit(predicted[fit], true[fit], [0.1, 0.2, 0.3], target_compliance=0.95)
    got = compliance(router.route(predicted[held], t), true[held], t)
    assert raw < 0.9 < 0.94 <= got
    assert router.margin(0.2) > 0  # it had to correct the optimism
    # Between fitted thresholds the larger neighbouring margin is used; outside, the nearest end's.
    assert router.margin(0.15) == max(router.margin(0.1), router.margin(0.2))
    assert router.margin(0.05) == router.margin(0.1) and router.margin(0.9) == router.margin(0.3)


def test_routers_round_trip_through_json():
    true = torch.rand(50, 3, generator=torch.Generator().manual_seed(1))
    routers = [
        ThresholdRouter(costs=[1, 2, 3, 4]),
        OracleRouter(costs=[1, 2, 3, 4], compliance=0.9),
        StaticRouter(1),
        CalibratedRouter(costs=[1, 2, 3, 4]).fit(true * 0.9, true, [0.2, 0.5], 0.9),
    ]
    for r in routers:
        back = router_from_config(json.loads(json.dumps(r.to_config())))
        assert type(back) is type(r) and back.to_config() == r.to_config()
        assert torch.equal(back.route(true, 0.3), r.route(true, 0.3))
    with pytest.raises(ValueError, match="kind"):
        router_from_config({"kind": "magic"})


# --- The PAC guarantee (Learn-then-Test) -------------------------------------------------------


def _synthetic_table(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Three exits of decreasing true LPIPS and a predictor with Gaussian error (sd 0.03)."""
    true = torch.rand(n, 3, generator=g) * torch.tensor([0.2, 0.14, 0.08])
    return true + 0.03 * torch.randn(n, 3, generator=g), true


@pytest.mark.slow
def test_guarantee_holds_over_resampled_calibration_splits():
    from fiancee.routing import compliance

    g = torch.Generator().manual_seed(0)
    eps, delta, splits = 0.05, 0.1, 100
    test_pred, test_true = _synthetic_table(10000, g)  # stands in for the population
    failures = 0
    for _ in range(splits):
        pred, true = _synthetic_table(300, g)
        router = CalibratedRouter(costs=[1, 2, 3, 4]).fit_guarantee(pred, true, [0.1], eps, delta)
        failures += (1 - compliance(router.route(test_pred, 0.1), test_true, 0.1)) > eps
    # At most delta of the calibration draws may break the guarantee (binomial slack of ~2 sd).
    assert failures / splits <= delta + 2 * (delta * (1 - delta) / splits) ** 0.5


def test_guarantee_is_not_vacuous_and_round_trips():
    g = torch.Generator().manual_seed(1)
    pred, true = _synthetic_table(1000, g)
    router = CalibratedRouter(costs=[1, 2, 3, 4]).fit_guarantee(pred, true, [0.05, 0.1], 0.05, 0.1)
    routes = router.route(pred, 0.1)
    assert (routes < 3).float().mean() > 0.3  # it still uses the exits
    again = router_from_config(json.loads(json.dumps(router.to_config())))
    assert torch.equal(again.route(pred, 0.1), routes)
    assert "probability >= 0.9" in again.guarantee()


def test_guarantee_refuses_too_few_calibration_inputs():
    from fiancee.routing import guarantee_min_inputs

    assert guarantee_min_inputs(0.05, 0.1) == 45  # (1 - 0.05)^45 <= 0.1 < (1 - 0.05)^44
    pred, true = _synthetic_table(44, torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="at least 45 calibration inputs"):
        CalibratedRouter().fit_guarantee(pred, true, 0.1, 0.05, 0.1)
    with pytest.raises(ValueError, match="epsilon must be a number in"):
        CalibratedRouter().fit_guarantee(pred, true, 0.1, 0.0, 0.1)
