"""External targets: an OpenAI-compatible server under test, started per server config when the
sweep has a `--server-cmd`, driven by the same load generator as the in-process engine."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.records import TrialConfig
from experiments.run.provenance import SERVER_DEVICE
from experiments.targets.engine_logs import start_failure
from experiments.targets.http_target import HttpTarget, wait_for_health
from experiments.targets.server_cmd import ServerCmdError, render_server_cmd

STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 15


class TargetSetupError(RuntimeError):
    """The external server could not be started or reached; the message shows why."""


def load_tokenizer(name: str) -> Any:
    """The tokenizer prompts are built with: a built-in's, or a Hugging Face one by id or path.

    As for models, an id is looked up in the local cache only when the hub does not answer a
    quick probe, so an unknown id fails in seconds instead of after minutes of retries."""
    from engine.models import ModelLoadError, build_byte_tokenizer, builtin_names, can_reach_hub

    if name.startswith("builtin:"):
        if name not in builtin_names():
            raise ModelLoadError(f"unknown tokenizer {name!r}; use {', '.join(builtin_names())}, "
                                 "a local path or a hub id")
        return build_byte_tokenizer()
    is_offline = not os.path.isdir(name) and not can_reach_hub()
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, local_files_only=is_offline)
    except Exception as exc:
        where = " (the hub is unreachable and it is not in the local cache)" if is_offline else ""
        raise ModelLoadError(f"cannot load tokenizer {name!r}{where}: {type(exc).__name__}; "
                             "pass --tokenizer with a local path or builtin:tiny") from None


def api_key_from_env(var: str | None) -> str | None:
    """The API key from the named environment variable; never stored anywhere."""
    if var is None:
        return None
    key = os.environ.get(var)
    if not key:
        raise TargetSetupError(f"--api-key-env {var}: the variable is not set; export it first")
    return key


@dataclass(frozen=True)
class ServedFacts:
    """A server as a trial's device: `server`, and `model at URL (engine version)`."""

    device: str
    device_name: str


@dataclass
class ExternalTarget:
    """An HttpTarget plus what trials need to know about the server's model."""

    engine: HttpTarget
    tokenizer: Any

    @classmethod
    def connect(cls, base_url: str, model: str | None, tokenizer: Any,
                api_key: str | None = None) -> ExternalTarget:
        """Connect to a running server (its first model unless `model` is given) and ask what it
        runs now, while it is idle: after a heavy trial the short probe could time out."""
        engine = HttpTarget(base_url, model=model, api_key=api_key, tokenizer=tokenizer)
        engine.describe()
        return cls(engine, tokenizer)

    def request_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of run_trial that describe the model (from its tokenizer)."""
        special = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id,
                   self.tokenizer.bos_token_id} - {None}
        max_context = getattr(self.tokenizer, "model_max_length", 0)
        return {"vocab_size": len(self.tokenizer),
                "max_context_tokens": max_context if 0 < max_context < 1 << 20 else 4096,
                "avoid_ids": sorted(special)}

    def memory_kwargs(self) -> dict[str, Any]:
        """An external server's memory is not visible from the client."""
        return {}

    @property
    def loaded(self) -> ServedFacts:
        """What ran the trials, in the shape sweeps record for a loaded model: each trial's
        provenance (`measure.with_provenance`) then names this server, its model and version."""
        return ServedFacts(SERVER_DEVICE, self.engine.describe().label)

    def num_replicas(self) -> int:
        """A server scales itself: to the client it is one engine."""
        return 1

    def placement(self) -> None:
        """A server's own replicas are not visible from the client."""
        return None

    def close(self) -> None:
        self.engine.close()


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(argv: list[str], cpus: list[int] | None) -> list[str]:
    """`argv` run on `cpus` only, every process it starts included (`taskset -c 0,1 ...`: the
    command says so, and a relaunch of it is pinned the same way); unchanged without cpus."""
    return argv if not cpus else ["taskset", "-c", ",".join(str(c) for c in sorted(set(cpus))), *argv]


class ServerProcess:
    """One server started from the command template or an engine preset; stopped with its whole
    process group. Its output goes to `log_path` (kept: a trial links to the log of its server);
    `start_s` is how long it took to answer /health."""

    def __init__(self, template: str | None, config: TrialConfig, health_timeout_s: float = 120.0,
                 argv_for: Callable[[int], list[str]] | None = None, env: dict[str, str] | None = None,
                 log_path: Path | None = None, label: str = "server",
                 cpus: list[int] | None = None) -> None:
        self.port = free_port()
        if argv_for is not None:  # an --engine preset: its own argv for this port
            self.argv = argv_for(self.port)
        else:
            try:  # argv only: the template never reaches a shell
                self.argv = render_server_cmd(template or "", config, self.port)
            except ServerCmdError as exc:
                raise TargetSetupError(f"--server-cmd: {exc}") from None
        self.argv = pinned(self.argv, cpus)
        self.health_timeout_s = health_timeout_s
        self.env = dict(env or {})
        self.label = label
        if log_path is None:
            log_path = Path(tempfile.mkstemp(prefix="tradeoff-server-", suffix=".log")[1])
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.start_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def command(self) -> str:
        """The command that ran, as a shell would take it (environment first)."""
        env = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        return " ".join([*env, shlex.join(self.argv)])

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait for /health; on failure one line naming the engine's own
        root cause (engine_logs.start_failure), its whole log kept at log_path."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            log.write(f"# {self.command}\n".encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True,
                                             env={**os.environ, **self.env})
            except OSError as exc:
                raise TargetSetupError(f"{self.label}: cannot run {self.argv[0]!r}: {exc.strerror}") from None
        try:
            wait_for_health(self.base_url, self.health_timeout_s, is_alive=self.is_alive)
        except (TimeoutError, RuntimeError):
            code = self.proc.poll()
            self.stop()
            raise TargetSetupError(start_failure(self.label, code, self.log_text(), str(self.log_path),
                                                 self.health_timeout_s)) from None
        self.start_s = time.monotonic() - started

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL after a grace period; nothing left running,
        even when the leader died first (a crashed vLLM API server leaves its engine core)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_GRACE_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the rest of the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self) -> str:
        lines = deque(self.log_text().splitlines(), maxlen=LOG_TAIL_LINES)
        return " | ".join(lines) or "(no output)"
