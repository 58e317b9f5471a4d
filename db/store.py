"""The result store: sweeps, trials, requests and saved profiles in SQLite or PostgreSQL.

The Store hands out frozen records, never ORM rows. Every public method is one transaction
(`_session`), and driver errors leave it as StoreError with a one-line message.

Opening: `Store(url)` (create=True) creates the schema of a new database; `Store(url,
create=False)`, for read-only commands, raises StoreError instead, and never creates a SQLite
file. Either way an older schema is upgraded at once, in one transaction, and a newer one
raises SchemaTooNewError.

Opening a URL lives in db/connect.py, the layout of rows and records in db/rows.py.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psutil
from sqlalchemy import delete, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db.connect import DEFAULT_URL, URL_HINT, first_line, make_engine, open_reason, resolve_db_url
from db.errors import SchemaTooNewError, StoreError, UnknownSweepError
from db.migrations import SCHEMA_VERSION, current_version, upgrade
from db.models import ProfileModel, SweepModel
from db.rows import (
    StoredRequest,
    SweepRecord,
    sweep_record,
    to_json,
    utcnow,
)
from db.trials_store import TrialsMixin

__all__ = ["DEFAULT_URL", "Store", "StoredRequest", "SweepRecord", "make_engine", "resolve_db_url", "utcnow"]
SWEEP_STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATUSES = ("done", "failed", "cancelled")
DEAD_WORKER_ERROR = "worker died; resume it"


def _pid_alive(pid: int) -> bool:
    try:
        # A zombie is a worker that died but was not reaped by its parent (the UI).
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # exists but not ours to inspect


class Store(TrialsMixin):
    """The result store over one database URL (see the module docstring for `create`)."""

    def __init__(self, url: str | None = None, *, create: bool = True) -> None:
        self.url = resolve_db_url(url)
        self.engine = make_engine(self.url)
        self.display_url = self.engine.url.render_as_string(hide_password=True)
        try:
            if not create:
                self._check_exists()
            self._prepare_schema(create)
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------

    @contextmanager
    def _session(self, write: bool = False, opening: bool = False) -> Iterator[Session]:
        """One transaction: commit on success, roll back on error; driver errors -> StoreError."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(tradeoff_write=write)
                with Session(bind=conn) as session, session.begin():
                    yield session
        except SQLAlchemyError as exc:
            raise StoreError(self._describe(exc, opening)) from exc

    def _describe(self, exc: SQLAlchemyError, opening: bool) -> str:
        if opening:
            return f"cannot open database '{self.display_url}': {open_reason(exc)}; {URL_HINT}"
        return f"database error in '{self.display_url}': {first_line(exc)}"

    @property
    def sqlite_path(self) -> str | None:
        """The file of a SQLite store (None for PostgreSQL or an in-memory SQLite)."""
        url = self.engine.url
        path = url.database
        return path if url.get_backend_name() == "sqlite" and path and path != ":memory:" else None

    def _check_exists(self) -> None:
        url = self.engine.url
        path = url.database
        if url.get_backend_name() == "sqlite" and path and path != ":memory:" \
                and not os.path.exists(path):
            raise StoreError(f"no database at '{path}'; run a sweep first, or {URL_HINT}")

    def _prepare_schema(self, create: bool) -> None:
        with self._session(opening=True) as s:
            found = current_version(s.connection())
        if found > SCHEMA_VERSION:
            raise SchemaTooNewError(found, SCHEMA_VERSION)
        if found == 0 and not create:
            raise StoreError(f"'{self.display_url}' holds no tradeoff tables; run a sweep "
                             f"first, or {URL_HINT}")
        if found < SCHEMA_VERSION:
            with self._session(write=True, opening=True) as s:
                self._lock_for_migration(s)
                upgrade(s.connection())  # re-reads the version under the lock

    def _lock_for_migration(self, s: Session) -> None:
        # Two processes opening a new PostgreSQL db at once must not both create tables;
        # SQLite is already serialized by BEGIN IMMEDIATE.
        if self.engine.dialect.name == "postgresql":
            s.connection().exec_driver_sql("SELECT pg_advisory_xact_lock(7317101)")

    def _update_sweep(self, s: Session, sweep_id: int, **values: Any) -> None:
        result = s.execute(update(SweepModel).where(SweepModel.id == sweep_id).values(**values))
        if result.rowcount == 0:
            raise UnknownSweepError(sweep_id)

    def _sweep_column(self, s: Session, sweep_id: int, column: Any) -> Any:
        row = s.execute(select(column).where(SweepModel.id == sweep_id)).first()
        if row is None:
            raise UnknownSweepError(sweep_id)
        return row[0]

    # -- sweeps ----------------------------------------------------------------------------

    def create_sweep(
        self, name: str, model: str, device: str, device_name: str | None, dtype: str,
        profile: dict[str, Any], grid: dict[str, Any], seed: int, provenance: dict[str, Any],
        trials_total: int,
    ) -> int:
        """Store a new queued sweep; return its id."""
        row = SweepModel(
            name=name, profile_name=profile.get("name"), status="queued", model=model,
            device=device, device_name=device_name, dtype=dtype, profile_json=to_json(profile),
            grid_json=to_json(grid), seed=seed, provenance_json=to_json(provenance),
            created_at=utcnow(), trials_total=trials_total, trials_done=0, trials_failed=0,
            cancel_requested=False,
        )
        with self._session(write=True) as s:
            s.add(row)
            s.flush()
            return row.id

    def start_sweep(self, sweep_id: int, pid: int) -> None:
        """Mark a sweep running in worker `pid` on this host (also when resuming it)."""
        with self._session(write=True) as s:
            started_at = self._sweep_column(s, sweep_id, SweepModel.started_at)
            self._update_sweep(s, sweep_id, **self._running_values(pid, started_at))

    def claim_next_sweep(self, pid: int) -> SweepRecord | None:
        """Atomically start the oldest queued sweep in worker `pid`; None when none is queued."""
        with self._session(write=True) as s:
            sweep_id = s.scalar(self._queued_query().with_only_columns(SweepModel.id))
            if sweep_id is None:
                return None
            result = s.execute(
                update(SweepModel)
                .where(SweepModel.id == sweep_id, SweepModel.status == "queued")
                .values(**self._running_values(pid, None))
            )
            return sweep_record(s.get_one(SweepModel, sweep_id)) if result.rowcount else None

    def _running_values(self, pid: int, started_at: datetime | None) -> dict[str, Any]:
        now = utcnow()
        return {
            "status": "running", "started_at": started_at or now, "finished_at": None,
            "error": None, "cancel_requested": False, "worker_pid": pid,
            "worker_host": socket.gethostname(), "heartbeat_at": now,
        }

    def heartbeat(self, sweep_id: int, pid: int) -> bool:
        """Record that worker `pid` is alive; False when it no longer owns the running sweep."""
        with self._session(write=True) as s:
            result = s.execute(
                update(SweepModel)
                .where(SweepModel.id == sweep_id, SweepModel.worker_pid == pid,
                       SweepModel.status == "running")
                .values(heartbeat_at=utcnow())
            )
            return result.rowcount > 0

    def set_sweep_device(
        self, sweep_id: int, device: str, device_name: str | None, dtype: str,
    ) -> None:
        """Record the device and dtype the worker resolved (e.g. `auto` -> `cuda`)."""
        with self._session(write=True) as s:
            self._update_sweep(s, sweep_id, device=device, device_name=device_name, dtype=dtype)

    def update_progress(
        self, sweep_id: int, trials_done: int, trials_failed: int, current_label: str | None,
    ) -> None:
        """Record how far the sweep got and which trial runs now."""
        with self._session(write=True) as s:
            self._update_sweep(s, sweep_id, trials_done=trials_done,
                               trials_failed=trials_failed, current_label=current_label)

    def finish_sweep(self, sweep_id: int, status: str, error: str | None = None) -> None:
        """Mark a sweep done, failed or cancelled."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"final status must be one of {FINAL_STATUSES}, got {status!r}")
        with self._session(write=True) as s:
            self._update_sweep(s, sweep_id, status=status, error=error,
                               finished_at=utcnow(), current_label=None)

    def requeue_sweep(self, sweep_id: int) -> None:
        """Put a finished (failed, cancelled) sweep back in the queue to resume it."""
        with self._session(write=True) as s:
            self._sweep_column(s, sweep_id, SweepModel.status)  # UnknownSweepError if absent
            self._update_sweep(s, sweep_id, status="queued", error=None, finished_at=None,
                               cancel_requested=False, worker_pid=None, worker_host=None,
                               heartbeat_at=None, current_label=None)

    def set_sweep_grid(self, sweep_id: int, grid: dict[str, Any]) -> None:
        """Replace a sweep's stored spec (a resumed search's new time budget)."""
        with self._session(write=True) as s:
            self._update_sweep(s, sweep_id, grid_json=to_json(grid))

    def request_cancel(self, sweep_id: int) -> None:
        """Ask a sweep to stop: a queued one is cancelled now, a running one by its worker."""
        with self._session(write=True) as s:
            status = self._sweep_column(s, sweep_id, SweepModel.status)
            values: dict[str, Any] = {"cancel_requested": True}
            if status == "queued":
                values.update(status="cancelled", finished_at=utcnow())
            self._update_sweep(s, sweep_id, **values)

    def is_cancel_requested(self, sweep_id: int) -> bool:
        """Whether someone asked this sweep to stop."""
        with self._session() as s:
            return bool(self._sweep_column(s, sweep_id, SweepModel.cancel_requested))

    def get_sweep(self, sweep_id: int) -> SweepRecord:
        """The sweep with this id, or UnknownSweepError."""
        with self._session() as s:
            row = s.get(SweepModel, sweep_id)
            if row is None:
                raise UnknownSweepError(sweep_id)
            return sweep_record(row)

    def list_sweeps(self) -> list[SweepRecord]:
        """All sweeps, newest first."""
        query = select(SweepModel).order_by(SweepModel.created_at.desc(), SweepModel.id.desc())
        with self._session() as s:
            return [sweep_record(row) for row in s.scalars(query)]

    def latest_sweep(self, profile_name: str | None = None) -> SweepRecord | None:
        """The newest sweep (of this profile, if given), or None."""
        query = select(SweepModel).order_by(SweepModel.created_at.desc(), SweepModel.id.desc())
        if profile_name is not None:
            query = query.where(SweepModel.profile_name == profile_name)
        with self._session() as s:
            row = s.scalars(query.limit(1)).first()
            return None if row is None else sweep_record(row)

    def _queued_query(self) -> Any:
        return (select(SweepModel).where(SweepModel.status == "queued")
                .order_by(SweepModel.created_at, SweepModel.id).limit(1))

    def next_queued_sweep(self) -> SweepRecord | None:
        """The oldest queued sweep, or None."""
        with self._session() as s:
            row = s.scalars(self._queued_query()).first()
            return None if row is None else sweep_record(row)

    def delete_sweep(self, sweep_id: int) -> None:
        """Delete a sweep with its trials and requests (not while it runs)."""
        with self._session(write=True) as s:
            if self._sweep_column(s, sweep_id, SweepModel.status) == "running":
                raise StoreError(f"sweep {sweep_id} is running; cancel it first")
            # Trials and requests go by ON DELETE CASCADE, in the database.
            s.execute(delete(SweepModel).where(SweepModel.id == sweep_id))

    def mark_dead_workers(self, timeout_s: float, *, now: datetime | None = None) -> list[int]:
        """Fail running sweeps whose worker is silent for timeout_s or gone; return their ids."""
        now = now or utcnow()
        cutoff, host = now - timedelta(seconds=timeout_s), socket.gethostname()
        columns = (SweepModel.id, SweepModel.worker_pid, SweepModel.worker_host,
                   SweepModel.heartbeat_at, SweepModel.started_at)
        with self._session(write=True) as s:
            rows = s.execute(select(*columns).where(SweepModel.status == "running")).all()
            dead = [row.id for row in rows if self._is_dead(row, cutoff, host)]
            if dead:
                s.execute(update(SweepModel)
                          .where(SweepModel.id.in_(dead), SweepModel.status == "running")
                          .values(status="failed", error=DEAD_WORKER_ERROR, finished_at=now,
                                  current_label=None))
        return dead

    @staticmethod
    def _is_dead(row: Any, cutoff: datetime, host: str) -> bool:
        last_seen = row.heartbeat_at or row.started_at
        if last_seen is None or last_seen < cutoff:
            return True
        # A pid means something only on the host that started the worker.
        return row.worker_host == host and row.worker_pid is not None \
            and not _pid_alive(row.worker_pid)

    # -- profiles --------------------------------------------------------------------------

    def save_profile(self, name: str, yaml_text: str) -> None:
        """Create or replace the user profile `name`."""
        now = utcnow()
        with self._session(write=True) as s:
            row = s.scalars(select(ProfileModel).where(ProfileModel.name == name)).first()
            if row is None:
                s.add(ProfileModel(name=name, yaml_text=yaml_text, created_at=now,
                                   updated_at=now))
            else:
                row.yaml_text, row.updated_at = yaml_text, now

    def get_profile(self, name: str) -> str | None:
        """The YAML text of profile `name`, or None."""
        with self._session() as s:
            return s.scalar(select(ProfileModel.yaml_text).where(ProfileModel.name == name))

    def list_profiles(self) -> dict[str, str]:
        """All user profiles, name -> YAML text, sorted by name."""
        query = select(ProfileModel.name, ProfileModel.yaml_text).order_by(ProfileModel.name)
        with self._session() as s:
            return {name: text for name, text in s.execute(query)}

    def delete_profile(self, name: str) -> bool:
        """Delete profile `name`; False when there was none."""
        with self._session(write=True) as s:
            result = s.execute(delete(ProfileModel).where(ProfileModel.name == name))
            return result.rowcount > 0
