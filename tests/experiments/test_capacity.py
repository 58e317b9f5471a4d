"""Search answers replayed from stored trials: evidence rules, plans, the sentence."""

from __future__ import annotations

from common.records import TrialConfig, TrialRecord
from experiments.analysis.answer import best, sentence
from experiments.search.capacity import (
    NOT_STARTED,
    SKIPPED,
    ConfigCapacity,
    run_search,
    sample_of,
)
from experiments.search.strategy import DECIDED, UNDECIDED, Capacity
from experiments.spec.grid import parse_spec
from experiments.spec.profiles import load_profile

CONFIG = TrialConfig("continuous", 8, 0.0, rate=2.0)


def trial(status="done", **metrics) -> TrialRecord:
    base = {"requests_completed": 40, "requests_failed": 8, "slo_attainment": 0.75}
    return TrialRecord(1, 1, CONFIG, status, {**base, **metrics}, error="boom" if status != "done" else None)


def test_a_trial_is_evidence_unless_failed_or_client_bound():
    assert (sample_of(trial()).num_good, sample_of(trial()).num_total) == (36, 48)
    bound = sample_of(trial(client_bound=True, client_bound_reason="send lag p99 80 ms"))
    assert not bound.is_valid and "send lag" in bound.reason
    failed = sample_of(trial(status="failed"))
    assert not failed.is_valid and "boom" in failed.reason
    # A saturated trial is evidence, of a miss: its attainment is kept but not trusted.
    saturated = sample_of(trial(saturated=True, slo_attainment=1.0))
    assert saturated.is_valid and saturated.saturated and saturated.num_good == 48
    assert not sample_of(trial()).saturated


def spec(**search):
    return parse_spec({"profile": "chat", "policies": ["static", "continuous"], "batch_sizes": [8],
                       "max_wait_ms": [0], "search": {"load": "rate", **search}})


def test_before_the_calibration_trial_nothing_has_started():
    out = run_search(spec(), load_profile("chat"), [])
    assert {c.capacity.status for c in out} == {NOT_STARTED}


def test_a_skipped_config_is_reported_with_the_reason_and_not_measured():
    plan = {"start": {"continuous b8 w0ms": 4.0}, "skipped": {"static b8 w0ms": "predicted 0.5"}}
    asked = []
    out = run_search(spec(), load_profile("chat"), [], lambda c: asked.append(c), plan=plan)
    by_policy = {c.config.policy: c.capacity for c in out}
    assert by_policy["static"].status == SKIPPED and by_policy["static"].reason == "predicted 0.5"
    assert asked[0].policy == "continuous" and asked[0].rate == 4.0  # starts at the plan's load
    assert by_policy["continuous"].status == UNDECIDED  # measure gave nothing back


def cap(policy: str, batch: int, value: float, status: str = DECIDED) -> ConfigCapacity:
    return ConfigCapacity(TrialConfig(policy, batch, 2.0), Capacity(value, value * 1.1, status, "", 3),
                          "req/s")


def test_sentence_names_the_best_config_and_each_other_policys_best():
    caps = [cap("static", 1, 6.1), cap("static", 8, 3.0), cap("continuous", 8, 14.2),
            cap("continuous", 16, 20.0, UNDECIDED)]
    # An undecided config that passed 20 req/s carries more than one decided at 14.2: it wins,
    # shown as the bounds it has (never as "no config").
    assert best(caps).capacity.capacity == 20.0
    assert sentence(caps, "chat") == ("continuous b16 w2ms carries at least 20 req/s, at most 22 "
                                      "(undecided) within the chat SLOs; the best static config "
                                      "6.1 (1 of 4 configs undecided)")
    decided = caps[:3]
    assert sentence(decided, "chat") == ("continuous b8 w2ms carries 14.2 req/s within the chat "
                                         "SLOs; the best static config 6.1")


def test_equal_capacities_go_to_the_higher_objective_value_at_that_load():
    a, b = cap("static", 8, 16.0), cap("continuous", 8, 16.0)
    a = ConfigCapacity(a.config, a.capacity, a.unit, 300.0)
    b = ConfigCapacity(b.config, b.capacity, b.unit, 450.0)
    assert best([a, b]) is b
