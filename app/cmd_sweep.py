"""`tradeoff sweep`, `sweeps`, `trials` and `worker`: grids of trials into the store."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import typer
import yaml

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
from app.parsing import parse_budgets, parse_list

DB_HELP = "SQLAlchemy URL of the result store (default: $TRADEOFF_DB or sqlite:///tradeoff.db)"


def open_store(db: str | None, create: bool = True):
    """Open the result store (StoreError on a bad or unreachable URL)."""
    from db.store import Store

    return Store(db, create=create)


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
    from experiments.run.runners import runner_for

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
                 **launch_flags(engine_args, engine_env, engine_python, server_timeout, server_cpus),
                 "calibrate": calibrate, **knob_flags(prefix_caching, slo),
                 **lists(policy, batch_sizes, max_wait_ms, concurrency, rate, speedup,
                        max_num_batched_tokens),
                 **_scale_lists(replicas, router),
                 "executor": executor, "ray_address": ray_address}
        store, sweep_id, target = _create(db, spec_from_flags(config, flags))
    runner = runner_for(store, sweep_id, on_progress=progress_printer(), target=target)
    with ctrl_c_cancels(runner.stop):
        status = runner.run()
    _print_outcome(store, sweep_id, status, json_out)
    report_start_failures(runner)


def _create(db: str | None, data: dict[str, Any]):
    """Validate everything, load the model, and only then write: (store, sweep id, target)."""
    from app.preflight import existing_store
    from experiments.predict.estimate import estimate_sweep_s
    from experiments.run.placement import local_target_for
    from experiments.run.sweep import create_sweep, sweep_profile
    from experiments.spec.grid import parse_spec
    from experiments.spec.profiles import load_profile
    from experiments.targets.servers import recorded_calibration, recorded_starts

    spec = parse_spec(data)
    store = existing_store(db)  # URL, reachability, schema; None: a new SQLite file, made below
    prof = sweep_profile(spec, load_profile(spec.load.profile,
                                            store.list_profiles() if store is not None else {}))
    target = None
    if spec.is_external:  # the target answers and the tokenizer loads before any row is written
        spec = check_external(spec)
    if spec.execution.executor == "ray":  # Ray installed, its head answering, the model known
        _check_ray(spec)
    elif not spec.is_external:
        # ModelLoadError (bad input) before any row is written; the first group's replica count
        target = local_target_for(spec, spec.trial_configs()[0].replicas)
    store = store or open_store(db)
    sweep_id = create_sweep(store, spec, prof)
    record_server(store, sweep_id, spec)
    starts = recorded_starts(store, spec) if spec.starts_servers else []
    cost = recorded_calibration(store, spec) if spec.starts_servers else None
    est = estimate_sweep_s(spec, prof, starts, cost)
    steps = ("; trials at the step costs an earlier sweep calibrated" if cost
             else prior_note(spec.target.model))
    print(f"sweep {sweep_id}: {spec.num_trials} trials, estimated {est / 60:.1f} min"
          f"{starts_note(spec, starts)}{steps} (db: {store.display_url})", file=sys.stderr)
    return store, sweep_id, target


def prior_note(model: str) -> str:
    """`; trials at builtin:small's step costs on tradeoff's engine (a prior)` for a directory
    exported from a built-in (another engine serving it may be faster or slower), else ""."""
    from engine.export_marker import exported_builtin

    name = exported_builtin(model)
    return f"; trials at {name}'s step costs on tradeoff's engine (a prior)" if name else ""


def starts_note(spec, measured: list[float]) -> str:
    """`, of which 6 server starts of ~75 s (a prior for vllm)`, or "" when none start."""
    from experiments.predict.estimate import server_starts, start_s_of

    n = server_starts(spec)
    if not n:
        return ""
    source = f"the mean of {len(measured)} measured before" if measured else \
        f"a prior for {spec.target.engine or '--server-cmd'}, until one is measured"
    each = start_s_of(spec, measured)
    return f", of which {n} server start{'s' if n > 1 else ''} of ~{each:.0f} s ({source})"


def _check_ray(spec) -> None:
    from experiments.run.ray_executor import RayUnavailable, check_address
    from experiments.targets.external import load_tokenizer

    try:
        check_address(spec.execution.ray_address)
    except RayUnavailable as exc:
        raise BadInput(str(exc)) from None
    load_tokenizer(spec.target.model)  # an unknown model fails here, not on every worker


def check_external(spec):
    """Check an external run before anything is written; return the spec to store. For a bare
    --target that is the spec naming the model the server serves (as `model` and `target_model`,
    the tokenizer pinned to the one checked here), so the sweep is listed and exported by what
    was measured, never by the tokenizer's default (builtin:tiny)."""
    from app.preflight import check_target_answers
    from experiments.targets.external import api_key_from_env, load_tokenizer

    target = spec.target
    key = api_key_from_env(target.api_key_env)  # set now, or the first trial would fail
    if target.engine is not None:  # its server starts per config, later; it must be installed now
        from experiments.targets.engines import EngineUnavailableError, preset

        try:
            preset(target.engine).check_available(target.engine_python)
        except EngineUnavailableError as exc:
            raise BadInput(str(exc)) from None
    elif target.server_cmd is None:  # a --server-cmd server starts per config, later
        check_target_answers(target.url)
    tokenizer = target.tokenizer or target.target_model or target.model
    load_tokenizer(tokenizer)
    if not spec.is_bare_target:
        return spec
    from experiments.targets.http_target import HttpTarget

    try:  # the model its requests name: --target-model as given, else the first /v1/models lists
        served = HttpTarget(target.url, model=target.target_model, api_key=key).model
    except Exception as exc:  # an HTTP error, or a body that is not a model list: the wrong URL
        raise BadInput(f"cannot use --target {target.url}: {type(exc).__name__}: {exc}") from None
    return spec.copy_with(model=served, target_model=served, tokenizer=tokenizer)


def record_server(store, sweep_id: int, spec) -> None:
    """An external run records the server it measured as its sweep's device (`server at URL
    (vllm 0.6.3)`, or `server per config from --engine vllm`), which `sweeps` and the exports
    name; a local run records its device when its worker loads the model."""
    from experiments.run.provenance import SERVER_DEVICE, server_at, server_per_config
    from experiments.targets.external import api_key_from_env
    from experiments.targets.http_target import describe_server

    if not spec.is_external:
        return
    target = spec.target
    if spec.is_bare_target:
        key = api_key_from_env(target.api_key_env)
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        where = server_at(describe_server(target.url, target.target_model, auth))
    else:
        where = server_per_config(f"--engine {target.engine}" if target.engine else "--server-cmd")
    store.set_sweep_device(sweep_id, SERVER_DEVICE, where, target.dtype)


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
def worker(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Run queued sweeps one after another until none is left (the dashboard starts this)."""
    from experiments.run.runners import run_queued

    done = run_queued(open_store(db), os.getpid())
    print(f"worker: ran {len(done)} sweep(s): {', '.join(fmt(i) for i in done) or '-'}", file=sys.stderr)
