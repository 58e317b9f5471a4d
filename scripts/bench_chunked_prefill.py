"""Does a prefill token budget protect running streams from long prompts? (issue 12's target:
some budget lowers p99 ITL by >= 30% against no budget at equal batch size, on the rag profile)

One model load; real trials of the rag profile (prompts 256-768 tokens, outputs 8-32) at one
batch size and concurrency, for each budget in turn, in interleaved rounds so a noisy
neighbour hurts every budget alike; prints the median over rounds per budget and one JSON line.

    .venv/bin/python scripts/bench_chunked_prefill.py [--model builtin:small] [--budgets none,64,128,256]
        [--batch-size 8] [--concurrency 8] [--requests 24] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see docs/architecture.md)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.records import TrialConfig  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from experiments.run.trial import run_trial  # noqa: E402
from experiments.spec.profiles import load_profile  # noqa: E402
from experiments.targets.local import LocalTarget  # noqa: E402

FIGURES = ("itl_p99_ms", "itl_p50_ms", "ttft_p50_ms", "ttft_p90_ms", "output_tok_s", "roofline_decode")


def one_trial(target: LocalTarget, budget: int | None, args: argparse.Namespace, seed: int) -> dict:
    config = TrialConfig("continuous", args.batch_size, 0.0, concurrency=args.concurrency,
                         max_num_batched_tokens=budget)
    m = run_trial(target.engine, config, load_profile("rag"), args.requests, seed=seed, slos=[],
                  **target.request_kwargs(), **target.memory_kwargs()).metrics
    roofline = m.roofline_fraction.decode if m.roofline_fraction else None
    return {"itl_p99_ms": m.itl_ms.p99, "itl_p50_ms": m.itl_ms.p50, "ttft_p50_ms": m.ttft_ms.p50,
            "ttft_p90_ms": m.ttft_ms.p90, "output_tok_s": m.output_tokens_per_s, "roofline_decode": roofline}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--budgets", default="none,64,128,256")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    budgets = [None if b == "none" else int(b) for b in args.budgets.split(",")]
    target = LocalTarget.start(EngineConfig(model=args.model, device="cpu"))
    runs: dict[str, list[dict]] = {str(b): [] for b in budgets}
    try:
        for rnd in range(args.rounds):
            for budget in budgets:  # same seed per round: every budget serves the same requests
                runs[str(budget)].append(one_trial(target, budget, args, seed=rnd))
                print(f"round {rnd} budget {budget}: {runs[str(budget)][-1]}", file=sys.stderr)
    finally:
        target.close()
    medians = {b: {k: _median([r[k] for r in rs]) for k in FIGURES} for b, rs in runs.items()}
    base = medians[str(None)]
    print(f"{'budget':>8} " + " ".join(f"{k:>15}" for k in FIGURES) + "  p99 ITL vs none")
    for budget, figures in medians.items():
        change = figures["itl_p99_ms"] / base["itl_p99_ms"] - 1
        print(f"{budget:>8} " + " ".join(f"{_fmt(figures[k]):>15}" for k in FIGURES) + f"  {change:+.0%}")
    print(json.dumps({"model": args.model, "profile": "rag", "batch_size": args.batch_size,
                      "concurrency": args.concurrency, "requests": args.requests,
                      "rounds": args.rounds, "medians": medians}))


def _median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    main()
