"""What an estimate assumes before anything is measured: the built-in's step costs for a
directory exported from it, and an engine's start-up by whether it compiles at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.export_marker import MARKER_FILE, exported_builtin, write_marker
from experiments.predict.estimate import estimate_sweep_s, server_overhead_s, speed_check_s
from experiments.predict.simulate import GENERIC, PRIORS, prior_cost
from experiments.spec.grid import parse_spec
from experiments.spec.profiles import load_profile
from experiments.targets.engines import SERVER_CMD_START_PRIOR_S, start_prior_s


def test_an_exported_directory_names_its_builtin_and_gets_its_prior(tmp_path: Path):
    write_marker(tmp_path, "builtin:small", 0, "float32")
    assert exported_builtin(str(tmp_path)) == "builtin:small"
    assert prior_cost(str(tmp_path)) == PRIORS["builtin:small"]
    assert prior_cost("builtin:tiny") == PRIORS["builtin:tiny"]


@pytest.mark.parametrize("content", [None, "not json", '{"exported_from": 3}', "[1]"])
def test_a_directory_without_a_readable_marker_gets_the_generic_prior(tmp_path: Path, content):
    if content is not None:
        (tmp_path / MARKER_FILE).write_text(content)
    assert exported_builtin(str(tmp_path)) is None
    assert prior_cost(str(tmp_path)) == GENERIC
    assert prior_cost("Qwen/Qwen2.5-0.5B") == GENERIC


def test_a_vllm_start_is_assumed_shorter_when_it_compiles_nothing():
    assert start_prior_s("vllm") == 60.0
    assert start_prior_s("vllm", ["--dtype", "float32", "--enforce-eager"]) == 35.0
    assert start_prior_s("sglang", ["--enforce-eager"]) == start_prior_s("sglang")  # no such flag
    assert start_prior_s(None) == SERVER_CMD_START_PRIOR_S


def test_a_server_sweep_counts_warm_ups_speed_checks_and_the_baseline(monkeypatch):
    chat, cost = load_profile("chat"), PRIORS["builtin:small"]
    spec = parse_spec({"engine": "vllm", "model": "/m", "policies": ["continuous"], "max_wait_ms": [0],
                       "batch_sizes": [4, 16], "concurrency": [1, 8], "requests": 16})
    monkeypatch.setenv("TRADEOFF_DRIFT_CHECK", "on")
    with_checks = server_overhead_s(spec, chat, cost, 2, 10.0)
    monkeypatch.setenv("TRADEOFF_DRIFT_CHECK", "off")
    without = server_overhead_s(spec, chat, cost, 2, 10.0)
    # Per server one check as it opens and one as it closes, plus the reference: a warm-up
    # check and two measured.
    assert with_checks - without == pytest.approx((2 * 2 + 3) * speed_check_s(chat, cost))
    assert without > 0  # the warm-ups and chat's baseline (its SLOs are relative)
    eager = parse_spec({**spec.model_dump(), "engine_args": ["--enforce-eager"]})
    assert estimate_sweep_s(spec, chat, (), cost) - estimate_sweep_s(eager, chat, (), cost) \
        == pytest.approx(2 * (60 - 35))


def test_a_speed_check_costs_short_outputs_one_at_a_time():
    chat, cost = load_profile("chat"), PRIORS["builtin:tiny"]
    per_request_max = cost.prefill_s(1, 4096) + 15 * cost.decode_s(1)
    assert 0 < speed_check_s(chat, cost) < 9 * per_request_max
