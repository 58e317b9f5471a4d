"""Shared prefixes and Mooncake hash_ids: reuse must be exact (same prefix or hash, same tokens)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from experiments.load.prefixes import allowed_ids, block, prefix_choices, prompt_of_blocks
from experiments.load.workload import RequestSpec, make_requests, replay_requests, with_prefix
from experiments.spec.arrivals import TraceArrival
from experiments.spec.profiles import parse_profile_yaml
from experiments.spec.traces import Replay, block_tokens_of, parse_jsonl, replay_window

RAG_YAML = """\
name: r
prompt_tokens: {kind: fixed, value: 5}
output_tokens: {kind: fixed, value: 2}
%s
arrival: {mode: closed, concurrency: 2}
objective: max_throughput
"""
ALLOWED = np.arange(2, 40)


def test_k_shared_prefixes_reused_as_drawn_and_messages_unchanged() -> None:
    shared = parse_profile_yaml(RAG_YAML % "shared_prefix: {num_prefixes: 3, prefix_tokens: 8}", "r")
    plain = parse_profile_yaml(RAG_YAML % "", "r")
    specs = make_requests(shared, 30, seed=4, vocab_size=40, max_context_tokens=4096, avoid_ids=[0, 1])
    bare = make_requests(plain, 30, seed=4, vocab_size=40, max_context_tokens=4096, avoid_ids=[0, 1])
    prefixes = Counter(tuple(s.prompt_ids[:8]) for s in specs)
    choices = Counter(prefix_choices(3, 30, seed=4))
    assert len(prefixes) == 3  # K distinct prefixes ...
    assert sorted(prefixes.values()) == sorted(choices.values())  # ... reused as often as drawn
    assert sum(prefixes.values()) == 30
    # The message after the prefix is what the profile without prefixes sends.
    assert [s.prompt_ids[8:] for s in specs] == [b.prompt_ids for b in bare]
    assert all(len(s.prompt_ids) == 13 and s.max_new_tokens == 2 for s in specs)


def test_with_prefix_clips_the_end_and_keeps_the_prefix() -> None:
    spec = with_prefix([9, 9, 9], RequestSpec([1, 2, 3, 4], 2), max_context_tokens=7)
    assert spec == RequestSpec([9, 9, 9, 1, 2], 2)  # 7 - 2 output tokens = 5 prompt tokens


def test_same_hash_same_block_whatever_the_request() -> None:
    assert block(42, 4, 0, ALLOWED) == block(42, 4, 0, ALLOWED)
    assert block(42, 4, 0, ALLOWED) != block(43, 4, 0, ALLOWED)
    a = prompt_of_blocks([1, 2, 3], 10, 4, 0, ALLOWED, row=0)
    b = prompt_of_blocks([1, 2, 5], 12, 4, 0, ALLOWED, row=1)
    assert a[:8] == b[:8] == block(1, 4, 0, ALLOWED) + block(2, 4, 0, ALLOWED)
    assert a[8:] == block(3, 4, 0, ALLOWED)[:2]  # cut inside the last block
    assert b[8:] == block(5, 4, 0, ALLOWED)


def test_blocks_short_of_the_prompt_are_filled_per_request() -> None:
    a = prompt_of_blocks([7], 6, 4, 0, ALLOWED, row=0)
    b = prompt_of_blocks([7], 6, 4, 0, ALLOWED, row=1)
    assert a[:4] == b[:4] == block(7, 4, 0, ALLOWED) and len(a) == len(b) == 6


MOONCAKE = "\n".join([
    '{"timestamp": 0, "input_length": 8, "output_length": 2, "hash_ids": [0, 1]}',
    '{"timestamp": 500, "input_length": 6, "output_length": 2, "hash_ids": [0, 2]}',
    '{"timestamp": 1000, "input_length": 8, "output_length": 3, "hash_ids": [0, 1]}',
])


def test_mooncake_hash_ids_replay_their_prefix_reuse() -> None:
    trace = parse_jsonl(MOONCAKE, "mc.jsonl")
    assert trace.hash_ids == ((0, 1), (0, 2), (0, 1))
    window = replay_window(trace, 0.0, 10.0, 1.0)
    specs = replay_requests(window, 4, seed=0, vocab_size=40, max_context_tokens=4096, avoid_ids=[0])
    assert specs[0].prompt_ids == specs[2].prompt_ids  # same hashes: the same prompt
    assert specs[0].prompt_ids[:4] == specs[1].prompt_ids[:4]  # hash 0 shared
    allowed = allowed_ids(40, [0])
    assert specs[0].prompt_ids == block(0, 4, 0, allowed) + block(1, 4, 0, allowed)
    assert specs[1].prompt_ids == block(0, 4, 0, allowed) + block(2, 4, 0, allowed)[:2]
    assert [len(s.prompt_ids) for s in specs] == [8, 6, 8]
    assert [s.max_new_tokens for s in specs] == [2, 2, 3]


def test_a_trace_without_hash_ids_replays_random_prompts() -> None:
    replay = Replay(np.array([0.0, 1.0]), np.array([3, 3]), np.array([1, 1]), 0.0, 2.0)
    specs = replay_requests(replay, 4, seed=0, vocab_size=40, max_context_tokens=4096, avoid_ids=[])
    assert specs[0].prompt_ids != specs[1].prompt_ids


def test_block_size_scales_with_the_lengths() -> None:
    arrival = TraceArrival(mode="trace", trace="t.jsonl", length_scale=0.25)
    assert block_tokens_of(arrival) == 128
    assert block_tokens_of(arrival.model_copy(update={"block_tokens": 2})) == 1
