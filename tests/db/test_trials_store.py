"""The Store's trials and requests on SQLite and PostgreSQL: round trips, atomic trials, resume
identity, details."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from store_helpers import T0, T1, count_rows

from common.records import ClientLag, RequestRecord, Roofline, TrialConfig
from db import DuplicateTrialError, StoreError
from db.models import RequestModel, TrialModel


def test_trial_round_trip_keeps_every_metric(store, new_sweep, config, make_metrics,
                                             make_requests):
    sweep_id, metrics = new_sweep(), make_metrics()
    started = datetime(2025, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    trial_id = store.add_trial(sweep_id, config, metrics, make_requests(5), started,
                               started + timedelta(seconds=3))
    [trial] = store.list_trials(sweep_id)
    assert (trial.trial_id, trial.sweep_id, trial.config, trial.status, trial.error) == \
        (trial_id, sweep_id, config, "done", None)
    assert trial.metrics == metrics.flat()
    assert trial.metrics["tpot_ms_p99"] is None and trial.metrics["peak_memory_mb"] is None
    assert trial.metrics["saturated"] is False and trial.metrics["requests_completed"] == 8
    assert (trial.started_at, trial.finished_at) == (T0, T1)  # aware -> naive UTC
    assert store.trial_slos(trial_id) == {"ttft_ms": {"p90": 500.0}}


def test_nonfinite_metrics_come_back(store, new_sweep, config, make_metrics):
    metrics = make_metrics(slo_attainment=math.nan, requests_per_s=math.inf,
                           goodput_rps=-math.inf)
    store.add_trial(new_sweep(), config, metrics, [], T0, T1)
    [trial] = store.list_trials(store.latest_sweep().id)
    assert math.isnan(trial.metrics["slo_attainment"])
    assert trial.metrics["requests_per_s"] == math.inf
    assert trial.metrics["goodput_rps"] == -math.inf


def test_numpy_scalars_are_stored(store, new_sweep, config, make_metrics):
    metrics = make_metrics(requests_completed=np.int64(8), duration_s=np.float64(2.0),
                           saturated=np.bool_(True))
    store.add_trial(new_sweep(), config, metrics, [], T0, T1)
    [trial] = store.list_trials(store.latest_sweep().id)
    assert (trial.metrics["requests_completed"], trial.metrics["saturated"]) == (8, True)


def test_requests_are_stored_in_ms_from_trial_start(store, new_sweep, config, make_metrics,
                                                    make_requests):
    sweep_id = new_sweep()
    trial_id = store.add_trial(sweep_id, config, make_metrics(), make_requests(3), T0, T1)
    stored = store.get_requests(trial_id)
    assert [r.request_index for r in stored] == [0, 1, 2]
    r = stored[1]
    assert (r.trial_id, r.num_prompt_tokens, r.num_output_tokens, r.error) == \
        (trial_id, 16, 3, None)
    expected = {"scheduled_ms": 10.0, "sent_ms": 11.0, "admitted_ms": 12.0,
                "first_token_ms": 30.0, "done_ms": 60.0, "itl_mean_ms": 15.0,
                "itl_max_ms": 20.0}
    assert {k: getattr(r, k) for k in expected} == pytest.approx(expected)
    other = TrialConfig("static", 4, 5.0, concurrency=3)
    shifted = store.add_trial(sweep_id, other, make_metrics(), make_requests(1), T0, T1,
                              trial_start_s=999.0)
    assert store.get_requests(shifted)[0].scheduled_ms == pytest.approx(1000.0)


def test_failed_request_keeps_missing_times(store, new_sweep, config, make_metrics):
    failed = RequestRecord(0, 5.0, 5.1, None, (), None, 16, 0, error="timeout")
    trial_id = store.add_trial(new_sweep(), config, make_metrics(), [failed], T0, T1)
    [r] = store.get_requests(trial_id)
    assert (r.admitted_ms, r.first_token_ms, r.done_ms, r.itl_mean_ms) == (None,) * 4
    assert r.error == "timeout" and r.is_ok is False


def test_failed_trial(store, new_sweep, config):
    sweep_id = new_sweep()
    trial_id = store.add_failed_trial(sweep_id, config, "CUDA out of memory", T0, T1)
    [trial] = store.list_trials(sweep_id)
    assert (trial.trial_id, trial.status, trial.error, trial.metrics) == \
        (trial_id, "failed", "CUDA out of memory", {})
    assert store.get_requests(trial_id) == []


def test_list_trials_of_several_sweeps(store, new_sweep, config, make_metrics):
    first, second = new_sweep(), new_sweep()
    for sweep_id in (second, first, second):
        rep = len(store.list_trials(sweep_id))
        store.add_trial(sweep_id, TrialConfig("static", 4, 5.0, 2, repetition=rep),
                        make_metrics(), [], T0, T1)
    trials = store.list_trials([first, second])
    assert [(t.sweep_id, t.config.repetition) for t in trials] == \
        [(first, 0), (second, 0), (second, 1)]
    assert store.list_trials([]) == []


@pytest.mark.parametrize("bad", ["duplicate request id", "missing token count"])
def test_add_trial_is_one_transaction(store, new_sweep, config, make_metrics, make_requests,
                                      bad):
    sweep_id = new_sweep()
    requests = make_requests(5)
    if bad == "duplicate request id":
        requests.append(requests[0])
    else:
        requests.append(RequestRecord(9, 0.0, 0.0, None, (), None, None, 0))
    with pytest.raises(StoreError) as caught:
        store.add_trial(sweep_id, config, make_metrics(), requests, T0, T1)
    assert "\n" not in str(caught.value)
    assert store.list_trials(sweep_id) == []
    assert count_rows(store, TrialModel) == 0 and count_rows(store, RequestModel) == 0
    store.add_trial(sweep_id, config, make_metrics(), make_requests(5), T0, T1)  # retry works
    assert count_rows(store, RequestModel) == 5


def test_done_configs_for_resume(store, new_sweep, make_metrics):
    grid = [
        TrialConfig("static", 1, 0.0, concurrency=1),
        TrialConfig("continuous", 4, 2.5, rate=2.0, burstiness=0.5, repetition=1),
        TrialConfig("static", 4, 0, rate=1.25),
        TrialConfig("continuous", 8, 10.0, concurrency=16),
    ]
    sweep_id, other = new_sweep(), new_sweep()
    store.add_trial(sweep_id, grid[0], make_metrics(), [], T0, T1)
    store.add_trial(sweep_id, grid[1], make_metrics(), [], T0, T1)
    store.add_failed_trial(sweep_id, grid[2], "boom", T0, T1)
    done = store.done_configs(sweep_id)
    assert done == set(grid[:3])
    assert [c for c in grid if c not in done] == [grid[3]]
    assert store.done_configs(other) == set()


def test_duplicate_trial_is_rejected(store, new_sweep, make_metrics):
    # Open loop: concurrency is NULL, the case a plain unique constraint would let through.
    config = TrialConfig("continuous", 8, 5.0, rate=2.0)
    sweep_id = new_sweep()
    store.add_trial(sweep_id, config, make_metrics(), [], T0, T1)
    with pytest.raises(DuplicateTrialError, match="already has trial continuous/b8"):
        store.add_trial(sweep_id, config, make_metrics(), [], T0, T1)
    with pytest.raises(DuplicateTrialError):
        store.add_failed_trial(sweep_id, config, "boom", T0, T1)
    assert len(store.list_trials(sweep_id)) == 1
    store.add_trial(new_sweep(), config, make_metrics(), [], T0, T1)  # other sweep: fine


def test_close_load_levels_are_distinct_trials(store, new_sweep, make_metrics):
    # Both read `poisson@2.00`: the key must be exact, not the display label.
    sweep_id = new_sweep()
    configs = [TrialConfig("static", 4, 0.0, rate=2.001), TrialConfig("static", 4, 0.0, rate=2.004),
               TrialConfig("static", 4, 0.0, rate=2.001, burstiness=0.5),
               TrialConfig("static", 4, 0.0, concurrency=2)]
    for config in configs:
        store.add_trial(sweep_id, config, make_metrics(), [], T0, T1)
    assert store.done_configs(sweep_id) == set(configs)


def test_knobs_of_schema_v3_are_part_of_a_trials_identity(store, new_sweep, make_metrics):
    base = TrialConfig("continuous", 8, 0.0, rate=4.0)
    configs = [base, TrialConfig("continuous", 8, 0.0, rate=4.0, max_num_batched_tokens=256),
               TrialConfig("continuous", 8, 0.0, rate=4.0, replicas=2, router="round_robin"),
               TrialConfig("continuous", 8, 0.0, rate=4.0, replicas=2, router="power_of_two"),
               TrialConfig("adaptive", 8, 0.0, speedup=2.0), TrialConfig("adaptive", 8, 0.0, speedup=4.0)]
    sweep_id = new_sweep()
    for config in configs:
        store.add_trial(sweep_id, config, make_metrics(), [], T0, T1)
    assert store.done_configs(sweep_id) == set(configs)
    assert [t.config for t in store.list_trials(sweep_id)] == configs
    with pytest.raises(DuplicateTrialError):
        store.add_trial(sweep_id, configs[2], make_metrics(), [], T0, T1)


def test_self_check_roofline_and_details_round_trip(store, new_sweep, config, make_metrics):
    metrics = make_metrics(client_bound=True, client_bound_reason="p99 send lag 12 ms > 1 ms",
                           client_lag_ms=ClientLag(0.2, 12.0, 30.5),
                           roofline_fraction=Roofline(decode=0.41, prefill=None),
                           details={"trace": {"num_requests": 12, "window_s": [0.0, 20.0]}})
    sweep_id = new_sweep()
    store.add_trial(sweep_id, config, metrics, [], T0, T1)
    [trial] = store.list_trials(sweep_id)
    assert trial.metrics == metrics.flat()
    assert (trial.metrics["client_lag_ms_p99"], trial.metrics["roofline_decode"]) == (12.0, 0.41)
    assert trial.details.to_dict() == {"trace": {"num_requests": 12, "window_s": [0.0, 20.0]}}
    assert not trial.is_trusted


def test_details_noted_after_a_trial_replace_its_details_only(store, new_sweep, config, make_metrics):
    sweep_id = new_sweep()
    trial_id = store.add_trial(sweep_id, config, make_metrics(details={"a": 1}), [], T0, T1)
    before = store.list_trials(sweep_id)[0]
    store.set_trial_details(trial_id, {"a": 1, "revision": {"pruned": {"static b8": "why"}}})
    after = store.list_trials(sweep_id)[0]
    assert after.details.to_dict() == {"a": 1, "revision": {"pruned": {"static b8": "why"}}}
    assert (after.metrics, after.config, after.status) == (before.metrics, before.config, before.status)


def test_nested_self_check_fields_flatten_to_store_keys(make_metrics):
    flat = make_metrics(client_lag_ms=ClientLag(0.1, 2.0, 9.0),
                        roofline_fraction=Roofline(decode=0.5, prefill=None),
                        details={"client": {"cpu": 0.9}}).flat()
    assert (flat["client_lag_ms_p50"], flat["client_lag_ms_p99"], flat["client_lag_ms_max"]) == \
        (0.1, 2.0, 9.0)
    assert (flat["roofline_decode"], flat["roofline_prefill"]) == (0.5, None)
    assert "details" not in flat and "client_lag_ms" not in flat


def test_session_turn_and_cached_tokens_round_trip(store, new_sweep, config, make_metrics):
    turn2 = RequestRecord(0, 5.0, 5.1, 5.2, (5.3,), 5.4, 96, 1, session_id=3, turn=2,
                          num_cached_tokens=64)
    plain = RequestRecord(1, 5.0, 5.1, 5.2, (5.3,), 5.4, 16, 1)
    metrics = dataclasses.replace(make_metrics(), prefix_cache_hit_rate=0.5)
    sweep_id = new_sweep()
    trial_id = store.add_trial(sweep_id, config, metrics, [turn2, plain], T0, T1)
    first, second = store.get_requests(trial_id)
    assert (first.session_id, first.turn, first.num_cached_tokens) == (3, 2, 64)
    assert (second.session_id, second.turn, second.num_cached_tokens) == (None, None, None)
    [trial] = store.list_trials(sweep_id)
    assert trial.metrics["prefix_cache_hit_rate"] == 0.5


def test_prefix_caching_is_part_of_a_trials_identity(store, new_sweep, config, make_metrics):
    sweep_id = new_sweep()
    variants = [dataclasses.replace(config, prefix_caching=pc) for pc in (None, True, False)]
    for variant in variants:  # three distinct trials: no duplicate-trial error
        store.add_trial(sweep_id, variant, make_metrics(), [], T0, T1)
    assert [t.config.prefix_caching for t in store.list_trials(sweep_id)] == [None, True, False]
    with pytest.raises(DuplicateTrialError):
        store.add_trial(sweep_id, variants[1], make_metrics(), [], T0, T1)
