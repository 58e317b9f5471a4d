"""Load generation: seeded sampling (pure) and the closed/open-loop drivers on a real Engine."""

from __future__ import annotations

import time

import numpy as np
import pytest

from common.records import RequestRecord
from engine.config import SchedulerConfig
from engine.engine import Engine
from engine.sequence import SamplingParams, SeqStatus, Sequence
from experiments.loadgen import (
    RequestSpec,
    achieved_rate,
    clip_to_context,
    make_requests,
    offered_rate,
    open_loop_arrivals,
    record_from_sequence,
    run_closed_loop,
    run_open_loop,
    sample_lengths,
)
from experiments.profiles import (
    ChoiceLength,
    FixedLength,
    LogNormalLength,
    NormalLength,
    UniformLength,
    parse_profile_yaml,
)

PROFILE = parse_profile_yaml("""\
name: t
prompt_tokens: {kind: uniform, min: 4, max: 64}
output_tokens: {kind: choice, values: [2, 40], weights: [3, 1]}
arrival: {mode: closed, concurrency: 2}
objective: max_throughput
""", "t")


class SleepyExecutor:
    """Fixed step times; always emits token 5."""

    def prefill(self, seqs: list[Sequence]) -> list[int]:
        time.sleep(0.001)
        return [5] * len(seqs)

    def decode(self, seqs: list[Sequence]) -> list[int]:
        time.sleep(0.001)
        return [5] * len(seqs)

    def release(self, seqs: list[Sequence]) -> None:
        pass


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_fixed_and_uniform_lengths() -> None:
    assert sample_lengths(FixedLength(kind="fixed", value=7), 3, rng()) == [7, 7, 7]
    drawn = sample_lengths(UniformLength(kind="uniform", min=3, max=5), 2000, rng())
    assert set(drawn) == {3, 4, 5}  # both ends included


def test_normal_lengths_are_clipped() -> None:
    dist = NormalLength(kind="normal", mean=50, std=40, min=20, max=80)
    drawn = sample_lengths(dist, 5000, rng())
    assert min(drawn) == 20 and max(drawn) == 80
    assert all(isinstance(n, int) for n in drawn)


def test_lognormal_lengths_have_the_requested_mean_and_std() -> None:
    dist = LogNormalLength(kind="lognormal", mean=100, std=50, min=1, max=100_000)
    drawn = np.asarray(sample_lengths(dist, 50_000, rng()))
    assert drawn.mean() == pytest.approx(100, rel=0.02)
    assert drawn.std() == pytest.approx(50, rel=0.05)


def test_choice_lengths_follow_weights() -> None:
    assert set(sample_lengths(ChoiceLength(kind="choice", values=[8, 9], weights=[1, 0]),
                              50, rng())) == {8}
    drawn = sample_lengths(ChoiceLength(kind="choice", values=[8, 512], weights=[9, 1]), 5000, rng())
    assert drawn.count(512) / 5000 == pytest.approx(0.1, abs=0.02)


def test_make_requests_is_seeded_and_avoids_special_ids() -> None:
    a = make_requests(PROFILE, 50, seed=3, vocab_size=10, max_context_tokens=1000, avoid_ids=[0, 9])
    b = make_requests(PROFILE, 50, seed=3, vocab_size=10, max_context_tokens=1000, avoid_ids=[0, 9])
    c = make_requests(PROFILE, 50, seed=4, vocab_size=10, max_context_tokens=1000, avoid_ids=[0, 9])
    assert a == b and a != c
    ids = {t for spec in a for t in spec.prompt_ids}
    assert ids <= set(range(1, 9)) and len(ids) == 8
    assert {len(s.prompt_ids) for s in a} <= set(range(4, 65))
    assert {s.max_new_tokens for s in a} == {2, 40}


def test_lengths_do_not_depend_on_the_vocabulary() -> None:
    small = make_requests(PROFILE, 20, seed=1, vocab_size=10, max_context_tokens=1000, avoid_ids=[])
    big = make_requests(PROFILE, 20, seed=1, vocab_size=5000, max_context_tokens=1000, avoid_ids=[])
    assert [len(s.prompt_ids) for s in small] == [len(s.prompt_ids) for s in big]


def test_requests_are_clipped_to_the_context() -> None:
    specs = make_requests(PROFILE, 50, seed=0, vocab_size=10, max_context_tokens=30, avoid_ids=[])
    assert all(len(s.prompt_ids) + s.max_new_tokens <= 30 for s in specs)
    assert clip_to_context(100, 10, 64) == (54, 10)
    assert clip_to_context(10, 100, 64) == (1, 63)
    assert clip_to_context(10, 10, 64) == (10, 10)


def test_open_loop_arrivals_are_seeded_gamma() -> None:
    arrivals = open_loop_arrivals(rate=4.0, burstiness=1.0, n=20_001, seed=0)
    assert arrivals[0] == 0.0 and arrivals == sorted(arrivals)
    gaps = np.diff(arrivals)
    assert gaps.mean() == pytest.approx(0.25, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # Poisson: CV 1
    bursty = np.diff(open_loop_arrivals(rate=4.0, burstiness=0.25, n=20_001, seed=0))
    assert bursty.mean() == pytest.approx(0.25, rel=0.05)
    assert bursty.std() / bursty.mean() == pytest.approx(2.0, rel=0.05)  # CV = 1/sqrt(shape)
    assert open_loop_arrivals(4.0, 1.0, 5, seed=1) == open_loop_arrivals(4.0, 1.0, 5, seed=1)
    assert open_loop_arrivals(4.0, 1.0, 5, seed=1) != open_loop_arrivals(4.0, 1.0, 5, seed=2)
    with pytest.raises(ValueError):
        open_loop_arrivals(0.0, 1.0, 5, seed=0)


def test_record_from_sequence() -> None:
    seq = Sequence(7, [1, 2, 3], SamplingParams(), scheduled_s=1.0, sent_s=1.5, admitted_s=2.0,
                   token_times_s=[2.5, 3.0], output_ids=[5, 5], done_s=3.0)
    assert record_from_sequence(seq, 4) == RequestRecord(4, 1.0, 1.5, 2.0, (2.5, 3.0), 3.0, 3, 2)
    seq.status, seq.error = SeqStatus.FAILED, "OOM"
    assert record_from_sequence(seq, 4).error == "OOM"


def test_offered_and_achieved_rates() -> None:
    assert offered_rate([0.0, 0.5, 1.0]) == 2.0
    assert offered_rate([1.0]) == 0.0
    records = [RequestRecord(0, 0.0, 0.0, 0.0, (1.0,), 1.0, 1, 1),
               RequestRecord(1, 0.5, 0.5, 0.5, (2.0,), 2.0, 1, 1)]
    assert achieved_rate(records) == 1.0


def specs(n: int, output: int = 3) -> list[RequestSpec]:
    return [RequestSpec([1, 2, 3], output) for _ in range(n)]


def test_closed_loop_users_send_on_completion() -> None:
    with Engine(SleepyExecutor(), SchedulerConfig("continuous", 4), 10**6) as engine:
        result = run_closed_loop(engine, specs(12), concurrency=3, num_warmup=0)
        assert engine.num_waiting == 0 and engine.num_running == 0  # cooldown cancelled, drained
    records = result.records
    assert [r.request_id for r in records] == list(range(12))
    assert not result.was_cut and not result.saturated
    assert len({r.scheduled_s for r in records[:3]}) == 1  # the three users start together
    done = {r.done_s for r in records}
    assert all(r.scheduled_s in done for r in records[3:])  # scheduled = a previous completion
    assert all(r.sent_s >= r.scheduled_s for r in records)


def test_open_loop_sends_on_schedule_without_coordinated_omission() -> None:
    arrivals = [0.0, 0.01, 0.02, 0.05, 0.06]
    with Engine(SleepyExecutor(), SchedulerConfig("continuous", 4), 10**6) as engine:
        result = run_open_loop(engine, specs(5), arrivals, num_warmup=1, batch_size=4)
    records = result.records
    assert [r.request_id for r in records] == [1, 2, 3, 4]
    offsets = [r.scheduled_s - records[0].scheduled_s + arrivals[1] for r in records]
    assert offsets == pytest.approx(arrivals[1:])  # the intended times, however late the wake-up
    assert all(r.sent_s >= r.scheduled_s for r in records)
    assert len(result.depth_samples) == 5  # one per measured arrival, one at the end


def test_should_stop_ends_a_run_early() -> None:
    with Engine(SleepyExecutor(), SchedulerConfig("continuous", 2), 10**6) as engine:
        result = run_closed_loop(engine, specs(10_000, output=50), concurrency=2, num_warmup=0,
                                 should_stop=lambda: True)
        assert engine.num_waiting == 0 and engine.num_running == 0
    assert result.was_stopped and not result.was_cut
