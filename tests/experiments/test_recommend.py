"""Recommendations on hand-made sweeps with known answers."""

from __future__ import annotations

import json

import pytest

from common.records import SLO, Dist, TrialConfig, TrialMetrics, TrialRecord
from experiments.recommend import recommend

TTFT_500 = SLO("ttft_ms", "p90", 500.0)
TPOT_50 = SLO("tpot_ms", "p90", 50.0)


def dist(value: float) -> Dist:
    return Dist(value, value, value, value, value, count=10)


def flat(ttft: float, goodput: float, tokens: float, *, tpot: float = 20.0, e2e: float = 1000.0,
         saturated: bool = False) -> dict:
    """Real TrialMetrics.flat() keys; every stat of a latency metric set to one value."""
    return TrialMetrics(
        requests_completed=100, requests_failed=0, duration_s=10.0, requests_per_s=goodput,
        output_tokens_per_s=tokens, total_tokens_per_s=2 * tokens, ttft_ms=dist(ttft),
        tpot_ms=dist(tpot), itl_ms=dist(tpot), e2e_ms=dist(e2e), queue_wait_ms=dist(1.0),
        service_ms=dist(e2e), goodput_rps=goodput, slo_attainment=1.0, mean_batch_size=4.0,
        peak_memory_mb=None, saturated=saturated,
    ).flat()


def trial(trial_id: int, batch: int, ttft: float, goodput: float, tokens: float = 1000.0, *,
          wait: float = 5.0, rep: int = 0, status: str = "done", policy: str = "continuous",
          concurrency: int = 8, **kwargs) -> TrialRecord:
    config = TrialConfig(policy, batch, wait, concurrency=concurrency, repetition=rep)
    return TrialRecord(trial_id, 1, config, status, flat(ttft, goodput, tokens, **kwargs))


def test_highest_goodput_meeting_the_slo_with_costs_in_the_explanation():
    trials = [
        trial(1, 8, ttft=300, goodput=10, tokens=800),
        trial(2, 16, ttft=450, goodput=12, tokens=900),
        trial(3, 32, ttft=600, goodput=15, tokens=1000),  # misses the SLO
    ]
    rec = recommend(trials, "max_goodput", [TTFT_500])
    assert rec.feasible and rec.config.batch_size == 16
    assert [(c.value, c.passed, c.margin_ms) for c in rec.slo_checks] == [(450, True, 50)]
    assert rec.explanation == (
        "continuous batch 16, wait 5 ms at concurrency 8 gives the highest goodput (12.0 req/s) "
        "that meets the SLO; the fastest config (batch 32) adds 33% to p90 TTFT for 11% more "
        "tokens/s, and the lowest-latency config (batch 8) gives up 17% of goodput."
    )


def test_max_throughput_ranks_by_output_tokens_and_throughput_key_overrides():
    trials = [trial(1, 8, 100, goodput=20, tokens=500), trial(2, 16, 200, goodput=10, tokens=900)]
    assert recommend(trials, "max_goodput", [TTFT_500]).config.batch_size == 8
    assert recommend(trials, "max_throughput", [TTFT_500]).config.batch_size == 16
    by_requests = recommend(trials, "max_throughput", [TTFT_500], throughput_key="requests_per_s")
    assert by_requests.config.batch_size == 8
    with pytest.raises(ValueError, match="max_goodput"):
        recommend(trials, "min_cost", [])


def test_ties_go_to_lower_latency_then_smaller_batch_then_smaller_wait():
    lower_latency = [trial(1, 32, 400, 12), trial(2, 8, 450, 12)]
    assert recommend(lower_latency, "max_goodput", [TTFT_500]).config.batch_size == 32
    smaller_batch = [trial(1, 32, 400, 12), trial(2, 16, 400, 12, wait=20.0)]
    assert recommend(smaller_batch, "max_goodput", [TTFT_500]).config.batch_size == 16
    smaller_wait = [trial(1, 16, 400, 12, wait=10.0), trial(2, 16, 400, 12, wait=2.0)]
    assert recommend(smaller_wait, "max_goodput", [TTFT_500]).config.max_wait_ms == 2.0


def test_noise_the_conservative_side_of_the_interval_changes_the_answer():
    noisy = [trial(1, 32, 400, 14, rep=0), trial(2, 32, 560, 14.2, rep=1)]  # mean 480 < 500
    steady = [trial(3, 16, 450, 12)]
    rec = recommend(noisy + steady, "max_goodput", [TTFT_500])
    # The noisy config's mean passes, but its upper 95% bound (480 + 12.706 * 80) does not.
    assert rec.config.batch_size == 16
    tight = [trial(4 + rep, 32, ttft, 14, rep=rep) for rep, ttft in enumerate((478, 480, 482))]
    rec = recommend(tight + steady, "max_goodput", [TTFT_500])
    assert rec.config.batch_size == 32 and rec.point.n == 3
    assert rec.slo_checks[0].value == pytest.approx(480 + 4.303 * 2 / 3**0.5)


def test_nothing_feasible_returns_the_nearest_miss_and_its_miss():
    trials = [
        trial(1, 4, ttft=620, goodput=9, tpot=40, policy="static", wait=10.0),  # worst ratio 1.24
        trial(2, 16, ttft=550, goodput=11, tpot=70),  # worst ratio 1.4
    ]
    rec = recommend(trials, "max_goodput", [TTFT_500, TPOT_50])
    assert not rec.feasible and rec.config.batch_size == 4
    assert rec.nearest_miss.slo == TTFT_500 and rec.nearest_miss.margin_ms == -120
    assert [c.passed for c in rec.slo_checks] == [False, True]
    assert rec.explanation == (
        "nothing meets the SLOs; the nearest miss, static batch 4, wait 10 ms at concurrency 8, "
        "misses p90 TTFT by 120 ms (620 ms vs 500 ms)."
    )


def test_nearest_miss_names_other_missed_slos_and_the_upper_bound():
    trials = [trial(1, 4, 600, 9, tpot=60, rep=0), trial(2, 4, 640, 9, tpot=60, rep=1)]
    rec = recommend(trials, "max_goodput", [TTFT_500, TPOT_50])
    assert rec.nearest_miss.slo == TTFT_500
    assert "upper 95% bound vs 500 ms) and 1 other SLO." in rec.explanation


def test_saturated_and_failed_trials_never_qualify():
    trials = [
        trial(1, 64, 100, 50, saturated=True),
        TrialRecord(2, 1, TrialConfig("continuous", 32, 5.0, concurrency=8), "failed",
                    flat(100, 40, 5000), error="CUDA out of memory"),
        trial(3, 8, 300, 10),
    ]
    rec = recommend(trials, "max_goodput", [TTFT_500])
    assert rec.feasible and rec.config.batch_size == 8
    # One saturated repetition taints the whole config.
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


def test_explanation_is_one_sentence_and_notes_a_chosen_extreme():
    trials = [trial(1, 8, 300, 10, tokens=2000), trial(2, 16, 450, 12, tokens=900)]
    text = recommend(trials, "max_goodput", [TTFT_500]).explanation
    assert text.count(".") == 2 and text.endswith(".")  # "12.0" and the full stop
    assert text.endswith("the fastest and lowest-latency config (batch 8) gives 122% more "
                         "tokens/s at 33% lower p90 TTFT and gives up 17% of goodput.")
    alone = recommend([trial(1, 8, 300, 10)], "max_goodput", [TTFT_500]).explanation
    assert alone.endswith("the recommended config is also the fastest and the lowest-latency "
                          "config.")


HEAD_16 = ("continuous batch 16, wait 5 ms at concurrency 8 gives the highest goodput "
           "(12.0 req/s) that meets the SLO; ")


@pytest.mark.parametrize("case, trials, tail", [
    ("recommended is fastest and lowest-latency",
     [trial(1, 16, 300, 12, tokens=2000), trial(2, 8, 450, 10, tokens=900)],
     "the recommended config is also the fastest and the lowest-latency config."),
    ("recommended is fastest only",
     [trial(1, 16, 450, 12, tokens=2000), trial(2, 8, 300, 10, tokens=900)],
     "the recommended config is also the fastest config, and the lowest-latency config "
     "(batch 8) gives up 17% of goodput."),
    # The demo sweep's case (issue 13): the old text ended "and it is also the lowest-latency
    # config", which a reader takes to mean the fastest config.
    ("recommended is lowest-latency only",
     [trial(1, 16, 100, 12, tokens=250), trial(2, 32, 537, 8, tokens=1007.5)],
     "the fastest config (batch 32) adds 437% to p90 TTFT for 303% more tokens/s, and the "
     "recommended config is also the lowest-latency config."),
    ("neither, two other configs",
     [trial(1, 16, 450, 12, tokens=900), trial(2, 32, 600, 15, tokens=1000),
      trial(3, 8, 300, 10, tokens=800)],
     "the fastest config (batch 32) adds 33% to p90 TTFT for 11% more tokens/s, and the "
     "lowest-latency config (batch 8) gives up 17% of goodput."),
    ("neither, one other config is fastest and lowest-latency",
     [trial(1, 16, 450, 12, tokens=900), trial(2, 8, 300, 14, tokens=1800, tpot=80)],
     "the fastest and lowest-latency config (batch 8) gives 100% more tokens/s at 33% lower "
     "p90 TTFT and has 17% more goodput but misses an SLO."),
])
def test_every_clause_names_its_subject(case: str, trials: list, tail: str):
    rec = recommend(trials, "max_goodput", [TTFT_500, TPOT_50])
    text = rec.explanation.replace("meets all 2 SLOs", "meets the SLO")
    assert text == HEAD_16 + tail, case
    assert " it " not in f" {rec.explanation} ", case  # no pronoun a reader could misattach


def test_nothing_feasible_names_the_nearest_miss_as_the_subject():
    rec = recommend([trial(1, 16, 700, 12), trial(2, 8, 900, 10)], "max_goodput", [TTFT_500])
    assert rec.explanation == (
        "nothing meets the SLOs; the nearest miss, continuous batch 16, wait 5 ms at "
        "concurrency 8, misses p90 TTFT by 200 ms (700 ms vs 500 ms).")


def test_to_dict_nests_metrics_like_trial_json():
    trials = [trial(1, 16, 450, 12, rep=0), trial(2, 16, 470, 12, rep=1)]
    out = recommend(trials, "max_goodput", [TTFT_500]).to_dict()
    json.dumps(out)  # JSON-ready
    assert out["config"] == {"policy": "continuous", "batch_size": 16, "max_wait_ms": 5.0,
                             "max_num_batched_tokens": None, "replicas": 1, "router": None,
                             "concurrency": 8}
    assert out["metrics"]["ttft_ms"] == {"p50": 460, "p90": 460, "p95": 460, "p99": 460,
                                         "mean": 460}
    assert out["metrics"]["goodput_rps"] == 12 and out["metrics"]["saturated"] is False
    assert out["slos"][0]["metric"] == "ttft_ms" and out["slos"][0]["passed"] is False
    assert set(out) >= {"feasible", "config", "metrics", "slos", "explanation"}


def test_to_dict_open_loop_config_has_rate_and_burstiness():
    config = TrialConfig("static", 4, 0.0, rate=2.5, burstiness=0.5)
    rec = recommend([TrialRecord(1, 1, config, "done", flat(100, 2, 300))], "max_goodput", [])
    assert rec.to_dict()["config"] == {"policy": "static", "batch_size": 4, "max_wait_ms": 0.0,
                                       "max_num_batched_tokens": None, "replicas": 1,
                                       "router": None, "rate": 2.5, "burstiness": 0.5}
    assert "at 2.5 req/s (gamma, burstiness 0.5)" in rec.explanation
