"""The runner loop's two collaborators and the runner they are given.

`SweepRunner` (sweep.py) is one loop: it asks its *strategy* what runs next and hands each
batch to its *placement*, which runs it somewhere and stores each trial through the runner:

    while (batch := strategy.next_batch(completed)) is not None:
        completed = placement.run(batch, strategy.passes)

Strategies: `GridStrategy` (grid_strategy.py: the grid, then the drift re-runs) and
`SearchStrategy` (search_runner.py: the capacity search's next probe). Placements:
placement.py's `LocalEngine`, `Replicas`, `StartedServers` and `RemoteTarget` (this process
drives a target), and ray_executor.py's `RayWorkers`. Each is built with the runner
(`Runner`, below: the only runner members they call) and keeps its own state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from common.records import SLO, RequestRecord, TrialConfig, TrialMetrics

if TYPE_CHECKING:
    from db.store import Store
    from engine.simulate import CostModel
    from experiments.run.drift import SpeedChecks
    from experiments.search.capacity import ConfigCapacity
    from experiments.spec.grid import SweepSpec
    from experiments.spec.profiles import Profile
    from experiments.targets.external import ExternalTarget
    from experiments.targets.protocol import Target
    from experiments.targets.servers import SweepServers


@dataclass(frozen=True)
class Ran:
    """What became of one config of a batch: measured (its trial stored, failed, or stopped
    mid-way and not stored), or never started (its server failed to start: the runner stored
    that failure, which is no measurement)."""

    config: TrialConfig
    measured: bool


class Strategy(Protocol):
    """What runs next."""

    # True: each batch is a pass over trials known up front (a grid: one target's trials). The
    # placement checks for a cancel before every trial and closes every target the batch
    # opened when it ends, so drift checks at a target's end come before the next batch is
    # chosen. False: each batch is chosen from the results so far (a search's next probe);
    # the strategy checks for a cancel and its budget itself, and the target stays up for the
    # next batch that needs it.
    passes: bool
    budget_spent: bool  # stopped early because its time budget was spent
    capacities: list[ConfigCapacity] | None  # its answer, for a strategy that makes one

    def has_work(self) -> bool:
        """Whether any trial is left to run (nothing starts when none is)."""
        ...

    def next_batch(self, completed: list[Ran]) -> list[TrialConfig] | None:
        """The trials to run next, given what became of the last batch; None: done."""
        ...

    def annotate(self, config: TrialConfig, slos: list[SLO], metrics: TrialMetrics) -> TrialMetrics:
        """A measured trial's metrics as they will be stored (the search adds its plan to the
        calibration trial's prediction)."""
        ...


class Placement(Protocol):
    """Where trials run."""

    def groups(self, configs: list[TrialConfig]) -> list[list[TrialConfig]]:
        """`configs` split into what runs as one pass (one target's trials, in order)."""
        ...

    def session(self) -> AbstractContextManager[None]:
        """Held while the loop runs: whatever it keeps up (a target, a Ray cluster) ends with it."""
        ...

    def run(self, batch: list[TrialConfig], passes: bool) -> list[Ran] | None:
        """Run `batch` (see `Strategy.passes`), storing each trial through the runner; what
        became of each config, or None once the sweep was cancelled."""
        ...


class Runner(Protocol):
    """What strategies and placements call on the runner (sweep.py's `SweepRunner`)."""

    store: Store
    sweep_id: int
    spec: SweepSpec
    profile: Profile
    stop: threading.Event
    servers: SweepServers
    speed: SpeedChecks | None
    placement: Placement
    num_done: int
    calibration: CostModel | None
    probe_failure: str | None

    def should_stop(self) -> bool: ...

    def report(self, current_label: str | None) -> None: ...

    def take_target(self) -> Target | None: ...

    def run_one(self, target: Target, config: TrialConfig, slos: list[SLO]) -> None: ...

    def fail_start(self, configs: list[TrialConfig], reason: str) -> None: ...

    def record_done(self, config: TrialConfig, metrics: TrialMetrics, records: list[RequestRecord],
                    started: datetime, finished: datetime) -> int: ...

    def record_failure(self, config: TrialConfig, reason: str, started: datetime | None = None,
                       finished: datetime | None = None) -> None: ...

    def fitted_cost(self) -> CostModel: ...

    def probe_server(self, target: ExternalTarget, max_running: int) -> None: ...


StrategyFor = Callable[[Runner], Strategy]  # a strategy class, built with its runner
PlacementFor = Callable[[Runner], Placement]
