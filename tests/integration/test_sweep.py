"""Real sweeps on builtin:tiny into a real SQLite file: contracts, crash safety, cancel, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from db.errors import StoreError
from db.store import Store
from engine.config import EngineConfig
from experiments.run.sweep import SweepRunner, create_sweep
from experiments.spec.grid import parse_spec
from experiments.spec.profiles import load_profile
from experiments.targets.local import LocalTarget

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def tradeoff(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def grid(db: str, profile: Path, *extra: str) -> list[str]:
    return ["sweep", "--model", "builtin:tiny", "--profile", str(profile),
            "--policy", "static,continuous", "--batch-sizes", "1,4", "--max-wait-ms", "0,5",
            "--concurrency", "1,4", "--requests", "8", "--db", db, *extra]


def assert_each_trial_once_and_whole(db: str, sweep_id: int, expected: int) -> None:
    store = Store(db, create=False)
    trials = store.list_trials(sweep_id)
    configs = [t.config for t in trials]
    assert len(configs) == len(set(configs)) == expected
    for t in trials:
        assert t.status == "done", t.error
        # none half-written: every stored request row belongs to a complete trial
        assert len(store.get_requests(t.trial_id)) == t.metrics["requests_completed"] == 8


def test_sweep_trials_recommend_export(tmp_path: Path, tiny_profile: Path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    run = tradeoff(*grid(db, tiny_profile, "--name", "<b>demo</b>", "--json"))
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["status"] == "done" and out["trials_total"] == out["trials_done"] == 16
    assert out["trials_failed"] == 0
    assert_each_trial_once_and_whole(db, out["sweep_id"], 16)

    rows = json.loads(tradeoff("trials", str(out["sweep_id"]), "--format", "json", "--db", db).stdout)
    assert len(rows) == 16 and {"ttft_ms_p90", "policy", "batch_size"} <= set(rows[0])

    rec = tradeoff("recommend", "--sweep", str(out["sweep_id"]), "--profile", "tiny",
                   "--format", "json", "--db", db)
    assert rec.returncode == 0, rec.stderr
    rec = json.loads(rec.stdout)
    assert {"profile", "feasible", "config", "metrics", "slos", "explanation", "sweep_id"} <= set(rec)
    assert rec["feasible"] is True and rec["config"]["policy"] in ("static", "continuous")
    # The grid's capacity reading names a server config (no load level) and how many users.
    capacity = rec["capacity"]
    assert len(capacity["capacities"]) == 8 and "read off the grid" in capacity["sentence"]
    assert all(c["unit"] == "users" and c["capacity"] in (0, 1, 4) for c in capacity["capacities"])
    top = max(c["capacity"] for c in capacity["capacities"] if c["decided"])
    assert capacity["recommended"]["capacity"] == top > 0
    assert set(capacity["recommended"]["config"]) >= {"policy", "batch_size", "max_wait_ms"}
    assert "concurrency" not in capacity["recommended"]["config"]

    exported = tradeoff("export", "--profile", "tiny", "--format", "yaml", "--db", db,
                        "--output", str(tmp_path / "cfg.yaml"))
    assert exported.returncode == 0, exported.stderr
    doc = yaml.safe_load((tmp_path / "cfg.yaml").read_text())
    assert doc["engine"]["max_batch_size"] == rec["config"]["batch_size"]
    assert doc["provenance"]["sweep_id"] == out["sweep_id"]


def test_kill_9_mid_sweep_then_resume_runs_every_trial_exactly_once(tmp_path: Path, tiny_profile: Path):
    db = f"sqlite:///{tmp_path / 'k.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", *grid(db, tiny_profile)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    sweep_id = None
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if not (tmp_path / "k.db").exists():
            continue
        try:
            store = Store(db, create=False)
        except StoreError:  # the file exists a moment before its tables do
            continue
        sweeps = store.list_sweeps()
        store.close()
        if sweeps and 2 <= sweeps[0].trials_done < 16:
            sweep_id = sweeps[0].id
            break
    assert sweep_id is not None, "sweep never got going"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = Store(db, create=False).list_trials(sweep_id)
    assert 2 <= len(partial) < 16
    resumed = tradeoff("sweep", "--resume", str(sweep_id), "--db", db, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "done"
    assert_each_trial_once_and_whole(db, sweep_id, 16)


def start_runner(db: str, profile_path: Path, **spec_fields) -> tuple[Store, int, SweepRunner]:
    store = Store(db)
    spec = parse_spec({"model": "builtin:tiny", "profile": str(profile_path), "requests": 8,
                       "policies": ["static", "continuous"], "batch_sizes": [1, 4],
                       "max_wait_ms": [0], "concurrency": [2], **spec_fields})
    sweep_id = create_sweep(store, spec, load_profile(str(profile_path)))
    target = LocalTarget.start(EngineConfig(model="builtin:tiny"))
    return store, sweep_id, SweepRunner(store, sweep_id, target=target)


def test_cancel_flag_stops_within_seconds_and_keeps_finished(tmp_path: Path, tiny_profile: Path):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    store, sweep_id, runner = start_runner(db, tiny_profile, requests=400)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("status", runner.run()))
    thread.start()
    started_by = time.monotonic() + 60
    while store.get_sweep(sweep_id).current_label is None:
        assert time.monotonic() < started_by, "the sweep never started a trial"
        time.sleep(0.05)
    time.sleep(0.5)
    Store(db).request_cancel(sweep_id)  # what the UI's cancel button does
    cancelled_at = time.monotonic()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert time.monotonic() - cancelled_at < 10
    assert result["status"] == "cancelled"
    assert store.get_sweep(sweep_id).status == "cancelled"
    assert all(t.status == "done" for t in store.list_trials(sweep_id))  # no partial trial stored


class FailOnBatch4:
    """Wraps the real executor; every step of a batch-size-4 trial raises (like a CUDA OOM)."""

    def __init__(self, inner, engine) -> None:
        self.inner, self.engine = inner, engine

    def _check(self) -> None:
        if self.engine.sched_config.max_batch_size == 4:
            raise RuntimeError("CUDA out of memory (injected)")

    def prefill(self, seqs):
        self._check()
        return self.inner.prefill(seqs)

    def decode(self, seqs):
        self._check()
        return self.inner.decode(seqs)

    def release(self, seqs):
        return self.inner.release(seqs)


def test_failing_trial_is_stored_as_failed_and_the_sweep_goes_on(tmp_path: Path, tiny_profile: Path):
    db = f"sqlite:///{tmp_path / 'f.db'}"
    store, sweep_id, runner = start_runner(db, tiny_profile)
    engine = runner.target.engine
    engine.core.executor = FailOnBatch4(engine.core.executor, engine)
    assert runner.run() == "done"
    trials = {t.config.batch_size: t for t in store.list_trials(sweep_id) if t.config.policy == "static"}
    assert trials[4].status == "failed" and "out of memory" in trials[4].error
    assert trials[1].status == "done" and trials[1].metrics["requests_completed"] == 8
    sweep = store.get_sweep(sweep_id)
    assert (sweep.trials_done, sweep.trials_failed) == (2, 2)
