"""Does refitting a server's black-box cost model to measured trials predict better than its
probes alone? Offline, from stored sweeps (no server runs): a calibrated search's probes and
trials, and measured grids of the same server space.

    .venv/bin/python scripts/refit_study.py --search sqlite:////tmp/bv22/search.db \
        --grid sqlite:////tmp/bv/grid.db

For each way of refitting it replays the search's trials in order, refitting after each as the
search did, and reports (1) held-out error: each trial predicted by the fit made before it, and
(2) the grids' trials predicted by the fit after the last trial; median |predicted / measured
- 1| per metric. The ways: the probes alone; refit (the anchor the product uses); refit with
stronger anchors; refit kept only while it beat the probes on held-out trials (refit.HeldOut).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.store import Store  # noqa: E402
from experiments.analysis.queries import stored_slos  # noqa: E402
from experiments.predict import refit as refit_mod  # noqa: E402
from experiments.predict.calibrate import observed_of, point_probes  # noqa: E402
from experiments.predict.simulate import cost_from_dict, relative_errors, simulate_trial  # noqa: E402
from experiments.spec.grid import SweepSpec  # noqa: E402
from experiments.spec.profiles import Profile  # noqa: E402

KEYS = ("output_tokens_per_s", "ttft_ms_p50", "ttft_ms_p90", "tpot_ms_p50")


def errors(cost, trials, spec: SweepSpec, profile: Profile, slos) -> dict[str, list[float]]:
    """|predicted / measured - 1| per KEYS over `trials` under `cost`."""
    out: dict[str, list[float]] = {k: [] for k in KEYS}
    for t in trials:
        p = simulate_trial(t.config, profile, spec.requests_for(t.config), cost, slos,
                           spec.load.seed + t.config.repetition).flat()
        for k, e in relative_errors(p, t.metrics, KEYS).items():
            out[k].append(abs(e))
    return out


def fmt(errs: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} {statistics.median(v):.0%}" for k, v in errs.items() if v)


def replay(way: str, anchor_weight: float, search: Store, sweep_id: int, grids: list[tuple]) -> None:
    """Refit after each of the search's trials as `way` says; print held-out and grid errors."""
    sweep = search.get_sweep(sweep_id)
    spec, profile = SweepSpec(**sweep.grid), Profile(**sweep.profile)
    trials = [t for t in search.list_trials(sweep_id) if t.status == "done"]
    slos = stored_slos(trials, search)
    calibration = next(t.details.prediction.calibration.to_dict() for t in trials
                       if t.details.prediction and t.details.prediction.calibration)
    probes_fit = cost_from_dict(calibration["cost_model"])
    probes = point_probes(calibration["probes"])
    refit_mod.ANCHOR_WEIGHT = anchor_weight
    cost = chain = probes_fit  # the fit predicting now; the refit chain (warm-started)
    held_out, gate = {k: [] for k in KEYS}, refit_mod.HeldOut()
    for i, t in enumerate(trials):
        for k, v in errors(cost, [t], spec, profile, slos).items():
            held_out[k] += v
        if way == "probes":
            continue
        seen = observed_of(trials[: i + 1], spec)
        if not seen or seen[-1].config != t.config:
            continue  # not fit evidence (client-bound): nothing new to fit
        gate = gate.judged(seen[-1], chain, probes_fit, profile, slos)  # before it is fitted
        chain = refit_mod.refit(chain, probes_fit, probes, seen, profile, slos)
        cost = chain if way != "gated" or gate.trusts_refit else probes_fit
    print(f"{way} (anchor {anchor_weight}): held-out over {len(trials)} search trials: {fmt(held_out)}"
          + (f"; the refit {'predicts' if gate.trusts_refit else 'does not predict'} (held-out loss "
             f"{gate.refit:.2f} vs the probes' {gate.probes:.2f})" if way == "gated" else ""))
    for name, store, grid_id in grids:
        g = store.get_sweep(grid_id)
        measured = [t for t in store.list_trials(grid_id) if t.status == "done"]
        gspec, gprof = SweepSpec(**g.grid), Profile(**g.profile)
        print(f"    {name}: {fmt(errors(cost, measured, gspec, gprof, stored_slos(measured, store)))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search", required=True, help="the calibrated search's db")
    parser.add_argument("--grid", action="append", default=[], help="a measured grid's db (repeat)")
    args = parser.parse_args()
    search = Store(args.search, create=False)
    sweep_id = search.list_sweeps()[0].id
    grids = [(f"grid {Path(url).name} sweep {s.id}", store, s.id)
             for url in args.grid for store in [Store(url, create=False)] for s in store.list_sweeps()]
    default = refit_mod.ANCHOR_WEIGHT
    for way, weight in (("probes", default), ("refit", default), ("refit", 1.0), ("refit", 3.0),
                        ("gated", default), ("gated", 3.0)):
        replay(way, weight, search, sweep_id, grids)


if __name__ == "__main__":
    main()
