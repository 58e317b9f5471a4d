"""Drift control on a real sweep (builtin:tiny, a real SQLite file): a check that finds the
machine changed flags the trials since the last clean check, and the grid measures them again,
once, as the same repetitions. The machine's speed cannot be changed on demand, so the checks'
readings are scripted; everything else runs for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.store import Store
from experiments.analysis.queries import analyse
from experiments.run import drift
from experiments.run.sweep import SweepRunner, create_sweep
from experiments.spec.grid import parse_spec
from experiments.spec.profiles import load_profile

pytestmark = pytest.mark.slow
REF, SLOW = {"ttft_ms": 10.0, "itl_ms": 2.0}, {"ttft_ms": 10.0, "itl_ms": 3.0}


@pytest.fixture(autouse=True)
def drift_on(monkeypatch):
    monkeypatch.setenv("TRADEOFF_DRIFT_CHECK", "on")


def run_sweep(tmp_path: Path, tiny_profile: Path, readings: list[dict], monkeypatch) -> Store:
    calls = iter(readings)
    monkeypatch.setattr(drift, "speed_check", lambda *_a, **_k: next(calls, REF))
    store = Store(f"sqlite:///{tmp_path / 'd.db'}")
    spec = parse_spec({"model": "builtin:tiny", "profile": str(tiny_profile),
                       "policies": ["continuous"], "batch_sizes": [1, 4], "max_wait_ms": [0.0],
                       "concurrency": [2], "requests": 6})
    sweep_id = create_sweep(store, spec, load_profile(str(tiny_profile)))
    assert SweepRunner(store, sweep_id).run() == "done"
    return store


def test_drifted_trials_are_measured_again_as_the_same_repetitions(tmp_path, tiny_profile, monkeypatch):
    # Two reference checks, the check at the engine's start, then the one at its end drifts,
    # and so does the second check that confirms it.
    store = run_sweep(tmp_path, tiny_profile, [REF, REF, REF, SLOW, SLOW], monkeypatch)
    trials = store.list_trials(1)
    assert sorted(t.config.label for t in trials) == ["continuous/b1/w0ms/concurrent@2",
                                                      "continuous/b4/w0ms/concurrent@2"]
    assert all(t.status == "done" and t.details.drift is None for t in trials)
    for t in trials:  # each re-run says what it replaced; the first runs' rows are gone
        assert "median ITL 2 -> 3 ms (+50%)" in t.details.rerun.first_run
        assert len(store.get_requests(t.trial_id)) == 6
    sweep = store.get_sweep(1)
    assert (sweep.trials_done, sweep.trials_failed) == (2, 0)
    checks = [t.details.speed_check.to_dict() for t in trials if t.details.speed_check is not None]
    assert checks and all(c["drift"] is None for c in checks)


def test_one_slow_check_not_confirmed_by_the_next_flags_nothing(tmp_path, tiny_profile, monkeypatch):
    store = run_sweep(tmp_path, tiny_profile, [REF, REF, REF, SLOW, REF], monkeypatch)
    trials = store.list_trials(1)
    assert len(trials) == 2 and not any(t.details.drift or t.details.rerun for t in trials)


def test_a_machine_that_stays_drifted_leaves_its_trials_flagged_and_out_of_the_answer(
        tmp_path, tiny_profile, monkeypatch):
    store = run_sweep(tmp_path, tiny_profile, [REF, REF, REF] + [SLOW] * 10, monkeypatch)
    trials = store.list_trials(1)
    assert len(trials) == 2 and all(t.details.drift and t.details.rerun for t in trials)
    rec = analyse(store, store.get_sweep(1)).recommendation
    assert not rec.feasible and "drifted" in rec.explanation


def test_unscripted_checks_against_a_real_server_are_stored_with_its_trials(
        tmp_path, tiny_profile, monkeypatch):
    """The checks for real, over HTTP against `tradeoff mock-server` (2 ms per token) started by
    the sweep; the tolerance is widened so this shared machine's noise cannot flag a trial
    (what a flag does is tested above)."""
    import sys

    monkeypatch.setattr(drift, "DRIFT_TOLERANCE", 1e9)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    mock = (f"{sys.executable} -m app.cli mock-server --ttft-ms 20 --itl-ms 2 "
            "--capacity {batch_size} --port {port} --model acme/mock")
    spec = parse_spec({"model": "acme/mock", "tokenizer": "builtin:tiny", "server_cmd": mock,
                       "profile": str(tiny_profile), "policies": ["continuous"],
                       "batch_sizes": [2], "max_wait_ms": [0.0], "concurrency": [2],
                       "requests": 4})
    sweep_id = create_sweep(store, spec, load_profile(str(tiny_profile)))
    assert SweepRunner(store, sweep_id).run() == "done"
    [trial] = store.list_trials(sweep_id)
    check = trial.details.speed_check.to_dict()
    assert check["drift"] is None and trial.details.drift is None
    # The mock server's ITL is 2 ms; TTFT 20 ms plus loopback HTTP.
    assert 1.5 < check["p50_ms"]["itl_ms"] < 20 and 19 < check["p50_ms"]["ttft_ms"] < 200
    assert set(check["reference_p50_ms"]) == {"ttft_ms", "itl_ms"}
