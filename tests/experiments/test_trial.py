"""Trials on a real Engine with a fake executor (fixed step times): laws and ratios, no speeds."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from common.records import SLO, TrialConfig
from engine.config import SchedulerConfig
from engine.engine import Engine
from engine.sequence import Sequence
from experiments.analysis.metrics import littles_law_concurrency
from experiments.load.workload import make_requests
from experiments.run.trial import measure_baseline, run_trial
from experiments.spec.profiles import Profile, parse_profile_yaml

PROFILE = parse_profile_yaml("""\
name: t
prompt_tokens: {kind: uniform, min: 4, max: 16}
output_tokens: {kind: uniform, min: 2, max: 6}
arrival: {mode: closed, concurrency: 4}
slos:
  ttft_ms: {percentile: p90, max_x_baseline: 3}
warmup_requests: 4
""", "t")
MODEL = {"vocab_size": 100, "max_context_tokens": 64, "avoid_ids": [0, 1]}


class FixedStepExecutor:
    """Prefill 2 ms, decode 1 ms, whatever the batch; always token 5."""

    def prefill(self, seqs: list[Sequence]) -> list[int]:
        time.sleep(0.002)
        return [5] * len(seqs)

    def decode(self, seqs: list[Sequence]) -> list[int]:
        time.sleep(0.001)
        return [5] * len(seqs)

    def release(self, seqs: list[Sequence]) -> None:
        pass


@pytest.fixture
def engine() -> Iterator[Engine]:
    with Engine(FixedStepExecutor(), SchedulerConfig(), kv_budget_tokens=10**6) as eng:
        yield eng


def trial(engine: Engine, config: TrialConfig, num_requests: int = 40, seed: int = 0,
          profile: Profile = PROFILE, **kwargs):
    return run_trial(engine, config, profile, num_requests, seed=seed,
                     slos=[SLO("ttft_ms", "p90", 1000.0)], **MODEL, **kwargs)


@pytest.mark.parametrize(("policy", "batch_size"), [("continuous", 4), ("static", 2)])
def test_closed_loop_obeys_littles_law(engine: Engine, policy: str, batch_size: int) -> None:
    # Few requests on purpose: warm-up and cooldown work in the window counts, so no edge bias.
    result = trial(engine, TrialConfig(policy, batch_size, 0.0, concurrency=4), num_requests=24)
    m = result.metrics
    assert m.requests_completed == 24 and not m.saturated and not result.was_cut
    assert littles_law_concurrency(m) == pytest.approx(4.0, rel=0.10)
    assert 1.0 <= m.mean_batch_size <= batch_size
    assert engine.sched_config == SchedulerConfig(policy, batch_size, 0.0)


def test_warmup_requests_are_excluded(engine: Engine) -> None:
    result = trial(engine, TrialConfig("continuous", 4, 0.0, concurrency=4), num_requests=12)
    assert [r.request_id for r in result.records] == list(range(4, 16))
    window_start = min(r.scheduled_s for r in result.records)
    assert result.metrics.duration_s == pytest.approx(
        max(r.done_s for r in result.records) - window_start)


def test_open_loop_beyond_capacity_is_saturated(engine: Engine) -> None:
    # Static batch 1: each request takes >= 2 ms + 1..5 ms, so capacity < 300 req/s.
    result = trial(engine, TrialConfig("static", 1, 0.0, rate=5000.0), num_requests=48)
    assert result.metrics.saturated
    assert result.metrics.requests_completed == 48


def test_light_open_loop_is_not_saturated(engine: Engine) -> None:
    result = trial(engine, TrialConfig("continuous", 4, 0.0, rate=40.0), num_requests=16)
    assert not result.metrics.saturated
    assert result.metrics.requests_completed == 16


def test_duration_limit_cuts_the_trial(engine: Engine) -> None:
    config = TrialConfig("continuous", 2, 0.0, concurrency=2)
    result = trial(engine, config, num_requests=5000, max_duration_s=0.2)
    assert result.was_cut
    assert 0 < result.metrics.requests_completed < 5000
    assert all(r.is_ok for r in result.records)  # cancelled ones are not measured
    assert engine.num_waiting == 0 and engine.num_running == 0  # nothing left in flight


def test_same_seed_same_lengths_and_arrivals(engine: Engine) -> None:
    config = TrialConfig("continuous", 4, 0.0, rate=200.0)
    runs = [trial(engine, config, num_requests=10, seed=s) for s in (7, 7, 8)]

    def shape(result) -> list[tuple[int, int, float]]:
        t0 = result.records[0].scheduled_s
        return [(r.num_prompt_tokens, r.num_output_tokens, round(r.scheduled_s - t0, 9))
                for r in result.records]
    assert shape(runs[0]) == shape(runs[1])
    assert shape(runs[0]) != shape(runs[2])


TOO_LONG = parse_profile_yaml("""\
name: c
prompt_tokens: {kind: choice, values: [8, 40], weights: [2, 1]}
output_tokens: {kind: fixed, value: 2}
arrival: {mode: closed, concurrency: 2}
objective: max_throughput
warmup_requests: 4
""", "c")


def test_failed_requests_are_counted() -> None:
    # 40-token prompts + 2 outputs exceed a 30-token KV budget: the engine fails them at once.
    specs = make_requests(TOO_LONG, 4 + 30, 0, **MODEL)[4:]
    num_too_long = sum(len(s.prompt_ids) == 40 for s in specs)
    assert 0 < num_too_long < 30
    with Engine(FixedStepExecutor(), SchedulerConfig(), kv_budget_tokens=30) as eng:
        result = trial(eng, TrialConfig("continuous", 2, 0.0, concurrency=2), num_requests=30,
                       profile=TOO_LONG)
    m = result.metrics
    assert (m.requests_failed, m.requests_completed) == (num_too_long, 30 - num_too_long)
    assert m.slo_attainment == pytest.approx((30 - num_too_long) / 30)  # failures are misses


def test_should_stop_marks_the_trial_stopped(engine: Engine) -> None:
    config = TrialConfig("continuous", 2, 0.0, concurrency=2)
    result = trial(engine, config, num_requests=5000, should_stop=lambda: True)
    assert result.was_stopped


def test_memory_hooks_are_called(engine: Engine) -> None:
    calls: list[str] = []
    result = trial(engine, TrialConfig("continuous", 4, 0.0, concurrency=2), num_requests=4,
                   memory=lambda: calls.append("peak") or 42.0,
                   reset_memory=lambda: calls.append("reset"))
    assert calls == ["reset", "peak"] and result.metrics.peak_memory_mb == 42.0


def test_trial_without_a_load_level_is_rejected(engine: Engine) -> None:
    with pytest.raises(ValueError, match="neither concurrency nor rate"):
        trial(engine, TrialConfig("continuous", 4, 0.0))


def test_baseline_is_unloaded_and_restores_the_config(engine: Engine) -> None:
    engine.reconfigure(SchedulerConfig("continuous", 8, 5.0))
    baseline = measure_baseline(engine, PROFILE, seed=0, num_requests=4, **MODEL)
    assert set(baseline) == {"ttft_ms", "tpot_ms", "e2e_ms"}
    assert 0 < baseline["ttft_ms"] < baseline["e2e_ms"]
    assert engine.sched_config == SchedulerConfig("continuous", 8, 5.0)
    assert engine.take_steps() == []  # baseline steps don't leak into the next trial
