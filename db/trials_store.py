"""The Store's trials and requests: insert a trial with its requests, read them back.

A mixin of `db.store.Store` (kept apart so each file holds one responsibility); it uses only the
Store's `_session`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.details import TrialDetails
from common.records import RequestRecord, TrialConfig, TrialMetrics, TrialRecord
from db.errors import DuplicateTrialError, UnknownSweepError
from db.models import TrialModel
from db.rows import (
    CONFIG_COLUMNS,
    INSERT_REQUESTS,
    INSERT_TRIAL,
    REQUESTS,
    TRIAL_COLUMNS,
    TRIALS,
    StoredRequest,
    config_from_row,
    config_values,
    details_json,
    is_violation,
    metric_values,
    naive_utc,
    request_row,
    to_json,
    trial_record,
)


class TrialsMixin:
    """Trials and their requests (see db/store.py for the transaction and error rules)."""

    def _session(self, write: bool = False, opening: bool = False) -> AbstractContextManager[Session]:
        raise NotImplementedError  # provided by Store

    def add_trial(
        self, sweep_id: int, config: TrialConfig, metrics: TrialMetrics,
        requests: Sequence[RequestRecord], started_at: datetime | None,
        finished_at: datetime | None, *, trial_start_s: float | None = None,
    ) -> int:
        """Store a done trial and all its requests in one transaction; return the trial id."""
        # Request times are kept relative to trial_start_s, on the trial's own clock; without
        # it, the earliest scheduled time stands for the trial start.
        values = {**metric_values(metrics.flat()), "slos_json": to_json(metrics.slos),
                  "details_json": details_json(metrics.details)}
        origin_s = trial_start_s if trial_start_s is not None else \
            min((r.scheduled_s for r in requests), default=0.0)
        with self._session(write=True) as s:
            trial_id = self._insert_trial(s, sweep_id, config, "done", started_at,
                                          finished_at, values)
            if requests:  # one executemany, not one INSERT per request
                s.connection().execute(INSERT_REQUESTS,
                                       [request_row(trial_id, r, origin_s) for r in requests])
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
            "sweep_id": sweep_id, "status": status, "started_at": naive_utc(started_at),
            "finished_at": naive_utc(finished_at), **config_values(config), **values,
        }
        try:
            return s.connection().execute(INSERT_TRIAL, params).scalar_one()
        except IntegrityError as exc:
            if is_violation(exc, "unique"):
                raise DuplicateTrialError(f"sweep {sweep_id} already has trial {config.label} "
                                          f"(repetition {config.repetition})") from exc
            if is_violation(exc, "foreign key"):
                raise UnknownSweepError(sweep_id) from exc
            raise

    def done_configs(self, sweep_id: int) -> set[TrialConfig]:
        """Configs of the sweep's stored trials, done or failed: what a resume must skip."""
        query = select(*CONFIG_COLUMNS).where(TRIALS.c.sweep_id == sweep_id)
        with self._session() as s:
            return {config_from_row(row) for row in s.connection().execute(query).all()}

    def list_trials(self, sweep_ids: int | Iterable[int]) -> list[TrialRecord]:
        """Trials of one sweep or several, in sweep then insertion order."""
        ids = [sweep_ids] if isinstance(sweep_ids, int) else list(sweep_ids)
        query = (select(*TRIAL_COLUMNS).where(TRIALS.c.sweep_id.in_(ids))
                 .order_by(TRIALS.c.sweep_id, TRIALS.c.id))
        with self._session() as s:
            return [trial_record(row) for row in s.connection().execute(query).all()]

    def trial_slos(self, trial_id: int) -> dict[str, dict[str, float]]:
        """The SLOs a trial was judged against (TrialMetrics.slos); {} when none."""
        with self._session() as s:
            raw = s.scalar(select(TrialModel.slos_json).where(TrialModel.id == trial_id))
        return json.loads(raw) if raw else {}

    def get_requests(self, trial_id: int) -> list[StoredRequest]:
        """The trial's requests in request order, times in ms from the trial start."""
        columns = [c for c in REQUESTS.columns if c.name != "id"]
        query = (select(*columns).where(REQUESTS.c.trial_id == trial_id)
                 .order_by(REQUESTS.c.request_index))
        with self._session() as s:
            return [StoredRequest(**row._mapping) for row in s.connection().execute(query).all()]

    def set_trial_details(self, trial_id: int, details: TrialDetails | Mapping[str, Any]) -> None:
        """Replace a stored trial's JSON details (e.g. a search's revision noted after it)."""
        with self._session(write=True) as s:
            s.execute(update(TrialModel).where(TrialModel.id == trial_id)
                      .values(details_json=details_json(details)))

    def delete_trial(self, trial_id: int) -> None:
        """Delete one trial and its requests (a drifted trial about to be measured again)."""
        with self._session(write=True) as s:
            s.execute(delete(TrialModel).where(TrialModel.id == trial_id))  # requests cascade
