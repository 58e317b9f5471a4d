"""Is the load generator telling the truth? tradeoff vs a minimal reference client vs queueing
theory, against the mock server (exactly known timing), side by side in one run.

For a grid of (users, tokens, T, I, capacity K) in closed loop, prints the truth (S = T + (n-1) I;
K/S req/s and E2E = C S / K when C > K), `tradeoff`'s numbers (HttpTarget: client worker
processes, with its own client_bound verdict) and a minimal aiohttp client's (one coroutine per
user, perf_counter at each chunk, in its own process). Then: the highest streaming rate one trial
sustains (T = I = 0, 16 tokens) with the mock server's own CPU per request, an open-loop M/D/1
check, and a deliberately overloaded client.

    .venv/bin/python scripts/bench_client_truth.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.records import TrialConfig  # noqa: E402
from experiments.load.loadgen import run_open_loop  # noqa: E402
from experiments.load.queueing import closed_loop, fifo_e2e_s, md1_mean_e2e_s  # noqa: E402
from experiments.load.workload import RequestSpec, open_loop_arrivals  # noqa: E402
from experiments.run.trial import run_trial  # noqa: E402
from experiments.spec.profiles import FixedLength, parse_profile_yaml  # noqa: E402
from experiments.targets.external import ServerProcess  # noqa: E402
from experiments.targets.http_target import HttpTarget  # noqa: E402

ANY = TrialConfig("continuous", 1, 0.0, concurrency=1)  # the mock ignores server knobs
PROFILE = parse_profile_yaml("name: b\nprompt_tokens: {kind: fixed, value: 8}\n"
                             "output_tokens: {kind: fixed, value: 16}\n"
                             "arrival: {mode: closed, concurrency: 1}\nobjective: max_throughput\n", "b")
# (tokens, T ms, I ms) x users x capacity; the two reported settings are in it.
SHAPES = [(16, 40.0, 10.0), (32, 5.0, 2.0), (128, 10.0, 1.0)]
USERS = {None: [1, 8, 32, 64], 2: [1, 8]}  # capacity -> users (C > K queues: E2E = C S / K)
QUICK = [(8, 16, 40.0, 10.0, None), (32, 32, 5.0, 2.0, None), (8, 16, 20.0, 2.0, 2)]


def mock_cmd(ttft_ms: float, itl_ms: float, capacity: int | None) -> str:
    return (f"{sys.executable} -m app.cli mock-server --ttft-ms {ttft_ms:g} --itl-ms {itl_ms:g} "
            f"--capacity {capacity or 0} --port {{port}}")


def num_requests(users: int, tokens: int, ttft_ms: float, itl_ms: float, cap: int | None,
                 quick: bool) -> int:
    """Enough for a few seconds of load at the true rate (at least 3 per user, at most 3,000)."""
    rate = closed_loop(users, cap, ttft_ms / 1e3, itl_ms / 1e3, tokens).requests_per_s
    seconds = 2.0 if quick else 4.0
    return int(min(3000, max(3 * users, seconds * rate)))


# -- tradeoff ------------------------------------------------------------------------------------


def tradeoff_run(url: str, users: int, tokens: int, n: int) -> dict:
    profile = PROFILE.model_copy(update={"output_tokens": FixedLength(kind="fixed", value=tokens),
                                         "warmup_requests": users})
    with HttpTarget(url) as target:
        m = run_trial(target, TrialConfig("continuous", 1, 0.0, concurrency=users), profile, n, seed=0,
                      slos=[], vocab_size=256, max_context_tokens=8192, avoid_ids=[0]).metrics
    return {"ttft": m.ttft_ms.p50, "itl": m.itl_ms.p50 if m.itl_ms else 0.0, "e2e": m.e2e_ms.p50,
            "rps": m.requests_per_s, "client_bound": m.client_bound, "reason": m.client_bound_reason}


# -- the minimal reference client (its own process) ---------------------------------------------


async def _reference(url: str, users: int, tokens: int, n: int) -> dict:
    import aiohttp

    body = json.dumps({"model": "mock", "prompt": list(range(1, 9)), "max_tokens": tokens,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    left, out = [n + users], []  # the first `users` requests are warm-up

    async def user(session: aiohttp.ClientSession) -> None:
        while left[0] > 0:
            left[0] -= 1
            start, times = time.perf_counter(), []
            async with session.post(url + "/completions", data=body,
                                    headers={"Content-Type": "application/json"}) as resp:
                async for _ in resp.content.iter_any():
                    times.append(time.perf_counter())
            out.append((start, times))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(user(session) for _ in range(users)))
    measured = sorted(out)[users:]
    return _reference_stats(measured, tokens)


def _reference_stats(measured: list, tokens: int) -> dict:
    # Chunks: one read may carry several tokens; like the client, one time per read.
    ttft = [t[0] - s for s, t in measured]
    e2e = [t[-1] - s for s, t in measured]
    itl = [b - a for _, t in measured for a, b in zip(t, t[1:], strict=False)]
    span = max(s + e for (s, _), e in zip(measured, e2e, strict=True)) - measured[0][0]
    return {"ttft": 1e3 * float(np.median(ttft)), "e2e": 1e3 * float(np.median(e2e)),
            "itl": 1e3 * float(np.median(itl)) if itl else 0.0, "rps": len(measured) / span}


def reference_run(url: str, users: int, tokens: int, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--reference", url, str(users), str(tokens), str(n)],
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout)


# -- the table -----------------------------------------------------------------------------------


def grid(quick: bool) -> list[tuple[int, int, float, float, int | None]]:
    if quick:
        return QUICK
    return [(c, n, t, i, k) for k, users in USERS.items() for (n, t, i) in SHAPES for c in users]


def within(x: float, truth: float) -> bool:
    return abs(x - truth) <= max(2.0, 0.05 * truth)


def closed_loop_table(quick: bool) -> None:
    print("closed loop: p50 ms and req/s; truth | tradeoff | minimal aiohttp client")
    print(f"{'C':>3} {'n':>4} {'T':>4} {'I':>4} {'K':>3} | {'TTFT':>17} | {'ITL':>14} | {'E2E':>20} | "
          f"{'req/s':>20} | target  client_bound")
    by_server: dict = {}
    for cell in grid(quick):
        by_server.setdefault(cell[2:], []).append(cell)
    for (ttft_ms, itl_ms, cap), cells in by_server.items():
        with ServerProcess(mock_cmd(ttft_ms, itl_ms, cap), ANY, health_timeout_s=30) as server:
            for users, tokens, *_ in cells:
                _row(server.base_url, users, tokens, ttft_ms, itl_ms, cap, quick)


def _row(url: str, users: int, tokens: int, ttft_ms: float, itl_ms: float, cap: int | None,
         quick: bool) -> None:
    n = num_requests(users, tokens, ttft_ms, itl_ms, cap, quick)
    truth = closed_loop(users, cap, ttft_ms / 1e3, itl_ms / 1e3, tokens)
    t = {"ttft": truth.ttft_s * 1e3, "itl": itl_ms, "e2e": truth.e2e_s * 1e3, "rps": truth.requests_per_s}
    ours, ref = tradeoff_run(url, users, tokens, n), reference_run(url, users, tokens, n)
    ref_ok = all(abs(ref[k] - t[k]) <= 2.0 for k in ("ttft", "e2e"))
    met = (all(within(ours[k], t[k]) for k in ("ttft", "itl", "e2e"))
           and ours["rps"] >= 0.97 * ref["rps"]) if ref_ok else None
    verdict = "-" if met is None else ("met" if met else "MISSED")
    cols = " | ".join(f"{t[k]:6.1f} {ours[k]:6.1f} {ref[k]:6.1f}" for k in ("ttft", "itl", "e2e", "rps"))
    print(f"{users:3d} {tokens:4d} {ttft_ms:4g} {itl_ms:4g} {cap or '-':>3} | {cols} | {verdict:7} "
          f"{ours['client_bound']}", flush=True)


def max_rate(quick: bool) -> None:
    users, tokens = 64, 16
    with ServerProcess(mock_cmd(0, 0, None), ANY, health_timeout_s=30) as server:
        srv = psutil.Process(server.proc.pid)
        cpu0 = sum(srv.cpu_times()[:2])
        n = 4000 if quick else 10000
        ours = tradeoff_run(server.base_url, users, tokens, n)
        server_cpu_ms = 1e3 * (sum(srv.cpu_times()[:2]) - cpu0) / (n + users)
    print(f"\nmax rate: T = I = 0, {tokens} tokens, {users} users, capacity unlimited: "
          f"{ours['rps']:.0f} streaming req/s (target >= 1,000); the mock server alone costs "
          f"{server_cpu_ms:.3f} ms CPU per request (<= {1e3 / server_cpu_ms:.0f} req/s on one core); "
          f"client_bound={ours['client_bound']} ({ours['reason']})", flush=True)


def md1(quick: bool) -> None:
    rate, service_s, n = 10.0, (10 + 15 * 2) / 1e3, 150 if quick else 400
    arrivals = open_loop_arrivals(rate, 1.0, n, seed=1)
    with ServerProcess(mock_cmd(10, 2, 1), ANY, health_timeout_s=30) as server, \
            HttpTarget(server.base_url) as target:
        load = run_open_loop(target, [RequestSpec(list(range(1, 9)), 16)] * n, arrivals, num_warmup=10,
                             batch_size=1)
    e2e = 1e3 * np.mean([r.done_s - r.scheduled_s for r in load.records])
    path = 1e3 * np.mean(fifo_e2e_s(arrivals, service_s, 1)[10:])
    theory = 1e3 * md1_mean_e2e_s(rate, service_s)
    print(f"\nopen loop Poisson {rate:g} req/s, K = 1, T = 10, I = 2, 16 tokens ({n - 10} measured): "
          f"mean E2E {e2e:.1f} ms; M/D/1 {theory:.1f} ms ({100 * (e2e / theory - 1):+.1f}%, target "
          f"within 5%); these arrivals' exact FIFO value {path:.1f} ms ({100 * (e2e / path - 1):+.1f}%)",
          flush=True)


def overload(quick: bool) -> None:
    with ServerProcess(mock_cmd(0, 0, None), ANY, health_timeout_s=30) as server:
        ours = tradeoff_run(server.base_url, 512, 128, 2048 if quick else 4096)
    print(f"\noverloaded client: 512 users x 128 tokens, T = I = 0: client_bound={ours['client_bound']} "
          f"({ours['reason']}); it reported {ours['rps']:.0f} req/s, TTFT p50 {ours['ttft']:.1f} ms",
          flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--reference"]:
        url, users, tokens, n = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(asyncio.run(_reference(url, users, tokens, n))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three grid points, shorter runs")
    args = parser.parse_args()
    print(f"machine: {psutil.cpu_count()} cores, load average {psutil.getloadavg()[0]:.1f} at start\n")
    closed_loop_table(args.quick)
    max_rate(args.quick)
    md1(args.quick)
    overload(args.quick)


if __name__ == "__main__":
    main()
