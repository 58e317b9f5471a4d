"""The runner loop: one target load, then every trial the sweep asks for, each committed atomically.

A crash loses at most the trial in flight; `resume` skips trials already stored (done or
failed), so every trial lands exactly once. Cancellation (a flag in the db, or a local event)
is checked between trials and, through `should_stop`, inside the trial in flight.

`SweepRunner` is the one runner loop. It is given a strategy (what runs next: the grid by
default, or the capacity search) and a placement (where it runs: this process's engine, replicas,
started servers or a --target by default, or Ray workers); experiments/run/interfaces.py says
what each offers, and `runners.runner_for` picks the pair a stored sweep needs. The runner keeps
what every trial shares: storing it, progress, heartbeats, cancel, and per-trial predictions.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from pydantic import ValidationError

from common.details import Prediction, ProbeCalibration
from common.records import SLO, RequestRecord, TrialConfig, TrialMetrics
from db.store import Store
from engine.core import StepRecord
from engine.simulate import CostModel
from experiments.predict.simulate import (
    cost_from_dict,
    cost_to_dict,
    fit_cost_model,
    prediction_details,
    prior_cost,
    step_summary,
    stored_calibration,
    stored_steps,
)
from experiments.run.drift import SpeedChecks
from experiments.run.grid_strategy import GridStrategy
from experiments.run.interfaces import PlacementFor, Ran, StrategyFor
from experiments.run.measure import measure
from experiments.run.placement import placement_for
from experiments.run.progress import Progress
from experiments.run.provenance import provenance
from experiments.run.trial import TrialResult, trace_deadline_s, with_trace_window
from experiments.spec.grid import GridError, SweepSpec
from experiments.spec.profiles import Profile, TraceArrival
from experiments.spec.traces import TraceError, prepare_replay
from experiments.targets.servers import SweepServers, log_root

if TYPE_CHECKING:
    from experiments.search.capacity import ConfigCapacity
    from experiments.targets.external import ExternalTarget
    from experiments.targets.protocol import Target

HEARTBEAT_S = 2.0


def sweep_profile(spec: SweepSpec, profile: Profile) -> Profile:
    """The profile as the sweep runs it: the spec's SLOs in place of its own, a trace profile
    with the spec's replay window."""
    profile = with_slos(profile, spec.load.slos)
    is_trace = isinstance(profile.arrival, TraceArrival)
    searches_speedup = spec.search is not None and spec.search.load == "speedup"
    if spec.search is not None and is_trace and not searches_speedup:
        raise _spec_error("profile", f"'{profile.name}' replays a trace, whose load is its "
                          "speed-up; search it with --speedup (search.load: speedup)")
    if spec.search is not None and not profile.slos:
        raise _spec_error("profile", f"'{profile.name}' has no SLOs: a capacity search needs at "
                          "least one (add slos to the profile, or run a grid sweep)")
    if (spec.load.speedup is not None or searches_speedup) and not is_trace:
        raise _spec_error("speedup", f"profile '{profile.name}' replays no trace; use a trace "
                          "profile (azure-conv, azure-code, a .csv or .jsonl) or sweep rate / concurrency")
    if (spec.load.trace_duration_s, spec.load.trace_start_s) != (None, None) and not is_trace:
        raise _spec_error("trace_duration_s", f"profile '{profile.name}' replays no trace",
                          where="trace_duration_s / trace_start_s")
    if not is_trace:
        return profile
    profile = with_trace_window(profile, spec.load.trace_duration_s, spec.load.trace_start_s)
    if spec.load.speedup:  # the slowest replay covers the least trace: it must hold a request
        try:
            prepare_replay(profile.arrival, min(spec.load.speedup))
        except TraceError as exc:
            raise _spec_error("speedup", str(exc)) from None
    return profile


def with_slos(profile: Profile, slos: dict[str, dict] | None) -> Profile:
    """`profile` judged by `slos` ({metric: {percentile, max_ms}}) instead of its own SLOs."""
    if slos is None:
        return profile
    try:
        return Profile(**{**profile.model_dump(mode="json"), "slos": slos})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"][1:])
        raise _spec_error("slos", f"{where}: {first['msg']}") from None


def _spec_error(field: str, reason: str, where: str | None = None) -> GridError:
    """`field: reason`, naming the spec field it is about (the Run page shows it there)."""
    return GridError(f"{where or field}: {reason}", field=field, reason=reason)


def create_sweep(store: Store, spec: SweepSpec, profile: Profile) -> int:
    """Store a queued sweep (nothing runs yet) and return its id."""
    profile = sweep_profile(spec, profile)
    name = spec.name or f"{spec.load.profile} on {spec.target.model}"
    target = spec.target
    return store.create_sweep(
        name=name, model=target.model, device=target.device, device_name=None, dtype=target.dtype,
        profile=profile.model_dump(mode="json"), grid=spec.model_dump(mode="json"),
        seed=spec.load.seed, provenance=provenance(), trials_total=spec.num_trials,
    )


def utcnow() -> datetime:
    """Naive UTC, as the store keeps datetimes."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class SweepRunner:
    """Runs (or resumes) one stored sweep: its strategy's batches, where its placement puts them."""

    def __init__(self, store: Store, sweep_id: int,
                 on_progress: Callable[[Progress], None] | None = None,
                 stop: threading.Event | None = None, target: Target | None = None,
                 strategy: StrategyFor | None = None, placement: PlacementFor | None = None) -> None:
        self.store = store
        self.sweep_id = sweep_id
        self.on_progress = on_progress
        self.stop = stop or threading.Event()
        sweep = store.get_sweep(sweep_id)
        self.spec = SweepSpec(**sweep.grid)
        self.profile = Profile(**sweep.profile)
        self.target = target  # an already loaded model (the CLI loads it before writing to the db)
        self._steps: list[StepRecord] | None = None  # measured steps, for the prediction fit
        self.calibration: CostModel | None = None  # a started server's, from black-box probes
        self.probed = None  # that calibration with its probes, until stored with a trial
        self.probe_failure: str | None = None
        self._last_beat = 0.0
        self._started = time.monotonic()
        self.servers = SweepServers(self.spec, sweep_id, log_root(store.sqlite_path))
        # Drift control (experiments/run/drift.py); a trace replays no generated requests to check.
        self.speed = SpeedChecks.for_sweep(store, sweep_id, self.profile, self.spec.load.seed,
                                           self.spec.search is not None, time.monotonic) \
            if not isinstance(self.profile.arrival, TraceArrival) else None
        stored = store.list_trials(sweep_id)
        self.num_done = sum(t.status == "done" for t in stored)
        self.num_failed = sum(t.status == "failed" for t in stored)
        self.placement = (placement or placement_for)(self)  # where trials run
        self.strategy = (strategy or GridStrategy)(self)  # what runs next
        self._ran: list[Ran] = []

    @property
    def capacities(self) -> list[ConfigCapacity] | None:
        """The strategy's answer (a capacity search's, once run), else None."""
        return self.strategy.capacities

    @property
    def budget_spent(self) -> bool:
        """Whether the strategy stopped early because its time budget was spent."""
        return self.strategy.budget_spent

    def run(self) -> str:
        """Run every trial not yet stored; return the final status."""
        self.store.start_sweep(self.sweep_id, os.getpid())
        self.servers.pin_client()  # --server-cpus: the client on the other CPUs
        try:
            status = self._run_all()
        except BaseException as exc:
            self.store.finish_sweep(self.sweep_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        self.store.finish_sweep(self.sweep_id, status)
        return status

    def should_stop(self) -> bool:
        """True once cancelled, locally or through the db flag (the UI's cancel button)."""
        if self.stop.is_set():
            return True
        self._heartbeat()
        if self.store.is_cancel_requested(self.sweep_id):
            self.stop.set()
        return self.stop.is_set()

    def _run_all(self) -> str:
        """The loop: the strategy's next batch, run by the placement, until none is left."""
        if not self.strategy.has_work():
            return "done"
        with self.placement.session():
            completed: list[Ran] = []
            while (batch := self.strategy.next_batch(completed)) is not None:
                if not self._run_group(batch):
                    return "cancelled"
                completed = self._ran
        return "cancelled" if self.stop.is_set() else "done"

    def _run_group(self, batch: list[TrialConfig]) -> bool:
        """Run one batch (a grid's: one target's trials) where the placement puts it; what became
        of its configs in `_ran`; False once cancelled."""
        ran = self.placement.run(batch, self.strategy.passes)
        self._ran = ran or []
        return ran is not None

    def take_target(self) -> Target | None:
        """The target the runner was given (already loaded), handed over once."""
        target, self.target = self.target, None
        return target

    def fail_start(self, configs: list[TrialConfig], reason: str) -> None:
        """Store each config's trial as failed because its server could not start."""
        self.servers.failures.append(reason)
        for config in configs:
            self.store.add_failed_trial(self.sweep_id, config, reason, utcnow(), utcnow())
            self.num_failed += 1
        configs.clear()
        self.report(None)

    def run_one(self, target: Target, config: TrialConfig, slos: list[SLO]) -> None:
        """Measure one trial on `target` and store it (a result or a failure; a trial stopped
        mid-way is not stored), then a drift check when one is due."""
        self.report(config.label)
        started = utcnow()
        out = measure(target, config, self.profile, self.spec.requests_for(config),
                      seed=self.spec.load.seed + config.repetition, slos=slos, servers=self.servers,
                      engine=self.spec.target.engine, max_duration_s=self._deadline_s(config),
                      should_stop=self.should_stop)
        if out.error is not None:
            self.record_failure(config, out.error, started)
            return
        if out.metrics is None or out.result is None:
            return  # cancelled mid-trial: a partial trial is not a result
        metrics = self._with_prediction(config, out.result, slos, out.metrics)
        trial_id = self.record_done(config, metrics, out.records, started, utcnow())
        if self.speed is not None:
            self.speed.after_trial(target, trial_id, config)

    def record_done(self, config: TrialConfig, metrics: TrialMetrics, records: list[RequestRecord],
                    started: datetime, finished: datetime) -> int:
        """Store a measured trial; its id."""
        trial_id = self.store.add_trial(self.sweep_id, config, metrics, records, started, finished)
        self.num_done += 1
        self.report(None)
        return trial_id

    def record_failure(self, config: TrialConfig, reason: str, started: datetime | None = None,
                       finished: datetime | None = None) -> None:
        """Store a failed trial with its reason (its times: now where not given)."""
        self.store.add_failed_trial(self.sweep_id, config, reason, started or utcnow(),
                                    finished or utcnow())
        self.num_failed += 1
        self.report(None)

    def _with_prediction(self, config: TrialConfig, result: TrialResult, slos: list[SLO],
                         metrics: TrialMetrics) -> TrialMetrics:
        """The metrics as stored: with the prediction, then as the strategy annotates them."""
        return self.strategy.annotate(config, slos, self._predicted(config, result, slos, metrics))

    def _predicted(self, config: TrialConfig, result: TrialResult, slos: list[SLO],
                   metrics: TrialMetrics) -> TrialMetrics:
        """The metrics plus details.prediction: what the simulator, fitted to the steps of
        the trials before this one, predicted for it, and this trial's steps for later fits."""
        if config.speedup is not None or not (result.steps or self.calibration):
            return metrics  # a trace (not simulated), or nothing to fit (a server not calibrated)
        cost = self.fitted_cost()
        try:
            prediction = prediction_details(config, self.profile, self.spec.requests_for(config),
                                            self.spec.load.seed + config.repetition, slos, cost,
                                            result.metrics, result.steps)
        except Exception as exc:  # noqa: BLE001 - a forecast must never cost a measured trial
            prediction = Prediction(failed=f"{type(exc).__name__}: {exc}",
                                    steps=step_summary(result.steps))
        if self.probed is not None:  # stored once: a resume and the UI predict from it
            calibration = ProbeCalibration.from_dict({**self.probed.to_dict(),
                                                 "cost_model": cost_to_dict(cost)})
            prediction = replace(prediction, calibration=calibration)
            self.probed = None
        if self.calibration is not None and prediction.predicted:  # issue 22: refine the fit
            from experiments.predict.calibrate import refit_details
            refit = refit_details(self.store.list_trials(self.sweep_id), prediction, self.spec,
                                  self.profile, slos, config, metrics.flat(), cost)
            prediction = replace(prediction, refit=refit)
            self.calibration = cost_from_dict(refit.cost_model)
        self._steps.extend(result.steps)
        return replace(metrics, details=replace(metrics.details, prediction=prediction))

    def probe_server(self, target: ExternalTarget, max_running: int) -> None:
        """Fit the cost model to black-box probes of a started server (experiments/predict/calibrate.py);
        the next stored trial keeps them. A failure only costs predictions."""
        from experiments.predict.calibrate import fit, probe_server
        self.report(f"probing the server (calibration, up to {max_running} running)")
        try:
            self.probed = fit(probe_server(target.engine, max_running=max_running, seed=self.spec.load.seed,
                                           **target.request_kwargs()))
        except (ValueError, RuntimeError, OSError) as exc:
            self.probe_failure = f"{type(exc).__name__}: {exc}"
            return
        self.calibration = self.probed.cost

    def fitted_cost(self) -> CostModel:
        """The cost model predictions use now: a server's black-box calibration (its probes), else
        the fit to every engine step measured so far (the model's prior before any)."""
        if self._steps is None:  # a resumed sweep: what earlier trials stored
            stored = [t.details for t in self.store.list_trials(self.sweep_id)]
            self._steps = stored_steps(stored)
            self.calibration = self.calibration or stored_calibration(stored)
        if self.calibration is not None:
            return self.calibration
        return fit_cost_model(self._steps, prior_cost(self.spec.target.model))

    def _deadline_s(self, config: TrialConfig) -> float | None:
        # A trace trial replays its whole window and drains (bounded) unless max_trial_s says less.
        if config.speedup is None or self.spec.execution.max_trial_s is not None:
            return self.spec.execution.max_trial_s
        assert isinstance(self.profile.arrival, TraceArrival)
        return trace_deadline_s(self.profile.arrival.duration_s)

    def report(self, current_label: str | None) -> None:
        """Progress for the store (the UI reads it) and the CLI bar: counts and what runs now."""
        self.store.update_progress(self.sweep_id, self.num_done, self.num_failed, current_label)
        if self.on_progress is not None:
            self.on_progress(Progress(self.sweep_id, self.spec.num_trials, self.num_done,
                                      self.num_failed, current_label,
                                      time.monotonic() - self._started))

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_S:
            self.store.heartbeat(self.sweep_id, os.getpid())
            self._last_beat = now

