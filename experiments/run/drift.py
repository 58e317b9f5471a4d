"""Drift control: is the machine as fast now as when the sweep's SLOs were resolved?

A sweep resolves its relative SLOs once, from an unloaded baseline measured at its start, and
compares configs measured minutes apart. Both assume the machine's speed stays put; on a shared
machine it does not (another job starts, a core gets busy, clocks throttle). So the runner
re-measures a quick speed check (a few requests at batch 1, outputs cut short: the median
time to first token and between tokens, pooled over every token) at the start of every target,
then every CHECK_EVERY_S of trials and at the target's end; the reference is the mean of two
checks at the sweep's start, after one unmeasured check that warms the server. When a check
differs from the reference beyond DRIFT_TOLERANCE, every trial since the last clean check is
flagged `details.drift`: it is no evidence (capacity.sample_of, pareto's fold), so a search
measures that load again and a grid re-runs the trial as a new repetition once a check is clean
again (docs/metrics.md, "Drift control"). `DriftWatch` is the pure bookkeeping; the runner
measures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from common.details import Drift, Rerun, SpeedCheck, TrialDetails

if TYPE_CHECKING:
    from experiments.targets.protocol import Target

# The check: this many requests one at a time, outputs cut to CHECK_TOKENS (~0.2 s on
# builtin:tiny, ~0.6 s on a server at 40 ms TTFT and 10 ms per token), medians of TTFT and of
# every ITL. A search checks after every trial, so the check must stay a few % of a trial.
CHECK_REQUESTS, CHECK_TOKENS = 6, 8
CHECK_EVERY_S = 30.0
# Back-to-back checks on this 2-core machine, other work running, spread by -8..+44% (ITL)
# and -5..+37% (TTFT) around their median (docs/benchmarks.md, "Drift control"): single slow
# checks are bursts, so a drifted check is confirmed by a second one at once, and beyond 35% in
# both is a machine that changed (a job started, a core got busy, clocks throttled). Smaller
# drifts go unseen; the evidence rule's repetitions and intervals carry them.
DRIFT_TOLERANCE = 0.35
CHECKED = ("ttft_ms", "itl_ms")
WARM_UP_SALT = -1  # the unmeasured check before the reference: tokens no measured check sends


def drift_between(reference: dict[str, float], now: dict[str, float],
                  tolerance: float | None = None) -> str | None:
    """Why `now` is not the machine `reference` was (e.g. `median ITL 2.84 -> 3.61 ms (+27%)`),
    or None when every checked median is within `tolerance` (DRIFT_TOLERANCE) of it."""
    tolerance = DRIFT_TOLERANCE if tolerance is None else tolerance
    moved = []
    for metric in CHECKED:
        ref, cur = reference.get(metric), now.get(metric)
        if not ref or cur is None:
            continue
        change = cur / ref - 1
        if abs(change) > tolerance:
            name = metric.removesuffix("_ms").upper()
            moved.append(f"median {name} {ref:.3g} -> {cur:.3g} ms ({change:+.0%})")
    return "; ".join(moved) or None


@dataclass
class DriftWatch:
    """Which trials ran since the last clean check, and which of them the next check flags."""

    every_s: float = CHECK_EVERY_S
    reference: dict[str, float] | None = None
    last_check_s: float | None = None
    since_check: list[int] = field(default_factory=list)  # trial ids since the last check
    checks: list[dict] = field(default_factory=list)  # every check: {at_s, p50s, drift}

    def is_due(self, now_s: float) -> bool:
        """Whether to check before the next trial (or at a target's end, with trials pending)."""
        return self.reference is None or (
            self.last_check_s is not None and now_s - self.last_check_s >= self.every_s)

    def ran(self, trial_id: int) -> None:
        """A trial was stored since the last check."""
        self.since_check.append(trial_id)

    def reference_from(self, checks: list[dict[str, float]]) -> None:
        """The reference: the mean of checks measured back to back at the sweep's start."""
        self.reference = {m: sum(c[m] for c in checks) / len(checks)
                          for m in CHECKED if all(m in c for c in checks)}

    def checked(self, now_s: float, p50s: dict[str, float]) -> tuple[list[int], str | None]:
        """Record a check; return the trials it flags (all since the last check when the
        machine drifted, else none) and why."""
        if self.reference is None:
            self.reference_from([p50s])
        why = drift_between(self.reference, p50s)
        flagged = list(self.since_check) if why else []
        self.since_check.clear()
        self.last_check_s = now_s
        self.checks.append({"at_s": round(now_s, 3), "p50_ms": {k: round(v, 4) for k, v in p50s.items()},
                            "drift": why})
        return flagged, why

    def flag(self, why: str) -> Drift:
        """The `details.drift` a flagged trial carries."""
        return Drift(reason=f"the machine's speed drifted during this trial: {why} against the "
                            f"sweep's reference check", reference_p50_ms=self.reference)


def checks_enabled() -> bool:
    """Whether sweeps check the machine's speed ($TRADEOFF_DRIFT_CHECK is not `off`)."""
    return os.environ.get("TRADEOFF_DRIFT_CHECK", "on").lower() not in ("off", "0", "no", "false")


def drift_reason(details: TrialDetails | None) -> str | None:
    """Why a stored trial is no evidence because the machine drifted, or None."""
    return details.drift_reason if details is not None else None


class SpeedChecks:
    """The runner's side: measures checks on a target and flags stored trials."""

    @classmethod
    def for_sweep(cls, store, sweep_id: int, profile, seed: int, is_search: bool,
                  clock) -> SpeedChecks | None:
        """A sweep's checks, or None when $TRADEOFF_DRIFT_CHECK is `off`. A search checks after
        every trial: it decides from each trial as it lands, so a flag must come before that."""
        if not checks_enabled():
            return None
        checks = cls(store, sweep_id, profile, seed, clock)
        checks.watch.every_s = 0.0 if is_search else CHECK_EVERY_S
        return checks

    def __init__(self, store, sweep_id: int, profile, seed: int, clock) -> None:
        self.store, self.sweep_id, self.profile, self.seed, self.clock = (
            store, sweep_id, profile, seed, clock)
        self.watch = DriftWatch()
        self.flagged: list[int] = []  # every trial flagged so far
        self.replaced: dict = {}  # config -> why its first run was deleted to run again

    def measure(self, target: Target) -> str | None:
        """Check the machine on `target` now (twice, for the reference, at the sweep's first);
        flag the trials since the last check if it drifted; return why it drifted, or None."""
        if self.watch.reference is None:
            # A cold server's first requests pay one-time costs (kernels built for new shapes,
            # caches filled): a reference taken cold made every later, warm check look like
            # drift (vLLM's CPU build: 47 ms median TTFT cold, 26-40 ms in every check after,
            # 7 of 16 search trials flagged "faster" and measured again). One check, unmeasured,
            # warms exactly the shapes the checks send.
            check_records(target, self.profile, self.seed, WARM_UP_SALT)
            self.watch.reference_from([speed_check(target, self.profile, self.seed, k)
                                       for k in (0, 1)])
        salt = 2 + 2 * len(self.watch.checks)
        last = self.watch.since_check[-1] if self.watch.since_check else None
        reading = speed_check(target, self.profile, self.seed, salt)
        if drift_between(self.watch.reference, reading):
            # One slow check may be a burst of a second (a neighbour's), not the machine the
            # trials ran on: the drift must show again in a second check to count.
            reading = speed_check(target, self.profile, self.seed, salt + 1)
        flagged, why = self.watch.checked(self.clock(), reading)
        check = SpeedCheck.from_dict({**self.watch.checks[-1],
                                      "reference_p50_ms": self.watch.reference})
        for trial in self.store.list_trials(self.sweep_id):
            # The check after a trial is stored with it (Explore shows it); flagged ones say why.
            noted = {**({"speed_check": check} if trial.trial_id == last else {}),
                     **({"drift": self.watch.flag(why)} if trial.trial_id in flagged else {})}
            if noted:
                self.store.set_trial_details(trial.trial_id, replace(trial.details, **noted))
        self.flagged.extend(flagged)
        return why

    def after_trial(self, target: Target, trial_id: int | None, config=None) -> None:
        """A trial was stored (None: it failed); check when one is due."""
        if trial_id is not None:
            self.note_rerun(trial_id, config)
            self.watch.ran(trial_id)
        if self.watch.is_due(self.clock()):
            self.measure(target)

    def at_end(self, target: Target) -> None:
        """A target closes: check the trials it ran since the last check."""
        if self.watch.since_check:
            self.measure(target)

    def reruns(self) -> list:
        """Configs to measure again, once, after a grid's pass: every flagged trial whose point
        (knobs x load) has no clean repetition is deleted and run again as the same repetition,
        so the grid keeps one trial per config; the new trial says what it replaced."""
        point = lambda config: replace(config, repetition=0)  # noqa: E731 - one-line key
        trials = [t for t in self.store.list_trials(self.sweep_id) if t.status == "done"]
        clean = {point(t.config) for t in trials if not t.details.drift_reason}
        todo = [t for t in trials if t.trial_id in self.flagged and point(t.config) not in clean]
        self.flagged = []
        for t in todo:
            self.replaced[t.config] = t.details.drift_reason
            self.store.delete_trial(t.trial_id)
        return [t.config for t in todo]

    def note_rerun(self, trial_id: int, config) -> None:
        """Say in a re-run trial's details what its first run was flagged for."""
        why = self.replaced.pop(config, None)
        if why is None:
            return
        for trial in self.store.list_trials(self.sweep_id):
            if trial.trial_id == trial_id:
                self.store.set_trial_details(trial_id, replace(trial.details, rerun=Rerun(
                    first_run=f"measured again: its first run was no evidence ({why})")))

def speed_check(target: Target, profile, seed: int, salt: int = 0) -> dict[str, float]:
    """Median TTFT and ITL (ms) of CHECK_REQUESTS requests sent one at a time at static batch 1
    (after one unmeasured), outputs cut to CHECK_TOKENS; an external server's own batching is
    what it is, and one request at a time leaves it nothing to batch. Every check sends prompts
    of the same lengths; `salt` changes their tokens, so a server's prefix cache cannot make a
    later check look faster."""
    import numpy as np

    from experiments.analysis.metrics import itl_ms, ttft_ms

    records = check_records(target, profile, seed, salt)
    itls = [x for r in records for x in itl_ms(r)]
    ttfts = [t for r in records if (t := ttft_ms(r)) is not None]
    return {**({"ttft_ms": float(np.median(ttfts))} if ttfts else {}),
            **({"itl_ms": float(np.median(itls))} if itls else {})}


def check_records(target: Target, profile, seed: int, salt: int) -> list:
    """The requests of one check, sent as `speed_check` says; their records."""
    from experiments.load.loadgen import run_closed_loop
    from experiments.load.workload import make_requests
    from experiments.run.trial import BASELINE_SCHED

    engine, kw = target.engine, target.request_kwargs()
    previous = getattr(engine, "sched_config", None)
    engine.reconfigure(BASELINE_SCHED)
    try:
        specs = make_requests(profile, 1 + CHECK_REQUESTS, seed, kw["vocab_size"],
                              kw["max_context_tokens"], kw["avoid_ids"])
        tokens = make_requests(profile, 1 + CHECK_REQUESTS, seed + 7919 * (salt + 1),
                               kw["vocab_size"], kw["max_context_tokens"], kw["avoid_ids"])
        specs = [replace(s, max_new_tokens=min(s.max_new_tokens, CHECK_TOKENS),
                         prompt_ids=[t.prompt_ids[i % len(t.prompt_ids)]
                                     for i in range(len(s.prompt_ids))])
                 for s, t in zip(specs, tokens, strict=True)]
        records = run_closed_loop(engine, specs, concurrency=1, num_warmup=1).records
    finally:
        if previous is not None:
            engine.reconfigure(previous)
    engine.take_steps()  # a check's steps belong to no trial
    return records
