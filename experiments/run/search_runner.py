"""A capacity search as the runner loop's strategy: each probe is an ordinary stored trial,
under a time budget.

The runner loop (experiments/run/sweep.py) and its placement do what every sweep does (target,
warm-up, baseline, one trial, progress, cancel, per-trial predictions); only the choice of the
next trial differs: `capacity.search_trials` replays the stored trials and yields the next load
to measure, and `SearchStrategy` hands it to the loop, one trial per batch. With prediction on,
the first trial calibrates: the cost model is fitted to its steps, every config's capacity
predicted, and the plan (start loads, skipped configs) stored with it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import replace

from common.details import Prediction, Revision, SearchPlan
from common.records import SLO, TrialConfig, TrialMetrics
from db.store import Store
from experiments.predict.accuracy import error_band, knee_growth, predicted_before
from experiments.predict.simulate import cost_to_dict
from experiments.run.interfaces import Ran, Runner
from experiments.run.placement import InProcess
from experiments.search.capacity import (
    ConfigCapacity,
    knob_label,
    plan_of,
    sample_of,
    search_trials,
    uses_prediction,
)
from experiments.search.capacity_plan import (
    calibration_capacity,
    calibration_config,
    calibration_probe,
    make_plan,
    replan,
    revise_plan,
)
from experiments.search.evidence import Sample
from experiments.search.strategy import CapacitySearch
from experiments.spec.grid import GridError, SweepSpec, server_key
from experiments.targets.external import TargetSetupError


def set_search_budget(store: Store, sweep_id: int, budget_s: float) -> None:
    """Give a stored capacity search a new time budget, spent by its next (resumed) run."""
    spec = SweepSpec(**store.get_sweep(sweep_id).grid)
    if spec.search is None:
        raise GridError(f"sweep {sweep_id} is a load grid, not a capacity search: it has no budget")
    if not 0 < budget_s < float("inf"):
        raise GridError(f"budget: must be > 0 s and finite, got {budget_s:g}")
    search = spec.search.model_copy(update={"budget_s": float(budget_s)})
    store.set_sweep_grid(sweep_id, spec.model_copy(update={"search": search}).model_dump(mode="json"))


class SearchStrategy:
    """What runs next in a capacity search: the search's next probe, one trial per batch, while
    the budget lasts; on a target kept up between probes (`InProcess.target`)."""

    passes = False

    def __init__(self, runner: Runner) -> None:
        if not isinstance(runner.placement, InProcess):  # the spec refuses --executor ray
            raise GridError("a capacity search runs one probe after another: use the local executor")
        self.runner, self.targets = runner, runner.placement
        self.knobs = runner.spec.knob_configs()
        self.capacities: list[ConfigCapacity] | None = None
        self.budget_spent = False
        self.calibrating: TrialConfig | None = None
        self.judged_by: list[SLO] | None = None  # the SLOs trials are judged against (refitted predictions)
        self.server_key: tuple | None = None  # the server config running now
        self.probe_predicted: float | None = None  # the calibration config's capacity from the probes
        self.num_finished = 0  # searches finished at the last revision
        self.steps: Generator[TrialConfig, Sample | None, list[ConfigCapacity]] | None = None
        self.measure_started = 0.0
        self.num_measured = 0

    def has_work(self) -> bool:
        return bool(self.knobs)

    def next_batch(self, completed: list[Ran]) -> list[TrialConfig] | None:
        for ran in completed:
            if ran.measured:  # its target started: the server config running now
                self.server_key = server_key(ran.config)
        if self.steps is not None:  # the last probe's sample, and the search's next
            return self._step(self._sample(completed))
        if self.calibrating is not None:  # the calibration trial ran: the search starts
            self.calibrating = None
            return self._step(None)
        # A local engine or one --target opens now (calibration needs its SLOs); a
        # --server-cmd server starts when its config's first trial runs.
        slos = [] if self.runner.spec.starts_servers else self.targets.target(self.knobs[0])[1]
        self.measure_started = time.monotonic()
        self.num_measured = 0
        store, sweep_id = self.runner.store, self.runner.sweep_id
        if uses_prediction(self.runner.spec) and plan_of(store.list_trials(sweep_id)) is None:
            self.calibrating = self._calibration(slos)
            if self.calibrating is not None and self._admits(self.calibrating):
                return [self.calibrating]
            self.calibrating = None
        return self._step(None)

    def _step(self, sample: Sample | None) -> list[TrialConfig] | None:
        """The search's next trial to run (sending it the last one's sample); None at its end."""
        runner = self.runner
        try:
            if self.steps is None:
                self.steps = search_trials(runner.spec, runner.profile,
                                           runner.store.list_trials(runner.sweep_id),
                                           self._can_continue, revise=self._revise)
                config = next(self.steps)
            else:
                config = self.steps.send(sample)
            while not self._admits(config):  # that config stops here, undecided; cheaper ones may go on
                config = self.steps.send(None)
        except StopIteration as done:
            self.capacities = done.value
            return None
        return [config]

    def _admits(self, config: TrialConfig) -> bool:
        """Whether `config` runs now: not cancelled, and likely to end within the budget."""
        if self.runner.should_stop() or not self._fits_budget(config):
            return False
        self.num_measured += 1
        return True

    def _sample(self, completed: list[Ran]) -> Sample | None:
        """The probe's evidence: its stored trial; None when not measured (its server failed
        to start, or it was stopped mid-trial and not stored)."""
        (ran,) = completed
        if not ran.measured:
            return None
        stored = [t for t in self.runner.store.list_trials(self.runner.sweep_id) if t.config == ran.config]
        return sample_of(stored[0]) if stored else None

    def _calibration(self, slos: list[SLO]) -> TrialConfig | None:
        """The calibration trial (`annotate` stores the plan with it); None when there is none.
        On servers tradeoff starts, the first config's server is probed first
        (experiments/predict/calibrate.py) and the fit, not engine steps, predicts every config."""
        runner = self.runner
        if runner.spec.starts_servers:
            slos = self._probe_first_server()
            if runner.calibration is None:
                return None  # the probes failed: the search goes on without a plan
        config = calibration_probe(runner.spec, runner.profile, slos, runner.calibration)
        if runner.calibration is not None:  # its capacity as predicted from the probes alone
            self.probe_predicted = calibration_capacity(runner.spec, runner.profile, slos,
                                                        runner.calibration)
        return config

    def _probe_first_server(self) -> list[SLO]:
        """Start the calibration config's server, probe it, keep the fit; its SLOs."""
        runner = self.runner
        knobs = calibration_config(runner.spec)
        try:
            target, slos = self.targets.target(knobs)
        except TargetSetupError as exc:
            runner.probe_failure = f"{type(exc).__name__}: {exc}"
            return []
        runner.probe_server(target, probe_running(runner.spec, knobs.batch_size))
        return slos

    def annotate(self, config: TrialConfig, slos: list[SLO], metrics: TrialMetrics) -> TrialMetrics:
        """Note the SLOs trials are judged by; store the plan with the calibration trial."""
        self.judged_by = slos
        if config != self.calibrating:
            return metrics
        runner = self.runner
        cost = runner.fitted_cost()
        load = config.concurrency if config.concurrency is not None else config.rate
        knobs = replace(config, concurrency=None, rate=None)
        # On started servers each config's search probes around its predicted knee, as far
        # apart as the calibration trial's own error says (accuracy.knee_growth).
        growth = None
        if self._is_black_box():
            prediction = metrics.details.prediction
            err = prediction.error.get("output_tokens_per_s") if prediction is not None else None
            growth = knee_growth({} if err is None else error_band([], [-math.log1p(err)]))
        try:
            plan = make_plan(runner.spec, runner.profile, cost, slos, knobs, float(load), growth=growth)
        except Exception as exc:  # noqa: BLE001 - no plan: every config starts at the default
            plan = SearchPlan(failed=f"{type(exc).__name__}: {exc}")
        if self.probe_predicted is not None:
            plan = replace(plan, calibration_predicted=self.probe_predicted)
        prediction = replace(metrics.details.prediction or Prediction(), plan=plan)
        return replace(metrics, details=replace(metrics.details, prediction=prediction))

    def _revise(self, config: TrialConfig, searches: dict[TrialConfig, CapacitySearch]) -> Revision | dict:
        """After a trial measured now: prune the configs that can no longer win, and note it
        with that trial so a replay prunes at the same point. The refitted prediction (the cost
        model fitted to every step so far) is consulted each time another search finishes."""
        runner = self.runner
        spec, profile, slos = runner.spec, runner.profile, self.judged_by or []
        finished = sum(s.is_finished for s in searches.values())
        refit = finished > self.num_finished and uses_prediction(spec) and self.judged_by is not None
        self.num_finished = finished
        black_box = self._is_black_box()
        cost = runner.fitted_cost() if refit or black_box else None
        trials = runner.store.list_trials(runner.sweep_id)
        try:
            if black_box:  # refitted after every trial: re-plan the configs not started yet
                revision = replan(spec, profile, cost, slos, searches, self._growth(trials, searches))
            else:
                revision = Revision(pruned=revise_plan(spec, profile, cost, slos, searches))
        except Exception:  # noqa: BLE001 - a revision only saves trials; without it none are lost
            return {}
        stored = [t for t in trials if t.config == config]
        if not stored or not revision:
            return {}  # not stored (stopped mid-trial): a replay could not revise here either
        if cost is not None:
            revision = replace(revision, cost_model=cost_to_dict(cost))
        runner.store.set_trial_details(stored[0].trial_id,
                                       replace(stored[0].details, revision=revision))
        return revision

    def _is_black_box(self) -> bool:
        """A search over servers it starts, calibrated from probes (refitted every trial)."""
        spec = self.runner.spec
        return (spec.starts_servers and uses_prediction(spec)
                and self.judged_by is not None and self.runner.calibration is not None)

    def _growth(self, trials: list, searches: dict[TrialConfig, CapacitySearch]) -> float:
        """The bracketing factor around a predicted knee: the error band so far."""
        predicted = predicted_before(trials)
        errors = [math.log(s.result().capacity / predicted[knob_label(k)])
                  for k, s in searches.items() if s.is_finished and s.result().is_decided
                  and s.result().capacity > 0 and predicted.get(knob_label(k))]
        return knee_growth(error_band(trials, errors))

    def _fits_budget(self, config: TrialConfig) -> bool:
        """Whether this trial likely ends within the budget: an open-loop trial lasts at least
        its arrivals' span, a closed-loop one about as long as the trials so far."""
        if not self.num_measured:
            return True
        spec = self.runner.spec
        assert spec.search is not None
        spent = time.monotonic() - self.measure_started
        expected = spent / self.num_measured
        if config.rate is not None:
            span = (spec.requests_for(config) + self.runner.profile.warmup_requests) / config.rate
            expected = max(expected, span)
        if spec.starts_servers and server_key(config) != self.server_key:
            expected += self.runner.servers.mean_start_s()  # its server must start first
        if spent + expected > spec.search.budget_s:
            self.budget_spent = True
            return False
        return True

    def _can_continue(self) -> bool:
        """Within the budget: stop before a trial that would likely end past it."""
        if self.runner.should_stop():
            return False
        assert self.runner.spec.search is not None
        if not self.num_measured:
            return True  # every session measures at least one trial, so a resume progresses
        spent = time.monotonic() - self.measure_started
        per_trial = spent / self.num_measured
        if spent + per_trial > self.runner.spec.search.budget_s:
            self.budget_spent = True
            return False
        return True


def probe_running(spec: SweepSpec, batch_size: int) -> int:
    """The most running requests the probes load a server with: its batch cap, but no more users
    than a closed-loop search ever offers (probing past them costs time and informs nothing)."""
    search = spec.search
    if search is not None and search.load == "concurrency" and search.max_load:
        return max(1, min(batch_size, int(search.max_load)))
    return batch_size
