"""The launcher: one detached worker per queued work, dead workers failed, resume, ETA."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest

from app import launcher
from db.errors import StoreError
from db.store import DEAD_WORKER_ERROR, Store, utcnow
from experiments.spec.sections import flat_keys


def _queued(store: Store, **overrides) -> int:
    fields = {"name": "s", "model": "builtin:tiny", "device": "cpu", "device_name": None,
              "dtype": "auto", "profile": {"name": "chat"}, "grid": {}, "seed": 0,
              "provenance": {}, "trials_total": 8}
    return store.create_sweep(**{**fields, **overrides})


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_watch_starts_one_worker_for_queued_sweeps(db_url, store, launches) -> None:
    assert not launcher.watch(store, db_url, force=True)  # nothing queued
    _queued(store)
    assert not launcher.watch(store, db_url)  # looked a moment ago: not again yet
    assert launcher.watch(store, db_url, force=True)
    assert not launcher.watch(store, db_url, force=True)  # ours is still alive
    assert launches.commands == [[sys.executable, "-m", "app.cli", "worker", "--db", db_url]]


def test_dead_worker_fails_its_sweep_resumably(db_url, store, launches) -> None:
    sweep_id = _queued(store)
    store.start_sweep(sweep_id, pid=_dead_pid())
    launcher.watch(store, db_url, force=True)
    sweep = store.get_sweep(sweep_id)
    assert (sweep.status, sweep.error) == ("failed", DEAD_WORKER_ERROR)
    assert launcher.can_resume(sweep) and not launcher.is_active(sweep)


def test_only_failed_or_cancelled_sweeps_resume(db_url, store, launches) -> None:
    with pytest.raises(StoreError, match="only failed or cancelled"):
        launcher.resume_sweep(store, db_url, _queued(store))


def test_resume_requeues_when_the_store_can(db_url, store, launches, monkeypatch) -> None:
    sweep_id = _queued(store)
    store.request_cancel(sweep_id)
    requeued: list[int] = []
    monkeypatch.setattr(Store, "requeue_sweep", lambda self, i: requeued.append(i),
                        raising=False)
    launcher.resume_sweep(store, db_url, sweep_id)
    assert requeued == [sweep_id]


def test_resume_falls_back_to_its_own_worker(db_url, store, launches, monkeypatch) -> None:
    monkeypatch.delattr(Store, "requeue_sweep", raising=False)
    sweep_id = _queued(store)
    store.request_cancel(sweep_id)
    launcher.resume_sweep(store, db_url, sweep_id)
    assert launches.commands[-1][2:] == ["app.cli", "sweep", "--resume", str(sweep_id), "--db",
                                         db_url]


def test_resume_never_runs_beside_another_sweep(db_url, store, launches, monkeypatch) -> None:
    monkeypatch.delattr(Store, "requeue_sweep", raising=False)
    running, stopped = _queued(store), _queued(store)
    store.start_sweep(running, pid=os.getpid())
    store.request_cancel(stopped)
    with pytest.raises(StoreError, match="another sweep is running"):
        launcher.resume_sweep(store, db_url, stopped)


def test_spawn_detaches_and_logs(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    proc = launcher._spawn([sys.executable, "-c", "import os; print('sid', os.getsid(0))"], url)
    proc.wait(timeout=30)
    log = (tmp_path / "x.db.worker.log").read_text()
    assert f"sid {proc.pid}" in log  # its own session: Ctrl-C on the UI does not reach it


def test_log_path_without_a_file(tmp_path) -> None:
    assert launcher.log_path(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db.worker.log"
    assert launcher.log_path("postgresql://u@h/db").name == "tradeoff-worker.log"


def test_eta(store) -> None:
    sweep_id = _queued(store)
    store.start_sweep(sweep_id, pid=os.getpid())
    store.update_progress(sweep_id, 1, 1, "static/b1")
    sweep = store.get_sweep(sweep_id)
    eta = launcher.eta_s(sweep, now=sweep.started_at + timedelta(seconds=10))
    assert eta == pytest.approx(30.0)  # 2 of 8 trials in 10 s
    assert launcher.eta_s(store.get_sweep(_queued(store)), now=utcnow()) is None


def test_demo_is_one_grid_under_chat_and_batch_with_repetitions() -> None:
    chat, batch = launcher.demo_specs()
    assert (chat.load.profile, batch.load.profile) == ("chat", "batch")
    grid = {k: v for k, v in flat_keys(chat.model_dump()).items() if k not in ("profile", "name")}
    assert grid == {k: v for k, v in flat_keys(batch.model_dump()).items() if k not in ("profile", "name")}
    assert chat.target.model == "builtin:tiny" and chat.load.repetitions >= 2  # ties and noise can be told
    assert set(chat.knobs.policies) == {"static", "continuous"} and len(chat.knobs.batch_sizes) == 2
    # The loads bracket both answers: chat's SLOs are met only at light load, batch's loose
    # E2E SLO at the heaviest, where the larger batch cap can act. The light load is 2 users,
    # not 1: at 1 user no knob can act, at 2 static batching already queues a turn.
    assert min(chat.load.concurrency) == 2 and max(chat.load.concurrency) == max(chat.knobs.batch_sizes)
    assert chat.num_trials + batch.num_trials == 32
    # All passing, the pooled requests of a point clear the 0.9 target's 90% Wilson interval.
    from experiments.search.evidence import wilson, z_for

    n = chat.load.requests * chat.load.repetitions
    assert wilson(n, n, z_for(0.9))[0] >= 0.9
