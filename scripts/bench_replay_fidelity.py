"""Replay fidelity below saturation: sent - scheduled per request on the in-process engine.

Replays `azure-conv` (lengths x0.1) from `--start-s` for `--duration` seconds at `--speedup`
on builtin:tiny (continuous, batch 16), `--rounds` times; prints p50 / p99 / max of the send lag
(replayed arrival minus the trace's scaled arrival) per round and pooled. The overloaded case is
in scripts/bench_adaptive_trace.py.

    python scripts/bench_replay_fidelity.py [--speedup 1] [--duration 15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI: idle OpenMP threads sleep

import numpy as np  # noqa: E402

from common.records import TrialConfig  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from experiments.run.trial import run_trial, with_trace_window  # noqa: E402
from experiments.spec.profiles import load_profile  # noqa: E402
from experiments.targets.local import LocalTarget  # noqa: E402


def lag_line(lags: list[float]) -> str:
    return (f"p50 {np.percentile(lags, 50):.3f} ms, p99 {np.percentile(lags, 99):.3f} ms, "
            f"max {max(lags):.2f} ms over {len(lags)} requests")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speedup", type=float, default=1.0)
    ap.add_argument("--start-s", type=float, default=600.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    profile = with_trace_window(load_profile("azure-conv"), args.duration, args.start_s)
    target = LocalTarget.start(EngineConfig(model="builtin:tiny"))
    pooled: list[float] = []
    try:
        for i in range(args.rounds):
            result = run_trial(target.engine, TrialConfig("continuous", 16, 0.0, speedup=args.speedup),
                               profile, 1, seed=0, slos=[], **target.request_kwargs())
            lags = [(r.sent_s - r.scheduled_s) * 1000 for r in result.records]
            pooled += lags
            print(f"round {i}: {lag_line(lags)}; {result.metrics.requests_per_s:.2f} req/s done")
    finally:
        target.close()
    print(f"pooled: {lag_line(pooled)} (target p99 <= 1 ms)")


if __name__ == "__main__":
    main()
