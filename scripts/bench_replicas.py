"""Replicas behind a router, measured: goodput of 2 CPU replicas vs 1 under an open-loop load
that saturates one, and how closely the simulator (fitted to the same run's steps) agrees.

    .venv/bin/python scripts/bench_replicas.py [--profile chat] [--requests 96] [--router least_outstanding]

Both replica counts run as replica processes (one footing: N = 1 gets every core, N = 2 one
core each). The load is first sized on one replica: its closed-loop throughput at 2 x batch
users is its capacity; the open-loop rate is `--load` x that capacity.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.records import TrialConfig  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from experiments.predict.simulate import PRIORS, fit_cost_model, simulate_trial  # noqa: E402
from experiments.run.trial import measure_baseline, run_trial  # noqa: E402
from experiments.spec.profiles import load_profile, resolve_slos  # noqa: E402
from experiments.targets.replica_target import ReplicaTarget  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:tiny")
    ap.add_argument("--profile", default="chat")
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--router", default="least_outstanding")
    ap.add_argument("--load", type=float, nargs="+", default=[1.0, 1.5],
                    help="open-loop rates as multiples of one replica's measured capacity")
    return ap.parse_args()


def run(target: ReplicaTarget, config: TrialConfig, args, slos) -> dict:
    profile = load_profile(args.profile)
    result = run_trial(target.engine, config, profile, args.requests, seed=11, slos=slos,
                       **target.request_kwargs())
    m = result.metrics
    cost = fit_cost_model(result.steps, PRIORS.get(args.model, PRIORS["builtin:tiny"]))
    sim = simulate_trial(config, profile, args.requests, cost, slos, seed=11)
    return {"label": config.label, "goodput_rps": m.goodput_rps, "requests_per_s": m.requests_per_s,
            "slo_attainment": m.slo_attainment, "saturated": m.saturated,
            "ttft_p90_ms": m.ttft_ms.p90 if m.ttft_ms else None,
            "simulated_goodput_rps": sim.goodput_rps, "simulated_requests_per_s": sim.requests_per_s,
            "cost_model_ms": {k: v * 1e3 for k, v in cost.__dict__.items()}}


def main() -> None:
    args = parse()
    profile = load_profile(args.profile)
    engine = EngineConfig(model=args.model, device="cpu")
    results: dict = {"router": args.router, "cpus": sorted(os.sched_getaffinity(0))}
    one = ReplicaTarget.start(engine, 1, None)
    try:
        baseline = measure_baseline(one.engine, profile, seed=3, **one.request_kwargs())
        slos = resolve_slos(profile, baseline)
        cap = run(one, TrialConfig("continuous", args.batch_size, 0.0, concurrency=2 * args.batch_size),
                  args, slos)
        capacity = cap["requests_per_s"]
        results.update(slos=[s.__dict__ for s in slos], capacity_rps=capacity, capacity_trial=cap)
        rates = [round(capacity * x, 2) for x in args.load]
        results["one"] = [run(one, TrialConfig("continuous", args.batch_size, 0.0, rate=r), args, slos)
                          for r in rates]
    finally:
        one.close()
    two = ReplicaTarget.start(engine, 2, args.router)
    try:
        results["two"] = [run(two, TrialConfig("continuous", args.batch_size, 0.0, rate=r, replicas=2,
                                               router=args.router), args, slos) for r in rates]
    finally:
        two.close()
    results["ratios"] = [b["goodput_rps"] / a["goodput_rps"] if a["goodput_rps"] else None
                         for a, b in zip(results["one"], results["two"], strict=True)]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
