"""End to end in a real browser: `tradeoff ui` on a temporary db, driven by headless Chromium.

From an empty store: start the demo sweep on the Run page, wait for the worker to finish it,
see the frontier on Explore, download an export on Recommend; a screenshot of every page goes
to test-output/e2e/. Needs Debian's chromium (`.ci/e2e-deps.sh`); Playwright never downloads
a browser here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "test-output" / "e2e"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DEMO_TIMEOUT_S = 240  # the demo must take under 90 s; slack for a busy CI machine
VIEWPORT = {"width": 1400, "height": 2200}  # tall: Streamlit scrolls inside the page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(base: str, proc: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`tradeoff ui` exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"`tradeoff ui` not healthy after {timeout_s} s")


def _stop(proc: subprocess.Popen) -> None:
    # The sweep worker is a child of the Streamlit server in its own session: end it too.
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`tradeoff ui` on a fresh SQLite file and a free port: (base URL, db path)."""
    db = tmp_path_factory.mktemp("e2e") / "e2e.db"
    port = _free_port()
    OUT.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(OUT / "ui.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "ui", "--db", f"sqlite:///{db}", "--port",
             str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc)
        yield base, db
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def page(ui):
    """A headless Debian Chromium page."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing; run .ci/e2e-deps.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        yield context.new_page()
        browser.close()


def _open(page, base: str, name: str, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(name, exact=True).click()
    page.get_by_role("heading", name=title).wait_for(timeout=60_000)
    _settle(page)


def _settle(page) -> None:
    # Streamlit shows a "running" widget while a script runs; screenshots wait for it to go.
    page.wait_for_timeout(500)
    page.get_by_test_id("stStatusWidget").wait_for(state="detached", timeout=60_000)
    page.wait_for_timeout(1000)


def _shot(page, name: str) -> None:
    page.mouse.move(0, 0)  # no tooltip over the page
    page.wait_for_timeout(300)
    page.screenshot(path=str(OUT / f"{name}.png"))


def _details_for(page) -> str:
    return page.locator("[class*='st-key-explore_detail_'] input").input_value()


def _click_another_point(page) -> bool:
    """Click chart points until the details follow one (the first may be the shown one)."""
    before = _details_for(page)
    points = page.locator(".js-plotly-plot").first.locator(".scatterlayer path.point")
    for i in range(min(points.count(), 6)):
        points.nth(i).click(force=True)
        _settle(page)
        if _details_for(page) != before:
            return True
    return False


def _worker_log(db: Path) -> str:
    log = db.with_name(db.name + ".worker.log")
    return log.read_text()[-3000:] if log.exists() else "(no worker log)"


def test_demo_sweep_to_exported_recommendation(ui, page) -> None:
    base, db = ui
    page.goto(base)
    page.get_by_role("heading", name="Run a sweep").wait_for(timeout=60_000)
    _settle(page)
    _shot(page, "1-run-empty")

    started = time.monotonic()
    page.get_by_role("button", name="Run the demo sweep").click()
    done = page.get_by_text("is done", exact=False)
    try:
        done.wait_for(timeout=DEMO_TIMEOUT_S * 1000)
    except Exception as exc:
        _shot(page, "1-run-timeout")
        raise AssertionError(f"demo sweep did not finish; worker log:\n{_worker_log(db)}") from exc
    elapsed = time.monotonic() - started
    print(f"\ndemo sweep: {elapsed:.0f} s from click to done in the UI")
    _settle(page)
    _shot(page, "2-run-done")

    _open(page, base, "Explore", "Explore")
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for(timeout=30_000)
    assert chart.get_by_text("Pareto frontier").count() == 1
    assert page.get_by_text("Latency distributions").count() >= 1
    assert _click_another_point(page), "clicking a point did not open its details"
    _shot(page, "3-explore")

    _open(page, base, "Recommend", "Recommend")
    page.get_by_role("heading", name="Profile: chat").wait_for()
    with page.expect_download() as download:
        page.get_by_test_id("stDownloadButton").get_by_role("button", name="json").first.click()
    path = OUT / download.value.suggested_filename
    download.value.save_as(path)
    exported = json.loads(path.read_text())
    assert exported["engine"]["policy"] in ("static", "continuous")
    assert exported["provenance"]["model"] == "builtin:tiny"
    _shot(page, "4-recommend")

    for name in ("Compare", "Profiles"):
        _open(page, base, name, name)
        _shot(page, f"5-{name.lower()}")
    _dark_explore(page, base)
    print(f"screenshots and the export: {OUT}")


def _dark_explore(page, base: str) -> None:
    """Explore once more in the dark theme (it follows the browser's colour scheme)."""
    context = page.context.browser.new_context(viewport=VIEWPORT, color_scheme="dark")
    dark = context.new_page()
    dark.goto(f"{base}/explore")
    dark.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    _settle(dark)
    _shot(dark, "6-explore-dark")
    context.close()
