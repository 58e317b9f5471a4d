"""The Store on SQLite and PostgreSQL: round trips, atomic trials, resume, liveness, errors."""

from __future__ import annotations

import math
import os
import subprocess
import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import func, select, update

from common.records import ClientLag, RequestRecord, Roofline, TrialConfig
from db import (
    DEAD_WORKER_ERROR,
    DuplicateTrialError,
    Store,
    StoreError,
    UnknownSweepError,
    resolve_db_url,
)
from db.models import RequestModel, SweepModel, TrialModel
from db.store import utcnow

T0 = datetime(2025, 1, 1, 12, 0, 0)
T1 = T0 + timedelta(seconds=3)


def count_rows(store: Store, model: type) -> int:
    with store.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(model))


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- sweeps --------------------------------------------------------------------------------


def test_sweep_round_trip(store, new_sweep):
    sweep = store.get_sweep(new_sweep())
    assert (sweep.name, sweep.status, sweep.model, sweep.device) == \
        ("chat-cpu", "queued", "tiny-llama", "cpu")
    assert sweep.profile == {"name": "chat", "slos": {"ttft_ms": {"p90": 500.0}}}
    assert sweep.grid == {"policies": ["static", "continuous"], "batch_sizes": [1, 4]}
    assert sweep.provenance == {"tradeoff": "0.1.0", "hostname": "ci", "git_sha": None}
    assert (sweep.seed, sweep.trials_total, sweep.trials_done, sweep.trials_failed) == (7, 4, 0, 0)
    assert sweep.profile_name == "chat" and sweep.cancel_requested is False
    assert sweep.worker_pid is None and sweep.heartbeat_at is None
    assert sweep.created_at.tzinfo is None and abs(utcnow() - sweep.created_at) < timedelta(1)


def test_progress_and_finish(store, new_sweep):
    sweep_id = new_sweep()
    store.start_sweep(sweep_id, os.getpid())
    store.update_progress(sweep_id, 2, 1, "static/b4/w5ms/concurrent@2")
    sweep = store.get_sweep(sweep_id)
    assert (sweep.status, sweep.trials_done, sweep.trials_failed) == ("running", 2, 1)
    assert sweep.current_label == "static/b4/w5ms/concurrent@2"
    assert sweep.worker_pid == os.getpid() and sweep.heartbeat_at is not None
    store.finish_sweep(sweep_id, "failed", error="model not found")
    sweep = store.get_sweep(sweep_id)
    assert (sweep.status, sweep.error, sweep.current_label) == ("failed", "model not found", None)
    assert sweep.finished_at >= sweep.started_at
    with pytest.raises(ValueError, match="final status"):
        store.finish_sweep(sweep_id, "running")


def test_set_sweep_device(store, new_sweep):
    sweep_id = new_sweep(device="auto")
    store.set_sweep_device(sweep_id, "cuda", "NVIDIA H200", "bfloat16")
    sweep = store.get_sweep(sweep_id)
    assert (sweep.device, sweep.device_name, sweep.dtype) == ("cuda", "NVIDIA H200", "bfloat16")


def test_list_and_latest_sweeps(store, new_sweep):
    first = new_sweep(name="a")
    rag = new_sweep(name="b", profile={"name": "rag"})
    last = new_sweep(name="c")
    assert [s.id for s in store.list_sweeps()] == [last, rag, first]
    assert store.latest_sweep().id == last
    assert store.latest_sweep("rag").id == rag
    assert store.latest_sweep("code") is None


def test_unknown_sweep(store, config, make_metrics):
    message = "no sweep with id 12; list them with `tradeoff sweeps`"
    with pytest.raises(UnknownSweepError, match=message):
        store.get_sweep(12)
    for call in (lambda: store.update_progress(12, 1, 0, None),
                 lambda: store.request_cancel(12), lambda: store.is_cancel_requested(12),
                 lambda: store.delete_sweep(12),
                 lambda: store.add_trial(12, config, make_metrics(), [], T0, T1)):
        with pytest.raises(UnknownSweepError):
            call()


def test_delete_sweep_takes_its_trials_and_requests(store, new_sweep, config, make_metrics,
                                                   make_requests):
    doomed, kept = new_sweep(), new_sweep()
    for sweep_id in (doomed, kept):
        store.add_trial(sweep_id, config, make_metrics(), make_requests(4), T0, T1)
    store.delete_sweep(doomed)
    with pytest.raises(UnknownSweepError):
        store.get_sweep(doomed)
    assert store.list_trials(doomed) == [] and len(store.list_trials(kept)) == 1
    assert count_rows(store, RequestModel) == 4


def test_running_sweep_cannot_be_deleted(store, new_sweep):
    sweep_id = new_sweep()
    store.start_sweep(sweep_id, os.getpid())
    with pytest.raises(StoreError, match="is running; cancel it first"):
        store.delete_sweep(sweep_id)


# -- trials --------------------------------------------------------------------------------


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
    assert trial.details == {"trace": {"num_requests": 12, "window_s": [0.0, 20.0]}}
    assert not trial.is_trusted


def test_details_noted_after_a_trial_replace_its_details_only(store, new_sweep, config, make_metrics):
    sweep_id = new_sweep()
    trial_id = store.add_trial(sweep_id, config, make_metrics(details={"a": 1}), [], T0, T1)
    before = store.list_trials(sweep_id)[0]
    store.set_trial_details(trial_id, {"a": 1, "revision": {"pruned": {"static b8": "why"}}})
    after = store.list_trials(sweep_id)[0]
    assert after.details == {"a": 1, "revision": {"pruned": {"static b8": "why"}}}
    assert (after.metrics, after.config, after.status) == (before.metrics, before.config, before.status)


def test_nested_self_check_fields_flatten_to_store_keys(make_metrics):
    flat = make_metrics(client_lag_ms=ClientLag(0.1, 2.0, 9.0),
                        roofline_fraction=Roofline(decode=0.5, prefill=None),
                        details={"client": {"cpu": 0.9}}).flat()
    assert (flat["client_lag_ms_p50"], flat["client_lag_ms_p99"], flat["client_lag_ms_max"]) == \
        (0.1, 2.0, 9.0)
    assert (flat["roofline_decode"], flat["roofline_prefill"]) == (0.5, None)
    assert "details" not in flat and "client_lag_ms" not in flat


# -- cancel, queue, liveness ----------------------------------------------------------------


def test_cancel_flag(store, new_sweep):
    queued, running = new_sweep(), new_sweep()
    store.start_sweep(running, os.getpid())
    assert store.is_cancel_requested(running) is False
    store.request_cancel(running)
    assert store.is_cancel_requested(running) is True
    assert store.get_sweep(running).status == "running"  # its worker stops it
    store.request_cancel(queued)  # no worker to notice: cancelled at once
    assert store.get_sweep(queued).status == "cancelled"
    store.finish_sweep(running, "cancelled")
    store.start_sweep(running, os.getpid())  # resume clears the request
    assert store.is_cancel_requested(running) is False


def test_queue_oldest_first(store, new_sweep):
    first, second = new_sweep(name="a"), new_sweep(name="b")
    assert store.next_queued_sweep().id == first
    claimed = store.claim_next_sweep(os.getpid())
    assert (claimed.id, claimed.status, claimed.worker_pid) == (first, "running", os.getpid())
    assert store.next_queued_sweep().id == second
    assert store.claim_next_sweep(os.getpid()).id == second
    assert store.claim_next_sweep(os.getpid()) is None and store.next_queued_sweep() is None


def test_dead_worker_detection(store, new_sweep):
    alive, gone, silent, done = new_sweep(), new_sweep(), new_sweep(), new_sweep()
    store.start_sweep(alive, os.getpid())
    store.start_sweep(gone, dead_pid())
    store.start_sweep(silent, os.getpid())
    with store.engine.begin() as conn:  # a worker that stopped beating an hour ago
        conn.execute(update(SweepModel).where(SweepModel.id == silent)
                     .values(heartbeat_at=utcnow() - timedelta(hours=1)))
    assert sorted(store.mark_dead_workers(timeout_s=60)) == sorted([gone, silent])
    for sweep_id in (gone, silent):
        sweep = store.get_sweep(sweep_id)
        assert (sweep.status, sweep.error) == ("failed", DEAD_WORKER_ERROR)
    assert store.get_sweep(alive).status == "running"
    assert store.get_sweep(done).status == "queued"
    assert store.heartbeat(silent, os.getpid()) is False  # it lost the sweep
    assert store.heartbeat(alive, os.getpid()) is True
    later = utcnow() + timedelta(minutes=2)
    assert store.mark_dead_workers(timeout_s=60, now=later) == [alive]


def test_pid_on_another_host_is_judged_by_heartbeat_only(store, new_sweep):
    sweep_id = new_sweep()
    store.start_sweep(sweep_id, dead_pid())
    with store.engine.begin() as conn:
        conn.execute(update(SweepModel).where(SweepModel.id == sweep_id)
                     .values(worker_host="another-host"))
    assert store.mark_dead_workers(timeout_s=60) == []


# -- profiles ------------------------------------------------------------------------------


def test_profiles(store):
    assert store.get_profile("mine") is None and store.list_profiles() == {}
    store.save_profile("mine", "name: mine\n")
    store.save_profile("zeta", "name: zeta\n")
    store.save_profile("mine", "name: mine\nprompt_tokens: 64\n")
    assert store.get_profile("mine") == "name: mine\nprompt_tokens: 64\n"
    assert list(store.list_profiles()) == ["mine", "zeta"]
    assert store.delete_profile("mine") is True and store.delete_profile("mine") is False
    assert store.list_profiles() == {"zeta": "name: zeta\n"}


# -- opening -------------------------------------------------------------------------------


@pytest.mark.parametrize("url, expected", [
    ("foo://", "invalid database URL 'foo://': unknown database kind 'foo'"),
    ("not a url", "invalid database URL 'not a url': cannot parse it"),
    ("sqlite:////nonexistent-dir/sub/x.db",
     "cannot open database 'sqlite:////nonexistent-dir/sub/x.db': unable to open database file"),
    ("postgresql://nobody@127.0.0.1:1/nothing",
     "cannot open database 'postgresql+psycopg://nobody@127.0.0.1:1/nothing': "
     "connection refused"),
])
def test_bad_url_gives_one_line_store_error(url, expected):
    with pytest.raises(StoreError) as caught:
        Store(url)
    message = str(caught.value)
    assert message.startswith(expected) and "check --db or TRADEOFF_DB" in message
    assert "\n" not in message


def test_password_is_hidden_in_messages():
    with pytest.raises(StoreError) as caught:
        Store("postgresql://me:s3cret@127.0.0.1:1/x")
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)


def test_read_only_open_creates_nothing(tmp_path):
    path = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no database at"):
        Store(f"sqlite:///{path}", create=False)
    assert not path.exists()
    Store(f"sqlite:///{path}").close()
    with Store(f"sqlite:///{path}", create=False) as store:
        assert store.list_sweeps() == []


def test_url_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("TRADEOFF_DB", raising=False)
    assert resolve_db_url() == "sqlite:///tradeoff.db"
    monkeypatch.setenv("TRADEOFF_DB", "sqlite:///env.db")
    assert resolve_db_url() == "sqlite:///env.db"
    assert resolve_db_url("sqlite:///arg.db") == "sqlite:///arg.db"
    monkeypatch.delenv("TRADEOFF_DB")
    monkeypatch.chdir(tmp_path)
    Store().close()
    assert (tmp_path / "tradeoff.db").exists()


# -- SQLite concurrency (WAL) --------------------------------------------------------------


def test_reader_is_not_blocked_by_an_open_write(tmp_path):
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    with Store(url) as writer, Store(url) as reader:
        with writer.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        sweep_id = writer.create_sweep("s", "m", "cpu", None, "float32", {}, {}, 0, {}, 1)
        with writer.engine.connect() as conn:
            conn.execution_options(tradeoff_write=True)  # BEGIN IMMEDIATE: holds the lock
            with conn.begin():
                conn.execute(update(SweepModel).values(trials_done=1))
                assert reader.get_sweep(sweep_id).trials_done == 0  # last committed state
        assert reader.get_sweep(sweep_id).trials_done == 1


def test_reader_while_writer_writes(tmp_path, make_metrics, make_requests):
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    with Store(url) as writer, Store(url) as reader:
        sweep_id = writer.create_sweep("s", "m", "cpu", None, "float32", {}, {}, 0, {}, 15)
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for rep in range(15):
                    config = TrialConfig("static", 4, 0.0, concurrency=2, repetition=rep)
                    writer.add_trial(sweep_id, config, make_metrics(), make_requests(10), T0, T1)
                    writer.update_progress(sweep_id, rep + 1, 0, config.label)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        seen = [0]
        while thread.is_alive():
            seen.append(len(reader.list_trials(sweep_id)))
            reader.get_sweep(sweep_id)
        thread.join()
        assert errors == []
        assert seen == sorted(seen) and len(reader.list_trials(sweep_id)) == 15
