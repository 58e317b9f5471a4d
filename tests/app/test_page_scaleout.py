"""Scale-out page and its chart: simulated lines and measured diamonds, labelled apart."""

from __future__ import annotations

import json

from dashboard_helpers import page_test, plain, texts

from app.dashboard.charts_scale import scale_figure
from app.dashboard.synthetic import add_synthetic_sweep
from experiments.analysis.scaleout import ScalePoint, scaling_values

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
    # Per replica by default: 3 req/s per replica at every count (perfect scaling is flat).
    assert list(fig.data[0].y) == [3.0, 3.0, 3.0]
    assert list(fig.data[1].x) == [2] and list(fig.data[1].y) == [2.75]
    assert fig.data[1].marker.symbol == "diamond"
    assert fig.layout.xaxis.type == "log" and list(fig.layout.xaxis.tickvals)[:3] == [1, 2, 4]
    assert fig.layout.yaxis.type != "log" and fig.layout.yaxis.title.text.startswith("Goodput per replica")
    total = scale_figure(points, "total")
    assert list(total.data[1].y) == [5.5] and total.layout.yaxis.type == "log"  # log-log


def test_efficiency_is_goodput_over_n_times_one_replicas() -> None:
    points = [ScalePoint("static/b4/w0ms", n, "round_robin", "concurrent@2", g, g, "simulated")
              for n, g in ((1, 2.0), (2, 4.0), (4, 6.0))]
    assert scaling_values(points, "efficiency") == [1.0, 1.0, 0.75]
    zero = [ScalePoint("x", n, None, "concurrent@2", 0.0, 1.0, "simulated") for n in (1, 2)]
    assert scaling_values(zero, "efficiency") == [None, None]  # no one-replica goodput: unknown
    fig = scale_figure(points, "efficiency")
    assert fig.layout.yaxis.tickformat == ".0%" and fig.layout.shapes[0].y0 == 1.0


def test_each_config_gets_its_own_panel() -> None:
    # Four configs that scale alike drew one line; one panel each keeps them apart.
    points = [ScalePoint(f"static/b{b}/w0ms", n, "round_robin", "concurrent@2", 2.0 * n, 2.0 * n,
                         "simulated") for b in (1, 2, 4, 8) for n in (1, 2)]
    fig = scale_figure(points)
    axes = [t.xaxis for t in fig.data]
    assert axes == ["x", "x2", "x3", "x4"]
    assert [a.text for a in fig.layout.annotations] == [f"static/b{b}/w0ms" for b in (1, 2, 4, 8)]


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
    # The sweep measured round robin: the simulated lines default to the same router.
    assert app.selectbox(key=f"scale_router_{sweep_id}").value == "round_robin"
    # A CPU sweep: its replicas are processes, not GPUs.
    assert spec["layout"]["xaxis"]["title"]["text"] == "Replicas"
    assert not any("GPU" in t for t in texts(app.caption))
    assert spec["layout"]["yaxis"]["title"]["text"].startswith("Goodput per replica")


def test_page_compares_routers_measured_and_simulated(db_url, store):
    spec = {**SCALE_SPEC, "routers": ["round_robin", "prefix_affinity"]}
    sweep_id = add_synthetic_sweep(store, spec)
    app = page_test("scaleout").run()
    app.selectbox(key=f"scale_load_{sweep_id}").set_value("concurrent@2").run()
    assert not app.exception
    words = [plain(t) for t in texts(app.markdown)]
    assert any(t.startswith("**Measured** behind round robin, prefix affinity") for t in words), words
    router_chart = json.loads(app.get("plotly_chart")[1].proto.spec)
    assert [t["name"] for t in router_chart["data"]] == ["round robin · measured",
                                                         "prefix affinity · measured"]
    app.toggle(key=f"scale_router_sim_{sweep_id}").set_value(True).run()
    assert not app.exception
    names = [t["name"] for t in json.loads(app.get("plotly_chart")[1].proto.spec)["data"]]
    assert {"prefix affinity · simulated", "prefix affinity · measured",
            "least outstanding · simulated", "power of two choices · simulated"} <= set(names)
    # chat has no sessions or shared prefixes: the page says what affinity can show there.
    assert any("Simulated. This profile has no sessions or shared prefixes" in t
               for t in texts(app.caption))


def test_page_without_sweeps_says_how_to_start(db_url):
    app = page_test("scaleout").run()
    assert not app.exception and any("--replicas 1,2" in t for t in texts(app.info))
