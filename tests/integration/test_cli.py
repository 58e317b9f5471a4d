"""The CLI contracts, checked from outside: JSON shapes, exit codes, one-line errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from app.cli import main
from engine.models import reset_peak_memory

DIST_KEYS = {"p50", "p90", "p95", "p99", "mean"}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, needle", [
    (["--batch-size", "0"], "batch size"),
    (["--batch-size", "-2"], "batch size"),
    (["--concurrency", "0"], "--concurrency"),
    (["--concurrency", "-1"], "--concurrency"),
    (["--max-wait-ms", "-5"], "max wait"),
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--policy", "dynamic"], "unknown policy 'dynamic'"),
    (["--rate", "0"], "--rate"),
    (["--concurrency", "2", "--rate", "3"], "not both"),
    (["--model", "no-such-org/no-such-model-xyz"], "no-such-org/no-such-model-xyz"),
    (["--requests", "0"], "--requests"),
    (["--batch-size", "four"], "--batch-size"),
    (["--max-num-batched-tokens", "0"], "--max-num-batched-tokens"),
    (["--max-num-batched-tokens", "lots"], "--max-num-batched-tokens"),
    (["--max-num-batched-tokens", "4", "--batch-size", "8"], "must be >= the batch size"),
    (["--max-num-batched-tokens", "64", "--policy", "static"], "needs policy continuous"),
])
def test_trial_bad_input_exits_2_with_one_line(capsys, args: list[str], needle: str):
    code, out, err = run_cli(capsys, "trial", *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


@pytest.mark.slow
def test_trial_json_contract(capsys, tiny_profile: Path):
    code, out, err = run_cli(
        capsys, "trial", "--model", "builtin:tiny", "--profile", str(tiny_profile),
        "--policy", "continuous", "--batch-size", "4", "--max-wait-ms", "5",
        "--concurrency", "4", "--requests", "12", "--json")
    assert code == 0, err
    result = json.loads(out)  # exactly one JSON document on stdout
    assert result["config"] == {"policy": "continuous", "batch_size": 4, "max_wait_ms": 5.0,
                                "max_num_batched_tokens": None, "replicas": 1, "router": None,
                                "concurrency": 4}
    assert result["requests_completed"] == 12
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "queue_wait_ms"):
        assert set(result[key]) >= DIST_KEYS, key
        assert result[key]["p50"] <= result[key]["p99"]
    for key in ("duration_s", "requests_per_s", "output_tokens_per_s", "goodput_rps",
                "slo_attainment", "mean_batch_size"):
        assert result[key] > 0, key
    # None where the OS ignores the peak reset (a lifetime peak would pass for the trial's)
    peak_tracked = reset_peak_memory(torch.device("cpu"))
    assert (result["peak_memory_mb"] > 0) if peak_tracked else result["peak_memory_mb"] is None
    assert result["saturated"] is False
    assert 1 <= result["mean_batch_size"] <= 4


@pytest.mark.slow
def test_trial_json_carries_the_token_budget_and_the_roofline(capsys, tiny_profile: Path, tmp_path: Path,
                                                             monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the CPU peak probe's cache
    code, out, err = run_cli(
        capsys, "trial", "--model", "builtin:tiny", "--profile", str(tiny_profile),
        "--batch-size", "4", "--max-num-batched-tokens", "16", "--concurrency", "4",
        "--requests", "8", "--device", "cpu", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["config"]["max_num_batched_tokens"] == 16
    roofline = result["roofline_fraction"]
    assert set(roofline) == {"decode", "prefill"}
    assert all(v is None or v > 0 for v in roofline.values()) and roofline["decode"] is not None
    assert (tmp_path / "tradeoff" / "cpu_peaks.json").exists()


def sweep_args(db: str, profile: Path, *extra: str) -> list[str]:
    return ["sweep", "--model", "builtin:tiny", "--profile", str(profile), "--policy",
            "static,continuous", "--batch-sizes", "1,4", "--max-wait-ms", "0",
            "--concurrency", "2", "--requests", "6", "--db", db, *extra]


@pytest.mark.parametrize("flags, needle", [
    (["--batch-sizes", ""], "--batch-sizes"),
    (["--batch-sizes", "1,,4"], "empty value"),
    (["--batch-sizes", "1,x"], "not a list of integers"),
    (["--batch-sizes", "0,4"], "batch size"),
    (["--max-wait-ms", "-1"], "max wait"),
    (["--rate", "2"], "exactly one of concurrency"),
    (["--profile", "nope"], "unknown profile"),
    (["--policy", "static,fancy"], "policies"),
    (["--model", "no-such-org/no-such-model-xyz"], "no-such-org/no-such-model-xyz"),
    (["--max-num-batched-tokens", "64,x"], "--max-num-batched-tokens"),
    (["--max-num-batched-tokens", "2,none"], "largest batch size"),
    (["--max-num-batched-tokens", "64", "--policy", "static"], "continuous policy"),
])
def test_sweep_bad_input_exits_2_and_writes_nothing(capsys, tmp_path: Path, tiny_profile: Path,
                                                    flags: list[str], needle: str):
    db = tmp_path / "t.db"
    args = sweep_args(f"sqlite:///{db}", tiny_profile)
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code, out, err = run_cli(capsys, *args)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err
    if db.exists():
        assert sqlite3.connect(db).execute("select count(*) from sweeps").fetchone() == (0,)


def test_sweep_neither_load_mode_is_bad_input(capsys, tmp_path: Path, tiny_profile: Path):
    args = sweep_args(f"sqlite:///{tmp_path / 't.db'}", tiny_profile)
    i = args.index("--concurrency")
    del args[i:i + 2]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "exactly one of concurrency" in err


@pytest.mark.parametrize("url, needle", [
    ("foo://nowhere", "foo://nowhere"),
    ("postgresql+psycopg://u@127.0.0.1:1/x", "127.0.0.1"),
])
def test_bad_db_url_exits_2(capsys, tiny_profile: Path, url: str, needle: str):
    code, _, err = run_cli(capsys, *sweep_args(url, tiny_profile))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_unknown_sweep_id_exits_2(capsys, tmp_path: Path):
    db = f"sqlite:///{tmp_path / 't.db'}"
    from db.store import Store

    Store(db).close()
    for args in (["trials", "42", "--db", db], ["recommend", "--sweep", "42", "--db", db],
                 ["sweep", "--resume", "42", "--db", db]):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and "42" in err, args


def test_malformed_sweep_yaml_exits_2(capsys, tmp_path: Path):
    bad = tmp_path / "sweep.yaml"
    bad.write_text("model: builtin:tiny\nbatch_sizes: [1, 4\n")
    code, _, err = run_cli(capsys, "sweep", "--config", str(bad), "--db", f"sqlite:///{tmp_path}/t.db")
    assert code == 2 and "malformed YAML" in err


def test_db_from_a_newer_schema_exits_2_and_is_left_alone(capsys, tmp_path: Path):
    from db.store import Store

    path = tmp_path / "new.db"
    Store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        conn.execute("insert into schema_version values (99, 'from the future', '2030-01-01')")
    before = path.read_bytes()
    code, _, err = run_cli(capsys, "sweeps", "--db", f"sqlite:///{path}")
    assert code == 2 and "99" in err and "upgrade tradeoff" in err
    assert path.read_bytes() == before


@pytest.mark.slow
def test_ctrl_c_cancels_the_sweep_and_keeps_finished_trials(tmp_path: Path, tiny_profile: Path):
    import signal
    import subprocess
    import sys
    import time

    from db.errors import StoreError
    from db.store import Store

    db = f"sqlite:///{tmp_path / 'c.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *sweep_args(db, tiny_profile)[:-2], "--requests", "200",
         "--db", db, "--json"],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            sweeps = Store(db, create=False).list_sweeps() if (tmp_path / "c.db").exists() else []
        except StoreError:  # the file exists a moment before its tables do
            sweeps = []
        if sweeps and sweeps[0].current_label:
            break
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 10, "cancel took too long"
    assert proc.returncode == 0, err
    assert json.loads(out)["status"] == "cancelled"
    sweep = Store(db, create=False).list_sweeps()[0]
    assert sweep.status == "cancelled"
    assert all(t.status == "done" for t in Store(db, create=False).list_trials(sweep.id))


@pytest.mark.parametrize("value, needle", [
    ("on,off", "a trial runs one setting"),
    ("maybe", "'maybe' is not on, off or default"),
])
def test_prefix_caching_flag_refusals_are_one_line(capsys, value: str, needle: str):
    code, out, err = run_cli(capsys, "trial", "--prefix-caching", value)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and needle in err


@pytest.mark.slow
def test_a_multiturn_trial_with_caching_off_reports_an_exact_zero_hit_rate(capsys):
    code, out, err = run_cli(capsys, "trial", "--model", "builtin:tiny", "--profile", "chat-multiturn",
                             "--prefix-caching", "off", "--concurrency", "4", "--requests", "12", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["config"]["prefix_caching"] is False
    assert result["prefix_cache_hit_rate"] == 0.0  # caching off: every prompt recomputed, exactly
    assert result["details"]["ttft_ms_by_turn"]["1"]["count"] >= 1


@pytest.mark.slow
def test_a_multiturn_trial_with_caching_on_reports_the_engines_hits(capsys):
    code, out, err = run_cli(capsys, "trial", "--model", "builtin:tiny", "--profile", "chat-multiturn",
                             "--prefix-caching", "on", "--concurrency", "4", "--requests", "32", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["config"]["prefix_caching"] is True
    # Later turns re-send their history: most of it comes from the cache (whole blocks only).
    cache = result["details"]["prefix_cache"]
    assert 0.2 < result["prefix_cache_hit_rate"] < 1 and cache["num_cached_tokens"] % 16 == 0


@pytest.mark.slow
def test_an_exported_config_with_caching_on_runs_with_caching_on(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("engine: {model: 'builtin:tiny', policy: continuous, max_batch_size: 4, "
                      "max_wait_ms: 0, prefix_caching: true}\n")
    code, out, err = run_cli(capsys, "trial", "--config", str(config), "--profile", "chat-multiturn",
                             "--concurrency", "2", "--requests", "12", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["config"]["prefix_caching"] is True and result["prefix_cache_hit_rate"] > 0
    # A flag still wins over the document.
    code, out, err = run_cli(capsys, "trial", "--config", str(config), "--profile", "chat-multiturn",
                             "--prefix-caching", "off", "--concurrency", "2", "--requests", "8", "--json")
    assert code == 0, err
    assert json.loads(out)["config"]["prefix_caching"] is False
