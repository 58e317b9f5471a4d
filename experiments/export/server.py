"""What an export says of the server that was measured: where the expected figures came from,
the exact command that ran (relaunchable on a fixed port), and vLLM's notes on the knobs it
lacks or sets differently."""

from __future__ import annotations

import re
import shlex

from experiments.run.provenance import is_server


def measured_on(provenance: dict) -> str:
    """`server per config from --engine vllm (vllm 0.32.0)`, `server at URL (...)`, or
    tradeoff's engine: where an export's expected figures were measured."""
    device = provenance["device"]
    started = provenance.get("engine")
    if started and (started.get("name") or started.get("version")):
        said = " ".join(str(v) for v in (started.get("name"), started.get("version")) if v)
        return f"{device} ({said})"
    return device if is_server(device) else "tradeoff's engine"


RELAUNCH_PORT = 8000


def relaunch_command(command: str, port: int = RELAUNCH_PORT) -> str:
    """A measured server command (`NAME=VALUE ... argv`, as ServerProcess.command writes it) on a
    fixed port instead of the free one tradeoff picked; everything else exactly as it ran."""
    words = shlex.split(command)
    n_env = 0
    while n_env < len(words) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[n_env]):
        n_env += 1
    env, argv = words[:n_env], words[n_env:]
    for i, arg in enumerate(argv[:-1]):
        if arg == "--port":
            argv[i + 1] = str(port)
    pairs = [f"{name}={shlex.quote(value)}" for name, _, value in (e.partition("=") for e in env)]
    return " ".join([*pairs, shlex.join(argv)])


def vllm_budget_note(budget: int | None, on_server: bool) -> str:
    if budget is not None:
        return (f"--max-num-batched-tokens {budget} --enable-chunked-prefill: the most tokens one "
                "step processes, long prompts prefilled in chunks next to running decodes, as "
                "tradeoff measured.")
    if on_server:  # an --engine / --server-cmd run: the server's default, not tradeoff's prefill
        return ("No prefill token budget was set, so the server measured used its own default "
                "(vLLM's V1 engine always chunks prefills): set --max-num-batched-tokens to pin it.")
    return ("No prefill token budget was measured (tradeoff prefilled whole prompts in a step of "
            "their own). vLLM's V1 engine always chunks prefills, with its own default budget: "
            "set --max-num-batched-tokens at least the longest prompt to come near, or re-measure "
            "with tradeoff's --max-num-batched-tokens.")


def vllm_wait_note(wait_ms: float) -> str:
    if wait_ms == 0:
        return "max_wait_ms 0 matches vLLM's default: waiting requests join at every step."
    return (f"max_wait_ms {wait_ms:g} has no equivalent among vLLM's stable flags: vLLM admits "
            "waiting requests at every step. The nearest analogue, --scheduler-delay-factor "
            "(older, V0-engine releases), delays new prompts by a multiple of the previous "
            "prompt's latency rather than a fixed time, so it is not set here.")
