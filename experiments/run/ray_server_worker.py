"""The body of a Ray worker that owns servers: for each server config it is given, it starts that
config's server on its own node (its GPU, or its CPU slot), runs the config's trials against it
and stops it. A team with 8 GPUs sweeps 8 server configs at once.

The driver (experiments/run/ray_executor.py) wraps this class with `ray.remote(num_gpus=1)` (Ray then
sets CUDA_VISIBLE_DEVICES, which the server inherits) or `num_cpus=K`, and `max_concurrency=2`
so `stop` can reach a worker busy in `run_group`. Workers never open the result store: they
return each trial's outcome and the driver writes it. Server logs go to the driver's log
directory when the worker shares its file system (a local cluster), else to the worker's own.
"""

from __future__ import annotations

import os
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.records import SLO, TrialConfig
from experiments.run.measure import measure
from experiments.run.trial import measure_baseline, run_trial
from experiments.spec.grid import SweepSpec
from experiments.spec.profiles import Profile, needs_baseline, resolve_slos
from experiments.targets.external import ExternalTarget, TargetSetupError, load_tokenizer
from experiments.targets.servers import SweepServers


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class ServerWorker:
    """Starts, measures and stops one server config at a time."""

    def __init__(self, spec: dict, profile: dict, index: int, sweep_id: int, log_dir: str) -> None:
        self.spec = SweepSpec(**spec)
        self.profile = Profile(**profile)
        self.index = index
        self.servers = SweepServers(self.spec, sweep_id, Path(log_dir))
        target = self.spec.target
        self.tokenizer = load_tokenizer(target.tokenizer or target.target_model or target.model)
        self._stop = threading.Event()

    def where(self) -> dict[str, Any]:
        """Provenance: node, address, process and the GPU ids Ray gave this worker."""
        import ray

        return {"executor": "ray", "worker": self.index, "node": socket.gethostname(),
                "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def stop(self) -> None:
        """Cancel: the trial in flight stops, the server is stopped, nothing more runs."""
        self._stop.set()
        if self.servers.current is not None:
            self.servers.current.stop()

    def run_group(self, configs: list[TrialConfig], slos: list[SLO] | None) -> dict[str, Any]:
        """Every trial of one server config (one server; a new one if it dies); `slos` None: the
        profile's relative SLOs are resolved here, against a baseline measured on this server.
        Returns {"slos", "outcomes": [(config, outcome dict)]}; never raises for a trial."""
        pending, outcomes = list(configs), []
        while pending and not self._stop.is_set():
            try:
                with self.servers.process(pending[0]) as server:
                    target = ExternalTarget.connect(server.base_url, self.spec.target.target_model,
                                                    self.tokenizer)
                    info = target.engine.describe()
                    self.servers.started(info.version, info.owned_by)
                    self._warm_up(target)
                    if slos is None:
                        slos = self._resolve_slos(target)
                    while pending and not self.servers.died() and not self._stop.is_set():
                        config = pending.pop(0)
                        outcomes.append((config, self._trial(target, config, slos)))
                    target.close()
            except TargetSetupError as exc:
                self.servers.failures.append(str(exc))
                outcomes += [(c, {"error": str(exc), "started": _utcnow(), "finished": _utcnow()})
                             for c in pending]
                pending.clear()
        return {"slos": slos, "outcomes": outcomes, "start_failures": list(self.servers.failures)}

    def _trial(self, target: ExternalTarget, config: TrialConfig, slos: list[SLO]) -> dict[str, Any]:
        started = _utcnow()
        out = measure(target, config, self.profile, self.spec.requests_for(config),
                      seed=self.spec.load.seed + config.repetition, slos=slos, servers=self.servers,
                      engine=self.spec.target.engine, max_duration_s=self.spec.execution.max_trial_s,
                      should_stop=self._stop.is_set)
        done = {"started": started, "finished": _utcnow()}
        if out.error is not None:
            return {"error": out.error, **done}
        if out.metrics is None:
            return {"stopped": True, **done}
        return {"metrics": out.metrics, "records": out.records, **done}

    def _warm_up(self, target: ExternalTarget) -> None:
        # One short trial so first-call costs (allocator, kernels) stay out of the first trial.
        config = TrialConfig("continuous", max(self.spec.knobs.batch_sizes), 0.0, concurrency=2)
        run_trial(target.engine, config, self.profile, 4, seed=self.spec.load.seed, slos=[],
                  **target.request_kwargs())

    def _resolve_slos(self, target: ExternalTarget) -> list[SLO]:
        baseline = None
        if needs_baseline(self.profile):
            baseline = measure_baseline(target.engine, self.profile, seed=self.spec.load.seed,
                                        **target.request_kwargs())
        return resolve_slos(self.profile, baseline)
