"""`tradeoff sweep --executor ray` on a real local Ray cluster (2 CPU slots), builtin:tiny.

One cluster serves every test here (`ray start --head` on loopback, stopped at the end): each
sweep connects to it as a remote one would, by address.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.cli import main
from experiments.run.ray_executor import MAX_ATTEMPTS, retry_or_fail

ray = pytest.importorskip("ray")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_lost_workers_trial_is_retried_once_then_failed():
    assert MAX_ATTEMPTS == 2
    assert [retry_or_fail(a) for a in (1, 2, 3)] == ["retry", "fail", "fail"]


@pytest.mark.parametrize("flags, needle", [
    (["--executor", "ray", "--ray-address", "127.0.0.1:1"], "no Ray head answers there"),
    (["--executor", "ray", "--ray-address", "nohostport"], "is not HOST:PORT"),
    (["--executor", "ray", "--replicas", "1,2"], "one engine per worker"),
    (["--ray-address", "127.0.0.1:6379"], "needs --executor ray"),
    (["--executor", "spark"], "executor"),
])
def test_bad_ray_input_exits_2_and_writes_nothing(capsys, tmp_path: Path, tiny_profile: Path,
                                                  flags: list[str], needle: str):
    db = tmp_path / "t.db"
    code, _, err = run_cli(capsys, "sweep", "--profile", str(tiny_profile), "--concurrency", "2",
                           "--db", f"sqlite:///{db}", *flags)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert not db.exists() or sqlite3.connect(db).execute("select count(*) from sweeps").fetchone() == (0,)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> str:
    """A real Ray head on loopback with 2 CPU slots, for this module's sweeps."""
    ray_bin = Path(sys.executable).parent / "ray"
    if not ray_bin.exists():
        ray_bin = Path(shutil.which("ray") or "ray")
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    # A throwaway cluster: no token to share between it and the test's drivers.
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env = dict(os.environ)
    # --block keeps the head in the foreground of its own session: stopping that session ends
    # exactly this cluster (`ray stop` would end every Ray instance on the machine).
    head = subprocess.Popen([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=2",
                             "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                             f"--temp-dir={temp}", "--disable-usage-stats", "--block"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _wait_for_port(port, head)
    yield f"127.0.0.1:{port}"
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _wait_for_port(port: int, head: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(2)  # the GCS answers before the raylet has registered the node
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the Ray head did not come up")


def sweep_args(db: str, profile: Path, address: str, *extra: str) -> list[str]:
    return ["sweep", "--profile", str(profile), "--policy", "static,continuous", "--batch-sizes",
            "1,4", "--max-wait-ms", "0", "--concurrency", "2", "--requests", "6", "--db", db,
            "--executor", "ray", "--ray-address", address, "--json", *extra]


@pytest.mark.slow
def test_cancel_keeps_finished_trials_and_resume_runs_each_once(tmp_path, tiny_profile, cluster):
    from db.store import Store
    from experiments.run.runners import runner_for

    db = f"sqlite:///{tmp_path / 'c.db'}"
    # Eight trials of ~1 s on two slots: after the first lands, three more rounds are left, so
    # Ctrl-C reaches the sweep mid-way even on a fast machine (four trials once raced to the end).
    proc = subprocess.Popen([sys.executable, "-m", "app.cli",
                             *sweep_args(db, tiny_profile, cluster, "--requests", "30",
                                         "--batch-sizes", "1,2,4,8")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and _trials_stored(tmp_path / "c.db") < 1:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["status"] == "cancelled"
    store = Store(db)
    kept = store.list_trials(1)
    assert 1 <= len(kept) < 8 and all(t.status == "done" for t in kept)
    assert runner_for(store, 1).run() == "done"
    trials = store.list_trials(1)
    assert len(trials) == 8 and len({t.config for t in trials}) == 8
    where = [t.details.provenance.to_dict() for t in trials]
    assert {w["executor"] for w in where} == {"ray"} and all(w["node"] and w["node_id"] for w in where)
    assert {w["device"] for w in where} == {"cpu"} and all(w["attempt"] == 1 for w in where)
    assert len({(w["node_id"], w["pid"]) for w in where}) >= 2  # both slots measured


@pytest.mark.slow
def test_a_killed_worker_costs_one_retry_and_no_lost_trial(tmp_path, tiny_profile, cluster):
    from db.store import Store
    from experiments.run.runners import runner_for
    from experiments.run.sweep import create_sweep
    from experiments.spec.grid import parse_spec
    from experiments.spec.profiles import load_profile

    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    spec = parse_spec({"profile": str(tiny_profile), "policies": ["continuous"], "batch_sizes": [2, 4],
                       "max_wait_ms": [0.0], "concurrency": [2], "requests": 160, "executor": "ray",
                       "ray_address": cluster})
    sweep_id = create_sweep(store, spec, load_profile(str(tiny_profile)))
    runner = runner_for(store, sweep_id)
    killed: list[int] = []

    def kill_a_worker_mid_trial() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            time.sleep(0.1)  # trials of ~3 s: kill well inside one, even on a fast machine
            if runner.store.get_sweep(sweep_id).current_label:  # trials in flight
                pids = _worker_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])

    killer = threading.Thread(target=kill_a_worker_mid_trial, daemon=True)
    killer.start()
    assert runner.run() == "done"
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    trials = store.list_trials(sweep_id)
    assert len(trials) == 2 and all(t.status == "done" for t in trials)
    attempts = sorted(t.details.provenance.attempt for t in trials)
    assert attempts == [1, 2]  # the killed worker's trial ran again, elsewhere


def _trials_stored(path: Path) -> int:
    """Trials the sweep has stored so far (0 before its db exists); a plain read, polled often."""
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as con:
            return con.execute("select count(*) from trials").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def _worker_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any("TrialWorker" in part for part in (p.info["cmdline"] or []))]


@pytest.mark.slow
def test_each_worker_starts_and_owns_the_servers_of_its_configs(capsys, tmp_path, tiny_profile, cluster):
    # Two server configs (the mock ignores its knobs but each gets its own process), two slots.
    mock = (f"{sys.executable} -m app.cli mock-server --ttft-ms 5 --itl-ms 2 --capacity {{batch_size}} "
            "--port {port}")
    db = f"sqlite:///{tmp_path / 's.db'}"
    code, out, err = run_cli(capsys, "sweep", "--profile", str(tiny_profile), "--server-cmd", mock,
                             "--tokenizer", "builtin:tiny", "--policy", "continuous", "--batch-sizes",
                             "2,4", "--max-wait-ms", "0", "--concurrency", "1,2", "--requests", "6",
                             "--db", db, "--executor", "ray", "--ray-address", cluster, "--json")
    assert code == 0, err
    assert json.loads(out)["trials_done"] == 4
    code, out, _ = run_cli(capsys, "trials", "1", "--format", "json", "--db", db)
    trials = json.loads(out)
    logs = {t["batch_size"]: t["provenance"]["server_log"] for t in trials}
    assert len(set(logs.values())) == 2  # one server per config, shared by its two loads
    assert all(t["provenance"]["executor"] == "ray" and t["server_start_s"] > 0 for t in trials)
    assert all(Path(log).parent == tmp_path / "tradeoff-logs" / "sweep-1" for log in logs.values())
    assert "mock-server" in trials[0]["provenance"]["engine"]["command"]
