"""Predicted capacities and the search plan: where each config's search starts, which it skips.

The same search runs against simulated trials (the engine's scheduler on the virtual clock,
under a cost model fitted to measured steps), so a predicted capacity is exactly what the
search would find if the cost model were the truth. The plan is made once, right after the
calibration trial, and stored with that trial, so a replay (resume, the UI) sees the same plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from common.details import Revision, SearchPlan
from common.records import SLO, TrialConfig
from engine.simulate import CostModel
from experiments.predict.simulate import PER_TRIAL_OVERHEAD_S, cost_to_dict, prior_cost, simulate_trial
from experiments.search.capacity import knob_label, objective_key, run_search, trial_config
from experiments.search.evidence import Sample
from experiments.search.strategy import AT_LIMIT, CapacitySearch, Probe
from experiments.spec.grid import SweepSpec
from experiments.spec.profiles import Profile

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
            m = simulate_trial(config, profile, spec.requests_for(config), cost, slos,
                               spec.load.seed + config.repetition)
            total = m.requests_completed + m.requests_failed
            sample = Sample(round(m.slo_attainment * total), total, saturated=m.saturated)
            memo[config] = (sample, m.duration_s, float(m.flat().get(key) or 0.0))
        sample, duration_s, _ = memo[config]
        if spent_s is not None:
            spent_s[0] += duration_s + PER_TRIAL_OVERHEAD_S
        return sample
    return measure


def predicted_capacities(spec: SweepSpec, profile: Profile, cost: CostModel,
                         slos: list[SLO], memo: Memo | None = None) -> dict[str, float]:
    """knob label -> the capacity the search finds on simulated trials under `cost`."""
    return {label: p.capacity for label, p in _predicted(spec, profile, cost, slos, memo).items()}


@dataclass(frozen=True)
class _Prediction:
    capacity: float
    value: float  # the profile objective's metric simulated at that load
    at_limit: bool  # passes at the search's largest load: capacity "at least" this


def _predicted(spec: SweepSpec, profile: Profile, cost: CostModel, slos: list[SLO],
               memo: Memo | None = None) -> dict[str, _Prediction]:
    """knob label -> its predicted capacity, objective value there, and whether at the limit."""
    memo = {} if memo is None else memo
    measure = simulated_measure(spec, profile, cost, slos, memo=memo)
    out = {}
    for r in run_search(spec, profile, [], measure, plan=SearchPlan()):
        at = trial_config(spec, r.config, Probe(r.capacity.capacity, 0))
        value = memo[at][2] if r.capacity.capacity > 0 and at in memo else 0.0
        out[knob_label(r.config)] = _Prediction(r.capacity.capacity, value,
                                                r.capacity.status == AT_LIMIT)
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


# At the search's largest load capacities tie, so the objective's value there decides: a config
# predicted this far below the best value cannot win the tie (the median prediction error of
# output tok/s is ~11-13% on builtin:tiny, README).
TIE_MARGIN = 0.15
# Predictions this close (relative) are the same prediction: the simulator sees no difference.
SAME = 0.002


def make_plan(spec: SweepSpec, profile: Profile, cost: CostModel, slos: list[SLO],
              calibration: TrialConfig, calibration_load: float, memo: Memo | None = None,
              growth: float | None = None) -> SearchPlan:
    """Start loads from predicted capacities; configs that cannot plausibly win are skipped.

    Kept: the calibration config, each policy's predicted best (one config, not every config
    tied with it: ties go to the objective's predicted value at the capacity, then to the
    coarsest config), and every config predicted at >= keep_ratio x the best capacity, except
    (a) at the search's largest load, where every config passing ties, one whose predicted value
    there is below (1 - TIE_MARGIN) x the best's, and (b) one predicted exactly as a kept config
    (same capacity and value: e.g. the batching wait when the queue is never empty). `growth`:
    every kept config's bracketing factor around its predicted capacity (none: doubling)."""
    assert spec.search is not None
    ranked = _predicted(spec, profile, cost, slos, memo)
    top = max((p.capacity for p in ranked.values()), default=0.0)
    top_value_at_limit = max((p.value for p in ranked.values() if p.at_limit), default=None)
    labels = [knob_label(k) for k in spec.knob_configs()]
    policy_best: dict[str, str] = {}
    for k in spec.knob_configs():
        label, best_label = knob_label(k), policy_best.get(k.policy)
        if best_label is None or _rank(ranked[label]) > _rank(ranked[best_label]):
            policy_best[k.policy] = label
    must = [knob_label(calibration), *policy_best.values()]
    rest = sorted((lb for lb in labels if lb not in must), key=lambda lb: _rank(ranked[lb]),
                  reverse=True)  # stable: equal predictions keep the coarsest first
    key, start, skipped = objective_key(profile), {}, {}
    for label in dict.fromkeys(must + rest):
        p = ranked[label]
        twin = next((kept for kept in start if _same(ranked[kept], p)), None)
        if label in must:
            start[label] = first_load(p.capacity, spec)
        elif p.capacity < spec.search.keep_ratio * top:
            skipped[label] = (f"predicted capacity {p.capacity:.3g} is below "
                              f"{spec.search.keep_ratio:g} x the best predicted ({top:.3g}): "
                              f"not measured")
        elif (p.at_limit and top_value_at_limit is not None
              and p.value < (1 - TIE_MARGIN) * top_value_at_limit):
            skipped[label] = (f"predicted to pass at the largest load, where configs tie, with "
                              f"{key} {p.value:.3g}, below {1 - TIE_MARGIN:g} x the best "
                              f"there ({top_value_at_limit:.3g}): not measured")
        elif twin is not None:
            skipped[label] = (f"predicted the same as {twin} (capacity {p.capacity:.3g}, {key} "
                              f"{p.value:.3g}): measured as {twin} only")
        else:
            start[label] = first_load(p.capacity, spec)
    start[knob_label(calibration)] = calibration_load  # what the calibration trial measured
    return SearchPlan(cost_model=cost_to_dict(cost),
                      predicted={label: p.capacity for label, p in ranked.items()},
                      predicted_value={label: p.value for label, p in ranked.items()},
                      start={label: start[label] for label in labels if label in start},
                      skipped={label: skipped[label] for label in labels if label in skipped},
                      first=knob_label(calibration),
                      growth={label: growth for label in labels if label in start} if growth else {})


def _rank(p: _Prediction) -> tuple[float, float]:
    return p.capacity, p.value


def _same(a: _Prediction, b: _Prediction) -> bool:
    return a.capacity == b.capacity and abs(a.value - b.value) <= SAME * max(abs(a.value), abs(b.value), 1e-9)


def calibration_capacity(spec: SweepSpec, profile: Profile, slos: list[SLO],
                         cost: CostModel | None = None) -> float:
    """The calibration config's capacity predicted under `cost` (else the model's prior)."""
    knobs = calibration_config(spec)
    return predicted_capacities(spec.copy_with(policies=[knobs.policy], batch_sizes=[knobs.batch_size],
                                               max_wait_ms=[knobs.max_wait_ms]),
                                profile, cost or prior_cost(spec.target.model), slos)[knob_label(knobs)]


def calibration_probe(spec: SweepSpec, profile: Profile, slos: list[SLO],
                      cost: CostModel | None = None) -> TrialConfig:
    """The calibration trial: its config at the predicted capacity (repetition 0), under `cost`
    (a server's black-box calibration) or the model's prior."""
    assert spec.search is not None
    knobs = calibration_config(spec)
    load = first_load(calibration_capacity(spec, profile, slos, cost), spec)
    if spec.search.load == "concurrency":
        return replace(knobs, concurrency=int(load), rate=None)
    return replace(knobs, rate=load, burstiness=spec.load.burstiness)


def revise_plan(spec: SweepSpec, profile: Profile, cost: CostModel | None, slos: list[SLO],
                searches: dict[TrialConfig, CapacitySearch], memo: Memo | None = None,
                growth: float | None = None) -> dict[str, str]:
    """Configs still being searched that can no longer win: (a) measured: it missed the SLOs at
    a load below one another config was shown to carry, finished or not (or clearly at it), so
    its capacity is below that config's; (b) refitted: under `cost` (refitted to every step so
    far; None: no prediction) it is predicted, and has measured, below `keep_ratio` x C, the
    most any config was shown to carry, or (black-box searches, `growth` given) even one error
    band above its prediction (x growth, accuracy.knee_growth: within [1.25, 2]) below C.
    label -> why."""
    assert spec.search is not None
    active = {knob_label(k): s for k, s in searches.items() if not s.is_finished}
    # (a) needs no finished search: any load a config was shown to carry (its `lo`, finished or
    # not) beats a config that missed at that load or below.
    shown = [(knob_label(k), s.lo) for k, s in searches.items() if s.lo]
    pruned = {}
    if shown:
        best_label, best_lo = max(shown, key=lambda kl: kl[1])
        for label, s in active.items():
            hi = s.hi
            if label != best_label and hi is not None and (
                    hi < best_lo or (hi == best_lo and hi not in s.noisy and hi not in s.unmeasurable)):
                pruned[label] = (f"missed the SLOs at {s.fmt_load(hi)}, a load {best_label} carries "
                                 f"({best_lo:g}): it cannot carry more")
    rest = [label for label in active if label not in pruned]
    if cost is None or not rest or not shown:
        return pruned
    # C: the most any config was shown to carry, finished or not, decided or not (a search
    # that ended unmeasurable or on the budget still carried its `lo`): a lower bound of that
    # config's capacity, so a config that cannot reach C cannot win.
    best_label, best_cap = max(shown, key=lambda kl: kl[1])
    # The band applies only where the user lets predictions prune at all (keep_ratio > 0): a
    # config the errors so far say cannot reach C is not worth a server start. keep_ratio 0.5 is
    # the same rule at the widest band (x 2).
    ratio = spec.search.keep_ratio
    banded = growth is not None and ratio > 0 and 1 / growth > ratio
    floor, why = ((1 / growth, f"x {growth:.3g}, one error band of the predictions so far, is below the")
                  if banded else (ratio, f"is below {ratio:g} x the"))
    for label, capacity in _predicted_for(spec, profile, cost, slos, rest, memo).items():
        measured = active[label].lo or 0.0
        if max(capacity, measured) < floor * best_cap:
            pruned[label] = (f"refitted prediction {capacity:.3g} (shown so far: {measured:g}) "
                             f"{why} {best_cap:g} {best_label} carries")
    return pruned


def _predicted_for(spec: SweepSpec, profile: Profile, cost: CostModel, slos: list[SLO],
                   labels: list[str], memo: Memo | None = None) -> dict[str, float]:
    """label -> capacity predicted under `cost`, for these configs only."""
    others = {knob_label(k): "" for k in spec.knob_configs() if knob_label(k) not in labels}
    measure = simulated_measure(spec, profile, cost, slos, memo=memo)
    return {knob_label(r.config): r.capacity.capacity
            for r in run_search(spec, profile, [], measure, plan=SearchPlan(skipped=others))
            if knob_label(r.config) in labels}


def replan(spec: SweepSpec, profile: Profile, cost: CostModel, slos: list[SLO],
           searches: dict[TrialConfig, CapacitySearch], growth: float) -> Revision:
    """A revision after a trial on a refitted black-box fit (issue 22): `revise_plan`'s
    prunes, and, for every config not started yet, its capacity predicted under `cost`, a start
    load there (the predicted knee), the bracketing factor `growth`, and the order to measure
    them in (most promising first)."""
    memo: Memo = {}
    pruned = revise_plan(spec, profile, cost, slos, searches, memo, growth)
    fresh = [knob_label(k) for k, s in searches.items()
             if not s.num_probes and not s.is_finished and knob_label(k) not in pruned]
    predicted = _predicted_for(spec, profile, cost, slos, fresh, memo) if fresh else {}
    order = sorted(fresh, key=lambda label: -predicted.get(label, 0.0))
    return Revision(pruned=pruned, predicted=predicted, order=order,
                    start={label: first_load(predicted[label], spec)
                           for label in order if label in predicted},
                    growth={label: growth for label in order})
