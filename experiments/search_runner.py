"""Runs a capacity-search sweep: each probe is an ordinary stored trial, under a time budget.

The sweep runner's machinery is reused whole (target, warm-up, baseline, one trial, progress,
cancel); only the choice of the next trial differs: `capacity.run_search` replays the stored
trials and asks for the next load, and this runner measures it.
"""

from __future__ import annotations

import time

from experiments.capacity import ConfigCapacity, run_search, sample_of
from experiments.records import TrialConfig
from experiments.search import Sample
from experiments.sweep import SweepRunner


class SearchRunner(SweepRunner):
    """A SweepRunner whose trials are chosen by the capacity search instead of a grid."""

    capacities: list[ConfigCapacity] | None = None
    budget_spent = False

    def _run_all(self) -> str:
        assert self.spec.search is not None
        knobs = self.spec.knob_configs()
        if not knobs:
            return "done"
        self._report(None)
        with self._open_target(knobs[0]) as target:
            slos = self._slos(target)
            self._measure_started = time.monotonic()
            self._num_measured = 0

            def measure(config: TrialConfig) -> Sample | None:
                if self.should_stop():
                    return None
                self._num_measured += 1
                self._run_one(target, config, slos)
                stored = [t for t in self.store.list_trials(self.sweep_id) if t.config == config]
                return sample_of(stored[0]) if stored else None  # none: stopped mid-trial

            self.capacities = run_search(self.spec, self.profile, self.store.list_trials(self.sweep_id),
                                         measure, self._can_continue)
        return "cancelled" if self.stop.is_set() else "done"

    def _can_continue(self) -> bool:
        """Within the budget: stop before a trial that would likely end past it."""
        if self.should_stop():
            return False
        assert self.spec.search is not None
        if not self._num_measured:
            return True  # every session measures at least one trial, so a resume progresses
        spent = time.monotonic() - self._measure_started
        per_trial = spent / self._num_measured
        if spent + per_trial > self.spec.search.budget_s:
            self.budget_spent = True
            return False
        return True
