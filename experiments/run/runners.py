"""Which strategy and placement a stored sweep needs, and the worker loop that runs queued sweeps.

It sits above the runner loop (sweep.py) and the collaborators it composes it with: the capacity
search's strategy (search_runner.py) and Ray's workers (ray_executor.py); the grid and the
in-process placements are the loop's defaults (grid_strategy.py, placement.py).
"""

from __future__ import annotations

import threading

from db.store import Store
from experiments.run.ray_executor import RayWorkers
from experiments.run.search_runner import SearchStrategy
from experiments.run.sweep import SweepRunner
from experiments.spec.grid import SweepSpec


def runner_for(store: Store, sweep_id: int, **kwargs) -> SweepRunner:
    """The runner a stored sweep needs: a load grid or a capacity search, in this process or
    (a grid) on Ray workers."""
    spec = SweepSpec(**store.get_sweep(sweep_id).grid)
    if spec.execution.executor == "ray":
        return SweepRunner(store, sweep_id, placement=RayWorkers, **kwargs)
    if spec.search is None:
        return SweepRunner(store, sweep_id, **kwargs)
    return SweepRunner(store, sweep_id, strategy=SearchStrategy, **kwargs)


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
