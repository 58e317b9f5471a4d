"""Session trials on the virtual clock: the conversations a trial sends, and the prefix cache's
hits as the engine would have them (predictions of chat-multiturn with caching on and off)."""

from __future__ import annotations

import pytest

from common.records import TrialConfig
from engine.simulate import CostModel
from experiments.analysis.metrics import prefix_cache_hit_rate
from experiments.predict.simulate import prior_cost, simulate_records, simulate_trial
from experiments.spec.profiles import load_profile

COST = prior_cost("builtin:small")


def records_of(caching: bool | None, replicas: int = 1, router: str | None = None,
               cost: CostModel = COST, num_requests: int = 32):
    config = TrialConfig("continuous", 8, 0.0, concurrency=4, prefix_caching=caching,
                         replicas=replicas, router=router)
    return simulate_records(config, load_profile("chat-multiturn"), num_requests, cost, seed=0)


def test_a_session_trial_sends_growing_conversations() -> None:
    measured, background, steps = records_of(False)
    assert len(measured) == 32 and all(r.is_ok for r in measured)
    everything = sorted(measured + background, key=lambda r: r.request_id)
    by_session: dict[int, list] = {}
    for r in everything:
        by_session.setdefault(r.session_id, []).append(r)
    for turns in by_session.values():
        assert [r.turn for r in turns] == list(range(1, len(turns) + 1))
        for prev, nxt in zip(turns, turns[1:], strict=False):  # history + a new message
            assert nxt.num_prompt_tokens > prev.num_prompt_tokens + prev.num_output_tokens
            assert nxt.scheduled_s >= prev.done_s  # after the answer (and a think time)
    assert all(r.num_cached_tokens == 0 for r in everything)


def test_with_caching_a_turn_reuses_what_its_previous_turn_computed() -> None:
    measured, background, _ = records_of(True)
    everything = sorted(measured + background, key=lambda r: r.request_id)
    last: dict[int, object] = {}
    for r in everything:
        prev = last.get(r.session_id)
        if prev is not None:  # the cache is far from full: every computed block is still there
            assert r.num_cached_tokens == (prev.num_prompt_tokens + prev.num_output_tokens - 1) // 16 * 16
        last[r.session_id] = r
    rate = prefix_cache_hit_rate(measured)
    assert 0.5 < rate < 1


def test_predicted_ttft_falls_with_caching() -> None:
    profile, slos = load_profile("chat-multiturn"), []
    on, off = (simulate_trial(TrialConfig("continuous", 8, 0.0, concurrency=4, prefix_caching=c),
                              profile, 32, COST, slos) for c in (True, False))
    assert on.prefix_cache_hit_rate > 0.5 and off.prefix_cache_hit_rate == 0
    assert on.ttft_ms.p50 < 0.7 * off.ttft_ms.p50


@pytest.mark.parametrize("replicas", [2, 8])
def test_prefix_affinity_keeps_a_sessions_history_on_its_replica(replicas: int) -> None:
    rates = {}
    for router in ("prefix_affinity", "least_outstanding"):
        measured, _, _ = records_of(True, replicas, router, num_requests=16 * replicas)
        rates[router] = prefix_cache_hit_rate(measured)
    assert rates["prefix_affinity"] > rates["least_outstanding"] + 0.1
