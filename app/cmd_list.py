"""`tradeoff sweeps` and `trials`: what the store holds, one row per sweep or per trial."""

from __future__ import annotations

import csv
import sys
from typing import Any

import typer

from app.cli import app
from app.errors import BadInput
from app.options import DB
from app.output import print_json, print_table
from app.runs import open_store
from common.details import Provenance, TrialDetails


@app.command()
def sweeps(
    db: str | None = DB,
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List the sweeps in the store, newest first."""
    rows = [_sweep_row(s) for s in open_store(db, create=False).list_sweeps()]
    print_json(rows) if json_out else print_table(rows)


def _sweep_row(s) -> dict[str, Any]:
    return {"id": s.id, "name": s.name, "status": s.status, **_measured(s),
            "profile": s.profile.get("name"),
            "trials_done": s.trials_done, "trials_failed": s.trials_failed,
            "trials_total": s.trials_total,
            "created_at": s.created_at.isoformat(timespec="seconds") if s.created_at else None}


def _measured(s) -> dict[str, Any]:
    """The model and device columns: for an external server, the model names the server."""
    from experiments.run.provenance import SERVER_DEVICE
    from experiments.spec.sections import flat_keys

    if s.device == SERVER_DEVICE and s.device_name:  # `mock on server at http://h/v1 (vllm 0.6.3)`
        return {"model": f"{s.model} on {s.device_name}", "device": s.device}
    grid = flat_keys(s.grid)  # flat or in sections, as stored
    if _bare_target(grid):  # stored before the server was recorded
        served = grid.get("target_model") or "the served model"
        return {"model": f"{served} on server at {grid['target']}", "device": SERVER_DEVICE}
    return {"model": s.model, "device": s.device_name or s.device}


TRIAL_COLUMNS = ["trial_id", "status", "policy", "batch_size", "max_wait_ms", "max_num_batched_tokens",
                 "replicas", "router", "load", "repetition",
                 "requests_per_s", "output_tokens_per_s", "goodput_rps", "ttft_ms_p90",
                 "tpot_ms_p90", "e2e_ms_p90", "mean_batch_size", "saturated", "client_bound", "error"]


def trial_rows(records, server_batches: bool = False) -> list[dict[str, Any]]:
    """One flat row per trial: config then every metric, and where it was measured.
    `server_batches`: a bare --target's trials, whose stored knobs are placeholders (see
    grid.SERVER_OWN_KNOBS): shown as policy `server` and no batch size, wait or budget."""
    return [{"trial_id": t.trial_id, "status": t.status, **_knobs(t.config, server_batches),
             "replicas": t.config.replicas, "router": t.config.router,
             "load": t.config.load_label, "concurrency": t.config.concurrency,
             "rate": t.config.rate, "repetition": t.config.repetition, **t.metrics,
             "measured_on": _measured_on(t.details),
             "server_start_s": _provenance(t.details).server_start_s, "error": t.error}
            for t in records]


def _bare_target(grid: dict) -> bool:
    """SweepSpec.is_bare_target read off a stored grid (no parse: any stored grid lists),
    flat or in sections."""
    from experiments.spec.sections import flat_keys

    grid = flat_keys(grid)
    return bool(grid.get("target")) and not grid.get("server_cmd") and not grid.get("engine")


def _knobs(config, server_batches: bool) -> dict[str, Any]:
    if server_batches:
        return {"policy": "server", "batch_size": None, "max_wait_ms": None,
                "max_num_batched_tokens": None}
    return {"policy": config.policy, "batch_size": config.batch_size,
            "max_wait_ms": config.max_wait_ms, "max_num_batched_tokens": config.max_num_batched_tokens}


def _provenance(details: TrialDetails) -> Provenance:
    return details.provenance or Provenance()


def _measured_on(details: TrialDetails) -> str | None:
    """The trial's recorded device: a GPU or CPU, or `model at URL (engine version)`."""
    where = _provenance(details)
    return where.device_name or where.device


@app.command()
def trials(
    sweep_id: int = typer.Argument(..., help="sweep id (see `tradeoff sweeps`)"),
    format: str = typer.Option("table", "--format", help="table | csv | json"),
    db: str | None = DB,
) -> None:
    """One row per trial of a sweep, with its config and metrics."""
    if format not in ("table", "csv", "json"):
        raise BadInput(f"--format must be table, csv or json, got {format!r}")
    store = open_store(db, create=False)
    sweep = store.get_sweep(sweep_id)
    rows = trial_rows(store.list_trials(sweep.id), _bare_target(sweep.grid))
    if format == "json":  # and where each trial ran: node, device, engine {name, version, command}
        print_json([{**row, "provenance": t.details.provenance.to_dict() if t.details.provenance else {}}
                    for row, t in zip(rows, store.list_trials(sweep.id), strict=True)])
    elif format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else TRIAL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    else:
        print_table(rows, TRIAL_COLUMNS)
