"""Every page renders a trace sweep (speed-up as the load axis, no rate, no concurrency)."""

from __future__ import annotations

import pytest
from dashboard_helpers import page_test

from app.dashboard import state
from app.dashboard.synthetic import add_synthetic_sweep


@pytest.mark.parametrize("page", ["run", "explore", "recommend", "compare", "scaleout", "profiles"])
def test_page_renders_a_trace_sweep(db_url, page: str) -> None:
    store = state.get_store(db_url)
    add_synthetic_sweep(store, {
        "profile": "azure-conv", "policies": ["continuous", "adaptive"], "batch_sizes": [4],
        "max_wait_ms": [0.0], "speedup": [1.0, 2.0], "requests": 8})
    app = page_test(page).run()
    assert not app.exception, [e.value for e in app.exception]
