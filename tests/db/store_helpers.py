"""Helpers shared by the Store tests."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta

from sqlalchemy import func, select

from db import Store

T0 = datetime(2025, 1, 1, 12, 0, 0)
T1 = T0 + timedelta(seconds=3)


def count_rows(store: Store, model: type) -> int:
    with store.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(model))


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
