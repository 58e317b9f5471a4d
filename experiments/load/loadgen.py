"""Load generation: the closed/open-loop drivers (what they send comes from workload.py).

The drivers run against a started Engine (or an HTTP target) on its clock. Latency counts from
each request's *scheduled* time, so a sender that wakes late does not hide server delay (no
coordinated omission, as in wrk2). The first `num_warmup` requests are issued but not measured.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from common.records import RequestRecord
from engine.config import SchedulerConfig
from engine.core import StepRecord
from engine.sequence import SamplingParams, SeqStatus, Sequence
from experiments.analysis.metrics import is_saturated
from experiments.load.client_stats import ClientStats
from experiments.load.workload import RequestSpec

# How long to wait for cancelled requests to leave the engine before calling it stuck.
DRAIN_TIMEOUT_S = 120.0
# How often a running trial asks `should_stop` (it may query the db).
STOP_POLL_S = 0.25

StopCheck = Callable[[], bool]
# In-process load: every stamp is the engine thread's. A closed loop issues each next request
# from the engine thread's completion callback: there is no client to lag, and sent - scheduled
# is the engine's own bookkeeping after a step (e.g. releasing cache rows), which delays nothing
# (the scheduler runs after it). An open loop's sender thread can lag: that is judged.
IN_PROCESS_CLOSED = ClientStats(judge_send_lag=False,
                                info={"process": "in-process closed loop (engine-thread callbacks)"})
IN_PROCESS_OPEN = ClientStats(info={"process": "in-process open loop (sender thread)"})
# While an in-process open loop runs, a thread waiting for the GIL gets it after this long (the
# default 5 ms would make the sender up to 5 ms late whenever the engine thread holds it).
SENDER_SWITCH_INTERVAL_S = 0.0002
SeqCallback = Callable[[Sequence], None]


class LoadTarget(Protocol):
    """What the drivers and trials need: the local Engine, or an HTTP target with its interface."""

    def now(self) -> float: ...

    def submit(self, prompt_ids: list[int], params: SamplingParams,
               scheduled_s: float | None = None, on_token: SeqCallback | None = None,
               on_finish: SeqCallback | None = None) -> Sequence: ...

    def cancel(self, seq: Sequence) -> None: ...

    def reconfigure(self, sched_config: SchedulerConfig) -> None: ...

    def take_steps(self) -> list[StepRecord]: ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def num_running(self) -> int: ...


@runtime_checkable
class SelfDriving(Protocol):
    """A target that runs whole load runs itself (HttpTarget: from client worker processes)."""

    def drive_closed_loop(self, specs: list[RequestSpec], concurrency: int, num_warmup: int,
                          max_duration_s: float | None, should_stop: StopCheck | None) -> LoadResult: ...

    def drive_open_loop(self, specs: list[RequestSpec], arrivals: list[float], num_warmup: int,
                        batch_size: int, max_duration_s: float | None,
                        should_stop: StopCheck | None) -> LoadResult: ...


def record_from_sequence(seq: Sequence, request_id: int) -> RequestRecord:
    """The engine's timeline of `seq` as a plain record (times on the engine clock)."""
    return RequestRecord(
        request_id=request_id, scheduled_s=seq.scheduled_s, sent_s=seq.sent_s,
        admitted_s=seq.admitted_s, token_times_s=tuple(seq.token_times_s), done_s=seq.done_s,
        num_prompt_tokens=seq.num_prompt_tokens, num_output_tokens=seq.num_output_tokens,
        error=(seq.error or "failed") if seq.status is SeqStatus.FAILED else None,
        # An engine with prefix caching counts the prompt tokens it reused; None: it does not say.
        num_cached_tokens=getattr(seq, "num_cached_tokens", None),
    )


# -- drivers ------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What a driver measured: the measured requests that ended in time, and run-level flags."""

    records: list[RequestRecord]
    was_cut: bool  # the duration limit stopped the run before every measured request ended
    was_stopped: bool  # `should_stop` said so (a cancelled sweep): a partial run, not a result
    saturated: bool  # open loop only: the queue kept growing (see docs/metrics.md)
    depth_samples: list[tuple[float, int]] = field(default_factory=list)  # (engine s, waiting)
    # Warm-up and cooldown requests: not measured, but their tokens and completions inside the
    # measurement window count toward throughput (they hold batch slots there too).
    background: list[RequestRecord] = field(default_factory=list)
    client: ClientStats | None = None  # the load generator's own health (client_stats.py)


class _Run:
    """Shared state of one load run: issues requests, tracks them, stops and drains.

    Lock order: the engine calls `_finished` holding its own lock, so this object's lock is
    never held while calling into the engine.
    """

    def __init__(self, engine: LoadTarget, specs: list[RequestSpec], num_warmup: int,
                 num_measured: int) -> None:
        self.engine, self.specs = engine, specs
        self.num_warmup, self.num_measured = num_warmup, num_measured
        # Closed loop: called after each request ends, so its virtual user sends the next one.
        self.on_done: Callable[[Sequence], object] | None = None
        self.lock = threading.Lock()
        self.seqs: dict[int, Sequence] = {}
        self.num_issued = self.num_finished = self.num_measured_done = 0
        self.stopping = threading.Event()
        self.measured_done = threading.Event()
        self.drained = threading.Event()
        if num_measured == 0:
            self.measured_done.set()

    def is_measured(self, idx: int) -> bool:
        return self.num_warmup <= idx < self.num_warmup + self.num_measured

    def issue(self, scheduled_s: float) -> int | None:
        """Send the next request (spec cycled for cooldown ones); None once stopping."""
        with self.lock:
            if self.stopping.is_set():
                return None
            idx, self.num_issued = self.num_issued, self.num_issued + 1
        spec = self.specs[idx % len(self.specs)]
        params = SamplingParams(max_new_tokens=spec.max_new_tokens, ignore_eos=True)
        seq = self.engine.submit(spec.prompt_ids, params, scheduled_s,
                                 on_finish=lambda s: self._finished(idx, s))
        with self.lock:
            self.seqs[idx] = seq
            is_late = self.stopping.is_set()
        if is_late:  # stop() ran between counting and registering: it missed this one
            self.engine.cancel(seq)
        return idx

    def _finished(self, idx: int, seq: Sequence) -> None:
        with self.lock:
            self.num_finished += 1
            if self.is_measured(idx):
                self.num_measured_done += 1
                if self.num_measured_done == self.num_measured:
                    self.measured_done.set()
            self._check_drained()
        if self.on_done is not None:
            self.on_done(seq)

    def _check_drained(self) -> None:
        if self.stopping.is_set() and self.num_finished == self.num_issued:
            self.drained.set()

    def wait(self, deadline_s: float | None, should_stop: StopCheck | None) -> str:
        """Wait for every measured request to end: "done", or "cut" (deadline), or "stopped"."""
        return wait_measured(self.measured_done, self.engine.now, deadline_s, should_stop)

    def stop(self) -> None:
        """Stop issuing, cancel what is still in flight (warm-up, cooldown, cut), drain."""
        with self.lock:
            self.stopping.set()
            in_flight = [s for s in self.seqs.values() if not s.is_finished]
            self._check_drained()
        for seq in in_flight:
            self.engine.cancel(seq)
        if not self.drained.wait(DRAIN_TIMEOUT_S):
            raise RuntimeError(f"engine did not finish cancelled requests in {DRAIN_TIMEOUT_S:g} s")

    def background(self) -> list[RequestRecord]:
        """Unmeasured requests (warm-up, cooldown), cancelled ones included."""
        return [record_from_sequence(seq, idx) for idx, seq in sorted(self.seqs.items())
                if not self.is_measured(idx)]

    def records(self) -> list[RequestRecord]:
        """Measured requests that ended on their own (cancelled ones were cut, not measured)."""
        return [record_from_sequence(seq, idx) for idx, seq in sorted(self.seqs.items())
                if self.is_measured(idx) and seq.finish_reason != "cancelled"]


def wait_measured(measured_done: threading.Event, now: Callable[[], float],
                  deadline_s: float | None, should_stop: StopCheck | None) -> str:
    """Wait for `measured_done`: "done", or "cut" (the deadline passed), or "stopped"."""
    while True:
        left_s = None if deadline_s is None else max(0.0, deadline_s - now())
        if should_stop is not None:
            left_s = STOP_POLL_S if left_s is None else min(left_s, STOP_POLL_S)
        if measured_done.wait(left_s):
            return "done"
        if deadline_s is not None and now() >= deadline_s:
            return "cut"
        if should_stop is not None and should_stop():
            return "stopped"


def run_closed_loop(engine: LoadTarget, specs: list[RequestSpec], concurrency: int, num_warmup: int,
                    max_duration_s: float | None = None,
                    should_stop: StopCheck | None = None) -> LoadResult:
    """C virtual users, no think time; all stay busy until every measured request has ended."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if isinstance(engine, SelfDriving):
        return engine.drive_closed_loop(specs, concurrency, num_warmup, max_duration_s, should_stop)
    run = _Run(engine, specs, num_warmup, len(specs) - num_warmup)
    # Each completion immediately schedules that user's next request at its done time.
    run.on_done = lambda seq: run.issue(seq.done_s)
    start_s = engine.now()
    for _ in range(concurrency):
        run.issue(start_s)
    outcome = run.wait(_deadline(start_s, max_duration_s), should_stop)
    run.stop()
    return LoadResult(run.records(), outcome == "cut", outcome == "stopped", saturated=False,
                      background=run.background(), client=IN_PROCESS_CLOSED)


def run_open_loop(engine: LoadTarget, specs: list[RequestSpec], arrivals: list[float], num_warmup: int,
                  batch_size: int, max_duration_s: float | None = None,
                  should_stop: StopCheck | None = None) -> LoadResult:
    """Send request i at start + arrivals[i] from a sender thread; latency counts from then."""
    if isinstance(engine, SelfDriving):
        return engine.drive_open_loop(specs, arrivals, num_warmup, batch_size, max_duration_s,
                                      should_stop)
    run = _Run(engine, specs, num_warmup, len(specs) - num_warmup)
    start_s = engine.now()
    depths: list[tuple[float, int]] = []
    sender = threading.Thread(target=_send_arrivals, name="tradeoff-sender",
                              args=(run, [start_s + a for a in arrivals], depths), daemon=True)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(switch_interval, SENDER_SWITCH_INTERVAL_S))
    try:
        sender.start()
        outcome = run.wait(_deadline(start_s, max_duration_s), should_stop)
        cut_depth = (engine.now(), engine.num_waiting)  # before stop() cancels the queue away
        run.stop()
        sender.join()
    finally:
        sys.setswitchinterval(switch_interval)
    if run.num_issued < len(arrivals):  # cut mid-arrivals: the sender took no final sample
        depths.append(cut_depth)
    records = run.records()
    sent = [start_s + a for i, a in enumerate(arrivals[: run.num_issued]) if run.is_measured(i)]
    saturated = is_saturated(depths, offered_rate(sent), achieved_rate(records), batch_size)
    return LoadResult(records, outcome == "cut", outcome == "stopped", saturated, depths,
                      background=run.background(), client=IN_PROCESS_OPEN)


def _deadline(start_s: float, max_duration_s: float | None) -> float | None:
    return None if max_duration_s is None else start_s + max_duration_s


def _send_arrivals(run: _Run, scheduled: list[float], depths: list[tuple[float, int]]) -> None:
    # Sleeps until each scheduled time; a late wake-up still stamps the intended time.
    for i, at_s in enumerate(scheduled):
        if run.stopping.wait(max(0.0, at_s - run.engine.now())):
            return
        if run.is_measured(i):
            depths.append((run.engine.now(), run.engine.num_waiting))
        if run.issue(at_s) is None:
            return
    depths.append((run.engine.now(), run.engine.num_waiting))


def offered_rate(scheduled_s: list[float]) -> float:
    """Realised arrival rate: (n - 1) gaps over the span of the scheduled times; 0 if < 2."""
    span = max(scheduled_s, default=0.0) - min(scheduled_s, default=0.0)
    return (len(scheduled_s) - 1) / span if span > 0 else 0.0


def achieved_rate(records: list[RequestRecord]) -> float:
    """Requests that ended per second over [first scheduled, last done]; 0 if no span."""
    ended = [r for r in records if r.done_s is not None]
    if not ended:
        return 0.0
    span = max(r.done_s for r in ended) - min(r.scheduled_s for r in ended)
    return len(ended) / span if span > 0 else 0.0
