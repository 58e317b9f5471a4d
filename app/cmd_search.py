"""`tradeoff search`: each batching config's capacity within the profile's SLOs."""

from __future__ import annotations

import sys
from typing import Any

import typer

from app import options as opt
from app.cli import app
from app.engine_options import (
    ENGINE_ARGS,
    ENGINE_ENV,
    ENGINE_PYTHON,
    PREFIX_CACHING,
    SERVER_CPUS,
    SERVER_TIMEOUT,
    SLO,
    knob_flags,
    launch_flags,
    report_start_failures,
)
from app.errors import BadInput
from app.output import print_json
from app.runs import check_search, open_store, run_to_end, start_search, user_profiles


@app.command()
def search(
    model: str = typer.Option("builtin:tiny", help="builtin:tiny, builtin:small, a HF id or a path"),
    profile: str = typer.Option("chat", help="workload profile; it must have SLOs"),
    policy: str | None = opt.POLICIES,
    batch_sizes: str | None = opt.BATCH_SIZES,
    max_wait_ms: str | None = opt.MAX_WAIT_MS,
    max_num_batched_tokens: str | None = opt.BUDGETS,
    rate: bool = typer.Option(False, "--rate", help="search open-loop arrival rate (req/s; default)"),
    concurrency: bool = typer.Option(False, "--concurrency", help="search closed-loop users instead"),
    speedup: bool = typer.Option(
        False, "--speedup", help="trace profiles: search the replay speed-up (x) instead"),
    budget_min: float | None = typer.Option(
        None, "--budget-min", help="measurement time budget, minutes (default 10; with --resume: "
                                   "a new budget for the resumed search)"),
    start_load: float | None = typer.Option(None, "--start-load", help="first load tried per config"),
    max_load: float | None = typer.Option(None, "--max-load", help="largest load tried"),
    max_repeats: int | None = typer.Option(
        None, "--max-repeats", help="repetitions of a load the SLO verdict is unsure of (default 3)"),
    predict: bool = typer.Option(
        True, "--predict/--no-predict",
        help="fit the simulator to the first trial (or, on servers it starts, to probes of the "
             "first server), start each config at its predicted capacity and skip configs "
             "predicted far below the best"),
    keep_ratio: float | None = typer.Option(
        None, "--keep-ratio", help="measure configs predicted at >= this x the best (default 0.5)"),
    burstiness: float | None = opt.BURSTINESS,
    requests: int | None = typer.Option(
        None, help="measured requests per trial (default 48; a --rate search: 25, the fewest that "
                   "can decide a 0.9 target, and its trials send at least 10 s of arrivals)"),
    seed: int | None = opt.SEED,
    device: str | None = opt.DEVICE,
    dtype: str | None = opt.DTYPE,
    kv_budget: int | None = opt.KV_BUDGET,
    name: str | None = typer.Option(None, help="a name for this search"),
    target_url: str | None = typer.Option(
        None, "--target", help="OpenAI-compatible base URL to search instead of the local engine"),
    target_model: str | None = opt.TARGET_MODEL,
    api_key_env: str | None = opt.API_KEY_ENV,
    tokenizer: str | None = opt.TOKENIZER,
    server_cmd: str | None = typer.Option(
        None, "--server-cmd",
        help="server command template with {batch_size} {max_wait_ms} {policy} {port}: one server "
             "per config, started for its search and stopped before the next"),
    engine: str | None = opt.ENGINE,
    prefix_caching: str | None = PREFIX_CACHING,
    slo: list[str] | None = SLO,
    engine_args: str | None = ENGINE_ARGS,
    engine_env: list[str] | None = ENGINE_ENV,
    engine_python: str | None = ENGINE_PYTHON,
    server_timeout: float | None = SERVER_TIMEOUT,
    server_cpus: str | None = SERVER_CPUS,
    resume: int | None = typer.Option(None, "--resume", help="continue search ID, reusing stored trials"),
    db: str | None = opt.DB,
    json_out: bool = opt.JSON_AT_END,
) -> None:
    """Find each config's capacity (largest load meeting the SLOs) by bracketing and bisection.

    A search ends when every config has its answer (bracketed to 10% of a rate or to one user,
    or met at --max-load, or missed at the lightest load worth trying), when --budget-min of
    measurement is spent (resume it with --resume), or on Ctrl-C. Nothing else stops it.
    """
    from experiments.run.search_runner import set_search_budget

    if rate + concurrency + speedup > 1:
        raise BadInput("give one of --rate (open loop), --concurrency (closed loop) or "
                       "--speedup (trace replay), not both")
    if budget_min is not None and not 0 < budget_min < float("inf"):
        raise BadInput(f"--budget-min must be > 0 minutes and finite, got {budget_min:g}")
    if resume is not None:
        store = open_store(db)
        sweep_id, target = _check_resume(store, resume), None
        if budget_min is not None:
            set_search_budget(store, sweep_id, budget_min * 60)
    else:
        if requests is None and not (concurrency or speedup):
            # A rate trial is sized by time (search.min_span_s) and evidence: at light loads 48
            # requests took 48 s at 1 req/s, a fifth of a 4-minute budget, to pass a load far
            # below capacity.
            from experiments.search.evidence import decisive_requests

            requests = decisive_requests()
        data = {**opt.spec_fields(model=model, profile=profile, burstiness=burstiness,
                                  requests=requests, seed=seed, device=device, dtype=dtype,
                                  kv_budget=kv_budget,
                                  name=name or f"capacity search: {profile} on {target_url or model}",
                                  target_url=target_url, target_model=target_model,
                                  api_key_env=api_key_env, tokenizer=tokenizer,
                                  server_cmd=server_cmd, engine=engine),
                **launch_flags(engine_args, engine_env, engine_python, server_timeout, server_cpus),
                **knob_flags(prefix_caching, slo),
                **opt.lists(policy, batch_sizes, max_wait_ms, None, None,
                            budgets=max_num_batched_tokens),
                "search": {"load": "concurrency" if concurrency else "speedup" if speedup else "rate",
                           "budget_s": (budget_min or 10.0) * 60, "start_load": start_load,
                           "max_load": max_load, "max_repeats": max_repeats,
                           "predict": predict, "keep_ratio": keep_ratio}}
        checked = check_search(db, data, lambda: user_profiles(db))  # nothing written before this
        (store, sweep_id), target = start_search(db, checked), checked.target
    runner, status = run_to_end(store, sweep_id, target)
    _print_outcome(store, runner, status, json_out)
    report_start_failures(runner)


def _check_resume(store, sweep_id: int) -> int:
    from experiments.spec.grid import SweepSpec

    sweep = store.get_sweep(sweep_id)
    if SweepSpec(**sweep.grid).search is None:
        raise BadInput(f"sweep {sweep_id} is a load grid, not a search; resume it with "
                       f"`tradeoff sweep --resume {sweep_id}`")
    return sweep.id


def capacity_summary(analysis) -> dict[str, Any]:
    """Every config's capacity, the one the recommendation names, and its sentence: all read
    from the one recommendation, so they cannot disagree."""
    from experiments.analysis.queries import capacity_sentence
    from experiments.search.capacity import knobs_of

    rec = analysis.recommendation
    top = rec.capacity if rec.feasible else None
    return {"capacities": [c.to_dict() for c in analysis.capacities],
            "recommended": None if top is None else {
                "config": knobs_of(top.config), "capacity": top.capacity.capacity,
                "unit": top.unit, "tie_with": [c.to_dict()["label"] for c in rec.tie_with]},
            "sentence": capacity_sentence(analysis)}


def search_outcome(store, sweep_id: int) -> dict[str, Any]:
    """The CLI contract's JSON object, replayed from the stored trials."""
    from experiments.analysis.queries import analyse
    from experiments.predict.accuracy import prediction_summary
    from experiments.search.capacity import NOT_ANSWERED, RULED_OUT

    analysis = analyse(store, store.get_sweep(sweep_id))
    sweep, capacities, trials = analysis.sweep, analysis.capacities, analysis.trials
    summary = capacity_summary(analysis)
    prediction = prediction_summary(trials, capacities)
    for c in summary["capacities"]:  # as predicted before it was measured (None: no prediction)
        c["predicted"] = prediction["predicted"].get(c["label"])
    return {
        "sweep_id": sweep.id, "profile": sweep.profile.get("name"),
        **summary, "recommendation": analysis.recommendation.to_dict(),
        "trials_run": len(trials), "trials_failed": sum(t.status == "failed" for t in trials),
        # Ruled out (predicted or shown unable to win) is an answer, not "undecided". A mapping
        # label -> why: `label in ruled_out` and iterating over labels read as before.
        "undecided": [c.to_dict()["label"] for c in capacities if c.capacity.status in NOT_ANSWERED],
        "ruled_out": {c.to_dict()["label"]: c.capacity.reason for c in capacities
                      if c.capacity.status in RULED_OUT},
        "calibration": prediction["calibration"], "prediction_band": prediction["band"],
        "prediction_error": prediction["median_abs_error"],
        "db": store.display_url,
    }


def _print_outcome(store, runner, status: str, json_out: bool) -> None:
    out = {**search_outcome(store, runner.sweep_id), "status": status,
           "budget_spent": bool(getattr(runner, "budget_spent", False))}
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if json_out:
        print_json(out)
    else:
        for c in out["capacities"]:
            mark = ("" if c["decided"] else "  (ruled out)" if c["label"] in out["ruled_out"]
                    else "  (undecided)")
            print(f"{c['label']:<28} {c['capacity']:>8.3g} {c['unit']}{mark}  {c['reason']}")
        print(out["sentence"])
        if out["budget_spent"]:
            print(f"budget spent; continue with: tradeoff search --resume {out['sweep_id']}")
    if status == "failed":
        raise typer.Exit(1)
