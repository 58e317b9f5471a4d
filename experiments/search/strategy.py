"""Capacity search: the largest load one batching config carries within the SLOs.

Goodput capacity (DistServe): the largest load (open-loop rate, or closed-loop users) whose SLO
attainment, the share of requests meeting every SLO, is >= the profile's target (90% default).
Pure logic over measurements: `CapacitySearch` is a state machine per config (bracket by
doubling or halving, then bisect), `search_all` interleaves several under a budget. It reads no
clock and runs nothing, so the virtual clock and injected noise test it exactly.

Noise: a load passes when the attainment's confidence interval lies wholly at or above the
target, fails when it lies below; in between it is measured again (another repetition, another
seed) until the interval decides or `max_repeats` is spent, and only while more repetitions
could matter: when the repetitions left would likely neither decide it nor reverse its verdict
(evidence.is_futile; `skip_futile_repeats`, a group-sequential test's futility stop) the load
is judged at once. A load still undecided then is judged by the evidence rule every view uses:
the pooled share against the target (so n = 1 and n >= 2 are judged alike and more evidence
never makes a load look worse); if the final bracket ends on such a load, the answer says the
boundary is within noise. The interval is Wilson's over the pooled requests; requests in one
trial share a queue and are not independent, so it is optimistic, which is why undecided loads
get fresh repetitions (new seeds) rather than only more requests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from experiments.search.evidence import (
    Attainment,
    Sample,
    is_futile,
    pooled_attainment,
    z_for,
)

Step, Answer, Result = TypeVar("Step"), TypeVar("Answer"), TypeVar("Result")

# Statuses of a finished (or stopped) search; DECIDED_STATUSES count as an answer.
DECIDED, WITHIN_NOISE, AT_LIMIT = "decided", "within_noise", "at_limit"
UNDECIDED, INVALID = "undecided", "invalid"
PRUNED = "pruned"  # stopped: shown unable to beat the best config so far (not undecided)
DECIDED_STATUSES = (DECIDED, WITHIN_NOISE, AT_LIMIT)


def fmt_amount(load: float, unit: str) -> str:
    """A load as users read it: `1 user`, `4 users`, `2.5 req/s`, `2x speed-up`."""
    if unit == "x speed-up":
        return f"{load:g}x speed-up"
    if unit == "users" and load == 1:
        return "1 user"
    return f"{load:g} {unit}"


@dataclass(frozen=True)
class SearchSettings:
    """How one config's capacity is searched."""

    target: float = 0.9  # minimum SLO attainment
    is_integer: bool = False  # closed-loop users: whole numbers, resolution 1
    start_load: float = 1.0
    min_load: float = 0.05  # below this the config carries nothing worth measuring
    max_load: float = 1024.0  # above this the search stops and reports ">= max"
    rel_tol: float = 0.1  # rate: stop bisecting when (hi - lo) <= rel_tol x hi
    growth: float = 2.0  # bracketing factor
    max_repeats: int = 3  # measurements of one load before calling it within noise
    # Stop repeating a load the repetitions left would likely neither decide nor reverse
    # (evidence.is_futile; searches stored before this spent every repetition: False replays them).
    skip_futile_repeats: bool = True
    confidence: float = 0.9
    unit: str = ""  # how loads read: "users" | "req/s" | "x speed-up"; "" = by is_integer

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1:
            raise ValueError(f"target attainment must be in (0, 1], got {self.target}")
        if not 0 < self.min_load <= self.start_load <= self.max_load:
            raise ValueError("need 0 < min_load <= start_load <= max_load")
        if self.growth <= 1 or self.max_repeats < 1 or self.rel_tol <= 0:
            raise ValueError("need growth > 1, max_repeats >= 1, rel_tol > 0")


@dataclass(frozen=True)
class Probe:
    """The next measurement a search asks for."""

    load: float
    repetition: int


@dataclass(frozen=True)
class Capacity:
    """A search's answer: capacity = the highest load that passed (0 if none did)."""

    capacity: float
    upper: float | None  # the lowest load that failed (or stayed within noise); None if none
    status: str  # DECIDED | WITHIN_NOISE | AT_LIMIT | UNDECIDED | INVALID
    reason: str
    num_probes: int
    attainment: dict[float, Attainment] = field(default_factory=dict)

    @property
    def is_decided(self) -> bool:
        return self.status in DECIDED_STATUSES


class CapacitySearch:
    """Bracketing then bisection over one config's load, noise-aware; a pure state machine.

    Invariant: every load below `lo` that was measured passed, `hi` failed (or is None), lo < hi.
    """

    def __init__(self, settings: SearchSettings) -> None:
        self.s = settings
        self.z = z_for(settings.confidence)
        self.samples: dict[float, list[Sample]] = {}
        self.lo: float | None = None  # highest passing load
        self.hi: float | None = None  # lowest failing load
        self.current: float | None = None  # the load being measured now
        self.status: str | None = None  # set once finished
        self.reason = ""
        self.num_probes = 0
        self.noisy: dict[float, str] = {}  # loads the interval never decided, and why
        self.invalid: dict[float, list[Sample]] = {}  # no evidence (client-bound, failed): redone
        self.unmeasurable: dict[float, str] = {}  # loads invalid max_repeats times, and why
        self.saturated: dict[float, str] = {}  # loads where the queue kept growing

    @property
    def is_finished(self) -> bool:
        return self.status is not None

    def next_probe(self) -> Probe | None:
        """What to measure next; None once finished."""
        if self.is_finished:
            return None
        if self.current is None:
            self.current = self._next_load()
            if self.current is None:
                return None
        return Probe(self.current, self._num_tries(self.current))

    def record(self, probe: Probe, sample: Sample) -> None:
        """Take one measurement of `probe`; move the bracket once its load is decided."""
        self.num_probes += 1
        if not sample.is_valid:  # no evidence either way: measured again, up to max_repeats
            self.invalid.setdefault(probe.load, []).append(sample)
            if len(self.invalid[probe.load]) >= self.s.max_repeats:
                # This load cannot be measured here (e.g. the client cannot drive it): an upper
                # bound for what can be shown; the search goes on below, the answer undecided.
                self.hi, self.current = probe.load, None
                self.unmeasurable[probe.load] = (
                    f"{self.fmt_load(probe.load)} could not be measured: "
                    f"{sample.reason or 'not valid evidence'} ({len(self.invalid[probe.load])} times)")
            return
        samples = self.samples.setdefault(probe.load, [])
        samples.append(sample)
        att = pooled_attainment(samples, self.z)
        if sample.saturated:
            self.hi, self.current = probe.load, None
            self.saturated[probe.load] = (f"the queue kept growing at {self.fmt_load(probe.load)} "
                                          f"(saturated; attainment {att.mean:.1%} does not count)")
        elif att.lo >= self.s.target:
            self.lo, self.current = probe.load, None
        elif att.hi < self.s.target:
            self.hi, self.current = probe.load, None
        elif (spent := self._num_tries(probe.load) >= self.s.max_repeats) or self._is_futile(samples, att):
            # The evidence rule (docs/metrics.md): the pooled share decides, as it does for one
            # repetition and for a grid, so more evidence never makes a load look worse; the
            # interval only says the verdict is within noise.
            if att.mean >= self.s.target:
                self.lo, self.current = probe.load, None
            else:
                self.hi, self.current = probe.load, None
            verdict = "met" if att.mean >= self.s.target else "missed"
            runs = f"{len(samples)} repetition{'s' if len(samples) != 1 else ''}"
            if not spent:
                runs += f" ({self.s.max_repeats} would likely neither decide nor reverse it)"
            self.noisy[probe.load] = (f"attainment at {self.fmt_load(probe.load)} is {att.mean:.1%} "
                                      f"[{att.lo:.1%}, {att.hi:.1%}] after {runs}: {verdict}, "
                                      f"within noise of the {self.s.target:.0%} target")

    def _is_futile(self, samples: list[Sample], att: Attainment) -> bool:
        """Whether the repetitions left (each worth the mean so far) would likely neither decide
        this load nor reverse its verdict (evidence.is_futile)."""
        valid = [s for s in samples if s.is_valid]
        if not self.s.skip_futile_repeats or not valid:
            return False
        done = sum(s.weight for s in valid)
        left = done / len(valid) * (self.s.max_repeats - len(valid))
        return is_futile(att.mean, done, left, self.s.target, self.z)

    def _num_tries(self, load: float) -> int:
        """Measurements of `load` so far, valid or not: the next one's repetition index."""
        return len(self.samples.get(load, [])) + len(self.invalid.get(load, []))

    def stop(self, reason: str) -> None:
        """End the search early (budget spent): the answer so far, undecided."""
        if not self.is_finished:
            upper = "?" if self.hi is None else self.fmt_load(self.hi)
            self._finish(UNDECIDED, f"{reason}; so far between {self.fmt_load(self.lo or 0.0)} and {upper}")

    def prune(self, reason: str) -> None:
        """End the search: another config is shown to carry more than this one can."""
        if not self.is_finished:
            self._finish(PRUNED, reason)

    def result(self) -> Capacity:
        """The answer so far."""
        atts = {load: pooled_attainment(s, self.z) for load, s in sorted(self.samples.items())}
        return Capacity(self.lo or 0.0, self.hi, self.status or UNDECIDED, self.reason,
                        self.num_probes, atts)

    def _next_load(self) -> float | None:
        lo, hi = self.lo, self.hi
        if lo is None and hi is None:
            return self._round(self.s.start_load)
        if lo is None:
            return self._below(hi)
        if hi is None:
            return self._above(lo)
        mid = self._round((lo + hi) / 2)
        if self._is_resolved(lo, hi) or mid in (lo, hi):
            self._finish_at(hi, f"capacity between {self.fmt_load(lo)} and {self.fmt_load(hi)}")
            return None
        return mid

    def _below(self, hi: float) -> float | None:
        load = self._round(hi / self.s.growth)
        if load < self.s.min_load or load >= hi:
            self._finish_at(hi, f"even {self.fmt_load(hi)} misses the target")
            return None
        return load

    def _above(self, lo: float) -> float | None:
        # Rounded as the loads are: 1024 req/s is measured as 1020, which must count as the top.
        if lo >= self._round(self.s.max_load):
            self._finish(AT_LIMIT, f"meets the target at the largest load tried "
                         f"({self.fmt_load(lo)}); capacity is at least that")
            return None
        return min(self._round(lo * self.s.growth), self._round(self.s.max_load))

    def _is_resolved(self, lo: float, hi: float) -> bool:
        if self.s.is_integer:
            return hi - lo <= 1
        return hi - lo <= self.s.rel_tol * hi

    def _round(self, load: float) -> float:
        if self.s.is_integer:
            return float(max(1, math.floor(load)))
        return float(f"{load:.3g}")  # readable rates; equal floats across a resume

    def fmt_load(self, load: float) -> str:
        """`4 users` or `2.5 req/s`."""
        return fmt_amount(load, self.s.unit or ("users" if self.s.is_integer else "req/s"))

    def _finish_at(self, hi: float, reason: str) -> None:
        """Done: decided, unless the upper bound is a load the interval never decided (within
        noise) or one that could not be measured (invalid: undecided, capacity a lower bound)."""
        if hi in self.unmeasurable:
            self._finish(INVALID, f"{reason}; {self.unmeasurable[hi]}")
        elif hi in self.noisy or self.lo in self.noisy:
            noisy = self.noisy.get(hi) or self.noisy[self.lo]
            self._finish(WITHIN_NOISE, f"{reason}; {noisy}")
        elif hi in self.saturated:
            self._finish(DECIDED, f"{reason}; {self.saturated[hi]}")
        else:
            self._finish(DECIDED, reason)

    def _finish(self, status: str, reason: str) -> None:
        self.status, self.reason, self.current = status, reason, None


Measure = Callable[[Hashable, Probe], "Sample | None"]
After = Callable[[Hashable, Probe], None]
# A search run as a generator: it yields what to measure next and is sent the answer back.
Steps = Generator[tuple[Hashable, Probe], "Sample | None", dict[Hashable, Capacity]]


def search_all(searches: Mapping[Hashable, CapacitySearch], measure: Measure,
               can_continue: Callable[[], bool] = lambda: True,
               interleave: bool = True, after: After | None = None) -> dict[Hashable, Capacity]:
    """Run every search to its end, one probe at a time (`search_steps`, each probe measured by
    `measure`)."""
    return drive(search_steps(searches, can_continue, interleave, after), lambda step: measure(*step))


def search_steps(searches: Mapping[Hashable, CapacitySearch],
                 can_continue: Callable[[], bool] = lambda: True,
                 interleave: bool = True, after: After | None = None) -> Steps:
    """Every search to its end, one probe at a time: yields (key, probe) and takes the Sample
    measured for it (None: not measured, that search stops). With `interleave`: every config's
    first probe in order, then always the config that could still carry the most (the highest
    failed load, unbounded first; the fewest probes among equals), so the budget goes to the
    race's leaders and a leader shown to carry more than another missed ends that other's search
    (through `after`); else one config after another (one server start per config). Stops the
    rest, undecided, once `can_continue()` says no. `after` is called once each measurement is
    recorded (it may prune other searches, or reorder and replace those not started: the order
    is read anew each step). Returns every search's result."""
    while True:
        active = [k for k in list(searches) if not searches[k].is_finished]
        if not active:
            break
        if not can_continue():
            _stop_all(searches, "stopped (time budget spent, or cancelled)")
            break
        key = _leader(searches, active) if interleave else active[0]
        probe = searches[key].next_probe()
        if probe is None:
            continue
        sample = yield key, probe  # None: not measured (the measure says why, via stop)
        if sample is None:
            searches[key].stop("search stopped before its answer (budget spent, cancelled, "
                               "or still running)")
        else:
            searches[key].record(probe, sample)
            if after is not None:
                after(key, probe)
    return {k: s.result() for k, s in searches.items()}


def drive(steps: Generator[Step, Answer, Result], answer: Callable[[Step], Answer]) -> Result:
    """Run a generator of steps to its end, sending each step's `answer` back; its result."""
    try:
        step = next(steps)
    except StopIteration as done:
        return done.value
    while True:
        reply = answer(step)
        try:
            step = steps.send(reply)
        except StopIteration as done:
            return done.value


def _leader(searches: Mapping[Hashable, CapacitySearch], active: list[Hashable]) -> Hashable:
    """The next config to probe: one not probed yet, in order, else the highest potential."""
    fresh = [k for k in active if searches[k].num_probes == 0]
    if fresh:
        return fresh[0]

    def potential(key: Hashable) -> tuple[float, int]:
        hi = searches[key].hi
        return (math.inf if hi is None else hi, -searches[key].num_probes)

    return max(active, key=potential)


def _stop_all(searches: Mapping[Hashable, CapacitySearch], reason: str) -> None:
    for search in searches.values():
        search.stop(reason)
