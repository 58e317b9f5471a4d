"""`tradeoff calibrate`: fit the simulator to a few probes of a running server, predict what its
server configs would do, and check the prediction against a measured sweep."""

from __future__ import annotations

import json
import statistics

import typer

from app.cli import app
from app.errors import BadInput
from app.options import DB, TARGET_MODEL, lists
from app.output import fmt, print_table
from app.runs import open_store


@app.command()
def calibrate(
    target_url: str = typer.Option(..., "--target", help="OpenAI-compatible base URL of the running server"),
    target_model: str | None = TARGET_MODEL,
    tokenizer: str | None = typer.Option(None, help="tokenizer (default: --target-model)"),
    max_running: int = typer.Option(
        16, "--max-running", help="the server's cap on running requests (vLLM --max-num-seqs): "
                                  "decode probes go up to it"),
    profile: str = typer.Option("chat", help="workload profile the predictions use"),
    batch_sizes: str | None = typer.Option(
        None, "--batch-sizes", help="predict these caps on running requests (comma list)"),
    max_num_batched_tokens: str | None = typer.Option(
        None, "--max-num-batched-tokens", help="and these per-step token budgets (comma list, none)"),
    concurrency: str | None = typer.Option(None, help="at these closed-loop loads (comma list)"),
    rate: str | None = typer.Option(None, help="or these open-loop rates, req/s (comma list)"),
    requests: int = typer.Option(64, help="requests per predicted trial"),
    sweep: int | None = typer.Option(
        None, "--sweep", help="a measured sweep of this server: predicted vs measured per trial"),
    db: str | None = DB,
    seed: int = typer.Option(0),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Probe a running server (TTFT against prompt length, time per token against running
    requests), fit the simulator's step costs, and predict server configs not yet started."""
    from experiments.predict.calibrate import fit, probe_server
    from experiments.targets.external import ExternalTarget, load_tokenizer

    if max_running < 1 or requests < 1:
        raise BadInput("--max-running and --requests must be >= 1")
    grid = lists(None, batch_sizes, None, concurrency, rate, None, max_num_batched_tokens)
    if batch_sizes and not (concurrency or rate):
        raise BadInput("--batch-sizes: give the loads to predict at (--concurrency or --rate)")
    trials = _measured(db, sweep, max_running, (grid["max_num_batched_tokens"] or [None])[0])
    tok = load_tokenizer(tokenizer or target_model or "builtin:tiny")
    target = ExternalTarget.connect(target_url, target_model, tok)
    try:
        probes = probe_server(target.engine, max_running=max_running, seed=seed, **target.request_kwargs())
    finally:
        target.close()
    try:
        calibration = fit(probes)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    out = {"target": target_url, **calibration.to_dict(),
           "predictions": _predictions(calibration.cost, profile, grid, requests, seed),
           "errors": _errors(calibration.cost, profile, trials, requests, seed) if trials else None}
    if json_out:
        print(json.dumps(out, default=str))
        return
    _print(out)


def _predictions(cost, profile_name: str, grid: dict, requests: int, seed: int) -> list[dict]:
    from common.records import TrialConfig
    from experiments.predict.calibrate import predict_grid
    from experiments.predict.estimate import predicted_slos
    from experiments.spec.profiles import load_profile

    if not grid["batch_sizes"]:
        return []
    prof = load_profile(profile_name)
    loads = [{"concurrency": c} for c in grid["concurrency"] or []] + \
        [{"rate": r} for r in grid["rate"] or []]
    configs = [TrialConfig("continuous", b, 0.0, max_num_batched_tokens=t, **load)
               for b in grid["batch_sizes"] for t in (grid["max_num_batched_tokens"] or [None])
               for load in loads]
    slos = predicted_slos(prof, cost, seed)
    return [{"config": c.label, **m} for c, m in predict_grid(cost, prof, configs, requests, slos, seed)]


def _measured(db: str | None, sweep_id: int | None, max_running: int, budget: int | None) -> list:
    """The sweep's trials; a bare --target's placeholder knobs replaced by the server's own as
    given here (--max-running, the first --max-num-batched-tokens), which its trials ran with."""
    from dataclasses import replace

    from experiments.spec.grid import SweepSpec

    if sweep_id is None:
        return []
    store = open_store(db, create=False)
    sweep = store.get_sweep(sweep_id)
    trials = store.list_trials(sweep.id)
    if not SweepSpec(**sweep.grid).is_bare_target:
        return trials
    own = {"batch_size": max_running, "max_num_batched_tokens": budget}
    return [replace(t, config=replace(t.config, **own)) for t in trials]


def _errors(cost, profile_name: str, trials, requests: int, seed: int) -> dict:
    """Each measured trial against its prediction, and the median absolute error per metric."""
    from dataclasses import replace

    from experiments.predict.calibrate import predict_grid, prediction_errors
    from experiments.spec.profiles import load_profile

    prof = load_profile(profile_name)
    done = [t for t in trials if t.status == "done" and t.config.speedup is None]
    predicted = predict_grid(cost, prof, [replace(t.config, repetition=0) for t in done], requests,
                             seed=seed)
    rows = [{"trial_id": t.trial_id, "config": t.config.label,
             **{f"{k}_error": e for k, e in prediction_errors(p, t.metrics).items()}}
            for t, (_, p) in zip(done, predicted, strict=True)]
    keys = [k for k in rows[0] if k.endswith("_error")] if rows else []
    summary = {k: statistics.median([abs(r[k]) for r in rows if r[k] is not None] or [float("nan")])
               for k in keys}
    return {"per_trial": rows, "median_abs_error": summary}


def _print(out: dict) -> None:
    cost = out["cost_model"]
    print(f"calibrated {out['target']}: prefill {cost['prefill_base_s'] * 1e3:.2f} ms + "
          f"{cost['prefill_per_token_s'] * 1e6:.1f} us/token; decode step "
          f"{cost['decode_base_s'] * 1e3:.2f} ms + {cost['decode_per_seq_s'] * 1e3:.3f} ms/request")
    print_table([{"probe": p["kind"], "x": p["x"], "measured_ms": fmt(p["seconds"] * 1e3),
                  "fitted_ms": fmt(p["fitted_s"] * 1e3), "error": f"{p['error']:+.0%}"}
                 for p in out["probes"]])
    if out["predictions"]:
        print("\npredicted (the engine's scheduler on the virtual clock under this fit):")
        print_table([{k: fmt(v) if isinstance(v, float) else v for k, v in row.items()}
                     for row in out["predictions"]])
    if out["errors"]:
        print("\npredicted vs measured, median |error|: " + ", ".join(
            f"{k.removesuffix('_error')} {v:.0%}" for k, v in out["errors"]["median_abs_error"].items()))
