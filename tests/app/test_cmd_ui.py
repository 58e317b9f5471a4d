"""`tradeoff ui`: the Streamlit command line, the db hand-over, one-line errors."""

from __future__ import annotations

import os

import pytest

from app import cmd_ui
from app.cli import main


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict]]:
    """Capture the streamlit command instead of serving."""
    seen: list[tuple[list[str], dict]] = []
    monkeypatch.setattr(cmd_ui, "serve", lambda command, env: seen.append((command, env)) or 0)
    return seen


def test_runs_streamlit_headless_on_loopback_with_the_db(tmp_path, calls, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["ui", "--db", "sqlite:///rel.db", "--port", "8600"]) == 0
    (command, env), = calls
    args = dict(zip(command[5::2], command[6::2], strict=True))
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("main.py")
    assert args["--server.address"] == "127.0.0.1" and args["--server.port"] == "8600"
    assert args["--server.headless"] == "true" and args["--browser.gatherUsageStats"] == "false"
    # The worker may start elsewhere: the UI hands over an absolute path.
    assert env["TRADEOFF_DB"] == f"sqlite:///{tmp_path / 'rel.db'}"
    assert os.path.exists(tmp_path / "rel.db")


def test_sigterm_stops_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal
    import sys

    monkeypatch.setattr(signal, "signal", lambda sig, handler: handler(sig, None))  # fire now
    code = cmd_ui.serve([sys.executable, "-c", "import time; time.sleep(30)"], dict(os.environ))
    assert code == -signal.SIGTERM


def test_host_can_be_shared(tmp_path, calls) -> None:
    assert main(["ui", "--db", f"sqlite:///{tmp_path}/t.db", "--host", "0.0.0.0"]) == 0
    assert "0.0.0.0" in calls[0][0]


@pytest.mark.parametrize(("url", "message"), [
    ("nope://x", "invalid database URL"), ("sqlite://", "in-memory database"),
])
def test_bad_db_is_one_line_and_exit_2(url: str, message: str, calls, capsys) -> None:
    assert main(["ui", "--db", url]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not calls
