"""Capacity read off a load grid: hand-made trials with known attainments, exact answers."""

from __future__ import annotations

from itertools import count

import pytest

from common.records import TrialConfig, TrialRecord
from experiments.analysis.answer import best, sentence
from experiments.analysis.grid_capacity import knobs, read_grid
from experiments.search.strategy import AT_LIMIT, DECIDED, INVALID, UNDECIDED, WITHIN_NOISE
from experiments.spec.profiles import load_profile

CHAT = load_profile("chat")  # max_goodput, attainment target 0.9
_ids = count(1)


def at(policy: str, batch: int, users: int, good: int, total: int = 100, rep: int = 0,
       **metrics) -> TrialRecord:
    """A closed-loop trial at `users` where `good` of `total` requests met every SLO."""
    config = TrialConfig(policy, batch, 0.0, concurrency=users, repetition=rep)
    m = {"requests_completed": total, "requests_failed": 0, "slo_attainment": good / total,
         "goodput_rps": float(users * 10), **metrics}
    return TrialRecord(next(_ids), 1, config, "done", m)


def one(caps, label: str):
    return next(c for c in caps if c.config.server_label.replace("/", " ") == label)


def test_capacity_is_the_last_level_met_before_the_first_miss():
    trials = [at("continuous", 8, 1, 100), at("continuous", 8, 2, 98), at("continuous", 8, 4, 95),
              at("continuous", 8, 8, 40), at("continuous", 8, 16, 0)]
    (cap,) = read_grid(CHAT, trials)
    assert cap.config == TrialConfig("continuous", 8, 0.0)
    assert (cap.capacity.capacity, cap.capacity.upper, cap.capacity.status) == (4.0, 8.0, DECIDED)
    assert cap.unit == "users" and cap.capacity.num_probes == 5
    assert cap.value_at_capacity == 40.0  # goodput measured at 4 users
    assert "met the target up to 4 users" in cap.capacity.reason
    assert "loads in between were not tried" in cap.capacity.reason
    assert cap.capacity.attainment[8.0].mean == pytest.approx(0.40)


def test_a_pass_above_a_miss_does_not_count():
    # Attainment is not monotone on a noisy machine: the reading stops at the first miss.
    trials = [at("static", 4, 1, 100), at("static", 4, 2, 50), at("static", 4, 4, 100)]
    (cap,) = read_grid(CHAT, trials)
    assert (cap.capacity.capacity, cap.capacity.upper) == (1.0, 2.0)
    # Between 1 and 2 users there is no other whole number of users to try.
    assert "in between" not in cap.capacity.reason
    assert cap.capacity.reason.startswith("met the target up to 1 user; attainment 50.0% at 2 users")
    assert sentence([cap], "chat").startswith("static b4 w0ms carries 1 user within the chat SLOs")


def test_a_miss_whose_interval_holds_the_target_is_within_noise():
    # 87 of 100 at 8 users: Wilson 90% interval ~[0.81, 0.92], which holds 0.9.
    trials = [at("continuous", 8, 4, 100), at("continuous", 8, 8, 87)]
    (cap,) = read_grid(CHAT, trials)
    assert (cap.capacity.capacity, cap.capacity.status) == (4.0, WITHIN_NOISE)
    assert cap.capacity.is_decided and "within noise" in cap.capacity.reason
    clear = read_grid(CHAT, [at("continuous", 8, 4, 100), at("continuous", 8, 8, 60)])[0]
    assert clear.capacity.status == DECIDED


def test_repetitions_are_pooled_at_one_level():
    # 85% and 95% of equal totals pool to exactly 90%: the target is met.
    trials = [at("continuous", 8, 4, 85, rep=0), at("continuous", 8, 4, 95, rep=1),
              at("continuous", 8, 8, 10)]
    (cap,) = read_grid(CHAT, trials)
    assert cap.capacity.capacity == 4.0
    assert cap.capacity.attainment[4.0].mean == pytest.approx(0.90)
    assert cap.capacity.attainment[4.0].num_total == 200


def test_met_at_every_level_is_at_least_the_largest_and_the_sentence_says_so():
    trials = [at("static", 16, 1, 100), at("static", 16, 32, 100), at("continuous", 16, 1, 100),
              at("continuous", 16, 32, 99, goodput_rps=400.0)]
    caps = read_grid(CHAT, trials)
    assert {c.capacity.status for c in caps} == {AT_LIMIT}
    assert all(c.capacity.capacity == 32.0 and c.capacity.upper is None for c in caps)
    top = best(caps)  # equal capacities: the higher goodput at that load wins
    assert top is not None and top.config.policy == "continuous"
    assert sentence(caps, "chat") == (
        "continuous b16 w0ms carries at least 32 users within the chat SLOs; static b16 w0ms "
        "carried as much but with a lower objective, beyond noise; the best static config at "
        "least 32")


def test_a_saturated_level_is_a_miss_whatever_its_attainment():
    rate = TrialConfig("continuous", 8, 0.0, rate=1.0)

    def trial(r: float, saturated: bool) -> TrialRecord:
        return TrialRecord(next(_ids), 1, TrialConfig("continuous", 8, 0.0, rate=r), "done",
                           {"requests_completed": 48, "requests_failed": 0, "slo_attainment": 1.0,
                            "saturated": saturated})
    (cap,) = read_grid(CHAT, [trial(1.0, False), trial(4.0, False), trial(16.0, True)])
    assert cap.config == knobs(rate)
    assert (cap.capacity.capacity, cap.capacity.upper, cap.capacity.status) == (4.0, 16.0, DECIDED)
    assert "the queue kept growing at 16 req/s (saturated; attainment 100.0% does not count)" \
        in cap.capacity.reason


def test_untrustworthy_levels_stop_the_reading():
    bound = at("continuous", 8, 8, 100, client_bound=True, client_bound_reason="send lag")
    (cap,) = read_grid(CHAT, [at("continuous", 8, 4, 100), bound, at("continuous", 8, 16, 100)])
    assert (cap.capacity.capacity, cap.capacity.status) == (4.0, UNDECIDED)
    assert "no evidence at 8 users (client-bound (send lag))" in cap.capacity.reason
    failed = TrialRecord(99, 1, TrialConfig("static", 1, 0.0, concurrency=1), "failed", {},
                         error="OOM")
    (first,) = read_grid(CHAT, [failed, at("static", 1, 2, 100)])
    assert (first.capacity.capacity, first.capacity.status) == (0.0, INVALID)
    assert best([first]) is None


def test_missing_at_the_lightest_level_is_zero_and_decided():
    (cap,) = read_grid(CHAT, [at("static", 1, 4, 10), at("static", 1, 8, 0)])
    assert (cap.capacity.capacity, cap.capacity.upper, cap.capacity.status) == (0.0, 4.0, DECIDED)
    assert "missed at the lightest level tried" in cap.capacity.reason
    assert best([cap]) is None


def test_open_loop_rates_and_trace_speedups_keep_their_unit():
    rate = TrialConfig("continuous", 8, 0.0, rate=2.5, burstiness=0.5)
    trial = TrialRecord(1, 1, rate, "done", {"requests_completed": 10, "requests_failed": 0,
                                             "slo_attainment": 1.0})
    (cap,) = read_grid(CHAT, [trial])
    assert (cap.unit, cap.capacity.capacity, cap.config) == ("req/s", 2.5, knobs(rate))
    trace = TrialConfig("continuous", 8, 0.0, rate=None, speedup=2.0)
    (cap,) = read_grid(CHAT, [TrialRecord(2, 1, trace, "done", {"requests_completed": 10,
                                                                 "slo_attainment": 1.0})])
    assert (cap.unit, cap.capacity.capacity) == ("x speed-up", 2.0)
    assert sentence([cap], "azure-conv").startswith(
        "continuous b8 w0ms carries at least 2x speed-up within the azure-conv SLOs")


def test_no_trials_no_configs():
    assert read_grid(CHAT, []) == []
