"""`tradeoff sweep`, `sweeps`, `trials` and `worker`: grids of trials into the store."""

from __future__ import annotations

import csv
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import typer
import yaml

from app.cli import app
from app.errors import BadInput
from app.output import fmt, print_json, print_table
from app.parsing import parse_budgets, parse_list

DB_HELP = "SQLAlchemy URL of the result store (default: $TRADEOFF_DB or sqlite:///tradeoff.db)"


def open_store(db: str | None, create: bool = True):
    """Open the result store (StoreError on a bad or unreachable URL)."""
    from db.store import Store

    return Store(db, create=create)


def spec_from_flags(config: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """Merge `--config sweep.yaml` with flags given on the command line (flags win)."""
    data: dict[str, Any] = {}
    if config is not None:
        data = _read_yaml(config)
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
    return {k.replace("-", "_"): v for k, v in data.items()}


def lists(policy, batch_sizes, max_wait_ms, concurrency, rate, speedup=None,
          budgets=None) -> dict[str, Any]:
    return {
        "max_num_batched_tokens":
            None if budgets is None else parse_budgets("--max-num-batched-tokens", budgets),
        "policies": None if policy is None else parse_list("--policy", policy, str),
        "batch_sizes": None if batch_sizes is None else parse_list("--batch-sizes", batch_sizes, int),
        "max_wait_ms": None if max_wait_ms is None else parse_list("--max-wait-ms", max_wait_ms, float),
        "concurrency": None if concurrency is None else parse_list("--concurrency", concurrency, int),
        "rate": None if rate is None else parse_list("--rate", rate, float),
        "speedup": None if speedup is None else parse_list("--speedup", speedup, float),
    }


def _scale_lists(replicas: str | None, router: str | None) -> dict[str, Any]:
    return {
        "replicas": None if replicas is None else parse_list("--replicas", replicas, int),
        "routers": None if router is None else parse_list("--router", router, str),
    }


@app.command()
def sweep(
    model: str | None = typer.Option(None, help="builtin:tiny (default), builtin:small, a HF id or a path"),
    profile: str | None = typer.Option(None, help="workload profile (default chat)"),
    policy: str | None = typer.Option(None, help="comma list: static,continuous,adaptive"),
    batch_sizes: str | None = typer.Option(None, "--batch-sizes", help="comma list, e.g. 1,4,16"),
    max_wait_ms: str | None = typer.Option(None, "--max-wait-ms", help="comma list in ms, e.g. 0,10"),
    max_num_batched_tokens: str | None = typer.Option(
        None, "--max-num-batched-tokens",
        help="comma list of prefill token budgets (chunked prefill, continuous only), e.g. 64,256,none"),
    concurrency: str | None = typer.Option(None, help="closed loop: comma list of virtual users"),
    rate: str | None = typer.Option(None, help="open loop: comma list of requests/s"),
    speedup: str | None = typer.Option(
        None, help="trace profiles: comma list of replay speed-ups, e.g. 1,2,4 (the load axis)"),
    trace_duration: float | None = typer.Option(
        None, "--trace-duration", help="trace profiles: seconds of replay per trial (default the profile's)"),
    trace_start: float | None = typer.Option(
        None, "--trace-start", help="trace profiles: start this many seconds into the trace"),
    burstiness: float | None = typer.Option(None, help="open loop gamma shape (1 = Poisson)"),
    requests: int | None = typer.Option(None, help="measured requests per trial (default 48)"),
    repetitions: int | None = typer.Option(None, help="repetitions of each config (default 1)"),
    seed: int | None = typer.Option(None),
    device: str | None = typer.Option(None, help="auto | cuda | mps | cpu"),
    dtype: str | None = typer.Option(None),
    kv_budget: int | None = typer.Option(None, "--kv-budget", help="KV-cache budget in tokens"),
    name: str | None = typer.Option(None, help="a name for this sweep"),
    target_url: str | None = typer.Option(
        None, "--target", help="OpenAI-compatible base URL to drive instead of the local engine "
        "(it batches by its own settings: no knob flags unless --server-cmd starts it)"),
    target_model: str | None = typer.Option(None, "--target-model", help="model name on the target"),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="env var holding the target's API key (never stored)"),
    tokenizer: str | None = typer.Option(None, help="tokenizer for external targets (default: --model)"),
    engine: str | None = typer.Option(
        None, "--engine", help="start this engine's server per config: vllm | sglang | tgi | llamacpp"),
    server_cmd: str | None = typer.Option(
        None, "--server-cmd",
        help="server command template with {batch_size} {max_wait_ms} {policy} {port}, started per config"),
    config: Path | None = typer.Option(None, "--config", help="sweep.yaml with the same fields"),
    resume: int | None = typer.Option(None, "--resume", help="finish sweep ID, skipping stored trials"),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object at the end"),
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
    from experiments.runners import runner_for

    if resume is not None:
        store = open_store(db)
        sweep_id, target = store.get_sweep(resume).id, None
    else:
        flags = {"model": model, "profile": profile, "burstiness": burstiness, "requests": requests,
                 "repetitions": repetitions, "seed": seed, "device": device, "dtype": dtype,
                 "kv_budget_tokens": kv_budget, "name": name, "target": target_url,
                 "target_model": target_model, "api_key_env": api_key_env, "tokenizer": tokenizer,
                 "server_cmd": server_cmd, "engine": engine, "trace_duration_s": trace_duration,
                 "trace_start_s": trace_start,
                 **lists(policy, batch_sizes, max_wait_ms, concurrency, rate, speedup,
                        max_num_batched_tokens),
                 **_scale_lists(replicas, router),
                 "executor": executor, "ray_address": ray_address}
        store, sweep_id, target = _create(db, spec_from_flags(config, flags))
    runner = runner_for(store, sweep_id, on_progress=progress_printer(), target=target)
    with ctrl_c_cancels(runner.stop):
        status = runner.run()
    _print_outcome(store, sweep_id, status, json_out)


def _create(db: str | None, data: dict[str, Any]):
    """Validate everything, load the model, and only then write: (store, sweep id, target)."""
    from app.preflight import existing_store
    from experiments.estimate import estimate_sweep_s
    from experiments.grid import parse_spec
    from experiments.profiles import load_profile
    from experiments.sweep import create_sweep, local_target_for, sweep_profile

    spec = parse_spec(data)
    store = existing_store(db)  # URL, reachability, schema; None: a new SQLite file, made below
    prof = sweep_profile(spec, load_profile(spec.profile,
                                            store.list_profiles() if store is not None else {}))
    target = None
    if spec.is_external:  # the target answers and the tokenizer loads before any row is written
        spec = check_external(spec)
    elif spec.executor == "ray":  # Ray installed, its head answering, the model known
        _check_ray(spec)
    else:
        # ModelLoadError (bad input) before any row is written; the first group's replica count
        target = local_target_for(spec, spec.trial_configs()[0].replicas)
    store = store or open_store(db)
    sweep_id = create_sweep(store, spec, prof)
    record_server(store, sweep_id, spec)
    est = estimate_sweep_s(spec, prof)
    print(f"sweep {sweep_id}: {spec.num_trials} trials, estimated {est / 60:.1f} min "
          f"(db: {store.display_url})", file=sys.stderr)
    return store, sweep_id, target


def _check_ray(spec) -> None:
    from experiments.external import load_tokenizer
    from experiments.ray_executor import RayUnavailable, check_address

    try:
        check_address(spec.ray_address)
    except RayUnavailable as exc:
        raise BadInput(str(exc)) from None
    load_tokenizer(spec.model)  # an unknown model fails here, not on every worker


def check_external(spec):
    """Check an external run before anything is written; return the spec to store. For a bare
    --target that is the spec naming the model the server serves (as `model` and `target_model`,
    the tokenizer pinned to the one checked here), so the sweep is listed and exported by what
    was measured, never by the tokenizer's default (builtin:tiny)."""
    from app.preflight import check_target_answers
    from experiments.external import api_key_from_env, load_tokenizer

    key = api_key_from_env(spec.api_key_env)  # set now, or the first trial would fail
    if spec.engine is not None:  # its server starts per config, later; it must be installed now
        from experiments.engines import EngineUnavailableError, preset

        try:
            preset(spec.engine).check_available()
        except EngineUnavailableError as exc:
            raise BadInput(str(exc)) from None
    elif spec.server_cmd is None:  # a --server-cmd server starts per config, later
        check_target_answers(spec.target)
    tokenizer = spec.tokenizer or spec.target_model or spec.model
    load_tokenizer(tokenizer)
    if not spec.is_bare_target:
        return spec
    from experiments.http_target import HttpTarget

    try:  # the model its requests name: --target-model as given, else the first /v1/models lists
        served = HttpTarget(spec.target, model=spec.target_model, api_key=key).model
    except Exception as exc:  # an HTTP error, or a body that is not a model list: the wrong URL
        raise BadInput(f"cannot use --target {spec.target}: {type(exc).__name__}: {exc}") from None
    return spec.model_copy(update={"model": served, "target_model": served, "tokenizer": tokenizer})


def record_server(store, sweep_id: int, spec) -> None:
    """An external run records the server it measured as its sweep's device (`server at URL
    (vllm 0.6.3)`, or `server per config from --engine vllm`), which `sweeps` and the exports
    name; a local run records its device when its worker loads the model."""
    from experiments.external import api_key_from_env
    from experiments.http_target import describe_server
    from experiments.provenance import SERVER_DEVICE, server_at, server_per_config

    if not spec.is_external:
        return
    if spec.is_bare_target:
        key = api_key_from_env(spec.api_key_env)
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        where = server_at(describe_server(spec.target, spec.target_model, auth))
    else:
        where = server_per_config(f"--engine {spec.engine}" if spec.engine else "--server-cmd")
    store.set_sweep_device(sweep_id, SERVER_DEVICE, where, spec.dtype)


class ctrl_c_cancels:
    """First Ctrl-C cancels the sweep gracefully (it keeps what finished); a second one aborts."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def __enter__(self) -> None:
        self.previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._handle)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: Any) -> None:
        print("\ncancelling: finishing the current step (Ctrl-C again to abort)", file=sys.stderr)
        self.stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)


def progress_printer():
    is_tty = sys.stderr.isatty()

    def show(p) -> None:
        finished = p.trials_done + p.trials_failed
        width = 30
        bar = "#" * (width * finished // max(p.trials_total, 1))
        eta = "?" if p.eta_s is None else f"{p.eta_s:.0f}s"
        line = (f"[{bar:<{width}}] {finished}/{p.trials_total} failed {p.trials_failed} "
                f"ETA {eta} {p.current_label or ''}")
        print(("\r" + line.ljust(110)) if is_tty else line, end="" if is_tty else "\n",
              file=sys.stderr, flush=True)
    return show


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
def sweeps(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
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
    from experiments.provenance import SERVER_DEVICE

    if s.device == SERVER_DEVICE and s.device_name:  # `mock on server at http://h/v1 (vllm 0.6.3)`
        return {"model": f"{s.model} on {s.device_name}", "device": s.device}
    if _bare_target(s.grid):  # stored before the server was recorded
        served = s.grid.get("target_model") or "the served model"
        return {"model": f"{served} on server at {s.grid['target']}", "device": SERVER_DEVICE}
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
             "measured_on": _measured_on(t.details), "error": t.error} for t in records]


def _bare_target(grid: dict) -> bool:
    """SweepSpec.is_bare_target read off a stored grid (no parse: any stored grid lists)."""
    return bool(grid.get("target")) and not grid.get("server_cmd") and not grid.get("engine")


def _knobs(config, server_batches: bool) -> dict[str, Any]:
    if server_batches:
        return {"policy": "server", "batch_size": None, "max_wait_ms": None,
                "max_num_batched_tokens": None}
    return {"policy": config.policy, "batch_size": config.batch_size,
            "max_wait_ms": config.max_wait_ms, "max_num_batched_tokens": config.max_num_batched_tokens}


def _measured_on(details: dict) -> str | None:
    """The trial's recorded device: a GPU or CPU, or `model at URL (engine version)`."""
    where = (details or {}).get("provenance") or {}
    return where.get("device_name") or where.get("device")


@app.command()
def trials(
    sweep_id: int = typer.Argument(..., help="sweep id (see `tradeoff sweeps`)"),
    format: str = typer.Option("table", "--format", help="table | csv | json"),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """One row per trial of a sweep, with its config and metrics."""
    if format not in ("table", "csv", "json"):
        raise BadInput(f"--format must be table, csv or json, got {format!r}")
    store = open_store(db, create=False)
    sweep = store.get_sweep(sweep_id)
    rows = trial_rows(store.list_trials(sweep.id), _bare_target(sweep.grid))
    if format == "json":
        print_json(rows)
    elif format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else TRIAL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    else:
        print_table(rows, TRIAL_COLUMNS)


@app.command()
def worker(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Run queued sweeps one after another until none is left (the dashboard starts this)."""
    from experiments.runners import run_queued

    done = run_queued(open_store(db), os.getpid())
    print(f"worker: ran {len(done)} sweep(s): {', '.join(fmt(i) for i in done) or '-'}", file=sys.stderr)
