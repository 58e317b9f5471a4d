"""`tradeoff bench --vs vllm|URL`: `tradeoff serve` against another OpenAI-compatible server, in one run.

Same model (`vllm`: the built-in exported with export-model, the same seeded weights), same
workload (the chat profile, one seed per round), same client (the trial code against HTTP
targets, client worker processes), same batch limit (16), in interleaved rounds: each round runs
every load on both servers, which go first in turn, so drift on a shared machine falls on both.
Both servers stay up for the whole run; the one not measured idles.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.records import TrialConfig
from experiments.run.trial import run_trial
from experiments.spec.profiles import load_profile
from experiments.targets.engines import EngineUnavailableError, preset
from experiments.targets.external import ExternalTarget, ServerProcess, TargetSetupError, load_tokenizer

LOADS: tuple[tuple[int, int], ...] = ((1, 24), (16, 96))  # (closed-loop users, measured requests)
BATCH_SIZE = 16  # tradeoff serve's --batch-size and vLLM's --max-num-seqs
# Both servers schedule alike: chunked prefill under vLLM's own default token budget on a CPU
# (its API server's 2048), prefix caching off in both (vLLM's default is on, tradeoff's off; the
# chat profile's random prompts share nothing). So the comparison is of engines, not defaults.
TOKEN_BUDGET = 2048
PROFILE = "chat"
SERVE_START_TIMEOUT_S = 300.0
VLLM_START_TIMEOUT_S = 600.0  # ~75 s on a quiet 2-core CPU (torch.compile); far more when shared
VLLM_KV_CACHE_GIB = "2"  # on a CPU vLLM otherwise asks for most of the RAM and exits
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
FIGURES = ("output_tokens_per_s", "ttft_ms_p50", "ttft_ms_p90", "tpot_ms_p50")

Log = Callable[[str], None]


class VsError(RuntimeError):
    """A server of the comparison stopped during the run; the message names its log."""


@dataclass
class Contender:
    """One server under comparison: its name in the output, the target, its process if ours."""

    name: str
    target: ExternalTarget
    process: ServerProcess | None

    def check_alive(self) -> None:
        if self.process is not None and not self.process.is_alive():
            raise VsError(f"{self.name} exited (code {self.process.exit_code}) during the run; "
                          f"its log: {self.process.log_path}")


def vllm_python(engine_python: str | None) -> str | None:
    """The Python vLLM runs under: the one given, else the project's .venv-vllm if present,
    else None (vLLM on PATH)."""
    if engine_python is not None:
        return engine_python
    return str(DEFAULT_VLLM_PYTHON) if DEFAULT_VLLM_PYTHON.exists() else None


def check_vs(vs: str, engine_python: str | None) -> None:
    """ValueError for a --vs that is neither `vllm` nor a URL; EngineUnavailableError (one line)
    when vLLM is asked for and absent. Cheap: runs before any server starts."""
    if vs == "vllm":
        python, vllm = vllm_python(engine_python), preset("vllm")
        if python is None and shutil.which(vllm.executable) is None:
            raise EngineUnavailableError(
                f"--vs vllm: vLLM is not installed here (no {DEFAULT_VLLM_PYTHON} and no `vllm` on "
                f"PATH); install it ({vllm.install}) or pass --engine-python PY")
        vllm.check_available(python)
    elif not vs.startswith(("http://", "https://")):
        raise ValueError(f"--vs takes `vllm` or the URL of a running OpenAI-compatible server, got {vs!r}")
    elif engine_python is not None:
        raise ValueError("--engine-python starts vLLM for `--vs vllm`; a --vs URL is already running")


def run_bench_vs(model: str, vs: str, device: str = "auto", repeats: int = 3,
                 engine_python: str | None = None, log: Log | None = None,
                 dtype: str = "auto") -> dict[str, Any]:
    """Start `tradeoff serve` (and vLLM for `vs="vllm"`), measure both, stop what was started.
    `dtype`: both servers' (auto: `tradeoff serve`'s own, which vLLM is then given too)."""
    log = log or (lambda _line: None)
    tokenizer = load_tokenizer(model)
    started: list[ServerProcess] = []
    contenders: list[Contender] = []
    # A built-in is written as a Hugging Face directory for vLLM; an id or a path it loads itself.
    export_dir = tempfile.mkdtemp(prefix="tradeoff-vs-") if vs == "vllm" and is_builtin(model) else None
    dtype = _served_dtype(device) if dtype == "auto" else dtype
    try:
        contenders.append(_start(_serve_process(model, device, dtype), tokenizer, started, log))
        if vs == "vllm":
            vllm = _vllm_process(model, export_dir, engine_python, dtype)
            contenders.append(_start(vllm, tokenizer, started, log))
        else:
            contenders.append(Contender("other", _connect(vs, tokenizer), None))
        rounds = measure_rounds(contenders, repeats, log)
        return {**summary(model, contenders, rounds, repeats), "dtype": dtype}
    finally:
        for c in contenders:
            c.target.close()  # its client worker processes
        for proc in reversed(started):
            proc.stop()
        if export_dir is not None:
            shutil.rmtree(export_dir, ignore_errors=True)


def _serve_process(model: str, device: str, dtype: str) -> ServerProcess:
    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "app.cli", "serve", "--model", model, "--device", device,
                "--dtype", dtype,
                "--policy", "continuous", "--batch-size", str(BATCH_SIZE),
                "--max-num-batched-tokens", str(TOKEN_BUDGET), "--prefix-caching", "off",
                "--port", str(port)]

    return ServerProcess(None, _config(BATCH_SIZE), SERVE_START_TIMEOUT_S, argv_for=argv,
                         label="tradeoff serve")


def is_builtin(model: str) -> bool:
    return model.startswith("builtin:")


def _vllm_process(model: str, export_dir: str | None, engine_python: str | None,
                  dtype: str) -> ServerProcess:
    if export_dir is not None:
        from engine.export_model import export_builtin  # torch: only when a built-in is exported

        export_builtin(model, Path(export_dir))
        model = export_dir
    python = vllm_python(engine_python)
    # The dtype tradeoff serve runs at: vLLM's `auto` would load a float32 model (a built-in on a
    # CPU) in its platform's preferred 16-bit dtype, and the two would do different arithmetic.
    args = ("--dtype", dtype)
    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", VLLM_KV_CACHE_GIB)}
    return ServerProcess(None, _config(BATCH_SIZE), VLLM_START_TIMEOUT_S, env=env, label="vllm",
                         argv_for=lambda port: preset("vllm").command(model, _config(BATCH_SIZE),
                                                                      port, python, args))


def _served_dtype(device: str) -> str:
    """`tradeoff serve --dtype auto`'s dtype: bfloat16 on CUDA, float32 elsewhere."""
    import torch

    is_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "bfloat16" if is_cuda else "float32"


def _start(proc: ServerProcess, tokenizer: Any, started: list[ServerProcess], log: Log) -> Contender:
    log(f"starting {proc.label}: {proc.command}")
    started.append(proc)
    proc.start()
    log(f"{proc.label} answered /health after {proc.start_s:.0f} s")
    name = "tradeoff" if proc.label == "tradeoff serve" else proc.label
    return Contender(name, _connect(proc.base_url, tokenizer), proc)


def _connect(url: str, tokenizer: Any) -> ExternalTarget:
    try:
        return ExternalTarget.connect(url, None, tokenizer)
    except Exception as exc:  # refused, not OpenAI-compatible: the URL or the server is wrong
        raise TargetSetupError(f"cannot use {url}: {type(exc).__name__}: {exc}") from None


def _config(users: int, repetition: int = 0) -> TrialConfig:
    # The knobs are labels here: each server batches by its own start flags.
    return TrialConfig("continuous", BATCH_SIZE, 0.0, concurrency=users, repetition=repetition,
                       max_num_batched_tokens=TOKEN_BUDGET, prefix_caching=False)


def measure_rounds(contenders: list[Contender], repeats: int, log: Log) -> list[dict]:
    """Every (round, load, server) trial's figures; the first server alternates per round."""
    profile = load_profile(PROFILE)
    rows = []
    for rnd in range(repeats):
        for users, num_requests in LOADS:
            order = contenders if rnd % 2 == 0 else contenders[::-1]
            for c in order:
                figures = _trial(c, profile, users, num_requests, rnd)
                rows.append({"round": rnd, "users": users, "server": c.name, **figures})
                log(f"round {rnd + 1}/{repeats}, {users} users: {c.name} "
                    f"{figures['output_tokens_per_s']:.0f} tok/s")
    return rows


def _trial(c: Contender, profile: Any, users: int, num_requests: int, rnd: int) -> dict[str, Any]:
    result = run_trial(c.target.engine, _config(users, rnd), profile, num_requests, seed=rnd,
                       slos=[], **c.target.request_kwargs())
    c.check_alive()
    flat = result.metrics.flat()
    return {**{k: flat[k] for k in FIGURES}, "requests_failed": flat["requests_failed"],
            "client_bound": flat["client_bound"]}


def summary(model: str, contenders: list[Contender], rows: list[dict], repeats: int) -> dict[str, Any]:
    """Per load, each server's median figures over the rounds and tok_s_ratio (ours / theirs)."""
    ours, other = contenders
    loads = []
    for users, num_requests in LOADS:
        entry: dict[str, Any] = {"users": users, "requests": num_requests}
        for c in contenders:
            entry[c.name] = _medians([r for r in rows if r["users"] == users and r["server"] == c.name])
        theirs = entry[other.name]["output_tok_s"]
        entry["tok_s_ratio"] = round(entry[ours.name]["output_tok_s"] / theirs, 3) if theirs else None
        loads.append(entry)
    return {"model": model, "profile": PROFILE, "rounds": repeats, "batch_size": BATCH_SIZE,
            "max_num_batched_tokens": TOKEN_BUDGET, "prefix_caching": False,
            "servers": {c.name: _describe(c) for c in contenders}, "loads": loads}


def _medians(rows: list[dict]) -> dict[str, Any]:
    def med(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return round(statistics.median(values), 2) if values else None

    return {"output_tok_s": med("output_tokens_per_s"), "ttft_ms_p50": med("ttft_ms_p50"),
            "ttft_ms_p90": med("ttft_ms_p90"), "tpot_ms_p50": med("tpot_ms_p50"),
            "output_tok_s_rounds": [round(r["output_tokens_per_s"], 1) for r in rows],
            "requests_failed": sum(r["requests_failed"] for r in rows),
            "client_bound_rounds": sum(bool(r["client_bound"]) for r in rows)}


def _describe(c: Contender) -> dict[str, Any]:
    out: dict[str, Any] = {"server": c.target.engine.describe().label}
    if c.process is not None:
        out.update(command=c.process.command, log=str(c.process.log_path),
                   start_s=round(c.process.start_s or 0.0, 1))
    return out
