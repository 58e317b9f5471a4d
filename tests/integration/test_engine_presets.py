"""`tradeoff sweep --engine`: a fake `vllm` on PATH records its argv and serves the reference
API (it execs `tradeoff serve`), so command building and scraping run without vLLM."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from app.cli import main
from db.store import Store

FAKE_VLLM = """#!{python}
import json, os, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_ENGINE_LOG"], "a") as log:
    log.write(json.dumps(argv) + "\\n")
value = lambda flag: argv[argv.index(flag) + 1] if flag in argv else None
cmd = [sys.executable, "-m", "app.cli", "serve", "--model", "builtin:tiny", "--port", value("--port"),
       "--batch-size", value("--max-num-seqs")]
if value("--max-num-batched-tokens"):
    cmd += ["--max-num-batched-tokens", value("--max-num-batched-tokens")]
os.execv(sys.executable, cmd)
"""


def sweep_args(db: str, profile: Path, *extra: str) -> list[str]:
    return ["sweep", "--engine", "vllm", "--model", "builtin:tiny", "--profile", str(profile),
            "--policy", "continuous", "--batch-sizes", "2", "--max-wait-ms", "0", "--concurrency", "2",
            "--requests", "4", "--db", db, *extra]


def test_no_engine_on_path_exits_2_saying_what_to_install(capsys, tmp_path: Path, tiny_profile: Path,
                                                          monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    db = tmp_path / "t.db"
    code = main(sweep_args(f"sqlite:///{db}", tiny_profile))
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "error: --engine vllm: 'vllm' is not on PATH; install it (pip install vllm; on a CPU: "
        ".ci/vllm.sh), or pass --engine-python PY of the environment it lives in"]
    assert not db.exists() or sqlite3.connect(db).execute("select count(*) from sweeps").fetchone() == (0,)


def test_engine_with_a_knob_it_lacks_exits_2(capsys, tmp_path: Path, tiny_profile: Path):
    code = main(sweep_args(f"sqlite:///{tmp_path / 't.db'}", tiny_profile, "--max-wait-ms", "5"))
    assert code == 2 and "vllm has no setting for max_wait_ms" in capsys.readouterr().err


@pytest.mark.slow
def test_fake_vllm_gets_its_flags_per_config_and_is_scraped(capsys, tmp_path: Path, tiny_profile: Path,
                                                             monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vllm"
    fake.write_text(FAKE_VLLM.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_ENGINE_LOG", str(log))
    db = f"sqlite:///{tmp_path / 't.db'}"
    code = main(sweep_args(db, tiny_profile, "--max-num-batched-tokens", "16,none", "--json"))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["trials_done"] == 2
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    tails = sorted(c[c.index("--max-num-seqs"):] for c in calls)
    assert tails == [["--max-num-seqs", "2"],
                     ["--max-num-seqs", "2", "--max-num-batched-tokens", "16", "--enable-chunked-prefill"]]
    assert all(c[:2] == ["serve", "builtin:tiny"] for c in calls)
    store = Store(db, create=False)
    trials = store.list_trials(store.list_sweeps()[0].id)
    scraped = [t.details.server_metrics.to_dict() for t in trials]
    assert all(s["url"].endswith("/metrics") and s["t_s"] for s in scraped)  # sampled during the trial


def test_search_with_an_engine_lacking_a_knob_exits_2(capsys, tmp_path: Path, tiny_profile: Path):
    code = main(["search", "--engine", "vllm", "--profile", str(tiny_profile), "--policy", "continuous",
                 "--batch-sizes", "2", "--max-wait-ms", "5", "--concurrency",
                 "--db", f"sqlite:///{tmp_path / 't.db'}"])
    assert code == 2 and "vllm has no setting for max_wait_ms" in capsys.readouterr().err
    assert not (tmp_path / "t.db").exists()


@pytest.mark.slow
def test_search_starts_the_engine_once_per_config_with_its_flags(capsys, tmp_path: Path,
                                                                 tiny_profile: Path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vllm"
    fake.write_text(FAKE_VLLM.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_ENGINE_LOG", str(log))
    db = f"sqlite:///{tmp_path / 't.db'}"
    # The tiny profile's SLOs are loose: every config carries the largest load tried (2 users);
    # 30 requests, so that all of them meeting the SLOs shows >= 90% at 90% confidence.
    code = main(["search", "--engine", "vllm", "--model", "builtin:tiny", "--profile", str(tiny_profile),
                 "--policy", "continuous", "--batch-sizes", "1,2", "--max-wait-ms", "0",
                 "--concurrency", "--max-load", "2", "--requests", "30", "--budget-min", "5",
                 "--no-predict",  # every config searched (a plan would skip the weaker one)
                 "--db", db, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    found = {c["config"]["batch_size"]: (c["capacity"], c["status"]) for c in result["capacities"]}
    assert found == {1: (2, "at_limit"), 2: (2, "at_limit")}
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    # one server per config, each with its own --max-num-seqs, one after the other
    assert [c[c.index("--max-num-seqs") + 1] for c in calls] == ["1", "2"]
    trials = Store(db, create=False).list_trials(result["sweep_id"])
    assert result["trials_run"] == len(trials) >= 2
    assert all(t.details.prediction is None for t in trials)  # an external server: nothing to fit


@pytest.mark.slow
def test_server_cpus_pin_the_server_and_keep_the_client_off_them(tmp_path: Path, tiny_profile: Path):
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vllm"
    fake.write_text(FAKE_VLLM.format(python=sys.executable))
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
           "FAKE_ENGINE_LOG": str(tmp_path / "argv.jsonl")}
    db = f"sqlite:///{tmp_path / 't.db'}"
    argv = [sys.executable, "-m", "app.cli", *sweep_args(db, tiny_profile, "--server-cpus", "0")]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    trial = Store(db, create=False).list_trials(1)[0]
    where = trial.details.provenance.to_dict()
    assert trial.status == "done" and where["engine"]["command"].startswith("taskset -c 0 vllm serve")
    others = sorted(os.sched_getaffinity(0) - {0})
    assert where.get("client_cpus") == (others or None)  # the client ran on the other CPUs
