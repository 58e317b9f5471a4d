"""Goodput vs replicas: weak-scaling configs, simulated laws, measured points kept apart."""

from __future__ import annotations

import pytest

from common.records import TrialConfig, TrialRecord
from engine.simulate import CostModel
from experiments.analysis.scaleout import (
    measured_points,
    per_replica,
    scaled,
    simulate_scaling,
    sweep_cost_model,
)
from experiments.spec.profiles import Profile

MS = 1e-3
COST = CostModel(8 * MS, 0.1 * MS, 4 * MS, 0.3 * MS)
FIXED = Profile(name="fixed", prompt_tokens={"kind": "uniform", "min": 16, "max": 16},
                output_tokens={"kind": "uniform", "min": 8, "max": 8},
                arrival={"mode": "closed", "concurrency": 4},
                slos={"e2e_ms": {"percentile": "p90", "max_ms": 10_000}}, warmup_requests=0)


def test_scaled_multiplies_the_load_and_per_replica_divides_it_back():
    rate = TrialConfig("continuous", 8, 0.0, rate=3.0)
    users = TrialConfig("continuous", 8, 0.0, concurrency=4)
    assert scaled(rate, 4, "round_robin") == TrialConfig("continuous", 8, 0.0, rate=12.0,
                                                         replicas=4, router="round_robin")
    assert scaled(users, 1, "round_robin") == users
    assert per_replica(scaled(users, 8, "least_outstanding")) == users
    assert per_replica(scaled(rate, 4, "power_of_two")).rate == pytest.approx(3.0)


def test_identical_requests_in_closed_loop_scale_exactly_with_replicas():
    # Every user's request is the same length and replicas are identical: N replicas with N x
    # the users finish N x the requests per second (round robin keeps them in lock step).
    slos = []
    points = simulate_scaling(TrialConfig("continuous", 4, 0.0, concurrency=4), FIXED, slos, COST,
                              "round_robin", counts=(1, 2, 8), requests_per_replica=16)
    one = points[0].requests_per_s
    assert [p.replicas for p in points] == [1, 2, 8]
    assert [p.requests_per_s / one for p in points] == pytest.approx([1, 2, 8], rel=1e-9)
    assert {p.source for p in points} == {"simulated"} and points[1].router == "round_robin"
    assert {p.config for p in points} == {"continuous/b4/w0ms"}


def _record(trial_id: int, config: TrialConfig, goodput: float, details: dict | None = None,
            status: str = "done") -> TrialRecord:
    return TrialRecord(trial_id, 1, config, status, {"goodput_rps": goodput, "requests_per_s": goodput},
                       details=details or {})


def test_measured_points_name_their_per_replica_load_and_skip_failures():
    trials = [_record(1, TrialConfig("static", 4, 5.0, rate=4.0), 3.5),
              _record(2, TrialConfig("static", 4, 5.0, rate=8.0, replicas=2, router="round_robin"), 6.0),
              _record(3, TrialConfig("static", 4, 5.0, rate=8.0), 0.0, status="failed")]
    points = measured_points(trials)
    assert [(p.trial_id, p.replicas, p.load_per_replica, p.source) for p in points] == [
        (1, 1, "poisson@4.00", "measured"), (2, 2, "poisson@4.00", "measured")]
    assert points[1].config == "static/b4/w5ms" and points[1].router == "round_robin"


def test_sweep_cost_model_fits_the_stored_steps_or_keeps_the_prior():
    prior = CostModel(1, 2, 3, 4)
    # Decode steps at 1, 2 and 4 rows taking 5 + 1 ms per row; prefills of 10 + 0.1 ms/token.
    steps = {"decode": [[n, 3, (5 + n) * MS] for n in (1, 2, 4)],
             "prefill": [[t, (10 + 0.1 * t) * MS] for t in (16, 64, 256)]}
    trials = [_record(1, TrialConfig("static", 1, 0.0, rate=1.0), 1.0, {"prediction": {"steps": steps}}),
              _record(2, TrialConfig("static", 1, 0.0, rate=2.0), 1.0)]
    cost, num = sweep_cost_model(trials, prior)
    assert num == 1
    assert (cost.decode_base_s, cost.decode_per_seq_s) == pytest.approx((5 * MS, 1 * MS))
    assert (cost.prefill_base_s, cost.prefill_per_token_s) == pytest.approx((10 * MS, 0.1 * MS))
    assert sweep_cost_model(trials[1:], prior) == (prior, 0)
