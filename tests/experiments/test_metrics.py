"""Trial metrics against hand-computed values: hand-made timelines and exact simulator runs."""

from __future__ import annotations

import pytest

from common.records import SLO, Dist, RequestRecord
from engine.config import SchedulerConfig
from engine.core import StepRecord
from engine.simulate import CostModel, Simulator
from experiments.analysis.metrics import (
    compute_trial_metrics,
    is_saturated,
    itl_ms,
    latency_samples,
    littles_law_concurrency,
    mean_batch_size,
    meets_slos,
    queue_slope,
    summarize,
    tpot_ms,
    window,
)
from experiments.load.loadgen import record_from_sequence


def rec(i: int, scheduled: float, sent: float, admitted: float | None, tokens: tuple[float, ...],
        done: float | None, prompt: int, error: str | None = None) -> RequestRecord:
    return RequestRecord(i, scheduled, sent, admitted, tokens, done, prompt, len(tokens), error)


# A: 4 tokens, 100 ms apart. B: sent 100 ms late (a stalled sender), 2 tokens. C: 1 token.
A = rec(0, 0.0, 0.0, 0.1, (0.2, 0.3, 0.4, 0.5), 0.5, 10)
B = rec(1, 0.1, 0.2, 0.3, (0.4, 0.6), 0.6, 20)
C = rec(2, 0.2, 0.2, 0.2, (0.3,), 0.3, 5)
FAILED = rec(3, 0.3, 0.3, None, (), 0.7, 7, error="RuntimeError: boom")
TTFT_SLO = SLO("ttft_ms", "p90", 250.0)


def approx_dist(dist: Dist | None, p50: float, p90: float, p95: float, p99: float, mean: float,
                count: int) -> None:
    assert dist is not None
    got = (dist.p50, dist.p90, dist.p95, dist.p99, dist.mean)
    assert got == pytest.approx((p50, p90, p95, p99, mean))
    assert dist.count == count


def test_summarize_uses_linear_interpolation() -> None:
    # sorted [100, 200, 300]: p90 sits at rank 0.9 * 2 = 1.8 -> 200 + 0.8 * 100
    approx_dist(summarize([300.0, 100.0, 200.0]), 200, 280, 290, 298, 200, 3)
    assert summarize([]) is None


def test_per_request_latencies() -> None:
    s = latency_samples([A, B, C])
    assert s["ttft_ms"] == pytest.approx([200, 300, 100])  # first token - scheduled
    assert s["e2e_ms"] == pytest.approx([500, 500, 100])  # done - scheduled
    assert s["service_ms"] == pytest.approx([500, 400, 100])  # done - sent
    assert s["tpot_ms"] == pytest.approx([100, 200])  # C has one token: no TPOT
    assert s["itl_ms"] == pytest.approx([100, 100, 100, 200])  # pooled gaps
    assert s["queue_wait_ms"] == pytest.approx([100, 100, 0])  # admitted - sent


def test_hand_made_trial_metrics() -> None:
    steps = [StepRecord(0.0, 0.1, "prefill", 2, 30), StepRecord(0.1, 0.1, "decode", 2, 2),
             StepRecord(0.2, 0.2, "decode", 4, 4), StepRecord(0.55, 0.1, "decode", 1, 1)]
    m = compute_trial_metrics([A, B, C], steps, [TTFT_SLO], peak_memory_mb=12.5, saturated=False)
    assert (m.requests_completed, m.requests_failed) == (3, 0)
    assert m.duration_s == pytest.approx(0.6)  # [A scheduled 0.0, B done 0.6]
    assert m.requests_per_s == pytest.approx(5.0)
    assert m.output_tokens_per_s == pytest.approx(7 / 0.6)
    assert m.total_tokens_per_s == pytest.approx((35 + 7) / 0.6)
    approx_dist(m.ttft_ms, 200, 280, 290, 298, 200, 3)
    approx_dist(m.tpot_ms, 150, 190, 195, 199, 150, 2)
    approx_dist(m.itl_ms, 100, 170, 185, 197, 125, 4)
    approx_dist(m.e2e_ms, 500, 500, 500, 500, 1100 / 3, 3)
    assert m.goodput_rps == pytest.approx(2 / 0.6)  # B's TTFT 300 > 250
    assert m.slo_attainment == pytest.approx(2 / 3)
    # decode steps weighted by time inside the window: the last one counts 0.05 s of its 0.1 s
    assert m.mean_batch_size == pytest.approx((2 * 0.1 + 4 * 0.2 + 1 * 0.05) / 0.35)
    assert (m.peak_memory_mb, m.saturated) == (12.5, False)
    assert m.slos == {"ttft_ms": {"percentile": "p90", "max_ms": 250.0}}


def test_goodput_checks_every_slo_per_request() -> None:
    slos = [TTFT_SLO, SLO("tpot_ms", "p90", 150.0), SLO("e2e_ms", "p99", 400.0)]
    assert [meets_slos(r, slos) for r in (A, B, C)] == [False, False, True]  # A: E2E 500
    tpot_only = [SLO("tpot_ms", "p50", 1.0)]
    assert meets_slos(C, tpot_only)  # one token: TPOT is ignored, not a miss


def test_failed_requests_count_as_misses_and_not_in_latency() -> None:
    m = compute_trial_metrics([A, B, C, FAILED], [], [TTFT_SLO], None, False)
    assert (m.requests_completed, m.requests_failed) == (3, 1)
    assert m.duration_s == pytest.approx(0.7)  # the failure's done time ends the window
    assert m.requests_per_s == pytest.approx(3 / 0.7)
    assert m.ttft_ms is not None and m.ttft_ms.count == 3
    assert m.slo_attainment == pytest.approx(2 / 4)
    assert m.mean_batch_size is None  # no steps seen (an HTTP target shows none)


def test_no_slos_every_success_is_good() -> None:
    m = compute_trial_metrics([A, B, C, FAILED], [], [], None, False)
    assert m.goodput_rps == pytest.approx(m.requests_per_s)
    assert m.slo_attainment == pytest.approx(3 / 4)
    assert m.slos == {}


def test_empty_trial() -> None:
    m = compute_trial_metrics([], [], [TTFT_SLO], None, False)
    assert (m.requests_completed, m.duration_s, m.requests_per_s, m.goodput_rps) == (0, 0, 0, 0)
    assert m.ttft_ms is None and m.tpot_ms is None and m.itl_ms is None
    assert m.slo_attainment == 0.0 and littles_law_concurrency(m) is None
    assert window([]) is None


def test_one_token_requests_have_no_tpot_or_itl() -> None:
    m = compute_trial_metrics([C], [], [], None, False)
    assert m.tpot_ms is None and m.itl_ms is None
    assert tpot_ms(C) is None and itl_ms(C) == []


def test_unknown_admission_time_is_skipped() -> None:
    external = rec(0, 0.0, 0.0, None, (0.1, 0.2), 0.2, 3)
    assert compute_trial_metrics([external], [], [], None, False).queue_wait_ms is None


def test_mean_batch_size_of_zero_duration_steps_is_a_plain_mean() -> None:
    steps = [StepRecord(1.0, 0.0, "decode", 2, 2), StepRecord(1.0, 0.0, "decode", 4, 4)]
    assert mean_batch_size(steps, 0.0, 2.0) == 3.0


def test_littles_law_concurrency() -> None:
    m = compute_trial_metrics([A, B, C], [], [], None, False)
    assert littles_law_concurrency(m) == pytest.approx(5.0 * (1.1 / 3))


def test_saturation_rule() -> None:
    growing = [(0.0, 0), (0.1, 3), (0.2, 6), (0.3, 9)]
    assert queue_slope(growing) == pytest.approx(30.0)
    assert is_saturated(growing, offered_rate=100, achieved_rate=50, batch_size=4)
    assert not is_saturated(growing, offered_rate=100, achieved_rate=95, batch_size=4)  # keeps up
    assert not is_saturated(growing, offered_rate=100, achieved_rate=50, batch_size=16)  # shallow
    shrinking = [(0.0, 9), (0.1, 6), (0.2, 3), (0.3, 5)]
    assert not is_saturated(shrinking, offered_rate=100, achieved_rate=50, batch_size=4)
    assert not is_saturated([(0.0, 9)], offered_rate=100, achieved_rate=50, batch_size=4)


# -- the simulator: the real scheduler on a virtual clock, checked against hand-derived times ----

COST = CostModel(prefill_base_s=0.010, prefill_per_token_s=0.001,
                 decode_base_s=0.005, decode_per_seq_s=0.001)


def simulate(policy: str) -> tuple[list[RequestRecord], list[StepRecord]]:
    """R0, R1 (10-token prompts, 3 outputs) at t=0; R2 (5-token prompt, 2 outputs) at t=0.02."""
    sim = Simulator(SchedulerConfig(policy, max_batch_size=3, max_wait_ms=0.0), COST)
    sim.submit_at(0.0, 10, 3)
    sim.submit_at(0.0, 10, 3)
    sim.submit_at(0.02, 5, 2)
    seqs = sim.run()
    return [record_from_sequence(s, s.seq_id) for s in seqs], sim.core.steps


def test_simulated_static_batching_metrics() -> None:
    # Prefill R0+R1 (20 tokens): 0 -> 0.030; decode x2 (0.007 each): 0.037, 0.044 (done).
    # R2 waited for the batch to finish: prefill 5 tokens 0.044 -> 0.059; decode x1: 0.065.
    records, steps = simulate("static")
    m = compute_trial_metrics(records, steps, [SLO("ttft_ms", "p90", 28.0)], None, False)
    assert latency_samples(records)["ttft_ms"] == pytest.approx([30, 30, 39])
    assert latency_samples(records)["tpot_ms"] == pytest.approx([7, 7, 6])
    assert latency_samples(records)["itl_ms"] == pytest.approx([7, 7, 7, 7, 6])
    assert latency_samples(records)["e2e_ms"] == pytest.approx([44, 44, 45])
    assert latency_samples(records)["queue_wait_ms"] == pytest.approx([0, 0, 24])
    assert m.duration_s == pytest.approx(0.065)
    assert m.requests_per_s == pytest.approx(3 / 0.065)
    assert m.output_tokens_per_s == pytest.approx(8 / 0.065)
    assert m.total_tokens_per_s == pytest.approx(33 / 0.065)
    assert m.mean_batch_size == pytest.approx((2 * 0.014 + 1 * 0.006) / 0.020)
    assert m.goodput_rps == 0.0 and m.slo_attainment == 0.0


def test_simulated_continuous_batching_metrics() -> None:
    # R2 joins after the first prefill: prefill 0.030 -> 0.045; decode x3 (0.008): 0.053,
    # R2 done; decode x2 (0.007): 0.060, R0 and R1 done.
    records, steps = simulate("continuous")
    m = compute_trial_metrics(records, steps, [SLO("ttft_ms", "p90", 28.0)], None, False)
    assert latency_samples(records)["ttft_ms"] == pytest.approx([30, 30, 25])
    assert latency_samples(records)["tpot_ms"] == pytest.approx([15, 15, 8])
    assert latency_samples(records)["itl_ms"] == pytest.approx([23, 7, 23, 7, 8])
    assert latency_samples(records)["e2e_ms"] == pytest.approx([60, 60, 33])
    assert latency_samples(records)["queue_wait_ms"] == pytest.approx([0, 0, 10])
    assert m.duration_s == pytest.approx(0.060)
    assert m.requests_per_s == pytest.approx(50.0)
    assert m.output_tokens_per_s == pytest.approx(8 / 0.060)
    assert m.mean_batch_size == pytest.approx((3 * 0.008 + 2 * 0.007) / 0.015)
    assert m.goodput_rps == pytest.approx(1 / 0.060)  # only R2's TTFT (25 ms) meets 28 ms
    assert m.slo_attainment == pytest.approx(1 / 3)


def test_labels_name_only_the_knobs_that_are_set():
    from common.records import TrialConfig

    assert TrialConfig("static", 4, 0.0, concurrency=2).label == "static/b4/w0ms/concurrent@2"
    config = TrialConfig("continuous", 8, 5.0, rate=2.0, max_num_batched_tokens=256, replicas=2,
                         router="least_outstanding")
    assert config.label == "continuous/b8/w5ms/t256/x2lo/poisson@2.00"
    assert config.server_label == "continuous/b8/w5ms/t256/x2lo"
    assert TrialConfig("adaptive", 16, 0.0, speedup=2.5).load_label == "trace@2.5x"

