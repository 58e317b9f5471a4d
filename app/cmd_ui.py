"""`tradeoff ui`: the Streamlit dashboard on one result store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from app.cli import app
from app.errors import BadInput

DASHBOARD = Path(__file__).resolve().parent / "dashboard" / "main.py"
DB_ENV = "TRADEOFF_DB"


def streamlit_command(port: int, host: str) -> list[str]:
    """The `streamlit run` command line: headless, no usage stats, no file watcher."""
    return [
        sys.executable, "-m", "streamlit", "run", str(DASHBOARD),
        "--server.headless", "true", "--server.port", str(port), "--server.address", host,
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--global.developmentMode", "false",
    ]


def ui_env(db_url: str) -> dict[str, str]:
    """The environment the dashboard runs in: the db URL, repo importable."""
    env = dict(os.environ, **{DB_ENV: db_url})
    root = str(DASHBOARD.parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _check_streamlit() -> None:
    try:
        import plotly  # noqa: F401
        import streamlit  # noqa: F401
    except ImportError as exc:
        raise BadInput(f"the dashboard needs the ui extra ({exc.name} is missing); "
                       "run: pip install 'tradeoff[ui]'") from None


@app.command()
def ui(
    db: str | None = typer.Option(None, "--db", help="SQLAlchemy URL of the result store "
                                     "(default: $TRADEOFF_DB or sqlite:///tradeoff.db)"),
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="port to serve on"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (0.0.0.0 shares it)"),
) -> None:
    """Open the dashboard: launch sweeps, explore frontiers, export recommendations."""
    from db.store import Store, resolve_db_url

    _check_streamlit()
    url = resolve_db_url(db)
    Store(url).close()  # a bad URL fails here, as one line, before the server starts
    print(f"tradeoff ui: http://{host}:{port} (db: {url})", file=sys.stderr)
    try:
        code = subprocess.call(streamlit_command(port, host), env=ui_env(url))
    except KeyboardInterrupt:
        code = 0  # Ctrl-C stops the server; sweeps keep running in their worker
    raise typer.Exit(code)
