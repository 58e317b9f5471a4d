"""Rows <-> records: how trials, requests and sweeps are laid out in the tables, both ways.

Conventions: datetimes are naive UTC (aware ones are converted); request times are ms relative
to the trial start; non-finite metric values (nan, inf) are stored as NULL and named in the
trial's `nonfinite` column, so they come back as they went in; non-finite request times are
stored as NULL.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from common.details import TrialDetails
from common.records import RequestRecord, TrialConfig, TrialRecord
from db.errors import StoreError
from db.models import METRIC_COLUMNS, RequestModel, SweepModel, TrialModel


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
    session_id: int | None = None  # schema version 4: session workloads
    turn: int | None = None
    num_cached_tokens: int | None = None  # None: the target did not say

    @property
    def is_ok(self) -> bool:
        return self.error is None and self.done_ms is not None


def utcnow() -> datetime:
    """Now as a naive UTC datetime, the store's only datetime flavour."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def is_violation(exc: IntegrityError, kind: str) -> bool:
    # SQLite: "UNIQUE constraint failed"; PostgreSQL: "violates unique constraint".
    return kind in str(exc.orig).lower()


def naive_utc(value: datetime | None) -> datetime | None:
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
    if config.prefix_caching is not None:
        key += f"/pc={int(config.prefix_caching)}"
    return key


def plain(value: Any) -> Any:
    # numpy scalars -> Python scalars: drivers do not adapt numpy.int64.
    return value.item() if hasattr(value, "item") else value


def metric_values(flat: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(flat) - set(METRIC_COLUMNS))
    if unknown:
        raise StoreError(f"metrics {', '.join(unknown)} have no column in the store; "
                         "add a migration (db/migrations.py)")
    values, nonfinite = {}, {}
    for key in METRIC_COLUMNS:
        value = plain(flat.get(key))
        if isinstance(value, float) and not math.isfinite(value):
            nonfinite[key], value = repr(value), None
        values[key] = value
    values["nonfinite"] = json.dumps(nonfinite) if nonfinite else None
    return values


def metrics_from_row(status: str, nonfinite: str | None, values: Sequence[Any]) -> dict:
    if status != "done":
        return {}
    metrics = dict(zip(METRIC_COLUMNS, values, strict=True))
    if nonfinite:
        metrics.update({k: float(v) for k, v in json.loads(nonfinite).items()})
    return metrics


def ms(t_s: float | None, origin_s: float) -> float | None:
    if t_s is None:
        return None
    ms = float(t_s - origin_s) * 1000.0
    return ms if math.isfinite(ms) else None


def request_row(trial_id: int, r: RequestRecord, origin_s: float) -> dict[str, Any]:
    times = r.token_times_s
    gaps_ms = [(b - a) * 1000.0 for a, b in zip(times, times[1:], strict=False)]
    return {
        "trial_id": trial_id, "request_index": plain(r.request_id),
        "num_prompt_tokens": plain(r.num_prompt_tokens),
        "num_output_tokens": plain(r.num_output_tokens),
        "scheduled_ms": ms(r.scheduled_s, origin_s), "sent_ms": ms(r.sent_s, origin_s),
        "admitted_ms": ms(r.admitted_s, origin_s),
        "first_token_ms": ms(r.token_times_s[0], origin_s) if r.token_times_s else None,
        "done_ms": ms(r.done_s, origin_s),
        "itl_mean_ms": float(sum(gaps_ms) / len(gaps_ms)) if gaps_ms else None,
        "itl_max_ms": float(max(gaps_ms)) if gaps_ms else None,
        "error": r.error, "session_id": plain(r.session_id), "turn": plain(r.turn),
        "num_cached_tokens": plain(r.num_cached_tokens),
    }


def config_values(config: TrialConfig) -> dict[str, Any]:
    return {
        "policy": config.policy, "batch_size": plain(config.batch_size),
        "max_wait_ms": float(config.max_wait_ms), "concurrency": plain(config.concurrency),
        "rate": None if config.rate is None else float(config.rate),
        "burstiness": float(config.burstiness), "repetition": plain(config.repetition),
        "max_num_batched_tokens": plain(config.max_num_batched_tokens),
        "replicas": plain(config.replicas), "router": config.router,
        "speedup": None if config.speedup is None else float(config.speedup),
        "prefix_caching": config.prefix_caching,
        "load_key": load_key(config),
    }


# The hot paths use Core on the tables, not ORM entities: no per-row ORM work, and statements
# built once so SQLAlchemy's compiled cache always hits (10,000 trials list in well under 1 s).
TRIALS, REQUESTS = TrialModel.__table__, RequestModel.__table__
INSERT_TRIAL = insert(TRIALS).returning(TRIALS.c.id)
INSERT_REQUESTS = insert(REQUESTS)
CONFIG_NAMES = (
    "policy", "batch_size", "max_wait_ms", "concurrency", "rate", "burstiness", "repetition",
    "max_num_batched_tokens", "replicas", "router", "speedup", "prefix_caching",
)
CONFIG_COLUMNS = tuple(TRIALS.c[name] for name in CONFIG_NAMES)
NUM_CONFIG = len(CONFIG_COLUMNS)
# trial_record unpacks rows in this order.
TRIAL_COLUMNS = (
    TRIALS.c.id, TRIALS.c.sweep_id, *CONFIG_COLUMNS, TRIALS.c.status, TRIALS.c.error,
    TRIALS.c.started_at, TRIALS.c.finished_at, TRIALS.c.nonfinite, TRIALS.c.details_json,
    *(TRIALS.c[name] for name in METRIC_COLUMNS),
)


def config_from_row(row: Sequence[Any]) -> TrialConfig:
    values = dict(zip(CONFIG_NAMES, row, strict=True))
    values["replicas"] = values["replicas"] or 1  # NULL in rows written before version 3
    return TrialConfig(**values)


def trial_record(row: Sequence[Any]) -> TrialRecord:
    trial_id, sweep_id = row[0], row[1]
    first = 2 + NUM_CONFIG
    status, error, started_at, finished_at, nonfinite, details = row[first:first + 6]
    return TrialRecord(
        trial_id=trial_id, sweep_id=sweep_id, config=config_from_row(row[2:first]), status=status,
        metrics=metrics_from_row(status, nonfinite, row[first + 6:]), error=error,
        started_at=started_at, finished_at=finished_at,
        details=TrialDetails.from_dict(json.loads(details) if details else None),
    )


def sweep_record(row: SweepModel) -> SweepRecord:
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


def to_json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def details_json(details: TrialDetails | Mapping[str, Any]) -> str | None:
    """A trial's details as stored (None when it has none); a dict is read as a stored one."""
    record = TrialDetails.of(details)
    return None if record.is_empty() else to_json(record.to_dict())
