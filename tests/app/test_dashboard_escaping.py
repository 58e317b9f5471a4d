"""User strings (sweep names, model ids, profile descriptions) full of HTML/JS never reach a
dashboard page as HTML (issue 13): pages render them as escaped Markdown text, and no page
uses an API that would inject raw HTML."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dashboard_helpers import page_test, plain

from app.dashboard.synthetic import add_synthetic_sweep
from db.store import Store

PAYLOAD = "<script>window.__pwned=1</script><img src=x onerror=alert(1)>"
PROFILE = f"""\
name: xss
description: "{PAYLOAD}"
prompt_tokens: {{kind: uniform, min: 4, max: 16}}
output_tokens: {{kind: uniform, min: 2, max: 8}}
arrival: {{mode: closed, concurrency: 2}}
slos:
  ttft_ms: {{percentile: p90, max_ms: 5000}}
objective: max_goodput
"""
DASHBOARD = Path(__file__).resolve().parents[2] / "app" / "dashboard"
RAW_HTML_APIS = re.compile(r"unsafe_allow_html\s*=\s*True|\bst\.html\(|components\.v1|"
                           r"components\.html|st\.components")


@pytest.fixture
def hostile(store: Store, tmp_path: Path) -> int:
    """A finished sweep whose name, model id and profile description are payloads."""
    path = tmp_path / "xss.yaml"
    path.write_text(PROFILE)
    store.save_profile("xss", PROFILE)
    return add_synthetic_sweep(store, {
        "name": PAYLOAD, "model": PAYLOAD, "profile": str(path), "policies": ["continuous"],
        "batch_sizes": [1, 4], "max_wait_ms": [0.0], "concurrency": [1, 4], "requests": 8})


def test_no_page_uses_a_raw_html_api() -> None:
    offenders = [f"{p.name}: {m.group(0)}" for p in DASHBOARD.glob("*.py")
                 for m in RAW_HTML_APIS.finditer(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("page", ["run", "explore", "recommend", "compare", "profiles"])
def test_payloads_render_as_text_not_html(db_url: str, hostile: int, page: str) -> None:
    app = page_test(page).run()
    assert not app.exception
    elements = [e for kind in ("markdown", "caption", "success", "warning", "info", "error",
                               "subheader", "header", "title") for e in app.get(kind)]
    assert all(not getattr(e.proto, "allow_html", False) for e in elements)
    showing = [str(e.value) for e in elements if "<script>" in plain(str(e.value))]
    assert all("<script>" not in raw for raw in showing), showing  # escaped: \<script\>
    if page in ("run", "recommend"):  # these print the sweep name or description as text
        assert showing, [str(e.value) for e in elements]
