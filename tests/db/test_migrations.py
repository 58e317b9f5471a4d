"""Schema versioning: fresh databases, upgrades from old ones, refusing newer ones."""

from __future__ import annotations

import hashlib
import math
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, create_engine, inspect, select, text

import db.migrations as migrations
from common.records import TrialConfig
from db import SCHEMA_VERSION, SchemaTooNewError, Store, StoreError
from db.migrations import MIGRATIONS, Migration, current_version, upgrade
from db.models import METRIC_COLUMNS, Base
from db.store import make_engine

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "v1.db"
FIXTURE_V2 = Path(__file__).parent / "fixtures" / "v2.db"
FIXTURE_V3 = Path(__file__).parent / "fixtures" / "v3.db"
T0 = datetime(2025, 1, 2, 3, 4, 5)


def version_of(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return current_version(conn)
    finally:
        engine.dispose()


def signature(engine: Engine) -> dict[str, tuple]:
    """What a schema is made of, as the database reports it (column order aside)."""
    insp, out = inspect(engine), {}
    for table in insp.get_table_names():
        columns = sorted((c["name"], str(c["type"]), c["nullable"])
                         for c in insp.get_columns(table))
        uniques = sorted((u["name"], tuple(u["column_names"]))
                         for u in insp.get_unique_constraints(table))
        indexes = sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                         for i in insp.get_indexes(table))
        foreign = sorted((tuple(f["constrained_columns"]), f["referred_table"],
                          f["options"].get("ondelete")) for f in insp.get_foreign_keys(table))
        primary = insp.get_pk_constraint(table)["constrained_columns"]
        out[table] = (columns, uniques, indexes, foreign, primary)
    return out


def drop_everything(engine: Engine) -> None:
    metadata = MetaData()
    metadata.reflect(engine)
    metadata.drop_all(engine)


def make_v1(url: str) -> None:
    """A version-1 database with one running sweep, as the release before liveness left it."""
    engine = make_engine(url)
    with engine.begin() as conn:
        upgrade(conn, target=1)
        sweeps = MetaData()
        sweeps.reflect(conn, only=["sweeps"])
        conn.execute(sweeps.tables["sweeps"].insert().values(
            name="old", profile_name="chat", status="running", model="m", device="cpu",
            dtype="float32", profile_json='{"name": "chat"}', grid_json="{}", seed=1,
            provenance_json="{}", created_at=T0, started_at=T0, trials_total=1, trials_done=0,
            trials_failed=0, cancel_requested=False,
        ))
    engine.dispose()


def test_metric_columns_are_the_flat_metrics(make_metrics):
    # A new metric in TrialMetrics needs a column, hence a migration: this test says so.
    assert tuple(make_metrics().flat()) == METRIC_COLUMNS


def test_versions_are_consecutive():
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


def test_fresh_database_is_at_current_version(db_url):
    Store(db_url).close()
    assert version_of(db_url) == SCHEMA_VERSION
    engine = make_engine(db_url)
    with engine.connect() as conn:
        applied = conn.execute(text("SELECT version FROM schema_version ORDER BY version"))
        assert [row[0] for row in applied] == [m.version for m in MIGRATIONS]
    engine.dispose()


def test_migrations_build_the_schema_of_the_models(db_url):
    Store(db_url).close()
    engine = create_engine(db_url)
    migrated = signature(engine)
    drop_everything(engine)
    Base.metadata.create_all(engine)
    assert signature(engine) == migrated
    engine.dispose()


def fixture_digest() -> str:
    return hashlib.sha256(FIXTURE_V1.read_bytes()).hexdigest()


def test_fixture_is_a_plain_v1_file():
    # Opened read-only: the Store's engine would switch the committed file to WAL mode.
    with sqlite3.connect(f"file:{FIXTURE_V1}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 1


def test_upgrade_from_v1_fixture_keeps_the_data(tmp_path):
    digest, path = fixture_digest(), tmp_path / "v1.db"
    shutil.copy(FIXTURE_V1, path)
    url = f"sqlite:///{path}"
    assert version_of(url) == 1
    with Store(url) as store:
        assert version_of(url) == SCHEMA_VERSION
        sweep = store.get_sweep(1)
        assert (sweep.name, sweep.status, sweep.profile, sweep.seed) == \
            ("chat-cpu", "done", {"name": "chat"}, 7)
        assert (sweep.worker_pid, sweep.heartbeat_at, sweep.trials_failed) == (None, None, 1)
        done, failed = store.list_trials(1)
        assert done.metrics["ttft_ms_p50"] == 10.0 and done.metrics["tpot_ms_p99"] is None
        assert math.isnan(done.metrics["slo_attainment"]) and done.metrics["saturated"] is False
        assert (failed.status, failed.error, failed.metrics) == ("failed", "CUDA OOM", {})
        assert store.done_configs(1) == {TrialConfig("static", 4, 0.0, concurrency=2),
                                         TrialConfig("static", 4, 0.0, 2, repetition=1)}
        assert [r.done_ms for r in store.get_requests(done.trial_id)] == [50.0, 150.0, 250.0]
        assert store.trial_slos(done.trial_id) == {"ttft_ms": {"p90": 500.0}}
        # What version 2 added works on the upgraded database.
        store.save_profile("mine", "name: mine\n")
        assert store.mark_dead_workers(timeout_s=60) == [2]  # v1 never beat: started in 2025
    assert fixture_digest() == digest  # the committed file is untouched


def test_upgrade_from_v2_fixture_keeps_the_data(tmp_path):
    digest = hashlib.sha256(FIXTURE_V2.read_bytes()).hexdigest()
    path = tmp_path / "v2.db"
    shutil.copy(FIXTURE_V2, path)
    url = f"sqlite:///{path}"
    assert version_of(url) == 2
    with Store(url) as store:
        assert version_of(url) == SCHEMA_VERSION
        assert store.list_profiles() == {"mine": "name: mine\n"}
        assert (store.get_sweep(2).worker_host, store.get_sweep(2).worker_pid) == ("ci", 1)
        done, _failed = store.list_trials(1)
        # Rows from before version 3: one replica, no token budget, no self-check, no extras.
        assert done.config == TrialConfig("static", 4, 0.0, concurrency=2)
        assert (done.config.replicas, done.config.max_num_batched_tokens) == (1, None)
        assert done.metrics["client_bound"] is None and done.metrics["roofline_decode"] is None
        assert done.details.to_dict() == {} and done.is_trusted
        # The old key still names the same trial: re-adding it is a duplicate.
        with pytest.raises(StoreError, match="already has trial"):
            store.add_failed_trial(1, done.config, "again", T0, T0)
    assert hashlib.sha256(FIXTURE_V2.read_bytes()).hexdigest() == digest


def test_upgrade_from_v3_fixture_adds_sessions_and_prefix_cache(tmp_path):
    digest = hashlib.sha256(FIXTURE_V3.read_bytes()).hexdigest()
    path = tmp_path / "v3.db"
    shutil.copy(FIXTURE_V3, path)
    url = f"sqlite:///{path}"
    assert version_of(url) == 3
    with Store(url) as store:
        assert version_of(url) == SCHEMA_VERSION
        done, _failed = store.list_trials(1)
        # Rows from before version 4: no hit rate known, requests without sessions.
        assert done.metrics["prefix_cache_hit_rate"] is None
        requests = store.get_requests(done.trial_id)
        assert requests and all((r.session_id, r.turn, r.num_cached_tokens) == (None, None, None)
                                for r in requests)
    assert hashlib.sha256(FIXTURE_V3.read_bytes()).hexdigest() == digest


def test_upgraded_fixture_has_the_fresh_schema(tmp_path):
    shutil.copy(FIXTURE_V1, tmp_path / "v1.db")
    Store(f"sqlite:///{tmp_path / 'v1.db'}").close()
    Store(f"sqlite:///{tmp_path / 'fresh.db'}").close()
    upgraded = create_engine(f"sqlite:///{tmp_path / 'v1.db'}")
    fresh = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert signature(upgraded) == signature(fresh)


def test_upgrade_from_v1_on_each_backend(db_url):
    make_v1(db_url)
    assert version_of(db_url) == 1
    with Store(db_url) as store:
        assert version_of(db_url) == SCHEMA_VERSION
        [sweep] = store.list_sweeps()
        assert (sweep.name, sweep.status, sweep.worker_pid) == ("old", "running", None)
        store.save_profile("mine", "name: mine\n")
        assert store.list_profiles() == {"mine": "name: mine\n"}


def test_failed_upgrade_leaves_the_database_as_it_was(db_url, monkeypatch):
    make_v1(db_url)

    def half_done(conn) -> None:
        MIGRATIONS[1].apply(conn)  # all of version 2's DDL, then a crash
        raise RuntimeError("power cut")

    monkeypatch.setattr(migrations, "MIGRATIONS", (MIGRATIONS[0], Migration(2, "x", half_done)))
    with pytest.raises(RuntimeError, match="power cut"):
        Store(db_url)
    engine = create_engine(db_url)
    insp = inspect(engine)
    assert "profiles" not in insp.get_table_names()
    assert "worker_pid" not in {c["name"] for c in insp.get_columns("sweeps")}
    with engine.connect() as conn:
        assert conn.scalar(select(text("max(version)")).select_from(text("schema_version"))) == 1
    engine.dispose()


def test_newer_schema_is_refused(db_url):
    Store(db_url).close()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO schema_version (version, description, applied_at) "
                          "VALUES (7, 'from the future', :at)"), {"at": T0})
    engine.dispose()
    message = (f"database schema version 7 is newer than this tradeoff "
               f"(supports {SCHEMA_VERSION}); upgrade tradeoff")
    for create in (True, False):
        with pytest.raises(SchemaTooNewError) as caught:
            Store(db_url, create=create)
        assert str(caught.value) == message and isinstance(caught.value, StoreError)


def test_foreign_database_is_refused(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE sweeps (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(StoreError, match="not written by tradeoff"):
        Store(f"sqlite:///{tmp_path / 'other.db'}")
