"""A server's Prometheus /metrics during a trial: parsed with prometheus_client's own text
parser, sampled on a background thread, summarised into the trial's details: each gauge's
series, mean and max; each counter's increase over the trial (prefix-cache queries and hits,
preemptions), and the prefix-cache hit rate those give.

An engine whose /metrics disturbs what is measured is read at the trial's two ends only
(`interval_s=None`): vLLM's CPU build, scraped every 0.5 s on a 2-core machine, stalled the
client's event loop for 25-45% of 4-user trials (p90 TTFT 0.16-1.0 s against 0.05-0.09 s
unscraped; docs/benchmarks.md). Its mean running requests then come from a counter of the
seconds requests spent running (Little's law over the measurement window)."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families

from common.details import ServerMetrics, part
from common.records import TrialMetrics

DEFAULT_INTERVAL_S = 0.5


def parse_gauges(text: str, gauges: Mapping[str, tuple[str, ...]]) -> dict[str, float | None]:
    """Our gauge name -> the value of the first of its metric names present (summed over label
    sets, e.g. one per served model); None where the engine exports none of them."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return {ours: next((values[n] for n in names if n in values), None) for ours, names in gauges.items()}


class MetricsScraper:
    """Samples GET `url` every `interval_s` on a daemon thread until stopped."""

    def __init__(self, url: str, gauges: Mapping[str, tuple[str, ...]],
                 counters: Mapping[str, tuple[str, ...]] | None = None,
                 interval_s: float | None = DEFAULT_INTERVAL_S) -> None:
        self.url, self.gauges, self.interval_s = url, dict(gauges), interval_s
        self.counters = dict(counters or {})
        self.samples: list[tuple[float, dict[str, float | None]]] = []  # (seconds since start, values)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)
        self.start_s = 0.0

    def __enter__(self) -> MetricsScraper:
        self.start_s = time.monotonic()
        if self.interval_s is None:  # the trial's ends only: its counters' increase
            self._scrape()
        else:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._scrape()  # the counters' increase runs to the trial's end, not the last tick

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._scrape()
            self._stop.wait(self.interval_s)

    def _scrape(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=2.0) as resp:
                text = resp.read().decode("utf-8", errors="replace")
            self.samples.append((time.monotonic() - self.start_s,
                                 parse_gauges(text, {**self.gauges, **self.counters})))
        except (OSError, ValueError):  # a missed scrape is counted, not fatal to the trial
            self.errors += 1

    def summary(self, window_s: tuple[float, float] | None = None,
                busy_s: tuple[float, float] | None = None) -> dict:
        """JSON-ready: the series per gauge and its mean and max (None where never exported).
        With `window_s` (monotonic seconds: the trial's measurement window) the stats are of the
        samples inside it: the scraper runs from before the load starts (client start-up, the
        start margin) to after it ends, and idle samples there would pull a gauge's mean down.
        `busy_s`: from the first request sent to the last ended, warm-up and cooldown included
        (the span of everything a counter counted; `window_s` where not given)."""
        series = {name: [s[1][name] for s in self.samples] for name in self.gauges}
        inside = list(range(len(self.samples)))
        if window_s is not None:
            lo, hi = (t - self.start_s for t in window_s)
            inside = [i for i, s in enumerate(self.samples) if lo <= s[0] <= hi] or inside
        stats = {name: _stats([values[i] for i in inside]) for name, values in series.items()}
        increases = {name: _increase([s[1][name] for s in self.samples]) for name in self.counters}
        if self.interval_s is None:  # no gauge was sampled under load: their two idle ends say nothing
            stats = {name: None for name in stats}
            running_s, span = increases.get("running_s"), busy_s or window_s
            if running_s is not None and span is not None and span[1] > span[0]:
                # Little's law on the server: seconds requests spent running, over the span in
                # which they ran. The counter holds the warm-up and cooldown requests too: over
                # the measurement window alone, the mean exceeded the engine's own batch cap.
                stats["running"] = {"mean": running_s / (span[1] - span[0]), "max": None}
        return {"url": self.url, "interval_s": self.interval_s, "t_s": [round(s[0], 3) for s in self.samples],
                "series": series, "stats": stats, "stats_samples": len(inside),
                "window_t_s": self._on_clock(window_s), "busy_t_s": self._on_clock(busy_s),
                "counters": increases, "prefix_cache_hit_rate": hit_rate(increases),
                "scrape_errors": self.errors}

    def _on_clock(self, span_s: tuple[float, float] | None) -> list[float] | None:
        return None if span_s is None else [round(t - self.start_s, 3) for t in span_s]


def _stats(values: list[float | None]) -> dict[str, float] | None:
    known = [v for v in values if v is not None]
    return {"mean": sum(known) / len(known), "max": max(known)} if known else None


def _increase(values: list[float | None]) -> float | None:
    """A counter's increase between its first and last sample over the trial (None: never seen).
    Sampled every interval_s, so what happened before the first sample is not counted."""
    known = [v for v in values if v is not None]
    return known[-1] - known[0] if len(known) >= 2 else None


def hit_rate(increases: Mapping[str, float | None]) -> float | None:
    """Prefix-cache hits / queries over the trial (vLLM counts both in tokens); None when the
    engine exports no such counters or nothing was queried."""
    queries, hits = increases.get("prefix_cache_queries"), increases.get("prefix_cache_hits")
    return hits / queries if queries and hits is not None else None


def with_server_metrics(metrics: TrialMetrics, summary: dict | ServerMetrics) -> TrialMetrics:
    """The trial's metrics with the engine's series in details.server_metrics, and, where the
    client saw no engine steps, the mean batch size as the engine reports it: the mean of its
    running-requests gauge over the trial (details.mean_batch_size_from says so); where no
    request reported cached tokens, the prefix-cache hit rate from its counters."""
    server = part(ServerMetrics, summary)
    assert server is not None
    updates: dict = {}
    noted: dict[str, str] = {}
    running = server.stats.get("running")
    if metrics.mean_batch_size is None and running:
        updates["mean_batch_size"] = running["mean"]
        noted["mean_batch_size_from"] = "the server's running-requests gauge (/metrics), time-averaged"
    if metrics.prefix_cache_hit_rate is None and server.prefix_cache_hit_rate is not None:
        # vLLM reports cached tokens per request only with --enable-prompt-tokens-details
        updates["prefix_cache_hit_rate"] = server.prefix_cache_hit_rate
        noted["prefix_cache_hit_rate_from"] = "the server's prefix-cache counters (/metrics)"
    return replace(metrics, **updates,
                   details=replace(metrics.details, server_metrics=server, **noted))
