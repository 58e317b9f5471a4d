"""The adaptive policy on the virtual clock: exact decisions on hand-made arrivals."""

from __future__ import annotations

from collections import deque

import pytest

from engine.adaptive import AdaptiveState, fit_linear
from engine.config import ConfigError, SchedulerConfig
from engine.scheduler import Scheduler
from engine.sequence import SamplingParams, Sequence
from engine.simulate import CostModel, Simulator

MS = 1e-3
FLAT = CostModel(prefill_base_s=10 * MS, decode_base_s=5 * MS)


def run(config: SchedulerConfig, arrivals: list[tuple[float, int, int]],
        cost: CostModel = FLAT) -> list[Sequence]:
    """arrivals: (at_ms, prompt_tokens, max_new_tokens)."""
    sim = Simulator(config, cost)
    for at_ms, num_prompt, num_new in arrivals:
        sim.submit_at(at_ms * MS, num_prompt, num_new)
    return sim.run()


def ms(values: list[float | None]) -> list[float | None]:
    return [None if v is None else round(v / MS, 6) for v in values]


def seq(at_s: float, num_prompt: int = 8) -> Sequence:
    return Sequence(0, [1] * num_prompt, SamplingParams(max_new_tokens=4), at_s, at_s)


def test_without_slos_adaptive_batches_like_continuous_with_no_wait():
    arrivals = [(0, 8, 5), (12, 8, 3), (13, 8, 4), (40, 8, 2)]
    adaptive = run(SchedulerConfig("adaptive", 4, 0), arrivals)
    continuous = run(SchedulerConfig("continuous", 4, 0), arrivals)
    assert [s.token_times_s for s in adaptive] == [s.token_times_s for s in continuous]


def test_cap_is_the_largest_batch_whose_predicted_tpot_meets_the_slo():
    # Decode costs 5 ms + 1 ms per row, prefill is free: TPOT(n) = 5 + n ms; the SLO 10.5 ms
    # allows n = 5. The fit learns the line from steps at n = 2 and 1: a, b run at 0 (decode
    # 0-7 ms, a leaves), b alone 7-13 ms. c..h arrive at 8 ms; at 13 the cap is 5 with b
    # running, so c, d, e, f join; g, h join when those leave at 33 (13 + 2 x 10).
    cost = CostModel(decode_base_s=5 * MS, decode_per_seq_s=1 * MS)
    config = SchedulerConfig("adaptive", 8, 0, tpot_slo_ms=10.5)
    seqs = run(config, [(0, 8, 2), (0, 8, 20)] + [(8, 8, 3)] * 6, cost)
    assert ms([s.admitted_s for s in seqs]) == [0, 0, 13, 13, 13, 13, 33, 33]
    continuous = run(SchedulerConfig("continuous", 8, 0), [(0, 8, 2), (0, 8, 20)] + [(8, 8, 3)] * 6, cost)
    assert ms([s.admitted_s for s in continuous]) == [0, 0] + [13] * 6


def test_cap_is_lifted_when_a_viable_waiters_ttft_is_at_risk():
    # As above, with a TTFT SLO of 30 ms: g and h (8 ms) may lose half of it, 15 ms, to the
    # TPOT cap. At 13 they have waited 5 ms (cap 5: c..f join); at the next step boundary, 23,
    # 15 ms: the cap is lifted and both join then instead of at 33 (TTFT 25 ms, not 35).
    cost = CostModel(decode_base_s=5 * MS, decode_per_seq_s=1 * MS)
    config = SchedulerConfig("adaptive", 8, 0, ttft_slo_ms=30, tpot_slo_ms=10.5)
    seqs = run(config, [(0, 8, 2), (0, 8, 20)] + [(8, 8, 3)] * 6, cost)
    assert ms([s.admitted_s for s in seqs]) == [0, 0, 13, 13, 13, 13, 23, 23]


def test_wait_is_cut_to_a_share_of_the_ttft_budget_and_zero_when_idle():
    # max wait 100 ms, TTFT SLO 60 ms: a alone joins at once (nothing to stall). b (12 ms) may
    # wait 0.5 x 60 - 10 (its predicted prefill) = 20 ms, so it is due at 32 ms and joins at
    # the next step boundary, 35 ms, with c (13 ms). Continuous holds all three to 100 ms.
    config = SchedulerConfig("adaptive", 8, 100, ttft_slo_ms=60)
    a, b, c = run(config, [(0, 8, 10), (12, 8, 2), (13, 8, 2)])
    assert ms([a.admitted_s, b.admitted_s, c.admitted_s]) == [0, 35, 35]
    a, b, c = run(SchedulerConfig("continuous", 8, 100), [(0, 8, 10), (12, 8, 2), (13, 8, 2)])
    assert ms([a.admitted_s, b.admitted_s, c.admitted_s]) == [100, 100, 100]


def test_request_whose_ttft_is_already_lost_yields_to_one_that_can_still_meet_it():
    # Batch 1, TTFT SLO 30 ms. a runs 0-55 ms. At 55 b has waited 54 ms (lost), c 15 ms:
    # c goes first (TTFT 25 ms, met), then b. FIFO would have made both miss.
    config = SchedulerConfig("adaptive", 1, 0, ttft_slo_ms=30)
    a, b, c = run(config, [(0, 8, 10), (1, 8, 1), (40, 8, 1)])
    assert ms([a.done_s, c.admitted_s, c.done_s, b.admitted_s, b.done_s]) == [55, 55, 65, 65, 75]
    a, b, c = run(SchedulerConfig("continuous", 1, 0), [(0, 8, 10), (1, 8, 1), (40, 8, 1)])
    assert ms([b.admitted_s, c.admitted_s]) == [55, 65]


def test_reorder_keeps_fifo_inside_each_group():
    state = AdaptiveState(SchedulerConfig("adaptive", 4, 0, ttft_slo_ms=10))
    old1, old2, new1, new2 = seq(0.0), seq(0.001), seq(0.015), seq(0.016)
    waiting = deque([old1, new1, old2, new2])
    assert list(state.reorder(waiting, now_s=0.02)) == [new1, new2, old1, old2]
    assert state.reorder(waiting, now_s=0.005) is waiting  # none lost: untouched


def test_cap_and_wait_before_any_step_fall_back_to_the_configured_knobs():
    state = AdaptiveState(SchedulerConfig("adaptive", 6, 20, ttft_slo_ms=1000, tpot_slo_ms=5))
    assert state.batch_cap() == 6
    assert state.wait_s(seq(0.0), num_running=1) == pytest.approx(0.020)
    assert state.wait_s(seq(0.0), num_running=0) == 0.0


def test_stall_counts_prefill_seconds_per_decoded_row():
    state = AdaptiveState(SchedulerConfig("adaptive", 16, 0, tpot_slo_ms=18.5))
    state.observe("prefill", 2, 100, 0.010)
    for n in (4, 4, 2):
        state.observe("decode", n, n, 0.002 + 0.001 * n)
    assert state.stall_per_row_s() == pytest.approx(0.010 / 10)
    # TPOT(n) = 2 + n + n x 1 ms <= 18.5 ms: n = 8.
    assert state.predicted_tpot_s(8) == pytest.approx(0.018)
    assert state.batch_cap() == 8
    # A TPOT SLO no batch can meet (TPOT(1) = 4 ms): capping would only cost throughput.
    assert AdaptiveState(SchedulerConfig("adaptive", 16, 0, tpot_slo_ms=3.0), state.steps).batch_cap() == 16


def test_the_cap_matches_the_predicted_tpot_at_every_batch_size():
    # The closed form against the definition: the largest n with TPOT(n) <= SLO.
    state = AdaptiveState(SchedulerConfig("adaptive", 32, 0, tpot_slo_ms=1.0))
    state.observe("prefill", 1, 50, 0.004)
    for n in (1, 3, 8, 8, 5):
        state.observe("decode", n, n, 0.0021 + 0.00037 * n)
    for slo_ms in (2.0, 3.2, 4.4, 6.0, 9.9, 14.0, 30.0):
        state = AdaptiveState(SchedulerConfig("adaptive", 32, 0, tpot_slo_ms=slo_ms), state.steps)
        fits = [n for n in range(1, 33) if state.predicted_tpot_s(n) <= slo_ms / 1000]
        assert state.batch_cap() == max(fits, default=32)


def _lost_or_not_scheduler(first_token_ms: float) -> tuple[Scheduler, list[Sequence]]:
    # TPOT(n) = 5 + n ms against a 6.5 ms SLO: cap 1. One request runs (scheduled at 0, its
    # first token at `first_token_ms`); two arrive at 100 ms, with a 30 ms TTFT SLO.
    sched = Scheduler(SchedulerConfig("adaptive", 4, 0, ttft_slo_ms=30, tpot_slo_ms=6.5), 1 << 20)
    for n in (1, 2, 1, 2):
        sched.observe("decode", n, n, (5 + n) * MS)
    running = seq(0.0)
    sched.add(running)
    assert sched.schedule(0.0).prefill == (running,)
    running.token_times_s.append(first_token_ms * MS)
    arrivals = [seq(0.100), seq(0.100)]
    for s in arrivals:
        sched.add(s)
    return sched, arrivals


def test_the_cap_is_lifted_when_no_running_request_can_still_meet_its_slos():
    # The running request took 50 ms to its first token (lost): capping protects nobody, so
    # both arrivals join at once.
    sched, arrivals = _lost_or_not_scheduler(first_token_ms=50)
    assert sched.schedule(0.100).prefill == tuple(arrivals)
    # Its first token in 20 ms (viable): the cap holds and the step decodes it alone.
    sched, _ = _lost_or_not_scheduler(first_token_ms=20)
    plan = sched.schedule(0.100)
    assert plan.prefill == () and len(plan.decode) == 1


@pytest.mark.parametrize("points, expected", [
    ([(1, 6.0), (2, 7.0), (4, 9.0)], (5.0, 1.0)),
    ([(3, 6.0), (3, 8.0)], (7.0, 0.0)),  # one batch size: flat
    ([(1, 6.0), (2, 5.0)], (5.5, 0.0)),  # falling: noise, flat at the mean
    ([(1, 1.0), (2, 3.0)], (0.0, 1.4)),  # negative base: through the origin
])
def test_fit_linear(points: list[tuple[int, float]], expected: tuple[float, float]):
    assert fit_linear(points) == pytest.approx(expected)


@pytest.mark.parametrize("kwargs", [{"ttft_slo_ms": 0}, {"tpot_slo_ms": -1},
                                    {"tpot_slo_ms": float("nan")}, {"ttft_slo_ms": float("inf")}])
def test_bad_slo_targets_are_rejected(kwargs: dict):
    with pytest.raises(ConfigError):
        SchedulerConfig("adaptive", **kwargs)


def test_no_wait_while_the_running_rows_can_afford_a_prefill():
    # As the wait test above, with a TPOT SLO of 40 ms. At 15 ms the window holds a's prefill
    # (10 ms) and one decode row: predicted TPOT with b joining = 5 + 2 x 10 = 25 ms, under
    # 0.8 x 40: holding b back would protect no one's TPOT, so b and c join at once (15 ms),
    # not at 35 ms as with the TTFT SLO alone.
    config = SchedulerConfig("adaptive", 8, 100, ttft_slo_ms=60, tpot_slo_ms=40)
    a, b, c = run(config, [(0, 8, 10), (12, 8, 2), (13, 8, 2)])
    assert ms([a.admitted_s, b.admitted_s, c.admitted_s]) == [0, 15, 15]
    state = AdaptiveState(SchedulerConfig("adaptive", 8, 100, ttft_slo_ms=60, tpot_slo_ms=30))
    state.observe("prefill", 1, 8, 0.010)
    state.observe("decode", 1, 1, 0.005)
    # 25 ms > 0.8 x 30: TPOT is near its SLO, so b may wait 0.5 x 60 - 10 ms (its prefill)
    assert state.wait_s(seq(0.012), num_running=1) == pytest.approx(0.020)
    assert state.wait_s(seq(0.012), num_running=0) == 0.0
