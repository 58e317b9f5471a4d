"""Schema versions of the store and the ordered migrations between them.

Every database, new or old, reaches the current schema the same way: the Store runs the
migrations it lacks, in order, in one transaction (SQLite and PostgreSQL both have transactional
DDL). A migration is frozen once released: it spells out the tables it creates itself and never
reads db/models.py, which follows the newest schema (tests check the two agree). Only portable
DDL: CREATE TABLE / INDEX and ALTER TABLE ADD COLUMN of nullable columns. A migration of stored
JSON (version 5) spells out its rewrite too, never through common/details.py, which moves on.

To change the schema: append a migration, bump nothing else (SCHEMA_VERSION follows the list),
update db/models.py, and commit an old-version fixture db (scripts/make_db_fixture.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.schema import CreateColumn

from db.errors import SchemaTooNewError, StoreError

# Frozen copies of the metric names as of version 1 (not imported: they must not move).
_V1_LATENCY = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "queue_wait_ms", "service_ms")
_V1_STATS = ("p50", "p90", "p95", "p99", "mean")


@dataclass(frozen=True)
class Migration:
    """One step of the schema: applying it takes a database to `version`."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _version_table(metadata: MetaData) -> Table:
    return Table(
        "schema_version", metadata,
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("description", String(255), nullable=False),
        Column("applied_at", DateTime, nullable=False),
    )


def _v1_metric_columns() -> list[Column]:
    latency = [Column(f"{m}_{s}", Float) for m in _V1_LATENCY for s in _V1_STATS]
    return [
        Column("requests_completed", Integer), Column("requests_failed", Integer),
        Column("duration_s", Float), Column("requests_per_s", Float),
        Column("output_tokens_per_s", Float), Column("total_tokens_per_s", Float),
        *latency,
        Column("goodput_rps", Float), Column("slo_attainment", Float),
        Column("mean_batch_size", Float), Column("peak_memory_mb", Float),
        Column("saturated", Boolean),
    ]


def _v1_sweeps(metadata: MetaData) -> Table:
    return Table(
        "sweeps", metadata,
        Column("id", Integer, primary_key=True),
        Column("name", String(255), nullable=False),
        Column("profile_name", String(255)),
        Column("status", String(32), nullable=False),
        Column("model", String(255), nullable=False),
        Column("device", String(32), nullable=False),
        Column("device_name", String(255)),
        Column("dtype", String(32), nullable=False),
        Column("profile_json", Text, nullable=False),
        Column("grid_json", Text, nullable=False),
        Column("seed", Integer, nullable=False),
        Column("provenance_json", Text, nullable=False),
        Column("created_at", DateTime, nullable=False),
        Column("started_at", DateTime),
        Column("finished_at", DateTime),
        Column("trials_total", Integer, nullable=False),
        Column("trials_done", Integer, nullable=False),
        Column("trials_failed", Integer, nullable=False),
        Column("current_label", String(255)),
        Column("cancel_requested", Boolean, nullable=False),
        Column("error", Text),
        Index("ix_sweeps_profile_name", "profile_name"),
    )


def _v1_trials(metadata: MetaData) -> Table:
    return Table(
        "trials", metadata,
        Column("id", Integer, primary_key=True),
        Column("sweep_id", Integer, ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=False),
        Column("policy", String(32), nullable=False),
        Column("batch_size", Integer, nullable=False),
        Column("max_wait_ms", Float, nullable=False),
        Column("concurrency", Integer),
        Column("rate", Float),
        Column("burstiness", Float, nullable=False),
        Column("repetition", Integer, nullable=False),
        Column("load_key", String(64), nullable=False),
        Column("status", String(32), nullable=False),
        Column("started_at", DateTime),
        Column("finished_at", DateTime),
        *_v1_metric_columns(),
        Column("nonfinite", Text),
        Column("slos_json", Text),
        Column("error", Text),
        UniqueConstraint(
            "sweep_id", "policy", "batch_size", "max_wait_ms", "load_key", "repetition",
            name="uq_trials_config",
        ),
    )


def _v1_requests(metadata: MetaData) -> Table:
    return Table(
        "requests", metadata,
        Column("id", Integer, primary_key=True),
        Column("trial_id", Integer, ForeignKey("trials.id", ondelete="CASCADE"), nullable=False),
        Column("request_index", Integer, nullable=False),
        Column("num_prompt_tokens", Integer, nullable=False),
        Column("num_output_tokens", Integer, nullable=False),
        Column("scheduled_ms", Float, nullable=False),
        Column("sent_ms", Float, nullable=False),
        Column("admitted_ms", Float),
        Column("first_token_ms", Float),
        Column("done_ms", Float),
        Column("itl_mean_ms", Float),
        Column("itl_max_ms", Float),
        Column("error", Text),
        UniqueConstraint("trial_id", "request_index", name="uq_requests_trial_index"),
    )


def _v1_initial(conn: Connection) -> None:
    """Version 1: sweeps, trials, requests (no worker liveness, no saved profiles)."""
    metadata = MetaData()
    for make in (_version_table, _v1_sweeps, _v1_trials, _v1_requests):
        make(metadata)
    metadata.create_all(conn)


def _v2_profiles(metadata: MetaData) -> Table:
    return Table(
        "profiles", metadata,
        Column("id", Integer, primary_key=True),
        Column("name", String(255), nullable=False),
        Column("yaml_text", Text, nullable=False),
        Column("created_at", DateTime, nullable=False),
        Column("updated_at", DateTime, nullable=False),
        UniqueConstraint("name", name="uq_profiles_name"),
    )


def _v2_liveness_and_profiles(conn: Connection) -> None:
    """Version 2: worker pid/host/heartbeat on sweeps, a queue index, saved profiles."""
    for column in (
        Column("worker_pid", Integer), Column("worker_host", String(255)),
        Column("heartbeat_at", DateTime),
    ):
        add_column(conn, "sweeps", column)
    stub = Table("sweeps", MetaData(), Column("status", String(32)), Column("created_at", DateTime))
    Index("ix_sweeps_status_created", stub.c.status, stub.c.created_at).create(conn)
    _v2_profiles(MetaData()).create(conn)


def _v3_knobs_and_self_check(conn: Connection) -> None:
    """Version 3: token budget, replicas/router, trace speed-up, client self-check, roofline, details."""
    for column in (
        Column("client_bound", Boolean), Column("client_bound_reason", Text),
        Column("client_lag_ms_p50", Float), Column("client_lag_ms_p99", Float),
        Column("client_lag_ms_max", Float), Column("roofline_decode", Float),
        Column("roofline_prefill", Float), Column("max_num_batched_tokens", Integer),
        Column("replicas", Integer), Column("router", String(32)), Column("speedup", Float),
        Column("details_json", Text),
    ):
        add_column(conn, "trials", column)


def _v4_sessions_and_prefix_cache(conn: Connection) -> None:
    """Version 4: a request's session, turn and cached prompt tokens; a trial's prefix-cache hit
    rate and its prefix-caching knob (NULL: the engine's default)."""
    for column in (Column("session_id", Integer), Column("turn", Integer),
                   Column("num_cached_tokens", Integer)):
        add_column(conn, "requests", column)
    add_column(conn, "trials", Column("prefix_cache_hit_rate", Float))
    add_column(conn, "trials", Column("prefix_caching", Boolean))


def _v5_details_revision(conn: Connection) -> None:
    """Version 5: trial details in the shape of their typed records (common/details.py). Of
    every key details carried, one moved: searches of early December 2026 stored a revision
    under the prediction (`prediction.revision`); it is `revision` since (a search over an
    external server has no prediction). Rows are rewritten only where it is found; every other
    change over time added keys, which the records read as unknown (None). No schema change."""
    trials = Table("trials", MetaData(), Column("id", Integer, primary_key=True),
                   Column("details_json", Text))
    query = select(trials.c.id, trials.c.details_json).where(
        trials.c.details_json.like('%"revision"%'))
    for trial_id, stored in conn.execute(query).all():
        moved = _v5_moved(json.loads(stored))
        if moved is not None:
            conn.execute(trials.update().where(trials.c.id == trial_id).values(
                details_json=json.dumps(moved, sort_keys=True, default=str)))


def _v5_moved(details: dict) -> dict | None:
    """`details` with `prediction.revision` moved to `revision`; None when there is none."""
    prediction = details.get("prediction")
    if not isinstance(prediction, dict) or "revision" not in prediction:
        return None
    prediction = {k: v for k, v in prediction.items() if k != "revision"}
    out = {**details, "prediction": prediction}
    out.setdefault("revision", details["prediction"]["revision"])  # a newer one wins
    return out


def _v6_search_repeats(conn: Connection) -> None:
    """Version 6: a capacity search stops repeating a load that its repetitions left would likely
    neither decide nor reverse (`search.skip_futile_repeats`, new searches: true). Searches
    stored before spent every repetition; their grids get `false`, so a replay of their trials
    walks the same loads and reaches the same answer. Grids without a search, or with the key,
    are left alone."""
    sweeps = Table("sweeps", MetaData(), Column("id", Integer, primary_key=True),
                   Column("grid_json", Text))
    query = select(sweeps.c.id, sweeps.c.grid_json).where(sweeps.c.grid_json.like('%"search"%'))
    for sweep_id, stored in conn.execute(query).all():
        grid = json.loads(stored)
        search = grid.get("search") if isinstance(grid, dict) else None
        if isinstance(search, dict) and "skip_futile_repeats" not in search:
            grid["search"] = {**search, "skip_futile_repeats": False}
            conn.execute(sweeps.update().where(sweeps.c.id == sweep_id).values(
                grid_json=json.dumps(grid, sort_keys=True, default=str)))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema: sweeps, trials, requests", _v1_initial),
    Migration(2, "worker liveness columns, sweep queue index, profiles", _v2_liveness_and_profiles),
    Migration(3, "token budget, replicas, router, speed-up, client self-check, roofline, details",
              _v3_knobs_and_self_check),
    Migration(4, "request session, turn and cached prompt tokens; trial prefix caching and hit rate",
              _v4_sessions_and_prefix_cache),
    Migration(5, "trial details: a search revision moved from prediction.revision to revision",
              _v5_details_revision),
    Migration(6, "searches stored before the futility stop keep spending every repetition",
              _v6_search_repeats),
)
SCHEMA_VERSION: int = MIGRATIONS[-1].version


def add_column(conn: Connection, table: str, column: Column) -> None:
    """ALTER TABLE ADD COLUMN, rendered for the connection's dialect (nullable columns only)."""
    Table(table, MetaData(), column)  # CreateColumn needs the column attached to a table
    spec = CreateColumn(column).compile(dialect=conn.dialect)
    quoted = conn.dialect.identifier_preparer.quote(table)
    conn.execute(text(f"ALTER TABLE {quoted} ADD COLUMN {spec}"))


def current_version(conn: Connection) -> int:
    """The database's schema version; 0 when it holds no tradeoff tables at all."""
    names = set(inspect(conn).get_table_names())
    if "schema_version" in names:
        table = _version_table(MetaData())
        return conn.scalar(select(func.max(table.c.version))) or 0
    if names & {"sweeps", "trials", "requests"}:
        raise StoreError("database has sweeps/trials tables but no schema_version table; "
                         "it was not written by tradeoff")
    return 0


def upgrade(conn: Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply the migrations the database lacks, up to `target`; return the version found."""
    found = current_version(conn)
    if found > SCHEMA_VERSION:
        raise SchemaTooNewError(found, SCHEMA_VERSION)
    table = _version_table(MetaData())
    for migration in MIGRATIONS:
        if found < migration.version <= target:
            migration.apply(conn)
            conn.execute(table.insert().values(
                version=migration.version, description=migration.description,
                applied_at=datetime.now(timezone.utc).replace(tzinfo=None),
            ))
    return found
