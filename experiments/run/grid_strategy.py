"""The grid as a strategy: every trial of the grid not stored yet, one target's trials per
batch, then once the trials a drift check flagged (experiments/run/drift.py), run again."""

from __future__ import annotations

from collections import deque

from common.records import SLO, TrialConfig, TrialMetrics
from experiments.run.interfaces import Ran, Runner


class GridStrategy:
    """What runs next in a grid sweep: its trials in the grid's (coarse-first) order, one pass
    per target; after the last, the drift re-runs, each on its own server config's target."""

    passes = True
    budget_spent = False
    capacities = None

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.todo: list[TrialConfig] = []
        self.pending: deque[list[TrialConfig]] | None = None
        self.reran = False

    def has_work(self) -> bool:
        stored = self.runner.store.done_configs(self.runner.sweep_id)
        self.todo = [c for c in self.runner.spec.trial_configs() if c not in stored]
        return bool(self.todo)

    def next_batch(self, completed: list[Ran]) -> list[TrialConfig] | None:
        runner = self.runner
        if self.pending is None:
            self.pending = deque(runner.placement.groups(self.todo))
        if not self.pending and not self.reran:
            # Every target of the pass is closed (its end check done): the flagged trials, once.
            self.reran = True
            reruns = runner.speed.reruns() if runner.speed else []
            runner.num_done -= len(reruns)
            self.pending = deque(runner.placement.groups(reruns))
        if not self.pending or (self.reran and runner.stop.is_set()):
            return None
        return self.pending.popleft()

    def annotate(self, config: TrialConfig, slos: list[SLO], metrics: TrialMetrics) -> TrialMetrics:
        return metrics
