"""Prefix caching on tradeoff's own engine (issue 24): measured on vs off, the simulator's
predictions of both, and prefix_affinity vs least_outstanding over replicas (measured at 2,
simulated at 1-64). docs/benchmarks.md has the figures.

    .venv/bin/python scripts/bench_prefix_caching.py --model builtin:small --requests 64 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.records import TrialConfig  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from experiments.predict.simulate import fit_cost_model, prior_cost, simulate_trial  # noqa: E402
from experiments.run.trial import run_trial  # noqa: E402
from experiments.spec.profiles import load_profile  # noqa: E402
from experiments.targets.local import LocalTarget  # noqa: E402
from experiments.targets.replica_target import ReplicaTarget  # noqa: E402

PROFILE = "chat-multiturn"
ROUTERS = ("prefix_affinity", "least_outstanding")


def config_of(caching: bool, concurrency: int, replicas: int = 1, router: str | None = None) -> TrialConfig:
    return TrialConfig("continuous", 8, 0.0, concurrency=concurrency, prefix_caching=caching,
                       replicas=replicas, router=router)


def measure(target, config: TrialConfig, requests: int, seed: int) -> dict:
    result = run_trial(target.engine, config, load_profile(PROFILE), requests, seed=seed, slos=[],
                       **target.request_kwargs())
    m = result.metrics
    return {"label": config.label, "seed": seed, "hit_rate": m.prefix_cache_hit_rate,
            "ttft_p50_ms": m.ttft_ms.p50, "ttft_p90_ms": m.ttft_ms.p90,
            "output_tok_s": m.output_tokens_per_s, "steps": result.steps}


def predict(config: TrialConfig, cost, requests: int, seeds: list[int]) -> dict:
    runs = [simulate_trial(config, load_profile(PROFILE), requests, cost, [], seed) for seed in seeds]
    return {"label": config.label, "hit_rate": statistics.mean(m.prefix_cache_hit_rate for m in runs),
            "ttft_p50_ms": statistics.mean(m.ttft_ms.p50 for m in runs)}


def show(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    for row in rows:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()
                          if k != "steps"}))


def single(model: str, requests: int, reps: int, concurrency: int) -> list[dict]:
    target = LocalTarget.start(EngineConfig(model=model))
    try:
        rows = [measure(target, config_of(caching, concurrency), requests, seed)
                for seed in range(reps) for caching in (False, True)]
    finally:
        target.close()
    show("measured, one engine", rows)
    prior = prior_cost(model)
    off_steps = [s for r in rows if "/nopc/" in r["label"] for s in r["steps"]]
    costs = {"prior": lambda row: prior,
             "fitted to the caching-off trials' steps": lambda row: fit_cost_model(off_steps, prior),
             "fitted to the trial's own steps": lambda row: fit_cost_model(row["steps"], prior)}
    for name, cost_of in costs.items():
        show(f"predicted, per measured trial ({name})",
             [predict(config_of("/pc/" in r["label"], concurrency), cost_of(r), requests, [r["seed"]])
              for r in rows])
    return rows


def replicas(model: str, requests: int, reps: int, concurrency: int) -> list[dict]:
    target = ReplicaTarget.start(EngineConfig(model=model), 2, ROUTERS[1])
    try:
        rows = [measure(target, config_of(True, concurrency, 2, router), requests, seed)
                for seed in range(reps) for router in ROUTERS]
    finally:
        target.close()
    show("measured, 2 replicas, caching on", rows)
    return rows


def simulated_scale(model: str, steps: list, per_replica: int, max_replicas: int) -> None:
    cost = fit_cost_model(steps, prior_cost(model)) if steps else prior_cost(model)
    rows, n = [], 1
    while n <= max_replicas:
        for router in ROUTERS if n > 1 else (None,):
            config = config_of(True, per_replica * n, n, router)
            rows.append({"replicas": n, **predict(config, cost, 16 * n, [0])})
        n *= 2
    show(f"simulated, {per_replica} users per replica, caching on", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--replica-concurrency", type=int, default=8)
    parser.add_argument("--max-sim-replicas", type=int, default=64)
    parser.add_argument("--skip", default="", help="comma list of: single, replicas, scale")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    rows = [] if "single" in skip else single(args.model, args.requests, args.reps, args.concurrency)
    if "replicas" not in skip:
        replicas(args.model, args.requests, args.reps, args.replica_concurrency)
    if "scale" not in skip:
        steps = [s for r in rows for s in r["steps"]]
        simulated_scale(args.model, steps, args.replica_concurrency // 2, args.max_sim_replicas)


if __name__ == "__main__":
    main()
