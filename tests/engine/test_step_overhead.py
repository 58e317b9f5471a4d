"""The engine's time between steps: stamped by the core, replayed by the simulator, refitted."""

from __future__ import annotations

from engine.config import SchedulerConfig
from engine.simulate import CostModel, Simulator
from experiments.predict.simulate import fit_cost_model, step_summary, steps_of_summary

MS = 1e-3
# Prefill 10 ms, decode 5 ms whatever the shape, and 1 ms between steps that follow at once.
COST = CostModel(prefill_base_s=10 * MS, decode_base_s=5 * MS, step_overhead_s=1 * MS)


def ms(value: float) -> float:
    return round(value / MS, 6)


def test_the_next_step_starts_one_overhead_after_the_last_ended():
    sim = Simulator(SchedulerConfig("continuous", 4, 0), COST)
    sim.submit_at(0.0, 8, 3)
    (seq,) = sim.run()
    # prefill 0-10 (token 1), decode 11-16 (token 2), decode 17-22 (token 3)
    assert [ms(t) for t in seq.token_times_s] == [10, 16, 22]
    assert [ms(s.start_s) for s in sim.steps] == [0, 11, 17]
    # the first step follows an idle engine: no gap; the others were due at once
    assert [None if s.gap_s is None else ms(s.gap_s) for s in sim.steps] == [None, 1, 1]


def test_an_arrival_during_the_overhead_waits_for_it():
    sim = Simulator(SchedulerConfig("continuous", 4, 0), COST)
    sim.submit_at(0.0, 8, 2)
    sim.submit_at(10.5 * MS, 8, 1)  # lands between the first prefill's end (10) and 11
    first, second = sim.run()
    # 11-21: the second prompt's prefill (a join goes first), then 22-27 the first's decode
    assert [ms(t) for t in second.token_times_s] == [21]
    assert [ms(t) for t in first.token_times_s] == [10, 27]


def test_no_overhead_keeps_steps_back_to_back():
    sim = Simulator(SchedulerConfig("continuous", 4, 0), CostModel(10 * MS, 0, 5 * MS, 0))
    sim.submit_at(0.0, 8, 3)
    (seq,) = sim.run()
    assert [ms(t) for t in seq.token_times_s] == [10, 15, 20]


def test_the_fit_recovers_the_overhead_directly_and_through_a_stored_summary():
    sim = Simulator(SchedulerConfig("continuous", 4, 0), COST)
    for i in range(6):
        sim.submit_at(i * 40 * MS, 8, 5)
    sim.run()
    prior = CostModel(1 * MS, 1 * MS, 1 * MS, 1 * MS, 0.0)
    assert ms(fit_cost_model(sim.steps, prior).step_overhead_s) == 1
    summary = step_summary(sim.steps)
    assert ms(summary["gap"][0]) == 1
    assert ms(fit_cost_model(steps_of_summary(summary), prior).step_overhead_s) == 1


def test_without_gaps_the_prior_overhead_is_kept():
    prior = CostModel(1 * MS, 1 * MS, 1 * MS, 1 * MS, 0.7 * MS)
    assert ms(fit_cost_model([], prior).step_overhead_s) == 0.7
    assert steps_of_summary({"decode": [[2, 3, 0.005]]})[0].gap_s is None
