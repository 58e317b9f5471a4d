"""The one entry point for running sweeps and capacity searches, for the CLI and the Run page:
the checks that must pass before anything is written (the spec, its profile and SLOs, the engine
installed, the Ray head answering, an external target answering, the model loading), then the
steps that store a sweep and run it.

`tradeoff sweep` and `tradeoff search` call check_sweep/check_search, start_sweep/start_search and
run_to_end; the Run page calls check_spec and check_placement, and the launcher queue_sweep.
Every failure is bad input (exit 2 on the CLI; beside its field on the Run page), said before the
store is written or created. Imports of the library are local: quick commands pay for none.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.errors import BadInput

UserProfiles = Callable[[], dict[str, str]]  # a store's saved profiles, read only when needed


@dataclass(frozen=True)
class Checked:
    """A run that passed every check: nothing written yet."""

    spec: Any
    profile: Any  # as the sweep runs it: the spec's SLOs, a trace's replay window
    store: Any  # the existing store; None: a new SQLite file, created when the run is stored
    target: Any = None  # the local engine, loaded; None for external targets and Ray


def open_store(db: str | None, create: bool = True):
    """Open the result store (StoreError on a bad or unreachable URL)."""
    from db.store import Store

    return Store(db, create=create)


def user_profiles(db: str | None) -> dict[str, str]:
    """Profiles saved in an existing store; none when there is no store yet (none is created)."""
    from db.errors import StoreError

    try:
        return open_store(db, create=False).list_profiles()
    except StoreError:
        return {}


def profile_of(spec, saved: UserProfiles):
    """The profile a spec names, as its sweep runs it (ProfileError, GridError). `saved` is
    called only for a name that is neither built in nor a path: it may open the store."""
    from experiments.run.sweep import sweep_profile
    from experiments.spec.profiles import ProfileError, load_profile

    try:
        prof = load_profile(spec.load.profile)
    except ProfileError:
        if spec.load.profile.endswith((".yaml", ".yml")) or "/" in spec.load.profile:
            raise
        prof = load_profile(spec.load.profile, saved())
    return sweep_profile(spec, prof)  # GridError: e.g. a search of a profile without SLOs


def check_spec(data: dict[str, Any], saved: UserProfiles) -> tuple[Any, Any]:
    """The validated spec and its profile (GridError naming the field, ProfileError)."""
    from experiments.spec.grid import parse_spec

    spec = parse_spec(data)
    return spec, profile_of(spec, saved)


def check_placement(spec) -> None:
    """Where its trials run, checked in seconds: the Ray head answers, the engine is installed."""
    if spec.execution.executor == "ray":
        check_ray_address(spec.execution.ray_address)
    else:
        check_engine(spec.target.engine, spec.target.engine_python)


def check_ray_address(address: str | None) -> None:
    """A TCP connect to the head (seconds at most): a wrong address is said now, not later."""
    from experiments.run.ray_executor import RayUnavailable, check_address

    try:
        check_address(address)
    except RayUnavailable as exc:
        raise BadInput(str(exc)) from None


def check_engine(engine: str | None, python: str | None) -> None:
    """An --engine's server starts per config, later: it must be installed now."""
    if engine is None:
        return
    from experiments.targets.engines import EngineUnavailableError, preset

    try:
        preset(engine).check_available(python)
    except EngineUnavailableError as exc:
        raise BadInput(str(exc)) from None


def check_sweep(db: str | None, data: dict[str, Any]) -> Checked:
    """Every check of `tradeoff sweep`, the local model loaded; nothing written."""
    from app.preflight import existing_store
    from experiments.run.placement import local_target_for
    from experiments.spec.grid import parse_spec

    spec = parse_spec(data)
    store = existing_store(db)  # URL, reachability, schema; None: a new SQLite file, made later
    prof = profile_of(spec, lambda: store.list_profiles() if store is not None else {})
    target = None
    if spec.is_external:  # the target answers and the tokenizer loads before any row is written
        spec = check_external(spec)
    if spec.execution.executor == "ray":  # Ray installed, its head answering, the model known
        check_ray(spec)
    elif not spec.is_external:
        # ModelLoadError (bad input) before any row is written; the first group's replica count
        target = local_target_for(spec, spec.trial_configs()[0].replicas)
    return Checked(spec, prof, store, target)


def check_search(db: str | None, data: dict[str, Any], saved: UserProfiles) -> Checked:
    """Every check of `tradeoff search`, the local model loaded; nothing written (not even a
    new db file). `saved` is read only for a profile name that is not built in."""
    from app.preflight import existing_store
    from experiments.run.placement import local_target_for

    spec, prof = check_spec(_drop_none(data), saved)
    if not spec.knob_configs():
        raise BadInput("the search space is empty: give at least one policy, batch size and wait")
    store = existing_store(db)  # URL, reachability, schema; None: a new SQLite file, made later
    if spec.is_external:  # the target answers (or the template is sound), the tokenizer loads
        return Checked(check_external(spec), prof, store)  # a bare --target's names its model
    # The model first: a bad name is one line of stderr (exit 2), before any progress output.
    return Checked(spec, prof, store, local_target_for(spec))


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if v is not None}
    if isinstance(out.get("search"), dict):
        out["search"] = _drop_none(out["search"])
    return out


def check_ray(spec) -> None:
    """Ray installed, its head answering, and the model known here, not on every worker."""
    from experiments.targets.external import load_tokenizer

    check_ray_address(spec.execution.ray_address)
    load_tokenizer(spec.target.model)


def check_external(spec):
    """Check an external run before anything is written; return the spec to store. For a bare
    --target that is the spec naming the model the server serves (as `model` and `target_model`,
    the tokenizer pinned to the one checked here), so the sweep is listed and exported by what
    was measured, never by the tokenizer's default (builtin:tiny)."""
    from app.preflight import check_target_answers
    from experiments.targets.external import api_key_from_env, load_tokenizer

    key = api_key_from_env(spec.target.api_key_env)  # set now, or the first trial would fail
    if spec.target.engine is not None:
        check_engine(spec.target.engine, spec.target.engine_python)
    elif spec.target.server_cmd is None:  # a --server-cmd server starts per config, later
        check_target_answers(spec.target.url)
    tokenizer = spec.target.tokenizer or spec.target.target_model or spec.target.model
    load_tokenizer(tokenizer)
    if not spec.is_bare_target:
        return spec
    from experiments.targets.http_target import HttpTarget

    try:  # the model its requests name: --target-model as given, else the first /v1/models lists
        served = HttpTarget(spec.target.url, model=spec.target.target_model, api_key=key).model
    except Exception as exc:  # an HTTP error, or a body that is not a model list: the wrong URL
        raise BadInput(f"cannot use --target {spec.target.url}: {type(exc).__name__}: {exc}") from None
    return spec.copy_with(model=served, target_model=served, tokenizer=tokenizer)


def start_sweep(db: str | None, checked: Checked) -> tuple[Any, int]:
    """Store the checked sweep and say its size and estimated duration: (store, sweep id)."""
    from experiments.predict.estimate import estimate_sweep_s
    from experiments.targets.servers import recorded_calibration, recorded_starts

    spec, prof = checked.spec, checked.profile
    store, sweep_id = _store_run(db, checked)
    starts = recorded_starts(store, spec) if spec.starts_servers else []
    cost = recorded_calibration(store, spec) if spec.starts_servers else None
    est = estimate_sweep_s(spec, prof, starts, cost)
    steps = ("; trials at the step costs an earlier sweep calibrated" if cost
             else prior_note(spec.target.model))
    print(f"sweep {sweep_id}: {spec.num_trials} trials, estimated {est / 60:.1f} min"
          f"{starts_note(spec, starts)}{steps} (db: {store.display_url})", file=sys.stderr)
    return store, sweep_id


def start_search(db: str | None, checked: Checked) -> tuple[Any, int]:
    """Estimate the checked search, then store it and say so: (store, sweep id)."""
    from experiments.predict.estimate import estimate_search_s
    from experiments.targets.servers import recorded_starts

    spec, store = checked.spec, checked.store
    budget = f"budget {spec.search.budget_s / 60:g} min"
    if spec.is_external:
        starts = recorded_starts(store, spec) if store is not None and spec.starts_servers else []
        estimate = ("no estimate of its trials (an external server's speed is unknown "
                    f"until measured){starts_note(spec, starts)}")
    else:
        print("estimating the search on simulated trials...", file=sys.stderr)
        est_s, est_trials = estimate_search_s(spec, checked.profile)
        estimate = f"~{est_trials} trials, estimated {est_s / 60:.1f} min"
    store, sweep_id = _store_run(db, checked)
    print(f"search {sweep_id}: {len(spec.knob_configs())} configs, {estimate} ({budget}; "
          f"db: {store.display_url})", file=sys.stderr)
    return store, sweep_id


def _store_run(db: str | None, checked: Checked) -> tuple[Any, int]:
    from experiments.run.sweep import create_sweep

    store = checked.store or open_store(db)
    sweep_id = create_sweep(store, checked.spec, checked.profile)
    record_server(store, sweep_id, checked.spec)  # an external server, as the sweep's device
    return store, sweep_id


def queue_sweep(store, spec) -> int:
    """Store a sweep checked on the Run page, queued for a worker; its id. An external run
    records the server it measures now, as the CLI's does (a worker never does)."""
    from experiments.run.sweep import create_sweep

    sweep_id = create_sweep(store, spec, profile_of(spec, store.list_profiles))
    record_server(store, sweep_id, spec)
    return sweep_id


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


def record_server(store, sweep_id: int, spec) -> None:
    """An external run records the server it measured as its sweep's device (`server at URL
    (vllm 0.6.3)`, or `server per config from --engine vllm`), which `sweeps` and the exports
    name; a local run records its device when its worker loads the model."""
    from experiments.run.provenance import SERVER_DEVICE, server_at, server_per_config
    from experiments.targets.external import api_key_from_env
    from experiments.targets.http_target import describe_server

    if not spec.is_external:
        return
    if spec.is_bare_target:
        key = api_key_from_env(spec.target.api_key_env)
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        where = server_at(describe_server(spec.target.url, spec.target.target_model, auth))
    else:
        where = server_per_config(f"--engine {spec.target.engine}" if spec.target.engine else "--server-cmd")
    store.set_sweep_device(sweep_id, SERVER_DEVICE, where, spec.target.dtype)


def run_to_end(store, sweep_id: int, target=None) -> tuple[Any, str]:
    """Run a stored sweep or search here, progress on stderr, Ctrl-C cancelling it cleanly:
    (runner, final status)."""
    from app.progress import ctrl_c_cancels, progress_printer
    from experiments.run.runners import runner_for

    runner = runner_for(store, sweep_id, on_progress=progress_printer(), target=target)
    with ctrl_c_cancels(runner.stop):
        status = runner.run()
    return runner, status
