"""How much of a stored sweep's wall time was inside measurement windows (the rest is overhead:
model load aside, warm-up, baseline, engine reconfiguration, commits).

    .venv/bin/python scripts/sweep_overhead.py sqlite:///tradeoff.db 1
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.store import Store  # noqa: E402


def main(url: str, sweep_id: int) -> None:
    store = Store(url, create=False)
    sweep, trials = store.get_sweep(sweep_id), store.list_trials(sweep_id)
    wall_s = (sweep.finished_at - sweep.started_at).total_seconds()
    windows_s = sum(t.metrics.get("duration_s") or 0.0 for t in trials)
    first_s = (min(t.started_at for t in trials) - sweep.started_at).total_seconds()
    print(f"{len(trials)} trials; sweep wall {wall_s:.1f} s (model load excluded; warm-up and "
          f"baseline before the first trial: {first_s:.1f} s); inside windows {windows_s:.1f} s = "
          f"{windows_s / wall_s:.1%}; overhead {1 - windows_s / wall_s:.1%}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
