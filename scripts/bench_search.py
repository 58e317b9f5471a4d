"""Capacity search vs the full grid, predicted vs measured, bisection vs a dense load grid.

    .venv/bin/python scripts/bench_search.py --quick            # ~15 min on a shared 2-core CPU
    .venv/bin/python scripts/bench_search.py                    # the issue's grid: hours on a CPU
    .venv/bin/python scripts/bench_search.py --simulated        # the issue's grid on the simulator

For each profile (chat, batch): a closed-loop grid (policy x batch x wait x load levels) and a
capacity search over the same server configs, both real trials on the local engine. Reported:
the measurement time of each (the sum of trial wall times; model load and baseline excluded,
alike for both), the config each recommends, each config's capacity read off the grid (the
largest load level whose attainment meets the target) against the search's, the prediction
error of the grid's trials (each predicted before it ran), and a dense load grid of one config
against its bisected capacity.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from db.store import Store  # noqa: E402
from experiments.analysis.answer import best  # noqa: E402
from experiments.analysis.queries import sweep_capacities  # noqa: E402
from experiments.analysis.recommend import recommend  # noqa: E402
from experiments.run.runners import runner_for  # noqa: E402
from experiments.run.sweep import create_sweep  # noqa: E402
from experiments.search.capacity import knob_label  # noqa: E402
from experiments.spec.grid import parse_spec  # noqa: E402
from experiments.spec.profiles import load_profile  # noqa: E402
from experiments.spec.sections import flat_keys  # noqa: E402

FULL = {"batch_sizes": [1, 4, 8, 16], "max_wait_ms": [0, 5, 20], "loads": [1, 2, 4, 8, 16, 32],
        "requests": 48}
SEARCH = {"keep_ratio": float(os.environ.get("KEEP_RATIO", 0.5)),
          "max_repeats": int(os.environ.get("MAX_REPEATS", 3))}
# The search's largest load, as a multiple of the grid's: 1 searches the range the grid covers
# (a config passing at the grid's top load is "at least that" for both), 2 lets it look beyond.
LIMIT_X = float(os.environ.get("LIMIT_X", 1))
QUICK = {"batch_sizes": [1, 8], "max_wait_ms": [0], "loads": [1, 2, 4, 8], "requests": 32}


REUSE = False  # --reuse: a finished sweep of the same spec in the db is not measured again


def run(store: Store, model: str, profile: str, data: dict) -> int:
    spec = parse_spec({"model": model, "profile": profile,
                       **{"policies": ["static", "continuous"], **data}})
    if REUSE and spec.search is None:
        same = [s.id for s in store.list_sweeps()
                if s.status == "done" and flat_keys(s.grid) == flat_keys(spec.model_dump(mode="json"))]
        if same:
            print(f"reusing grid sweep {same[-1]} ({profile})")
            return same[-1]
    sweep_id = create_sweep(store, spec, load_profile(profile))
    runner_for(store, sweep_id).run()
    return sweep_id


def measure_s(store: Store, sweep_id: int) -> float:
    """Sum of trial wall times (start to commit): what the grid and the search each spent."""
    return sum((t.finished_at - t.started_at).total_seconds() for t in store.list_trials(sweep_id)
               if t.started_at and t.finished_at)


def grid_capacities(store: Store, sweep_id: int, target: float) -> dict[str, float]:
    """Per config: the largest load level of the grid whose attainment meets the target."""
    out: dict[str, float] = {}
    for t in store.list_trials(sweep_id):
        label = knob_label(t.config)
        ok = t.status == "done" and (t.metrics.get("slo_attainment") or 0) >= target
        out[label] = max(out.get(label, 0.0), float(t.config.concurrency) if ok else 0.0)
    return out


def compare(store: Store, model: str, profile: str, size: dict) -> dict:
    """One profile: grid and search, side by side."""
    prof = load_profile(profile)
    common = {"batch_sizes": size["batch_sizes"], "max_wait_ms": size["max_wait_ms"],
              "requests": size["requests"]}
    grid_id = run(store, model, profile, {**common, "concurrency": size["loads"]})
    # The grid's SLOs, resolved from its baseline, become absolute for the search (and the dense
    # grid): all three are judged against the same thresholds, not each against its own baseline.
    profile = fixed_slo_profile(prof, _slos(store, store.list_trials(grid_id)))
    search_id = run(store, model, profile, {**common, "search": {
        "load": "concurrency", "budget_s": 24 * 3600, "max_load": max(size["loads"]) * LIMIT_X,
        **SEARCH}})
    trials = store.list_trials(grid_id)
    slos = _slos(store, trials)
    rec = recommend(trials, prof.objective, slos)
    caps, _ = sweep_capacities(store, search_id)
    top = best(caps)
    from_grid = grid_capacities(store, grid_id, prof.min_slo_attainment)
    errors = {k: _median_abs_error(trials, k) for k in ("output_tokens_per_s", "ttft_ms_p90")}
    return {"profile": prof.name, "profile_path": profile, "grid_id": grid_id, "search_id": search_id,
            "grid_s": measure_s(store, grid_id), "search_s": measure_s(store, search_id),
            "grid_trials": len(trials), "search_trials": len(store.list_trials(search_id)),
            "grid_recommends": knob_label(rec.config) if rec.config else None,
            "grid_best_capacity": max(from_grid, key=from_grid.get) if from_grid else None,
            "search_recommends": knob_label(top.config) if top else None,
            "capacities": {knob_label(c.config): (c.capacity.capacity, c.capacity.status,
                                                  from_grid.get(knob_label(c.config)))
                           for c in caps},
            "errors": errors}


def fixed_slo_profile(prof, slos) -> str:
    """A copy of `prof` whose SLOs are these absolute ones; returns the YAML file's path."""
    import yaml

    data = prof.model_dump(mode="json")
    data["slos"] = {s.metric: {"percentile": s.percentile, "max_ms": round(s.max_ms, 3)} for s in slos}
    path = Path(tempfile.mkdtemp()) / f"{prof.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _slos(store: Store, trials) -> list:
    from experiments.analysis.queries import stored_slos
    return stored_slos(trials, store)


def _median_abs_error(trials, key: str) -> float | None:
    errs = [abs(t.details.prediction.error[key]) for t in trials
            if t.details.prediction and key in t.details.prediction.error]
    return median(errs) if errs else None


def dense(store: Store, model: str, profile: str, size: dict, search_id: int) -> dict:
    """One config's capacity off a dense load grid (every user count) vs the search's."""
    prof = load_profile(profile)
    loads = list(range(1, max(size["loads"]) + 1))
    grid_id = run(store, model, profile, {"batch_sizes": [max(size["batch_sizes"])],
                                          "max_wait_ms": [0], "requests": size["requests"],
                                          "concurrency": loads, "policies": ["continuous"]})
    caps, _ = sweep_capacities(store, search_id)
    label = f"continuous b{max(size['batch_sizes'])} w0ms"
    from_dense = {k: v for k, v in grid_capacities(store, grid_id, prof.min_slo_attainment).items()
                  if k == label}
    searched = next(c.capacity for c in caps if knob_label(c.config) == label)
    return {"config": label, "dense": from_dense.get(label), "bisection": searched.capacity,
            "bisection_upper": searched.upper, "status": searched.status,
            "dense_s": measure_s(store, grid_id),
            **dense_readings(store.list_trials(grid_id), prof.min_slo_attainment)}


def dense_readings(trials, target: float) -> dict:
    """Three readings of one config's dense grid: the largest load whose point attainment meets
    the target (noise lets a lucky high load pass), the load before the first point miss, and
    the search's own rule (below the first load whose 90% Wilson interval does not lie wholly
    above the target: a bisection that measured every load once; it repeats undecided ones)."""
    from experiments.search.evidence import wilson, z_for

    z = z_for(0.9)
    rows = sorted((t.config.concurrency, t) for t in trials if t.status == "done")
    att = {users: float(t.metrics.get("slo_attainment") or 0.0) for users, t in rows}
    first_miss = next((u for u, a in att.items() if a < target), None)
    shown = 0
    for users, t in rows:
        total = int(t.metrics.get("requests_completed") or 0) + int(t.metrics.get("requests_failed") or 0)
        if wilson(round(att[users] * total), total, z)[0] < target:
            break
        shown = users
    return {"attainment": att, "before_first_miss": (first_miss - 1) if first_miss else max(att),
            "interval_rule": shown}


def simulated(model: str) -> None:
    """The issue's full grid, grid vs search, on the virtual clock under the prior cost model."""
    from experiments.predict.estimate import predicted_slos
    from experiments.predict.simulate import prior_cost, simulate_trial
    from experiments.search.capacity import run_search
    from experiments.search.capacity_plan import calibration_probe, make_plan, revise_plan, simulated_measure

    for profile in ("chat", "batch"):
        prof, cost = load_profile(profile), prior_cost(model)
        slos = predicted_slos(prof, cost)
        spec = parse_spec({"model": model, "profile": profile, "batch_sizes": FULL["batch_sizes"],
                           "max_wait_ms": FULL["max_wait_ms"], "requests": FULL["requests"],
                           "search": {"load": "concurrency",
                                      "max_load": max(FULL["loads"]) * LIMIT_X, **SEARCH}})
        grid_s, from_grid = 0.0, {}
        for knobs in spec.knob_configs():
            for users in FULL["loads"]:
                config = knobs.__class__(**{**vars(knobs), "concurrency": users})
                m = simulate_trial(config, prof, FULL["requests"], cost, slos)
                grid_s += m.duration_s
                if m.slo_attainment >= prof.min_slo_attainment:
                    from_grid[knob_label(knobs)] = max(from_grid.get(knob_label(knobs), 0), users)
        spent = [0.0]
        probe = calibration_probe(spec, prof, slos)
        plan = make_plan(spec, prof, cost, slos, probe.__class__(**{**vars(probe), "concurrency": None}),
                         float(probe.concurrency))
        finished = [0]

        def revise(config, searches, spec=spec, prof=prof, cost=cost, slos=slos, finished=finished):
            # as the runner: the (here: true) cost model is consulted when another search ends
            now = sum(s.is_finished for s in searches.values())
            refit, finished[0] = now > finished[0], now
            return revise_plan(spec, prof, cost if refit else None, slos, searches)

        caps = run_search(spec, prof, [], simulated_measure(spec, prof, cost, slos, spent), plan=plan,
                          revise=revise)
        top = best(caps)
        grid_top = max(from_grid, key=from_grid.get) if from_grid else None
        ruled_out = sum(c.capacity.status in ("skipped", "pruned") for c in caps)
        print(f"[simulated] {profile}: {ruled_out} of {len(caps)} configs ruled out; "
              f"grid {grid_s:.0f} s of trials, search {spent[0]:.0f} s "
              f"({spent[0] / grid_s:.0%}); grid's best capacity {grid_top} "
              f"({from_grid.get(grid_top)} users), search's {knob_label(top.config) if top else None} "
              f"({top.capacity.capacity if top else None} users)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 32 requests: with fewer, no single trial can show 90% attainment at 90% confidence.
    parser.add_argument("--quick", action="store_true", help="a 2x2x1x4 grid, 32 requests")
    parser.add_argument("--simulated", action="store_true", help="the full grid on the simulator")
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--profiles", default="chat,batch")
    parser.add_argument("--db", default=None, help="keep the results here (default: a temp file)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense load grid")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished grid sweeps of the same spec in --db (search again)")
    args = parser.parse_args()
    global REUSE
    REUSE = args.reuse
    if args.simulated:
        simulated(args.model)
        return
    size = QUICK if args.quick else FULL
    url = args.db or f"sqlite:///{tempfile.mkdtemp()}/bench_search.db"
    store = Store(url)
    print(f"db: {url}; model {args.model}; grid {size}")
    rows = [compare(store, args.model, p, size) for p in args.profiles.split(",")]
    for r in rows:
        print(f"\n{r['profile']}: grid {r['grid_trials']} trials {r['grid_s']:.0f} s; search "
              f"{r['search_trials']} trials {r['search_s']:.0f} s = {r['search_s'] / r['grid_s']:.0%} "
              f"of the grid's measurement time")
        print(f"  grid recommends: {r['grid_recommends']}; grid's best capacity: "
              f"{r['grid_best_capacity']}; search recommends: {r['search_recommends']}")
        print("  prediction median |error| over the grid: " + ", ".join(
            f"{k} {v:.0%}" if v is not None else f"{k} -" for k, v in r["errors"].items()))
        for label, (cap, status, grid_cap) in r["capacities"].items():
            print(f"  {label:<22} search {cap:>5g} users ({status}); grid {grid_cap}")
    if args.no_dense:
        return
    d = dense(store, args.model, rows[0]["profile_path"], size, rows[0]["search_id"])
    print(f"\ndense vs bisection ({rows[0]['profile']}, {d['config']}): dense grid capacity "
          f"{d['dense']} users ({d['dense_s']:.0f} s of trials); bisection {d['bisection']:g} "
          f"(next failing {d['bisection_upper']}; {d['status']})")
    print(f"  dense readings: before the first miss {d['before_first_miss']} users; with the search's "
          f"interval rule {d['interval_rule']} users; attainment by users: "
          + ", ".join(f"{u}: {a:.3f}" for u, a in d["attainment"].items()))


if __name__ == "__main__":
    main()
