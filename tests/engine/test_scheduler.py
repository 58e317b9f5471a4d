"""Scheduler policies on the virtual clock: exact, hand-computed times."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, SchedulerConfig
from engine.scheduler import Scheduler
from engine.sequence import SamplingParams, SeqStatus, Sequence
from engine.simulate import CostModel, Simulator

MS = 1e-3
# Prefill 10 ms, decode 5 ms, whatever the batch shape: easy to compute by hand.
FLAT = CostModel(prefill_base_s=10 * MS, decode_base_s=5 * MS)


def run(policy: str, batch: int, wait_ms: float, arrivals: list[tuple[float, int, int]],
        cost: CostModel = FLAT, kv_budget: int = 1 << 30) -> list[Sequence]:
    """arrivals: (at_ms, prompt_tokens, max_new_tokens)."""
    sim = Simulator(SchedulerConfig(policy, batch, wait_ms), cost, kv_budget)
    for at_ms, num_prompt, num_new in arrivals:
        sim.submit_at(at_ms * MS, num_prompt, num_new)
    return sim.run()


def ms(values: list[float | None]) -> list[float | None]:
    return [None if v is None else round(v / MS, 6) for v in values]


def test_static_dispatches_when_oldest_waited_max_wait():
    # max_batch_size 4, max_wait 20 ms, arrivals at 0, 5, 30 ms: the first batch of two
    # dispatches at 20 ms; the third waits its own 20 ms (until 50), the batch being done at 40.
    a, b, c = run("static", 4, 20, [(0, 8, 3), (5, 8, 3), (30, 8, 3)])
    assert ms([a.admitted_s, b.admitted_s, c.admitted_s]) == [20, 20, 50]
    assert ms(a.token_times_s) == [30, 35, 40] and ms([a.done_s]) == [40]
    assert ms(c.token_times_s) == [60, 65, 70]


def test_static_dispatches_at_once_when_batch_is_full():
    a, b = run("static", 2, 100, [(0, 8, 1), (5, 8, 1)])
    assert ms([a.admitted_s, b.admitted_s]) == [5, 5]
    assert ms([a.done_s, b.done_s]) == [15, 15]


def test_static_zero_wait_dispatches_whatever_waits():
    (a,) = run("static", 8, 0, [(3, 8, 2)])
    assert ms([a.admitted_s, a.first_token_s, a.done_s]) == [3, 13, 18]


def test_static_batch_runs_to_completion_before_the_next_forms():
    # b arrives 1 ms after a's batch started; it must wait for the whole batch (a: 5 tokens).
    a, b = run("static", 4, 0, [(0, 8, 5), (1, 8, 1)])
    assert ms(a.token_times_s) == [10, 15, 20, 25, 30]
    assert ms([b.admitted_s, b.done_s]) == [30, 40]


def test_static_takes_at_most_max_batch_size_in_fifo_order():
    seqs = run("static", 2, 0, [(0, 8, 1), (0, 8, 1), (0, 8, 1)])
    assert ms([s.admitted_s for s in seqs]) == [0, 0, 10]


def test_continuous_joins_after_the_current_decode_step():
    # a decodes alone; b arrives at 12 ms, joins at the step boundary at 15 ms (prefill to 25),
    # then both decode together; a stalls during b's prefill (no chunked prefill).
    a, b = run("continuous", 4, 0, [(0, 8, 5), (12, 8, 3)])
    assert ms(a.token_times_s) == [10, 15, 30, 35, 40]
    assert ms([b.admitted_s]) == [15]
    assert ms(b.token_times_s) == [25, 30, 35]
    assert ms([a.done_s, b.done_s]) == [40, 35]


def test_continuous_max_wait_holds_arrivals_back_to_join_in_groups():
    # a alone waits its 20 ms too; everything waiting when a group is due joins together.
    a, b, c = run("continuous", 4, 20, [(0, 8, 8), (12, 8, 8), (25, 8, 1)])
    assert ms([a.admitted_s, b.admitted_s]) == [20, 20]
    # a, b: prefill 20-30, decode steps end 35, 40, 45, ...; c is due at 45 and joins then.
    assert ms([c.admitted_s, c.done_s]) == [45, 55]


def test_continuous_admits_early_when_enough_wait_to_fill_free_slots():
    a, b = run("continuous", 2, 1000, [(0, 8, 1), (2, 8, 1)])
    assert ms([a.admitted_s, b.admitted_s]) == [2, 2]


def test_continuous_refills_freed_slots_every_step():
    # batch 1: the second request starts as soon as the first leaves.
    a, b = run("continuous", 1, 0, [(0, 8, 2), (0, 8, 2)])
    assert ms([a.done_s, b.admitted_s, b.done_s]) == [15, 15, 30]


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_kv_budget_limits_the_batch(policy: str):
    # each needs 30 + 10 = 40 tokens; a budget of 100 holds 2 rows (80), not 3 (120).
    seqs = run(policy, 8, 0, [(0, 30, 10)] * 3, kv_budget=100)
    assert ms([s.admitted_s for s in seqs]) == [0, 0, 55]


@pytest.mark.parametrize("policy", ["static", "continuous"])
def test_request_that_can_never_fit_fails_without_wedging_the_queue(policy: str):
    bad, good = run(policy, 8, 0, [(0, 90, 20), (1, 8, 1)], kv_budget=100)
    assert bad.status is SeqStatus.FAILED and "KV budget is 100" in bad.error
    assert ms([bad.done_s]) == [0]
    assert good.status is SeqStatus.FINISHED and ms([good.done_s]) == [11]


def test_padded_footprint_counts_the_longest_row():
    # a short (10 tokens) and a long (60) request: 2 x 60 = 120 > 100, so they cannot share.
    short, long_ = run("continuous", 8, 0, [(0, 5, 5), (0, 50, 10)], kv_budget=100)
    assert ms([short.admitted_s, long_.admitted_s]) == [0, 30]


def test_schedule_reads_no_clock_and_idles_with_a_wake_time():
    sched = Scheduler(SchedulerConfig("static", 4, 20), kv_budget_tokens=1000)
    seq = Sequence(0, [1, 2], SamplingParams(max_new_tokens=1), scheduled_s=1.0, sent_s=1.0)
    sched.add(seq)
    plan = sched.schedule(now_s=1.005)
    assert plan.is_idle and plan.wake_at_s == pytest.approx(1.020)
    assert sched.schedule(now_s=1.020).prefill == (seq,)


@pytest.mark.parametrize("kwargs", [
    {"policy": "dynamic"}, {"max_batch_size": 0}, {"max_batch_size": -3},
    {"max_wait_ms": -1}, {"max_wait_ms": float("nan")},
])
def test_bad_scheduler_config_is_rejected(kwargs: dict):
    with pytest.raises(ConfigError):
        SchedulerConfig(**kwargs)


@pytest.mark.parametrize("prompt, max_new, needle", [
    ([], 4, "empty prompt"), ([1] * 60, 50, "context of 100 tokens")])
def test_requests_that_can_never_run_fail_alone(prompt: list[int], max_new: int, needle: str):
    sched = Scheduler(SchedulerConfig("continuous", 4, 0), kv_budget_tokens=1000, max_model_len=100)
    bad = Sequence(0, prompt, SamplingParams(max_new_tokens=max_new), 0.0, 0.0)
    good = Sequence(1, [1, 2], SamplingParams(max_new_tokens=2), 0.0, 0.0)
    assert not sched.add(bad) and bad.status is SeqStatus.FAILED and needle in bad.error
    assert sched.add(good) and sched.schedule(0.0).prefill == (good,)
