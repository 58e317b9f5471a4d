"""Time `tradeoff recommend` on a big store: in-process (open, read, decide) and as a command.

    .venv/bin/python scripts/make_big_db.py --db sqlite:////tmp/big.db   # 10,000 trials
    .venv/bin/python scripts/bench_recommend.py sqlite:////tmp/big.db
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from db.store import Store  # noqa: E402
from experiments.analysis.queries import analyse, find_sweep  # noqa: E402

# in-process: open the store, read every trial, fold, decide. command: the same plus Python
# start-up and imports (~0.5 s of it), as a user typing `tradeoff recommend` sees it.


def in_process(url: str, sweep_id: int) -> float:
    start = time.perf_counter()
    store = Store(url, create=False)
    analysis = analyse(store, find_sweep(store, sweep_id, None))
    assert analysis.recommendation.config is not None
    store.close()
    return time.perf_counter() - start


def as_command(url: str, sweep_id: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "app.cli", "recommend", "--db", url, "--sweep",
                    str(sweep_id), "--format", "json"],
                   cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main(url: str) -> None:
    biggest = max(Store(url, create=False).list_sweeps(), key=lambda s: s.trials_total)
    n = len(Store(url, create=False).list_trials(biggest.id))
    for label, fn in (("in-process", in_process), ("command", as_command)):
        times = [fn(url, biggest.id) for _ in range(5)]
        print(f"recommend over {n} trials, {label}: median {statistics.median(times):.2f} s, "
              f"best {min(times):.2f} s")


if __name__ == "__main__":
    main(sys.argv[1])
