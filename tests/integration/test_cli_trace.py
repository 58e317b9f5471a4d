"""Trace replay and the adaptive policy through the CLI, checked from outside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_cli import run_cli


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_profiles_json_lists_the_trace_profiles_with_attribution(capsys):
    code, out, _ = run_cli(capsys, "profiles", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and {"azure-conv", "azure-code"} <= set(rows)
    assert rows["azure-conv"]["arrival"] == "trace@1x" and "CC-BY 4.0" in rows["azure-conv"]["description"]


@pytest.mark.parametrize("args, needle", [
    (["--profile", "azure-conv", "--speedup", "0"], "--speedup"),
    (["--profile", "azure-conv", "--speedup", "2", "--rate", "3"], "not both"),
    (["--profile", "chat", "--speedup", "2"], "needs a trace profile"),
    (["--profile", "azure-conv", "--trace-start", "99999"], "no requests in [99999"),
    (["--profile", "azure-conv", "--duration", "-1"], "--duration"),
    (["--policy", "dynamic"], "static, continuous, adaptive"),
])
def test_trace_trial_bad_input_exits_2(capsys, args: list[str], needle: str):
    code, out, err = run_cli(capsys, "trial", *args)
    assert code == 2 and out == "" and needle in one_error_line(err)


def test_bad_user_trace_names_line_and_column(capsys, tmp_path: Path):
    bad = tmp_path / "my.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 5, "output_length": 2}\n'
                   '{"timestamp": 7, "input_length": 5}\n')
    code, out, err = run_cli(capsys, "trial", "--profile", str(bad))
    assert code == 2 and out == ""
    assert "line 2, column output_length" in one_error_line(err)


def test_sweep_speedup_on_a_non_trace_profile_writes_nothing(capsys, tmp_path: Path):
    db = tmp_path / "s.db"
    code, _, err = run_cli(capsys, "sweep", "--profile", "chat", "--speedup", "1,2",
                           "--db", f"sqlite:///{db}")
    assert code == 2 and "replays no trace" in one_error_line(err)


@pytest.mark.slow
def test_trace_trial_json_says_what_was_replayed(capsys):
    code, out, err = run_cli(capsys, "trial", "--model", "builtin:tiny", "--profile", "azure-conv",
                             "--speedup", "8", "--duration", "2", "--policy", "adaptive",
                             "--batch-size", "8", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["config"]["policy"] == "adaptive" and result["config"]["speedup"] == 8.0
    trace = result["details"]["trace"]
    assert (trace["window_start_s"], trace["window_end_s"]) == (0.0, 16.0)
    assert trace["requests_replayed"] == trace["requests_in_window"] > 4
    assert result["requests_completed"] == trace["requests_replayed"] - 4  # 4 warm-up
    assert "CC-BY 4.0" in trace["attribution"] and result["details"]["timeseries"]["t_s"]


@pytest.mark.slow
def test_user_csv_trace_replays(capsys, tmp_path: Path):
    path = tmp_path / "my.csv"
    path.write_text("timestamp,input_length,output_length\n"
                    + "".join(f"{i * 0.1:.1f},{8 + i},{2 + i % 3}\n" for i in range(12)))
    code, out, err = run_cli(capsys, "trial", "--model", "builtin:tiny", "--profile", str(path),
                             "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["profile"] == "my.csv" and result["details"]["trace"]["requests_replayed"] == 12
    assert result["requests_completed"] == 8


@pytest.mark.parametrize("args, needle", [
    (["--profile", "chat", "--speedup"], "replays no trace"),
    (["--profile", "azure-conv"], "search it with --speedup"),
    (["--profile", "azure-conv", "--speedup", "--rate"], "not both"),
])
def test_capacity_search_over_a_trace_needs_speedup(capsys, tmp_path: Path, args, needle):
    code, _, err = run_cli(capsys, "search", *args, "--db", f"sqlite:///{tmp_path / 's.db'}")
    assert code == 2 and needle in one_error_line(err)
    assert not (tmp_path / "s.db").exists()


def test_capacity_search_probes_speedups_as_trace_trials():
    from experiments.search.capacity import trial_config, unit_of
    from experiments.search.strategy import Probe
    from experiments.spec.grid import parse_spec

    spec = parse_spec({"profile": "azure-conv", "policies": ["adaptive"], "batch_sizes": [8],
                       "max_wait_ms": [0.0], "search": {"load": "speedup"}})
    (knobs,) = spec.knob_configs()
    config = trial_config(spec, knobs, Probe(3.0, 1))
    assert (config.speedup, config.rate, config.concurrency, config.repetition) == (3.0, None, None, 1)
    assert config.load_label == "trace@3x" and unit_of(spec) == "x speed-up"


def test_sweep_whose_slowest_replay_window_is_empty_writes_nothing(capsys, tmp_path: Path):
    # azure-code has no requests in its first two minutes.
    code, _, err = run_cli(capsys, "sweep", "--profile", "azure-code", "--speedup", "1,4",
                           "--trace-start", "70", "--trace-duration", "2",
                           "--db", f"sqlite:///{tmp_path / 's.db'}")
    assert code == 2 and "no requests in [70, 72)" in one_error_line(err)
    assert not (tmp_path / "s.db").exists()
