"""Runs a capacity-search sweep: each probe is an ordinary stored trial, under a time budget.

The sweep runner's machinery is reused whole (target, warm-up, baseline, one trial, progress,
cancel, per-trial predictions); only the choice of the next trial differs: `capacity.run_search`
replays the stored trials and asks for the next load, and this runner measures it. With
prediction on, the first trial calibrates: the cost model is fitted to its steps, every
config's capacity predicted, and the plan (start loads, skipped configs) stored with it.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace

from common.records import SLO, TrialConfig, TrialMetrics
from db.store import Store
from experiments.predict.accuracy import error_band, knee_growth, predicted_before
from experiments.predict.simulate import cost_to_dict
from experiments.run.sweep import SweepRunner
from experiments.run.trial import TrialResult
from experiments.search.capacity import (
    ConfigCapacity,
    knob_label,
    plan_of,
    run_search,
    sample_of,
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
from experiments.search.strategy import CapacitySearch, Sample
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


class SearchRunner(SweepRunner):
    """A SweepRunner whose trials are chosen by the capacity search instead of a grid."""

    capacities: list[ConfigCapacity] | None = None
    budget_spent = False
    _calibrating: TrialConfig | None = None
    _num_finished = 0  # searches finished at the last revision
    _judged_by: list[SLO] | None = None  # the SLOs trials are judged against (for refitted predictions)
    _server_key: tuple | None = None  # the server config running now
    _probe_predicted: float | None = None  # the calibration config's capacity from the probes

    def _run_all(self) -> str:
        search = self.spec.search
        assert search is not None
        knobs = self.spec.knob_configs()
        if not knobs:
            return "done"
        self._report(None)
        with _TargetPerServer(self) as targets:
            # A local engine or one --target opens now (calibration needs its SLOs); a
            # --server-cmd server starts when its config's first trial runs.
            slos = [] if self.spec.starts_servers else targets.get(knobs[0])[1]
            self._measure_started = time.monotonic()
            self._num_measured = 0

            def measure(config: TrialConfig) -> Sample | None:
                if self.should_stop() or not self._fits_budget(config):
                    return None  # that config stops here, undecided; cheaper ones may go on
                self._num_measured += 1
                try:
                    target, config_slos = targets.get(config)
                except TargetSetupError as exc:
                    if not self.spec.starts_servers:
                        raise
                    self.fail_start([config], str(exc))  # this config ends here; the others go on
                    return None
                self._server_key = server_key(config)
                self._run_one(target, config, config_slos)
                stored = [t for t in self.store.list_trials(self.sweep_id) if t.config == config]
                return sample_of(stored[0]) if stored else None  # none: stopped mid-trial

            if uses_prediction(self.spec) and plan_of(self.store.list_trials(self.sweep_id)) is None:
                self._calibrate(measure, slos, targets)
            self.capacities = run_search(self.spec, self.profile, self.store.list_trials(self.sweep_id),
                                         measure, self._can_continue, revise=self._revise)
        return "cancelled" if self.stop.is_set() else "done"

    def _calibrate(self, measure, slos: list[SLO], targets: _TargetPerServer) -> None:
        """Measure the calibration trial; `_with_prediction` stores the plan with it. On servers
        tradeoff starts, the first config's server is probed first (experiments/predict/calibrate.py)
        and the fit, not engine steps, predicts every config."""
        if self.spec.starts_servers:
            slos = self._probe_first_server(targets)
            if self.calibration is None:
                return  # the probes failed: the search goes on without a plan
        self._calibrating = calibration_probe(self.spec, self.profile, slos, self.calibration)
        if self.calibration is not None:  # its capacity as predicted from the probes alone
            self._probe_predicted = calibration_capacity(self.spec, self.profile, slos, self.calibration)
        try:
            measure(self._calibrating)
        finally:
            self._calibrating = None

    def _probe_first_server(self, targets: _TargetPerServer) -> list[SLO]:
        """Start the calibration config's server, probe it, keep the fit; its SLOs."""

        knobs = calibration_config(self.spec)
        try:
            target, slos = targets.get(knobs)
        except TargetSetupError as exc:
            self.probe_failure = f"{type(exc).__name__}: {exc}"
            return []
        self.probe_server(target, probe_running(self.spec, knobs.batch_size))
        return slos

    def _revise(self, config: TrialConfig, searches: dict[TrialConfig, CapacitySearch]) -> dict[str, str]:
        """After a trial measured now: prune the configs that can no longer win, and note it
        with that trial so a replay prunes at the same point. The refitted prediction (the cost
        model fitted to every step so far) is consulted each time another search finishes."""
        finished = sum(s.is_finished for s in searches.values())
        refit = finished > self._num_finished and uses_prediction(self.spec) and self._judged_by is not None
        self._num_finished = finished
        black_box = self._is_black_box()
        cost = self.fitted_cost() if refit or black_box else None
        trials = self.store.list_trials(self.sweep_id)
        try:
            if black_box:  # refitted after every trial: re-plan the configs not started yet
                revision = replan(self.spec, self.profile, cost, self._judged_by or [], searches,
                                  self._growth(trials, searches))
            else:
                revision = {"pruned": revise_plan(self.spec, self.profile, cost, self._judged_by or [],
                                                  searches)}
        except Exception:  # noqa: BLE001 - a revision only saves trials; without it none are lost
            return {}
        stored = [t for t in trials if t.config == config]
        if not stored or not any(revision.values()):
            return {}  # not stored (stopped mid-trial): a replay could not revise here either
        revision = {k: v for k, v in revision.items() if v}
        if cost is not None:
            revision["cost_model"] = cost_to_dict(cost)
        self.store.set_trial_details(stored[0].trial_id, {**stored[0].details, "revision": revision})
        return revision

    def _is_black_box(self) -> bool:
        """A search over servers it starts, calibrated from probes (refitted every trial)."""
        return (self.spec.starts_servers and uses_prediction(self.spec)
                and self._judged_by is not None and self.calibration is not None)

    def _growth(self, trials: list, searches: dict[TrialConfig, CapacitySearch]) -> float:
        """The bracketing factor around a predicted knee: the error band so far."""
        predicted = predicted_before(trials)
        errors = [math.log(s.result().capacity / predicted[knob_label(k)])
                  for k, s in searches.items() if s.is_finished and s.result().is_decided
                  and s.result().capacity > 0 and predicted.get(knob_label(k))]
        return knee_growth(error_band(trials, errors))

    def _with_prediction(self, config: TrialConfig, result: TrialResult, slos: list[SLO],
                         metrics: TrialMetrics) -> TrialMetrics:
        self._judged_by = slos
        metrics = super()._with_prediction(config, result, slos, metrics)
        if config != self._calibrating:
            return metrics
        cost = self.fitted_cost()
        load = config.concurrency if config.concurrency is not None else config.rate
        knobs = replace(config, concurrency=None, rate=None)
        # On started servers each config's search probes around its predicted knee, as far
        # apart as the calibration trial's own error says (accuracy.knee_growth).
        growth = None
        if self._is_black_box():
            err = metrics.details.get("prediction", {}).get("error", {}).get("output_tokens_per_s")
            growth = knee_growth({} if err is None else error_band([], [-math.log1p(err)]))
        try:
            plan = make_plan(self.spec, self.profile, cost, slos, knobs, float(load), growth=growth)
        except Exception as exc:  # noqa: BLE001 - no plan: every config starts at the default
            plan = {"start": {}, "skipped": {}, "failed": f"{type(exc).__name__}: {exc}"}
        if self._probe_predicted is not None:
            plan["calibration_predicted"] = self._probe_predicted
        prediction = {**metrics.details.get("prediction", {}), "plan": plan}
        return self._replace_details(metrics, prediction)

    @staticmethod
    def _replace_details(metrics: TrialMetrics, prediction: dict) -> TrialMetrics:
        return replace(metrics, details={**metrics.details, "prediction": prediction})

    def _fits_budget(self, config: TrialConfig) -> bool:
        """Whether this trial likely ends within the budget: an open-loop trial lasts at least
        its arrivals' span, a closed-loop one about as long as the trials so far."""
        if not self._num_measured:
            return True
        assert self.spec.search is not None
        spent = time.monotonic() - self._measure_started
        expected = spent / self._num_measured
        if config.rate is not None:
            span = (self.spec.requests_for(config) + self.profile.warmup_requests) / config.rate
            expected = max(expected, span)
        if self.spec.starts_servers and server_key(config) != self._server_key:
            expected += self.servers.mean_start_s()  # its server must start first
        if spent + expected > self.spec.search.budget_s:
            self.budget_spent = True
            return False
        return True

    def _can_continue(self) -> bool:
        """Within the budget: stop before a trial that would likely end past it."""
        if self.should_stop():
            return False
        assert self.spec.search is not None
        if not self._num_measured:
            return True  # every session measures at least one trial, so a resume progresses
        spent = time.monotonic() - self._measure_started
        per_trial = spent / self._num_measured
        if spent + per_trial > self.spec.search.budget_s:
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


class _TargetPerServer:
    """The target trials run on: one local engine or --target server for the whole search, or,
    with a --server-cmd, a server per server config, the previous one stopped first (a search
    with servers runs its configs one after another, so each server starts once)."""

    def __init__(self, runner: SearchRunner) -> None:
        self.runner = runner
        self.stack = contextlib.ExitStack()
        self.key: tuple | None = None
        self.target = None
        self.slos: list[SLO] = []

    def get(self, config: TrialConfig) -> tuple:
        """(target, resolved SLOs) for `config`, starting its server if another one runs."""
        key = server_key(config) if self.runner.spec.starts_servers else None
        if self.target is None or key != self.key or self.runner.servers.died():
            self.stack.close()  # stops the previous config's server (its whole process group)
            self.target = None
            self.target = self.stack.enter_context(self.runner._open_target(config))
            self.key, self.slos = key, self.runner._slos(self.target)
        return self.target, self.slos

    def __enter__(self) -> _TargetPerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()
