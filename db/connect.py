"""Opening a database: URL resolution, engines with SQLite's pragmas, one-line open errors."""

from __future__ import annotations

import os
import re
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from db.errors import StoreError

DEFAULT_URL = "sqlite:///tradeoff.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
URL_HINT = "check --db or TRADEOFF_DB"


def resolve_db_url(url: str | None = None) -> str:
    """The database URL to open: `url`, else $TRADEOFF_DB, else ./tradeoff.db."""
    return url or os.environ.get("TRADEOFF_DB") or DEFAULT_URL


def make_engine(url: str) -> Engine:
    """An Engine for `url`, with SQLite pragmas; a bad URL or missing driver raises StoreError."""
    try:
        parsed = _normalize_url(make_url(url))
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        return create_engine(parsed, pool_pre_ping=True, connect_args=_connect_args(parsed))
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
        raise StoreError(_bad_url_message(url, exc)) from exc


def _normalize_url(url: URL) -> URL:
    # psycopg 3 is the PostgreSQL driver we ship; a bare postgresql:// would ask for psycopg2.
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url


def _connect_args(url: URL) -> dict[str, Any]:
    # Without a timeout an unreachable host can hang a command for minutes.
    return {"connect_timeout": 10} if url.get_backend_name() == "postgresql" else {}


def _sqlite_engine(url: URL) -> Engine:
    in_memory = url.database in (None, "", ":memory:")
    # One shared connection, or every session would see its own empty in-memory database.
    engine = create_engine(url, poolclass=StaticPool) if in_memory else create_engine(url)
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy emit BEGIN itself (below): pysqlite would not begin before DDL.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")  # readers never block the sweep's writer
    cursor.execute("PRAGMA synchronous = NORMAL")  # with WAL: safe against app crashes
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _on_sqlite_begin(conn: Any) -> None:
    # IMMEDIATE takes the write lock up front: a deferred read-then-write transaction would
    # fail at once with SQLITE_BUSY when another writer committed in between.
    is_write = conn.get_execution_options().get("tradeoff_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if is_write else "BEGIN")


def _bad_url_message(url: str, exc: BaseException) -> str:
    if isinstance(exc, NoSuchModuleError):
        reason = f"unknown database kind {url.split(':', 1)[0]!r}"
    elif isinstance(exc, ImportError):
        reason = f"its driver is not installed ({exc})"
    else:
        reason = "cannot parse it"
    return (f"invalid database URL {url!r}: {reason}; use sqlite:///PATH or "
            f"postgresql://USER@HOST:PORT/DB ({URL_HINT})")


def first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0].strip() if lines else type(orig).__name__


def open_reason(exc: BaseException) -> str:
    # psycopg: 'connection failed: connection to server at "h", port 1 failed: Connection refused'
    reason = re.sub(r"^.*failed: ", "", first_line(exc))
    reason = re.sub(r"^FATAL:\s*", "", reason).strip()
    return reason[:1].lower() + reason[1:]


