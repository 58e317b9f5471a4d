"""Compare page: several frontiers on the same axes, recommended configs side by side."""

from __future__ import annotations

import json

from dashboard_helpers import page_test, texts


def test_needs_two_sweeps(db_url: str) -> None:
    app = page_test("compare").run()
    assert any("two sweeps" in t for t in texts(app.info)) and not app.exception


def test_overlays_frontiers_and_tables_recommendations(db_url, results) -> None:
    app = page_test("compare").run()
    assert not app.exception
    spec = json.loads(app.get("plotly_chart")[0].proto.spec)
    names = [t.get("name") for t in spec["data"]]
    assert any(n.startswith("#2 batch sweep") for n in names)
    assert any("&lt;b&gt;tag" in n for n in names)  # Plotly renders tags: names are escaped
    table = app.dataframe[0].value
    assert list(table.index)[:2] == ["model", "device"] and len(table.columns) == 2
    assert set(table.loc["policy"]) <= {"static", "continuous"}


def test_sweeps_judged_by_different_slos_are_flagged(db_url, results) -> None:
    # The fixture's chat sweep has relative SLOs resolved to its baseline; its batch sweep none.
    app = page_test("compare").run()
    warning = next(t for t in texts(app.warning) if "different SLOs" in t)
    assert "batch sweep" in warning and "no SLOs" in warning and "x unloaded p50" in warning
    table = app.dataframe[0].value
    assert "SLOs" in table.index and "capacity" in table.index


def test_sweeps_judged_alike_are_not_flagged(db_url, results) -> None:
    app = page_test("compare").run()
    app.multiselect(key="compare_sweeps").set_value([results["chat"], results["chat"]]).run()
    assert not [t for t in texts(app.warning) if "different SLOs" in t]
