"""Prompts that share prefixes, pure and seeded: K shared prefixes (system prompts, RAG
documents) put in front of requests, and trace blocks named by hash (Mooncake's `hash_ids`).

Reuse is what prefix caching feeds on, so it must be exact: the same prefix index, or the same
block hash, always gives the very same token ids (within one seed), whichever request carries it.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import numpy as np

# Random streams, apart from workload.py's (0-3), so adding prefixes never changes the messages.
PREFIX_STREAM, CHOICE_STREAM, BLOCK_STREAM, FILL_STREAM = range(10, 14)


def allowed_ids(vocab_size: int, avoid_ids: Seq[int]) -> np.ndarray:
    """Token ids prompts may use: the vocabulary without the special ones."""
    allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(list(avoid_ids), dtype=int))
    if allowed.size == 0:
        raise ValueError(f"no token ids to sample: vocab_size {vocab_size}, avoid_ids {avoid_ids}")
    return allowed


def shared_prefixes(num_prefixes: int, num_tokens: int, seed: int,
                    allowed: np.ndarray) -> list[list[int]]:
    """`num_prefixes` distinct random prefixes of `num_tokens` tokens each."""
    rng = np.random.default_rng([seed, PREFIX_STREAM])
    tokens = rng.choice(allowed, size=(num_prefixes, num_tokens))
    return [row.tolist() for row in tokens]


def prefix_choices(num_prefixes: int, n: int, seed: int) -> list[int]:
    """Which prefix each of `n` requests (or sessions) starts with: uniform, seeded."""
    return np.random.default_rng([seed, CHOICE_STREAM]).integers(0, num_prefixes, size=n).tolist()


def block(hash_id: int, num_tokens: int, seed: int, allowed: np.ndarray) -> list[int]:
    """The tokens of the block named `hash_id`: a function of (seed, hash) alone."""
    rng = np.random.default_rng([seed, BLOCK_STREAM, int(hash_id)])
    return rng.choice(allowed, size=num_tokens).tolist()


def prompt_of_blocks(hash_ids: Seq[int], num_prompt: int, block_tokens: int, seed: int,
                     allowed: np.ndarray, row: int) -> list[int]:
    """A prompt of `num_prompt` tokens from its blocks in order: cut inside the last block, or
    filled with tokens of its own (`row` seeds them) when the blocks fall short."""
    tokens: list[int] = []
    for hash_id in hash_ids:
        if len(tokens) >= num_prompt:
            break
        tokens += block(hash_id, block_tokens, seed, allowed)
    short = num_prompt - len(tokens)
    if short > 0:
        rng = np.random.default_rng([seed, FILL_STREAM, row])
        tokens += rng.choice(allowed, size=short).tolist()
    return tokens[:num_prompt]
