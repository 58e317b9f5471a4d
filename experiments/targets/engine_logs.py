"""A server start that failed, in one line: the engine's own root-cause line from its log, and
the flag or variable that fixes it where the cause is a known one.

Pure text work (tests/experiments/test_engine_logs.py holds real vLLM logs). Engines bury the
cause: vLLM's last line is "Engine core initialization failed. See root cause above", so the
first exception line wins over the last, and argparse's "error:" line over both.
"""

from __future__ import annotations

import re

MAX_CAUSE_CHARS = 300
# "(VllmWorker-0 pid=3641) ERROR 12-06 06:59:04 [multiproc_executor.py:953] " and the like
_PREFIX = re.compile(r"^(\(\S+ pid=\d+\)\s*)?"
                     r"((DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+[\d-]+ [\d:.]+ \[[^\]]*\]\s*)?")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt)): (.+)")
_ARGPARSE = re.compile(r"^\S+: error: (.+)")
_WRAPPERS = ("See root cause above", "Engine core initialization failed")

# (pattern in the cause, what fixes it): the causes users of these engines hit first.
HINTS: tuple[tuple[str, str], ...] = (
    ("Available memory on node", "give the CPU KV cache a size: --engine-env VLLM_CPU_KVCACHE_SPACE=GiB"),
    ("unrecognized arguments", "fix --engine-args (the engine's own --help lists its flags)"),
    ("error: argument ", "fix that argument's value (in --engine-args or the --server-cmd template)"),
    ("No module named", "pass --engine-python PY of the environment the engine is installed in"),
    ("out of memory", "lower --gpu-memory-utilization or --max-model-len through --engine-args"),
    ("Address already in use", "another process holds the port; retry, or stop it"),
    ("max_num_batched_tokens (", "give --max-num-batched-tokens values no smaller than the batch "
                                 "sizes they are paired with"),
)


def strip_prefix(line: str) -> str:
    """A log line without the engine's process tag, level, time and source location."""
    return _PREFIX.sub("", line.strip(), count=1).strip()


def root_cause(log: str) -> str | None:
    """The line that says why the server could not start, or None when the log says nothing."""
    lines = [strip_prefix(line) for line in log.splitlines()]
    for line in lines:
        if match := _ARGPARSE.match(line):
            return _short(f"error: {match.group(1)}")
    causes = [i for i, line in enumerate(lines) if _EXCEPTION.match(line)]
    real = [i for i in causes if not any(w in lines[i] for w in _WRAPPERS)]
    if real or causes:
        first = (real or causes)[0]
        return _short(lines[first] + _validation_detail(lines, first))
    said = [line for line in lines if line and not line.startswith("# ")]  # "# argv" is ours
    return _short(f"last output: {said[-1]}") if said else None


def _validation_detail(lines: list[str], at: int) -> str:
    """pydantic's "N validation error for X" says what was wrong on the line after it."""
    if "validation error" not in lines[at] or at + 1 >= len(lines):
        return ""
    detail = lines[at + 1].split(" [type=")[0]
    return f": {detail}"


def fix_for(cause: str) -> str | None:
    """What fixes a known cause, else None."""
    return next((fix for pattern, fix in HINTS if pattern in cause), None)


def start_failure(what: str, exit_code: int | None, log: str, log_path: str,
                  timeout_s: float | None = None) -> str:
    """One line: what failed, the engine's root cause, the fix, and where the whole log is."""
    if exit_code is not None:
        how = f"exited with code {exit_code}"
    else:
        how = f"did not answer /health within {timeout_s:g} s" if timeout_s else "did not become healthy"
    cause = root_cause(log)
    fix = fix_for(cause) if cause else None
    if fix is None and exit_code is None and timeout_s:
        fix = "give it longer with --server-timeout SECONDS"
    parts = [f"{what} {how}", cause or "it printed nothing", f"fix: {fix}" if fix else None,
             f"log: {log_path}"]
    return "; ".join(p for p in parts if p)


def _short(line: str) -> str:
    return line if len(line) <= MAX_CAUSE_CHARS else line[: MAX_CAUSE_CHARS - 3] + "..."
