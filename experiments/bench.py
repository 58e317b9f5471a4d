"""`tradeoff bench`: the engine against its ceiling and its baselines, side by side in one run.

One fixed offline workload (all requests submitted at t=0, ignore EOS, fixed seed):
- engine_vs_raw: the engine (static policy, equal-length requests) over a bare loop of the
  same forward calls and greedy picks at the same shapes: the bookkeeping tax.
- continuous_vs_static: continuous over static on long-tailed outputs; beside it, how many
  fewer engine steps continuous took (`continuous_vs_static_steps`): the scheduling gain, which
  the time ratio reaches only where a step's cost does not grow with its rows.
- continuous_vs_hf_generate: continuous over HF `generate` on padded batches of the same
  requests, counting only the tokens each request asked for.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from engine.baselines import hf_generate, raw_decode_loop
from engine.config import EngineConfig, SchedulerConfig
from engine.llama_runner import LlamaRunner, lean_decode_loop
from engine.sequence import SamplingParams, Sequence
from engine.threads import set_engine_threads
from experiments.targets.local import LocalTarget


@dataclass(frozen=True)
class BenchWorkload:
    """The fixed workload; defaults are the issue's: 64 requests, prompts 16-128, 90% x 32 / 10% x 512."""

    num_requests: int = 64
    min_prompt: int = 16
    max_prompt: int = 128
    short_output: int = 32
    long_output: int = 512
    long_fraction: float = 0.10
    equal_prompt: int = 64  # engine_vs_raw: every request this long...
    equal_output: int = 32  # ...and generating this many tokens
    batch_size: int = 16
    seed: int = 0

    def mixed(self, vocab_ids: np.ndarray) -> tuple[list[list[int]], list[int]]:
        """Prompts (uniform lengths) and long-tailed output lengths, seeded."""
        rng = np.random.default_rng(self.seed)
        lengths = rng.integers(self.min_prompt, self.max_prompt + 1, self.num_requests)
        prompts = [rng.choice(vocab_ids, int(n)).tolist() for n in lengths]
        num_long = round(self.long_fraction * self.num_requests)
        outputs = [self.long_output] * num_long + [self.short_output] * (self.num_requests - num_long)
        return prompts, rng.permutation(outputs).tolist()

    def equal(self, vocab_ids: np.ndarray) -> list[list[int]]:
        rng = np.random.default_rng(self.seed + 1)
        return [rng.choice(vocab_ids, self.equal_prompt).tolist() for _ in range(self.num_requests)]


def engine_tok_s(target: LocalTarget, policy: str, batch_size: int,
                 prompts: list[list[int]], outputs: list[int]) -> float:
    """Submit everything at t=0, wait for all; useful output tokens per second of wall time."""
    target.engine.reconfigure(SchedulerConfig(policy, batch_size, 0.0))
    done = threading.Semaphore(0)
    start = target.engine.now()
    seqs: list[Sequence] = [
        target.engine.submit(p, SamplingParams(max_new_tokens=n, ignore_eos=True),
                             on_finish=lambda _s: done.release())
        for p, n in zip(prompts, outputs, strict=False)]
    for _ in seqs:
        done.acquire()
    elapsed = max(s.done_s for s in seqs) - start
    failed = [s.error for s in seqs if s.error]
    if failed:
        raise RuntimeError(f"bench request failed: {failed[0]}")
    return sum(s.num_output_tokens for s in seqs) / elapsed


def raw_tok_s(target: LocalTarget, prompts: list[list[int]], num_new: int, batch_size: int) -> float:
    """The bare loop over the same batches the static engine forms, on the engine's forward."""
    is_lean = isinstance(target.engine.core.executor, LlamaRunner)
    loop = lean_decode_loop if is_lean else raw_decode_loop
    tokens, seconds = 0, 0.0
    for i in range(0, len(prompts), batch_size):
        n, s = loop(target.loaded, prompts[i:i + batch_size], num_new)
        tokens, seconds = tokens + n, seconds + s
    return tokens / seconds


def decode_tok_s(target: LocalTarget, batch_sizes: list[int], prompt_len: int = 32,
                 new_tokens: int = 128, seed: int = 0) -> dict[str, float]:
    """Output tok/s with B equal requests submitted at once, per B: decode-dominated (one
    prefill of B short prompts, then `new_tokens` decode steps at batch B)."""
    rng = np.random.default_rng(seed)
    vocab = _vocab(target)
    out = {}
    for b in batch_sizes:
        prompts = [rng.choice(vocab, prompt_len).tolist() for _ in range(b)]
        engine_tok_s(target, "continuous", b, prompts, [4] * b)  # warm-up at this shape
        out[str(b)] = engine_tok_s(target, "continuous", b, prompts, [new_tokens] * b)
    return out


def run_bench(model: str = "builtin:small", device: str = "auto",
              workload: BenchWorkload | None = None, repeats: int = 3,
              decode_batches: list[int] | None = None, is_decode_only: bool = False,
              compile_decode: bool | None = None, num_threads: int | None = None) -> dict:
    """Measure every figure in one process, one model load; return the JSON-ready result.
    `num_threads` None: the engine's own choice (engine/threads.py)."""
    w = workload or BenchWorkload()
    num_threads = set_engine_threads(num_threads)
    config = EngineConfig(model=model, device=device, seed=w.seed, compile_decode=compile_decode)
    target = LocalTarget.start(config)
    try:
        result = {} if is_decode_only else _measure(target, w, repeats)
        if decode_batches:
            result["decode_tok_s"] = decode_tok_s(target, decode_batches, seed=w.seed)
        return {"model": target.loaded.name, "device": str(target.loaded.device),
                "device_name": target.loaded.device_name, "dtype": str(target.loaded.dtype),
                "num_params": target.loaded.num_params,
                "compiled_decode": config.should_compile(target.loaded.device.type),
                "forward": "lean" if isinstance(target.engine.core.executor, LlamaRunner) else "hf",
                "num_threads": num_threads, **result}
    finally:
        target.close()


def _vocab(target: LocalTarget) -> np.ndarray:
    avoid = set(target.request_kwargs()["avoid_ids"])
    return np.array([i for i in range(int(target.loaded.model.config.vocab_size)) if i not in avoid])


def _measure(target: LocalTarget, w: BenchWorkload, repeats: int) -> dict:
    vocab = _vocab(target)
    prompts, outputs = w.mixed(vocab)
    equal = w.equal(vocab)
    engine_tok_s(target, "continuous", w.batch_size, equal[:w.batch_size], [8] * w.batch_size)  # warm-up
    num_steps: dict[str, list[int]] = {"static": [], "continuous": []}

    def counted(policy: str) -> float:
        before = len(target.engine.core.steps)
        tok_s = engine_tok_s(target, policy, w.batch_size, prompts, outputs)
        num_steps[policy].append(len(target.engine.core.steps) - before)
        return tok_s

    runs = {
        "raw_loop": lambda: raw_tok_s(target, equal, w.equal_output, w.batch_size),
        "engine_static_equal": lambda: engine_tok_s(target, "static", w.batch_size, equal,
                                                    [w.equal_output] * len(equal)),
        "static": lambda: counted("static"),
        "continuous": lambda: counted("continuous"),
        "hf_generate": lambda: _ratio(*hf_generate(target.loaded, prompts, outputs, w.batch_size)),
    }
    started = time.perf_counter()
    # Interleaved rounds, median per figure: a noisy neighbour hits every figure alike.
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(run())
    tok_s = {name: float(np.median(values)) for name, values in samples.items()}
    steps = {policy: float(np.median(counts)) for policy, counts in num_steps.items()}
    return {
        "model": target.loaded.name, "device": str(target.loaded.device),
        "device_name": target.loaded.device_name,
        "engine_vs_raw": tok_s["engine_static_equal"] / tok_s["raw_loop"],
        "continuous_vs_static": tok_s["continuous"] / tok_s["static"],
        "continuous_vs_static_steps": steps["static"] / steps["continuous"],
        "steps": steps,
        "continuous_vs_hf_generate": tok_s["continuous"] / tok_s["hf_generate"],
        "tok_s": tok_s, "samples_tok_s": samples, "repeats": repeats,
        "workload": w.__dict__, "bench_s": time.perf_counter() - started,
    }


def _ratio(tokens: int, seconds: float) -> float:
    return tokens / seconds
