"""tradeoff against a real vLLM (its CPU build): the issue's targets, measured, for docs/benchmarks.md.

    .ci/vllm.sh && .venv/bin/python scripts/bench_vllm.py grid          # ~20-30 min on 2 cores
    .venv/bin/python scripts/bench_vllm.py relaunch --db sqlite:///...  # after `grid`

- grid: builtin:small exported, the chat profile, --max-num-seqs {4,16,64} x
  --max-num-batched-tokens {256,2048} x 4 loads; every trial done or failed with its reason? The
  printed estimate against the wall time (target: within 25%).
- search (issue 22): `tradeoff search --engine vllm` over the same space: wall time, answer, the
  prediction's errors; with --db GRID, the grid's trials predicted from the search's probes.
- servecmd (issue 22): the same space on tradeoff's own engine behind --server-cmd (`tradeoff
  serve` per config): grid, search, and the black-box prediction against the engine-step one.
- relaunch: 3 interleaved rounds, each of two fresh servers: the grid's recommended config started
  by a one-trial sweep (3 launches: the run-to-run noise), then `tradeoff export --format vllm`
  relaunched by hand and measured with `tradeoff trial --target`: are the relaunch's goodput and
  output tok/s within that noise?
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRADEOFF = [str(ROOT / ".venv/bin/tradeoff")]
VLLM_PY = os.environ.get("TRADEOFF_VLLM_PYTHON") or str(ROOT / ".venv-vllm/bin/python")
sys.path.insert(0, str(ROOT))
# vLLM's defaults on a CPU, plus what it needs here: a KV cache size (else it asks for 92% of RAM)
# and its threads on core 0, leaving core 1 to the client (else the client lags on 2 cores).
ENGINE = ["--engine", "vllm", "--engine-python", VLLM_PY, "--engine-env", "VLLM_CPU_KVCACHE_SPACE=2",
          "--engine-env", "VLLM_CPU_OMP_THREADS_BIND=0"]
METRICS = ("goodput_rps", "output_tokens_per_s", "ttft_ms_p90", "tpot_ms_p50")


def run(*args: str) -> subprocess.CompletedProcess:
    """`tradeoff ARGS`, or `taskset -c L tradeoff ARGS` when ARGS start with a taskset prefix."""
    prefix = list(args[:3]) if args and args[0] == "taskset" else []
    return subprocess.run([*prefix, *TRADEOFF, *args[len(prefix):]], capture_output=True, text=True)


def _cpus(text: str) -> list[int]:
    from app.engine_options import parse_cpus

    return parse_cpus(text)


def grid(work: Path, requests: int) -> str:
    model = work / "small"
    if not model.exists():
        run("export-model", "builtin:small", str(model)).check_returncode()
    db = f"sqlite:///{work / 'grid.db'}"
    started = time.monotonic()
    out = run("sweep", "--model", str(model), "--profile", "chat", *ENGINE, "--policy", "continuous",
              "--max-wait-ms", "0", "--batch-sizes", "4,16,64", "--max-num-batched-tokens", "256,2048",
              "--concurrency", "1,4,16,32", "--requests", str(requests), "--db", db, "--json")
    wall = time.monotonic() - started
    estimate = re.search(r"estimated ([\d.]+) min", out.stderr)
    print(out.stderr.splitlines()[0] if out.stderr else "(no output)")
    trials = json.loads(run("trials", "1", "--format", "json", "--db", db).stdout)
    failed = [t for t in trials if t["status"] != "done"]
    print(f"grid: exit {out.returncode}, {len(trials)} trials, {len(failed)} failed "
          f"({'; '.join(sorted({t['error'] for t in failed})) or 'none'}), wall {wall / 60:.1f} min")
    starts = sorted({(t['batch_size'], t['max_num_batched_tokens'], t['server_start_s']) for t in trials
                     if t['server_start_s']})
    print("server starts (s):", ", ".join(f"b{b}/t{k}: {s:.0f}" for b, k, s in starts))
    if estimate:
        est = float(estimate.group(1)) * 60
        print(f"estimate {est / 60:.1f} min vs wall {wall / 60:.1f} min: {est / wall - 1:+.0%}")
    print(run("recommend", "--sweep", "1", "--db", db).stdout)
    return db


def relaunch(db: str, work: Path, requests: int, rounds: int = 3) -> None:
    from db.store import Store

    doc = json.loads(run("export", "--sweep", "1", "--format", "json", "--db", db).stdout)
    batch, budget = doc["engine"]["max_batch_size"], doc["engine"].get("max_num_batched_tokens")
    users = doc["load"]["concurrency"]
    print(f"recommended: batch {batch}, budget {budget}, {users} users")
    command = run("export", "--sweep", "1", "--format", "vllm", "--db", db).stdout.strip().splitlines()[-1]
    print("relaunching:", command)
    # Interleaved rounds, each a fresh server: the sweep's own start of the config, then the
    # exported command relaunched by hand. Back-to-back repetitions on one server understated
    # this machine's run-to-run noise (the same config's mean moved 472 -> 412 tok/s between
    # attempts minutes apart); alternating launches spreads both over the same stretch of time,
    # so drift lands in the yardstick and in the comparison alike.
    swept, again = [], []
    for r in range(1, rounds + 1):
        reps_db = f"sqlite:///{work / f'reps{r}.db'}"
        out = run("sweep", "--model", str(work / "small"), "--profile", "chat", *ENGINE, "--policy",
                  "continuous", "--max-wait-ms", "0", "--batch-sizes", str(batch),
                  "--max-num-batched-tokens", str(budget or "none"), "--concurrency", str(users),
                  "--requests", str(requests), "--seed", str(r), "--db", reps_db, "--json")
        out.check_returncode()
        stored = Store(reps_db, create=False).list_trials(1)
        swept += [{**t.metrics, "details": t.details.to_dict()} for t in stored]
        again.append(_relaunched_trial(command, work, users, requests, seed=r))
        print(f"  round {r}: goodput sweep {swept[-1].get('goodput_rps')}, "
              f"relaunch {_flat(again[-1], 'goodput_rps')} req/s")
    for t in swept:
        print("  sweep:   ", _trial_line(t, t.get("details") or {}))
    for t in again:
        print("  relaunch:", _trial_line({k: _flat(t, k) for k in METRICS}, t.get("details") or {}))
    for key in METRICS:
        a = [t[key] for t in swept if t.get(key) is not None]
        b = [v for t in again if (v := _flat(t, key)) is not None]
        if len(a) < 2 or not b:
            print(f"{key}: not enough values ({a}, {b})")
            continue
        mean_a, sd_a, mean_b = statistics.fmean(a), statistics.stdev(a), statistics.fmean(b)
        within = abs(mean_b - mean_a) <= 2 * sd_a
        print(f"{key}: sweep {mean_a:.2f} +- {sd_a:.2f} ({len(a)} launches: "
              f"{', '.join(f'{v:.2f}' for v in a)}), relaunch {mean_b:.2f} "
              f"({', '.join(f'{v:.2f}' for v in b)}): {'within' if within else 'OUTSIDE'} 2 sd")


def _relaunched_trial(command: str, work: Path, users: int, requests: int, seed: int) -> dict:
    """The exported command started by hand, as a user would, and one `trial --target` on it."""
    words = shlex.split(command)
    env = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    argv = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
    # A server measured on --server-cpus is relaunched pinned (its command says taskset); the
    # client then runs on the other CPUs, as in the sweep.
    client = [] if argv[0] != "taskset" else [
        "taskset", "-c", ",".join(str(c) for c in sorted(os.sched_getaffinity(0) - set(_cpus(argv[2]))))]
    with open(work / f"relaunch{seed}.log", "wb") as log:
        server = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            from experiments.targets.http_target import wait_for_health

            wait_for_health("http://127.0.0.1:8000/v1", 600, is_alive=lambda: server.poll() is None)
            # Unmeasured first, as the sweep warms each server it starts (a warm-up trial and
            # speed checks): a cold vLLM's first requests pay one-time costs.
            trial_args = [*client, "trial", "--target", "http://127.0.0.1:8000/v1", "--tokenizer",
                          str(work / "small"), "--profile", "chat", "--concurrency", str(users)]
            run(*trial_args, "--requests", "24", "--seed", str(1000 + seed), "--json").check_returncode()
            trial = run(*trial_args, "--requests", str(requests), "--seed", str(seed), "--json")
            trial.check_returncode()
            return json.loads(trial.stdout)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)


def search(work: Path, requests: int, grid_db: str | None) -> None:
    """Issue 22: `tradeoff search --engine vllm` over the grid's space (probes of one server,
    refits, knee probes, skips): its wall time and answer; then, against a measured grid, the
    per-trial error of the probes' fit alone and of the search's last refit."""
    model = work / "small"
    if not model.exists():
        run("export-model", "builtin:small", str(model)).check_returncode()
    db = f"sqlite:///{work / 'search.db'}"
    started = time.monotonic()
    out = run("search", "--model", str(model), "--profile", "chat", *ENGINE, "--policy", "continuous",
              "--max-wait-ms", "0", "--batch-sizes", "4,16,64", "--max-num-batched-tokens", "256,2048",
              "--concurrency", "--max-load", "32", "--requests", str(requests), "--budget-min", "10",
              "--db", db, "--json")
    wall = time.monotonic() - started
    if out.returncode != 0:
        print(out.stderr[-3000:])
    doc = json.loads(out.stdout)
    print(f"search: exit {out.returncode}, {doc['trials_run']} trials, wall {wall / 60:.1f} min")
    for c in doc["capacities"]:
        print(f"  {c['label']:<36} capacity {c['capacity']:g} ({c['status']}), predicted {c['predicted']}")
    print("recommended:", doc["recommended"], "\nruled out:", json.dumps(doc["ruled_out"], indent=1))
    print("calibration:", json.dumps(doc["calibration"]), "\nband:", json.dumps(doc["prediction_band"]))
    print("per-trial median |error| (search's own trials):", doc["prediction_error"])
    if grid_db:
        _grid_errors(db, doc["sweep_id"], grid_db)


def _grid_errors(search_db: str, search_id: int, grid_db: str) -> None:
    """Each grid sweep's trials predicted under the search's probe fit and its last refit."""
    from db.store import Store
    from experiments.analysis.queries import stored_slos
    from experiments.predict.accuracy import TABLE_KEYS
    from experiments.predict.simulate import (
        cost_from_dict,
        relative_errors,
        simulate_trial,
        stored_calibration,
    )
    from experiments.spec.grid import SweepSpec
    from experiments.spec.profiles import Profile

    trials = Store(search_db, create=False).list_trials(search_id)
    probed = next(t.details.prediction.calibration.to_dict() for t in trials
                  if t.details.prediction and t.details.prediction.calibration)
    fits = {"probes of one server": cost_from_dict(probed["cost_model"]),
            "last refit": stored_calibration(t.details for t in trials)}
    grid = Store(grid_db, create=False)
    keys = [k for k, _ in TABLE_KEYS] + ["ttft_ms_p50", "tpot_ms_p50"]
    for sweep in grid.list_sweeps():
        measured = [t for t in grid.list_trials(sweep.id) if t.status == "done"]
        spec, prof, slos = SweepSpec(**sweep.grid), Profile(**sweep.profile), stored_slos(measured, grid)
        for name, cost in fits.items():
            errs: dict[str, list[float]] = {k: [] for k in keys}
            for t in measured:
                p = simulate_trial(t.config, prof, spec.requests_for(t.config), cost, slos,
                                   spec.load.seed + t.config.repetition).flat()
                for k, e in relative_errors(p, t.metrics, keys).items():
                    errs[k].append(abs(e))
            print(f"grid sweep {sweep.id} under {name}: median |error| "
                  + ", ".join(f"{k} {statistics.median(v):.0%}" for k, v in errs.items() if v))


SERVE = (f"{ROOT / '.venv/bin/tradeoff'} serve --model builtin:small --policy continuous "
         "--batch-size {batch_size} --max-num-batched-tokens {max_num_batched_tokens} --port {port}")
SPACE = ["--profile", "chat", "--policy", "continuous", "--max-wait-ms", "0", "--batch-sizes", "4,16,64",
         "--max-num-batched-tokens", "256,2048"]


def servecmd(work: Path, requests: int) -> None:
    """Issue 22 on tradeoff's own engine behind `--server-cmd` (`tradeoff serve` per config): the
    grid (wall time, answer), a search over the same space (wall, answer), and the grid's trials
    predicted from the search's black-box probes vs from the engine's own steps (measured by an
    in-process grid of the same configs)."""
    work.mkdir(parents=True, exist_ok=True)
    dbs = {k: f"sqlite:///{work / f'{k}.db'}" for k in ("serve-grid", "serve-search", "local")}
    common = [*SPACE, "--requests", str(requests), "--tokenizer", "builtin:small"]
    grid_loads = ["--concurrency", "1,4,16,32"]
    for name, args in (("serve-grid", ["sweep", "--server-cmd", SERVE, *common, *grid_loads]),
                       ("serve-search", ["search", "--server-cmd", SERVE, *common, "--concurrency",
                                         "--max-load", "32", "--budget-min", "10", "--json"]),
                       ("local", ["sweep", "--model", "builtin:small", *SPACE, "--requests", str(requests),
                                  "--concurrency", "1,16"])):
        started = time.monotonic()
        out = run(*args, "--db", dbs[name])
        print(f"{name}: exit {out.returncode}, wall {(time.monotonic() - started) / 60:.1f} min")
        if out.returncode != 0:
            print(out.stderr[-2000:])
        if name == "serve-search":
            doc = json.loads(out.stdout)
            print("  recommended:", doc["recommended"], "| trials", doc["trials_run"])
    print(run("recommend", "--sweep", "1", "--db", dbs["serve-grid"]).stdout.splitlines()[0])
    _black_box_vs_steps(dbs["serve-search"], dbs["local"], dbs["serve-grid"])


def _black_box_vs_steps(search_db: str, local_db: str, grid_db: str) -> None:
    """Median |black-box / engine-step prediction - 1| over the grid's trials, and each one's
    median |predicted / measured - 1|."""
    from db.store import Store
    from experiments.analysis.queries import stored_slos
    from experiments.predict.simulate import (
        cost_from_dict,
        fit_cost_model,
        prior_cost,
        relative_errors,
        simulate_trial,
        stored_steps,
    )
    from experiments.spec.grid import SweepSpec
    from experiments.spec.profiles import Profile

    search_trials = Store(search_db, create=False).list_trials(1)
    probed = next(t.details.prediction.calibration.to_dict() for t in search_trials
                  if t.details.prediction and t.details.prediction.calibration)
    try:  # no local grid (not run): the built-in's prior, itself fitted to this engine's steps
        steps = stored_steps(t.details for t in Store(local_db, create=False).list_trials(1))
    except Exception:  # noqa: BLE001 - a missing db
        steps = []
    fits = {"black box": cost_from_dict(probed["cost_model"]),
            "engine steps": fit_cost_model(steps, prior_cost("builtin:small"))}
    print("fits:", {k: {n: round(v * 1e3, 3) for n, v in vars(c).items()
                        if n.endswith("_s") and isinstance(v, float)}  # not the noise tuple
                    for k, c in fits.items()})
    grid = Store(grid_db, create=False)
    sweep = grid.get_sweep(1)
    spec, prof = SweepSpec(**sweep.grid), Profile(**sweep.profile)
    measured = [t for t in grid.list_trials(1) if t.status == "done"]
    slos = stored_slos(measured, grid)
    keys = ("output_tokens_per_s", "ttft_ms_p50", "ttft_ms_p90", "tpot_ms_p50", "slo_attainment")
    gaps: dict[str, list[float]] = {k: [] for k in keys}
    errs: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in fits}
    for t in measured:
        p = {n: simulate_trial(t.config, prof, spec.requests_for(t.config), c, slos,
                               spec.load.seed + t.config.repetition).flat() for n, c in fits.items()}
        for k, e in relative_errors(p["black box"], p["engine steps"], keys).items():
            gaps[k].append(abs(e))
        for n in fits:
            for k, e in relative_errors(p[n], t.metrics, keys).items():
                errs[n][k].append(abs(e))
    med = lambda d: ", ".join(f"{k} {statistics.median(v):.0%}" for k, v in d.items() if v)  # noqa: E731
    print(f"black box vs engine steps, median |ratio - 1| over {len(measured)} trials: {med(gaps)}")
    for n in fits:
        print(f"  {n} vs measured, median |error|: {med(errs[n])}")


def _trial_line(flat: dict, details: dict) -> str:
    """One trial's figures and what says whether it ran clean: the client's event-loop lag, vLLM's
    running-requests gauge (its mean over the measurement window; sweeps only)."""
    lag = (details.get("client") or {}).get("loop_lag_ms") or {}
    running = ((details.get("server_metrics") or {}).get("stats") or {}).get("running") or {}
    return (" ".join(f"{k} {flat[k]:.1f}" for k in METRICS if flat.get(k) is not None)
            + f" | loop lag p99 {lag.get('p99', float('nan')):.0f} max {lag.get('max', float('nan')):.0f} ms"
            + (f" | running mean {running['mean']:.2f}" if running else ""))


def _flat(trial: dict, key: str) -> float | None:
    """`ttft_ms_p90` from `trial --json`, which nests distributions ({"ttft_ms": {"p90": ...}})."""
    if key in trial:
        return trial[key]
    metric, _, stat = key.rpartition("_")
    return (trial.get(metric) or {}).get(stat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("grid", "relaunch", "both", "search", "servecmd"))
    parser.add_argument("--work", type=Path, default=None, help="where models and dbs go")
    parser.add_argument("--db", default=None, help="the grid's db, for `relaunch` and `search`")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--server-cpus", default=None,
                        help="run every vLLM server on these CPUs (the client on the others)")
    args = parser.parse_args()
    if args.server_cpus:
        ENGINE.extend(["--server-cpus", args.server_cpus])
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}")
    db = args.db
    if args.what == "search":
        search(work, args.requests, db)
        return
    if args.what == "servecmd":
        servecmd(work, args.requests)
        return
    if args.what in ("grid", "both"):
        db = grid(work, args.requests)
    if args.what in ("relaunch", "both"):
        if db is None:
            raise SystemExit("relaunch needs --db (the grid's) or `both`")
        relaunch(db, work, args.requests)


if __name__ == "__main__":
    main()
