"""Which runner a stored sweep needs, and the worker loop that runs queued sweeps.

It sits above the runners it chooses between (sweep.py's base runner, the capacity search's in
search_runner.py, Ray's in ray_executor.py), so the base runner never imports its own subclasses.
"""

from __future__ import annotations

import threading

from db.store import Store
from experiments.run.ray_executor import RaySweepRunner
from experiments.run.search_runner import SearchRunner
from experiments.run.sweep import SweepRunner
from experiments.spec.grid import SweepSpec


def runner_for(store: Store, sweep_id: int, **kwargs) -> SweepRunner:
    """The runner a stored sweep needs: a load grid, or a capacity search."""
    spec = SweepSpec(**store.get_sweep(sweep_id).grid)
    if spec.executor == "ray":
        return RaySweepRunner(store, sweep_id, **kwargs)
    if spec.search is None:
        return SweepRunner(store, sweep_id, **kwargs)
    return SearchRunner(store, sweep_id, **kwargs)


def run_queued(store: Store, pid: int, stop: threading.Event | None = None) -> list[int]:
    """Worker loop: claim and run queued sweeps in order, one at a time, until none is left."""
    ran: list[int] = []
    while not (stop and stop.is_set()):
        sweep = store.claim_next_sweep(pid)
        if sweep is None:
            break
        ran.append(sweep.id)
        try:
            runner_for(store, sweep.id, stop=stop).run()
        except Exception:  # noqa: S112 - stored as failed by run(); go on with the queue
            continue
    return ran
