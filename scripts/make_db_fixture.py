"""Build tests/db/fixtures/vN.db: a small database at an old schema version, for the upgrade tests.

Run from the repository root: `.venv/bin/python scripts/make_db_fixture.py [VERSION [OUT]]`
(default version 1). The schema comes from the frozen migrations; the rows are written with
plain SQL against the reflected tables, as a tradeoff of that release would have left them:
version-1 rows, then (for version 2) a saved profile and a worker heartbeat.
Re-running it rewrites the file; commit the result (tests never write to it: they copy it).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

from sqlalchemy import MetaData

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.migrations import upgrade  # noqa: E402
from db.store import make_engine  # noqa: E402

FIXTURES = Path("tests/db/fixtures")
T0 = datetime(2025, 1, 2, 3, 4, 5)
LATENCY = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "queue_wait_ms", "service_ms")
STATS = ("p50", "p90", "p95", "p99", "mean")


def sweep_rows() -> list[dict]:
    """A finished sweep and one left running by a worker that v1 could not track."""
    common = {
        "model": "tiny-llama", "device": "cpu", "device_name": "Test CPU", "dtype": "float32",
        "grid_json": json.dumps({"policies": ["static"], "batch_sizes": [4]}),
        "seed": 7, "provenance_json": json.dumps({"tradeoff": "0.1.0", "hostname": "ci"}),
        "cancel_requested": False, "error": None,
    }
    return [
        {**common, "id": 1, "name": "chat-cpu", "profile_name": "chat", "status": "done",
         "profile_json": json.dumps({"name": "chat"}), "created_at": T0, "started_at": T0,
         "finished_at": T0, "trials_total": 2, "trials_done": 1, "trials_failed": 1,
         "current_label": None},
        {**common, "id": 2, "name": "rag-cpu", "profile_name": "rag", "status": "running",
         "profile_json": json.dumps({"name": "rag"}), "created_at": T0, "started_at": T0,
         "finished_at": None, "trials_total": 4, "trials_done": 0, "trials_failed": 0,
         "current_label": "static/b4/w0ms/concurrent@2"},
    ]


def trial_rows() -> list[dict]:
    """A done trial (tpot missing, slo_attainment NaN) and a failed one."""
    metrics = {f"{m}_{s}": 10.0 * (i + 1) + j for i, m in enumerate(LATENCY)
               for j, s in enumerate(STATS)}
    metrics.update({f"tpot_ms_{s}": None for s in STATS})
    metrics.update(requests_completed=3, requests_failed=0, duration_s=1.5, requests_per_s=2.0,
                   output_tokens_per_s=40.0, total_tokens_per_s=100.0, goodput_rps=1.0,
                   slo_attainment=None, mean_batch_size=2.5, peak_memory_mb=None,
                   saturated=False)
    config = {"sweep_id": 1, "policy": "static", "batch_size": 4, "max_wait_ms": 0.0,
              "concurrency": 2, "rate": None, "burstiness": 1.0, "load_key": "c=2/b=1.0",
              "started_at": T0, "finished_at": T0}
    return [
        {**config, **metrics, "id": 1, "repetition": 0, "status": "done",
         "nonfinite": json.dumps({"slo_attainment": "nan"}),
         "slos_json": json.dumps({"ttft_ms": {"p90": 500.0}}), "error": None},
        {**config, "id": 2, "repetition": 1, "status": "failed", "error": "CUDA OOM"},
    ]


def request_rows() -> list[dict]:
    """Three requests of trial 1, times in ms from the trial start."""
    return [
        {"id": i + 1, "trial_id": 1, "request_index": i, "num_prompt_tokens": 16,
         "num_output_tokens": 4, "scheduled_ms": 100.0 * i, "sent_ms": 100.0 * i,
         "admitted_ms": 100.0 * i + 1, "first_token_ms": 100.0 * i + 20,
         "done_ms": 100.0 * i + 50, "itl_mean_ms": 10.0, "itl_max_ms": 12.0, "error": None}
        for i in range(3)
    ]


def v2_rows() -> list[tuple[str, dict]]:
    """What version 2 added: a saved profile (sweep rows get their heartbeat by update)."""
    return [("profiles", {"id": 1, "name": "mine", "yaml_text": "name: mine\n",
                          "created_at": T0, "updated_at": T0})]


def main(version: int = 1, out: Path | None = None) -> None:
    """Write the fixture database at schema `version` to `out`."""
    out = out or FIXTURES / f"v{version}.db"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    engine = make_engine(f"sqlite:///{out}")
    with engine.begin() as conn:
        upgrade(conn, target=1)
        tables = MetaData()
        tables.reflect(conn)
        for name, rows in (("sweeps", sweep_rows()), ("trials", trial_rows()),
                           ("requests", request_rows())):
            for row in rows:  # one by one: the rows do not all name the same columns
                conn.execute(tables.tables[name].insert().values(**row))
        if version >= 2:
            upgrade(conn, target=2)
            tables = MetaData()
            tables.reflect(conn)
            for name, row in v2_rows():
                conn.execute(tables.tables[name].insert().values(**row))
            conn.execute(tables.tables["sweeps"].update().where(tables.tables["sweeps"].c.id == 2)
                         .values(worker_pid=1, worker_host="ci", heartbeat_at=T0))
    raw = engine.raw_connection()
    try:  # one self-contained file to commit: no -wal/-shm side files
        raw.execute("PRAGMA journal_mode = DELETE")
        raw.execute("VACUUM")
    finally:
        raw.close()
    engine.dispose()
    print(f"wrote {out} (schema version {version})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1, Path(sys.argv[2]) if len(sys.argv) > 2 else None)
