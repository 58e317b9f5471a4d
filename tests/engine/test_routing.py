"""Routers, pure and on the virtual clock behind N simulated replicas: exact, hand-computed."""

from __future__ import annotations

import pytest

from common.vocab import ROUTERS
from engine.config import ConfigError, SchedulerConfig
from engine.routing import LeastOutstanding, PowerOfTwo, RoundRobin, check_replicas, make_router
from engine.sequence import Sequence
from engine.simulate import CostModel, Simulator

MS = 1e-3
# Prefill 10 ms, decode 5 ms, whatever the batch shape.
FLAT = CostModel(prefill_base_s=10 * MS, decode_base_s=5 * MS)


def simulate(router: str, arrivals: list[tuple[float, int]], replicas: int = 2,
             batch: int = 1) -> tuple[list[Sequence], list[int]]:
    """arrivals: (at_ms, max_new_tokens), prompts of 8 tokens, continuous batching."""
    sim = Simulator(SchedulerConfig("continuous", batch, 0), FLAT, replicas=replicas, router=router)
    for at_ms, num_new in arrivals:
        sim.submit_at(at_ms * MS, 8, num_new)
    return sim.run(), sim.routed_to


def ms(value: float | None) -> float | None:
    return None if value is None else round(value / MS, 6)


def test_round_robin_takes_replicas_in_turn_whatever_their_load():
    router = RoundRobin()
    assert [router.pick([9, 0, 0]) for _ in range(5)] == [0, 1, 2, 0, 1]


def test_least_outstanding_picks_the_emptiest_and_breaks_ties_low():
    router = LeastOutstanding()
    assert router.pick([3, 1, 2]) == 1
    assert router.pick([2, 1, 1]) == 1
    assert router.pick([0, 0]) == 0


def test_power_of_two_with_two_replicas_is_least_outstanding_unless_tied():
    router = PowerOfTwo(seed=7)
    assert [router.pick([4, 1]) for _ in range(20)] == [1] * 20
    assert [router.pick([0, 5]) for _ in range(20)] == [0] * 20


def test_power_of_two_never_picks_the_single_busiest_and_is_seeded():
    loads = [1, 9, 2, 3]
    router = PowerOfTwo(seed=3)
    picks = [router.pick(loads) for _ in range(200)]
    assert 1 not in picks
    assert set(picks) == {0, 2, 3}  # each wins some draw; 0 (the lightest) wins every one it is in
    assert picks.count(0) > picks.count(2) > picks.count(3)
    again = PowerOfTwo(seed=3)
    assert [again.pick(loads) for _ in range(200)] == picks
    other = PowerOfTwo(seed=4)
    assert [other.pick(loads) for _ in range(200)] != picks


def test_one_replica_needs_no_choice():
    for name in ROUTERS:
        assert make_router(name).pick([5]) == 0


def test_bad_replicas_or_router_name_says_how_to_fix():
    with pytest.raises(ConfigError, match="replicas must be an integer >= 1"):
        check_replicas(0, "round_robin")
    with pytest.raises(ConfigError, match="unknown router 'random'; use one of: round_robin"):
        make_router("random")
    with pytest.raises(ConfigError, match="unknown router"):
        Simulator(SchedulerConfig(), FLAT, replicas=2, router="fastest")


# A: 10 tokens on a batch-1 replica (prefill 0-10, decodes to 55). B: 1 token (done 11).
# C arrives at 20 ms, D at 31 ms, both 1 token.
ARRIVALS = [(0, 10), (1, 1), (20, 1), (31, 1)]


def test_round_robin_queues_behind_a_long_request():
    (a, b, c, d), routed = simulate("round_robin", ARRIVALS)
    assert routed == [0, 1, 0, 1]
    assert [ms(a.done_s), ms(b.done_s)] == [55, 11]
    # C waits on replica 0 until A is done at 55, then prefills for 10 ms.
    assert [ms(c.admitted_s), ms(c.done_s)] == [55, 65]
    assert [ms(d.admitted_s), ms(d.done_s)] == [31, 41]


def test_least_outstanding_sends_to_the_replica_that_is_free_at_arrival():
    (a, b, c, d), routed = simulate("least_outstanding", ARRIVALS)
    # At 20 ms: replica 0 holds A (1 outstanding), replica 1 finished B at 11 (0).
    assert routed == [0, 1, 1, 1]
    assert [ms(c.admitted_s), ms(c.done_s)] == [20, 30]
    assert [ms(d.admitted_s), ms(d.done_s)] == [31, 41]


def test_router_never_sees_a_finish_that_lies_in_its_future():
    # A's step ends at 55 on replica 0; B arrives at 1 ms, C at 2 ms: replica 0 still holds A
    # then, so B goes to 1 and C (1 vs 1 outstanding) ties to replica 0.
    (_, b, c), routed = simulate("least_outstanding", [(0, 10), (1, 3), (2, 1)])
    assert routed == [0, 1, 0]
    assert ms(c.admitted_s) == 55


def test_a_finish_at_t_frees_the_router_count_for_an_arrival_at_t():
    # B (1 token) on replica 1 is done at 11; C arrives at exactly 11 and finds replica 1 empty.
    _, routed = simulate("least_outstanding", [(0, 10), (1, 1), (11, 1)])
    assert routed == [0, 1, 1]


def test_replicas_with_periodic_arrivals_each_run_unqueued():
    # One request every 6 ms, each 10 ms of prefill: one replica queues (service > gap), two in
    # round robin each see one every 12 ms, so every request finishes 10 ms after it arrives.
    arrivals = [(6 * i, 1) for i in range(10)]
    one, _ = simulate("round_robin", arrivals, replicas=1)
    two, routed = simulate("round_robin", arrivals, replicas=2)
    assert routed == [0, 1] * 5
    assert [ms(s.done_s - s.scheduled_s) for s in two] == [10] * 10
    assert ms(one[-1].done_s - one[-1].scheduled_s) == 100 - 54  # 10th done at 100 ms


def test_simulator_keeps_every_replicas_steps():
    sim = Simulator(SchedulerConfig("continuous", 1, 0), FLAT, replicas=2, router="round_robin")
    sim.submit_at(0.0, 8, 2)
    sim.submit_at(0.0, 8, 2)
    sim.run()
    assert [(ms(s.start_s), s.phase) for s in sim.steps] == [
        (0, "prefill"), (0, "prefill"), (10, "decode"), (10, "decode")]
