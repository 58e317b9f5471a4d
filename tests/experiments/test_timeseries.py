"""Per-window time series over hand-made timelines: attainment, queue depth, batch size."""

from __future__ import annotations

import pytest

from common.records import SLO, RequestRecord
from engine.core import StepRecord
from experiments.analysis.timeseries import trial_timeseries, window_size_s


def rec(i: int, sched: float, admitted: float | None, first: float, done: float) -> RequestRecord:
    return RequestRecord(i, sched, sched, admitted, (first, done), done, 8, 2)


def test_windows_hold_attainment_queue_depth_and_batch_size():
    slos = [SLO("ttft_ms", "p90", 500.0)]
    records = [
        rec(0, 0.0, 0.0, 0.1, 0.5),   # window 0, TTFT 100 ms: met
        rec(1, 0.5, 1.5, 1.6, 1.9),   # window 0, TTFT 1100 ms: missed; waits 0.5-1.5
        rec(2, 1.2, 1.4, 1.5, 2.0),   # window 1, TTFT 300 ms: met; waits 1.2-1.4
    ]
    steps = [StepRecord(0.0, 0.5, "decode", 1, 1), StepRecord(1.5, 0.5, "decode", 3, 3)]
    series = trial_timeseries(records, [], steps, slos, window_s=1.0)
    assert series["t_s"] == [0.0, 1.0]
    assert series["arrivals_per_s"] == [2.0, 1.0]
    assert series["slo_attainment"] == [0.5, 1.0]
    # Waiting seconds in [0, 1): 0.5 (request 1); in [1, 2): 0.5 (request 1) + 0.2 (request 2).
    assert series["queue_depth"] == [0.5, pytest.approx(0.7)]
    assert series["batch_size"] == [1.0, 3.0]


def test_external_targets_have_no_queue_depth_and_empty_windows_no_attainment():
    records = [RequestRecord(0, 0.0, 0.0, None, (0.1,), 2.5, 8, 1)]
    series = trial_timeseries(records, [], [], [], window_s=1.0)
    assert series["queue_depth"] == [None, None, None]
    assert series["slo_attainment"] == [1.0, None, None] and series["batch_size"] == [0.0] * 3


@pytest.mark.parametrize("duration_s, expected", [(5, 1.0), (60, 3.0), (100, 5.0), (3600, 10.0)])
def test_window_size_is_a_few_seconds(duration_s: float, expected: float):
    assert window_size_s(duration_s) == expected
