"""Predicted capacities and the search plan: where each config's search starts, which it skips.

The same search runs against simulated trials (the engine's scheduler on the virtual clock,
under a cost model fitted to measured steps), so a predicted capacity is exactly what the
search would find if the cost model were the truth. The plan is made once, right after the
calibration trial, and stored with that trial, so a replay (resume, the UI) sees the same plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from common.records import SLO, TrialConfig
from engine.simulate import CostModel
from experiments.capacity import knob_label, run_search
from experiments.estimate import GENERIC, PER_TRIAL_OVERHEAD_S, PRIORS
from experiments.grid import SweepSpec
from experiments.predict import cost_to_dict, simulate_trial
from experiments.profiles import Profile
from experiments.search import Sample


def prior_cost(model: str) -> CostModel:
    """The cost model before anything is measured: a per-model prior."""
    return PRIORS.get(model, GENERIC)


Memo = dict[TrialConfig, tuple[Sample, float]]  # simulated trials, reused within one estimate


def simulated_measure(spec: SweepSpec, profile: Profile, cost: CostModel, slos: list[SLO],
                      spent_s: list[float] | None = None,
                      memo: Memo | None = None) -> Callable[[TrialConfig], Sample]:
    """A `measure` that simulates the trial; adds its simulated seconds to `spent_s[0]`.
    `memo` (same cost model and SLOs only) skips re-simulating a trial already simulated."""
    memo = {} if memo is None else memo

    def measure(config: TrialConfig) -> Sample:
        if config not in memo:
            m = simulate_trial(config, profile, spec.requests, cost, slos,
                               spec.seed + config.repetition)
            total = m.requests_completed + m.requests_failed
            memo[config] = Sample(round(m.slo_attainment * total), total), m.duration_s
        sample, duration_s = memo[config]
        if spent_s is not None:
            spent_s[0] += duration_s + PER_TRIAL_OVERHEAD_S
        return sample
    return measure


def predicted_capacities(spec: SweepSpec, profile: Profile, cost: CostModel,
                         slos: list[SLO], memo: Memo | None = None) -> dict[str, float]:
    """knob label -> the capacity the search finds on simulated trials under `cost`."""
    measure = simulated_measure(spec, profile, cost, slos, memo=memo)
    results = run_search(spec, profile, [], measure, plan={})
    return {knob_label(r.config): r.capacity.capacity for r in results}


def calibration_config(spec: SweepSpec) -> TrialConfig:
    """The config measured first: the largest batch, continuous if searched (its steps span
    the most batch shapes, which is what the fit needs)."""
    knobs = spec.knob_configs()
    return max(knobs, key=lambda k: (k.batch_size, k.policy == "continuous", -k.max_wait_ms))


def first_load(capacity: float, spec: SweepSpec) -> float:
    """Where a search starts given a predicted capacity (a little below it: a pass first
    brackets upward in one step, and a pass is the cheaper trial at a rate)."""
    assert spec.search is not None
    if spec.search.load == "concurrency":
        return float(max(1, int(capacity)))
    return float(f"{max(capacity, 0.05):.3g}")


def make_plan(spec: SweepSpec, profile: Profile, cost: CostModel, slos: list[SLO],
              calibration: TrialConfig, calibration_load: float, memo: Memo | None = None) -> dict:
    """Start loads from predicted capacities; configs predicted far below the best skipped
    (each policy's best is always kept, so every policy gets a measured answer)."""
    assert spec.search is not None
    predicted = predicted_capacities(spec, profile, cost, slos, memo)
    top = max(predicted.values(), default=0.0)
    best_of_policy: dict[str, float] = {}
    for k in spec.knob_configs():
        best_of_policy[k.policy] = max(best_of_policy.get(k.policy, 0.0), predicted[knob_label(k)])
    start, skipped = {}, {}
    for k in spec.knob_configs():
        label, cap = knob_label(k), predicted[knob_label(k)]
        if cap < spec.search.keep_ratio * top and cap < best_of_policy[k.policy]:
            skipped[label] = (f"predicted capacity {cap:.3g} is below {spec.search.keep_ratio:g} x "
                              f"the best predicted ({top:.3g}): not measured")
        else:
            start[label] = first_load(cap, spec)
    start[knob_label(calibration)] = calibration_load  # what the calibration trial measured
    skipped.pop(knob_label(calibration), None)
    return {"cost_model": cost_to_dict(cost), "predicted": predicted, "start": start,
            "skipped": skipped}


def calibration_probe(spec: SweepSpec, profile: Profile, slos: list[SLO]) -> TrialConfig:
    """The calibration trial: its config at the prior's predicted capacity (repetition 0)."""
    assert spec.search is not None
    knobs = calibration_config(spec)
    cap = predicted_capacities(spec.model_copy(update={"policies": [knobs.policy],
                                                       "batch_sizes": [knobs.batch_size],
                                                       "max_wait_ms": [knobs.max_wait_ms]}),
                               profile, prior_cost(spec.model), slos)[knob_label(knobs)]
    load = first_load(cap, spec)
    if spec.search.load == "concurrency":
        return replace(knobs, concurrency=int(load), rate=None)
    return replace(knobs, rate=load, burstiness=spec.burstiness)
