"""Version 6: searches stored before the futility stop keep spending every repetition, so a
replay of their trials takes the path they were measured on; a real SQLite file built at v5."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import MetaData, select

from db import SCHEMA_VERSION, Store
from db.migrations import upgrade
from db.store import make_engine
from experiments.spec.grid import SweepSpec

T0 = datetime(2026, 12, 6, 1, 0, 0)
FLAT_SEARCH = {"policies": ["continuous"], "batch_sizes": [4], "profile": "chat",
               "search": {"load": "concurrency", "max_repeats": 3, "max_probes": None}}
NESTED_SEARCH = {"knobs": {"batch_sizes": [8]}, "load": {"profile": "chat"},
                 "search": {"load": "concurrency", "max_repeats": 2}}
GRID = {"knobs": {"batch_sizes": [4]}, "search": None}


def make_v5(path) -> str:
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    with engine.begin() as conn:
        upgrade(conn, target=5)
        meta = MetaData()
        meta.reflect(conn, only=["sweeps"])
        for sweep_id, grid in ((1, FLAT_SEARCH), (2, NESTED_SEARCH), (3, GRID)):
            conn.execute(meta.tables["sweeps"].insert().values(
                id=sweep_id, name=f"s{sweep_id}", profile_name="chat", status="done", model="m",
                device="cpu", dtype="float32", profile_json='{"name": "chat"}',
                grid_json=json.dumps(grid), seed=1, provenance_json="{}", created_at=T0,
                trials_total=0, trials_done=0, trials_failed=0, cancel_requested=False))
    engine.dispose()
    return url


def stored_grids(url: str) -> dict[int, dict]:
    engine = make_engine(url)
    with engine.connect() as conn:
        meta = MetaData()
        meta.reflect(conn, only=["sweeps"])
        table = meta.tables["sweeps"]
        out = {i: json.loads(g) for i, g in conn.execute(select(table.c.id, table.c.grid_json))}
    engine.dispose()
    return out


def test_stored_searches_keep_every_repetition_and_new_ones_skip_futile_ones(tmp_path):
    url = make_v5(tmp_path / "v5.db")
    Store(url)  # opening the store upgrades it
    grids = stored_grids(url)
    assert grids[1]["search"] == {**FLAT_SEARCH["search"], "skip_futile_repeats": False}
    assert grids[2]["search"] == {**NESTED_SEARCH["search"], "skip_futile_repeats": False}
    assert grids[3] == GRID  # no search: untouched
    assert grids[1]["batch_sizes"] == [4] and grids[2]["knobs"] == {"batch_sizes": [8]}
    # What every reader builds from them: the old rule for stored searches, the new by default.
    assert SweepSpec(**grids[1]).search.skip_futile_repeats is False
    assert SweepSpec(**grids[2]).search.max_repeats == 2
    assert SweepSpec(search={"load": "concurrency"}).search.skip_futile_repeats is True
    assert SCHEMA_VERSION == 6
