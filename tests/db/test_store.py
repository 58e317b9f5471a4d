"""The Store on SQLite and PostgreSQL: sweeps, cancel and liveness, profiles, opening, WAL."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest
from sqlalchemy import update
from store_helpers import T0, T1, count_rows, dead_pid

from common.records import TrialConfig
from db import (
    DEAD_WORKER_ERROR,
    Store,
    StoreError,
    UnknownSweepError,
    resolve_db_url,
)
from db.models import RequestModel, SweepModel
from db.store import utcnow

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
