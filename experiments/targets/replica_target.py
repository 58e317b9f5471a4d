"""N local engine replicas behind a router, as one target for trials and sweeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.config import EngineConfig, SchedulerConfig
from engine.replicas import ReplicaSet


@dataclass(frozen=True)
class ReplicaFacts:
    """Where the replicas run, in the shape sweeps record for a loaded model."""

    device: str
    device_name: str
    dtype: str


@dataclass
class ReplicaTarget:
    """A started ReplicaSet and the model facts the load generator needs (from its replicas)."""

    engine: ReplicaSet

    @classmethod
    def start(cls, config: EngineConfig, num_replicas: int, router: str | None,
              sched_config: SchedulerConfig | None = None) -> ReplicaTarget:
        """Start the replica processes, each loading the model (raises ModelLoadError, ConfigError)."""
        return cls(ReplicaSet.start(config, sched_config or SchedulerConfig(), num_replicas, router,
                                    seed=config.seed))

    @property
    def loaded(self) -> ReplicaFacts:
        info = self.engine.replicas[0].info
        return ReplicaFacts(info["device"], info["device_name"], info["dtype"])

    def request_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of run_trial / measure_baseline that describe the model."""
        info = self.engine.replicas[0].info
        return {key: info[key] for key in ("vocab_size", "max_context_tokens", "avoid_ids")}

    def memory_kwargs(self) -> dict[str, Any]:
        """Peak memory of the largest replica (per GPU, or per process RSS on CPU)."""
        return {"memory": self.engine.peak_memory_mb, "reset_memory": self.engine.reset_peak_memory}

    def num_replicas(self) -> int:
        return len(self.engine.replicas)

    def placement(self) -> dict[str, Any]:
        """JSON-ready: how many replicas, where each runs, how requests were routed."""
        return {"replicas": len(self.engine.replicas), "router": self.engine.router_name,
                "placements": self.engine.placements(), "mode": "processes"}

    def close(self) -> None:
        self.engine.close()
