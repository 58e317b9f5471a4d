"""Shared fixtures: a tiny workload profile so real trials on builtin:tiny take well under a second."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# As the CLI does: idle OpenMP threads sleep instead of spinning (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Drift control (experiments/run/drift.py) re-runs trials measured while the machine's speed moved
# by more than a third; on a shared test machine that happens at random, and tests of other
# contracts count trials. tests/integration/test_drift_rerun.py turns it on and drives it.
os.environ["TRADEOFF_DRIFT_CHECK"] = "off"

TINY_PROFILE = """\
name: tiny
description: Short prompts and outputs, so real CPU trials stay fast in tests
prompt_tokens: {kind: uniform, min: 4, max: 16}
output_tokens: {kind: uniform, min: 2, max: 8}
arrival: {mode: closed, concurrency: 2}
slos:
  ttft_ms: {percentile: p90, max_ms: 5000}
  e2e_ms: {percentile: p90, max_ms: 20000}
objective: max_goodput
warmup_requests: 1
"""


@pytest.fixture()
def tiny_profile(tmp_path: Path) -> Path:
    """A profile file for fast real trials."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_PROFILE)
    return path
