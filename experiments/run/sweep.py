"""The sweep runner: one model load, then every trial of the grid, each committed atomically.

A crash loses at most the trial in flight; `resume` skips trials already stored (done or
failed), so every trial lands exactly once. Cancellation (a flag in the db, or a local event)
is checked between trials and, through `should_stop`, inside the trial in flight.

This is the base runner: the capacity search's and Ray's runners build on it, and
`runners.runner_for` (above all three) picks the one a stored sweep needs.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from pydantic import ValidationError

from common.records import SLO, TrialConfig, TrialMetrics
from db.store import Store
from engine.config import EngineConfig
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
from experiments.run.measure import measure
from experiments.run.progress import Progress
from experiments.run.provenance import provenance
from experiments.run.trial import (
    TrialResult,
    measure_baseline,
    run_trial,
    trace_deadline_s,
    with_trace_window,
)
from experiments.spec.grid import GridError, SweepSpec, server_key
from experiments.spec.profiles import Profile, TraceArrival, needs_baseline, resolve_slos
from experiments.spec.traces import TraceError, prepare_replay
from experiments.targets.external import ExternalTarget, TargetSetupError, api_key_from_env, load_tokenizer
from experiments.targets.servers import SweepServers, log_root

if TYPE_CHECKING:  # the engine (torch) loads only when a sweep runs, not when the UI queues one
    from experiments.targets.local import LocalTarget
    from experiments.targets.replica_target import ReplicaTarget

HEARTBEAT_S = 2.0


def sweep_profile(spec: SweepSpec, profile: Profile) -> Profile:
    """The profile as the sweep runs it: the spec's SLOs in place of its own, a trace profile
    with the spec's replay window."""
    profile = with_slos(profile, spec.slos)
    is_trace = isinstance(profile.arrival, TraceArrival)
    searches_speedup = spec.search is not None and spec.search.load == "speedup"
    if spec.search is not None and is_trace and not searches_speedup:
        raise GridError(f"profile: '{profile.name}' replays a trace, whose load is its speed-up; "
                        "search it with --speedup (search.load: speedup)")
    if spec.search is not None and not profile.slos:
        raise GridError(f"profile: '{profile.name}' has no SLOs: a capacity search needs at least "
                        "one (add slos to the profile, or run a grid sweep)")
    if (spec.speedup is not None or searches_speedup) and not is_trace:
        raise GridError(f"speedup: profile '{profile.name}' replays no trace; use a trace profile "
                        "(azure-conv, azure-code, a .csv or .jsonl) or sweep rate / concurrency")
    if (spec.trace_duration_s, spec.trace_start_s) != (None, None) and not is_trace:
        raise GridError(f"trace_duration_s / trace_start_s: profile '{profile.name}' replays no trace")
    if not is_trace:
        return profile
    profile = with_trace_window(profile, spec.trace_duration_s, spec.trace_start_s)
    if spec.speedup:  # the slowest replay covers the least trace: it must hold a request
        try:
            prepare_replay(profile.arrival, min(spec.speedup))
        except TraceError as exc:
            raise GridError(f"speedup: {exc}") from None
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
        raise GridError(f"slos: {where}: {first['msg']}") from None


def create_sweep(store: Store, spec: SweepSpec, profile: Profile) -> int:
    """Store a queued sweep (nothing runs yet) and return its id."""
    profile = sweep_profile(spec, profile)
    name = spec.name or f"{spec.profile} on {spec.model}"
    return store.create_sweep(
        name=name, model=spec.model, device=spec.device, device_name=None, dtype=spec.dtype,
        profile=profile.model_dump(mode="json"), grid=spec.model_dump(mode="json"),
        seed=spec.seed, provenance=provenance(), trials_total=spec.num_trials,
    )


def utcnow() -> datetime:
    """Naive UTC, as the store keeps datetimes."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class SweepRunner:
    """Runs (or resumes) one stored sweep on a local engine."""

    def __init__(self, store: Store, sweep_id: int,
                 on_progress: Callable[[Progress], None] | None = None,
                 stop: threading.Event | None = None, target: LocalTarget | None = None) -> None:
        self.store = store
        self.sweep_id = sweep_id
        self.on_progress = on_progress
        self.stop = stop or threading.Event()
        sweep = store.get_sweep(sweep_id)
        self.spec = SweepSpec(**sweep.grid)
        self.profile = Profile(**sweep.profile)
        self.target = target  # an already loaded model (the CLI loads it before writing to the db)
        self._tok = None
        self._baseline: dict[str, float] | None = None
        self._steps: list[StepRecord] | None = None  # measured steps, for the prediction fit
        self.calibration: CostModel | None = None  # a started server's, from black-box probes
        self.probed = None  # that calibration with its probes, until stored with a trial
        self.probe_failure: str | None = None
        self._last_beat = 0.0
        self._started = time.monotonic()
        self.servers = SweepServers(self.spec, sweep_id, log_root(store.sqlite_path))
        # Drift control (experiments/run/drift.py); a trace replays no generated requests to check.
        self.speed = SpeedChecks.for_sweep(store, sweep_id, self.profile, self.spec.seed,
                                           self.spec.search is not None, time.monotonic) \
            if not isinstance(self.profile.arrival, TraceArrival) else None
        stored = store.list_trials(sweep_id)
        self.num_done = sum(t.status == "done" for t in stored)
        self.num_failed = sum(t.status == "failed" for t in stored)

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
        stored = self.store.done_configs(self.sweep_id)
        todo = [c for c in self.spec.trial_configs() if c not in stored]
        if not todo:
            return "done"
        self._report(None)
        for configs in self._groups(todo):
            if not self._run_group(list(configs)):
                return "cancelled"
        reruns = self.speed.reruns() if self.speed else []  # once: the drifted trials again
        self.num_done -= len(reruns)
        for configs in self._groups(reruns):  # each on its own server config's server
            if self.stop.is_set() or not self._run_group(list(configs)):
                return "cancelled"
        return "cancelled" if self.stop.is_set() else "done"

    def _run_group(self, pending: list[TrialConfig]) -> bool:
        """Run one target's trials; False once cancelled. A server that fails to start fails
        its configs' trials (with its one-line reason) and the sweep goes on; one that dies
        mid-trial fails that trial and is restarted for the rest."""
        while pending:
            try:
                with self._open_target(pending[0]) as target:
                    slos = self._slos(target)
                    while pending and not self.servers.died():
                        if self.should_stop():
                            return False
                        self._run_one(target, pending.pop(0), slos)
            except TargetSetupError as exc:
                if not self.spec.starts_servers:
                    raise
                self.fail_start(pending, str(exc))
                return True
        return True

    def fail_start(self, configs: list[TrialConfig], reason: str) -> None:
        """Store each config's trial as failed because its server could not start."""
        self.servers.failures.append(reason)
        for config in configs:
            self.store.add_failed_trial(self.sweep_id, config, reason, utcnow(), utcnow())
            self.num_failed += 1
        configs.clear()
        self._report(None)

    def _groups(self, todo: list[TrialConfig]) -> list[list[TrialConfig]]:
        """Trials per target: all on one local engine, or one group per server config."""
        if self.spec.uses_replica_processes:  # one replica set per replica count
            by_count: dict[int, list[TrialConfig]] = {}
            for config in todo:
                by_count.setdefault(config.replicas, []).append(config)
            return list(by_count.values())
        if not self.spec.starts_servers:
            return [todo]
        groups: dict[tuple, list[TrialConfig]] = {}
        for config in todo:
            groups.setdefault(server_key(config), []).append(config)
        return list(groups.values())

    @contextlib.contextmanager
    def _open_target(self, config: TrialConfig) -> Iterator[LocalTarget | ExternalTarget]:
        if not self.spec.is_external:
            target = self.target
            if target is None or replica_count(target) != config.replicas:
                if target is not None:
                    target.close()
                target = local_target_for(self.spec, config.replicas)
            self.target = None  # closed below; a later group would load anew
            self.store.set_sweep_device(self.sweep_id, str(target.loaded.device),
                                        target.loaded.device_name, str(target.loaded.dtype))
            self._warm_up(target)
            with contextlib.closing(target):
                yield from self._checked(target)
            return
        with contextlib.ExitStack() as stack:
            url = self.spec.target
            if self.spec.starts_servers:
                url = stack.enter_context(self.servers.process(config)).base_url
            target = stack.enter_context(contextlib.closing(ExternalTarget.connect(
                url, self.spec.target_model, self._tokenizer(),
                api_key_from_env(self.spec.api_key_env))))
            if self.spec.starts_servers:
                info = target.engine.describe()
                self.servers.started(info.version, info.owned_by)
            self._warm_up(target)
            if self.spec.calibrate and self.calibration is None:
                self.fitted_cost()  # a resumed sweep: the calibration its first trial stored
                if self.calibration is None:  # else probe the first server, once per sweep
                    self.probe_server(target, config.batch_size)
            yield from self._checked(target)

    def _checked(self, target: LocalTarget | ExternalTarget) -> Iterator:
        """Yield `target` between speed checks (drift control): one now, one at its end."""
        if self.speed is not None:
            self.speed.measure(target)
        yield target
        if self.speed is not None:
            self.speed.at_end(target)

    def _tokenizer(self):
        if self._tok is None:
            self._tok = load_tokenizer(self.spec.tokenizer or self.spec.target_model or self.spec.model)
        return self._tok

    def _warm_up(self, target: LocalTarget | ExternalTarget) -> None:
        # One short trial so first-call costs (allocator, kernels) stay out of the first trial.
        n = replica_count(target)
        config = TrialConfig("continuous", max(self.spec.batch_sizes), 0.0, concurrency=2 * n,
                             replicas=n, router=None if n == 1 else "round_robin")
        run_trial(target.engine, config, self.profile, 4 * n, seed=self.spec.seed, slos=[],
                  **target.request_kwargs())

    def _slos(self, target: LocalTarget | ExternalTarget) -> list[SLO]:
        # The unloaded baseline is measured once per sweep, on the first target.
        if self._baseline is None and needs_baseline(self.profile):
            self._baseline = measure_baseline(target.engine, self.profile, seed=self.spec.seed,
                                              **target.request_kwargs())
        return resolve_slos(self.profile, self._baseline)

    def _run_one(self, target: LocalTarget | ExternalTarget, config: TrialConfig, slos: list[SLO]) -> None:
        self._report(config.label)
        started = utcnow()
        out = measure(target, config, self.profile, self.spec.requests_for(config),
                      seed=self.spec.seed + config.repetition, slos=slos, servers=self.servers,
                      engine=self.spec.engine, max_duration_s=self._deadline_s(config),
                      should_stop=self.should_stop)
        if out.error is not None:
            self._fail_trial(config, out.error, started)
            return
        if out.metrics is None or out.result is None:
            return  # cancelled mid-trial: a partial trial is not a result
        metrics = self._with_prediction(config, out.result, slos, out.metrics)
        trial_id = self.store.add_trial(self.sweep_id, config, metrics, out.records, started, utcnow())
        self.num_done += 1
        self._report(None)
        if self.speed is not None:
            self.speed.after_trial(target, trial_id, config)

    def _fail_trial(self, config: TrialConfig, reason: str, started: datetime) -> None:
        self.store.add_failed_trial(self.sweep_id, config, reason, started, utcnow())
        self.num_failed += 1
        self._report(None)

    def _with_prediction(self, config: TrialConfig, result: TrialResult, slos: list[SLO],
                         metrics: TrialMetrics) -> TrialMetrics:
        """The metrics plus details["prediction"]: what the simulator, fitted to the steps of
        the trials before this one, predicted for it, and this trial's steps for later fits."""
        if config.speedup is not None or not (result.steps or self.calibration):
            return metrics  # a trace (not simulated), or nothing to fit (a server not calibrated)
        cost = self.fitted_cost()
        try:
            details = prediction_details(config, self.profile, self.spec.requests_for(config),
                                         self.spec.seed + config.repetition, slos, cost,
                                         result.metrics, result.steps)
        except Exception as exc:  # noqa: BLE001 - a forecast must never cost a measured trial
            details = {"failed": f"{type(exc).__name__}: {exc}", "steps": step_summary(result.steps)}
        if self.probed is not None:  # stored once: a resume and the UI predict from it
            details["calibration"] = {**self.probed.to_dict(), "cost_model": cost_to_dict(cost)}
            self.probed = None
        if self.calibration is not None and "predicted" in details:  # issue 22: refine the fit
            from experiments.predict.calibrate import refit_details
            details["refit"] = refit_details(self.store.list_trials(self.sweep_id), details, self.spec,
                                             self.profile, slos, config, metrics.flat(), cost)
            self.calibration = cost_from_dict(details["refit"]["cost_model"])
        self._steps.extend(result.steps)
        return replace(metrics, details={**metrics.details, "prediction": details})

    def probe_server(self, target: ExternalTarget, max_running: int) -> None:
        """Fit the cost model to black-box probes of a started server (experiments/predict/calibrate.py);
        the next stored trial keeps them. A failure only costs predictions."""
        from experiments.predict.calibrate import fit, probe_server
        self._report(f"probing the server (calibration, up to {max_running} running)")
        try:
            self.probed = fit(probe_server(target.engine, max_running=max_running, seed=self.spec.seed,
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
        return fit_cost_model(self._steps, prior_cost(self.spec.model))

    def _deadline_s(self, config: TrialConfig) -> float | None:
        # A trace trial replays its whole window and drains (bounded) unless max_trial_s says less.
        if config.speedup is None or self.spec.max_trial_s is not None:
            return self.spec.max_trial_s
        assert isinstance(self.profile.arrival, TraceArrival)
        return trace_deadline_s(self.profile.arrival.duration_s)

    def _report(self, current_label: str | None) -> None:
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


def local_target_for(spec: SweepSpec, replicas: int = 1) -> LocalTarget | ReplicaTarget:
    """Load the sweep's model once and start its engine (or `replicas` replica processes)."""
    config = EngineConfig(model=spec.model, device=spec.device, dtype=spec.dtype,
                          kv_budget_tokens=spec.kv_budget_tokens, seed=spec.seed)
    if spec.uses_replica_processes:
        from experiments.targets.replica_target import ReplicaTarget

        return ReplicaTarget.start(config, replicas, None)
    from experiments.targets.local import LocalTarget

    return LocalTarget.start(config)


def replica_count(target: object) -> int:
    """How many engine replicas a target runs (1 for one in-process engine)."""
    replicas = getattr(getattr(target, "engine", None), "replicas", None)
    return 1 if replicas is None else len(replicas)
