"""What the CLI bar and the UI show while a sweep runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """What the CLI bar and the UI show while a sweep runs."""

    sweep_id: int
    trials_total: int
    trials_done: int
    trials_failed: int
    current_label: str | None
    elapsed_s: float

    @property
    def eta_s(self) -> float | None:
        """Remaining time at the mean pace so far; None before the first trial."""
        finished = self.trials_done + self.trials_failed
        if not finished:
            return None
        return self.elapsed_s / finished * max(0, self.trials_total - finished)
