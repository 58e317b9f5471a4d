"""The server's own overhead: one config measured in-process and over HTTP on loopback, side by
side in one run (same model, same profile, same seed, same load).

    .venv/bin/python scripts/compare_http.py [--profile chat] [--requests 64]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.records import TrialConfig  # noqa: E402
from engine.config import EngineConfig, SchedulerConfig  # noqa: E402
from experiments.run.trial import run_trial  # noqa: E402
from experiments.spec.profiles import load_profile  # noqa: E402
from experiments.targets.external import ExternalTarget, ServerProcess, load_tokenizer  # noqa: E402
from experiments.targets.local import LocalTarget  # noqa: E402

SERVE = (f"{sys.executable} -m app.cli serve --model {{model}} --policy {{policy}} "
         "--batch-size {batch_size} --max-wait-ms {max_wait_ms} --port {port}")
KEYS = ("requests_per_s", "output_tokens_per_s", "ttft_ms.p50", "ttft_ms.p99", "tpot_ms.p50",
        "itl_ms.p50", "e2e_ms.p50", "e2e_ms.p99")


def pick(metrics: dict, key: str) -> float:
    head, _, stat = key.partition(".")
    return metrics[head][stat] if stat else metrics[head]


def measure(args: argparse.Namespace, config: TrialConfig) -> tuple[dict, dict]:
    profile = load_profile(args.profile)
    sched = SchedulerConfig(config.policy, config.batch_size, config.max_wait_ms)
    local = LocalTarget.start(EngineConfig(model=args.model), sched)
    try:
        a = run_trial(local.engine, config, profile, args.requests, seed=7, slos=[], **local.request_kwargs())
    finally:
        local.close()
    with ServerProcess(SERVE.replace("{model}", args.model), config) as server:
        remote = ExternalTarget.connect(server.base_url, None, load_tokenizer(args.model))
        try:
            b = run_trial(remote.engine, config, profile, args.requests, seed=7, slos=[],
                          **remote.request_kwargs())
        finally:
            remote.close()
    return a.metrics.to_dict(), b.metrics.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--profile", default="chat")
    parser.add_argument("--requests", type=int, default=64)
    args = parser.parse_args()
    for config in (TrialConfig("continuous", 8, 5.0, concurrency=8),
                   TrialConfig("continuous", 8, 5.0, rate=8.0)):
        a, b = measure(args, config)
        print(f"\n{config.label} ({args.model}, {args.profile}, {args.requests} requests)")
        print(f"{'metric':22}{'in-process':>12}{'HTTP':>12}{'HTTP/in':>9}")
        for key in KEYS:
            x, y = pick(a, key), pick(b, key)
            print(f"{key:22}{x:12.2f}{y:12.2f}{y / x:9.2f}")


if __name__ == "__main__":
    main()
