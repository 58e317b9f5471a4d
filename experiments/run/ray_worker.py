"""The body of one Ray worker actor: loads the sweep's model once, then runs trials on request.

The driver (experiments/run/ray_executor.py) wraps this class with `ray.remote(num_gpus=1)` (one
GPU each) or `num_cpus=K` (a CPU slot), so Ray never places two measuring workers on one
device. Workers never open the result store: they return records and the driver writes them.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from common.details import Prediction
from common.records import SLO, TrialConfig
from experiments.spec.grid import SweepSpec
from experiments.spec.profiles import Profile


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class TrialWorker:
    """One model, loaded once, serving one trial at a time."""

    def __init__(self, spec: dict, profile: dict, index: int, num_threads: int | None) -> None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch

        if num_threads:  # a CPU slot: as many threads as cores it was given, no more
            torch.set_num_threads(num_threads)
        from experiments.run.placement import local_target_for

        self.spec = SweepSpec(**spec)
        self.profile = Profile(**profile)
        self.index = index
        self.target = local_target_for(self.spec)
        self._warm_up()

    def _warm_up(self) -> None:
        from experiments.run.trial import run_trial

        config = TrialConfig("continuous", max(self.spec.knobs.batch_sizes), 0.0, concurrency=2)
        run_trial(self.target.engine, config, self.profile, 4, seed=self.spec.load.seed, slos=[],
                  **self.target.request_kwargs())

    def where(self) -> dict[str, Any]:
        """Provenance: node, address, process, device and the GPU ids Ray gave this worker."""
        import ray

        loaded = self.target.loaded
        ctx = ray.get_runtime_context()
        return {"executor": "ray", "worker": self.index, "node": socket.gethostname(),
                "node_ip": ray.util.get_node_ip_address(), "node_id": ctx.get_node_id(),
                "pid": os.getpid(), "device": str(loaded.device), "device_name": loaded.device_name,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def baseline(self) -> dict[str, float]:
        """The unloaded baseline (for SLOs relative to it), measured on this worker."""
        from experiments.run.trial import measure_baseline

        return measure_baseline(self.target.engine, self.profile, seed=self.spec.load.seed,
                                **self.target.request_kwargs())

    def run(self, config: TrialConfig, slos: list[SLO]) -> dict[str, Any]:
        """One trial: its metrics and records, or the error that failed it (never raises)."""
        from experiments.predict.simulate import step_summary
        from experiments.run.trial import run_trial

        started = _utcnow()
        try:
            result = run_trial(self.target.engine, config, self.profile, self.spec.requests_for(config),
                               seed=self.spec.load.seed + config.repetition, slos=slos,
                               max_duration_s=self.spec.execution.max_trial_s,
                               **self.target.request_kwargs(), **self.target.memory_kwargs())
        except Exception as exc:  # the sweep goes on; the failure is stored with its reason
            return {"error": f"{type(exc).__name__}: {exc}", "started": started, "finished": _utcnow()}
        details = replace(result.metrics.details, prediction=Prediction(steps=step_summary(result.steps)))
        return {"metrics": result.metrics, "details": details, "records": result.records,
                "started": started, "finished": _utcnow()}
