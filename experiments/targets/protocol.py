"""`Target`: what every target a trial runs on offers the runners and the trial code.

Three classes satisfy it: `LocalTarget` (targets/local.py: a model loaded in this process and
its engine), `ReplicaTarget` (targets/replica_target.py: N engine processes behind a router) and
`ExternalTarget` (targets/external.py: an OpenAI-compatible server, started by the sweep or
already running). Runners, placements, drift checks and `measure` are written against this
protocol, never against a union of the three, and ask it instead of probing with `hasattr`.
"""

from __future__ import annotations

from typing import Any, Protocol

from experiments.load.loadgen import LoadTarget


class Facts(Protocol):
    """Where a target's trials run, as provenance records it (a loaded model's device, a
    replica set's, or `server` and the server's model and version)."""

    @property
    def device(self) -> Any: ...

    @property
    def device_name(self) -> str: ...


class Target(Protocol):
    """A started engine (or server) and the model facts the load generator needs."""

    @property
    def engine(self) -> LoadTarget:
        """What `run_trial` drives: an `Engine`, a `ReplicaSet` or an `HttpTarget`."""
        ...

    @property
    def loaded(self) -> Facts: ...

    def request_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of run_trial / measure_baseline that describe the model
        (vocab_size, max_context_tokens, avoid_ids)."""
        ...

    def memory_kwargs(self) -> dict[str, Any]:
        """Hardware hooks for run_trial (peak memory, roofline); {} where they are not visible."""
        ...

    def num_replicas(self) -> int:
        """How many engine replicas serve its requests (1: one engine, or a server)."""
        ...

    def placement(self) -> dict[str, Any] | None:
        """JSON-ready: where each replica runs and how requests are routed; None without replicas."""
        ...

    def close(self) -> None: ...
