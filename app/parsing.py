"""Parsing of CLI list options like `--batch-sizes 1,4,16`, with one-line errors."""

from __future__ import annotations

from app.errors import BadInput


def parse_budget(option: str, text: str | None) -> int | None:
    """A token budget: an integer >= 1, or `none` (no budget)."""
    if text is None or text.strip().lower() == "none":
        return None
    return parse_budgets(option, text)[0]


def parse_budgets(option: str, text: str) -> list[int | None]:
    """`64,256,none`: integers >= 1, and `none` for no budget."""
    items = [item.strip().lower() for item in text.split(",")]
    try:
        budgets = [None if item == "none" else int(item) for item in items]
    except ValueError:
        raise BadInput(f"{option}: {text!r} is not a list of integers or none; "
                       f"e.g. {option} 64,256,none") from None
    if any(b is not None and b < 1 for b in budgets):
        raise BadInput(f"{option}: every budget must be >= 1 token or none, got {text!r}")
    return budgets


def parse_list(option: str, text: str, kind: type) -> list:
    """Split `a,b,c` into values of `kind`; empty items or non-numbers are bad input."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise BadInput(f"{option}: empty value in {text!r}; give a comma-separated list like 1,4,16")
    try:
        return [kind(item) for item in items]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise BadInput(f"{option}: {text!r} is not a list of {noun}; e.g. {option} 1,4,16") from None


SLO_EXAMPLE = "e.g. --slo ttft_ms=200 --slo tpot_ms:p99=50"


def parse_slos(items: list[str] | None) -> dict[str, dict] | None:
    """`--slo METRIC[:PERCENTILE]=MS` (repeated) -> {metric: {percentile, max_ms}}; p90 by default.
    None when no --slo was given (the profile's own SLOs apply)."""
    if not items:
        return None
    slos: dict[str, dict] = {}
    for item in items:
        name, sep, value = item.partition("=")
        metric, _, percentile = name.partition(":")
        try:
            max_ms = float(value)
        except ValueError:
            max_ms = None
        if not sep or not metric or max_ms is None:
            raise BadInput(f"--slo {item!r}: give METRIC[:PERCENTILE]=MS, {SLO_EXAMPLE}")
        slos[metric.strip()] = {"percentile": percentile.strip() or "p90", "max_ms": max_ms}
    return slos


SWITCHES = {"on": True, "off": False, "default": None}


def parse_switches(option: str, text: str) -> list[bool | None]:
    """`on,off,default` -> [True, False, None] (default: the engine's own setting)."""
    items = [item.strip().lower() for item in text.split(",")]
    bad = next((item for item in items if item not in SWITCHES), None)
    if bad is not None:
        raise BadInput(f"{option}: {bad!r} is not on, off or default; e.g. {option} on,off")
    return [SWITCHES[item] for item in dict.fromkeys(items)]
