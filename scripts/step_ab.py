"""One-process A/B of the lean forward's step times: torch's ops against the C kernels.

    .venv/bin/python scripts/step_ab.py [--model builtin:small] [--rounds 8] [--steps 15]

A `LlamaRunner` holds 16 rows of 100-240 tokens; each round times a decode step (the 16 rows)
and a mixed step (the rows plus an 80-token prompt, released after) under each variant in turn,
the model's `kernels` swapped between them, so both see the same machine state (two processes
or two models would evict each other's weights). Rows' lengths are put back after each step,
so every round measures the same contexts. Prints the median of each variant's round medians,
and the rounds. docs/benchmarks.md ("The step outside its matmuls in C") has its figures.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.config import EngineConfig  # noqa: E402
from engine.llama_runner import LlamaRunner  # noqa: E402
from engine.models import load_model  # noqa: E402
from engine.scheduler import PrefillChunk  # noqa: E402
from engine.sequence import SamplingParams, Sequence  # noqa: E402

NUM_ROWS, PROMPT_TOKENS = 16, 80


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the engine's choice on a small machine, and the kernels' condition
    runner = LlamaRunner(load_model(EngineConfig(model=args.model, dtype="float32", device="cpu")))
    if runner.model.kernels is None:
        sys.exit("step_ab: the C kernels could not be built here (no compiler?); nothing to compare")
    rng, params = random.Random(0), SamplingParams(max_new_tokens=400)
    rows = [Sequence(i, [rng.randrange(3, 250) for _ in range(rng.randrange(100, 240))], params, 0.0, 0.0)
            for i in range(NUM_ROWS)]
    runner.prefill(rows)

    def step(with_prompt: bool) -> None:
        chunks = []
        if with_prompt:
            seq = Sequence(1000 + rng.randrange(10**6), [rng.randrange(3, 250) for _ in range(PROMPT_TOKENS)],
                           params, 0.0, 0.0)
            chunks = [PrefillChunk(seq, 0, PROMPT_TOKENS)]
        runner.mixed(rows, chunks)
        runner.release([c.seq for c in chunks])
        for seq in rows:  # the same contexts every step
            runner.cache.lengths[runner.cache.slot_of[id(seq)]] -= 1

    def median_ms(with_prompt: bool) -> float:
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step(with_prompt)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    variants = {"torch ops": None, "C kernels": runner.model.kernels}
    rounds: dict[str, dict[str, list[float]]] = {v: {"decode": [], "mixed": []} for v in variants}
    for _ in range(args.rounds):
        for name, kernels in variants.items():
            runner.model.kernels = kernels
            rounds[name]["decode"].append(median_ms(False))
            rounds[name]["mixed"].append(median_ms(True))
    for name, times in rounds.items():
        print(f"{name:>10}: decode {statistics.median(times['decode']):6.2f} ms, mixed "
              f"{statistics.median(times['mixed']):6.2f} ms  (rounds: decode "
              f"{' '.join(f'{t:.1f}' for t in times['decode'])}; mixed "
              f"{' '.join(f'{t:.1f}' for t in times['mixed'])})")


if __name__ == "__main__":
    main()
