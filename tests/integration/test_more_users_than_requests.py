"""A closed loop with more users than requests (C > warm-up + measured) finishes, at concurrency C.

Such a trial once hung forever against an external target: a user with no request of its own
cycled an empty list without ever awaiting, which blocked its client worker's event loop, so the
worker's measured requests never ended. Every user now sends: those beyond the trial's requests
send cooldown requests from the start, as the in-process driver always did, so C requests are in
flight from the first one (docs/metrics.md, "Closed loop cooldown"). Each check runs under a
timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from common.records import RequestRecord, TrialConfig
from engine.config import EngineConfig, SchedulerConfig
from experiments.load import client_pool
from experiments.load.loadgen import LoadResult, run_closed_loop
from experiments.load.workload import RequestSpec
from experiments.targets.external import ServerProcess
from experiments.targets.http_target import HttpTarget
from experiments.targets.local import LocalTarget

pytestmark = pytest.mark.slow  # real processes
ANY = TrialConfig("continuous", 1, 0.0, concurrency=1)  # the mock ignores server knobs
CLI_TIMEOUT_S = 60.0


@pytest.fixture()
def mock_url() -> Iterator[str]:
    # T = 50 ms, I = 5 ms: a request lasts far longer than the client needs to send C of them.
    cmd = f"{sys.executable} -m app.cli mock-server --ttft-ms 50 --itl-ms 5 --port {{port}}"
    with ServerProcess(cmd, ANY, health_timeout_s=30) as server:
        yield server.base_url


def request_specs(n: int) -> list[RequestSpec]:
    # Distinct output lengths, so a request that ran shows which spec its body came from.
    return [RequestSpec([1, 2, 3, 4], 2 + i % 5) for i in range(n)]


def peak_in_flight(records: list[RequestRecord]) -> int:
    # Each user sends its next request after its previous one ended: ends sort before sends.
    events = sorted([(r.sent_s, 1) for r in records] + [(r.done_s, -1) for r in records])
    peak = level = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def check_every_user_sent(load: LoadResult, specs: list[RequestSpec], num_warmup: int,
                          concurrency: int) -> None:
    assert not load.was_cut and not load.was_stopped
    assert [r.request_id for r in load.records] == list(range(num_warmup, len(specs)))
    assert all(r.error is None and r.num_output_tokens == specs[r.request_id].max_new_tokens
               for r in load.records)
    sent = load.records + load.background
    ids = [r.request_id for r in sent]
    assert len(ids) == len(set(ids))  # cooldown requests never reuse an index
    # Every user's first request is scheduled at the start: C of them, not len(specs).
    start_s = min(r.scheduled_s for r in sent)
    assert sum(r.scheduled_s == start_s for r in sent) == concurrency
    assert peak_in_flight(sent) == concurrency
    for r in load.background:  # a request that ran was built from the spec its index names
        if r.error is None:
            assert r.num_output_tokens == specs[r.request_id % len(specs)].max_new_tokens


def test_cli_trial_with_more_users_than_requests_finishes(mock_url: str) -> None:
    # The reported case: 64 users, 48 measured requests (plus the profile's warm-up ones).
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "trial", "--target", mock_url, "--tokenizer",
         "builtin:tiny", "--profile", "chat", "--concurrency", "64", "--requests", "48", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the trial and its client workers
        proc.communicate()
        pytest.fail(f"the trial did not finish in {CLI_TIMEOUT_S:g} s")
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["config"]["concurrency"] == 64
    assert result["requests_completed"] == 48 and result["requests_failed"] == 0


def test_http_closed_loop_keeps_every_user_busy(mock_url: str, monkeypatch) -> None:
    # Bounded: a stuck worker turns into a cut run and a missing result within seconds.
    monkeypatch.setattr(client_pool, "RESULT_TIMEOUT_S", 5.0)
    specs, num_warmup, concurrency = request_specs(12), 4, 40
    with HttpTarget(mock_url, max_workers=2) as target:
        load = run_closed_loop(target, specs, concurrency, num_warmup, max_duration_s=20.0)
    assert load.client is not None and load.client.num_workers == 2  # users on both workers
    check_every_user_sent(load, specs, num_warmup, concurrency)


def test_one_request_many_users_over_http(mock_url: str, monkeypatch) -> None:
    monkeypatch.setattr(client_pool, "RESULT_TIMEOUT_S", 5.0)
    specs = request_specs(1)
    with HttpTarget(mock_url, max_workers=2) as target:
        load = run_closed_loop(target, specs, 20, num_warmup=0, max_duration_s=20.0)
    check_every_user_sent(load, specs, 0, 20)


def test_in_process_closed_loop_agrees() -> None:
    # The local engine's driver: the same semantics (it issues C requests at the start).
    specs, num_warmup, concurrency = request_specs(6), 2, 16
    local = LocalTarget.start(EngineConfig(model="builtin:tiny"), SchedulerConfig("continuous", 32, 0.0))
    try:
        load = run_closed_loop(local.engine, specs, concurrency, num_warmup, max_duration_s=60.0)
    finally:
        local.close()
    assert not load.was_cut
    assert [r.request_id for r in load.records] == list(range(num_warmup, len(specs)))
    sent = load.records + load.background
    start_s = min(r.scheduled_s for r in sent)
    assert sum(r.scheduled_s == start_s for r in sent) == concurrency
