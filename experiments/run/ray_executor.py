"""`tradeoff sweep --executor ray`: a sweep's trials spread over the workers of a Ray cluster.

One worker actor per GPU (`num_gpus=1`) or per CPU slot, each loading the model once and
running one trial at a time, so no two measured trials ever share a device. The driver (this
process) hands out trials, writes every result to the store itself (workers never open it, so
any store works, a local SQLite file included), keeps resume / cancel / failure isolation as
local sweeps do, and retries a lost worker's trial once on another worker before failing it
with the reason. With no address it starts a local cluster on loopback for its own lifetime.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlparse

from common.details import Provenance
from common.records import TrialConfig
from experiments.run.interfaces import Ran, Runner
from experiments.run.placement import server_groups
from experiments.spec.profiles import needs_baseline, resolve_slos

MAX_ATTEMPTS = 2  # a trial whose worker is lost runs once more elsewhere, then fails
CONNECT_TIMEOUT_S = 5.0
POLL_S = 0.5


class RayUnavailable(ValueError):
    """Ray is not installed or the cluster cannot be reached (bad input: exit 2)."""


def check_address(address: str | None) -> None:
    """Refuse an address whose head does not answer a TCP connect (before anything is written)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise RayUnavailable("--executor ray needs Ray: pip install 'tradeoff[ray]' "
                             "(.ci/setup.sh installs it)") from None
    if address is None or address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or port is None:
        raise RayUnavailable(f"--ray-address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayUnavailable(f"--ray-address {address}: no Ray head answers there "
                             f"({exc.strerror or exc}); start one with `ray start --head`") from None


def retry_or_fail(attempts: int) -> str:
    """After a lost worker: "retry" while attempts remain, else "fail"."""
    return "retry" if attempts < MAX_ATTEMPTS else "fail"


@dataclass
class _Worker:
    index: int
    actor: Any
    where: dict = field(default_factory=dict)


class RayWorkers:
    """Where trials run with `--executor ray`: on Ray workers, each batch spread over them; the
    driver (this process) stores each result through the runner."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.ray: Any = None
        self.next_index = 0
        self.baseline: dict[str, float] | None = None
        self.last_label: str | None = None

    def groups(self, configs: list[TrialConfig]) -> list[list[TrialConfig]]:
        return [configs] if configs else []  # all at once: the workers take them in parallel

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        import ray

        _connect(self.runner.spec.execution.ray_address)
        self.ray = ray
        try:
            yield
        finally:
            ray.shutdown()  # a local cluster started by _connect ends here too

    def run(self, batch: list[TrialConfig], passes: bool) -> list[Ran] | None:
        """The whole batch at once, over the workers (a pass either way: each stored outcome,
        a failed start included, says what became of a config); None once cancelled."""
        todo = deque(batch)
        status = self._run_servers(todo) if self.runner.spec.starts_servers else self._run_on(todo)
        return None if status == "cancelled" else [Ran(c, measured=True) for c in batch]

    def _run_servers(self, todo: deque[TrialConfig]) -> str:
        """Each worker owns the servers of the server configs it is given (one at a time). With
        relative SLOs the first config runs alone, so every trial is judged by the SLOs resolved
        against its server's baseline; the rest then run in parallel."""
        ray, runner = self.ray, self.runner
        self.next_index = 0
        groups = deque(server_groups(list(todo)))
        workers = [self._spawn_server_worker()
                   for _ in range(_num_slots(ray, len(groups), runner.spec.execution.ray_cpus_per_trial))]
        runner.report(None)
        slos = None
        if needs_baseline(runner.profile) and groups:
            first = groups.popleft()
            runner.report(f"w{workers[0].index}: {first[0].server_label} (and the baseline)")
            slos = self._store_group(ray.get(workers[0].actor.run_group.remote(first, None)), workers[0])
        else:
            slos = resolve_slos(runner.profile, None)
        idle, inflight = list(workers), {}
        while groups or inflight:
            if runner.should_stop():
                ray.get([w.actor.stop.remote() for w, _ in inflight.values()])  # servers stopped
                return "cancelled"
            while idle and groups:
                w, group = idle.pop(0), groups.popleft()
                inflight[w.actor.run_group.remote(group, slos)] = (w, group)
            runner.report(" | ".join(f"w{w.index}: {g[0].server_label}" for w, g in inflight.values()))
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
            for ref in ready:
                w, group = inflight.pop(ref)
                try:
                    self._store_group(ray.get(ref), w)
                    idle.append(w)
                except ray.exceptions.RayActorError as exc:  # its servers died with it
                    for config in group:
                        runner.record_failure(config, f"worker {w.index} lost: {_first_line(exc)}")
                    idle.append(self._spawn_server_worker())
        return "cancelled" if runner.stop.is_set() else "done"

    def _store_group(self, out: dict, worker: _Worker) -> list:
        """Store one server config's trials as its worker returned them; its resolved SLOs."""
        runner = self.runner
        if not worker.where:
            worker.where = self.ray.get(worker.actor.where.remote())
        runner.servers.failures.extend(f for f in out["start_failures"] if f not in runner.servers.failures)
        for config, result in out["outcomes"]:
            if "error" in result:
                runner.record_failure(config, result["error"], result["started"], result["finished"])
            elif "metrics" in result:
                metrics = result["metrics"]
                where = (metrics.details.provenance or Provenance()).merged(worker.where)
                metrics = replace(metrics, details=replace(metrics.details, provenance=where))
                runner.record_done(config, metrics, result["records"], result["started"],
                                   result["finished"])
        return out["slos"]

    def _spawn_server_worker(self) -> _Worker:
        from experiments.run.ray_server_worker import ServerWorker

        spec = self.runner.spec
        index, self.next_index = self.next_index, self.next_index + 1
        gpus = _cluster_gpus(self.ray)
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": spec.execution.ray_cpus_per_trial}
        cls = self.ray.remote(**options, max_restarts=0, max_concurrency=2)(ServerWorker)
        actor = cls.remote(spec.model_dump(mode="json"), self.runner.profile.model_dump(mode="json"),
                           index, self.runner.sweep_id, str(self.runner.servers.dir.parent))
        return _Worker(index, actor)

    def _run_on(self, todo: deque[TrialConfig]) -> str:
        ray, runner = self.ray, self.runner
        self.next_index = 0
        slots = _num_slots(ray, len(todo), runner.spec.execution.ray_cpus_per_trial)
        workers = [self._spawn() for _ in range(slots)]
        slos = self._slos(workers[0])
        attempts: dict[TrialConfig, int] = {}
        idle, inflight = list(workers), {}
        runner.report(None)
        while todo or inflight:
            if runner.should_stop():
                for w, _ in inflight.values():
                    ray.kill(w.actor)  # a partial trial is not a result: nothing is stored
                return "cancelled"
            while idle and todo:
                w, config = idle.pop(0), todo.popleft()
                attempts[config] = attempts.get(config, 0) + 1
                inflight[w.actor.run.remote(config, slos)] = (w, config)
            self._report_inflight(inflight)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
            for ref in ready:
                w, config = inflight.pop(ref)
                if self._collect(ref, w, config, attempts[config], todo):
                    idle.append(w)
                else:
                    idle.append(self._spawn())  # a fresh worker takes the lost one's slot
        return "cancelled" if runner.stop.is_set() else "done"

    def _spawn(self) -> _Worker:
        spec = self.runner.spec
        index, self.next_index = self.next_index, self.next_index + 1
        gpus = _cluster_gpus(self.ray)
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": spec.execution.ray_cpus_per_trial}
        cls = self.ray.remote(**options, max_restarts=0)(_worker_class())
        threads = None if gpus else spec.execution.ray_cpus_per_trial
        actor = cls.remote(spec.model_dump(mode="json"), self.runner.profile.model_dump(mode="json"),
                           index, threads)
        return _Worker(index, actor)

    def _slos(self, worker: _Worker) -> list:
        ray, profile = self.ray, self.runner.profile
        worker.where = ray.get(worker.actor.where.remote())  # the model loaded: errors surface here
        if self.baseline is None and needs_baseline(profile):
            self.baseline = ray.get(worker.actor.baseline.remote())
        return resolve_slos(profile, self.baseline)

    def _collect(self, ref: Any, w: _Worker, config: TrialConfig, attempt: int,
                 todo: deque[TrialConfig]) -> bool:
        """Store one finished trial; False when its worker was lost (the trial is requeued once)."""
        ray, runner = self.ray, self.runner
        try:
            out = ray.get(ref)
            if not w.where:
                w.where = ray.get(w.actor.where.remote())
        except ray.exceptions.RayActorError as exc:
            reason = f"worker {w.index} ({w.where.get('node', '?')}) lost: {_first_line(exc)}"
            if retry_or_fail(attempt) == "retry":
                todo.appendleft(config)
            else:
                runner.record_failure(config, f"{reason}; retried once on another worker, lost again")
            return False
        if "error" in out:
            runner.record_failure(config, out["error"], out["started"], out["finished"])
            return True
        metrics = out["metrics"]
        if metrics.requests_completed == 0:
            error = next((r.error for r in out["records"] if r.error), "no request completed")
            runner.record_failure(config, error, out["started"], out["finished"])
            return True
        where = Provenance.from_dict({**w.where, "attempt": attempt})
        metrics = replace(metrics, details=replace(out["details"], provenance=where))
        runner.record_done(config, metrics, out["records"], out["started"], out["finished"])
        return True

    def _report_inflight(self, inflight: dict) -> None:
        # Per-worker progress for the CLI bar and the Run page: who runs what, right now.
        label = " | ".join(f"w{w.index}: {c.label}" for w, c in
                           sorted(inflight.values(), key=lambda wc: wc[0].index))
        if label != self.last_label:
            self.last_label = label
            self.runner.report(label or None)


def _worker_class() -> type:
    from experiments.run.ray_worker import TrialWorker

    return TrialWorker


def _connect(address: str | None) -> None:
    """Join the cluster at `address`, or start a local one on loopback (ends with ray.shutdown)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is not None:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        return
    ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False,
             configure_logging=False, _node_ip_address="127.0.0.1")


def _cluster_gpus(ray: Any) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def _num_slots(ray: Any, num_trials: int, cpus_per_trial: int) -> int:
    """Workers to start: one per GPU, else one per CPU slot; never more than trials to run."""
    gpus = _cluster_gpus(ray)
    slots = gpus if gpus else int(ray.cluster_resources().get("CPU", 1)) // cpus_per_trial
    return max(1, min(slots, num_trials))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
