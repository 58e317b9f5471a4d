"""`tradeoff demo`: the dashboard's demo sweep from the command line, and its answer per profile."""

from __future__ import annotations

import sys
from typing import Any

import typer

from app.cli import app
from app.options import DB, JSON_AT_END
from app.output import print_json
from app.runs import open_store, run_to_end


@app.command()
def demo(
    db: str | None = DB,
    json_out: bool = JSON_AT_END,
) -> None:
    """Run the demo (builtin:tiny, one grid under the chat and the batch profile) and print the
    recommendation for each: batching's throughput gain and latency cost, decided by evidence."""
    from app import launcher
    from experiments.analysis.queries import analyse, capacity_sentence
    from experiments.run.sweep import create_sweep
    from experiments.spec.profiles import load_profile

    store = open_store(db)
    specs = launcher.demo_specs()
    out: dict[str, Any] = {}
    for spec in specs:
        sweep_id = create_sweep(store, spec, load_profile(spec.load.profile))
        print(f"demo: sweep {sweep_id} ({spec.load.profile}): {spec.num_trials} trials", file=sys.stderr)
        _, status = run_to_end(store, sweep_id)
        if status != "done":
            raise typer.Exit(1)
        analysis = analyse(store, store.get_sweep(sweep_id))
        out[spec.load.profile] = {"sweep_id": sweep_id, **answer(analysis.recommendation.to_dict()),
                             "sentence": capacity_sentence(analysis)}
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if json_out:
        print_json({**out, "db": store.display_url})
        return
    for profile, rec in out.items():
        print(f"{profile}: {rec['sentence']}")


def answer(rec: dict[str, Any]) -> dict[str, Any]:
    """The CLI contract's fields of one profile's recommendation."""
    keys = ("label", "config", "capacity", "upper", "unit", "status", "tie_with", "feasible",
            "attainment")
    slos = [{k: s[k] for k in ("metric", "percentile", "threshold_ms", "rule")} for s in rec["slos"]]
    return {**{k: rec.get(k) for k in keys}, "slos": slos}
