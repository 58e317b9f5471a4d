"""Prometheus metrics of `tradeoff serve` (GET /metrics): counters, a rate window, histograms."""

from __future__ import annotations

import bisect

from engine.engine import Engine

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_WINDOW_S = 10


class _Histogram:
    """A Prometheus histogram with fixed upper bounds (seconds)."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds, self.counts = bounds, [0] * (len(bounds) + 1)
        self.total, self.num = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total, self.num = self.total + value, self.num + 1

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, count in zip((*self.bounds, "+Inf"), self.counts, strict=True):
            cumulative += count
            out.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        return [*out, f"{name}_sum {self.total}", f"{name}_count {self.num}"]


class _RateWindow:
    """Events per second over the last complete `window_s` seconds, from one-second buckets."""

    def __init__(self, window_s: int = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self.seconds, self.counts = [-1] * window_s, [0] * window_s

    def add(self, now_s: float, num: int) -> None:
        sec = int(now_s)
        idx = sec % self.window_s
        if self.seconds[idx] != sec:
            self.seconds[idx], self.counts[idx] = sec, 0
        self.counts[idx] += num

    def rate(self, now_s: float) -> float:
        sec = int(now_s)
        total = sum(c for s, c in zip(self.seconds, self.counts, strict=True)
                    if sec - self.window_s <= s < sec)
        return total / self.window_s


class ServerMetrics:
    """Counters and histograms for GET /metrics; touched only on the event loop."""

    def __init__(self) -> None:
        self.requests = {"finished": 0, "failed": 0, "cancelled": 0, "rejected": 0}
        self.num_prompt_tokens = self.num_output_tokens = 0
        self.output_rate = _RateWindow()
        self.ttft_s, self.e2e_s = _Histogram(), _Histogram()

    def add_output_tokens(self, now_s: float, num: int) -> None:
        self.num_output_tokens += num
        self.output_rate.add(now_s, num)

    def render(self, engine: Engine) -> str:
        """Prometheus text exposition format 0.0.4."""
        now_s = engine.now()
        out = _gauge("tradeoff_num_requests_waiting", "Requests queued, not yet in a batch.",
                     engine.num_waiting)
        out += _gauge("tradeoff_num_requests_running", "Requests in the running batch.",
                      engine.num_running)
        out += _gauge("tradeoff_generation_tokens_per_second",
                      f"Output tokens per second over the last {RATE_WINDOW_S} s.",
                      self.output_rate.rate(now_s))
        out += _counter("tradeoff_generation_tokens_total", "Output tokens streamed.",
                        self.num_output_tokens)
        out += _counter("tradeoff_prompt_tokens_total", "Prompt tokens admitted.",
                        self.num_prompt_tokens)
        out += _header("tradeoff_requests_total", "Requests by outcome.", "counter")
        out += [f'tradeoff_requests_total{{status="{k}"}} {v}' for k, v in self.requests.items()]
        out += _histogram("tradeoff_time_to_first_token_seconds",
                          "Arrival to first token, seconds.", self.ttft_s)
        out += _histogram("tradeoff_e2e_request_latency_seconds",
                          "Arrival to last token, seconds (finished requests).", self.e2e_s)
        return "\n".join(out) + "\n"


def _header(name: str, help_text: str, kind: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _gauge(name: str, help_text: str, value: float) -> list[str]:
    return [*_header(name, help_text, "gauge"), f"{name} {value}"]


def _counter(name: str, help_text: str, value: float) -> list[str]:
    return [*_header(name, help_text, "counter"), f"{name} {value}"]


def _histogram(name: str, help_text: str, hist: _Histogram) -> list[str]:
    return [*_header(name, help_text, "histogram"), *hist.lines(name)]
