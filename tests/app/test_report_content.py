"""The HTML report's content: sensible digits, "-" for unknowns, TTFT by turn and the
prefix-cache hit rate for sweeps that stored them, labels clear of the star."""

from __future__ import annotations

import re

from app.dashboard import report
from app.dashboard.report_turns import turn_rows
from experiments.analysis.queries import analyse

BY_TURN = {"1": {"p50": 20.123456, "p90": 25.0, "count": 8},
           "2": {"p50": 35.987654, "p90": 50.0, "count": 6}}


def _table_after(html: str, heading: str) -> str:
    start = html.index(heading)
    return html[start:html.index("</table>", start)]


def _cells(table: str) -> list[str]:
    return re.findall(r"<td>(.*?)</td>", table)


def test_report_numbers_have_three_digits_and_unknowns_a_dash(store, results) -> None:
    html = report.build_report(analyse(store, store.get_sweep(results["chat"])))
    cells = _cells(_table_after(html, "<h2>Pareto frontier</h2>"))
    numbers = [c for c in cells if re.fullmatch(r"[\d.]+", c)]
    assert numbers and all(len(c.replace(".", "").lstrip("0")) <= 4 for c in numbers), numbers
    text = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    assert not re.search(r"\bnan\b|0\.000|\d\.\d{5,}", text)
    assert "TTFT by turn" not in html and "Turns and prefix cache" not in html  # no sessions


def test_report_shows_ttft_by_turn_and_the_prefix_cache_hit_rate(store, results) -> None:
    trials = store.list_trials(results["chat"])
    for t in trials:
        store.set_trial_details(t.trial_id, {**t.details.to_dict(), "ttft_ms_by_turn": BY_TURN})
    analysis = analyse(store, store.get_sweep(results["chat"]))
    html = report.build_report(analysis)
    table = _table_after(html, "<h2>Turns and prefix cache</h2>")
    heads = re.findall(r"<th>(.*?)</th>", table)
    assert heads == ["config", "trials", "prefix-cache hit rate", "turn 1 p50 TTFT (ms)",
                     "turn 2 p50 TTFT (ms)"]
    first = _cells(table)[:5]
    assert first[0].endswith("(recommended)") and first[1:] == ["2", "-", "20.1", "36"]


def test_turn_rows_average_repetitions_and_give_the_hit_rate(store, results) -> None:
    trials = store.list_trials(results["chat"])
    config = trials[0].config
    reps = [t for t in trials if t.config.label == config.label]
    assert len(reps) == 2
    shaped = [t.__class__(**{**t.__dict__, "metrics": {**t.metrics, "prefix_cache_hit_rate": rate},
                             "details": {"ttft_ms_by_turn": {"1": {"p50": p50, "count": 1}}}})
              for t, rate, p50 in zip(reps, (0.25, 0.75), (10.0, 20.0), strict=True)]
    assert turn_rows(shaped) == [{"config": config.label, "trials": 2,
                                  "prefix-cache hit rate": "50.0%", "turn 1 p50 TTFT (ms)": 15.0}]


def test_report_chart_keeps_slo_labels_above_the_plot(store, results) -> None:
    html = report.build_report(analyse(store, store.get_sweep(results["chat"])))
    assert '"yanchor":"bottom"' in html and '"yref":"paper"' in html
    assert '"cliponaxis":false' in html  # the star is drawn whole at the plot's edge
