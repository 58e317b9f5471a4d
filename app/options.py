"""The options `sweep`, `search` and `trial` (and the store commands) share: each flag declared
once with its help, and the parsing of the list flags into spec fields. The launch options
(--engine-args, --server-cpus, ...) are in engine_options.py."""

from __future__ import annotations

from typing import Any

import typer

from app.parsing import parse_budgets, parse_list

DB_HELP = "SQLAlchemy URL of the result store (default: $TRADEOFF_DB or sqlite:///tradeoff.db)"
DB = typer.Option(None, "--db", help=DB_HELP)
JSON_AT_END = typer.Option(False, "--json", help="print one JSON object at the end")

# The knob lists of a grid (sweep) or a search space (search). No defaults here: a bare --target
# refuses knobs it was given (its server batches by itself); otherwise the spec's defaults apply.
POLICIES = typer.Option(None, "--policy", help="comma list: static,continuous,adaptive "
                                               "(default static,continuous)")
BATCH_SIZES = typer.Option(None, "--batch-sizes", help="comma list, e.g. 1,4,16 (the default)")
MAX_WAIT_MS = typer.Option(None, "--max-wait-ms", help="comma list in ms, e.g. 0,10 (the default)")
BUDGETS = typer.Option(
    None, "--max-num-batched-tokens",
    help="comma list of prefill token budgets (chunked prefill, continuous only), e.g. 64,256,none")

# Where the engine runs and how it loads the model; None: the spec's default.
SEED = typer.Option(None, "--seed")
DEVICE = typer.Option(None, "--device", help="auto | cuda | mps | cpu")
DTYPE = typer.Option(None, "--dtype")
KV_BUDGET = typer.Option(None, "--kv-budget", help="KV-cache budget in tokens")
BURSTINESS = typer.Option(None, "--burstiness", help="open loop gamma shape (1 = Poisson)")

# An external target.
TARGET_MODEL = typer.Option(None, "--target-model", help="model name on the target")
API_KEY_ENV = typer.Option(None, "--api-key-env",
                           help="env var holding the target's API key (never stored)")
TOKENIZER = typer.Option(None, "--tokenizer",
                         help="tokenizer for external targets (default: --model)")
ENGINE = typer.Option(
    None, "--engine", help="start this engine's server per config: vllm | sglang | tgi | llamacpp")


def spec_fields(*, model: str | None, profile: str | None, burstiness: float | None,
                requests: int | None, seed: int | None, device: str | None, dtype: str | None,
                kv_budget: int | None, name: str | None, target_url: str | None,
                target_model: str | None, api_key_env: str | None, tokenizer: str | None,
                server_cmd: str | None, engine: str | None) -> dict[str, Any]:
    """The spec fields of the options `sweep` and `search` share, by the spec's names."""
    return {"model": model, "profile": profile, "burstiness": burstiness, "requests": requests,
            "seed": seed, "device": device, "dtype": dtype, "kv_budget_tokens": kv_budget,
            "name": name, "target": target_url, "target_model": target_model,
            "api_key_env": api_key_env, "tokenizer": tokenizer, "server_cmd": server_cmd,
            "engine": engine}


def lists(policy, batch_sizes, max_wait_ms, concurrency, rate, speedup=None,
          budgets=None) -> dict[str, Any]:
    """The spec fields of the comma-list options (None where a flag was not given)."""
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


def scale_lists(replicas: str | None, router: str | None) -> dict[str, Any]:
    """The spec fields of --replicas and --router (None where not given)."""
    return {
        "replicas": None if replicas is None else parse_list("--replicas", replicas, int),
        "routers": None if router is None else parse_list("--router", router, str),
    }
