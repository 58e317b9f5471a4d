"""External targets over real HTTP: `tradeoff serve` as the server, driven by trials and sweeps."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from common.records import TrialConfig
from db.store import Store
from engine.config import EngineConfig, SchedulerConfig
from experiments.run.trial import run_trial
from experiments.spec.profiles import load_profile
from experiments.targets.external import ExternalTarget, ServerProcess, TargetSetupError, load_tokenizer
from experiments.targets.local import LocalTarget

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SERVE = (f"{sys.executable} -m app.cli serve --model builtin:tiny --policy {{policy}} "
         "--batch-size {batch_size} --max-wait-ms {max_wait_ms} --port {port}")


def servers_running() -> list[psutil.Process]:
    """tradeoff serve processes started from this test's template (none must outlive a sweep)."""
    return [p for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and "serve" in p.info["cmdline"] and "--max-wait-ms" in p.info["cmdline"]
            and "app.cli" in " ".join(p.info["cmdline"])]


def test_in_process_and_http_agree_on_the_same_config(tiny_profile: Path):
    # Open loop at a rate both handle easily: the same arrivals, so the same work, should give
    # the same throughput and similar latency. Tolerances: throughput 10%; p50 E2E within
    # 50% + 25 ms (HTTP adds a loopback round trip, SSE framing and client scheduling per token).
    profile = load_profile(str(tiny_profile))
    config = TrialConfig("continuous", 8, 0.0, rate=8.0)
    local = LocalTarget.start(EngineConfig(model="builtin:tiny"), SchedulerConfig("continuous", 8, 0.0))
    try:
        in_proc = run_trial(local.engine, config, profile, 40, seed=3, slos=[], **local.request_kwargs())
    finally:
        local.close()
    with ServerProcess(SERVE, config) as server:
        remote = ExternalTarget.connect(server.base_url, None, load_tokenizer("builtin:tiny"))
        try:
            over_http = run_trial(remote.engine, config, profile, 40, seed=3, slos=[],
                                  **remote.request_kwargs())
        finally:
            remote.close()
    a, b = in_proc.metrics, over_http.metrics
    assert a.requests_completed == b.requests_completed == 40
    assert sum(r.num_output_tokens for r in in_proc.records) == sum(
        r.num_output_tokens for r in over_http.records)
    assert b.requests_per_s == pytest.approx(a.requests_per_s, rel=0.10)
    # Unless the HTTP trial's own check flagged its client as lagging (then it is not trusted).
    assert b.client_bound or abs(b.e2e_ms.p50 - a.e2e_ms.p50) <= 0.5 * a.e2e_ms.p50 + 25, (
        b.client_bound_reason)


def test_sweep_with_server_cmd_starts_and_stops_a_server_per_config(tmp_path: Path, tiny_profile: Path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "sweep", "--profile", str(tiny_profile), "--model",
         "builtin:tiny", "--policy", "continuous", "--batch-sizes", "1,4", "--max-wait-ms", "0",
         "--concurrency", "1,2", "--requests", "6", "--server-cmd", SERVE, "--db", db, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["status"] == "done" and out["trials_done"] == 4
    trials = Store(db, create=False).list_trials(out["sweep_id"])
    assert {(t.config.batch_size, t.config.concurrency) for t in trials} == {(1, 1), (1, 2), (4, 1), (4, 2)}
    assert all(t.metrics["queue_wait_ms_p50"] is None for t in trials)  # external: not visible
    time.sleep(0.5)
    assert servers_running() == []


def test_server_that_never_gets_healthy_shows_its_log(tmp_path: Path):
    cmd = f"{sys.executable} -c \"import sys; print('boom: no GPU'); sys.exit(3)\" {{port}}"
    with pytest.raises(TargetSetupError, match="boom: no GPU"):
        ServerProcess(cmd, TrialConfig("static", 1, 0.0, concurrency=1), health_timeout_s=20).start()


def test_bad_placeholder_is_a_clear_error():
    with pytest.raises(TargetSetupError, match="placeholder"):
        ServerProcess("serve --bs {batchsize}", TrialConfig("static", 1, 0.0, concurrency=1))
