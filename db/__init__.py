"""The result store: SQLAlchemy models, schema migrations and the Store that hands out records."""

from db.errors import DuplicateTrialError, SchemaTooNewError, StoreError, UnknownSweepError
from db.migrations import SCHEMA_VERSION
from db.store import (
    DEAD_WORKER_ERROR,
    DEFAULT_URL,
    FINAL_STATUSES,
    SWEEP_STATUSES,
    Store,
    StoredRequest,
    SweepRecord,
    resolve_db_url,
)

__all__ = [
    "DEAD_WORKER_ERROR",
    "DEFAULT_URL",
    "FINAL_STATUSES",
    "SCHEMA_VERSION",
    "SWEEP_STATUSES",
    "DuplicateTrialError",
    "SchemaTooNewError",
    "Store",
    "StoreError",
    "StoredRequest",
    "SweepRecord",
    "UnknownSweepError",
    "resolve_db_url",
]
