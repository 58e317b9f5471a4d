"""Scale-out page and its chart: simulated lines and measured diamonds, labelled apart."""

from __future__ import annotations

import json

from dashboard_helpers import page_test, texts

from app.dashboard.charts_scale import scale_figure
from app.dashboard.synthetic import add_synthetic_sweep
from experiments.scaleout import ScalePoint

SCALE_SPEC = {"name": "replicas", "profile": "chat", "policies": ["continuous"], "batch_sizes": [4],
              "max_wait_ms": [0.0], "concurrency": [2, 4], "requests": 8, "replicas": [1, 2],
              "routers": ["round_robin"]}


def test_chart_keeps_simulated_and_measured_apart():
    points = [ScalePoint("continuous/b4/w0ms", n, "round_robin", "concurrent@2", 3.0 * n, 3.0 * n,
                         "simulated") for n in (1, 2, 4)]
    points.append(ScalePoint("continuous/b4/w0ms", 2, "round_robin", "concurrent@2", 5.5, 5.5,
                             "measured", 7))
    fig = scale_figure(points)
    assert [t.name for t in fig.data] == ["continuous/b4/w0ms · simulated",
                                          "continuous/b4/w0ms · measured"]
    assert list(fig.data[0].x) == [1, 2, 4] and fig.data[0].line.dash == "dash"
    assert list(fig.data[1].x) == [2] and list(fig.data[1].y) == [5.5]
    assert fig.data[1].marker.symbol == "diamond"


def test_page_draws_simulated_lines_and_measured_points(db_url, store):
    sweep_id = add_synthetic_sweep(store, SCALE_SPEC)
    app = page_test("scaleout").run()
    assert not app.exception
    app.selectbox(key=f"scale_load_{sweep_id}").set_value("concurrent@2").run()
    spec = json.loads(app.get("plotly_chart")[0].proto.spec)
    names = [t["name"] for t in spec["data"]]
    assert names == ["continuous/b4/w0ms · simulated", "continuous/b4/w0ms · measured"]
    assert spec["data"][0]["x"] == [1, 2, 4, 8, 16, 32, 64]
    assert sorted(spec["data"][1]["x"]) == [1, 2]  # concurrent@2 per replica: 1 x 2 and 2 x 4
    assert any("Cost model:" in t for t in texts(app.caption))


def test_page_without_sweeps_says_how_to_start(db_url):
    app = page_test("scaleout").run()
    assert not app.exception and any("--replicas 1,2" in t for t in texts(app.info))
