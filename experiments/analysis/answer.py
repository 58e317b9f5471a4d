"""The capacity answer in words: one sentence, built from `choice.choose`, that the CLI, the
dashboard, the report and the exports all show (via `Recommendation.explanation`).

`continuous b16 w0ms carries at least 14 req/s within the chat SLOs (p90 TTFT <= 59 ms = 5 x
unloaded p50 11.8 ms; ...); the best static config 6.1 (1 of 4 configs undecided)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.numbers import num
from common.records import SLO, TrialRecord
from experiments.analysis.choice import Choice, choose
from experiments.search.capacity import NOT_ANSWERED, PRUNED, RULED_OUT, ConfigCapacity, knob_label
from experiments.search.evidence import Attainment
from experiments.search.strategy import AT_LIMIT, INVALID, UNDECIDED, WITHIN_NOISE, fmt_amount

METRIC_NAMES = {
    "ttft_ms": "TTFT", "tpot_ms": "TPOT", "itl_ms": "ITL", "e2e_ms": "E2E",
    "queue_wait_ms": "queue wait", "service_ms": "service time",
}


@dataclass(frozen=True)
class SLORule:
    """One SLO as it was resolved: its threshold and where the threshold came from."""

    slo: SLO
    rule: str  # "5 x unloaded p50 11.8 ms", "absolute", or "what-if"

    def to_dict(self) -> dict:
        """The CLI contract's `slos` item."""
        return {"metric": self.slo.metric, "percentile": self.slo.percentile,
                "threshold_ms": self.slo.max_ms, "rule": self.rule}

    @property
    def text(self) -> str:
        """`p90 TTFT <= 59 ms = 5 x unloaded p50 11.8 ms`."""
        name = METRIC_NAMES.get(self.slo.metric, self.slo.metric)
        head = f"{self.slo.percentile} {name} <= {num(self.slo.max_ms)} ms"
        return head if self.rule == "absolute" else f"{head} = {self.rule}"


def rules_for(slos: Sequence[SLO], multiples: dict[str, float] | None = None) -> list[SLORule]:
    """Each SLO with its rule: `multiples` maps a metric to its x-baseline factor (relative
    SLOs: the unloaded p50 is the threshold over the factor); others are absolute."""
    out = []
    for slo in slos:
        x = (multiples or {}).get(slo.metric)
        out.append(SLORule(slo, f"{x:g} x unloaded p50 {num(slo.max_ms / x)} ms" if x else "absolute"))
    return out


def best(capacities: Sequence[ConfigCapacity], trials: Sequence[TrialRecord] = (),
         key: str = "goodput_rps") -> ConfigCapacity | None:
    """The recommended config among `capacities` (see `choice.choose`)."""
    return choose(capacities, trials, key).winner


def sentence(capacities: Sequence[ConfigCapacity], profile_name: str,
             trials: Sequence[TrialRecord] = (), key: str = "goodput_rps",
             rules: Sequence[SLORule] = (), choice: Choice | None = None,
             subject: str | None = None) -> str:
    """The answer in one sentence (see the module docstring). `subject` names what was
    measured when it is not a config of tradeoff's knobs (a bare --target: the server)."""
    choice = choice or choose(capacities, trials, key)
    top = choice.winner
    slo_text = f" ({'; '.join(r.text for r in rules)})" if rules else ""
    if top is None:
        who = subject or "no config"
        verb = "was not shown to carry" if subject else "was shown to carry"
        return f"{who} {verb} load within the {profile_name} SLOs{slo_text}" + _notes(capacities)
    if subject:  # its batching is its own: no knobs to name or compare
        return f"{subject} carries {amount(top)} within the {profile_name} SLOs{slo_text}"
    text = f"{knob_label(top.config)} carries {amount(top)} within the {profile_name} SLOs{slo_text}"
    text += _tie_clause(choice) + _rivals(capacities, top)
    return text + _notes(capacities)


def amount(cap: ConfigCapacity) -> str:
    """`14 req/s`, `at least 32 users`, `at least 16 req/s, at most 18 (undecided)`."""
    c, unit = cap.capacity, cap.unit
    load = fmt_amount(c.capacity, unit)
    if c.status == AT_LIMIT:
        return f"at least {load}"
    if c.status in (UNDECIDED, INVALID, *RULED_OUT):
        upper = "" if c.upper is None else f", at most {num(c.upper)}"
        return f"at least {load}{upper} (undecided)"
    if c.status == WITHIN_NOISE:
        return f"{load} (the boundary is within noise)"
    return load


def at_load(name: str, unit: str, value: float | None, n: int, att: Attainment | None) -> str:
    """` At that load: goodput 6.29 req/s over 2 repetitions, 90.6% of 32 requests ...`."""
    if value is None:
        return ""
    clustered = ("" if att is None or att.effective_n is None else
                 f"; its misses came in runs, so worth ~{att.effective_n:.0f} independent requests")
    share = "" if att is None else (f", {att.mean:.1%} of {att.num_total} requests within the "
                                    f"SLOs (90% interval {att.lo:.1%}-{att.hi:.1%}{clustered})")
    return f" At that load: {name} {num(value)} {unit} over {n} repetition{'s' * (n != 1)}{share}."


def _tie_clause(choice: Choice) -> str:
    text = ""
    if choice.tie_with:
        others = ", ".join(knob_label(c.config) for c in choice.tie_with)
        # What would separate them: loads where the knobs act, or more evidence where they do.
        remedy = ("every leading config ran batches of ~1 there, so the batching knobs could not "
                  "act: sweep loads between to separate them" if choice.knobs_idle else
                  "their batch caps are above the users there, so the same server ran: sweep "
                  "more users to separate them" if choice.caps_idle else
                  "add repetitions or a longer trial to separate them")
        text += (f"; the recommended config ties within noise with {others} ({remedy}; a tie "
                 "goes to the most headroom, then the simpler config)")
    if choice.separated:
        others = ", ".join(knob_label(c.config) for c in choice.separated)
        text += f"; {others} carried as much but with a lower objective, beyond noise"
    return text


def _rivals(capacities: Sequence[ConfigCapacity], top: ConfigCapacity) -> str:
    text = ""
    for policy in sorted({c.config.policy for c in capacities} - {top.config.policy}):
        mine = [c for c in capacities if c.config.policy == policy]
        carried = [c for c in mine if c.capacity.capacity > 0 and c.capacity.status not in RULED_OUT]
        rival = max(carried, key=lambda c: c.capacity.capacity, default=None)
        pruned = max((c.capacity.capacity for c in mine if c.capacity.status == PRUNED), default=0.0)
        text += (f"; the best {policy} config {_short(rival)}" if rival
                 else f"; {policy} configs at least {num(pruned)}, then ruled out" if pruned > 0
                 else f"; no {policy} config was shown to carry any")
    return text


def _short(cap: ConfigCapacity) -> str:
    c = cap.capacity
    if c.status == AT_LIMIT:
        return f"at least {num(c.capacity)}"
    if c.status in NOT_ANSWERED:
        return f"at least {num(c.capacity)} (undecided)"
    return num(c.capacity)


def _notes(capacities: Sequence[ConfigCapacity]) -> str:
    undecided = sum(c.capacity.status in NOT_ANSWERED for c in capacities)
    ruled_out = sum(c.capacity.status in RULED_OUT for c in capacities)
    notes = ([f"{undecided} of {len(capacities)} configs undecided"] if undecided else []) + (
        [f"{ruled_out} ruled out as unable to win"] if ruled_out else [])
    return f" ({'; '.join(notes)})" if notes else ""


def why_empty(trials: Sequence[TrialRecord]) -> str:
    if not trials:
        return "there are no trials to recommend from yet; run a sweep, or wait for the running one."
    failed = sum(t.status == "failed" for t in trials)
    return (f"nothing to recommend: no trial finished with results ({failed} failed, "
            f"{len(trials) - failed} still running or without metrics).")


def why_client_bound(num_points: int, example: str | None = None) -> str:
    seen = f" (one: {example})" if example else ""
    return (f"nothing qualifies: all {num_points} measured configs are client-bound (the load "
            f"generator lagged, so their numbers are not the server's){seen}; rerun with fewer "
            "users, with a started server pinned away from the client (--server-cpus), or on a "
            "machine with more cores for the client.")


def why_drifted(num_points: int) -> str:
    return (f"nothing qualifies: all {num_points} measured configs ran while the machine's speed "
            "had drifted from the sweep's reference (another job, a busy core, throttling), so "
            "their numbers are not comparable; rerun the sweep on a quiet machine.")


def why_saturated(num_points: int) -> str:
    return (f"nothing qualifies: all {num_points} measured configs saturated the server "
            "(arrivals outpaced completions); sweep lower load levels.")
