"""The options that say how a started server is launched, shared by `sweep` and `search`: one
definition of each flag, its help and its parsing (issue 19: no option boilerplate per command)."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import typer

from app.errors import BadInput
from app.parsing import parse_slos, parse_switches

ENGINE_ARGS = typer.Option(
    None, "--engine-args",
    help="extra arguments for each --engine server, one quoted string, e.g. "
         "\"--max-model-len 2048 --dtype float32\" (not the flags the grid sets)")
ENGINE_ENV = typer.Option(
    None, "--engine-env",
    help="NAME=VALUE in each started server's environment (repeat it), e.g. VLLM_CPU_KVCACHE_SPACE=2")
ENGINE_PYTHON = typer.Option(
    None, "--engine-python",
    help="python of the environment the --engine lives in: runs `PY -m <its server module>`")
PREFIX_CACHING = typer.Option(
    None, "--prefix-caching", help="comma list of on, off, default: reuse computed prompt blocks "
                                   "(tradeoff's engine: off by default; vLLM "
                                   "--enable-prefix-caching, SGLang's radix cache)")
SLO = typer.Option(
    None, "--slo", help="an absolute SLO in place of the profile's, METRIC[:PCT]=MS (repeat it), "
                        "e.g. --slo ttft_ms=200 --slo tpot_ms:p99=50")
SERVER_CPUS = typer.Option(
    None, "--server-cpus",
    help="CPUs each started server runs on, all its processes (taskset), e.g. 0 or 0-3,8; "
         "tradeoff's load generator runs on the others, so neither waits for the other")
SERVER_TIMEOUT = typer.Option(
    None, "--server-timeout", help="seconds a started server may take to answer /health (default 120)")


def launch_flags(engine_args: str | None, engine_env: list[str] | None, engine_python: str | None,
                 server_timeout: float | None, server_cpus: str | None = None) -> dict[str, Any]:
    """The spec fields of the launch options (None where a flag was not given)."""
    return {"engine_args": None if engine_args is None else split_args(engine_args),
            "engine_env": None if not engine_env else parse_env(engine_env),
            "engine_python": engine_python, "server_timeout_s": server_timeout,
            "server_cpus": None if server_cpus is None else parse_cpus(server_cpus)}


def parse_cpus(text: str) -> list[int]:
    """`0-3,8` -> [0, 1, 2, 3, 8] (taskset's list syntax)."""
    cpus: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise BadInput(f"--server-cpus {text!r}: give CPU numbers and ranges, e.g. 0 or 0-3,8") from None
    if not cpus:
        raise BadInput(f"--server-cpus {text!r}: no CPU in it (a range's end before its start?)")
    return sorted(set(cpus))


def knob_flags(prefix_caching: str | None, slo: list[str] | None) -> dict[str, Any]:
    """The spec fields of --prefix-caching and --slo (None where not given)."""
    return {"prefix_caching": None if prefix_caching is None else
            parse_switches("--prefix-caching", prefix_caching), "slos": parse_slos(slo)}


def split_args(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise BadInput(f"--engine-args: {str(exc).lower()}; fix the quoting") from None


def parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise BadInput(f"--engine-env {pair!r}: give NAME=VALUE, e.g. VLLM_CPU_KVCACHE_SPACE=2")
        env[name] = value
    return env


def report_start_failures(runner: Any) -> None:
    """Each failed server start in one line on stderr, then exit 1 (the rest of the sweep ran)."""
    failures = runner.servers.failures
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    if failures:
        raise typer.Exit(1)
