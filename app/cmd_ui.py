"""`tradeoff ui`: the Streamlit dashboard on one result store."""

from __future__ import annotations

import os
import signal
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
        "--global.developmentMode", "false", "--client.toolbarMode", "viewer",
    ]


def ui_env(db_url: str) -> dict[str, str]:
    """The environment the dashboard runs in: the db URL, repo importable."""
    env = dict(os.environ, **{DB_ENV: db_url})
    root = str(DASHBOARD.parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def absolute_db_url(url: str) -> str:
    """A SQLite URL with an absolute path: the dashboard and its workers must open one file."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return url
    if parsed.database in (None, "", ":memory:"):
        raise BadInput("--db: an in-memory database cannot be shared with the sweep worker; "
                       "use a file, e.g. sqlite:///tradeoff.db")
    path = os.path.abspath(parsed.database)
    return parsed.set(database=path).render_as_string(hide_password=False)


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
    from app.preflight import check_bind
    from db.store import Store, resolve_db_url

    _check_streamlit()
    check_bind(host, port).close()  # a bad host or a port in use: one line, before Streamlit
    url = resolve_db_url(db)
    with Store(url) as store:  # a bad URL fails here, as one line, before the server starts
        shown = store.display_url
    url = absolute_db_url(url)
    print(f"tradeoff ui: http://{host}:{port} (db: {shown})", file=sys.stderr)
    raise typer.Exit(serve(streamlit_command(port, host), ui_env(url)))


def serve(command: list[str], env: dict[str, str]) -> int:
    """Run the server until it exits; SIGTERM and Ctrl-C stop it (sweep workers keep going)."""
    proc = subprocess.Popen(command, env=env)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the server got the same Ctrl-C (one process group)
        proc.wait()
        return 0
