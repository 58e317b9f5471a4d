"""The multi-process HTTP load generator against the mock server: timing against queueing theory,
token counts with and without `usage`, and no client process outliving its trial.

Bounds are generous relative bounds around theory (the machine is shared and noisy): they catch
a client that adds whole milliseconds or loses throughput, not sub-millisecond drift."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import psutil
import pytest

from common.records import TrialConfig
from engine.models import build_byte_tokenizer
from experiments.analysis.metrics import compute_trial_metrics
from experiments.load.client_stats import check_client
from experiments.load.loadgen import run_closed_loop, run_open_loop
from experiments.load.queueing import closed_loop, fifo_e2e_s, md1_mean_e2e_s
from experiments.load.workload import RequestSpec, open_loop_arrivals
from experiments.run.trial import run_trial
from experiments.spec.profiles import FixedLength, parse_profile_yaml
from experiments.targets.external import ServerProcess
from experiments.targets.http_target import HttpTarget

pytestmark = pytest.mark.slow  # real processes and real load for seconds
ANY = TrialConfig("continuous", 1, 0.0, concurrency=1)  # the mock ignores server knobs


def mock_cmd(ttft_ms: float, itl_ms: float, capacity: int = 0, *extra: str) -> str:
    return (f"{sys.executable} -m app.cli mock-server --ttft-ms {ttft_ms} --itl-ms {itl_ms} "
            f"--capacity {capacity} --port {{port}} " + " ".join(extra))


@pytest.fixture()
def mock() -> Iterator:
    servers = []

    def start(*args: object) -> str:
        server = ServerProcess(mock_cmd(*args), ANY, health_timeout_s=30)
        server.start()
        servers.append(server)
        return server.base_url

    yield start
    for server in servers:
        server.stop()


def specs(n: int, num_tokens: int) -> list[RequestSpec]:
    return [RequestSpec([1, 2, 3, 4], num_tokens) for _ in range(n)]


def test_closed_loop_above_capacity_matches_theory(mock) -> None:
    # K = 2, C = 6, S = 20 + 4 x 5 = 40 ms: K / S = 50 req/s, E2E = C S / K = 120 ms.
    truth = closed_loop(6, 2, 0.020, 0.005, 5)
    with HttpTarget(mock(20, 5, 2)) as target:
        load = run_closed_loop(target, specs(126, 5), concurrency=6, num_warmup=6)
    m = compute_trial_metrics(load.records, [], [], None, False, load.background)
    assert m.requests_completed == 120 and m.requests_failed == 0
    assert m.requests_per_s <= 1.03 * truth.requests_per_s  # never beat K / S
    assert m.e2e_ms.mean >= 0.97 * truth.e2e_s * 1e3
    verdict = check_client(load.records + load.background, load.client, m.ttft_ms.p50)
    assert verdict.is_client_bound or (m.requests_per_s >= 0.85 * truth.requests_per_s
                                       and m.e2e_ms.mean <= 1.2 * truth.e2e_s * 1e3), verdict.details
    assert m.requests_per_s * m.e2e_ms.mean / 1e3 == pytest.approx(6, rel=0.1)  # Little's law


def test_closed_loop_below_capacity_sees_t_and_i(mock) -> None:
    with HttpTarget(mock(20, 5)) as target:
        load = run_closed_loop(target, specs(84, 5), concurrency=4, num_warmup=4)
    m = compute_trial_metrics(load.records, [], [], None, False, load.background)
    assert m.ttft_ms.p50 >= 19.9 and m.itl_ms.p50 >= 4 and m.e2e_ms.p50 >= 39.9  # never beat T, I
    # Within a few ms of them, unless the trial's own check says the client lagged (a shared
    # machine now and then stalls a process; then the numbers are flagged, not trusted).
    verdict = check_client(load.records + load.background, load.client, m.ttft_ms.p50)
    assert verdict.is_client_bound or (
        m.ttft_ms.p50 <= 26 and m.itl_ms.p50 <= 6.5 and m.e2e_ms.p50 <= 48), verdict.details
    assert all(r.num_output_tokens == 5 and r.admitted_s is None for r in load.records)
    assert load.client is not None and load.client.num_workers == 1 and load.client.loop_lag_s


def test_open_loop_k1_is_md1(mock) -> None:
    # Poisson 12.5/s into K = 1 with S = T = 32 ms (I = 0: one wake-up per request, so the
    # shared machine's scheduling delays barely touch S): rho = 0.4, M/D/1 E2E = 42.7 ms.
    n, arrivals = 180, open_loop_arrivals(12.5, 1.0, 180, seed=3)
    truth = 1e3 * np.asarray(fifo_e2e_s(arrivals, 0.032, 1)[10:])  # these very arrivals
    assert truth.mean() == pytest.approx(1e3 * md1_mean_e2e_s(12.5, 0.032), rel=0.2)
    with HttpTarget(mock(32, 0, 1)) as target:
        load = run_open_loop(target, specs(n, 11), arrivals, num_warmup=10, batch_size=1)
    e2e = np.array([(r.done_s - r.scheduled_s) * 1e3 for r in load.records])
    assert len(e2e) == 170 and not load.saturated and len(load.depth_samples) == 170
    assert e2e.mean() >= 0.97 * truth.mean()  # the client can never beat the truth
    # The queue sees S plus a loopback round trip: the truth for that effective S, with a
    # tolerant bound. On the shared 2-core machine a process is now and then not run for 100+
    # ms, and K = 1 passes that stall on to the next requests; the trial's own check sees it
    # (event-loop lag), and then the numbers are not to be trusted, which is all we can ask.
    s_eff = min(r.done_s - r.sent_s for r in load.records)
    truth_eff = 1e3 * np.mean(fifo_e2e_s(arrivals, s_eff, 1)[10:])
    verdict = check_client(load.records + load.background, load.client, float(np.median(e2e)))
    assert verdict.is_client_bound or e2e.mean() <= 1.35 * truth_eff, verdict.details


@pytest.mark.parametrize("extra", ["", "--no-usage"])
def test_token_counts_with_and_without_usage(mock, extra: str) -> None:
    url = mock(1, 0.5, 0, extra)
    for tokenizer in (None, build_byte_tokenizer()):
        with HttpTarget(url, tokenizer=tokenizer) as target:
            load = run_closed_loop(target, [RequestSpec([5, 6, 7], n) for n in (3, 9, 1, 17, 4)],
                                   concurrency=2, num_warmup=1)
        assert [r.num_output_tokens for r in load.records] == [9, 1, 17, 4]
        assert all(len(r.token_times_s) == r.num_output_tokens for r in load.records)
        assert all(r.token_times_s == tuple(sorted(r.token_times_s)) for r in load.records)


def test_duration_cut_cancels_what_is_in_flight(mock) -> None:
    with HttpTarget(mock(5, 50)) as target:  # 100 tokens x 50 ms: 5 s per request
        t0 = time.monotonic()
        load = run_closed_loop(target, specs(12, 100), concurrency=4, num_warmup=4,
                               max_duration_s=0.5)
        assert time.monotonic() - t0 < 8  # uncut: 12 requests of 5 s, 4 at a time, 15 s
        assert load.was_cut and load.records == []  # measured ones cut short are not results
        assert [r.error for r in load.background] == ["cancelled by client"] * 4  # the warm-up


def test_close_ends_the_worker_processes(mock) -> None:
    target = HttpTarget(mock(1, 1), max_workers=2)
    run_closed_loop(target, specs(40, 2), concurrency=32, num_warmup=0)
    pids = target.worker_pids
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    target.close()
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _gone(procs: list[psutil.Process], timeout_s: float = 15.0) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return not alive


def test_ctrl_c_during_a_trial_leaves_no_client_process(mock) -> None:
    url = mock(5, 20)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "trial", "--target", url,
                             "--tokenizer", "builtin:tiny", "--profile", "batch", "--concurrency", "8",
                             "--requests", "100000", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job starts with SIGINT ignored: restore it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while len(_descendants(proc.pid)) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the run is under way
    workers = _descendants(proc.pid)
    assert workers, "the trial started no client worker"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "aborted" in err
    assert _gone(workers)


def test_a_killed_parent_takes_its_workers_along(mock, tmp_path) -> None:
    url = mock(5, 20)
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from experiments.targets.http_target import HttpTarget\n"
        "from experiments.load.workload import RequestSpec\n"
        "from experiments.load.loadgen import run_closed_loop\n"
        f"t = HttpTarget({url!r}, max_workers=2)\n"
        "run_closed_loop(t, [RequestSpec([1], 2)] * 40, concurrency=32, num_warmup=0)\n"
        "print(*t.worker_pids, flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            cwd=os.getcwd())
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    workers = [psutil.Process(p) for p in pids]
    proc.kill()
    proc.wait()
    assert _gone(workers)


# -- every trial checks itself ------------------------------------------------------------------

PROFILE = parse_profile_yaml("name: t\nprompt_tokens: {kind: fixed, value: 4}\n"
                             "output_tokens: {kind: fixed, value: 128}\n"
                             "arrival: {mode: closed, concurrency: 1}\nwarmup_requests: 0\n"
                             "objective: max_throughput\n", "t")


def http_trial(url: str, concurrency: int, num_requests: int, num_tokens: int,
               max_workers: int | None = None):
    profile = PROFILE.model_copy(update={"output_tokens": FixedLength(kind="fixed", value=num_tokens),
                                         "warmup_requests": concurrency})
    with HttpTarget(url, max_workers=max_workers) as target:
        return run_trial(target, TrialConfig("continuous", 1, 0.0, concurrency=concurrency), profile,
                         num_requests, seed=0, slos=[], vocab_size=256, max_context_tokens=4096,
                         avoid_ids=[0])


def test_an_overloaded_client_is_flagged_client_bound(mock) -> None:
    # 512 users x 128 tokens against an instant server, on one client process (however many
    # cores the machine has): the client cannot keep up.
    m = http_trial(mock(0, 0), 512, 2048, 128, max_workers=1).metrics
    assert m.client_bound and "lag" in m.client_bound_reason, m.details.client
    assert m.client_lag_ms is not None and m.details.client.num_workers == 1


def test_a_light_load_is_not_flagged(mock) -> None:
    # TTFT 1 s: the limit is 20 ms of lag, far above what 4 users cost the client.
    m = http_trial(mock(1000, 1), 4, 8, 2).metrics
    assert not m.client_bound, m.client_bound_reason
    assert m.client_lag_ms.p99 < 20 and m.details.client.loop_lag_ms["p50"] < 20


def test_cli_carries_the_verdict_in_trial_json_and_the_trials_table(mock, tmp_path, tiny_profile) -> None:
    def cli(*args: str) -> str:
        run = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        return run.stdout

    out = json.loads(cli("trial", "--target", mock(20, 2), "--tokenizer", "builtin:tiny", "--profile",
                         str(tiny_profile), "--concurrency", "2", "--requests", "6", "--json"))
    assert isinstance(out["client_bound"], bool) and set(out["client_lag_ms"]) == {"p50", "p99", "max"}
    db = f"sqlite:///{tmp_path / 'c.db'}"
    sweep = json.loads(cli("sweep", "--profile", str(tiny_profile), "--model", "builtin:tiny",
                           "--policy", "continuous", "--batch-sizes", "1", "--max-wait-ms", "0",
                           "--concurrency", "2", "--requests", "6", "--server-cmd", mock_cmd(20, 2),
                           "--db", db, "--json"))
    rows = json.loads(cli("trials", str(sweep["sweep_id"]), "--format", "json", "--db", db))
    assert rows and all(isinstance(r["client_bound"], bool) and r["client_lag_ms_p99"] >= 0 for r in rows)
    assert "client_bound" in cli("trials", str(sweep["sweep_id"]), "--db", db).splitlines()[0]
