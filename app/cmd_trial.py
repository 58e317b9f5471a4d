"""`tradeoff trial`: one config x one load level, printed as JSON or a table."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import typer

from app.cli import app
from app.errors import BadInput
from app.exported import exported_caching, exported_scale, from_exported
from app.options import API_KEY_ENV, KV_BUDGET, TARGET_MODEL
from app.output import print_json, print_pairs
from app.parsing import parse_budget, parse_switches
from common.records import LATENCY_METRICS, SLO, TrialConfig, config_to_dict
from common.vocab import DEFAULT_ROUTER, ROUTERS
from engine.config import EngineConfig, SchedulerConfig
from engine.routing import check_replicas
from experiments.analysis.answer import SLORule, rules_for
from experiments.spec.profiles import load_profile, needs_baseline, resolve_slos


def build_trial_config(policy: str, batch_size: int, max_wait_ms: float,
                       concurrency: int | None, rate: float | None, burstiness: float,
                       arrival, speedup: float | None = None,
                       max_num_batched_tokens: int | None = None,
                       prefix_caching: bool | None = None) -> TrialConfig:
    """Validate the knobs and the load (one of concurrency / rate / speedup, else the profile's)."""
    # raises ConfigError on bad knobs
    SchedulerConfig(policy, batch_size, max_wait_ms, max_num_batched_tokens=max_num_batched_tokens)
    if sum(x is not None for x in (concurrency, rate, speedup)) > 1:
        raise BadInput("give one of --concurrency (closed loop), --rate (open loop) or "
                       "--speedup (trace replay), not both")
    if concurrency is not None and concurrency < 1:
        raise BadInput(f"--concurrency must be >= 1, got {concurrency}")
    if rate is not None and not 0 < rate < math.inf:
        raise BadInput(f"--rate must be a finite number > 0 requests/s, got {rate}")
    if speedup is not None and not (speedup > 0 and speedup != float("inf")):
        raise BadInput(f"--speedup must be a finite number > 0 (2 = twice as fast), got {speedup}")
    if speedup is not None and arrival.mode != "trace":
        raise BadInput("--speedup needs a trace profile (azure-conv, azure-code, a .csv or "
                       ".jsonl trace); use --rate or --concurrency for this profile")
    if not 0 < burstiness < math.inf:
        raise BadInput(f"--burstiness must be a finite number > 0 (1 = Poisson), got {burstiness}")
    if concurrency is None and rate is None and speedup is None:  # the profile's own load
        if arrival.mode == "closed":
            concurrency = arrival.concurrency
        elif arrival.mode == "trace":
            speedup = arrival.speedup
        else:
            rate, burstiness = arrival.rate, arrival.burstiness
    return TrialConfig(policy, batch_size, max_wait_ms, concurrency=concurrency, rate=rate,
                       burstiness=burstiness if rate is not None else 1.0, speedup=speedup,
                       max_num_batched_tokens=max_num_batched_tokens, prefix_caching=prefix_caching)


def with_replicas(config: TrialConfig, replicas: int, router: str | None, external: bool) -> TrialConfig:
    """Validate --replicas/--router (N >= 1, a known router, only with N > 1, local engines only)."""
    check_replicas(replicas, router)
    if router is not None and replicas == 1:
        raise BadInput("--router routes between replicas: give --replicas 2 or more, or drop --router")
    if replicas > 1 and external:
        raise BadInput("--replicas starts local engine replicas; an external --target scales itself")
    if replicas == 1:
        return config
    return dataclasses.replace(config, replicas=replicas, router=router or DEFAULT_ROUTER)


def trial_json(config: TrialConfig, metrics: dict, model: str, profile: str) -> dict:
    """The stable `tradeoff trial --json` object."""
    return {"config": config_to_dict(config), "model": model, "profile": profile, **metrics}


def _print_table(out: dict) -> None:
    pairs = [(k, out[k]) for k in ("model", "profile")] + list(out["config"].items())
    if out.get("measured_on"):
        pairs.insert(1, ("measured on", out["measured_on"]))
    pairs += [(k, out[k]) for k in ("requests_completed", "requests_failed", "duration_s",
                                    "requests_per_s", "output_tokens_per_s", "total_tokens_per_s",
                                    "goodput_rps", "slo_attainment", "mean_batch_size",
                                    "peak_memory_mb", "saturated", "client_bound")]
    lag = out.get("client_lag_ms") or {}
    pairs += [("client send lag p50/p99/max (ms)",
               "/".join(f"{lag[s]:.2f}" for s in ("p50", "p99", "max")) if lag else None)]
    if out.get("client_bound"):
        pairs.append(("client_bound_reason", out.get("client_bound_reason")))
    trace = (out.get("details") or {}).get("trace")
    if trace:
        pairs += [("trace window (s)", f"{trace['window_start_s']:g}-{trace['window_end_s']:g}"),
                  ("requests replayed", trace["requests_replayed"])]
    roofline = out.get("roofline_fraction") or {}
    pairs += [(f"roofline_{phase}", roofline.get(phase)) for phase in ("decode", "prefill")]
    pairs += [("SLO", SLORule(SLO(r["metric"], r["percentile"], r["threshold_ms"]), r["rule"]).text)
              for r in out.get("slo_rules", [])]
    print_pairs(pairs)
    print()
    print(f"{'latency (ms)':14}" + "".join(f"{s:>10}" for s in ("p50", "p90", "p95", "p99", "mean")))
    for metric in LATENCY_METRICS:
        dist = out.get(metric) or {}
        print(f"{metric:14}" + "".join(  # an unmeasured value is "-", never nan
            f"{dist[s]:>10.2f}" if dist.get(s) is not None else f"{'-':>10}"
            for s in ("p50", "p90", "p95", "p99", "mean")))


@app.command()
def trial(
    model: str = typer.Option("builtin:tiny", help="builtin:tiny, builtin:small, a HF id or a local path"),
    profile: str = typer.Option(
        "chat", help="built-in profile name, a profile .yaml, or a trace (.csv, .jsonl) to replay"),
    # Knob defaults are applied below: a --target refuses knobs given to it (its server batches
    # by its own settings), so "not given" must be told apart from the default.
    policy: str | None = typer.Option(None, help="static | continuous | adaptive (default continuous)"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="max batch size (default 8)"),
    max_wait_ms: float | None = typer.Option(
        None, "--max-wait-ms", help="max batching wait in ms (default 0)"),
    max_num_batched_tokens: str | None = typer.Option(
        None, "--max-num-batched-tokens",
        help="prefill token budget per step (chunked prefill, continuous only); none = no chunking"),
    prefix_caching: str | None = typer.Option(
        None, "--prefix-caching", help="on | off | default: reuse computed prompt blocks "
                                       "(tradeoff's engine: off by default)"),
    concurrency: int | None = typer.Option(None, help="closed loop: virtual users"),
    rate: float | None = typer.Option(None, help="open loop: requests/s"),
    burstiness: float = typer.Option(1.0, help="open loop gamma shape (1 = Poisson)"),
    speedup: float | None = typer.Option(
        None, help="trace profiles: replay this many times faster (the trace's load axis)"),
    trace_start: float | None = typer.Option(
        None, "--trace-start", help="trace profiles: start the window this many seconds into the trace"),
    requests: int = typer.Option(64, help="measured requests (warm-up excluded; trace profiles: "
                                 "the window decides)"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cuda | mps | cpu"),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
    kv_budget: int | None = KV_BUDGET,
    duration: float | None = typer.Option(
        None, help="stop the trial after this many seconds (trace profiles: replay this many "
        "seconds of the trace, then let the requests finish)"),
    config: Path | None = typer.Option(None, "--config", help="YAML from `tradeoff export --format yaml`"),
    target: str | None = typer.Option(
        None, "--target", help="OpenAI-compatible base URL to drive instead of the local engine "
        "(it batches by its own settings: no knob flags)"),
    target_model: str | None = TARGET_MODEL,
    api_key_env: str | None = API_KEY_ENV,
    tokenizer: str | None = typer.Option(None, help="tokenizer for --target (default: --model)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
    replicas: int = typer.Option(1, "--replicas", help="engine replicas (processes) behind a router"),
    router: str | None = typer.Option(
        None, "--router", help=f"{' | '.join(ROUTERS)} (with --replicas > 1)"),
) -> None:
    """Run one trial: one batching config at one load level."""
    if target is not None:
        from experiments.spec.grid import SERVER_OWN_KNOBS

        _refuse_server_knobs(**{"--policy": policy, "--batch-size": batch_size, "--max-wait-ms":
                                max_wait_ms, "--max-num-batched-tokens": max_num_batched_tokens,
                                "--prefix-caching": prefix_caching, "--config": config})
        own = {key: values[0] for key, values in SERVER_OWN_KNOBS.items()}  # run with, never shown
        policy, batch_size, max_wait_ms = own["policies"], own["batch_sizes"], own["max_wait_ms"]
    if config is not None:
        model, policy, batch_size, max_wait_ms, budget = from_exported(config, model)
        replicas, router = exported_scale(config, replicas, router)
    else:
        budget = parse_budget("--max-num-batched-tokens", max_num_batched_tokens)
    if requests < 1:
        raise BadInput(f"--requests must be >= 1, got {requests}")
    if duration is not None and not 0 < duration < math.inf:
        raise BadInput(f"--duration must be a finite number of seconds > 0, got {duration}")
    prof = load_profile(profile)
    caching = _caching(prefix_caching)
    if config is not None:
        caching = exported_caching(config, caching)
    trial_config = build_trial_config(policy or "continuous", 8 if batch_size is None else batch_size,
                                       max_wait_ms or 0.0, concurrency, rate, burstiness,
                                       prof.arrival, speedup, budget, caching)
    if trial_config.speedup is not None:  # --duration sets the replay window instead
        prof, duration = _trace_window(prof, trial_config.speedup, duration, trace_start)
    trial_config = with_replicas(trial_config, replicas, router, external=target is not None)
    if target is not None:
        remote = _connect(target, target_model, tokenizer or target_model or model, api_key_env)
    else:
        remote = None
    out = run_one_trial(EngineConfig(model=model, device=device, dtype=dtype,
                                     kv_budget_tokens=kv_budget, seed=seed),
                        prof, trial_config, requests, seed, duration, remote)
    print_json(out) if json_out else _print_table(out)


def _caching(text: str | None) -> bool | None:
    """--prefix-caching on | off | default: one setting (a sweep takes a list)."""
    if text is None:
        return None
    values = parse_switches("--prefix-caching", text)
    if len(values) != 1:
        raise BadInput("--prefix-caching: a trial runs one setting; give on or off (a sweep "
                       "takes a list)")
    return values[0]


def _refuse_server_knobs(**given: object) -> None:
    """A --target batches by its own settings: a knob given for it would only be a label."""
    flags = [flag for flag, value in given.items() if value is not None]
    if flags:
        one = len(flags) == 1
        raise BadInput(f"{'/'.join(flags)} describe{'s' * one} the server's own batching, which "
                       f"tradeoff does not control for --target URL; drop {'it' if one else 'them'} "
                       "(the trial measures the server as it runs), or sweep knobs on a server "
                       "started per config with `tradeoff sweep --server-cmd` or `--engine`")


def _trace_window(prof, speedup: float, duration: float | None, start: float | None):
    """The profile with its trace window set, and the trial's deadline (window plus drain)."""
    from experiments.run.trial import trace_deadline_s, with_trace_window
    from experiments.spec.traces import TraceError, prepare_replay

    if duration is not None and not duration > 0:
        raise BadInput(f"--duration must be > 0 s, got {duration}")
    if start is not None and not start >= 0:
        raise BadInput(f"--trace-start must be >= 0 s, got {start}")
    prof = with_trace_window(prof, duration, start)
    try:
        prepare_replay(prof.arrival, speedup)  # an empty window is bad input, found before loading
    except TraceError as exc:
        raise BadInput(f"profile '{prof.name}': {exc}") from None
    return prof, trace_deadline_s(prof.arrival.duration_s)


def _connect(url: str, model: str | None, tokenizer: str, api_key_env: str | None):
    from app.preflight import check_target_answers
    from experiments.targets.external import (
        ExternalTarget,
        TargetSetupError,
        api_key_from_env,
        load_tokenizer,
    )

    key = api_key_from_env(api_key_env)
    check_target_answers(url)  # seconds, before the tokenizer look-up (which may be slow)
    tok = load_tokenizer(tokenizer)
    try:
        return ExternalTarget.connect(url, model, tok, key)
    except TargetSetupError as exc:
        raise BadInput(str(exc)) from None
    except Exception as exc:  # connection refused, bad answers: the URL is wrong or the server down
        raise BadInput(f"cannot use --target {url}: {type(exc).__name__}: {exc}") from None


def run_one_trial(engine_config: EngineConfig, prof, trial_config: TrialConfig, requests: int,
                  seed: int, duration: float | None, remote=None) -> dict:
    """Load the model (or use `remote`), measure the baseline if the SLOs need it, run the trial."""
    from experiments.run.provenance import server_at
    from experiments.run.trial import measure_baseline, run_trial

    target = remote or _local_target(engine_config, trial_config)
    placement = target.placement()
    try:
        kwargs = target.request_kwargs()
        baseline = None
        if needs_baseline(prof):
            baseline = measure_baseline(target.engine, prof, seed=seed, **kwargs)
        slos = resolve_slos(prof, baseline)
        result = run_trial(target.engine, trial_config, prof, requests, seed=seed,
                           slos=slos, max_duration_s=duration,
                           **kwargs, **target.memory_kwargs())
        server = remote.engine.describe() if remote is not None else None
    finally:
        target.close()
    out = trial_json(trial_config, result.metrics.to_dict(), engine_config.model, prof.name)
    # Each threshold with where it came from: `p90 TTFT <= 70 ms = 5 x unloaded p50 14 ms`.
    multiples = {m: spec.max_x_baseline for m, spec in prof.slos.items() if spec.max_x_baseline}
    out["slo_rules"] = [r.to_dict() for r in rules_for(slos, multiples)]
    if trial_config.replicas > 1:
        out["placement"] = placement
    if server is not None:  # what was measured: the server with its own knobs, not ours
        out.update(model=server.model, target=server.url, server=server.to_dict(),
                   measured_on=server_at(server),
                   config={**out["config"], "policy": "server", "batch_size": None,
                           "max_wait_ms": None, "max_num_batched_tokens": None})
    return out


def _local_target(engine_config: EngineConfig, trial_config: TrialConfig):
    """One in-process engine, or N replica processes behind the trial's router."""
    if trial_config.replicas == 1:
        from experiments.targets.local import LocalTarget

        return LocalTarget.start(engine_config)
    from experiments.targets.replica_target import ReplicaTarget

    return ReplicaTarget.start(engine_config, trial_config.replicas, trial_config.router)
