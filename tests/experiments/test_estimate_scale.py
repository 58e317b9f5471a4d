"""Sweep estimates with replicas (simulated behind their router) and on a local Ray cluster."""

from __future__ import annotations

import os

import pytest

from common.records import TrialConfig
from experiments.predict.estimate import MODEL_LOAD_S, estimate_sweep_s, simulate_trial_s
from experiments.predict.simulate import PRIORS
from experiments.spec.grid import parse_spec
from experiments.spec.profiles import load_profile


def test_a_local_ray_cluster_divides_trial_time_by_its_slots():
    profile = load_profile("chat")
    local = estimate_sweep_s(parse_spec({"concurrency": [8]}), profile)
    on_ray = estimate_sweep_s(parse_spec({"concurrency": [8], "executor": "ray"}), profile)
    slots = len(os.sched_getaffinity(0))
    assert on_ray - MODEL_LOAD_S == pytest.approx((local - MODEL_LOAD_S) / slots)


def test_replicas_are_simulated_behind_their_router():
    # Twice the users on two replicas: about one replica's time, not twice it.
    profile, cost = load_profile("chat"), PRIORS["builtin:tiny"]
    one = simulate_trial_s(TrialConfig("continuous", 4, 0.0, concurrency=8), profile, 48, cost)
    two = simulate_trial_s(TrialConfig("continuous", 4, 0.0, concurrency=16, replicas=2,
                                       router="round_robin"), profile, 96, cost)
    single = simulate_trial_s(TrialConfig("continuous", 4, 0.0, concurrency=16), profile, 96, cost)
    assert two < 0.7 * single and two == pytest.approx(one, rel=0.3)
