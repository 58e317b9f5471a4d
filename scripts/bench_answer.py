"""Is the recommendation trustworthy? The answer's stability, its truth against a known server,
and its re-measurement: real runs, side by side, figures for docs/benchmarks.md.

    .venv/bin/python scripts/bench_answer.py demo --runs 5        # `tradeoff demo` N times (~2 min each)
    .venv/bin/python scripts/bench_answer.py mock --runs 5        # search vs a mock server of known capacity
    .venv/bin/python scripts/bench_answer.py remeasure --runs 5   # the demo's chat answer, fresh seeds

- demo: the same recommendation (or the same named tie) every run? chat's and batch's differ?
- mock: `tradeoff mock-server --ttft-ms 40 --itl-ms 10 --capacity 8` searched at a rate (chat
  profile); the truth is the M/G/8 FIFO queue simulated exactly (`queueing.fifo_e2e_s` per
  request, 200,000 Poisson arrivals per rate, the chat profile's output lengths) under the SLO
  thresholds the search resolved; within one bisection step (10%) of the truth?
- remeasure: the chat answer of the latest demo run, re-measured as `tradeoff trial` with new
  seeds at its stated capacity: does it meet the attainment target?
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRADEOFF = [str(ROOT / ".venv/bin/tradeoff")]
sys.path.insert(0, str(ROOT))


def cli(*args: str) -> dict:
    out = subprocess.run([*TRADEOFF, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def demo(runs: int, db_dir: Path) -> None:
    answers = []
    for i in range(runs):
        started = time.monotonic()
        out = cli("demo", "--json", "--db", f"sqlite:///{db_dir / f'demo{i}.db'}")
        wall = time.monotonic() - started
        row = {p: (out[p]["label"], out[p]["capacity"], sorted(out[p]["tie_with"]))
               for p in ("chat", "batch")}
        answers.append(row)
        print(f"run {i + 1}: {wall:.0f} s; chat {row['chat']}; batch {row['batch']}", flush=True)
    for p in ("chat", "batch"):
        named = {(a[p][0], tuple(sorted([a[p][0], *a[p][2]]))) for a in answers}
        print(f"{p}: {len({a[p][0] for a in answers})} distinct winner(s), "
              f"{len({n[1] for n in named})} distinct tie group(s) over {runs} runs")
    print("chat and batch differ in every run:", all(a["chat"][0] != a["batch"][0] for a in answers))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mock(runs: int, db_dir: Path) -> None:
    port = free_port()
    server = subprocess.Popen([*TRADEOFF, "mock-server", "--ttft-ms", "40", "--itl-ms", "10",
                               "--capacity", "8", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        for i in range(runs):
            db = f"sqlite:///{db_dir / f'mock{i}.db'}"
            started = time.monotonic()
            out = cli("search", "--target", f"http://127.0.0.1:{port}/v1", "--tokenizer",
                      "builtin:tiny", "--profile", "chat", "--rate", "--budget-min", "4",
                      "--seed", str(100 + i), "--db", db, "--json")
            wall = time.monotonic() - started
            rec = out["recommendation"]
            slos = {s["metric"]: s["threshold_ms"] for s in rec["slos"]}
            truth = true_capacity(slos)
            cap = rec["capacity"]
            agree = (out["recommended"] or {}).get("capacity") == cap and \
                (cap is None or f"{cap:g} req/s" in out["sentence"])
            within = cap is not None and abs(cap - truth) <= 0.1 * max(cap, truth)
            print(f"run {i + 1}: {wall:.0f} s, {out['trials_run']} trials; capacity {cap} "
                  f"(upper {rec['upper']}, {rec['status']}); truth {truth:.2f} req/s "
                  f"(SLOs {slos}); within one step: {within}; sentence/table/recommendation "
                  f"agree: {agree}", flush=True)
    finally:
        server.terminate()
        server.wait()


def true_capacity(slos: dict[str, float], n: int = 200_000, target: float = 0.9) -> float:
    """The largest Poisson rate whose steady-state share of requests meeting every SLO is >=
    target, for the mock server (FIFO, 8 in service, T = 40 ms, I = 10 ms per later token)."""
    from experiments.load.workload import sample_lengths
    from experiments.spec.profiles import load_profile

    rng = np.random.default_rng(0)
    tokens = np.asarray(sample_lengths(load_profile("chat").output_tokens, n, rng), dtype=float)
    service = 0.040 + (tokens - 1) * 0.010
    gaps = rng.exponential(1.0, n)

    def attainment(rate: float) -> float:
        arrivals = np.cumsum(gaps / rate)
        free = np.zeros(8)  # when each of the 8 slots frees up (FIFO: the earliest free slot)
        good = 0
        for a, s in zip(arrivals, service, strict=True):
            k = int(np.argmin(free))
            start = max(a, free[k])
            free[k] = start + s
            ttft_ms = (start - a + 0.040) * 1000
            good += ttft_ms <= slos.get("ttft_ms", np.inf)  # TPOT is 10 ms: never the limit
        return good / n

    lo, hi = 1.0, 30.0
    while hi - lo > 0.02:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if attainment(mid) >= target else (lo, mid)
    return lo


def remeasure(runs: int, db_dir: Path) -> None:
    dbs = sorted(db_dir.glob("demo*.db"))
    if not dbs:
        sys.exit("run `demo` first (same --dir)")
    out = cli("recommend", "--profile", "chat", "--db", f"sqlite:///{dbs[-1]}", "--format", "json")
    rec = out["recommendation"]
    c = rec["config"]
    print(f"chat answer: {rec['label']} at {rec['capacity']} {rec['unit']}", flush=True)
    met = 0
    for i in range(runs):
        trial = cli("trial", "--policy", c["policy"], "--batch-size", str(c["batch_size"]),
                    "--max-wait-ms", str(c["max_wait_ms"]), "--concurrency", str(c["concurrency"]),
                    "--requests", "96", "--seed", str(1000 + i), "--json")
        met += trial["slo_attainment"] >= 0.9
        print(f"re-measure {i + 1}: attainment {trial['slo_attainment']:.3f}", flush=True)
    print(f"met the 0.9 target in {met} of {runs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["demo", "mock", "remeasure"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bench_answer")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    {"demo": demo, "mock": mock, "remeasure": remeasure}[args.what](args.runs, args.dir)


if __name__ == "__main__":
    main()
