"""Capacity searches over stored trials: the plan of a search sweep, and its answer replayed.

A search is deterministic given its measurements, so its answer is never stored: it is
replayed from the sweep's stored trials (`run_search`). The runner steps the same replay
(`search_trials`), running each trial not stored yet, which is what makes a search resumable: a
resumed search reuses every stored trial and asks for the same next load.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, replace

from common.details import Revision, SearchPlan, part
from common.records import TrialConfig, TrialRecord, config_to_dict
from experiments.search.evidence import Sample
from experiments.search.strategy import (
    INVALID,
    PRUNED,
    UNDECIDED,
    Capacity,
    CapacitySearch,
    Probe,
    SearchSettings,
    drive,
    search_steps,
)
from experiments.spec.grid import SweepSpec
from experiments.spec.profiles import Profile

MAX_RATE = 1024.0
MAX_USERS = 1024
MAX_ARRIVAL_SPAN_S = 120.0


class NotSearchError(ValueError):
    """The sweep is a grid, not a capacity search."""


@dataclass(frozen=True)
class ConfigCapacity:
    """One server config's capacity answer, as the CLI and the UI show it."""

    config: TrialConfig  # the knobs, no load
    capacity: Capacity
    unit: str  # "req/s" | "users" | "x speed-up"
    # The profile objective's metric (goodput, or output tokens/s) measured at the capacity load:
    # breaks ties between configs of equal capacity (e.g. several at the largest load tried).
    value_at_capacity: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready: the CLI contract's `capacities` item."""
        c = self.capacity
        return {"config": knobs_of(self.config), "label": knob_label(self.config),
                "capacity": c.capacity, "upper": c.upper, "unit": self.unit,
                "decided": c.is_decided, "status": c.status, "reason": c.reason,
                "trials": c.num_probes, "value_at_capacity": self.value_at_capacity}


def knobs_of(config: TrialConfig) -> dict:
    """The server knobs of a config: everything but the load level and repetition."""
    loads = ("concurrency", "rate", "burstiness", "speedup")
    return {k: v for k, v in config_to_dict(config).items() if k not in loads}


def knob_label(config: TrialConfig) -> str:
    """`continuous b8 w2ms` (plus any non-default knobs): what a user deploys, no load."""
    return config.server_label.replace("/", " ")


def unit_of(spec: SweepSpec) -> str:
    if _is_speedup(spec):
        return "x speed-up"
    return "users" if _is_users(spec) else "req/s"


def _is_speedup(spec: SweepSpec) -> bool:
    return spec.search is not None and spec.search.load == "speedup"


def _is_users(spec: SweepSpec) -> bool:
    return spec.search is not None and spec.search.load == "concurrency"


def settings_for(spec: SweepSpec, profile: Profile, config: TrialConfig,
                 start_load: float | None = None, growth: float | None = None) -> SearchSettings:
    """One config's search settings: it starts at `start_load` (the plan's prediction), else
    at the spec's start, else 1 req/s or batch-size users; it brackets by `growth` (the plan's,
    from the prediction's error band: probes around the predicted knee), else doubles."""
    search = spec.search
    assert search is not None
    start = start_load or search.start_load
    growth = growth or 2.0
    if _is_users(spec):
        top = float(int(search.max_load or MAX_USERS))
        first = min(top, float(max(1, int(start or config.batch_size))))
        # Whole users: the step above the start must reach the next user (floor(lo x growth)
        # > lo for every lo >= first), else a passing load would be measured again and again.
        growth = max(growth, (first + 1) / first)
        return SearchSettings(profile.min_slo_attainment, True, first, 1.0, top, 0.1, growth,
                              search.max_repeats, search.skip_futile_repeats, unit="users")
    # Below this rate one trial's arrivals span more than MAX_ARRIVAL_SPAN_S: not worth it.
    # (A trace's window, not the request count, sets a speed-up trial's length.)
    floor = 0.05 if _is_speedup(spec) else float(f"{spec.load.requests / MAX_ARRIVAL_SPAN_S:.3g}")
    start = max(start or 1.0, floor)
    return SearchSettings(profile.min_slo_attainment, False, start, floor,
                          max(search.max_load or MAX_RATE, start), search.rel_tol, growth,
                          search.max_repeats, search.skip_futile_repeats, unit=unit_of(spec))


def trial_config(spec: SweepSpec, knobs: TrialConfig, probe: Probe) -> TrialConfig:
    """The stored trial a probe runs as."""
    if _is_users(spec):
        return replace(knobs, concurrency=int(probe.load), rate=None, repetition=probe.repetition)
    if _is_speedup(spec):  # a trace replayed faster, searched like a rate
        return replace(knobs, speedup=probe.load, rate=None, concurrency=None,
                       repetition=probe.repetition)
    return replace(knobs, rate=probe.load, concurrency=None, burstiness=spec.load.burstiness,
                   repetition=probe.repetition)


def sample_of(trial: TrialRecord) -> Sample:
    """A stored trial as capacity evidence; failed or client-bound trials are not evidence, and
    a saturated one is a miss (see `Sample.saturated`)."""
    if trial.status != "done":
        return Sample(0, 0, False, f"trial failed: {trial.error or trial.status}")
    m = trial.metrics
    if trial.details.drift_reason:
        return Sample(0, 0, False, trial.details.drift_reason)
    if m.get("client_bound"):
        why = m.get("client_bound_reason") or "the load generator lagged"
        return Sample(0, 0, False, f"client-bound ({why})")
    total = int(m.get("requests_completed") or 0) + int(m.get("requests_failed") or 0)
    return Sample(round(float(m.get("slo_attainment") or 0.0) * total), total,
                  saturated=bool(m.get("saturated")),
                  effective_n=trial.details.effective_n)


Measure = Callable[[TrialConfig], Sample | None]  # None: not measured (stop that config)
# Called after a trial measured now (not replayed) is recorded, with every config's search:
# returns the configs to prune (label -> why), or a whole Revision (also new start loads,
# bracketing factors and order of configs not started yet, from a refitted prediction), which
# it stores with that trial for replays.
Revise = Callable[[TrialConfig, dict[TrialConfig, CapacitySearch]], Revision | dict]
SKIPPED, NOT_STARTED = "skipped", "not_started"
NOT_ANSWERED = (UNDECIDED, INVALID, NOT_STARTED)  # the search has no answer for these yet
RULED_OUT = (SKIPPED, PRUNED)  # not searched to the end: predicted, or shown, unable to win


def uses_prediction(spec: SweepSpec) -> bool:
    """Whether the search calibrates and predicts: on the local engine (from its steps) or on
    servers it starts (from black-box probes of the first; a bare --target's knobs are not
    settings, so there is nothing to predict between), and not over a trace's speed-up (trace
    trials are not simulated)."""
    return (spec.search is not None and spec.search.predict and not spec.is_bare_target
            and spec.search.load != "speedup")


def plan_of(trials: list[TrialRecord]) -> SearchPlan | None:
    """The search plan stored with the sweep's calibration trial (its first); None before it."""
    for t in sorted(trials, key=lambda t: t.trial_id):
        if t.details.prediction is not None and t.details.prediction.plan is not None:
            return t.details.prediction.plan
    return None


def run_search(spec: SweepSpec, profile: Profile, trials: list[TrialRecord], measure: Measure | None = None,
               can_continue: Callable[[], bool] = lambda: True,
               plan: SearchPlan | dict | None = None,
               revise: Revise | None = None) -> list[ConfigCapacity]:
    """Replay (and, with `measure`, continue) every config's search over the stored trials
    (`search_trials`, each trial not stored measured by `measure`: none without one)."""
    steps = search_trials(spec, profile, trials, can_continue, plan, revise)
    return drive(steps, measure if measure is not None else lambda _config: None)


def search_trials(
    spec: SweepSpec, profile: Profile, trials: list[TrialRecord],
    can_continue: Callable[[], bool] = lambda: True, plan: SearchPlan | dict | None = None,
    revise: Revise | None = None,
) -> Generator[TrialConfig, Sample | None, list[ConfigCapacity]]:
    """Every config's search replayed over the stored trials and continued: yields each trial
    to measure that is not stored yet and takes its Sample back (None: not measured); returns
    the answer. A runner that measures trials itself steps it (experiments/run/search_runner.py).

    `plan` (default: the stored one; empty when the search predicts nothing; a dict is read as a
    stored one) gives each config's
    start load and the configs the prediction skipped; before it exists nothing has started.
    A stored trial's revision (`details.revision.pruned`) prunes those configs
    right after that trial, as when it was measured; `revise` makes new ones."""
    if spec.search is None:
        raise NotSearchError("this sweep is a load grid, not a capacity search")
    if plan is None:  # an external server has no engine steps to fit: no prediction
        plan = plan_of(trials) if uses_prediction(spec) else SearchPlan()
    plan = part(SearchPlan, plan)
    knobs, unit = spec.knob_configs(), unit_of(spec)
    if plan is None:
        return [ConfigCapacity(k, Capacity(0.0, None, NOT_STARTED, "no trial measured yet", 0), unit)
                for k in knobs]
    stored = {t.config: t for t in trials}
    starts, skipped, growth = plan.start, plan.skipped, plan.growth
    # Most promising first (highest predicted capacity): under a budget they get measured first,
    # and at a rate their trials are the short ones.
    predicted = plan.predicted
    # On servers tradeoff starts, the calibration config (its server already up) goes first.
    first = plan.first if spec.starts_servers else None
    order = sorted(knobs, key=lambda k: (knob_label(k) != first, -predicted.get(knob_label(k), 0.0)))
    searches = {k: CapacitySearch(settings_for(spec, profile, k, starts.get(knob_label(k)),
                                               growth.get(knob_label(k))))
                for k in order if knob_label(k) not in skipped}
    max_probes = spec.search.max_probes
    revisions = {t.config: t.details.revision for t in trials}
    by_label = {knob_label(k): k for k in searches}

    def after(key: TrialConfig, probe: Probe) -> None:
        config = trial_config(spec, key, probe)
        searches[key].next_probe()  # settles it: a search whose answer is in is finished now
        revision = revisions.get(config) if config in stored else (
            revise(config, searches) if revise is not None else None)
        apply_revision(spec, profile, searches, by_label, as_revision(revision or {}))

    steps = search_steps(searches, can_continue, interleave=not spec.starts_servers, after=after)
    try:
        key, probe = next(steps)
        while True:
            sample: Sample | None = None
            if max_probes is not None and searches[key].num_probes >= max_probes:
                searches[key].stop(f"probe limit ({max_probes}) reached")
            elif (config := trial_config(spec, key, probe)) in stored:
                sample = sample_of(stored[config])
            else:
                sample = yield config
            key, probe = steps.send(sample)
    except StopIteration as done:
        results = done.value
    key = objective_key(profile)
    out = []
    for k in knobs:
        found = results.get(k) or Capacity(0.0, None, SKIPPED, skipped[knob_label(k)], 0)
        out.append(ConfigCapacity(k, found, unit, _value_at(spec, k, found, stored, key)))
    return out


def as_revision(revision: Revision | dict) -> Revision:
    """A stored or returned revision; a bare {label: why} (before issue 22) means pruned."""
    return Revision.of(revision)


def apply_revision(spec: SweepSpec, profile: Profile, searches: dict[TrialConfig, CapacitySearch],
                   by_label: dict[str, TrialConfig], revision: Revision) -> None:
    """Prune; give configs not started yet their new start load and bracketing factor; put them
    in the new order (after the configs already started, so no search is left half done)."""
    for label, reason in revision.pruned.items():
        if label in by_label:
            searches[by_label[label]].prune(reason)
    fresh = [k for k in searches if not searches[k].num_probes and not searches[k].is_finished]
    for k in fresh:
        load = revision.start.get(knob_label(k))
        if load is not None:
            growth = revision.growth.get(knob_label(k))
            searches[k] = CapacitySearch(settings_for(spec, profile, k, load, growth))
    rank = {label: i for i, label in enumerate(revision.order)}
    if rank:
        later = sorted(fresh, key=lambda k: rank.get(knob_label(k), len(rank)))
        reordered = {k: searches[k] for k in searches if k not in fresh}
        reordered.update({k: searches[k] for k in later})
        searches.clear()  # in place: search_steps reads the order anew each round
        searches.update(reordered)


def objective_key(profile: Profile) -> str:
    """The metric the profile's objective maximises: breaks ties between equal capacities."""
    return "goodput_rps" if profile.objective == "max_goodput" else "output_tokens_per_s"


def _value_at(spec: SweepSpec, knobs: TrialConfig, found: Capacity,
              stored: dict[TrialConfig, TrialRecord], key: str) -> float | None:
    """Mean `key` over the stored repetitions at the capacity load."""
    if found.capacity <= 0:
        return None
    values = [stored[c].metrics.get(key) for rep in range(spec.search.max_repeats)
              if (c := trial_config(spec, knobs, Probe(found.capacity, rep))) in stored]
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def can_continue(capacities: list[ConfigCapacity]) -> bool:
    """Whether resuming the search has work left: a config stopped undecided or not started."""
    return any(c.capacity.status in (UNDECIDED, NOT_STARTED) for c in capacities)
