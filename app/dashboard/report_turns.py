"""The report's sessions section: TTFT by turn and the prefix-cache hit rate, per config.

Reads what every trial already stores (`details.ttft_ms_by_turn`, the `prefix_cache_hit_rate`
metric), so the report says for a whole sweep what Explore's "By turn" tab says for one trial.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace

from common.records import TrialConfig, TrialRecord

MAX_TURN_COLUMNS = 8  # wider tables wrap in the report; later turns are rare in any profile
MAX_ROWS = 24


def has_reuse(trials: Sequence[TrialRecord]) -> bool:
    """Whether any done trial stored TTFT by turn or a prefix-cache hit rate."""
    return any(_by_turn(t) or t.metrics.get("prefix_cache_hit_rate") is not None
               for t in trials if t.status == "done")


def turn_rows(trials: Sequence[TrialRecord], recommended: TrialConfig | None = None) -> list[dict]:
    """One row per config (repetitions averaged): trials, hit rate, p50 TTFT of each turn (ms);
    the recommended config first, then the rest by label. None where a trial stored nothing."""
    groups: dict[TrialConfig, list[TrialRecord]] = {}
    for t in trials:
        if t.status == "done":
            groups.setdefault(_base(t.config), []).append(t)
    turns = sorted({int(k) for ts in groups.values() for t in ts for k in _by_turn(t)})
    shown = turns[:MAX_TURN_COLUMNS]
    order = sorted(groups, key=lambda c: (c != recommended, c.label))
    return [_row(c, groups[c], shown, c == recommended) for c in order[:MAX_ROWS]]


def _row(config: TrialConfig, trials: list[TrialRecord], turns: list[int], is_best: bool) -> dict:
    row: dict = {"config": config.label + (" (recommended)" if is_best else ""),
                 "trials": len(trials),
                 "prefix-cache hit rate": _percent(_mean(t.metrics.get("prefix_cache_hit_rate")
                                                         for t in trials))}
    for turn in turns:
        row[f"turn {turn} p50 TTFT (ms)"] = _mean(
            (_by_turn(t).get(str(turn)) or {}).get("p50") for t in trials)
    return row


def _by_turn(t: TrialRecord) -> dict:
    return t.details.ttft_ms_by_turn or {}


def _base(config: TrialConfig) -> TrialConfig:
    return replace(config, repetition=0)


def _percent(share: float | None) -> str | None:
    return None if share is None else f"{share:.1%}"


def _mean(values) -> float | None:
    known = [float(v) for v in values if v is not None]
    return statistics.fmean(known) if known else None
