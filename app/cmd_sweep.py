"""`tradeoff sweep` and `worker`: grids of trials into the store."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
import yaml

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
from app.output import fmt, print_json
from app.runs import check_sweep, open_store, run_to_end, start_sweep


def spec_from_flags(config: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """Merge `--config sweep.yaml` with flags given on the command line (flags win)."""
    from experiments.spec.sections import flat_keys

    data: dict[str, Any] = {}
    if config is not None:  # flat or in sections; flat keys merge with the flags' (`target`)
        data = flat_keys(_read_yaml(config))
    data.update({k: v for k, v in flags.items() if v is not None})
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except OSError as exc:
        raise BadInput(f"--config: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(f"--config {path}: not UTF-8 text; give a sweep YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise BadInput(f"--config {path}:{where}: malformed YAML; fix the syntax") from None
    if not isinstance(data, dict):
        raise BadInput(f"--config {path}: expected a mapping of sweep fields (model, profile, ...)")
    if not all(isinstance(k, str) for k in data):
        bad = next(k for k in data if not isinstance(k, str))
        raise BadInput(f"--config {path}: field name {bad!r} is not text; use names like batch_sizes")
    return _underscored(data)


def _underscored(data: dict) -> dict:
    """`batch-sizes` as `batch_sizes`, in a section's mapping too (`knobs: {batch-sizes: ...}`);
    values that are data (engine_env's variable names, slos' metrics) are left as written."""
    from experiments.spec.sections import SECTIONS

    out = {}
    for k, v in data.items():
        key = k.replace("-", "_") if isinstance(k, str) else k
        out[key] = _underscored(v) if key in SECTIONS and isinstance(v, dict) else v
    return out


@app.command()
def sweep(
    model: str | None = typer.Option(None, help="builtin:tiny (default), builtin:small, a HF id or a path"),
    profile: str | None = typer.Option(None, help="workload profile (default chat)"),
    policy: str | None = opt.POLICIES,
    batch_sizes: str | None = opt.BATCH_SIZES,
    max_wait_ms: str | None = opt.MAX_WAIT_MS,
    max_num_batched_tokens: str | None = opt.BUDGETS,
    concurrency: str | None = typer.Option(None, help="closed loop: comma list of virtual users"),
    rate: str | None = typer.Option(None, help="open loop: comma list of requests/s"),
    speedup: str | None = typer.Option(
        None, help="trace profiles: comma list of replay speed-ups, e.g. 1,2,4 (the load axis)"),
    trace_duration: float | None = typer.Option(
        None, "--trace-duration", help="trace profiles: seconds of replay per trial (default the profile's)"),
    trace_start: float | None = typer.Option(
        None, "--trace-start", help="trace profiles: start this many seconds into the trace"),
    burstiness: float | None = opt.BURSTINESS,
    requests: int | None = typer.Option(None, help="measured requests per trial (default 48)"),
    repetitions: int | None = typer.Option(None, help="repetitions of each config (default 1)"),
    seed: int | None = opt.SEED,
    device: str | None = opt.DEVICE,
    dtype: str | None = opt.DTYPE,
    kv_budget: int | None = opt.KV_BUDGET,
    name: str | None = typer.Option(None, help="a name for this sweep"),
    target_url: str | None = typer.Option(
        None, "--target", help="OpenAI-compatible base URL to drive instead of the local engine "
        "(it batches by its own settings: no knob flags unless --server-cmd starts it)"),
    target_model: str | None = opt.TARGET_MODEL,
    api_key_env: str | None = opt.API_KEY_ENV,
    tokenizer: str | None = opt.TOKENIZER,
    engine: str | None = opt.ENGINE,
    server_cmd: str | None = typer.Option(
        None, "--server-cmd",
        help="server command template with {batch_size} {max_wait_ms} {policy} {port}, started per config"),
    calibrate: bool | None = typer.Option(
        None, "--calibrate", help="probe the first server it starts and predict every trial from "
                                  "the fit (tradeoff calibrate, built in; --engine/--server-cmd)"),
    prefix_caching: str | None = PREFIX_CACHING,
    slo: list[str] | None = SLO,
    engine_args: str | None = ENGINE_ARGS,
    engine_env: list[str] | None = ENGINE_ENV,
    engine_python: str | None = ENGINE_PYTHON,
    server_timeout: float | None = SERVER_TIMEOUT,
    server_cpus: str | None = SERVER_CPUS,
    config: Path | None = typer.Option(None, "--config", help="sweep.yaml with the same fields"),
    resume: int | None = typer.Option(None, "--resume", help="finish sweep ID, skipping stored trials"),
    db: str | None = opt.DB,
    json_out: bool = opt.JSON_AT_END,
    replicas: str | None = typer.Option(
        None, "--replicas", help="comma list of engine replica counts, e.g. 1,2 (processes behind a router)"),
    router: str | None = typer.Option(
        None, "--router", help="comma list: round_robin,least_outstanding,power_of_two"),
    executor: str | None = typer.Option(
        None, "--executor", help="local (default) | ray: trials on Ray workers, one per GPU or CPU slot"),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray head HOST:PORT (default: a local cluster for this command)"),
) -> None:
    """Run a grid of trials (policy x batch size x max wait x load x repetitions) into the store."""
    if resume is not None:
        store = open_store(db)
        sweep_id, target = store.get_sweep(resume).id, None
    else:
        flags = {**opt.spec_fields(model=model, profile=profile, burstiness=burstiness,
                                   requests=requests, seed=seed, device=device, dtype=dtype,
                                   kv_budget=kv_budget, name=name, target_url=target_url,
                                   target_model=target_model, api_key_env=api_key_env,
                                   tokenizer=tokenizer, server_cmd=server_cmd, engine=engine),
                 "repetitions": repetitions, "trace_duration_s": trace_duration,
                 "trace_start_s": trace_start,
                 **launch_flags(engine_args, engine_env, engine_python, server_timeout, server_cpus),
                 "calibrate": calibrate, **knob_flags(prefix_caching, slo),
                 **opt.lists(policy, batch_sizes, max_wait_ms, concurrency, rate, speedup,
                             max_num_batched_tokens),
                 **opt.scale_lists(replicas, router),
                 "executor": executor, "ray_address": ray_address}
        checked = check_sweep(db, spec_from_flags(config, flags))  # nothing written before this
        (store, sweep_id), target = start_sweep(db, checked), checked.target
    runner, status = run_to_end(store, sweep_id, target)
    _print_outcome(store, sweep_id, status, json_out)
    report_start_failures(runner)


def _print_outcome(store, sweep_id: int, status: str, json_out: bool) -> None:
    s = store.get_sweep(sweep_id)
    out = {"sweep_id": s.id, "name": s.name, "status": status, "trials_total": s.trials_total,
           "trials_done": s.trials_done, "trials_failed": s.trials_failed, "db": store.display_url}
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if json_out:
        print_json(out)
    else:
        print(f"sweep {s.id} {status}: {s.trials_done} done, {s.trials_failed} failed "
              f"of {s.trials_total}; next: tradeoff recommend --sweep {s.id} --profile "
              f"{s.profile.get('name', 'chat')}")
    if status == "failed":
        raise typer.Exit(1)


@app.command()
def worker(
    db: str | None = opt.DB,
) -> None:
    """Run queued sweeps one after another until none is left (the dashboard starts this)."""
    from experiments.run.runners import run_queued

    done = run_queued(open_store(db), os.getpid())
    print(f"worker: ran {len(done)} sweep(s): {', '.join(fmt(i) for i in done) or '-'}", file=sys.stderr)
