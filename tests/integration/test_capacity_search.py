"""`tradeoff search` from outside (contract, bad input) and the search runner on builtin:tiny:
budget stop, resume mid-search reusing stored trials."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from common.records import TrialConfig
from db.store import Store
from engine.config import EngineConfig
from experiments.analysis.queries import sweep_capacities
from experiments.run.runners import runner_for
from experiments.run.search_runner import set_search_budget
from experiments.run.sweep import create_sweep
from experiments.search.strategy import UNDECIDED
from experiments.spec.grid import parse_spec
from experiments.spec.profiles import load_profile
from experiments.targets.local import LocalTarget

ROOT = Path(__file__).resolve().parents[2]


def tradeoff(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


NO_SLOS = """\
name: noslo
prompt_tokens: {kind: fixed, value: 8}
output_tokens: {kind: fixed, value: 4}
arrival: {mode: closed, concurrency: 1}
objective: max_throughput
"""


@pytest.mark.parametrize("args, message", [
    (["--policy", ""], "--policy: empty value"),
    (["--budget-min", "0"], "--budget-min must be > 0"),
    (["--budget-min", "-3"], "--budget-min must be > 0"),
    (["--batch-sizes", "0"], "batch size must be >= 1"),
    (["--rate", "--concurrency"], "not both"),
    (["--profile", "NOSLO"], "has no SLOs"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, args: list[str], message: str):
    (tmp_path / "noslo.yaml").write_text(NO_SLOS)
    args = [str(tmp_path / "noslo.yaml") if a == "NOSLO" else a for a in args]
    db = tmp_path / "never.db"
    run = tradeoff("search", "--model", "builtin:tiny", "--rate", "--budget-min", "5",
                   *args, "--db", f"sqlite:///{db}", "--json")
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert run.stdout == "" and not db.exists()


@pytest.mark.slow
def test_search_json_contract(tmp_path: Path, tiny_profile: Path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    run = tradeoff("search", "--model", "builtin:tiny", "--profile", str(tiny_profile),
                   "--policy", "static,continuous", "--batch-sizes", "1,4", "--max-wait-ms", "0",
                   "--concurrency", "--max-load", "8", "--requests", "8", "--budget-min", "5",
                   "--db", db, "--json")
    assert run.returncode == 0, run.stderr
    assert "estimated" in run.stderr  # the estimate is shown before measuring
    out = json.loads(run.stdout)
    assert {"sweep_id", "capacities", "recommended", "trials_run"} <= set(out)
    assert len(out["capacities"]) == 4
    for c in out["capacities"]:
        assert set(c["config"]) >= {"policy", "batch_size", "max_wait_ms"}
        assert isinstance(c["capacity"], (int, float)) and c["unit"] == "users"
        assert isinstance(c["decided"], bool)
        # each config is decided, undecided or ruled out (predicted or shown unable to win)
        lists = (c["decided"], c["label"] in out["undecided"], c["label"] in out["ruled_out"])
        assert sum(lists) == 1 and lists[2] == (c["status"] in ("skipped", "pruned")), c
    trials = Store(db, create=False).list_trials(out["sweep_id"])
    measured = [c for c in out["capacities"] if c["status"] not in ("skipped", "pruned")]
    assert out["trials_run"] == len(trials) == len({t.config for t in trials}) >= len(measured) >= 1
    decided = [c for c in out["capacities"] if c["decided"] and c["capacity"] > 0]
    if decided:
        top = max(decided, key=lambda c: c["capacity"])
        assert out["recommended"]["capacity"] == top["capacity"]
        assert "carries" in out["sentence"]
    rec = tradeoff("recommend", "--sweep", str(out["sweep_id"]), "--format", "json", "--db", db)
    assert rec.returncode == 0, rec.stderr
    assert json.loads(rec.stdout)["capacity"]["sentence"] == out["sentence"]


def make_search(db: str, profile: Path, **search) -> tuple[Store, int]:
    store = Store(db)
    spec = parse_spec({"model": "builtin:tiny", "profile": str(profile), "requests": 6,
                       "policies": ["static", "continuous"], "batch_sizes": [2], "max_wait_ms": [0],
                       "search": {"load": "concurrency", "max_load": 4, **search}})
    return store, create_sweep(store, spec, load_profile(str(profile)))


@pytest.mark.slow
def test_budget_stop_then_resume_reuses_stored_trials(tmp_path: Path, tiny_profile: Path):
    target = LocalTarget.start(EngineConfig(model="builtin:tiny"))
    db = f"sqlite:///{tmp_path / 'r.db'}"
    # A budget smaller than one trial: exactly one trial runs, then a clean, undecided stop.
    store, tiny_budget = make_search(db, tiny_profile, budget_s=1e-6)
    runner = runner_for(store, tiny_budget, target=target)
    assert runner.run() == "done" and runner.budget_spent
    assert len(store.list_trials(tiny_budget)) == 1
    assert all(c.capacity.status == UNDECIDED for c in runner.capacities)
    # A new budget (the Run page's "Resume search", or --resume ID --budget-min N): it goes on.
    first = store.list_trials(tiny_budget)[0]
    set_search_budget(store, tiny_budget, 600)
    assert runner_for(store, tiny_budget).run() == "done"
    capacities, trials = sweep_capacities(store, tiny_budget)
    assert trials[0] == first and all(c.capacity.status != UNDECIDED for c in capacities)

    # Cancel after two trials, then resume: the stored trials are reused, none runs twice.
    store, sweep_id = make_search(db, tiny_profile)
    stop = threading.Event()
    target = LocalTarget.start(EngineConfig(model="builtin:tiny"))
    first = runner_for(store, sweep_id, target=target, stop=stop,
                       on_progress=lambda p: p.trials_done >= 2 and stop.set())
    assert first.run() == "cancelled"
    before = {t.trial_id: t.config for t in store.list_trials(sweep_id)}
    assert len(before) == 2
    resumed = runner_for(store, sweep_id)
    assert resumed.run() == "done"
    after = {t.trial_id: t.config for t in store.list_trials(sweep_id)}
    assert before.items() <= after.items() and len(set(after.values())) == len(after)
    capacities, trials = sweep_capacities(store, sweep_id)
    assert sum(c.capacity.num_probes for c in capacities) == len(trials)
    assert all(c.capacity.status != UNDECIDED for c in capacities)


@pytest.mark.slow
def test_a_search_over_started_servers_calibrates_from_probes_of_the_first(tmp_path: Path,
                                                                           tiny_profile: Path):
    # Each config's server is a mock of exactly known timing: first token 20 ms, then 5 ms each.
    mock = (f"{sys.executable} -m app.cli mock-server --ttft-ms 20 --itl-ms 5 "
            "--capacity {batch_size} --port {port}")
    db = f"sqlite:///{tmp_path / 'p.db'}"
    out = subprocess.run([sys.executable, "-m", "app.cli", "search", "--server-cmd", mock,
                          "--tokenizer", "builtin:tiny", "--profile", str(tiny_profile),
                          "--policy", "continuous", "--batch-sizes", "2,8", "--max-wait-ms", "0",
                          "--concurrency", "--max-load", "16", "--requests", "12",
                          "--budget-min", "3", "--db", db, "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    first = min(Store(db, create=False).list_trials(1), key=lambda t: t.trial_id)
    prediction = first.details.prediction.to_dict()
    assert first.config.batch_size == 8  # the calibration config: the largest batch
    cost = prediction["calibration"]["cost_model"]
    assert 20 <= cost["prefill_base_ms"] <= 35 and 4.5 <= cost["decode_base_ms"] <= 8  # the mock's timing
    assert {p["kind"] for p in prediction["calibration"]["probes"]} == {"prefill", "decode"}
    assert set(prediction["plan"]["predicted"]) == {"continuous b2 w0ms", "continuous b8 w0ms"}
    assert prediction["predicted"]["ttft_ms_p50"] is not None  # each trial's prediction, from the fit
    # Issue 22's contract: each config's capacity predicted before it was measured, the
    # calibration (probe runs, the latest fit), the configs the prediction ruled out, with why.
    doc = json.loads(out.stdout)
    assert all(isinstance(c["predicted"], (int, float)) for c in doc["capacities"])
    assert doc["calibration"]["probes"] == len(prediction["calibration"]["probes"])
    assert doc["calibration"]["refits"] >= 1 and "decode_base_ms" in doc["calibration"]["model"]
    assert isinstance(doc["ruled_out"], dict) and all(doc["ruled_out"].values())
    assert "output_tokens_per_s" in doc["prediction_band"]
    assert "refit" in prediction  # every trial on a calibrated server refines the fit


@pytest.mark.slow
def test_black_box_fit_recovers_a_batch_dependent_server(tmp_path: Path, tiny_profile: Path):
    # A mock of known step costs: first token 10 ms + 0.02 ms per prompt token, then gaps of
    # 2 ms + 0.5 ms per request in service. The probes' fit must recover both lines.
    from experiments.predict.calibrate import fit, probe_server
    from experiments.targets.external import ServerProcess
    from experiments.targets.http_target import HttpTarget

    cmd = (f"{sys.executable} -m app.cli mock-server --ttft-ms 10 --ttft-per-token-ms 0.02 "
           "--itl-ms 2 --itl-per-running-ms 0.5 --capacity 16 --port {port}")
    knobs = TrialConfig("continuous", 16, 0.0, concurrency=1)
    with ServerProcess(cmd, knobs, health_timeout_s=30) as server, HttpTarget(server.base_url) as target:
        cal = fit(probe_server(target, vocab_size=259, max_context_tokens=4096,
                               avoid_ids=[256, 257, 258], max_running=16))
    assert cal.cost.prefill_per_token_s * 1e3 == pytest.approx(0.02, rel=0.3)
    assert cal.cost.decode_per_seq_s * 1e3 == pytest.approx(0.5, rel=0.3)
    assert cal.cost.decode_s(8) * 1e3 == pytest.approx(2 + 0.5 * 8, rel=0.25)


@pytest.mark.slow
def test_a_grid_over_started_servers_calibrates_when_asked(tmp_path: Path, tiny_profile: Path):
    mock = (f"{sys.executable} -m app.cli mock-server --ttft-ms 20 --itl-ms 5 "
            "--capacity {batch_size} --port {port}")
    db = f"sqlite:///{tmp_path / 'g.db'}"
    out = subprocess.run([sys.executable, "-m", "app.cli", "sweep", "--calibrate", "--server-cmd", mock,
                          "--tokenizer", "builtin:tiny", "--profile", str(tiny_profile), "--policy",
                          "continuous", "--batch-sizes", "2,4", "--max-wait-ms", "0", "--concurrency",
                          "2", "--requests", "8", "--db", db], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    trials = sorted(Store(db, create=False).list_trials(1), key=lambda t: t.trial_id)
    assert trials[0].details.prediction.calibration is not None  # stored once, with the first trial
    assert not any(t.details.prediction.calibration for t in trials[1:])
    assert all(t.details.prediction.predicted["ttft_ms_p50"] for t in trials)  # every trial
