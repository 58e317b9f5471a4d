"""Version 5: stored trial details rewritten to the typed records' shape, on a real SQLite file."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import MetaData, select

from common.details import Revision, TrialDetails
from db import SCHEMA_VERSION, Store
from db.migrations import current_version, upgrade
from db.store import make_engine

T0 = datetime(2026, 12, 5, 1, 0, 0)
# As a search of early December 2026 stored its revision: under the prediction.
OLD_REVISION = {"prediction": {"steps": {"decode": [[1, 3, 0.01]], "prefill": [], "gap": None},
                               "revision": {"pruned": {"static b8 w0ms": "predicted below"},
                                            "cost_model": {"decode_base_ms": 1.0}}},
                "timeseries": {"window_s": 1.0, "t_s": [0.0], "arrivals_per_s": [2.0]}}
# Written by today's shape (and an unknown key, kept): the migration leaves it as it is.
CURRENT = {"revision": {"pruned": {"static b1 w0ms": "why"}}, "future_key": {"x": 1},
           "provenance": {"node": "vm", "pid": 1, "device": "cpu", "device_name": None}}


def make_v4(path) -> str:
    """A version-4 SQLite file with one sweep and three trials: old-shaped, current, none."""
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    with engine.begin() as conn:
        upgrade(conn, target=4)
        meta = MetaData()
        meta.reflect(conn, only=["sweeps", "trials"])
        sweeps, trials = meta.tables["sweeps"], meta.tables["trials"]
        conn.execute(sweeps.insert().values(
            id=1, name="old search", profile_name="chat", status="done", model="m", device="cpu",
            dtype="float32", profile_json='{"name": "chat"}', grid_json="{}", seed=1,
            provenance_json="{}", created_at=T0, started_at=T0, trials_total=3, trials_done=3,
            trials_failed=0, cancel_requested=False))
        for trial_id, details in ((1, OLD_REVISION), (2, CURRENT), (3, None)):
            conn.execute(trials.insert().values(
                id=trial_id, sweep_id=1, policy="continuous", batch_size=trial_id, max_wait_ms=0.0,
                concurrency=trial_id, rate=None, burstiness=1.0, repetition=0, status="done",
                load_key=f"c{trial_id}",
                replicas=1, details_json=None if details is None else json.dumps(details)))
    engine.dispose()
    return url


def stored_details(url: str) -> dict[int, dict | None]:
    engine = make_engine(url)
    with engine.connect() as conn:
        meta = MetaData()
        meta.reflect(conn, only=["trials"])
        rows = conn.execute(select(meta.tables["trials"].c.id, meta.tables["trials"].c.details_json))
        out = {i: None if d is None else json.loads(d) for i, d in rows}
        assert current_version(conn) == SCHEMA_VERSION
    engine.dispose()
    return out


def test_v5_moves_a_revision_stored_under_the_prediction(tmp_path):
    url = make_v4(tmp_path / "v4.db")
    with Store(url) as store:
        old, current, none = store.list_trials(1)
        assert old.details.revision == Revision(pruned={"static b8 w0ms": "predicted below"},
                                                cost_model={"decode_base_ms": 1.0})
        assert old.details.prediction is not None and old.details.prediction.steps["decode"]
        assert current.details.extra == {"future_key": {"x": 1}}
        assert none.details == TrialDetails()
    stored = stored_details(url)
    assert stored[1] == {"prediction": {"steps": OLD_REVISION["prediction"]["steps"]},
                         "revision": OLD_REVISION["prediction"]["revision"],
                         "timeseries": OLD_REVISION["timeseries"]}
    assert stored[2] == CURRENT and stored[3] is None  # nothing else is rewritten


def test_an_old_shape_reads_the_same_before_and_after_the_migration(tmp_path):
    url = make_v4(tmp_path / "v4.db")
    before = TrialDetails.from_dict(OLD_REVISION)
    with Store(url) as store:
        after = store.list_trials(1)[0].details
    assert after == before and after.to_dict() == stored_details(url)[1]
