"""--replicas / --router from outside: bad input exits 2 with nothing written; real replica trials."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from app.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, needle", [
    (["--replicas", "0"], "replicas must be an integer >= 1"),
    (["--replicas", "2", "--router", "fastest"], "unknown router 'fastest'"),
    (["--router", "round_robin"], "give --replicas 2 or more"),
    (["--replicas", "2", "--target", "http://127.0.0.1:1/v1"], "external --target scales itself"),
])
def test_trial_bad_scale_exits_2_with_one_line(capsys, args: list[str], needle: str):
    code, out, err = run_cli(capsys, "trial", "--concurrency", "1", *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


@pytest.mark.parametrize("flags, needle", [
    (["--replicas", "0,2"], "every replica count must be >= 1"),
    (["--replicas", "2", "--router", "round_robin,fastest"], "unknown router 'fastest'"),
    (["--router", "round_robin"], "add a replica count >= 2"),
    (["--replicas", "1,x"], "--replicas"),
])
def test_sweep_bad_scale_exits_2_and_writes_nothing(capsys, tmp_path: Path, tiny_profile: Path,
                                                    flags: list[str], needle: str):
    db = tmp_path / "t.db"
    code, _, err = run_cli(capsys, "sweep", "--profile", str(tiny_profile), "--concurrency", "2",
                           "--db", f"sqlite:///{db}", *flags)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err
    if db.exists():
        assert sqlite3.connect(db).execute("select count(*) from sweeps").fetchone() == (0,)


@pytest.mark.slow
def test_trial_json_config_carries_replicas_and_router(capsys, tiny_profile: Path):
    code, out, err = run_cli(capsys, "trial", "--profile", str(tiny_profile), "--replicas", "2",
                             "--router", "least_outstanding", "--rate", "20", "--requests", "12",
                             "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["config"]["replicas"] == 2 and result["config"]["router"] == "least_outstanding"
    assert result["requests_completed"] == 12
    assert result["placement"]["replicas"] == 2 and len(result["placement"]["placements"]) == 2


@pytest.mark.slow
def test_sweep_over_replicas_and_routers_stores_each_with_its_placement(capsys, tmp_path: Path,
                                                                        tiny_profile: Path):
    db = f"sqlite:///{tmp_path / 't.db'}"
    code, _, err = run_cli(capsys, "sweep", "--profile", str(tiny_profile), "--policy", "continuous",
                           "--batch-sizes", "4", "--max-wait-ms", "0", "--concurrency", "4",
                           "--requests", "6", "--replicas", "1,2",
                           "--router", "round_robin,least_outstanding", "--db", db)
    assert code == 0, err
    from db.store import Store

    store = Store(db)
    trials = store.list_trials(1)
    assert sorted((t.config.replicas, t.config.router) for t in trials) == [
        (1, None), (2, "least_outstanding"), (2, "round_robin")]
    for t in trials:
        where = t.details.provenance.to_dict()
        assert where["replicas"]["replicas"] == t.config.replicas
        assert where["replicas"]["router"] == t.config.router
        assert where["node"] and where["device"] == "cpu"
    store.close()
    code, out, _ = run_cli(capsys, "trials", "1", "--format", "json", "--db", db)
    assert code == 0
    assert sorted((r["replicas"], r["router"] or "") for r in json.loads(out)) == [
        (1, ""), (2, "least_outstanding"), (2, "round_robin")]


@pytest.mark.parametrize("engine_extra, needle", [
    ("replicas: 0", "replicas must be an integer >= 1"),
    ("replicas: 2\n  router: fastest", "unknown router 'fastest'"),
])
def test_exported_config_with_bad_replicas_exits_2(capsys, tmp_path: Path, engine_extra: str,
                                                   needle: str):
    path = tmp_path / "x.yaml"
    path.write_text("engine:\n  model: builtin:tiny\n  policy: continuous\n  max_batch_size: 4\n"
                    f"  max_wait_ms: 0\n  {engine_extra}\n")
    for command in ("trial", "serve"):
        code, _, err = run_cli(capsys, command, "--config", str(path))
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (command, err)
