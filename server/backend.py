"""The engine behind `tradeoff serve`: in its own process (or N replica processes), and a watch
that stops the HTTP server once no engine is left.

The engine runs in a child process (engine/replica_worker.py, as a one-replica `ReplicaSet`):
requests go to it and batches of tokens come back over a socket, so HTTP and JSON work in the
server's process never stalls an engine step, and the two do not share a GIL (vLLM splits its
API server and its engine core the same way). `in_process` keeps the engine on a thread of the
server's process, for comparison and debugging.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.config import EngineConfig, SchedulerConfig

WATCH_INTERVAL_S = 0.2


class EngineGoneError(RuntimeError):
    """Every engine process of `tradeoff serve` has exited; the server stopped."""


def start_served_engine(config: EngineConfig, sched_config: SchedulerConfig, replicas: int = 1,
                        router: str | None = None, in_process: bool = False) -> tuple[Any, Any]:
    """(engine, loaded model) for the server: engine processes, or one engine in this process."""
    if in_process:
        from engine.factory import start_engine  # torch and the model stack load only here

        return start_engine(config, sched_config)
    from engine.replicas import ReplicaSet
    from server.served_model import served_model

    engine = ReplicaSet.start(config, sched_config, replicas, router, config.seed)
    try:
        return engine, served_model(config, engine)
    except BaseException:
        engine.close()
        raise


@dataclass(frozen=True)
class EngineHealth:
    """Which engine processes have exited, and why."""

    lost: tuple[str, ...]
    num_engines: int

    @property
    def is_ok(self) -> bool:
        return not self.lost

    @property
    def is_dead(self) -> bool:
        """No engine left to serve a request."""
        return len(self.lost) >= self.num_engines

    @property
    def reason(self) -> str:
        return "; ".join(self.lost)


def engine_health(engine: Any) -> EngineHealth:
    """The health of a ReplicaSet; an in-process Engine cannot exit on its own, so it is always ok."""
    replicas = getattr(engine, "replicas", None)
    if replicas is None:
        return EngineHealth((), 1)
    return EngineHealth(tuple(engine.lost), len(replicas))


class EngineWatch:
    """Calls `on_dead(reason)` once, from its own thread, when no engine process is left."""

    def __init__(self, engine: Any, on_dead: Callable[[str], None],
                 interval_s: float = WATCH_INTERVAL_S) -> None:
        self.engine, self.on_dead, self.interval_s = engine, on_dead, interval_s
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tradeoff-engine-watch", daemon=True)

    def __enter__(self) -> EngineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        # Polling, not a hook in the replicas' reader threads: a fifth of a second to notice is
        # nothing next to a restart, and the set stays unaware of who watches it.
        while not self._stop.wait(self.interval_s):
            health = engine_health(self.engine)
            if health.is_dead:
                self.reason = health.reason
                self.on_dead(health.reason)
                return
