"""Sweeps started from the dashboard run in a detached worker process (`tradeoff worker`).

The worker, not the UI, owns the engine: a browser refresh, a closed tab or a Streamlit rerun
never stops a sweep. This module queues sweeps, starts a worker when one is queued and none is
alive, and fails sweeps whose worker died (so they show as resumable, not "running" forever).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from db.errors import StoreError
from db.store import Store, SweepRecord, utcnow
from experiments.spec.grid import SweepSpec, parse_spec
from experiments.spec.profiles import load_profile

# A worker on this host is declared dead at once when its pid is gone (Store.mark_dead_workers);
# the heartbeat timeout only matters for workers elsewhere (a shared PostgreSQL store), and must
# outlast the longest silent phase: loading a large model, before the first heartbeat.
WORKER_TIMEOUT_S = 300.0
REPO_ROOT = Path(__file__).resolve().parents[1]
ACTIVE_STATUSES = ("queued", "running")
RESUMABLE_STATUSES = ("failed", "cancelled")

# The demo: one grid run under two profiles, so the answer shows the trade-off. Batching raises
# throughput (b16 at 16 users carries ~2.5x b4's tokens/s: the batch profile's answer) and costs
# latency (at 16 users every config misses chat's TPOT or TTFT SLO), so chat and batch recommend
# different configs. Chat carries 1 user, where the knobs cannot act: its configs tie, and the
# answer says so. A level of 2 users, where they can, put chat's TPOT (3 x unloaded) at its SLO:
# it passed in 4 of 5 runs and flipped the answer once. Two repetitions, so ties and noise can
# be told apart. Timed on the 2-core machine in docs/benchmarks.md.
# 14 requests x 2 repetitions: 28 pooled, the fewest whose 90% Wilson interval clears the 0.9
# attainment target when all pass (25 would), so a clean pass reads "decided", in < 90 s.
DEMO_GRID = {"model": "builtin:tiny", "policies": ["static", "continuous"], "batch_sizes": [4, 16],
             "max_wait_ms": [0.0], "concurrency": [2, 16], "requests": 14, "repetitions": 2}
DEMO_PROFILES = ("chat", "batch")


WATCH_EVERY_S = 5.0
_workers: dict[str, subprocess.Popen] = {}  # db URL -> the worker this UI process started
_watched: dict[str, float] = {}  # db URL -> when watch() last looked (monotonic s)
_lock = threading.Lock()  # Streamlit runs each session's script in its own thread


def demo_specs() -> list[SweepSpec]:
    """The demo: the same grid under the chat and the batch profile (two sweeps)."""
    return [parse_spec({**DEMO_GRID, "profile": p, "name": f"demo: {p}, batching trade-off"})
            for p in DEMO_PROFILES]


def log_path(url: str) -> Path:
    """Where the worker writes its output: next to a SQLite file, else in the temp dir."""
    db = make_url(url).database if make_url(url).get_backend_name() == "sqlite" else None
    if db and db != ":memory:":
        return Path(db).with_name(Path(db).name + ".worker.log")
    return Path(tempfile.gettempdir()) / "tradeoff-worker.log"


def worker_command(url: str) -> list[str]:
    """The worker's command line: the same `tradeoff worker` a user can run by hand."""
    return [sys.executable, "-m", "app.cli", "worker", "--db", url]


def _spawn(command: list[str], url: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with open(log_path(url), "ab") as log:
        # Own session: Ctrl-C on `tradeoff ui` or a Streamlit restart does not reach the worker.
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _has_live_worker(store: Store, url: str) -> bool:
    proc = _workers.get(url)
    if proc is not None and proc.poll() is None:  # poll() also reaps a dead one (no zombie)
        return True
    return any(s.status == "running" for s in store.list_sweeps())


def watch(store: Store, url: str, force: bool = False) -> bool:
    """Fail sweeps of dead workers; start a worker if a sweep is queued and none is alive.

    Every open tab polls this; unless `force`d it runs at most every WATCH_EVERY_S per db, as
    marking dead workers takes the database's write lock.
    """
    now = time.monotonic()
    if not force and now - _watched.get(url, -math.inf) < WATCH_EVERY_S:
        return False
    _watched[url] = now
    store.mark_dead_workers(WORKER_TIMEOUT_S)
    with _lock:
        if store.next_queued_sweep() is None or _has_live_worker(store, url):
            return False
        _workers[url] = _spawn(worker_command(url), url)
        return True


def start_sweep(store: Store, url: str, spec: SweepSpec) -> int:
    """Queue a sweep and make sure a worker will run it; return its id."""
    # experiments.run.sweep imports torch (the engine); only pay for it when a sweep starts.
    from experiments.run.sweep import create_sweep

    sweep_id = create_sweep(store, spec, load_profile(spec.load.profile, store.list_profiles()))
    watch(store, url, force=True)
    return sweep_id


def cancel_sweep(store: Store, sweep_id: int) -> None:
    """Stop a sweep: a queued one at once, a running one after its current step."""
    store.request_cancel(sweep_id)


def resume_sweep(store: Store, url: str, sweep_id: int) -> None:
    """Run the trials a failed or cancelled sweep has left; finished ones are kept."""
    sweep = store.get_sweep(sweep_id)
    if sweep.status not in RESUMABLE_STATUSES:
        raise StoreError(f"sweep {sweep_id} is {sweep.status}; only failed or cancelled sweeps "
                         "can be resumed")
    requeue = getattr(store, "requeue_sweep", None)
    if requeue is not None:
        requeue(sweep_id)
        watch(store, url, force=True)
        return
    _resume_in_own_worker(store, url, sweep_id)


def resume_search(store: Store, url: str, sweep_id: int, budget_s: float) -> None:
    """Continue a stopped capacity search (budget spent, cancelled or failed) under a new time
    budget: the worker runs it as `tradeoff search --resume` does, reusing every stored trial."""
    from experiments.run.search_runner import set_search_budget  # GridError: not a search, or a bad budget

    sweep = store.get_sweep(sweep_id)
    if is_active(sweep):
        raise StoreError(f"search {sweep_id} is {sweep.status}; resume it once it has stopped")
    set_search_budget(store, sweep_id, budget_s)
    store.requeue_sweep(sweep_id)
    watch(store, url, force=True)


def _resume_in_own_worker(store: Store, url: str, sweep_id: int) -> None:
    # Without Store.requeue_sweep the queue cannot take the sweep back: run `tradeoff sweep
    # --resume` instead, but never beside another sweep (one sweep per device at a time).
    with _lock:
        if _has_live_worker(store, url):
            raise StoreError("another sweep is running; resume this one when it has finished")
        _workers[url] = _spawn(
            [sys.executable, "-m", "app.cli", "sweep", "--resume", str(sweep_id), "--db", url], url)


def is_active(sweep: SweepRecord) -> bool:
    """Queued or running: its numbers still move."""
    return sweep.status in ACTIVE_STATUSES


def can_resume(sweep: SweepRecord) -> bool:
    """Failed or cancelled: resuming runs what is left (maybe nothing) and finishes it."""
    return sweep.status in RESUMABLE_STATUSES


def eta_s(sweep: SweepRecord, now: datetime | None = None) -> float | None:
    """Seconds left at the pace so far; None before the first trial finishes."""
    finished = sweep.trials_done + sweep.trials_failed
    if sweep.status != "running" or not finished or sweep.started_at is None:
        return None
    elapsed_s = ((now or utcnow()) - sweep.started_at).total_seconds()
    return max(elapsed_s, 0.0) / finished * (sweep.trials_total - finished)
