"""Drift control's pure parts: the comparison, which trials a check flags, what is evidence."""

from __future__ import annotations

import pytest

from common.records import TrialConfig, TrialRecord
from experiments.analysis.pareto import aggregate, classify
from experiments.run.drift import DRIFT_TOLERANCE, DriftWatch, drift_between, drift_reason
from experiments.search.capacity import sample_of

REF = {"ttft_ms": 10.0, "itl_ms": 2.0}


def test_within_tolerance_is_no_drift_and_beyond_names_what_moved():
    assert drift_between(REF, {"ttft_ms": 13.0, "itl_ms": 1.4}) is None  # +30%, -30%
    assert drift_between(REF, {"ttft_ms": 10.0, "itl_ms": 2.0 * (1 + DRIFT_TOLERANCE) + 0.01}) \
        == "median ITL 2 -> 2.71 ms (+36%)"
    assert drift_between(REF, {"ttft_ms": 6.0}) == "median TTFT 10 -> 6 ms (-40%)"
    assert drift_between(REF, {}) is None  # nothing measured: nothing to compare


def test_a_drifted_check_flags_every_trial_since_the_last_check_only():
    watch = DriftWatch(every_s=30)
    assert watch.is_due(0.0)  # no reference yet
    watch.reference_from([{"ttft_ms": 9.0, "itl_ms": 2.2}, {"ttft_ms": 11.0, "itl_ms": 1.8}])
    assert watch.reference == REF
    assert watch.checked(0.0, REF) == ([], None)
    watch.ran(1)
    assert not watch.is_due(29.9) and watch.is_due(30.0)
    watch.ran(2)
    assert watch.checked(30.0, {"ttft_ms": 10.5, "itl_ms": 2.1}) == ([], None)  # clean: 1, 2 kept
    watch.ran(3)
    watch.ran(4)
    flagged, why = watch.checked(61.0, {"ttft_ms": 15.0, "itl_ms": 2.1})
    assert flagged == [3, 4] and why == "median TTFT 10 -> 15 ms (+50%)"
    assert watch.since_check == [] and [c["drift"] for c in watch.checks] == [None, None, why]
    assert watch.flag(why).reason.startswith("the machine's speed drifted during this trial: "
                                                "median TTFT 10 -> 15 ms (+50%)")


def trial(tid: int, rep: int, value: float, drift: bool = False) -> TrialRecord:
    details = {"drift": {"reason": "the machine's speed drifted"}} if drift else {}
    metrics = {"output_tokens_per_s": value, "ttft_ms_p90": 10.0, "slo_attainment": 1.0,
               "requests_completed": 10, "requests_failed": 0}
    return TrialRecord(tid, 1, TrialConfig("continuous", 8, 0.0, concurrency=4, repetition=rep),
                       "done", metrics, details=details)


def test_a_drifted_trial_is_no_capacity_evidence():
    assert drift_reason(trial(1, 0, 100.0, drift=True).details) == "the machine's speed drifted"
    sample = sample_of(trial(1, 0, 100.0, drift=True))
    assert not sample.is_valid and sample.reason == "the machine's speed drifted"
    assert sample_of(trial(2, 0, 100.0)).is_valid


def test_a_point_is_its_clean_repetitions_and_untrusted_only_when_none_is_clean():
    [mixed] = aggregate([trial(1, 0, 100.0, drift=True), trial(2, 1, 300.0)])
    assert mixed.n == 1 and mixed.mean["output_tokens_per_s"] == 300.0
    assert mixed.untrusted_reason is None
    [drifted] = aggregate([trial(1, 0, 100.0, drift=True), trial(2, 1, 300.0, drift=True)])
    assert drifted.n == 2 and drifted.untrusted_reason == "the machine's speed drifted"
    assert classify([drifted], "output_tokens_per_s", "ttft_ms_p90") == ["drifted"]


@pytest.mark.parametrize("checks", [[{"ttft_ms": 10.0}], [{"ttft_ms": 8.0}, {"ttft_ms": 12.0}]])
def test_the_reference_is_the_mean_of_the_start_checks(checks):
    watch = DriftWatch()
    watch.reference_from(checks)
    assert watch.reference == {"ttft_ms": 10.0}


def test_reruns_over_started_servers_run_each_on_its_own_servers_config(tmp_path, monkeypatch):
    # Found measuring vLLM: a grid's drift re-runs of two server configs all ran on the first
    # one's server (--max-num-batched-tokens 256), stored as the 2048 config's trials.
    from types import SimpleNamespace

    from db.store import Store
    from experiments.run.sweep import SweepRunner, create_sweep
    from experiments.spec.grid import parse_spec
    from experiments.spec.profiles import load_profile

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    spec = parse_spec({"engine": "vllm", "model": "/m", "policies": ["continuous"], "max_wait_ms": [0],
                       "batch_sizes": [4], "max_num_batched_tokens": [256, 2048], "concurrency": [1, 4]})
    runner = SweepRunner(store, create_sweep(store, spec, load_profile("chat")))
    groups: list[list] = []
    monkeypatch.setattr(runner, "_run_group", lambda configs: groups.append(configs) or True)
    runner.speed = SimpleNamespace(reruns=lambda: list(reversed(spec.trial_configs())))
    assert runner.run() == "done"
    budgets = [{c.max_num_batched_tokens for c in g} for g in groups]
    assert len(groups) == 4 and all(len(b) == 1 for b in budgets)  # 2 passes, 2 re-run groups
