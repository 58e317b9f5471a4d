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
from experiments.capacity import knob_label, objective_key, run_search, trial_config
from experiments.estimate import GENERIC, PER_TRIAL_OVERHEAD_S, PRIORS
from experiments.grid import SweepSpec
from experiments.predict import cost_to_dict, simulate_trial
from experiments.profiles import Profile
from experiments.search import Probe, Sample


def prior_cost(model: str) -> CostModel:
    """The cost model before anything is measured: a per-model prior."""
    return PRIORS.get(model, GENERIC)


# simulated trials (sample, seconds, objective value), reused within one estimate
Memo = dict[TrialConfig, tuple[Sample, float, float]]


def simulated_measure(spec: SweepSpec, profile: Profile, cost: CostModel, slos: list[SLO],
                      spent_s: list[float] | None = None,
                      memo: Memo | None = None) -> Callable[[TrialConfig], Sample]:
    """A `measure` that simulates the trial; adds its simulated seconds to `spent_s[0]`.
    `memo` (same cost model and SLOs only) skips re-simulating a trial already simulated."""
    memo = {} if memo is None else memo
    key = objective_key(profile)

    def measure(config: TrialConfig) -> Sample:
        if config not in memo:
            m = simulate_trial(config, profile, spec.requests, cost, slos,
                               spec.seed + config.repetition)
            total = m.requests_completed + m.requests_failed
            memo[config] = (Sample(round(m.slo_attainment * total), total), m.duration_s,
                            float(m.flat().get(key) or 0.0))
        sample, duration_s, _ = memo[config]
        if spent_s is not None:
            spent_s[0] += duration_s + PER_TRIAL_OVERHEAD_S
        return sample
    return measure


def predicted_capacities(spec: SweepSpec, profile: Profile, cost: CostModel,
                         slos: list[SLO], memo: Memo | None = None) -> dict[str, float]:
    """knob label -> the capacity the search finds on simulated trials under `cost`."""
    return {label: cap for label, (cap, _) in _predicted(spec, profile, cost, slos, memo).items()}


def _predicted(spec: SweepSpec, profile: Profile, cost: CostModel, slos: list[SLO],
               memo: Memo | None = None) -> dict[str, tuple[float, float]]:
    """knob label -> (predicted capacity, the objective's value simulated at that load)."""
    memo = {} if memo is None else memo
    measure = simulated_measure(spec, profile, cost, slos, memo=memo)
    out = {}
    for r in run_search(spec, profile, [], measure, plan={}):
        at = trial_config(spec, r.config, Probe(r.capacity.capacity, 0))
        value = memo[at][2] if r.capacity.capacity > 0 and at in memo else 0.0
        out[knob_label(r.config)] = (r.capacity.capacity, value)
    return out


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
    """Start loads from predicted capacities; configs predicted far below the best skipped.

    Each policy's predicted best is always kept, so every policy gets a measured answer; one
    config, not every config tied with it (ties go to the objective's predicted value at the
    capacity, then to the coarsest config): a policy whose configs all carry the same small
    load would otherwise be measured whole."""
    assert spec.search is not None
    ranked = _predicted(spec, profile, cost, slos, memo)
    predicted = {label: cap for label, (cap, _) in ranked.items()}
    top = max(predicted.values(), default=0.0)
    policy_best: dict[str, str] = {}
    for k in spec.knob_configs():
        label, best_label = knob_label(k), policy_best.get(k.policy)
        if best_label is None or ranked[label] > ranked[best_label]:
            policy_best[k.policy] = label
    start, skipped = {}, {}
    for k in spec.knob_configs():
        label, cap = knob_label(k), predicted[knob_label(k)]
        if cap < spec.search.keep_ratio * top and label != policy_best[k.policy]:
            skipped[label] = (f"predicted capacity {cap:.3g} is below {spec.search.keep_ratio:g} x "
                              f"the best predicted ({top:.3g}): not measured")
        else:
            start[label] = first_load(cap, spec)
    start[knob_label(calibration)] = calibration_load  # what the calibration trial measured
    skipped.pop(knob_label(calibration), None)
    return {"cost_model": cost_to_dict(cost), "predicted": predicted,
            "predicted_value": {label: value for label, (_, value) in ranked.items()},
            "start": start, "skipped": skipped}


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
