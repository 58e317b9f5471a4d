"""Trace replay, rate schedules and the adaptive policy through run_trial on a real Engine
with a fake executor (fixed step times): exact arrival arithmetic, no speeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.records import SLO, TrialConfig
from engine.engine import Engine
from experiments.load.workload import open_loop_arrivals
from experiments.run.trial import run_trial, with_trace_window
from experiments.spec.arrivals import warp_arrivals
from experiments.spec.profiles import load_profile, parse_profile_yaml
from tests.experiments.test_trial import MODEL, PROFILE, engine  # noqa: F401 - fixture

SLOS = [SLO("ttft_ms", "p90", 500.0), SLO("tpot_ms", "p90", 50.0)]


def write_trace(path: Path) -> Path:
    # 20 requests 50 ms apart; prompt tokens 10, 20, ..., output tokens 3.
    rows = "".join(f"{i * 50},{10 * (i + 1)},3\n" for i in range(20))
    path.write_text("t_ms,in,out\n" + rows)
    return path


def trace_profile(path: Path, duration_s: float):
    text = (f"name: tr\narrival: {{mode: trace, trace: '{path}', time_unit: ms, length_scale: 0.5, "
            "max_prompt_tokens: 40, columns: {timestamp: t_ms, input: in, output: out}}\n"
            "slos:\n  ttft_ms: {percentile: p90, max_ms: 500}\nwarmup_requests: 2\n")
    return with_trace_window(parse_profile_yaml(text, "tr.yaml"), duration_s=duration_s)


def test_trace_trial_replays_the_window_at_the_speedup(engine: Engine, tmp_path: Path):  # noqa: F811
    # 0.3 s of replay at 2x covers trace [0, 0.6) s: 12 rows, arriving every 25 ms.
    profile = trace_profile(write_trace(tmp_path / "t.csv"), duration_s=0.3)
    result = run_trial(engine, TrialConfig("continuous", 4, 0.0, speedup=2.0), profile, 999,
                       seed=0, slos=SLOS, **MODEL)
    trace = result.metrics.details.trace.to_dict()
    assert (trace["requests_in_window"], trace["requests_replayed"]) == (12, 12)
    assert (trace["window_start_s"], trace["window_end_s"], trace["duration_s"]) == (0.0, 0.6, 0.3)
    records = result.records  # the 2 warm-up requests are not measured
    assert [r.request_id for r in records] == list(range(2, 12))
    t0 = records[0].scheduled_s - 2 * 0.025
    assert [round(r.scheduled_s - t0, 9) for r in records] == [round(0.025 * i, 9) for i in range(2, 12)]
    # Lengths: round(10 (i + 1) x 0.5) clipped to 40; outputs round(1.5) = 2.
    assert [r.num_prompt_tokens for r in records] == [min(5 * (i + 1), 40) for i in range(2, 12)]
    assert {r.num_output_tokens for r in records} == {2}
    assert trace["send_lag_ms"]["p50"] >= 0 and trace["attribution"] is None


def test_speedup_needs_a_trace_profile(engine: Engine):  # noqa: F811
    with pytest.raises(ValueError, match="replays no trace"):
        run_trial(engine, TrialConfig("continuous", 4, 0.0, speedup=2.0), PROFILE, 4, seed=0,
                  slos=[], **MODEL)


def test_builtin_trace_trial_carries_the_attribution(engine: Engine):  # noqa: F811
    profile = with_trace_window(load_profile("azure-code"), duration_s=0.5)
    result = run_trial(engine, TrialConfig("continuous", 8, 0.0, speedup=20.0), profile, 1,
                       seed=0, slos=SLOS, **MODEL)
    trace = result.metrics.details.trace.to_dict()
    assert "CC-BY 4.0" in trace["attribution"] and trace["requests_replayed"] > 4


def test_adaptive_trial_steers_by_the_resolved_slos(engine: Engine):  # noqa: F811
    result = run_trial(engine, TrialConfig("adaptive", 4, 5.0, concurrency=4), PROFILE, 12,
                       seed=0, slos=SLOS + [SLO("e2e_ms", "p99", 900.0)], **MODEL)
    assert result.metrics.requests_completed == 12
    config = engine.sched_config
    assert (config.policy, config.ttft_slo_ms, config.tpot_slo_ms) == ("adaptive", 500.0, 50.0)


def test_open_loop_follows_the_profiles_rate_schedule(engine: Engine):  # noqa: F811
    profile = parse_profile_yaml(
        "name: s\nprompt_tokens: {kind: fixed, value: 4}\noutput_tokens: {kind: fixed, value: 2}\n"
        "arrival: {mode: open, rate: 100, schedule: {kind: steps, steps: [{at_s: 0.05, multiplier: 4}]}}\n"
        "objective: max_throughput\nwarmup_requests: 0\n", "s")
    result = run_trial(engine, TrialConfig("continuous", 8, 0.0, rate=100.0), profile, 30, seed=3,
                       slos=[], **MODEL)
    expected = warp_arrivals(open_loop_arrivals(100.0, 1.0, 30, 3), profile.arrival.schedule)
    t0 = result.records[0].scheduled_s
    got = [r.scheduled_s - t0 for r in result.records]
    assert got == pytest.approx(expected, abs=1e-9)
    series = result.metrics.details.timeseries.to_dict()
    assert len(series["t_s"]) == len(series["slo_attainment"]) == len(series["batch_size"])
    assert np.sum(series["arrivals_per_s"]) * series["window_s"] == 30
