"""`tradeoff serve`: the engine behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli import app
from app.exported import exported_caching, exported_scale, from_exported
from app.options import KV_BUDGET
from app.parsing import parse_budget
from engine.config import EngineConfig, SchedulerConfig


@app.command()
def serve(
    model: str = typer.Option("builtin:tiny", help="builtin:tiny, builtin:small, a HF id or a path"),
    policy: str = typer.Option("continuous", help="static | continuous | adaptive"),
    batch_size: int = typer.Option(16, "--batch-size", help="max batch size"),
    max_wait_ms: float = typer.Option(0.0, "--max-wait-ms", help="max batching wait (ms)"),
    max_num_batched_tokens: str | None = typer.Option(
        None, "--max-num-batched-tokens",
        help="prefill token budget per step (continuous only); none = no chunking"),
    host: str = typer.Option("127.0.0.1", help="bind address (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000, help="TCP port"),
    device: str = typer.Option("auto", help="auto | cuda | mps | cpu"),
    dtype: str = typer.Option("auto"),
    kv_budget: int | None = KV_BUDGET,
    ttft_slo_ms: float | None = typer.Option(
        None, "--ttft-slo-ms", help="adaptive policy: the per-request TTFT target it steers by (ms)"),
    tpot_slo_ms: float | None = typer.Option(
        None, "--tpot-slo-ms", help="adaptive policy: the per-request TPOT target it steers by (ms)"),
    config: Path | None = typer.Option(None, "--config", help="YAML from `tradeoff export --format yaml`"),
    replicas: int = typer.Option(1, "--replicas", help="engine replicas (processes) behind a router"),
    router: str | None = typer.Option(
        None, "--router", help="round_robin | least_outstanding | power_of_two | prefix_affinity "
                               "(with --replicas > 1)"),
    prefix_caching: str | None = typer.Option(
        None, "--prefix-caching", help="on | off (default off, or the --config's): reuse the KV of "
        "earlier prompts' blocks (usage.prompt_tokens_details.cached_tokens says how much)"),
    prefix_cache_share: float = typer.Option(
        0.5, "--prefix-cache-share", help="the most of the KV budget cached blocks may hold"),
    in_process: bool = typer.Option(
        False, "--in-process", help="run the engine on a thread of the HTTP server's process instead "
        "of its own process (HTTP work then shares the GIL with engine steps; for comparison)"),
) -> None:
    """Serve a model with the chosen batching config (OpenAI-compatible)."""
    from app.errors import BadInput
    from app.preflight import check_bind
    from server.api import serve as run_server

    if config is not None:
        model, policy, batch_size, max_wait_ms, budget = from_exported(config, model)
        ttft_slo_ms, tpot_slo_ms = _exported_targets(config, ttft_slo_ms, tpot_slo_ms)
        replicas, router = exported_scale(config, replicas, router)
        caching = exported_caching(config, None if prefix_caching is None
                                   else _switch("--prefix-caching", prefix_caching))
    else:
        budget = parse_budget("--max-num-batched-tokens", max_num_batched_tokens)
        caching = _switch("--prefix-caching", prefix_caching or "off")
    sched = SchedulerConfig(policy, batch_size, max_wait_ms, ttft_slo_ms=ttft_slo_ms,
                            tpot_slo_ms=tpot_slo_ms, max_num_batched_tokens=budget,
                            enable_prefix_caching=bool(caching),
                            prefix_cache_share=prefix_cache_share)
    engine_config = EngineConfig(model=model, device=device, dtype=dtype,
                                 kv_budget_tokens=kv_budget)
    router = _checked_router(replicas, router)
    if in_process and replicas > 1:
        raise BadInput("--in-process runs one engine in the server's process; drop it or --replicas")
    # Bound before the model loads: a bad host or a port in use fails at once, as one line.
    with check_bind(host, port) as sock:
        run_server(engine_config, sched, host=host, port=port, sock=sock, replicas=replicas,
                   router=router, in_process=in_process)


def _switch(option: str, text: str) -> bool:
    from app.errors import BadInput

    if text.strip().lower() not in ("on", "off"):
        raise BadInput(f"{option}: {text!r} is not on or off")
    return text.strip().lower() == "on"


def _checked_router(replicas: int, router: str | None) -> str | None:
    """N >= 1, a known router, a router only with N > 1 (default least_outstanding)."""
    from app.errors import BadInput
    from common.vocab import DEFAULT_ROUTER
    from engine.routing import check_replicas

    check_replicas(replicas, router)
    if router is not None and replicas == 1:
        raise BadInput("--router routes between replicas: give --replicas 2 or more, or drop --router")
    return None if replicas == 1 else router or DEFAULT_ROUTER


def _exported_targets(path: Path, ttft_slo_ms: float | None,
                      tpot_slo_ms: float | None) -> tuple[float | None, float | None]:
    """The adaptive policy's SLO targets from an exported config (flags win)."""
    from experiments.export.render import load_exported_config

    cfg = load_exported_config(path.read_text())  # already validated by from_exported
    return (ttft_slo_ms if ttft_slo_ms is not None else cfg.get("ttft_slo_ms"),
            tpot_slo_ms if tpot_slo_ms is not None else cfg.get("tpot_slo_ms"))

