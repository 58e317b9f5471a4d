"""A 16-trial sweep run sequentially (one engine, 1 thread per trial) vs on a local Ray cluster
with 2 CPU slots (2 trials at a time, 1 thread each): wall time of each, and the ratio.

    .venv/bin/python scripts/bench_ray.py [--profile chat] [--requests 24]

The cluster is started first (`ray start --head --block`, 2 CPUs, loopback) and the Ray sweep
connects to it by address, as the issue's target states; the time to start a cluster is
reported apart. Every trial must land exactly once in each store.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--policy", "static,continuous", "--batch-sizes", "1,4", "--max-wait-ms", "0",
        "--concurrency", "2,4", "--repetitions", "2"]


def sweep(db: Path, args: argparse.Namespace, *extra: str, env: dict) -> float:
    cmd = [sys.executable, "-m", "app.cli", "sweep", "--model", "builtin:tiny", "--profile", args.profile,
           "--requests", str(args.requests), *GRID, "--db", f"sqlite:///{db}", "--json", *extra]
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    wall = time.monotonic() - start
    result = json.loads(out.stdout)
    rows = sqlite3.connect(db).execute("select count(*), count(distinct load_key) from trials").fetchone()
    assert result["trials_done"] == 16 and rows[0] == 16, (result, rows)
    return wall


def start_cluster(temp: str, env: dict) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = str(Path(sys.executable).parent / "ray")
    start = time.monotonic()
    head = subprocess.Popen([ray, "start", "--head", f"--port={port}", "--num-cpus=2",
                             "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                             f"--temp-dir={temp}", "--disable-usage-stats", "--block"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    time.sleep(2)
    return head, f"127.0.0.1:{port}", time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="chat")
    ap.add_argument("--requests", type=int, default=24)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        sequential = sweep(Path(tmp) / "seq.db", args, env=env)
        head, address, cluster_s = start_cluster(tmp, env)
        try:
            on_ray = sweep(Path(tmp) / "ray.db", args, "--executor", "ray", "--ray-address", address,
                           env=env)
        finally:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
    print(json.dumps({"sequential_s": round(sequential, 1), "ray_s": round(on_ray, 1),
                      "ratio": round(on_ray / sequential, 3), "cluster_start_s": round(cluster_s, 1),
                      "trials": 16, "profile": args.profile, "requests": args.requests}, indent=2))


if __name__ == "__main__":
    main()
