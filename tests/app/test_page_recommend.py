"""Recommend page and HTML report: a card per profile, every export, escaped names."""

from __future__ import annotations

import re

from dashboard_helpers import MARKUP_NAME, page_test, plain, texts

from app.dashboard import report, state
from experiments.export.render import FORMATS


def test_empty_store_offers_the_demo_sweep(db_url: str, launches) -> None:
    app = page_test("recommend").run()
    assert app.button(key="recommend_demo")
    app.button(key="recommend_demo").click().run()
    assert len(launches.specs) == 2 and not app.exception  # chat and batch


def test_a_card_per_profile_with_every_export(db_url, results) -> None:
    app = page_test("recommend").run()
    assert not app.exception
    assert texts(app.subheader) == ["Profile: batch", "Profile: chat"]
    labels = [b.label for b in app.get("download_button")]
    assert labels == [*FORMATS, "HTML report for the team"] * 2
    assert any("carries" in plain(t) and "within the chat SLOs" in plain(t)
               for t in texts(app.success))  # chat: the config at its capacity
    assert any("knee" in plain(t) for t in texts(app.success))  # batch: no SLOs
    # The chat card only (batch has no SLOs): its SLO table, and its grid's capacity per config.
    assert len(app.dataframe) == 2
    capacity = [plain(t) for t in texts(app.success) if "carries" in t]
    assert len(capacity) == 1 and "within the chat SLOs" in capacity[0]


def test_report_is_self_contained_and_escapes_names(db_url, results) -> None:
    store = state.get_store(db_url)
    analysis = state.analysis(db_url, state.version(store.get_sweep(results["chat"])))
    html = report.build_report(analysis)
    assert MARKUP_NAME not in html and "&lt;b&gt;tag&lt;/b&gt;" in html
    # No network needed: no external scripts or stylesheets (Plotly's JS is inlined).
    assert re.search(r"<script[^>]*\bsrc=", html) is None and "<link" not in html
    assert "Plotly.newPlot" in html and "meets the SLOs" in html
    assert report.report_filename(analysis) == f"tradeoff-sweep-{results['chat']}-chat.html"


def test_report_of_a_trace_sweep_carries_the_trace_attribution(db_url) -> None:
    from app.dashboard.synthetic import add_synthetic_sweep

    store = state.get_store(db_url)
    sweep_id = add_synthetic_sweep(store, {
        "profile": "azure-conv", "policies": ["continuous", "adaptive"], "batch_sizes": [4],
        "max_wait_ms": [0.0], "speedup": [1.0, 2.0], "requests": 8})
    analysis = state.analysis(db_url, state.version(store.get_sweep(sweep_id)))
    html = report.build_report(analysis)
    assert "CC-BY 4.0" in html and "Splitwise" in html and "Azure Public Dataset" in html
    assert "trace 1x" in html  # the load legend names speed-ups


def test_a_trace_sweeps_card_names_its_speed_up(db_url) -> None:
    from app.dashboard.synthetic import add_synthetic_sweep

    store = state.get_store(db_url)
    add_synthetic_sweep(store, {
        "profile": "azure-conv", "policies": ["continuous"], "batch_sizes": [4],
        "max_wait_ms": [0.0], "speedup": [1.0, 2.0], "requests": 8})
    app = page_test("recommend").run()
    assert not app.exception
    carries = next(m.value for m in app.metric if m.label == "Carries")
    assert carries.endswith(("1x speed-up", "2x speed-up"))
