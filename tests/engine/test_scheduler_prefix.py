"""Prefix caching in the scheduler on the virtual clock: hits, tails, the KV model (exact)."""

from __future__ import annotations

from engine.config import SchedulerConfig
from engine.prefix_cache import block_hashes
from engine.scheduler import Scheduler
from engine.sequence import SamplingParams, Sequence
from engine.simulate import CostModel, Simulator

MS = 1e-3
# Prefill 1 ms per token, decode 5 ms a step: a prefill's time is its uncached tail in ms.
COST = CostModel(prefill_per_token_s=1 * MS, decode_base_s=5 * MS)


def ids(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


def sim_of(caching: bool = True, kv_budget: int = 1 << 20, **knobs) -> Simulator:
    config = SchedulerConfig(**{"max_batch_size": 8, **knobs}, enable_prefix_caching=caching)
    return Simulator(config, COST, kv_budget)


def submit(sim: Simulator, at_ms: float, prompt: list[int], max_new: int) -> None:
    sim.submit_at(at_ms * MS, len(prompt), max_new, prompt_ids=prompt)


def ms(value: float | None) -> float | None:
    return None if value is None else round(value / MS, 6)


def test_a_shared_prefix_is_prefilled_once() -> None:
    # a: 40 tokens at 0 (prefill 40 ms, a decode of 5); its 2 whole prompt blocks are cached.
    # b shares a's first 32 tokens: it prefills its 16-token tail only, 50 -> 66 ms.
    for caching, first_ms, cached in [(True, 66, 32), (False, 98, 0)]:
        sim = sim_of(caching)
        submit(sim, 0, ids(0, 40), 2)
        submit(sim, 50, ids(0, 32) + ids(500, 16), 2)
        a, b = sim.run()
        assert (ms(a.first_token_s), a.num_cached_tokens) == (40, 0)
        assert (ms(b.first_token_s), b.num_cached_tokens) == (first_ms, cached)
        assert [s.num_tokens for s in sim.steps if s.phase == "prefill"] == [40, 48 - cached]


def test_a_next_turn_reuses_the_previous_answer_too() -> None:
    # a: prompt 30, 20 output tokens, done at 30 + 19 x 5 = 125 ms, with 49 tokens computed
    # (its last token has no K/V): 3 whole blocks. The next turn re-sends prompt + answer.
    sim = sim_of()
    submit(sim, 0, ids(0, 30), 20)
    sim.run()
    (a,) = sim.seqs
    assert ms(a.done_s) == 125
    submit(sim, 130, a.prompt_ids + a.output_ids + ids(900, 10), 1)
    b = sim.run()[1]
    assert b.num_cached_tokens == 48 and ms(b.first_token_s) == 130 + 12


def test_a_whole_cached_prompt_still_computes_its_last_block() -> None:
    sim = sim_of()
    submit(sim, 0, ids(0, 32), 1)
    submit(sim, 40, ids(0, 32), 1)  # the same 32 tokens: block 2 holds the last token
    a, b = sim.run()
    assert b.num_cached_tokens == 16 and ms(b.first_token_s) == 40 + 16


def test_the_token_budget_counts_uncached_tails_only() -> None:
    # Budget 20: a (40 tokens) takes two steps. b and c share its first 32 tokens; their tails
    # (8 each) fit one step together, so both are admitted at 50 and prefilled by 66.
    sim = sim_of(max_batch_size=4, max_num_batched_tokens=20)
    submit(sim, 0, ids(0, 40), 1)
    submit(sim, 50, ids(0, 32) + ids(300, 8), 1)
    submit(sim, 50, ids(0, 32) + ids(400, 8), 1)
    a, b, c = sim.run()
    assert ms(a.first_token_s) == 40
    assert [ms(s.admitted_s) for s in (b, c)] == [50, 50]
    assert [ms(s.first_token_s) for s in (b, c)] == [66, 66]
    assert [s.num_tokens for s in sim.steps] == [20, 20, 16]


def fake_save(seq: Sequence, first: int, num: int, block_tokens: int) -> list[object]:
    return [f"p{first + i}" for i in range(num)]


def test_admission_evicts_the_cached_blocks_it_needs_room_for() -> None:
    # Budget 100 tokens, all cacheable: a's 48 tokens are 3 blocks. c needs 60 tokens of rows,
    # so (100 - 60) // 16 = 2 blocks may stay: a's deepest goes, and c is admitted all the same.
    sched = Scheduler(SchedulerConfig(enable_prefix_caching=True, prefix_cache_share=1.0), 100)
    a = Sequence(0, ids(0, 48), SamplingParams(max_new_tokens=2), 0.0, 0.0)
    sched.cache_computed(a, 48, fake_save)
    cache = sched.prefix_cache
    assert cache.num_blocks == 3
    c = Sequence(1, ids(500, 58), SamplingParams(max_new_tokens=2), 0.0, 0.0)
    sched.add(c)
    assert sched.schedule(0.0).chunks[0].seq is c
    assert cache.num_blocks == 2 and cache.num_evicted == 1
    assert cache.match(block_hashes(a.prompt_ids)) == ["p0", "p1"]


def test_what_finishes_is_cached_only_as_far_as_the_running_rows_leave_room() -> None:
    # a (48 + 2) finishes with 3 blocks cached; c (58 + 2) runs: 60 tokens of rows leave 2
    # blocks, so its prefill keeps its own first 2 blocks and a's go (least recently used).
    sim = sim_of(kv_budget=100, prefix_cache_share=1.0)
    submit(sim, 0, ids(0, 48), 2)
    submit(sim, 60, ids(500, 58), 2)
    sim.run(until_s=61 * MS)  # a done, c prefilled (60 -> 118 ms)
    cache = sim.core.scheduler.prefix_cache
    a, c = sim.seqs
    assert ms(c.first_token_s) == 118 and c.num_cached_tokens == 0
    assert cache.num_tokens + 60 <= 100 and cache.num_evicted == 3
    assert cache.num_cached(block_hashes(c.prompt_ids)) == 2
    assert cache.num_cached(block_hashes(a.prompt_ids)) == 0


def test_caching_without_reuse_changes_no_time() -> None:
    # A tight budget and no shared prompts: the cache gives back all the room it holds.
    prompts = [ids(1000 * i, 40 + 7 * i) for i in range(6)]
    runs = []
    for caching in (True, False):
        sim = sim_of(caching, kv_budget=200, prefix_cache_share=1.0, max_batch_size=4)
        for i, p in enumerate(prompts):
            submit(sim, 3 * i, p, 8)
        runs.append([(s.admitted_s, tuple(s.token_times_s)) for s in sim.run()])
    assert runs[0] == runs[1]


def test_the_share_caps_the_cache() -> None:
    sim = sim_of(kv_budget=128, prefix_cache_share=0.25)  # 32 tokens: 2 blocks
    submit(sim, 0, ids(0, 64), 1)
    sim.run()
    cache = sim.core.scheduler.prefix_cache
    assert cache.max_num_blocks == 2 and cache.num_blocks == 2


def test_a_prefill_plan_carries_the_cached_payloads() -> None:
    sched = Scheduler(SchedulerConfig("static", 4, 0.0, enable_prefix_caching=True), 1 << 20)
    warm = Sequence(0, ids(0, 40), SamplingParams(max_new_tokens=1), 0.0, 0.0)
    sched.cache_computed(warm, 40, fake_save)
    seq = Sequence(1, ids(0, 33) + [7], SamplingParams(max_new_tokens=1), 0.0, 0.0)
    sched.add(seq)
    plan = sched.schedule(0.0)
    (chunk,) = plan.chunks
    assert not plan.prefill and (chunk.start, chunk.num_tokens, chunk.cached) == (32, 2, ("p0", "p1"))
    assert chunk.is_first and chunk.is_last and seq.num_cached_tokens == 32


def test_a_new_config_starts_an_empty_cache_and_off_has_none() -> None:
    sched = Scheduler(SchedulerConfig(enable_prefix_caching=True), 1 << 20)
    first = sched.prefix_cache
    assert first is sched.prefix_cache  # one cache per config
    sched.config = SchedulerConfig(enable_prefix_caching=True)
    assert sched.prefix_cache is not first and sched.prefix_cache.num_blocks == 0
    sched.config = SchedulerConfig()
    assert sched.prefix_cache is None
