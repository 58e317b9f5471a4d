"""Benchmark: how long the Explore page takes with 5,000 trials (the target is under 2 s).

Builds a SQLite db through the Store with synthetic trials (no model), then times each stage of
the Explore page's work (read, fold, frontier, recommendation, figure, JSON for the browser)
and the whole page script under Streamlit's AppTest, cold and warm cache.

    .venv/bin/python scripts/bench_explore.py                 # 5,000 configs, 1 repetition
    .venv/bin/python scripts/bench_explore.py --repetitions 5 # 1,000 configs x 5 (error bars)
    .venv/bin/python scripts/bench_explore.py --browser       # also: click to chart drawn, in
                                                              # headless Debian chromium
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamlit as st  # noqa: E402

from app.dashboard import charts  # noqa: E402
from app.dashboard.state import HOVER_KEYS, slim  # noqa: E402
from app.dashboard.synthetic import add_synthetic_sweep  # noqa: E402
from common.records import SLO  # noqa: E402
from db.store import Store  # noqa: E402
from experiments.analysis.pareto import aggregate, classify  # noqa: E402
from experiments.analysis.recommend import FASTEST_KEY, KNEE_LATENCY_KEY, recommend  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
WAITS = [0.0, 2.0, 5.0, 10.0, 20.0]
SLOS = [SLO("ttft_ms", "p90", 60.0), SLO("tpot_ms", "p90", 3.0)]
KEYS = ("goodput_rps", "ttft_ms_p90")


def build(url: str, num_trials: int, repetitions: int, num_requests: int) -> int:
    """A sweep of `num_trials` trials: 2 policies x 10 batch sizes x 5 waits x N loads x reps."""
    num_loads = max(1, num_trials // (2 * len(BATCH_SIZES) * len(WAITS) * repetitions))
    spec = {"name": f"bench {num_trials} trials", "batch_sizes": BATCH_SIZES,
            "max_wait_ms": WAITS, "concurrency": list(range(1, num_loads + 1)),
            "requests": num_requests, "repetitions": repetitions}
    with Store(url) as store:
        return add_synthetic_sweep(store, spec, SLOS)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def stages(url: str, sweep_id: int) -> dict[str, float]:
    """Seconds per stage of the Explore page's work, cold (no cache)."""
    with Store(url) as store:
        trials, t_read = timed(store.list_trials, sweep_id)
    points, t_fold = timed(aggregate, slim(trials, (*KEYS, *HOVER_KEYS)))
    labels, t_front = timed(classify, points, *KEYS)
    needed = (*KEYS, FASTEST_KEY, KNEE_LATENCY_KEY, "tpot_ms_p90", "saturated")
    rec, t_rec = timed(recommend, slim(trials, needed), "max_goodput", SLOS)
    fig, t_fig = timed(charts.frontier_figure, points, labels, *KEYS, rec.config, SLOS)
    _, t_json = timed(fig.to_json)
    return {"read trials": t_read, "fold repetitions": t_fold, "frontier (classify)": t_front,
            "recommend": t_rec, "build figure": t_fig, "figure to JSON": t_json,
            "points": len(points)}


def page_run(url: str) -> float:
    """Seconds for the whole Explore page script under AppTest."""
    from streamlit.testing.v1 import AppTest

    os.environ["TRADEOFF_DB"] = url
    app = AppTest.from_string("from app.dashboard import explore\nexplore.render()",
                              default_timeout=120)
    _, seconds = timed(app.run)
    if app.exception:
        raise SystemExit(f"the page raised: {app.exception[0].value}")
    return seconds


def browser_runs(url: str, sweep_id: int, runs: int) -> list[float]:
    """Seconds from clicking Explore in the sidebar to its chart drawn, in headless Chromium."""
    from playwright.sync_api import sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "ui", "--db", url, "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            _goto_when_up(page, f"http://127.0.0.1:{port}")
            return [_time_explore(page, sweep_id) for _ in range(runs)]
    finally:
        server.terminate()  # `tradeoff ui` stops its Streamlit server on SIGTERM
        server.wait(timeout=30)


def _goto_when_up(page, base: str) -> None:
    for _ in range(120):
        try:
            page.goto(base)
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            time.sleep(0.5)
    page.get_by_role("heading", name="Run a sweep").wait_for(timeout=60_000)


def _time_explore(page, sweep_id: int) -> float:
    nav = page.get_by_test_id("stSidebarNav")
    start = time.perf_counter()
    nav.get_by_text("Explore", exact=True).click()
    page.locator(f".st-key-explore_chart_{sweep_id} .legend").wait_for(timeout=60_000)
    page.get_by_test_id("stStatusWidget").wait_for(state="detached", timeout=60_000)
    seconds = time.perf_counter() - start
    nav.get_by_text("Run", exact=True).click()
    page.get_by_role("heading", name="Run a sweep").wait_for(timeout=60_000)
    page.get_by_test_id("stStatusWidget").wait_for(state="detached", timeout=60_000)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--repetitions", type=int, default=1)
    parser.add_argument("--requests", type=int, default=4, help="requests stored per trial")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--db", help="reuse a db this script built (its newest sweep)")
    parser.add_argument("--browser", action="store_true", help="also time it in Chromium")
    args = parser.parse_args()
    if args.db:
        url = args.db
        with Store(url) as store:
            sweep_id = store.list_sweeps()[0].id
    else:
        url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='tradeoff-bench-')) / 'bench.db'}"
        sweep_id, t_build = timed(build, url, args.trials, args.repetitions, args.requests)
        print(f"built the db in {t_build:.1f} s")
    with Store(url) as store:
        print(f"db: {url} (sweep {sweep_id}: {len(store.list_trials(sweep_id))} trials)")
    runs = [stages(url, sweep_id) for _ in range(args.runs)]
    for name in runs[0]:
        values = [r[name] for r in runs]
        print(f"  {name:<22} {statistics.median(values):8.3f}" + (" s" if name != "points" else ""))
    total = statistics.median(sum(v for k, v in r.items() if k != "points") for r in runs)
    print(f"  {'total (median)':<22} {total:8.3f} s")
    first = page_run(url)  # also imports the page's modules, which a running server has done
    st.cache_resource.clear()
    st.cache_data.clear()
    cold, warm = page_run(url), page_run(url)
    print(f"Explore page script (AppTest): first {first:.2f} s (with imports), "
          f"cold cache {cold:.2f} s, warm cache {warm:.2f} s")
    if args.browser:
        times = ", ".join(f"{t:.2f}" for t in browser_runs(url, sweep_id, args.runs + 2))
        print(f"Explore in Chromium, click to chart drawn (first = server cold): {times} s")


if __name__ == "__main__":
    main()
