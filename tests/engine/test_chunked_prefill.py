"""Prefill token budget (chunked prefill) on the virtual clock: exact step composition."""

from __future__ import annotations

import random

import pytest

from engine.config import ConfigError, SchedulerConfig
from engine.core import StepRecord
from engine.scheduler import Scheduler
from engine.sequence import SamplingParams, Sequence
from engine.simulate import CostModel, Simulator

MS = 1e-3
# Prefill 1 ms per prompt token, decode 5 ms per step: easy to add up by hand.
LINEAR = CostModel(prefill_per_token_s=1 * MS, decode_base_s=5 * MS)


def simulate(batch: int, budget: int | None, arrivals: list[tuple[float, int, int]],
             cost: CostModel = LINEAR) -> tuple[list[Sequence], list[StepRecord]]:
    """arrivals: (at_ms, prompt_tokens, max_new_tokens); returns the sequences and the steps."""
    sim = Simulator(SchedulerConfig("continuous", batch, 0, max_num_batched_tokens=budget), cost)
    for at_ms, num_prompt, num_new in arrivals:
        sim.submit_at(at_ms * MS, num_prompt, num_new)
    return sim.run(), sim.core.steps


def ms(values: list[float | None]) -> list[float | None]:
    return [None if v is None else round(v / MS, 6) for v in values]


def shape(steps: list[StepRecord]) -> list[tuple]:
    """(start ms, duration ms, phase, rows, tokens) per step."""
    return [(round(s.start_s / MS, 6), round(s.duration_s / MS, 6), s.phase, s.num_seqs, s.num_tokens)
            for s in steps]


def test_without_a_budget_a_long_prompt_stalls_the_running_stream():
    # b (20 tokens) arrives at 12 ms and joins at 14: a waits out b's whole 20 ms prefill.
    (a, b), _ = simulate(4, None, [(0, 4, 5), (12, 20, 2)])
    assert ms(a.token_times_s) == [4, 9, 14, 39, 44]  # a 25 ms gap
    assert ms(b.token_times_s) == [34, 39]


def test_a_budget_prefills_the_long_prompt_in_chunks_between_decodes():
    # budget 8: at 14 ms a decodes (1 token) and b's first 7 prompt tokens run in the same
    # step (5 + 7 = 12 ms), then 7 more; a is done at 38, so b's last 6 tokens run alone.
    (a, b), steps = simulate(4, 8, [(0, 4, 5), (12, 20, 2)])
    assert shape(steps) == [
        (0, 4, "prefill", 1, 4),
        (4, 5, "decode", 1, 1), (9, 5, "decode", 1, 1),
        (14, 12, "mixed", 1, 8), (26, 12, "mixed", 1, 8),
        (38, 6, "prefill", 1, 6),
        (44, 5, "decode", 1, 1),
    ]
    assert ms(a.token_times_s) == [4, 9, 14, 26, 38]  # longest gap 12 ms, not 25
    assert ms([b.admitted_s, b.first_token_s, b.done_s]) == [14, 44, 49]  # TTFT 32 ms, not 22
    assert b.num_computed_tokens == 20


def test_short_prompts_are_packed_into_one_step_up_to_the_budget():
    # budget 16, four prompts of 5: three whole, and the fourth's first token; it is admitted
    # then (its prefill starts), and the fifth waits for a free slot (batch 4).
    seqs, steps = simulate(4, 16, [(0, 5, 2)] * 5)
    assert shape(steps)[:3] == [(0, 16, "prefill", 4, 16), (16, 9, "mixed", 3, 7), (25, 10, "mixed", 1, 6)]
    assert ms([s.admitted_s for s in seqs]) == [0, 0, 0, 0, 25]
    assert ms([s.first_token_s for s in seqs]) == [16, 16, 16, 25, 35]


def test_admission_waits_for_budget_not_only_for_slots():
    # a's 20-token prompt takes the whole budget of 8 at 8 ms, so b (free slots, but no
    # tokens left) is admitted only at 16, when a's last 4 tokens leave room for b's 2.
    (a, b), steps = simulate(4, 8, [(0, 20, 1), (1, 2, 1)])
    assert shape(steps) == [(0, 8, "prefill", 1, 8), (8, 8, "prefill", 1, 8), (16, 6, "prefill", 2, 6)]
    assert ms([a.admitted_s, b.admitted_s]) == [0, 16]
    assert ms([a.done_s, b.done_s]) == [22, 22]


@pytest.mark.parametrize("seed", range(5))
def test_every_step_keeps_the_budget_and_every_prompt_is_prefilled_once(seed: int):
    rng = random.Random(seed)
    arrivals = [(rng.uniform(0, 200), rng.randint(1, 90), rng.randint(1, 12)) for _ in range(40)]
    batch, budget = rng.choice([(2, 8), (4, 32), (8, 64)])
    seqs, steps = simulate(batch, budget, arrivals)
    assert all(s.num_tokens <= budget for s in steps)
    assert all(s.num_seqs <= batch for s in steps)
    num_work = sum(s.num_prompt_tokens + s.num_output_tokens - 1 for s in seqs)  # prompts + decodes
    assert sum(s.num_tokens for s in steps) == num_work
    assert all(s.num_computed_tokens == s.num_prompt_tokens for s in seqs)
    assert all(s.num_output_tokens == s.params.max_new_tokens for s in seqs)


def test_attention_pairs_count_chunks_as_one_causal_prompt():
    # a 20-token prompt in chunks of 7, 7, 6 attends to 20 * 21 / 2 pairs in all, as unchunked.
    _, chunked = simulate(1, 7, [(0, 20, 1)])
    _, whole = simulate(1, None, [(0, 20, 1)])
    assert [s.num_attention_pairs for s in chunked] == [28, 77, 105]
    assert [s.num_attention_pairs for s in whole] == [210]


@pytest.mark.parametrize("kwargs, needle", [
    ({"max_num_batched_tokens": 0}, "integer >= 1"),
    ({"max_num_batched_tokens": 4, "max_batch_size": 8}, "must be >= the batch size"),
    ({"max_num_batched_tokens": 64, "policy": "static"}, "needs policy continuous"),
])
def test_bad_token_budget_is_rejected(kwargs: dict, needle: str):
    with pytest.raises(ConfigError, match=needle):
        SchedulerConfig(**kwargs)


def test_label_names_the_budget():
    assert SchedulerConfig("continuous", 8, 0, max_num_batched_tokens=256).label == "continuous/b8/w0ms/t256"


def test_successive_plans_continue_the_prompt_where_the_last_chunk_ended():
    sched = Scheduler(SchedulerConfig("continuous", 2, 0, max_num_batched_tokens=4), kv_budget_tokens=1000)
    seq = Sequence(0, [1] * 10, SamplingParams(max_new_tokens=1), 0.0, 0.0)
    sched.add(seq)
    plan = sched.schedule(0.0)
    assert [(c.start, c.num_tokens, c.is_last) for c in plan.chunks] == [(0, 4, False)]
    assert [(c.start, c.num_tokens, c.is_last) for c in sched.schedule(0.0).chunks] == [(4, 4, False)]
    assert [(c.start, c.num_tokens, c.is_last) for c in sched.schedule(0.0).chunks] == [(8, 2, True)]
