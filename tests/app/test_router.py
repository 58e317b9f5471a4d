"""The router: Run is the landing page, every page is reachable, a bad store is one message."""

from __future__ import annotations

from pathlib import Path

import pytest
from dashboard_helpers import plain, texts
from streamlit.testing.v1 import AppTest

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "dashboard" / "main.py")


def test_lands_on_run(db_url: str) -> None:
    app = AppTest.from_file(MAIN, default_timeout=60).run()
    assert not app.exception
    assert texts(app.title) == ["Run a sweep"]


def test_unusable_store_is_one_message(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dir.db").mkdir()  # a directory where the SQLite file should be
    monkeypatch.setenv("TRADEOFF_DB", f"sqlite:///{tmp_path / 'dir.db'}")
    app = AppTest.from_file(MAIN, default_timeout=60).run()
    assert not app.exception
    assert any("Cannot open the result store" in plain(t) for t in texts(app.error))
