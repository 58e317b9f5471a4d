"""Predicted trials: the cost-model fit recovers known coefficients, predictions of a simulated
'measurement' are exact, and the search plan keeps each policy's best."""

from __future__ import annotations

import pytest

from common.records import SLO, TrialConfig
from engine.core import StepRecord
from engine.simulate import CostModel
from experiments.predict.simulate import (
    fit_cost_model,
    fit_line,
    prediction_details,
    simulate_records,
    simulate_trial,
    step_summary,
    steps_of_summary,
)
from experiments.search.capacity import SKIPPED, knob_label, run_search
from experiments.search.capacity_plan import make_plan, predicted_capacities
from experiments.spec.grid import parse_spec
from experiments.spec.profiles import Profile

MS = 1e-3
TRUE = CostModel(prefill_base_s=6 * MS, prefill_per_token_s=0.2 * MS,
                 decode_base_s=5 * MS, decode_per_seq_s=0.4 * MS)
PRIOR = CostModel(1 * MS, 1 * MS, 1 * MS, 1 * MS)
PROFILE = Profile.model_validate({
    "name": "p", "prompt_tokens": {"kind": "uniform", "min": 8, "max": 64},
    "output_tokens": {"kind": "uniform", "min": 4, "max": 16},
    "arrival": {"mode": "closed", "concurrency": 4},
    "slos": {"ttft_ms": {"percentile": "p90", "max_ms": 60.0},
             "tpot_ms": {"percentile": "p90", "max_ms": 9.0}}, "warmup_requests": 2})
SLOS = [SLO("ttft_ms", "p90", 60.0), SLO("tpot_ms", "p90", 9.0)]


def true_steps() -> list[StepRecord]:
    config = TrialConfig("continuous", 8, 0.0, concurrency=8)
    return simulate_records(config, PROFILE, 40, TRUE)[2]


def test_fit_recovers_known_coefficients_from_synthetic_steps():
    cost = fit_cost_model(true_steps(), PRIOR)
    for name in ("prefill_base_s", "prefill_per_token_s", "decode_base_s", "decode_per_seq_s"):
        assert getattr(cost, name) == pytest.approx(getattr(TRUE, name), rel=1e-6), name


def test_fit_from_stored_summary_is_the_same():
    summary = step_summary(true_steps())
    cost = fit_cost_model(steps_of_summary(summary), PRIOR)
    assert cost.decode_per_seq_s == pytest.approx(TRUE.decode_per_seq_s, rel=1e-6)
    assert cost.prefill_per_token_s == pytest.approx(TRUE.prefill_per_token_s, rel=1e-6)


def test_one_batch_shape_keeps_the_prior_slope():
    # Only batch-4 decode steps: the slope is not identifiable, the level is.
    steps = [StepRecord(0.0, (5 + 0.4 * 4) * MS, "decode", 4, 4)] * 5
    base, slope = fit_line([4] * 5, [s.duration_s for s in steps], (0.0, 0.4 * MS))
    assert slope == 0.4 * MS and base == pytest.approx(5 * MS)
    assert fit_line([1.0], [1.0], (7.0, 8.0)) == (7.0, 8.0)  # too few points: the prior


def test_prediction_of_a_simulated_measurement_is_exact():
    config = TrialConfig("continuous", 8, 0.0, rate=20.0)
    measured = simulate_trial(config, PROFILE, 40, TRUE, SLOS)
    details = prediction_details(config, PROFILE, 40, 0, SLOS, TRUE, measured, true_steps())
    assert details.error and all(abs(e) < 1e-9 for e in details.error.values())
    assert details.cost_model["decode_base_ms"] == pytest.approx(5.0)


def test_plan_starts_at_predictions_and_keeps_each_policys_best():
    spec = parse_spec({"profile": "chat", "policies": ["static", "continuous"],
                       "batch_sizes": [1, 8], "max_wait_ms": [0], "requests": 24,
                       "search": {"load": "rate", "keep_ratio": 0.9}})
    predicted = predicted_capacities(spec, PROFILE, TRUE, SLOS)
    calib = TrialConfig("continuous", 8, 0.0)
    plan = make_plan(spec, PROFILE, TRUE, SLOS, calib, 3.0)
    assert plan.predicted == predicted and plan.start[knob_label(calib)] == 3.0
    values = plan.predicted_value
    for policy in ("static", "continuous"):
        mine = [k for k in predicted if k.startswith(policy)]
        best_cap = max(predicted[k] for k in mine)
        tied = [k for k in mine if predicted[k] == best_cap]
        # one config per policy is always kept: of those tied on capacity, the best value
        keeper = max(tied, key=lambda k: values[k])
        for label in mine:
            kept = label in plan.start
            assert kept == (predicted[label] >= 0.9 * max(predicted.values()) or label == keeper
                            or label == knob_label(calib))
    # both static configs tie at the lower capacity: only one of them is measured
    assert sum(k.startswith("static") for k in plan.start) == 1
    replayed = run_search(spec, PROFILE, [], plan=plan)
    assert {knob_label(r.config) for r in replayed if r.capacity.status == SKIPPED} == set(plan.skipped)


def test_at_the_largest_load_only_configs_that_can_win_the_tie_are_measured():
    # 8 users are well within these SLOs for every batch size: every config passes at the
    # limit, so capacity ties and the predicted objective value there decides.
    spec = parse_spec({"profile": "chat", "policies": ["continuous"], "batch_sizes": [1, 2, 4, 8],
                       "max_wait_ms": [0, 20], "requests": 24,
                       "search": {"load": "concurrency", "max_load": 8, "keep_ratio": 0.0}})
    loose = [SLO("ttft_ms", "p90", 1e6), SLO("tpot_ms", "p90", 1e6)]
    calib = TrialConfig("continuous", 8, 0.0)
    plan = make_plan(spec, PROFILE, TRUE, loose, calib, 8.0)
    assert set(plan.predicted.values()) == {8.0}
    values = plan.predicted_value
    top = max(values.values())
    assert values["continuous b1 w0ms"] < 0.85 * top <= values["continuous b8 w0ms"]
    for label, value in values.items():
        if value < 0.85 * top:
            assert label not in plan.start and "largest load" in plan.skipped[label]
    # closed loop at the limit: the queue is never empty, so the wait changes nothing; the
    # twin of the calibration config is not measured again
    assert values["continuous b8 w20ms"] == pytest.approx(values["continuous b8 w0ms"])
    assert plan.start == {"continuous b8 w0ms": 8.0}
    assert plan.skipped["continuous b8 w20ms"].startswith("predicted the same as continuous b8 w0ms")


def test_an_overloaded_open_loop_prediction_is_saturated_like_a_measured_one():
    light = simulate_trial(TrialConfig("continuous", 8, 0.0, rate=5.0), PROFILE, 40, TRUE, SLOS)
    flood = simulate_trial(TrialConfig("continuous", 8, 0.0, rate=1000.0), PROFILE, 40, TRUE, SLOS)
    assert not light.saturated and flood.saturated
    closed = simulate_trial(TrialConfig("continuous", 8, 0.0, concurrency=64), PROFILE, 40, TRUE, SLOS)
    assert not closed.saturated  # a closed loop throttles itself: never saturated


def test_with_loose_slos_the_predicted_rate_capacity_stops_where_the_queue_grows():
    # An E2E SLO of 100 s is met even by a flood of 40 requests: only saturation bounds it.
    loose = [SLO("e2e_ms", "p99", 100_000.0)]
    spec = parse_spec({"model": "builtin:tiny", "profile": "chat", "policies": ["continuous"],
                       "batch_sizes": [8], "max_wait_ms": [0], "requests": 40,
                       "search": {"load": "rate", "predict": False, "start_load": 1.0}})
    (capacity,) = predicted_capacities(spec, PROFILE, TRUE, loose).values()
    flood = simulate_trial(TrialConfig("continuous", 8, 0.0, rate=1024.0), PROFILE, 40, TRUE, loose)
    assert flood.slo_attainment == 1.0  # without the rule it would "carry" the search's limit
    assert 1.0 < capacity < 1024.0
    at = simulate_trial(TrialConfig("continuous", 8, 0.0, rate=capacity), PROFILE, 40, TRUE, loose)
    assert not at.saturated
