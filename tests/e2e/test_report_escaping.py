"""The HTML report in a real browser (Debian Chromium): user strings full of HTML and JavaScript
(sweep name, model id, profile description, trial errors) show as text, and no script of theirs
runs (issue 13). Needs Debian's chromium (`.ci/e2e-deps.sh`); Playwright never downloads one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app.dashboard import report
from app.dashboard.synthetic import add_synthetic_sweep
from db.store import Store
from experiments.analysis.queries import analyse

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# Each payload, if it ran, would set window.__pwned (or open a dialog).
PAYLOADS = [
    "<script>window.__pwned = 'script'</script>",
    "<img src=x onerror=\"window.__pwned = 'img'\">",
    "</script><script>window.__pwned = 'breakout'</script>",
    "\"><svg onload=\"window.__pwned = 'svg'\">",
    "<a href=\"javascript:window.__pwned = 'link'\">click</a>",
]
NAME = " ".join(PAYLOADS[:3])[:200]  # the spec caps names at 200 characters
PROFILE = """\
name: xss
description: {description}
prompt_tokens: {{kind: uniform, min: 4, max: 16}}
output_tokens: {{kind: uniform, min: 2, max: 8}}
arrival: {{mode: closed, concurrency: 2}}
slos:
  ttft_ms: {{percentile: p90, max_ms: 5000}}
objective: max_goodput
"""


@pytest.fixture
def report_path(tmp_path: Path) -> Path:
    """A report of a synthetic sweep whose every free-text field is a payload."""
    profile = tmp_path / "xss.yaml"
    profile.write_text(PROFILE.format(description=json.dumps(" ".join(PAYLOADS))))
    with Store(f"sqlite:///{tmp_path / 'x.db'}") as store:
        sweep_id = add_synthetic_sweep(store, {
            "name": NAME, "model": " ".join(PAYLOADS[2:]), "profile": str(profile),
            "policies": ["static", "continuous"], "batch_sizes": [1, 4], "max_wait_ms": [0.0],
            "concurrency": [1, 4], "requests": 8})
        html = report.build_report(analyse(store, store.get_sweep(sweep_id)))
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def test_report_shows_payloads_as_text_and_runs_none_of_them(report_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing; run .ci/e2e-deps.sh")
    from playwright.sync_api import sync_playwright

    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(report_path.as_uri())
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)  # Plotly drew
            for link in page.locator("a").all():  # a javascript: link must not be clickable
                assert not (link.get_attribute("href") or "").startswith("javascript:")
            page.mouse.move(400, 400)  # hover events over the chart
            page.wait_for_timeout(300)
            pwned = page.evaluate("window.__pwned")
            text = page.inner_text("body")
            injected = page.evaluate("document.querySelectorAll('img[src=x], svg[onload]').length")
        finally:
            browser.close()
    assert pwned is None and dialogs == []
    assert injected == 0
    assert PAYLOADS[0] in text and PAYLOADS[2] in text  # shown literally, as text
