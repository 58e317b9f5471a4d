"""Recommendations on hand-made sweeps with known answers."""

from __future__ import annotations

import json

import pytest

from common.records import SLO, Dist, TrialConfig, TrialMetrics, TrialRecord
from experiments.analysis.recommend import recommend

TTFT_500 = SLO("ttft_ms", "p90", 500.0)
TPOT_50 = SLO("tpot_ms", "p90", 50.0)


def dist(value: float) -> Dist:
    return Dist(value, value, value, value, value, count=10)


def flat(ttft: float, goodput: float, tokens: float, *, tpot: float = 20.0, e2e: float = 1000.0,
         saturated: bool = False, att: float = 1.0, mean_batch: float = 4.0) -> dict:
    """Real TrialMetrics.flat() keys; every stat of a latency metric set to one value."""
    return TrialMetrics(
        requests_completed=100, requests_failed=0, duration_s=10.0, requests_per_s=goodput,
        output_tokens_per_s=tokens, total_tokens_per_s=2 * tokens, ttft_ms=dist(ttft),
        tpot_ms=dist(tpot), itl_ms=dist(tpot), e2e_ms=dist(e2e), queue_wait_ms=dist(1.0),
        service_ms=dist(e2e), goodput_rps=goodput, slo_attainment=att, mean_batch_size=mean_batch,
        peak_memory_mb=None, saturated=saturated,
    ).flat()


def trial(trial_id: int, batch: int, ttft: float, goodput: float, tokens: float = 1000.0, *,
          wait: float = 5.0, rep: int = 0, status: str = "done", policy: str = "continuous",
          concurrency: int = 8, **kwargs) -> TrialRecord:
    config = TrialConfig(policy, batch, wait, concurrency=concurrency, repetition=rep)
    return TrialRecord(trial_id, 1, config, status, flat(ttft, goodput, tokens, **kwargs))


def test_the_config_that_carries_the_most_load_wins_and_the_sentence_says_how_much():
    trials = [trial(1, 8, 300, 10, concurrency=4), trial(2, 8, 300, 10, concurrency=8, att=0.5),
              trial(3, 16, 300, 12, concurrency=4), trial(4, 16, 450, 14, concurrency=8)]
    rec = recommend(trials, "max_goodput", [TTFT_500], profile_name="chat")
    assert rec.feasible and rec.config.batch_size == 16 and rec.config.concurrency == 8
    assert (rec.capacity.capacity.capacity, rec.capacity.unit) == (8.0, "users")
    assert [(c.value, c.passed, c.margin_ms) for c in rec.slo_checks] == [(450, True, 50)]
    assert rec.explanation.startswith(
        "continuous b16 w5ms carries at least 8 users within the chat SLOs "
        "(p90 TTFT <= 500 ms). At that load: goodput 14 req/s over 1 repetition, 100.0% of "
        "100 requests within the SLOs")


def test_max_throughput_ranks_equal_capacities_by_output_tokens_and_throughput_key_overrides():
    # 32 users: more than either cap, so the caps act and the objectives can differ.
    trials = [trial(1, 8, 100, goodput=20, tokens=500, concurrency=32),
              trial(2, 16, 200, goodput=10, tokens=900, concurrency=32)]
    assert recommend(trials, "max_goodput", [TTFT_500]).config.batch_size == 8
    assert recommend(trials, "max_throughput", [TTFT_500]).config.batch_size == 16
    by_requests = recommend(trials, "max_throughput", [TTFT_500], throughput_key="requests_per_s")
    assert by_requests.config.batch_size == 8
    with pytest.raises(ValueError, match="max_goodput"):
        recommend(trials, "min_cost", [])


def test_a_tie_within_noise_is_named_and_goes_to_the_simpler_config():
    # One repetition each, 4% apart: no evidence either is better.
    trials = [trial(1, 32, 400, 12.5), trial(2, 16, 400, 12, wait=20.0), trial(3, 16, 400, 12)]
    rec = recommend(trials, "max_goodput", [TTFT_500])
    assert (rec.config.batch_size, rec.config.max_wait_ms) == (16, 5.0)
    assert [c.config.server_label for c in rec.tie_with] == ["continuous/b16/w20ms", "continuous/b32/w5ms"]
    assert "ties within noise with continuous b16 w20ms, continuous b32 w5ms" in rec.explanation
    assert rec.to_dict()["tie_with"] == ["continuous b16 w20ms", "continuous b32 w5ms"]


def test_more_evidence_never_loses_to_less():
    # Measured twice, both passing (attainment 0.92 and 0.95): pooled 0.935 >= 0.9, like one
    # repetition at 0.93 would be. The old rule judged the upper t-bound of p90 TTFT, which with
    # two repetitions (t = 12.7) failed the twice-measured load and kept the once-measured one.
    twice = [trial(1, 16, 160, 14, concurrency=16, att=0.92, rep=0),
             trial(2, 16, 76, 14, concurrency=16, att=0.95, rep=1)]
    once = [trial(3, 8, 150, 8, concurrency=8), trial(4, 8, 300, 8, concurrency=16, att=0.5)]
    lighter = [trial(5, 16, 60, 8, concurrency=8)]
    rec = recommend(twice + once + lighter, "max_goodput", [SLO("ttft_ms", "p90", 206.0)])
    assert rec.config.batch_size == 16 and rec.capacity.capacity.capacity == 16
    assert rec.point.n == 2 and rec.attainment.num_total == 200
    assert rec.attainment.mean == pytest.approx(0.935)


def test_knobs_that_could_not_act_never_separate_configs():
    # At 1 user every config runs batches of 1: 20% apart in goodput, yet the same server.
    trials = [trial(1, 1, 20, 7.2, concurrency=1, mean_batch=1.0, rep=r) for r in range(2)] + [
        trial(3 + r, 8, 20, 6.0 + 0.01 * r, concurrency=1, mean_batch=1.0, rep=r) for r in range(2)]
    rec = recommend(trials, "max_goodput", [TTFT_500])
    assert rec.config.batch_size == 1 and [c.config.batch_size for c in rec.tie_with] == [8]
    assert "ran batches of ~1 there, so the batching knobs could not act" in rec.explanation


def test_batch_caps_above_the_users_never_separate_configs():
    # b4 and b16 at 2 users: neither cap binds, the same server; 3 tight repetitions each 10%
    # apart would separate them anywhere a cap could act (as at 8 users, below).
    def pair(users: int) -> list[TrialRecord]:
        return [trial(1 + r, 16, 100, 20.0 + 0.1 * r, rep=r, concurrency=users, mean_batch=2.0)
                for r in range(3)] + [trial(4 + r, 4, 100, 18.0 + 0.1 * r, rep=r,
                                            concurrency=users, mean_batch=2.0) for r in range(3)]
    idle = recommend(pair(2), "max_goodput", [TTFT_500])
    assert idle.config.batch_size == 4 and [c.config.batch_size for c in idle.tie_with] == [16]
    assert "batch caps are above the users there, so the same server ran" in idle.explanation
    acting = recommend(pair(8), "max_goodput", [TTFT_500])
    assert acting.config.batch_size == 16 and acting.tie_with == ()


def test_repetitions_that_separate_the_objective_break_the_tie_by_evidence():
    better = [trial(1 + r, 16, 100, 20.0 + 0.1 * r, rep=r, concurrency=32) for r in range(3)]
    worse = [trial(4 + r, 8, 100, 18.0 + 0.1 * r, rep=r, concurrency=32) for r in range(3)]
    rec = recommend(better + worse, "max_goodput", [TTFT_500])
    assert rec.config.batch_size == 16 and rec.tie_with == ()
    assert "continuous b8 w5ms carried as much but with a lower objective" in rec.explanation


def test_nothing_feasible_returns_the_nearest_miss_and_its_miss():
    trials = [
        trial(1, 4, ttft=620, goodput=9, tpot=40, policy="static", wait=10.0, att=0.5),
        trial(2, 16, ttft=550, goodput=11, tpot=70, att=0.3),
    ]
    rec = recommend(trials, "max_goodput", [TTFT_500, TPOT_50], profile_name="chat")
    assert not rec.feasible and rec.config.batch_size == 4
    assert rec.nearest_miss.slo == TTFT_500 and rec.nearest_miss.margin_ms == -120
    assert [c.passed for c in rec.slo_checks] == [False, True]
    assert rec.explanation == (
        "no config was shown to carry load within the chat SLOs (p90 TTFT <= 500 ms; p90 TPOT "
        "<= 50 ms); the nearest miss, static batch 4, wait 10 ms at concurrency 8, "
        "misses p90 TTFT by 120 ms (620 ms vs 500 ms).")


def test_nearest_miss_names_other_missed_slos_and_the_mean():
    trials = [trial(1, 4, 600, 9, tpot=60, rep=0, att=0), trial(2, 4, 640, 9, tpot=60, rep=1, att=0)]
    rec = recommend(trials, "max_goodput", [TTFT_500, TPOT_50])
    assert rec.nearest_miss.slo == TTFT_500
    assert "(620 ms, mean of 2 vs 500 ms) and 1 other SLO." in rec.explanation


def test_saturated_and_failed_trials_never_qualify():
    trials = [
        trial(1, 64, 100, 50, saturated=True),
        TrialRecord(2, 1, TrialConfig("continuous", 32, 5.0, concurrency=8), "failed",
                    flat(100, 40, 5000), error="CUDA out of memory"),
        trial(3, 8, 300, 10),
    ]
    rec = recommend(trials, "max_goodput", [TTFT_500])
    assert rec.feasible and rec.config.batch_size == 8
    # One saturated repetition makes the level a miss for the whole config.
    mixed = [trial(4, 16, 100, 30, rep=0), trial(5, 16, 100, 30, rep=1, saturated=True)]
    assert recommend(mixed + trials, "max_goodput", [TTFT_500]).config.batch_size == 8


def test_nothing_measured_explains_why():
    empty = recommend([], "max_goodput", [TTFT_500])
    assert (empty.feasible, empty.config) == (False, None)
    assert "no trials" in empty.explanation
    failed = [TrialRecord(1, 1, TrialConfig("static", 4, 0.0, concurrency=1), "failed", {})]
    rec = recommend(failed, "max_goodput", [TTFT_500])
    assert rec.config is None and "1 failed" in rec.explanation
    saturated = recommend([trial(1, 8, 100, 10, saturated=True)], "max_goodput", [TTFT_500])
    assert saturated.config is None and "saturated" in saturated.explanation


def test_no_slos_picks_the_knee_of_throughput_vs_p90_e2e():
    # (e2e, tokens): normalised gaps 0, .49, .58, .57, .51, 0: the knee is batch 8.
    shape = [(1, 2, 100), (2, 4, 160), (3, 8, 180), (4, 16, 190), (5, 32, 195), (10, 64, 200)]
    trials = [trial(i, batch, 100, 1, tokens=tok, e2e=100.0 * e2e)
              for i, (e2e, batch, tok) in enumerate(shape)]
    rec = recommend(trials, "max_throughput", [])
    assert rec.feasible and rec.config.batch_size == 8 and rec.slo_checks == []
    assert rec.explanation.startswith(
        "continuous batch 8, wait 5 ms at concurrency 8 is the knee of the output throughput "
        "vs p90 E2E frontier (180 tokens/s at 300 ms); the fastest config (batch 64) adds 233%"
    )


def test_to_dict_nests_metrics_like_trial_json_and_carries_the_answer():
    trials = [trial(1, 16, 450, 12, rep=0), trial(2, 16, 470, 12, rep=1)]
    out = recommend(trials, "max_goodput", [TTFT_500]).to_dict()
    json.dumps(out)  # JSON-ready
    assert out["config"] == {"policy": "continuous", "batch_size": 16, "max_wait_ms": 5.0,
                             "max_num_batched_tokens": None, "replicas": 1, "router": None,
                             "concurrency": 8}
    assert out["metrics"]["ttft_ms"] == {"p50": 460, "p90": 460, "p95": 460, "p99": 460,
                                         "mean": 460}
    assert out["metrics"]["goodput_rps"] == 12 and out["metrics"]["saturated"] is False
    assert out["slos"][0] == {"metric": "ttft_ms", "percentile": "p90", "max_ms": 500.0,
                              "threshold_ms": 500.0, "rule": "absolute", "value": 460,
                              "passed": True, "margin_ms": 40}
    assert (out["capacity"], out["unit"], out["tie_with"], out["status"]) == (8.0, "users", [], "at_limit")
    assert set(out) >= {"feasible", "config", "metrics", "slos", "explanation"}


def test_to_dict_open_loop_config_has_rate_and_burstiness():
    config = TrialConfig("static", 4, 0.0, rate=2.5, burstiness=0.5)
    rec = recommend([TrialRecord(1, 1, config, "done", flat(100, 2, 300))], "max_goodput", [])
    assert rec.to_dict()["config"] == {"policy": "static", "batch_size": 4, "max_wait_ms": 0.0,
                                       "max_num_batched_tokens": None, "replicas": 1,
                                       "router": None, "rate": 2.5, "burstiness": 0.5}
    assert "at 2.5 req/s (gamma, burstiness 0.5)" in rec.explanation
