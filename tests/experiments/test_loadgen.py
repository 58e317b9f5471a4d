"""Load generation: the closed/open-loop drivers on a real Engine, and the records they keep."""

from __future__ import annotations

import time

import pytest

from common.records import RequestRecord
from engine.config import SchedulerConfig
from engine.engine import Engine
from engine.sequence import SamplingParams, SeqStatus, Sequence
from experiments.load.loadgen import (
    achieved_rate,
    offered_rate,
    record_from_sequence,
    run_closed_loop,
    run_open_loop,
)
from experiments.load.workload import RequestSpec


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


def test_record_from_sequence() -> None:
    seq = Sequence(7, [1, 2, 3], SamplingParams(), scheduled_s=1.0, sent_s=1.5, admitted_s=2.0,
                   token_times_s=[2.5, 3.0], output_ids=[5, 5], done_s=3.0)
    assert record_from_sequence(seq, 4) == RequestRecord(4, 1.0, 1.5, 2.0, (2.5, 3.0), 3.0, 3, 2,
                                                         num_cached_tokens=0)  # the engine: none cached
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
