"""`tradeoff search --server-cmd`: a real server per config (the mock server, whose capacity K
is the config's batch size), started once for that config's search and stopped before the next."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from db.store import Store

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# Service time S = T + 3 I = 60 ms for 4 output tokens. With C users and K slots (FIFO), C <= K
# users never queue (TTFT ~ 30 ms, within the 80 ms SLO); with C > K, C - K of every C requests
# wait a whole S (TTFT >= 90 ms): at K + 1 users 1 in K + 1 misses, below the 90% attainment
# target (100 requests make the interval decide). So each config's capacity in users is its K.
# The SLO sits near the miss side: a stall can only make a request later, so a queued request
# never passes, while a lone one has 50 ms of slack for the machine's hiccups.
PROFILE = """\
name: mockcap
prompt_tokens: {kind: fixed, value: 8}
output_tokens: {kind: fixed, value: 4}
arrival: {mode: closed, concurrency: 1}
slos:
  ttft_ms: {percentile: p90, max_ms: 80}
objective: max_goodput
warmup_requests: 2
"""

# Logs its arguments, then becomes the mock server: one line per server started.
STARTER = """\
import os, sys
with open(sys.argv[1], "a") as log:
    log.write(" ".join(sys.argv[2:]) + "\\n")
os.execv(sys.executable, [sys.executable, "-m", "app.cli", "mock-server", *sys.argv[2:]])
"""


def mock_servers(tag: str) -> list[psutil.Process]:
    """Live processes started from this test's template (their model name carries `tag`)."""
    return [p for p in psutil.process_iter(["cmdline"]) if tag in " ".join(p.info["cmdline"] or [])]


def test_search_starts_one_server_per_config_and_finds_each_capacity(tmp_path: Path):
    tag = f"mock-{uuid.uuid4().hex[:8]}"
    (tmp_path / "mockcap.yaml").write_text(PROFILE)
    (tmp_path / "starter.py").write_text(STARTER)
    log, db = tmp_path / "starts.log", f"sqlite:///{tmp_path / 's.db'}"
    cmd = (f"{sys.executable} {tmp_path / 'starter.py'} {log} --ttft-ms 30 --itl-ms 10 "
           f"--capacity {{batch_size}} --port {{port}} --model {tag}")
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "search", "--model", "builtin:tiny",
         "--profile", str(tmp_path / "mockcap.yaml"), "--policy", "continuous",
         "--batch-sizes", "1,2,4", "--max-wait-ms", "0", "--concurrency", "--max-load", "8",
         "--requests", "100", "--budget-min", "10", "--server-cmd", cmd, "--db", db, "--json",
         "--no-predict"],  # every config searched: a plan from probes would skip b1
        cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    found = {c["config"]["batch_size"]: c for c in out["capacities"]}
    assert {k: c["capacity"] for k, c in found.items()} == {1: 1, 2: 2, 4: 4}
    assert found[4]["decided"] and found[1]["decided"]
    # b2 is decided, or, once it missed at a load b4 was shown to carry, pruned (it cannot win)
    assert found[2]["decided"] or (found[2]["status"] == "pruned" and found[2]["upper"] <= 4
                                   and "b4" in found[2]["reason"])
    assert out["recommended"]["config"]["batch_size"] == 4 and out["recommended"]["capacity"] == 4
    assert out["undecided"] == [] and list(out["ruled_out"]) == (
        [found[2]["label"]] if found[2]["status"] == "pruned" else [])
    assert all(out["ruled_out"].values())  # each with its reason
    assert all(c["predicted"] is None for c in out["capacities"]) and out["calibration"] is None
    assert all(c["unit"] == "users" for c in out["capacities"])
    # Each config's server started exactly once, with its own K, one config after another.
    started = [int(line.split("--capacity ")[1].split()[0]) for line in log.read_text().splitlines()]
    assert sorted(started) == [1, 2, 4]
    trials = Store(db, create=False).list_trials(out["sweep_id"])
    assert out["trials_run"] == len(trials)
    in_order = [t.config.batch_size for t in sorted(trials, key=lambda t: t.trial_id)]
    runs = [b for i, b in enumerate(in_order) if i == 0 or in_order[i - 1] != b]
    assert runs == started  # each config's trials in one run, on the server started for it
    assert all(t.details.prediction is None for t in trials)  # external: nothing to fit
    time.sleep(0.5)
    assert mock_servers(tag) == []
