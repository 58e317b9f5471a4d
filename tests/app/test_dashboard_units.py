"""Pure pieces of the dashboard: input parsing, escaping, chart builders."""

from __future__ import annotations

import pytest

from app.dashboard import charts, forms
from app.dashboard.forms import RunInputs
from app.dashboard.synthetic import synthetic_requests
from app.dashboard.widgets import md
from common.records import TrialConfig, TrialRecord
from db.store import StoredRequest
from experiments.analysis.pareto import aggregate, classify


@pytest.mark.parametrize(("text", "kind", "expected"), [
    ("1, 4,16", int, [1, 4, 16]), ("1 4  16", int, [1, 4, 16]), ("0, 2.5", float, [0.0, 2.5]),
])
def test_parse_numbers(text: str, kind: type, expected: list) -> None:
    assert forms.parse_numbers(text, kind) == expected


@pytest.mark.parametrize(("text", "kind", "message"), [
    ("", int, "at least one value"), ("1, x", int, "'x' is not a number"),
    ("1.5", int, "whole numbers"), ("nan", float, "finite"), ("inf", float, "finite"),
])
def test_parse_numbers_errors(text: str, kind: type, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        forms.parse_numbers(text, kind)


def test_build_spec_maps_errors_to_fields() -> None:
    spec, errors = forms.build_spec(RunInputs(), {})
    assert errors == {} and spec.num_trials == 24
    _, errors = forms.build_spec(RunInputs(batch_sizes="0", loads="x"), {})
    assert set(errors) == {"load"}  # list syntax first; grid rules once the lists parse
    _, errors = forms.build_spec(RunInputs(batch_sizes="0"), {})
    assert errors == {"batch_sizes": "every batch size must be >= 1"}
    _, errors = forms.build_spec(RunInputs(model="builtin:huge"), {})
    assert "unknown built-in model" in errors["model"]
    _, errors = forms.build_spec(RunInputs(profile="mine"), {"mine": "name: [broken"})
    assert "invalid YAML" in errors["profile"]
    spec, _ = forms.build_spec(RunInputs(load_mode="rate", loads="2, 0.5", burstiness=0.5), {})
    assert spec.load.rate == [0.5, 2.0] and spec.load.burstiness == 0.5 and spec.load.concurrency is None


def test_md_shows_markup_literally() -> None:
    assert md("**b** <i>x</i>\n[l](u) :red[r] $x$") == \
        r"\*\*b\*\* \<i\>x\</i\> \[l\]\(u\) \:red\[r\] \$x\$"


def _trial(trial_id: int, config: TrialConfig) -> TrialRecord:
    from experiments.analysis.metrics import compute_trial_metrics

    metrics = compute_trial_metrics(synthetic_requests(config, 8), [], [], None, False)
    return TrialRecord(trial_id, 1, config, "done", metrics.flat())


def test_frontier_figure_draws_every_point_once() -> None:
    configs = [TrialConfig(p, b, 0.0, concurrency=c) for p in ("static", "continuous")
               for b in (1, 8) for c in (1, 8)]
    points = aggregate([_trial(i, c) for i, c in enumerate(configs)])
    keys = ("output_tokens_per_s", "e2e_ms_p90")
    labels = classify(points, *keys)
    fig = charts.frontier_figure(points, labels, *keys, recommended=configs[-1])
    by_name = {t.name: t for t in fig.data}
    assert len(by_name["static"].x) + len(by_name["continuous"].x) == len(points)
    assert len(by_name["Pareto frontier"].x) == labels.count("frontier")
    assert sorted(int(row[0]) for n in ("static", "continuous")
                  for row in by_name[n].customdata) == list(range(len(points)))
    assert fig.layout.xaxis.title.text == "p90 E2E (ms)"


def _request(i: int, admitted: float, done: float) -> StoredRequest:
    return StoredRequest(1, i, 8, 4, 0.0, 0.0, admitted, admitted + 1, done, 1.0, 1.0, None)


def test_in_flight_counts_admitted_not_done_requests() -> None:
    times, counts = charts.in_flight_series([_request(0, 0.0, 10.0), _request(1, 5.0, 10.0),
                                             _request(2, 10.0, 20.0)])
    # At 10 ms two leave before one joins: never a phantom 3.
    assert list(zip(times, counts, strict=True)) == [
        (0.0, 0), (0.0, 1), (5.0, 2), (10.0, 1), (10.0, 0), (10.0, 1), (20.0, 0)]
    assert max(counts) == 2


def test_request_figures_escape_errors() -> None:
    failed = StoredRequest(1, 0, 8, 0, 0.0, 0.0, None, None, 3.0, None, None, "<b>boom</b>")
    fig = charts.timeline_figure([_request(1, 1.0, 5.0), failed])
    assert "&lt;b&gt;boom" in fig.data[-1].text[0]
    assert charts.as_request_record(failed).token_times_s == ()


def _point(config: TrialConfig, **metrics):
    record = TrialRecord(1, 1, config, "done", {"goodput_rps": 1.0, "ttft_ms_p90": 10.0, **metrics})
    return aggregate([record])[0]


def test_colour_by_token_budget_puts_none_past_the_largest() -> None:
    points = [_point(TrialConfig("continuous", 4, 0.0, 1, max_num_batched_tokens=b)) for b in (64, 256, None)]
    colour = charts.colour_of(points, "max_num_batched_tokens")
    assert colour.values == [6.0, 8.0, 9.0] and colour.ticktext == ["64", "256", "none"]
    assert (colour.cmin, colour.cmax, colour.title) == (6.0, 9.0, "prefill token budget")


def test_colour_by_roofline_is_a_fraction_with_unknowns_blank() -> None:
    points = [_point(TrialConfig("continuous", b, 0.0, 1), roofline_decode=v)
              for b, v in ((1, 0.25), (2, None))]
    colour = charts.colour_of(points, "roofline_decode")
    assert colour.values[0] == 0.25 and colour.values[1] != colour.values[1]  # NaN
    assert (colour.cmin, colour.cmax, colour.tickvals) == (0.0, 1.0, None)
    fig = charts.frontier_figure(points, ["frontier", "frontier"], "goodput_rps", "ttft_ms_p90",
                                 colour_by="roofline_decode")
    bars = [t.marker.colorbar.title.text for t in fig.data if t.marker and t.marker.showscale]
    assert bars == ["decode roofline fraction"]


def test_token_budgets_on_the_run_page() -> None:
    assert forms.parse_budgets("64, 256 none") == [None, 64, 256]
    spec, errors = forms.build_spec(RunInputs(policies=("continuous",), token_budgets="none, 64"), {})
    assert errors == {} and spec.knobs.max_num_batched_tokens == [None, 64]
    _, errors = forms.build_spec(RunInputs(token_budgets="lots"), {})
    assert "not a number" in errors["max_num_batched_tokens"]
    _, errors = forms.build_spec(RunInputs(policies=("continuous",), token_budgets="8"), {})
    assert "largest batch size (16)" in errors["max_num_batched_tokens"]


def test_error_bars_stop_at_zero() -> None:
    from app.dashboard.charts import error_bars
    from common.records import TrialConfig
    from experiments.analysis.pareto import ConfigPoint

    # Two repetitions, 160 and 20 ms: the t-interval (t = 12.7) runs to -800 ms; the bar to 0.
    point = ConfigPoint(TrialConfig("static", 1, 0.0, concurrency=1), 2, {"ttft_ms_p90": 90.0},
                        {"ttft_ms_p90": -799.0}, {"ttft_ms_p90": 979.0}, (1, 2), False)
    bars = error_bars([point], "ttft_ms_p90")
    assert list(bars["arrayminus"]) == [90.0] and list(bars["array"]) == [889.0]
