"""What a trial sends, sampled (pure, seeded): request lengths and prompt token ids from a
profile or a trace, clipped to the model's context, and open-loop arrival times.

Each purpose draws from its own random stream, so e.g. arrival gaps never correlate with lengths,
and the same seed gives the same requests whatever load they are sent at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import numpy as np

from experiments.load.prefixes import (
    allowed_ids,
    prefix_choices,
    prompt_of_blocks,
    shared_prefixes,
)
from experiments.spec.arrivals import RateSchedule, TraceArrival, warp_arrivals
from experiments.spec.profiles import (
    ChoiceLength,
    FixedLength,
    LengthDist,
    LogNormalLength,
    NormalLength,
    Profile,
    UniformLength,
)
from experiments.spec.traces import Replay, scaled_rows

_PROMPT_STREAM, _OUTPUT_STREAM, _TOKEN_STREAM, _ARRIVAL_STREAM = range(4)


@dataclass(frozen=True)
class RequestSpec:
    """One request to send: its prompt and how many tokens to generate."""

    prompt_ids: list[int]
    max_new_tokens: int


def sample_lengths(dist: LengthDist, n: int, rng: np.random.Generator) -> list[int]:
    """`n` integer lengths (>= 1) drawn from `dist`."""
    if isinstance(dist, FixedLength):
        return [dist.value] * n
    if isinstance(dist, UniformLength):
        return rng.integers(dist.min, dist.max, size=n, endpoint=True).tolist()
    if isinstance(dist, ChoiceLength):
        p = _probabilities(dist.weights, len(dist.values))
        return rng.choice(dist.values, size=n, p=p).tolist()
    draws = _normal(dist, n, rng) if isinstance(dist, NormalLength) else _lognormal(dist, n, rng)
    return np.clip(np.rint(draws), dist.min, dist.max).astype(int).tolist()


def _probabilities(weights: list[float] | None, n: int) -> np.ndarray:
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    return w / w.sum()


def _normal(dist: NormalLength, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(dist.mean, dist.std, size=n)


def _lognormal(dist: LogNormalLength, n: int, rng: np.random.Generator) -> np.ndarray:
    # mean/std are those of the lengths; convert to the underlying normal's mu/sigma.
    sigma2 = math.log1p((dist.std / dist.mean) ** 2)
    return rng.lognormal(math.log(dist.mean) - sigma2 / 2, math.sqrt(sigma2), size=n)


def make_requests(profile: Profile, n: int, seed: int, vocab_size: int,
                  max_context_tokens: int, avoid_ids: Seq[int]) -> list[RequestSpec]:
    """`n` seeded requests: random prompts without special ids, prompt + output within context.

    A trace profile takes its lengths from its rows, in order from the window start."""
    if isinstance(profile.arrival, TraceArrival):
        prompts, outputs = scaled_rows(profile.arrival, n)
        prompt_lens, output_lens = prompts.tolist(), outputs.tolist()
    else:
        assert profile.prompt_tokens is not None and profile.output_tokens is not None  # validated
        prompt_lens = sample_lengths(profile.prompt_tokens, n, _rng(seed, _PROMPT_STREAM))
        output_lens = sample_lengths(profile.output_tokens, n, _rng(seed, _OUTPUT_STREAM))
    specs = requests_of_lengths(prompt_lens, output_lens, seed, vocab_size, max_context_tokens,
                                avoid_ids)
    if profile.shared_prefix is None:
        return specs
    prefix = profile.shared_prefix
    prefixes = shared_prefixes(prefix.num_prefixes, prefix.prefix_tokens, seed,
                               allowed_ids(vocab_size, avoid_ids))
    firsts = [prefixes[k] for k in prefix_choices(prefix.num_prefixes, n, seed)]
    return [with_prefix(first, spec, max_context_tokens) for first, spec in zip(firsts, specs, strict=True)]


def with_prefix(prefix_ids: list[int], spec: RequestSpec, max_context_tokens: int) -> RequestSpec:
    """`spec` with `prefix_ids` in front, clipped to the context from the end (the prefix stays)."""
    num_prompt, num_output = clip_to_context(len(prefix_ids) + len(spec.prompt_ids),
                                             spec.max_new_tokens, max_context_tokens)
    return RequestSpec((prefix_ids + spec.prompt_ids)[:num_prompt], num_output)


def requests_of_lengths(prompt_lens: list[int], output_lens: list[int], seed: int, vocab_size: int,
                        max_context_tokens: int, avoid_ids: Seq[int]) -> list[RequestSpec]:
    """Seeded random prompts of these lengths (special ids avoided), clipped to the context."""
    allowed = allowed_ids(vocab_size, avoid_ids)
    lens = [clip_to_context(p, o, max_context_tokens)
            for p, o in zip(prompt_lens, output_lens, strict=True)]
    # One draw for all prompts, then split: fast enough for 100k-request trials.
    tokens = _rng(seed, _TOKEN_STREAM).choice(allowed, size=sum(p for p, _ in lens)).tolist()
    ends = np.cumsum([p for p, _ in lens]).tolist()
    starts = [0, *ends[:-1]]
    return [RequestSpec(tokens[a:b], o) for a, b, (_, o) in zip(starts, ends, lens, strict=True)]


def replay_requests(replay: Replay, block_tokens: int, seed: int, vocab_size: int,
                    max_context_tokens: int, avoid_ids: Seq[int]) -> list[RequestSpec]:
    """A trace window's requests: with `hash_ids` rows, each prompt is made of its named blocks
    (same hash, same tokens), so the trace's prefix reuse is replayed; else random prompts."""
    prompts, outputs = replay.prompt_tokens.tolist(), replay.output_tokens.tolist()
    if replay.hash_ids is None:
        return requests_of_lengths(prompts, outputs, seed, vocab_size, max_context_tokens, avoid_ids)
    allowed = allowed_ids(vocab_size, avoid_ids)
    specs = []
    for row, (hash_ids, p, o) in enumerate(zip(replay.hash_ids, prompts, outputs, strict=True)):
        num_prompt, num_output = clip_to_context(p, o, max_context_tokens)
        specs.append(RequestSpec(prompt_of_blocks(hash_ids, num_prompt, block_tokens, seed,
                                                  allowed, row), num_output))
    return specs


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def clip_to_context(num_prompt: int, num_output: int, max_context_tokens: int) -> tuple[int, int]:
    """Fit (prompt, output) in the context: output shrinks first to keep >= 1 prompt token."""
    if max_context_tokens < 2:
        raise ValueError(f"max_context_tokens must be >= 2, got {max_context_tokens}")
    num_output = min(num_output, max_context_tokens - 1)
    return min(num_prompt, max_context_tokens - num_output), num_output


def open_loop_arrivals(rate: float, burstiness: float, n: int, seed: int,
                       schedule: RateSchedule | None = None) -> list[float]:
    """`n` arrival offsets (s, first at 0): gamma gaps, shape=burstiness, mean 1/rate; a rate
    `schedule` multiplies the rate over time (experiments/spec/arrivals.py)."""
    if not (rate > 0 and math.isfinite(rate)) or not burstiness > 0:
        raise ValueError(f"rate and burstiness must be finite and > 0, got {rate}, {burstiness}")
    rng = _rng(seed, _ARRIVAL_STREAM)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=max(n - 1, 0))
    arrivals = [0.0, *np.cumsum(gaps).tolist()][:n]
    return arrivals if schedule is None else warp_arrivals(arrivals, schedule)
