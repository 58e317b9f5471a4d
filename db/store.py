"""The result store: sweeps, trials, requests and saved profiles in SQLite or PostgreSQL.

The Store hands out frozen records, never ORM rows. Every public method is one transaction
(`_session`), and driver errors leave it as StoreError with a one-line message.

Opening: `Store(url)` (create=True) creates the schema of a new database; `Store(url,
create=False)`, for read-only commands, raises StoreError instead, and never creates a SQLite
file. Either way an older schema is upgraded at once, in one transaction, and a newer one
raises SchemaTooNewError.

Conventions: datetimes are naive UTC (aware ones are converted); request times are ms relative
to the trial start; non-finite metric values (nan, inf) are stored as NULL and named in the
trial's `nonfinite` column, so they come back as they went in; non-finite request times are
stored as NULL.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psutil
from sqlalchemy import Engine, create_engine, delete, event, insert, select, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from db.errors import DuplicateTrialError, SchemaTooNewError, StoreError, UnknownSweepError
from db.migrations import SCHEMA_VERSION, current_version, upgrade
from db.models import METRIC_COLUMNS, ProfileModel, RequestModel, SweepModel, TrialModel
from experiments.records import RequestRecord, TrialConfig, TrialMetrics, TrialRecord

DEFAULT_URL = "sqlite:///tradeoff.db"
SWEEP_STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATUSES = ("done", "failed", "cancelled")
DEAD_WORKER_ERROR = "worker died; resume it"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_URL_HINT = "check --db or TRADEOFF_DB"


@dataclass(frozen=True)
class SweepRecord:
    """One stored sweep with its progress and worker liveness."""

    id: int
    name: str
    status: str
    model: str
    device: str
    device_name: str | None
    dtype: str
    profile: dict[str, Any]
    grid: dict[str, Any]
    seed: int
    provenance: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    trials_total: int
    trials_done: int
    trials_failed: int
    current_label: str | None
    error: str | None
    cancel_requested: bool
    worker_pid: int | None
    heartbeat_at: datetime | None
    worker_host: str | None = None
    profile_name: str | None = None


@dataclass(frozen=True)
class StoredRequest:
    """One stored request; times in ms relative to the trial start, None when not reached."""

    trial_id: int
    request_index: int
    num_prompt_tokens: int
    num_output_tokens: int
    scheduled_ms: float
    sent_ms: float
    admitted_ms: float | None
    first_token_ms: float | None
    done_ms: float | None
    itl_mean_ms: float | None
    itl_max_ms: float | None
    error: str | None

    @property
    def is_ok(self) -> bool:
        return self.error is None and self.done_ms is not None


def resolve_db_url(url: str | None = None) -> str:
    """The database URL to open: `url`, else $TRADEOFF_DB, else ./tradeoff.db."""
    return url or os.environ.get("TRADEOFF_DB") or DEFAULT_URL


def utcnow() -> datetime:
    """Now as a naive UTC datetime, the store's only datetime flavour."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


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
            f"postgresql://USER@HOST:PORT/DB ({_URL_HINT})")


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0].strip() if lines else type(orig).__name__


def _open_reason(exc: BaseException) -> str:
    # psycopg: 'connection failed: connection to server at "h", port 1 failed: Connection refused'
    reason = re.sub(r"^.*failed: ", "", _first_line(exc))
    reason = re.sub(r"^FATAL:\s*", "", reason).strip()
    return reason[:1].lower() + reason[1:]


def _is_violation(exc: IntegrityError, kind: str) -> bool:
    # SQLite: "UNIQUE constraint failed"; PostgreSQL: "violates unique constraint".
    return kind in str(exc.orig).lower()


def _naive_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value  # naive datetimes are taken as UTC already
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def load_key(config: TrialConfig) -> str:
    """An exact, non-null key of the load level and of the knobs added after schema version 1.

    NULLs never collide in a unique constraint, so the key spells every part out. Knobs at
    their defaults add nothing: a version-1 row's key still names the same trial.
    """
    if config.concurrency is not None:
        key = f"c={config.concurrency}/b={float(config.burstiness)!r}"
    elif config.speedup is not None:
        key = f"x={float(config.speedup)!r}"
    else:
        rate = None if config.rate is None else float(config.rate)
        key = f"r={rate!r}/b={float(config.burstiness)!r}"
    if config.max_num_batched_tokens is not None:
        key += f"/t={config.max_num_batched_tokens}"
    if config.replicas != 1 or config.router is not None:
        key += f"/n={config.replicas}/{config.router}"
    return key


def _plain(value: Any) -> Any:
    # numpy scalars -> Python scalars: drivers do not adapt numpy.int64.
    return value.item() if hasattr(value, "item") else value


def _metric_values(flat: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(flat) - set(METRIC_COLUMNS))
    if unknown:
        raise StoreError(f"metrics {', '.join(unknown)} have no column in the store; "
                         "add a migration (db/migrations.py)")
    values, nonfinite = {}, {}
    for key in METRIC_COLUMNS:
        value = _plain(flat.get(key))
        if isinstance(value, float) and not math.isfinite(value):
            nonfinite[key], value = repr(value), None
        values[key] = value
    values["nonfinite"] = json.dumps(nonfinite) if nonfinite else None
    return values


def _metrics_from_row(status: str, nonfinite: str | None, values: Sequence[Any]) -> dict:
    if status != "done":
        return {}
    metrics = dict(zip(METRIC_COLUMNS, values, strict=True))
    if nonfinite:
        metrics.update({k: float(v) for k, v in json.loads(nonfinite).items()})
    return metrics


def _ms(t_s: float | None, origin_s: float) -> float | None:
    if t_s is None:
        return None
    ms = float(t_s - origin_s) * 1000.0
    return ms if math.isfinite(ms) else None


def _request_row(trial_id: int, r: RequestRecord, origin_s: float) -> dict[str, Any]:
    times = r.token_times_s
    gaps_ms = [(b - a) * 1000.0 for a, b in zip(times, times[1:], strict=False)]
    return {
        "trial_id": trial_id, "request_index": _plain(r.request_id),
        "num_prompt_tokens": _plain(r.num_prompt_tokens),
        "num_output_tokens": _plain(r.num_output_tokens),
        "scheduled_ms": _ms(r.scheduled_s, origin_s), "sent_ms": _ms(r.sent_s, origin_s),
        "admitted_ms": _ms(r.admitted_s, origin_s),
        "first_token_ms": _ms(r.token_times_s[0], origin_s) if r.token_times_s else None,
        "done_ms": _ms(r.done_s, origin_s),
        "itl_mean_ms": float(sum(gaps_ms) / len(gaps_ms)) if gaps_ms else None,
        "itl_max_ms": float(max(gaps_ms)) if gaps_ms else None,
        "error": r.error,
    }


def _config_values(config: TrialConfig) -> dict[str, Any]:
    return {
        "policy": config.policy, "batch_size": _plain(config.batch_size),
        "max_wait_ms": float(config.max_wait_ms), "concurrency": _plain(config.concurrency),
        "rate": None if config.rate is None else float(config.rate),
        "burstiness": float(config.burstiness), "repetition": _plain(config.repetition),
        "max_num_batched_tokens": _plain(config.max_num_batched_tokens),
        "replicas": _plain(config.replicas), "router": config.router,
        "speedup": None if config.speedup is None else float(config.speedup),
        "load_key": load_key(config),
    }


# The hot paths use Core on the tables, not ORM entities: no per-row ORM work, and statements
# built once so SQLAlchemy's compiled cache always hits (10,000 trials list in well under 1 s).
_TRIALS, _REQUESTS = TrialModel.__table__, RequestModel.__table__
_INSERT_TRIAL = insert(_TRIALS).returning(_TRIALS.c.id)
_INSERT_REQUESTS = insert(_REQUESTS)
_CONFIG_NAMES = (
    "policy", "batch_size", "max_wait_ms", "concurrency", "rate", "burstiness", "repetition",
    "max_num_batched_tokens", "replicas", "router", "speedup",
)
_CONFIG_COLUMNS = tuple(_TRIALS.c[name] for name in _CONFIG_NAMES)
_NUM_CONFIG = len(_CONFIG_COLUMNS)
# _trial_record unpacks rows in this order.
_TRIAL_COLUMNS = (
    _TRIALS.c.id, _TRIALS.c.sweep_id, *_CONFIG_COLUMNS, _TRIALS.c.status, _TRIALS.c.error,
    _TRIALS.c.started_at, _TRIALS.c.finished_at, _TRIALS.c.nonfinite, _TRIALS.c.details_json,
    *(_TRIALS.c[name] for name in METRIC_COLUMNS),
)


def _config(row: Sequence[Any]) -> TrialConfig:
    values = dict(zip(_CONFIG_NAMES, row, strict=True))
    values["replicas"] = values["replicas"] or 1  # NULL in rows written before version 3
    return TrialConfig(**values)


def _trial_record(row: Sequence[Any]) -> TrialRecord:
    trial_id, sweep_id = row[0], row[1]
    first = 2 + _NUM_CONFIG
    status, error, started_at, finished_at, nonfinite, details = row[first:first + 6]
    return TrialRecord(
        trial_id=trial_id, sweep_id=sweep_id, config=_config(row[2:first]), status=status,
        metrics=_metrics_from_row(status, nonfinite, row[first + 6:]), error=error,
        started_at=started_at, finished_at=finished_at,
        details=json.loads(details) if details else {},
    )


def _sweep_record(row: SweepModel) -> SweepRecord:
    return SweepRecord(
        id=row.id, name=row.name, status=row.status, model=row.model, device=row.device,
        device_name=row.device_name, dtype=row.dtype, profile=json.loads(row.profile_json),
        grid=json.loads(row.grid_json), seed=row.seed,
        provenance=json.loads(row.provenance_json), created_at=row.created_at,
        started_at=row.started_at, finished_at=row.finished_at,
        trials_total=row.trials_total, trials_done=row.trials_done,
        trials_failed=row.trials_failed, current_label=row.current_label, error=row.error,
        cancel_requested=row.cancel_requested, worker_pid=row.worker_pid,
        heartbeat_at=row.heartbeat_at, worker_host=row.worker_host,
        profile_name=row.profile_name,
    )


def _to_json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _pid_alive(pid: int) -> bool:
    try:
        # A zombie is a worker that died but was not reaped by its parent (the UI).
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # exists but not ours to inspect


class Store:
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
            return f"cannot open database '{self.display_url}': {_open_reason(exc)}; {_URL_HINT}"
        return f"database error in '{self.display_url}': {_first_line(exc)}"

    def _check_exists(self) -> None:
        url = self.engine.url
        path = url.database
        if url.get_backend_name() == "sqlite" and path and path != ":memory:" \
                and not os.path.exists(path):
            raise StoreError(f"no database at '{path}'; run a sweep first, or {_URL_HINT}")

    def _prepare_schema(self, create: bool) -> None:
        with self._session(opening=True) as s:
            found = current_version(s.connection())
        if found > SCHEMA_VERSION:
            raise SchemaTooNewError(found, SCHEMA_VERSION)
        if found == 0 and not create:
            raise StoreError(f"'{self.display_url}' holds no tradeoff tables; run a sweep "
                             f"first, or {_URL_HINT}")
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
            device=device, device_name=device_name, dtype=dtype, profile_json=_to_json(profile),
            grid_json=_to_json(grid), seed=seed, provenance_json=_to_json(provenance),
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
            return _sweep_record(s.get_one(SweepModel, sweep_id)) if result.rowcount else None

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
            return _sweep_record(row)

    def list_sweeps(self) -> list[SweepRecord]:
        """All sweeps, newest first."""
        query = select(SweepModel).order_by(SweepModel.created_at.desc(), SweepModel.id.desc())
        with self._session() as s:
            return [_sweep_record(row) for row in s.scalars(query)]

    def latest_sweep(self, profile_name: str | None = None) -> SweepRecord | None:
        """The newest sweep (of this profile, if given), or None."""
        query = select(SweepModel).order_by(SweepModel.created_at.desc(), SweepModel.id.desc())
        if profile_name is not None:
            query = query.where(SweepModel.profile_name == profile_name)
        with self._session() as s:
            row = s.scalars(query.limit(1)).first()
            return None if row is None else _sweep_record(row)

    def _queued_query(self) -> Any:
        return (select(SweepModel).where(SweepModel.status == "queued")
                .order_by(SweepModel.created_at, SweepModel.id).limit(1))

    def next_queued_sweep(self) -> SweepRecord | None:
        """The oldest queued sweep, or None."""
        with self._session() as s:
            row = s.scalars(self._queued_query()).first()
            return None if row is None else _sweep_record(row)

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

    # -- trials ----------------------------------------------------------------------------

    def add_trial(
        self, sweep_id: int, config: TrialConfig, metrics: TrialMetrics,
        requests: Sequence[RequestRecord], started_at: datetime | None,
        finished_at: datetime | None, *, trial_start_s: float | None = None,
    ) -> int:
        """Store a done trial and all its requests in one transaction; return the trial id."""
        # Request times are kept relative to trial_start_s, on the trial's own clock; without
        # it, the earliest scheduled time stands for the trial start.
        values = {**_metric_values(metrics.flat()), "slos_json": _to_json(metrics.slos),
                  "details_json": _to_json(metrics.details) if metrics.details else None}
        origin_s = trial_start_s if trial_start_s is not None else \
            min((r.scheduled_s for r in requests), default=0.0)
        with self._session(write=True) as s:
            trial_id = self._insert_trial(s, sweep_id, config, "done", started_at,
                                          finished_at, values)
            if requests:  # one executemany, not one INSERT per request
                s.connection().execute(_INSERT_REQUESTS,
                                       [_request_row(trial_id, r, origin_s) for r in requests])
            return trial_id

    def add_failed_trial(
        self, sweep_id: int, config: TrialConfig, error: str, started_at: datetime | None,
        finished_at: datetime | None,
    ) -> int:
        """Store a trial that failed (no metrics, no requests); return its id."""
        with self._session(write=True) as s:
            return self._insert_trial(s, sweep_id, config, "failed", started_at, finished_at,
                                      {"error": error})

    def _insert_trial(
        self, s: Session, sweep_id: int, config: TrialConfig, status: str,
        started_at: datetime | None, finished_at: datetime | None, values: dict[str, Any],
    ) -> int:
        params = {
            "sweep_id": sweep_id, "status": status, "started_at": _naive_utc(started_at),
            "finished_at": _naive_utc(finished_at), **_config_values(config), **values,
        }
        try:
            return s.connection().execute(_INSERT_TRIAL, params).scalar_one()
        except IntegrityError as exc:
            if _is_violation(exc, "unique"):
                raise DuplicateTrialError(f"sweep {sweep_id} already has trial {config.label} "
                                          f"(repetition {config.repetition})") from exc
            if _is_violation(exc, "foreign key"):
                raise UnknownSweepError(sweep_id) from exc
            raise

    def done_configs(self, sweep_id: int) -> set[TrialConfig]:
        """Configs of the sweep's stored trials, done or failed: what a resume must skip."""
        query = select(*_CONFIG_COLUMNS).where(_TRIALS.c.sweep_id == sweep_id)
        with self._session() as s:
            return {_config(row) for row in s.connection().execute(query).all()}

    def list_trials(self, sweep_ids: int | Iterable[int]) -> list[TrialRecord]:
        """Trials of one sweep or several, in sweep then insertion order."""
        ids = [sweep_ids] if isinstance(sweep_ids, int) else list(sweep_ids)
        query = (select(*_TRIAL_COLUMNS).where(_TRIALS.c.sweep_id.in_(ids))
                 .order_by(_TRIALS.c.sweep_id, _TRIALS.c.id))
        with self._session() as s:
            return [_trial_record(row) for row in s.connection().execute(query).all()]

    def trial_slos(self, trial_id: int) -> dict[str, dict[str, float]]:
        """The SLOs a trial was judged against (TrialMetrics.slos); {} when none."""
        with self._session() as s:
            raw = s.scalar(select(TrialModel.slos_json).where(TrialModel.id == trial_id))
        return json.loads(raw) if raw else {}

    def get_requests(self, trial_id: int) -> list[StoredRequest]:
        """The trial's requests in request order, times in ms from the trial start."""
        columns = [c for c in _REQUESTS.columns if c.name != "id"]
        query = (select(*columns).where(_REQUESTS.c.trial_id == trial_id)
                 .order_by(_REQUESTS.c.request_index))
        with self._session() as s:
            return [StoredRequest(**row._mapping) for row in s.connection().execute(query).all()]

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
