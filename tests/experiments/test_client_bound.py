"""Every trial checks itself: the client-lag rule (pure), its place in a trial, and flagged
points kept out of frontiers and recommendations."""

from __future__ import annotations

import time

import pytest

from common.records import SLO, ClientLag, RequestRecord, TrialConfig, TrialRecord
from engine.config import SchedulerConfig
from engine.engine import Engine
from engine.sequence import Sequence
from experiments.analysis.metrics import compute_trial_metrics
from experiments.analysis.pareto import aggregate, classify, trial_frontier
from experiments.analysis.recommend import recommend
from experiments.load.client_stats import (
    ClientStats,
    check_client,
    effective_send_lags_s,
    lag_limit_ms,
    with_client_check,
)
from experiments.run.trial import run_trial
from experiments.spec.profiles import parse_profile_yaml


def req(i: int, scheduled: float, sent: float, first: float = 0.05, done: float = 0.1) -> RequestRecord:
    return RequestRecord(i, scheduled, sent, None, (scheduled + first,), scheduled + done, 4, 1)


def test_the_limit_is_max_of_1ms_and_2pct_of_p50_ttft() -> None:
    assert lag_limit_ms(None) == 1.0 and lag_limit_ms(10.0) == 1.0 and lag_limit_ms(400.0) == 8.0


def test_on_time_client_is_not_client_bound() -> None:
    records = [req(i, i * 0.1, i * 0.1 + 0.0002) for i in range(100)]
    verdict = check_client(records, ClientStats(loop_lag_s=[0.0001] * 50), ttft_p50_ms=50.0)
    assert not verdict.is_client_bound and verdict.reason is None
    assert verdict.send_lag_ms == pytest.approx((0.2, 0.2, 0.2))


def test_late_sends_or_a_lagging_loop_make_it_client_bound() -> None:
    late = [req(i, i * 0.1, i * 0.1 + (0.005 if i % 5 == 0 else 0.0)) for i in range(100)]
    verdict = check_client(late, None, ttft_p50_ms=50.0)  # p90 send lag 5 ms > 1 ms
    assert verdict.is_client_bound and "p90 send lag 5.00 ms > 1.00 ms" in verdict.reason
    rare = [req(i, i * 0.1, i * 0.1 + (0.005 if i % 50 == 0 else 0.0)) for i in range(100)]
    assert not check_client(rare, None, ttft_p50_ms=50.0).is_client_bound  # an OS stall, not a trend
    on_time = [req(i, i * 0.1, i * 0.1) for i in range(100)]
    busy = ClientStats(loop_lag_s=[0.0001] * 40 + [0.004] * 60, cpu_s=1.9, wall_s=2.0, num_workers=1)
    verdict = check_client(on_time, busy, ttft_p50_ms=100.0)  # limit 2 ms
    assert verdict.is_client_bound and "event-loop lag" in verdict.reason and "CPU 95%" in verdict.reason
    assert not check_client(on_time, busy, ttft_p50_ms=300.0).is_client_bound  # limit 6 ms
    stalled = ClientStats(loop_lag_s=[0.0001] * 80 + [0.004] * 20)  # the OS, now and then: a tail
    assert not check_client(on_time, stalled, ttft_p50_ms=100.0).is_client_bound


def test_a_loop_that_stalls_for_a_good_part_of_the_run_is_client_bound() -> None:
    # vLLM on 2 cores: a median lag of 0.1 ms, but stalls of 0.3-1 s that held every stream's
    # chunks (stamped all at once) and every user's next send.
    records = [req(i, i * 0.1, i * 0.1 + 0.0002) for i in range(40)]
    lags = [0.0001] * 400 + [0.3, 0.45, 1.0]
    stalled = check_client(records, ClientStats(loop_lag_s=lags, wall_s=5.0, num_workers=1), 40.0)
    assert stalled.is_client_bound and "event loop stalled 35% of the run" in stalled.reason
    assert stalled.details.stalled_share == pytest.approx(0.35)
    # Two workers, one 60 ms hiccup in 5 s each: 1.2% of the run, the OS's ordinary noise.
    hiccups = ClientStats(loop_lag_s=[0.0001] * 800 + [0.06, 0.06], wall_s=5.0, num_workers=2)
    assert not check_client(records, hiccups, 40.0).is_client_bound


def test_a_send_late_within_a_running_step_costs_nothing() -> None:
    steps = [(0.0, 0.010), (0.010, 0.020), (0.030, 0.040)]  # busy 0-20 ms, idle 20-30, busy 30-40
    records = [req(0, 0.002, 0.009),  # due mid-step, sent before it ended: admitted as if on time
               req(1, 0.012, 0.023),  # due mid-step, sent 3 ms after it ended
               req(2, 0.025, 0.027),  # due while idle: the whole 2 ms
               req(3, 0.041, 0.041)]
    assert effective_send_lags_s(records, steps) == pytest.approx([0.0, 0.003, 0.002, 0.0])
    assert effective_send_lags_s(records, []) == pytest.approx([0.007, 0.011, 0.002, 0.0])


def test_the_verdict_lands_in_the_metrics_warmup_not_judged() -> None:
    warmup = [req(i, 0.0, 0.050) for i in range(10)]  # 50 ms late: connection set-up, not judged
    measured = [req(i, i * 0.1, i * 0.1 + 0.0003) for i in range(10, 50)]
    metrics = compute_trial_metrics(measured, [], [], None, False, warmup)
    checked = with_client_check(metrics, measured, warmup, None, num_warmup=10)
    assert not checked.client_bound and checked.client_lag_ms == ClientLag(*[pytest.approx(0.3)] * 3)
    assert checked.details.client.limit_ms == 1.0
    flat = checked.flat()
    assert flat["client_bound"] is False and flat["client_lag_ms_p99"] == pytest.approx(0.3)
    assert with_client_check(metrics, measured, warmup, None, num_warmup=0).client_bound


# -- flagged points stay out of frontiers and recommendations -----------------------------------


def trial(trial_id: int, batch_size: int, thr: float, e2e: float, client_bound: bool = False) -> TrialRecord:
    metrics = {"output_tokens_per_s": thr, "goodput_rps": thr / 10, "e2e_ms_p90": e2e, "ttft_ms_p90": e2e / 4,
               "saturated": False, "client_bound": client_bound,
               # the evidence the SLO rule reads: every request met the SLOs
               "requests_completed": 100, "requests_failed": 0, "slo_attainment": 1.0,
               "client_bound_reason": "p99 send lag 9.00 ms > 1.00 ms" if client_bound else None}
    config = TrialConfig("continuous", batch_size, 0.0, concurrency=8)
    return TrialRecord(trial_id, 1, config, "done", metrics)


def test_client_bound_points_never_enter_a_frontier() -> None:
    trials = [trial(1, 1, 100, 50), trial(2, 4, 300, 80), trial(3, 8, 900, 60, client_bound=True)]
    assert [t.trial_id for t in trial_frontier(trials, "output_tokens_per_s", "e2e_ms_p90")] == [1, 2]
    points = aggregate(trials)
    assert classify(points, "output_tokens_per_s", "e2e_ms_p90") == ["frontier", "frontier", "client_bound"]
    assert points[2].client_bound and "send lag" in points[2].client_bound_reason


def test_client_bound_points_are_never_recommended() -> None:
    trials = [trial(1, 1, 100, 50), trial(2, 4, 300, 80), trial(3, 8, 900, 60, client_bound=True)]
    for slos in ([], [SLO("e2e_ms", "p90", 100.0)]):
        assert recommend(trials, "max_throughput", slos).config.batch_size == 4
    rec = recommend([trial(3, 8, 900, 60, client_bound=True)], "max_throughput", [])
    assert rec.config is None and "client-bound" in rec.explanation
    # the answer names one trial's reason and the remedy a started server has
    assert "(one: p99 send lag 9.00 ms > 1.00 ms)" in rec.explanation and "--server-cpus" in rec.explanation


def test_the_dashboard_draws_them_hollow_with_the_reason() -> None:
    from app.dashboard.charts import frontier_figure

    points = aggregate([trial(1, 1, 100, 50), trial(3, 8, 900, 60, client_bound=True)])
    labels = classify(points, "output_tokens_per_s", "e2e_ms_p90")
    fig = frontier_figure(points, labels, "output_tokens_per_s", "e2e_ms_p90")
    [trace] = [t for t in fig.data if t.name == "continuous"]
    assert list(trace.marker.symbol) == ["circle", "circle-open"]
    assert "not on any frontier: p99 send lag" in trace.text[1]


# -- the in-process load generator checks itself too --------------------------------------------


class FixedStepExecutor:
    def prefill(self, seqs: list[Sequence]) -> list[int]:
        time.sleep(0.002)
        return [5] * len(seqs)

    def decode(self, seqs: list[Sequence]) -> list[int]:
        time.sleep(0.001)
        return [5] * len(seqs)

    def release(self, seqs: list[Sequence]) -> None:
        pass


def test_in_process_trials_carry_the_check() -> None:
    profile = parse_profile_yaml("name: t\nprompt_tokens: {kind: fixed, value: 4}\n"
                                 "output_tokens: {kind: fixed, value: 3}\n"
                                 "arrival: {mode: closed, concurrency: 2}\nwarmup_requests: 2\n"
                                 "objective: max_throughput\n", "t")
    with Engine(FixedStepExecutor(), SchedulerConfig(), kv_budget_tokens=10**6) as engine:
        result = run_trial(engine, TrialConfig("continuous", 4, 0.0, concurrency=2), profile, 20, seed=0,
                           slos=[], vocab_size=100, max_context_tokens=64, avoid_ids=[0])
    m = result.metrics
    assert m.client_lag_ms is not None and m.client_lag_ms.max < 1000
    assert m.details.client.extra["process"].startswith("in-process")
    # Closed loop in-process: sends come from the engine thread; nothing to judge.
    assert not m.client_bound and m.details.client.send_lag_judged is False
