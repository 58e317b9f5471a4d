"""The session driver: multi-turn conversations against the in-process engine (or any target
with the engine interface); an HTTP target runs the same plan from its client workers.

Each turn's prompt is the conversation so far (every earlier prompt and the tokens the engine
really generated) plus the turn's message (experiments/load/sessions.py). A turn is scheduled at the
previous response's end plus the think time, and latency counts from then. A turn due at once
is sent from the engine thread's completion callback (as the plain closed loop does); a later
one from a timer thread, whose lateness the trial's client check judges.
"""

from __future__ import annotations

import heapq
import itertools
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol, runtime_checkable

from common.records import RequestRecord
from engine.sequence import SamplingParams, SeqStatus, Sequence
from experiments.analysis.metrics import depth_samples, is_saturated
from experiments.load.client_stats import ClientStats
from experiments.load.loadgen import (
    DRAIN_TIMEOUT_S,
    SENDER_SWITCH_INTERVAL_S,
    LoadResult,
    LoadTarget,
    StopCheck,
    achieved_rate,
    offered_rate,
    record_from_sequence,
    wait_measured,
)
from experiments.load.sessions import Conversation, SessionLoad, next_prompt, turn_index

IN_PROCESS_SESSIONS = {"process": "in-process sessions (engine-thread callbacks, timer thread)"}


@runtime_checkable
class DrivesSessions(Protocol):
    """A target that runs a whole session load itself (HttpTarget: from its client workers)."""

    def drive_sessions(self, load: SessionLoad, batch_size: int | None,
                       max_duration_s: float | None, should_stop: StopCheck | None) -> LoadResult: ...


def run_sessions(engine: LoadTarget, load: SessionLoad, batch_size: int | None = None,
                 max_duration_s: float | None = None,
                 should_stop: StopCheck | None = None) -> LoadResult:
    """Run `load` (closed: its users; open: its session arrivals) until every measured turn
    ended; `batch_size` (open loop) feeds the saturation rule."""
    if isinstance(engine, DrivesSessions):
        return engine.drive_sessions(load, batch_size, max_duration_s, should_stop)
    run = _SessionRun(engine, load)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(switch_interval, SENDER_SWITCH_INTERVAL_S))  # as the open loop
    try:
        start_s = engine.now()
        run.start(start_s)
        deadline_s = None if max_duration_s is None else start_s + max_duration_s
        outcome = wait_measured(run.measured_done, engine.now, deadline_s, should_stop)
        run.stop()
    finally:
        sys.setswitchinterval(switch_interval)
    records, background = run.records()
    saturated, depths = False, []
    if load.arrivals_s is not None:
        scheduled = sorted(r.scheduled_s for r in records)
        depths = depth_samples(scheduled, records + background, by_admission=True)
        saturated = is_saturated(depths, offered_rate(scheduled), achieved_rate(records),
                                 batch_size or 1)
    # Sends from the timer thread can lag; with no think time every send is an engine callback.
    judged = load.arrivals_s is not None or any(t.think_s > 0 for s in load.sessions for t in s.turns)
    return LoadResult(records, outcome == "cut", outcome == "stopped", saturated, depths,
                      background=background,
                      client=ClientStats(info=IN_PROCESS_SESSIONS, judge_send_lag=judged))


class _Timer:
    """Runs callbacks at engine-clock times from one thread; one due now runs in the caller."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now, self.cond = now, threading.Condition()
        self.heap: list[tuple[float, int, Callable[[float], None]]] = []
        self.order, self.is_stopped = itertools.count(), False
        self.thread = threading.Thread(target=self._loop, name="tradeoff-sessions", daemon=True)
        self.thread.start()

    def at(self, due_s: float, fn: Callable[[float], None]) -> None:
        if due_s <= self.now():
            fn(due_s)
            return
        with self.cond:
            heapq.heappush(self.heap, (due_s, next(self.order), fn))
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.is_stopped = True
            self.cond.notify()
        self.thread.join()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.is_stopped and (not self.heap or self.heap[0][0] > self.now()):
                    self.cond.wait(None if not self.heap else self.heap[0][0] - self.now())
                if self.is_stopped:
                    return
                due_s, _, fn = heapq.heappop(self.heap)
            fn(due_s)  # outside the lock: it calls into the engine


class _SessionRun:
    """Shared state of one session run. Lock order as loadgen's run: the engine calls
    `_finished` holding its own lock, so this lock is never held while calling the engine."""

    def __init__(self, engine: LoadTarget, load: SessionLoad) -> None:
        self.engine, self.load = engine, load
        self.lock = threading.Lock()
        self.sent: dict[int, tuple[Sequence, int, int]] = {}  # index -> (seq, session, turn)
        self.num_sent_by_user = [0] * (load.concurrency or 0)
        self.num_sessions_by_user = [0] * (load.concurrency or 0)
        self.num_issued = self.num_finished = self.num_measured_ended = 0
        self.stopping, self.measured_done, self.drained = (threading.Event() for _ in range(3))
        self.timer = _Timer(engine.now)
        if load.num_measured == 0:
            self.measured_done.set()

    def start(self, start_s: float) -> None:
        if self.load.concurrency is not None:
            for user in range(self.load.concurrency):
                self._next_session(user, start_s)
            return
        assert self.load.arrivals_s is not None
        offsets = self.load.offsets()
        for s, (offset_s, first) in enumerate(zip(self.load.arrivals_s, offsets, strict=True)):
            conv = Conversation(self.load.sessions[s], None, first)
            self.timer.at(start_s + offset_s, lambda at, c=conv: self._send(c, at))

    def _next_session(self, user: int, at_s: float) -> None:
        mine = self.load.user_sessions(user)
        with self.lock:
            k = self.num_sessions_by_user[user]
            self.num_sessions_by_user[user] = k + 1
        self._send(Conversation(mine[k % len(mine)], user, None), at_s)

    def _index(self, conv: Conversation) -> int | None:
        """The next request's index (sessions.py numbering); None once stopping."""
        with self.lock:
            if self.stopping.is_set():
                return None
            self.num_issued += 1
            return turn_index(conv, self.num_sent_by_user, self.load.concurrency or 1)

    def _send(self, conv: Conversation, scheduled_s: float) -> None:
        turn = conv.session.turns[conv.turn]
        prompt = next_prompt(conv.history, turn, self.load.max_context_tokens)
        if prompt is None:
            self._over(conv, scheduled_s, conv.turn)
            return
        index = self._index(conv)
        if index is None:
            return
        params = SamplingParams(max_new_tokens=turn.max_new_tokens, ignore_eos=True)
        seq = self.engine.submit(prompt, params, scheduled_s,
                                 on_finish=lambda s: self._finished(conv, index, s))
        with self.lock:
            self.sent[index] = (seq, conv.session.session_id, conv.turn + 1)
            is_late = self.stopping.is_set()
        if is_late:  # stop() ran between counting and registering: it missed this one
            self.engine.cancel(seq)

    def _finished(self, conv: Conversation, index: int, seq: Sequence) -> None:
        with self.lock:
            self.num_finished += 1
            self._count_ended(index)
            if self.stopping.is_set():
                if self.num_finished == self.num_issued:
                    self.drained.set()
                return
        if seq.status is SeqStatus.FAILED or seq.finish_reason == "cancelled":
            self._over(conv, seq.done_s or self.engine.now(), conv.turn + 1)  # the user gives up
            return
        conv.history = seq.prompt_ids + seq.output_ids
        conv.turn += 1
        if conv.turn == len(conv.session.turns):
            self._over(conv, seq.done_s, conv.turn)
            return
        think_s = conv.session.turns[conv.turn].think_s
        self.timer.at(seq.done_s + think_s, lambda at: self._send(conv, at))

    def _count_ended(self, index: int) -> None:
        # Called under the lock.
        if self.load.is_measured(index):
            self.num_measured_ended += 1
            if self.num_measured_ended >= self.load.num_measured:
                self.measured_done.set()

    def _over(self, conv: Conversation, at_s: float, num_done: int) -> None:
        """A conversation ended (all turns, out of context, or a failed turn): closed loop, its
        user starts the next one; open loop, its turns from `num_done` on count as ended."""
        if conv.user is not None:
            if not self.stopping.is_set():
                self._next_session(conv.user, at_s)
            return
        assert conv.first_index is not None
        with self.lock:
            for t in range(num_done, len(conv.session.turns)):
                self._count_ended(conv.first_index + t)

    def stop(self) -> None:
        """Stop sending, cancel what is in flight, wait until the engine let go of it."""
        with self.lock:
            self.stopping.set()
            in_flight = [seq for seq, _, _ in self.sent.values() if not seq.is_finished]
            if self.num_finished == self.num_issued:
                self.drained.set()
        self.timer.close()
        for seq in in_flight:
            self.engine.cancel(seq)
        if not self.drained.wait(DRAIN_TIMEOUT_S):
            raise RuntimeError(f"engine did not finish cancelled requests in {DRAIN_TIMEOUT_S:g} s")

    def records(self) -> tuple[list[RequestRecord], list[RequestRecord]]:
        """(measured requests that ended on their own, every other request sent)."""
        measured, background = [], []
        for index, (seq, session_id, turn) in sorted(self.sent.items()):
            record = replace(record_from_sequence(seq, index), session_id=session_id, turn=turn)
            if not self.load.is_measured(index):
                background.append(record)
            elif seq.finish_reason != "cancelled":
                measured.append(record)
        return measured, background
