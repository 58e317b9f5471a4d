"""The `--server-cmd` template: split into argv like a shell would, but no shell ever runs it.

The template is split first and each placeholder is substituted inside its own argument, so a
value can never add an argument, a pipe or a redirection. Pure functions: the sweep spec
checks a template here before anything is written, the runner renders it per server config.
"""

from __future__ import annotations

import shlex

from common.records import TrialConfig

PLACEHOLDERS = ("batch_size", "max_wait_ms", "policy", "port", "max_num_batched_tokens")
_EXAMPLE = "e.g. 'vllm serve MODEL --port {port} --max-num-seqs {batch_size}'"


class ServerCmdError(ValueError):
    """A template that cannot give a command line; callers prefix the option's name."""


def server_cmd_values(config: TrialConfig, port: int) -> dict[str, int | str]:
    """What each placeholder stands for in one server's command (ints stay ints: {port:d}).
    {max_num_batched_tokens} is empty without a budget (the `--engine` presets omit the flag)."""
    return {"batch_size": config.batch_size, "max_wait_ms": f"{config.max_wait_ms:g}",
            "policy": config.policy, "port": port,
            "max_num_batched_tokens": config.max_num_batched_tokens or ""}


def split_server_cmd(template: str) -> list[str]:
    """The template's arguments, split by shell quoting rules; ServerCmdError if it cannot be."""
    try:
        args = shlex.split(template)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise ServerCmdError(f"{str(exc).lower()} in the template; fix the quoting") from None
    if not args:
        raise ServerCmdError(f"the template is empty; give the server's command line, {_EXAMPLE}")
    return args


def render_server_cmd(template: str, config: TrialConfig, port: int) -> list[str]:
    """The argv for `config`: split first, then each placeholder filled in its own argument."""
    values = server_cmd_values(config, port)
    return [_fill(arg, values) for arg in split_server_cmd(template)]


def check_server_cmd(template: str) -> None:
    """Refuse a template that could never start a server (bad quoting or placeholder, no port)."""
    sample = TrialConfig("continuous", 1, 0.0, concurrency=1)
    if render_server_cmd(template, sample, 8000) == render_server_cmd(template, sample, 8001):
        raise ServerCmdError("the template has no {port} placeholder: tradeoff picks a free port "
                             f"for each server and waits for it there; {_EXAMPLE}")


def _fill(arg: str, values: dict[str, int | str]) -> str:
    try:
        return arg.format(**values)
    except KeyError as exc:
        bad = f"{{{exc.args[0]}}}"
    except IndexError:
        bad = "{} (a positional placeholder)"
    except ValueError as exc:  # a lone { or }, or a format spec on a text value
        raise ServerCmdError(f"cannot fill in {arg!r} ({exc}); write a literal brace as "
                             "{{ or }}") from None
    known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    raise ServerCmdError(f"unknown placeholder {bad}; use {known}") from None
