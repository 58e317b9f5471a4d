"""`tradeoff report`: the HTML report written from the command line, and its bad inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from html import escape
from pathlib import Path

import pytest

from app.cli import main
from app.dashboard.synthetic import add_synthetic_sweep
from db.store import Store
from experiments.analysis.queries import analyse

SPEC = {"model": "builtin:tiny", "profile": "chat", "policies": ["static", "continuous"],
        "batch_sizes": [1, 4], "max_wait_ms": [0.0], "concurrency": [1, 4], "requests": 8}


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, str]:
    """A real SQLite file with one synthetic sweep; its URL and its recommendation's text."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with Store(url) as store:
        sweep_id = add_synthetic_sweep(store, SPEC)
        explanation = analyse(store, store.get_sweep(sweep_id)).recommendation.explanation
    return url, explanation


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*")}


def test_report_writes_the_recommendation(db, tmp_path: Path, capsys) -> None:
    url, explanation = db
    out = tmp_path / "report.html"
    assert main(["report", "--sweep", "1", "-o", str(out), "--db", url]) == 0
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and escape(explanation) in html
    assert "Pareto frontier" in html
    assert str(out) in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.html.")]  # no temp left


def test_report_defaults_to_the_latest_sweep_and_a_safe_name(db, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--db", db[0]]) == 0
    assert (tmp_path / "tradeoff-sweep-1-chat.html").is_file()


@pytest.mark.parametrize("args, needle", [
    (["--sweep", "7", "-o", "{tmp}/r.html"], "no sweep with id 7"),
    (["-o", "{tmp}"], "is a directory"),
    (["-o", "{tmp}/missing/r.html"], "does not exist"),
    (["-o", "{tmp}/r.db/r.html"], "not a directory"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(db, tmp_path: Path, capsys, args, needle) -> None:
    before = files_in(tmp_path)
    argv = ["report", *[a.format(tmp=tmp_path) for a in args], "--db", db[0]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and err.startswith("error: ")
    assert files_in(tmp_path) - {"r.db-wal", "r.db-shm"} == before - {"r.db-wal", "r.db-shm"}


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_directory_exits_2(db, tmp_path: Path, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["report", "-o", str(locked / "r.html"), "--db", db[0]]) == 2
    assert "no permission to write" in capsys.readouterr().err
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_a_path_not_even_root_may_write_exits_2(db, capsys) -> None:
    assert main(["report", "-o", "/sys/tradeoff-report.html", "--db", db[0]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output /sys/tradeoff-report.html") and err.count("\n") == 1


def test_without_plotly_exits_2_naming_the_extra(db, tmp_path: Path, capsys, monkeypatch) -> None:
    import app.dashboard

    for name in ("report", "charts"):  # import them afresh
        monkeypatch.delitem(sys.modules, f"app.dashboard.{name}", raising=False)
        monkeypatch.delattr(app.dashboard, name, raising=False)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)  # as if not installed
    assert main(["report", "-o", str(tmp_path / "r.html"), "--db", db[0]]) == 2
    assert "tradeoff[ui]" in capsys.readouterr().err and not (tmp_path / "r.html").exists()


def test_report_needs_no_streamlit() -> None:
    code = "import sys, app.cmd_report, app.dashboard.report; sys.exit('streamlit' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_no_database_exits_2_and_creates_none(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.html"
    assert main(["report", "-o", str(out), "--db", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no database" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
