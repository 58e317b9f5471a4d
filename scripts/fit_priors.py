"""Measure a built-in model's step costs on the lean engine and fit the simulator's prior.

    .venv/bin/python scripts/fit_priors.py [--model builtin:small] [--rounds 5] [--spin]

A `LlamaRunner` on one torch thread (the engine's choice on a small machine, and the condition
for the C kernels) times decode steps at 1-32 rows (contexts of 64-192 tokens) and prefills of
16-1,024 prompt tokens, in interleaved rounds so drift hits every shape alike. The steps go
through the product's own fitter (`fit_cost_model`, what a calibration runs), which prints the
`CostModel` for `experiments/predict/simulate.py` `PRIORS`. `--spin` pins this process to the
first CPU and keeps a busy loop on the second, as the load generator keeps one core busy in a
trial. docs/benchmarks.md ("The simulator's priors") has the figures.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.config import EngineConfig  # noqa: E402
from engine.core import StepRecord  # noqa: E402
from engine.llama_runner import LlamaRunner  # noqa: E402
from engine.models import load_model  # noqa: E402
from engine.sequence import SamplingParams, Sequence  # noqa: E402
from experiments.predict.simulate import GENERIC, MS, fit_cost_model, prior_cost  # noqa: E402

DECODE_ROWS = (1, 2, 4, 8, 16, 32)
PREFILL_TOKENS = (16, 64, 128, 256, 512, 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="decode steps timed per shape and round")
    parser.add_argument("--spin", action="store_true", help="this process on CPU 0, a busy loop on CPU 1")
    args = parser.parse_args()
    spinner = _spin() if args.spin else None
    try:
        steps = measure(args.model, args.rounds, args.steps)
    finally:
        if spinner is not None:
            spinner.kill()
    report(args.model, steps)


def measure(model: str, rounds: int, num_steps: int) -> list[StepRecord]:
    torch.set_num_threads(1)
    runner = LlamaRunner(load_model(EngineConfig(model=model, dtype="float32", device="cpu")))
    rng, params = random.Random(0), SamplingParams(max_new_tokens=1024)
    ids = iter(range(10**9))

    def prompt(n: int) -> Sequence:
        return Sequence(next(ids), [rng.randrange(3, 250) for _ in range(n)], params, 0.0, 0.0)

    rows = [prompt(rng.randrange(64, 193)) for _ in range(max(DECODE_ROWS))]
    runner.prefill(rows)
    steps: list[StepRecord] = []
    for _ in range(rounds):
        for b in DECODE_ROWS:
            for _ in range(num_steps):
                start = time.perf_counter()
                runner.decode(rows[:b])
                steps.append(StepRecord(start, time.perf_counter() - start, "decode", b, b))
                for seq in rows[:b]:  # the same contexts every step
                    runner.cache.lengths[runner.cache.slot_of[id(seq)]] -= 1
        for n in PREFILL_TOKENS:
            seq = prompt(n)
            start = time.perf_counter()
            runner.prefill([seq])
            steps.append(StepRecord(start, time.perf_counter() - start, "prefill", 1, n))
            runner.release([seq])
    return steps


def report(model: str, steps: list[StepRecord]) -> None:
    for phase, key, shapes in (("decode", "num_seqs", DECODE_ROWS),
                               ("prefill", "num_tokens", PREFILL_TOKENS)):
        medians = [statistics.median(s.duration_s for s in steps
                                     if s.phase == phase and getattr(s, key) == x) for x in shapes]
        print(f"{phase} at {key} {'/'.join(map(str, shapes))}: "
              f"{'/'.join(f'{m / MS:.1f}' for m in medians)} ms (medians)")
    fitted = fit_cost_model(steps, GENERIC)
    old = prior_cost(model)
    for name, cost in (("fitted", fitted), ("current prior", old)):
        print(f"{name:>13}: decode {cost.decode_base_s / MS:.2f} ms + {cost.decode_per_seq_s / MS:.3f} "
              f"ms/row, prefill {cost.prefill_base_s / MS:.2f} ms + "
              f"{cost.prefill_per_token_s / MS:.3f} ms/token")
    terms = (fitted.prefill_base_s, fitted.prefill_per_token_s, fitted.decode_base_s, fitted.decode_per_seq_s)
    print(f'    "{model}": CostModel({", ".join(f"{t / MS:.3g} * MS" for t in terms)}),')


def _spin() -> subprocess.Popen | None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("fit_priors: one CPU only; --spin ignored", file=sys.stderr)
        return None
    os.sched_setaffinity(0, {cpus[0]})
    return subprocess.Popen(["taskset", "-c", str(cpus[1]), sys.executable, "-c", "while True: pass"])


if __name__ == "__main__":
    main()
