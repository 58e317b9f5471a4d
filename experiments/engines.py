"""Deployed engines as sweep targets (`--engine vllm|sglang|tgi|llamacpp`): each engine's own
server command from one server config, the knobs it lacks said rather than invented, and the
Prometheus gauges it exports for queue depth, running requests and KV usage.

Pure: argv lists and names. Starting the server is `external.ServerProcess`'s job.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from common.records import TrialConfig

ENGINES: tuple[str, ...] = ("vllm", "sglang", "tgi", "llamacpp")


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

    def check_available(self) -> None:
        """EngineUnavailableError unless the server can be started from here."""
        if shutil.which(self.executable) is None:
            raise EngineUnavailableError(f"--engine {self.name}: {self.executable!r} is not on PATH; "
                                         f"install it ({self.install})")
        if self.python_module and importlib.util.find_spec(self.python_module) is None:
            raise EngineUnavailableError(f"--engine {self.name}: Python module {self.python_module!r} "
                                         f"is not importable; install it ({self.install})")


def _vllm(model: str, c: TrialConfig, port: int) -> list[str]:
    argv = ["vllm", "serve", model, "--host", "127.0.0.1", "--port", str(port),
            "--max-num-seqs", str(c.batch_size)]
    if c.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(c.max_num_batched_tokens), "--enable-chunked-prefill"]
    return argv


def _sglang(model: str, c: TrialConfig, port: int) -> list[str]:
    # -1 disables SGLang's chunked prefill, which is on by default: "no budget" means whole prompts.
    chunk = -1 if c.max_num_batched_tokens is None else c.max_num_batched_tokens
    return ["python3", "-m", "sglang.launch_server", "--model-path", model, "--host", "127.0.0.1",
            "--port", str(port), "--max-running-requests", str(c.batch_size),
            "--chunked-prefill-size", str(chunk), "--enable-metrics"]


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
        "vllm", "vllm", None, "pip install vllm", _vllm,
        {"running": ("vllm:num_requests_running",), "waiting": ("vllm:num_requests_waiting",),
         "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")}),
    "sglang": EnginePreset(
        "sglang", "python3", "sglang", "pip install 'sglang[all]'", _sglang,
        {"running": ("sglang:num_running_reqs",), "waiting": ("sglang:num_queue_reqs",),
         "kv_usage": ("sglang:token_usage",)}),
    "tgi": EnginePreset(
        "tgi", "text-generation-launcher", None,
        "Hugging Face text-generation-inference; its launcher binary on PATH", _tgi,
        {"running": ("tgi_batch_current_size",), "waiting": ("tgi_queue_size",), "kv_usage": ()}),
    "llamacpp": EnginePreset(
        "llamacpp", "llama-server", None, "llama.cpp's llama-server binary on PATH", _llamacpp,
        {"running": ("llamacpp:requests_processing",), "waiting": ("llamacpp:requests_deferred",),
         "kv_usage": ("llamacpp:kv_cache_usage_ratio",)}),
}


def preset(name: str) -> EnginePreset:
    """The preset for `name` (one of ENGINES)."""
    if name not in PRESETS:
        raise ValueError(f"unknown engine {name!r}; use one of: {', '.join(ENGINES)}")
    return PRESETS[name]


def lacking_knobs(name: str, policies: list[str], max_wait_ms: list[float]) -> list[str]:
    """The grid's knobs this engine cannot set: said, never mapped onto something else."""
    lacks = []
    if any(w != 0 for w in max_wait_ms):
        lacks.append(f"max_wait_ms (only 0: {name} admits waiting requests at every step)")
    if any(p != "continuous" for p in policies):
        lacks.append(f"policies other than continuous ({name} always batches per iteration)")
    return lacks
