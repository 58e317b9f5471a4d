"""Build a big result database and time the store's hot paths on it.

    .venv/bin/python scripts/make_big_db.py             # 10,000 trials in $TMPDIR/tradeoff-big.db
    .venv/bin/python scripts/make_big_db.py --db postgresql+psycopg://u@127.0.0.1:5432/db

Times `add_trial` with 200 requests (one transaction each) and `list_trials` of the whole
sweep, through the public Store API. A SQLite file given with --db is replaced.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.records import Dist, RequestRecord, TrialConfig, TrialMetrics  # noqa: E402
from db.store import Store, utcnow  # noqa: E402
from experiments.spec.profiles import load_profile  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_db = f"sqlite:///{Path(tempfile.gettempdir()) / 'tradeoff-big.db'}"
    parser.add_argument("--db", default=default_db, help="database URL (a SQLite file is replaced)")
    parser.add_argument("--trials", type=int, default=10_000, help="trials in the big sweep")
    parser.add_argument("--requests", type=int, default=0, help="requests per big-sweep trial")
    parser.add_argument("--bench-trials", type=int, default=30,
                        help="trials with --bench-requests requests, timed one by one")
    parser.add_argument("--bench-requests", type=int, default=200)
    return parser.parse_args()


def configs() -> Iterator[TrialConfig]:
    """Distinct configs without end: a realistic grid, repeated with rising repetition."""
    grid = itertools.product(("static", "continuous"), (1, 2, 4, 8, 16, 32),
                             (0.0, 5.0, 20.0), (1, 2, 4, 8, 16, 32, 64))
    grid = list(grid)
    for repetition in itertools.count():
        for policy, batch, wait, users in grid:
            yield TrialConfig(policy, batch, wait, concurrency=users, repetition=repetition)


def metrics(rng: random.Random) -> TrialMetrics:
    """Plausible metrics; some Dists missing, as for 1-token outputs."""
    def dist() -> Dist:
        base = rng.uniform(5, 500)
        return Dist(base, base * 1.5, base * 1.7, base * 2.0, base * 1.1, 100)

    return TrialMetrics(
        requests_completed=100, requests_failed=0, duration_s=10.0,
        requests_per_s=rng.uniform(1, 50), output_tokens_per_s=rng.uniform(50, 3000),
        total_tokens_per_s=rng.uniform(100, 6000), ttft_ms=dist(),
        tpot_ms=dist() if rng.random() > 0.1 else None, itl_ms=dist(), e2e_ms=dist(),
        queue_wait_ms=dist(), service_ms=dist(), goodput_rps=rng.uniform(0, 40),
        slo_attainment=rng.random(), mean_batch_size=rng.uniform(1, 32),
        # rare: a config with any saturated repetition never qualifies
        peak_memory_mb=rng.uniform(500, 4000), saturated=rng.random() < 0.002,
        slos={"ttft_ms": {"percentile": "p90", "max_ms": 500.0}},
    )


def requests(n: int, rng: random.Random) -> list[RequestRecord]:
    """n request timelines with 16 output tokens each."""
    out = []
    for i in range(n):
        t = i * 0.05
        tokens = tuple(itertools.accumulate(rng.uniform(0.005, 0.03) for _ in range(16)))
        out.append(RequestRecord(i, t, t + 0.001, t + 0.002, tuple(t + 0.02 + x for x in tokens),
                                 t + 0.02 + tokens[-1], 128, 16))
    return out


def new_sweep(store: Store, name: str, trials_total: int) -> int:
    profile = load_profile("chat").model_dump(mode="json")  # a real snapshot: analysis reads it
    return store.create_sweep(name, "tiny-llama", "cpu", None, "float32", profile,
                              {"bench": True}, 0, {"script": "make_big_db"}, trials_total)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of fn(); CPU time tells this process apart from a busy machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(samples: list[tuple[float, float]], scale: float, unit: str) -> str:
    """Median and best wall time, and median CPU time, in `unit` (seconds x scale)."""
    walls, cpus = [w * scale for w, _ in samples], [c * scale for _, c in samples]
    return (f"median {statistics.median(walls):.2f} {unit}, best {min(walls):.2f} {unit}, "
            f"median CPU {statistics.median(cpus):.2f} {unit}")


def fill(store: Store, sweep_id: int, args: argparse.Namespace, rng: random.Random) -> float:
    """Add the big sweep's trials; return the seconds it took."""
    start, now = time.perf_counter(), utcnow()
    for config in itertools.islice(configs(), args.trials):
        store.add_trial(sweep_id, config, metrics(rng), requests(args.requests, rng), now,
                        now + timedelta(seconds=10))
    return time.perf_counter() - start


def bench_add_trial(store: Store, args: argparse.Namespace,
                    rng: random.Random) -> list[tuple[float, float]]:
    """Seconds per add_trial with --bench-requests requests, in a sweep of its own."""
    sweep_id, now = new_sweep(store, "bench-add", args.bench_trials), utcnow()
    batch = requests(args.bench_requests, rng)
    return [timed(lambda c=config: store.add_trial(sweep_id, c, metrics(rng), batch, now, now))
            for config in itertools.islice(configs(), args.bench_trials)]


def main() -> None:
    args, rng = parse_args(), random.Random(0)
    if args.db.startswith("sqlite:///"):
        for suffix in ("", "-wal", "-shm"):
            Path(args.db.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
    with Store(args.db) as store:
        sweep_id = new_sweep(store, "big", args.trials)
        fill_s = fill(store, sweep_id, args, rng)
        print(f"filled {args.trials} trials x {args.requests} requests in {fill_s:.1f} s "
              f"({fill_s / args.trials * 1e3:.2f} ms/trial)")
        adds = bench_add_trial(store, args, rng)
        print(f"add_trial with {args.bench_requests} requests: {summary(adds, 1e3, 'ms')} "
              f"({len(adds)} runs)")
        lists = [timed(lambda: store.list_trials(sweep_id)) for _ in range(5)]
        print(f"list_trials of {args.trials} trials: {summary(lists, 1.0, 's')} (5 runs)")


if __name__ == "__main__":
    main()
