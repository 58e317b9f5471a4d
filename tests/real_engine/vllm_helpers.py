"""What the real-vLLM tests share: the CLI run from outside, the flags that start vLLM here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def engine_flags(python: str) -> list[str]:
    """How every test starts vLLM: its own environment, a 1 GiB CPU KV cache (without it vLLM
    asks for 92% of RAM and exits), its threads on core 0 (on 2 cores, a vLLM on both starves
    the client, whose send lag then marks every trial client-bound), no torch.compile (35 s
    starts instead of 75 s), float32 as exported."""
    return ["--engine", "vllm", "--engine-python", python, "--engine-env", "VLLM_CPU_KVCACHE_SPACE=1",
            "--engine-env", "VLLM_CPU_OMP_THREADS_BIND=0",
            "--engine-args", "--enforce-eager --dtype float32 --max-model-len 1024"]


def tradeoff(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, from outside."""
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def trials_json(db: str, sweep_id: int) -> list[dict]:
    result = tradeoff("trials", str(sweep_id), "--format", "json", "--db", db)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def vllm_servers() -> list[str]:
    """vLLM server processes still running (none may outlive a sweep)."""
    found = subprocess.run(["pgrep", "-f", "vllm.entrypoints.openai.api_server"], capture_output=True,
                           text=True)
    return found.stdout.split()
