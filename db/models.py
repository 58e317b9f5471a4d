"""SQLAlchemy ORM models, one class per table, for the current schema (see db/migrations.py).

Portable on purpose (SQLite and PostgreSQL): integer keys, bounded strings where indexed,
naive UTC datetimes, floats; JSON as text. Non-finite metric values are stored as NULL and
named in `TrialModel.nonfinite` (SQLite turns NaN into NULL and other backends reject inf).
These classes never leave the db package: the Store hands out frozen records.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAME_LEN = 255  # names, model ids, labels, host names
KEY_LEN = 64  # load keys
CODE_LEN = 32  # statuses, policies, devices, dtypes


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""

    # Pinned, not left to SQLAlchemy's defaults (2.1 maps float to DOUBLE): the migrations
    # spell out these exact types, and the schema must not move with the library version.
    type_annotation_map = {int: Integer, float: Float, bool: Boolean, datetime: DateTime}


class SchemaVersionModel(Base):
    """One row per applied migration; the schema version is the highest `version`."""

    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    description: Mapped[str] = mapped_column(String(NAME_LEN))
    applied_at: Mapped[datetime]


class SweepModel(Base):
    """A sweep: a grid of trials over one model, its progress and its worker's liveness."""

    __tablename__ = "sweeps"
    __table_args__ = (
        Index("ix_sweeps_profile_name", "profile_name"),
        Index("ix_sweeps_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    profile_name: Mapped[str | None] = mapped_column(String(NAME_LEN))
    status: Mapped[str] = mapped_column(String(CODE_LEN))
    model: Mapped[str] = mapped_column(String(NAME_LEN))
    device: Mapped[str] = mapped_column(String(CODE_LEN))
    device_name: Mapped[str | None] = mapped_column(String(NAME_LEN))
    dtype: Mapped[str] = mapped_column(String(CODE_LEN))
    profile_json: Mapped[str] = mapped_column(Text)
    grid_json: Mapped[str] = mapped_column(Text)
    seed: Mapped[int]
    provenance_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    trials_total: Mapped[int]
    trials_done: Mapped[int]
    trials_failed: Mapped[int]
    current_label: Mapped[str | None] = mapped_column(String(NAME_LEN))
    cancel_requested: Mapped[bool]
    error: Mapped[str | None] = mapped_column(Text)
    # Added in schema version 2: worker liveness.
    worker_pid: Mapped[int | None]
    worker_host: Mapped[str | None] = mapped_column(String(NAME_LEN))
    heartbeat_at: Mapped[datetime | None]


class TrialModel(Base):
    """One trial: its config, status and every metric of TrialMetrics.flat() as a column."""

    __tablename__ = "trials"
    # load_key, not (concurrency, rate): NULLs never collide in a SQL unique constraint. Since
    # version 3 it also carries the knobs added after version 1 when they are not at their
    # defaults (store.load_key), so old keys keep their meaning and no table rebuild is needed.
    __table_args__ = (
        UniqueConstraint(
            "sweep_id", "policy", "batch_size", "max_wait_ms", "load_key", "repetition",
            name="uq_trials_config",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    policy: Mapped[str] = mapped_column(String(CODE_LEN))
    batch_size: Mapped[int]
    max_wait_ms: Mapped[float]
    concurrency: Mapped[int | None]
    rate: Mapped[float | None]
    burstiness: Mapped[float]
    repetition: Mapped[int]
    load_key: Mapped[str] = mapped_column(String(KEY_LEN))
    status: Mapped[str] = mapped_column(String(CODE_LEN))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    requests_completed: Mapped[int | None]
    requests_failed: Mapped[int | None]
    duration_s: Mapped[float | None]
    requests_per_s: Mapped[float | None]
    output_tokens_per_s: Mapped[float | None]
    total_tokens_per_s: Mapped[float | None]
    ttft_ms_p50: Mapped[float | None]
    ttft_ms_p90: Mapped[float | None]
    ttft_ms_p95: Mapped[float | None]
    ttft_ms_p99: Mapped[float | None]
    ttft_ms_mean: Mapped[float | None]
    tpot_ms_p50: Mapped[float | None]
    tpot_ms_p90: Mapped[float | None]
    tpot_ms_p95: Mapped[float | None]
    tpot_ms_p99: Mapped[float | None]
    tpot_ms_mean: Mapped[float | None]
    itl_ms_p50: Mapped[float | None]
    itl_ms_p90: Mapped[float | None]
    itl_ms_p95: Mapped[float | None]
    itl_ms_p99: Mapped[float | None]
    itl_ms_mean: Mapped[float | None]
    e2e_ms_p50: Mapped[float | None]
    e2e_ms_p90: Mapped[float | None]
    e2e_ms_p95: Mapped[float | None]
    e2e_ms_p99: Mapped[float | None]
    e2e_ms_mean: Mapped[float | None]
    queue_wait_ms_p50: Mapped[float | None]
    queue_wait_ms_p90: Mapped[float | None]
    queue_wait_ms_p95: Mapped[float | None]
    queue_wait_ms_p99: Mapped[float | None]
    queue_wait_ms_mean: Mapped[float | None]
    service_ms_p50: Mapped[float | None]
    service_ms_p90: Mapped[float | None]
    service_ms_p95: Mapped[float | None]
    service_ms_p99: Mapped[float | None]
    service_ms_mean: Mapped[float | None]
    goodput_rps: Mapped[float | None]
    slo_attainment: Mapped[float | None]
    mean_batch_size: Mapped[float | None]
    peak_memory_mb: Mapped[float | None]
    saturated: Mapped[bool | None]
    # Added in schema version 3: the client's self-check and the roofline fraction.
    client_bound: Mapped[bool | None]
    client_bound_reason: Mapped[str | None] = mapped_column(Text)
    client_lag_ms_p50: Mapped[float | None]
    client_lag_ms_p99: Mapped[float | None]
    client_lag_ms_max: Mapped[float | None]
    roofline_decode: Mapped[float | None]
    roofline_prefill: Mapped[float | None]
    nonfinite: Mapped[str | None] = mapped_column(Text)  # JSON {metric: "nan"|"inf"|"-inf"}
    slos_json: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    # Added in schema version 3: server knobs beyond the batching ones, and per-trial extras.
    max_num_batched_tokens: Mapped[int | None]
    replicas: Mapped[int | None]  # NULL in version-2 rows: one replica
    router: Mapped[str | None] = mapped_column(String(CODE_LEN))
    speedup: Mapped[float | None]
    details_json: Mapped[str | None] = mapped_column(Text)
    # Added in schema version 4 (a metric: TrialMetrics.flat() keeps this column order) and a knob.
    prefix_cache_hit_rate: Mapped[float | None]
    prefix_caching: Mapped[bool | None]


class RequestModel(Base):
    """One request of a trial; times in ms relative to the trial start."""

    __tablename__ = "requests"
    __table_args__ = (
        UniqueConstraint("trial_id", "request_index", name="uq_requests_trial_index"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    request_index: Mapped[int]
    num_prompt_tokens: Mapped[int]
    num_output_tokens: Mapped[int]
    scheduled_ms: Mapped[float]
    sent_ms: Mapped[float]
    admitted_ms: Mapped[float | None]
    first_token_ms: Mapped[float | None]
    done_ms: Mapped[float | None]
    itl_mean_ms: Mapped[float | None]
    itl_max_ms: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)
    # Added in schema version 4: session workloads and prefix caching (NULL: none / unknown).
    session_id: Mapped[int | None]
    turn: Mapped[int | None]
    num_cached_tokens: Mapped[int | None]


class ProfileModel(Base):
    """A user-defined workload profile (added in schema version 2)."""

    __tablename__ = "profiles"
    __table_args__ = (UniqueConstraint("name", name="uq_profiles_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    yaml_text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


_TRIAL_NON_METRICS = frozenset({
    "id", "sweep_id", "policy", "batch_size", "max_wait_ms", "concurrency", "rate", "burstiness",
    "repetition", "load_key", "status", "started_at", "finished_at", "nonfinite", "slos_json",
    "error", "max_num_batched_tokens", "replicas", "router", "speedup", "details_json",
    "prefix_caching",
})
# The keys of TrialMetrics.flat(), in column order (a test keeps the two in step).
METRIC_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in TrialModel.__table__.columns if c.name not in _TRIAL_NON_METRICS
)
