"""N engine replicas in separate processes behind a router, driven as one engine-like target.

Each replica (engine/replica_worker.py) owns one GPU (CUDA_VISIBLE_DEVICES) or its share of
this process's CPU cores. The router (engine/routing.py) picks a replica per request from the
outstanding counts this process keeps, as a load balancer in front of replicas would. Request
timelines carry the replicas' engine-thread timestamps unchanged: they share this machine's
monotonic clock, which `start` checks. `sent_s` is when this process handed the request over.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from engine.config import ConfigError, EngineConfig, SchedulerConfig
from engine.core import StepRecord
from engine.replica_placement import child_config, placements
from engine.routing import check_replicas, make_router
from engine.sequence import SamplingParams, SeqStatus, Sequence

SeqCallback = Callable[[Sequence], None]
START_TIMEOUT_S = 300.0
CALL_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
CLOCK_SLACK_S = 1e-3  # a replica's clock reading must fall inside our send/receive window


class ReplicaError(RuntimeError):
    """A replica failed to start, died, or does not share this machine's clock."""


@dataclass
class _Pending:
    seq: Sequence
    replica: _Replica
    on_token: SeqCallback | None
    on_finish: SeqCallback | None


class _Replica:
    """One child process and its socket; `outstanding` is the router's view of its load."""

    def __init__(self, index: int, proc: subprocess.Popen, conn: Connection, placement: str) -> None:
        self.index, self.proc, self.conn, self.placement = index, proc, conn, placement
        self.send_lock = threading.Lock()
        self.replies: queue.SimpleQueue = queue.SimpleQueue()
        self.outstanding = 0
        self.is_alive = True
        self.exit_reason: str | None = None  # why it went, once it has
        self.info: dict[str, Any] = {}
        self.reader: threading.Thread | None = None

    def send(self, msg: tuple) -> None:
        with self.send_lock:
            self.conn.send(msg)


class ReplicaSet:
    """The Engine interface (submit, cancel, reconfigure, take_steps, now) over N replicas."""

    def __init__(self, replicas: list[_Replica], sched_config: SchedulerConfig, router: str | None,
                 seed: int = 0) -> None:
        self.replicas = replicas
        self.sched_config = sched_config
        self.router_name = router
        self.router = make_router(router, seed)
        self.seed = seed
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count()
        self._num_waiting = 0
        self._num_running = 0

    @classmethod
    def start(cls, config: EngineConfig, sched_config: SchedulerConfig, num_replicas: int,
              router: str | None, seed: int = 0, timeout_s: float = START_TIMEOUT_S) -> ReplicaSet:
        """Start `num_replicas` processes, load the model in each (in parallel), check clocks."""
        check_replicas(num_replicas, router)
        replicas = [_spawn(i, placement, env) for i, (placement, env)
                    in enumerate(placements(config, num_replicas))]
        self = cls(replicas, sched_config, router, seed)
        try:
            their_config = child_config(config)
            for r in replicas:
                r.send((their_config, sched_config))
            for r in replicas:
                r.info = _await_ready(r, timeout_s)
            for r in replicas:
                r.reader = threading.Thread(target=self._read, args=(r,), daemon=True,
                                            name=f"replica-{r.index}-reader")
                r.reader.start()
            self._check_clocks()
        except BaseException:
            self.close()
            raise
        return self

    # -- the Engine interface ------------------------------------------------------------------

    def now(self) -> float:
        return time.perf_counter()

    def submit(self, prompt_ids: list[int], params: SamplingParams, scheduled_s: float | None = None,
               on_token: SeqCallback | None = None, on_finish: SeqCallback | None = None) -> Sequence:
        """Route one request to a replica; its timeline fills in as the replica's events arrive."""
        sent_s = self.now()
        with self._lock:
            rid = next(self._ids)
            seq = Sequence(rid, list(prompt_ids), params,
                           sent_s if scheduled_s is None else scheduled_s, sent_s)
            loads = [r.outstanding if r.is_alive else 1 << 30 for r in self.replicas]
            replica = self.replicas[self.router.pick(loads, seq.prompt_ids)]  # prefix routers read it
            if replica.is_alive:
                replica.outstanding += 1
                self._num_waiting += 1
                self._pending[rid] = _Pending(seq, replica, on_token, on_finish)
                with contextlib.suppress(OSError):  # a dying replica: its reader fails the request
                    replica.send(("submit", rid, seq.prompt_ids, params))
                return seq
        self._fail(seq, f"replica {replica.index} is gone", on_finish)
        return seq

    def cancel(self, seq: Sequence) -> None:
        pending = self._pending.get(seq.seq_id)
        if pending is not None:
            with contextlib.suppress(OSError):
                pending.replica.send(("cancel", seq.seq_id))

    def reconfigure(self, sched_config: SchedulerConfig) -> None:
        """Switch every replica's batching knobs between trials (they must be idle)."""
        self._call_all("reconfigure", sched_config)
        self.sched_config = sched_config

    def set_router(self, router: str | None) -> None:
        """Switch the routing policy between trials (a fresh, seeded router)."""
        check_replicas(len(self.replicas), router)
        with self._lock:
            self.router_name, self.router = router, make_router(router, self.seed)

    def take_steps(self) -> list[StepRecord]:
        """Every replica's step log since the last call, by start time."""
        steps = [s for part in self._call_all("take_steps") for s in part]
        return sorted(steps, key=lambda s: s.start_s)

    def peak_memory_mb(self) -> float | None:
        """The largest replica's peak (per GPU, or per process RSS on CPU); None if any is unknown."""
        peaks = self._call_all("memory")
        return None if not peaks or None in peaks else max(peaks)

    def reset_peak_memory(self) -> None:
        self._call_all("reset_memory")

    @property
    def num_waiting(self) -> int:
        return self._num_waiting

    @property
    def num_running(self) -> int:
        return self._num_running

    @property
    def kv_budget_tokens(self) -> int:
        return min(r.info["kv_budget_tokens"] for r in self.replicas)

    @property
    def lost(self) -> list[str]:
        """Why each replica that has exited went; empty while every one runs."""
        return [r.exit_reason for r in self.replicas if r.exit_reason is not None]

    def placements(self) -> list[str]:
        """Where each replica runs, e.g. `cuda:0` or `cpu:0-1`."""
        return [r.placement for r in self.replicas]

    def close(self) -> None:
        """Stop every replica (ask, then kill its process group); outstanding requests fail."""
        for r in self.replicas:
            with contextlib.suppress(OSError):
                r.send(("stop",))
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for r in self.replicas:
            try:
                r.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.proc.pid, 9)
                r.proc.wait()
            r.conn.close()
        for r in self.replicas:
            if r.reader is not None and r.reader is not threading.current_thread():
                r.reader.join(timeout=5)

    def __enter__(self) -> ReplicaSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _call_all(self, name: str, *args: Any) -> list[Any]:
        for r in self.replicas:
            if not r.is_alive:
                raise ReplicaError(f"replica {r.index} ({r.placement}) is gone; restart the target")
            r.send(("call", name, *args))
        results = []
        for r in self.replicas:
            try:
                ok, value = r.replies.get(timeout=CALL_TIMEOUT_S)
            except queue.Empty:
                raise ReplicaError(f"replica {r.index} did not answer {name!r}") from None
            if not ok:
                raise (ConfigError if name == "reconfigure" else ReplicaError)(value)
            results.append(value)
        return results

    def _check_clocks(self) -> None:
        for r in self.replicas:
            before = self.now()
            r.send(("call", "now"))
            _, theirs = r.replies.get(timeout=CALL_TIMEOUT_S)
            after = self.now()
            if not before - CLOCK_SLACK_S <= theirs <= after + CLOCK_SLACK_S:
                raise ReplicaError(f"replica {r.index}'s monotonic clock reads {theirs:.6f}, outside "
                                   f"[{before:.6f}, {after:.6f}]: timestamps would not compare")

    def _read(self, r: _Replica) -> None:
        try:
            while True:
                for msg in r.conn.recv():
                    self._on_message(r, msg)
        except (EOFError, OSError):
            pass
        r.is_alive = False
        try:  # the socket closes a moment before the process can be reaped
            code: int | None = r.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            code = None
        r.exit_reason = (f"replica {r.index} ({r.placement}) exited"
                         + ("" if code is None else f" with code {code}"))
        self._fail_replica(r, r.exit_reason)

    def _on_message(self, r: _Replica, msg: tuple) -> None:
        kind = msg[0]
        if kind == "reply":
            r.replies.put(msg[1:])
        elif kind == "token":
            self._on_token(*msg[1:])
        elif kind == "finish":
            self._on_finish(*msg[1:])

    def _on_token(self, rid: int, token: int, at_s: float, admitted_s: float | None, status: str,
                  finish_reason: str | None, done_s: float | None, num_cached_tokens: int) -> None:
        pending = self._pending.get(rid)
        if pending is None:
            return
        seq = pending.seq
        if not seq.output_ids:
            with self._lock:
                self._num_waiting -= 1
                self._num_running += 1
        seq.admitted_s, seq.num_cached_tokens = admitted_s, num_cached_tokens
        seq.output_ids.append(token)
        seq.token_times_s.append(at_s)
        seq.status, seq.finish_reason, seq.done_s = SeqStatus(status), finish_reason, done_s
        if pending.on_token is not None:
            pending.on_token(seq)

    def _on_finish(self, rid: int, done_s: float | None, status: str, finish_reason: str | None,
                   error: str | None, admitted_s: float | None) -> None:
        with self._lock:
            pending = self._pending.pop(rid, None)
            if pending is None:
                return
            pending.replica.outstanding -= 1
            if pending.seq.output_ids:
                self._num_running -= 1
            else:
                self._num_waiting -= 1
        seq = pending.seq
        seq.done_s, seq.status, seq.finish_reason, seq.error = done_s, SeqStatus(status), finish_reason, error
        seq.admitted_s = admitted_s
        if pending.on_finish is not None:
            pending.on_finish(seq)

    def _fail_replica(self, r: _Replica, reason: str) -> None:
        with self._lock:
            lost = [p for p in self._pending.values() if p.replica is r]
            for p in lost:
                del self._pending[p.seq.seq_id]
                if p.seq.output_ids:
                    self._num_running -= 1
                else:
                    self._num_waiting -= 1
            r.outstanding = 0
        for p in lost:
            self._fail(p.seq, reason, p.on_finish)

    def _fail(self, seq: Sequence, reason: str, on_finish: SeqCallback | None) -> None:
        seq.status, seq.finish_reason, seq.error, seq.done_s = SeqStatus.FAILED, "error", reason, self.now()
        if on_finish is not None:
            on_finish(seq)


def _spawn(index: int, placement: str, env: dict[str, str]) -> _Replica:
    ours, theirs = socket.socketpair()
    cpus = env.pop("_TRADEOFF_CPUS", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.replica_worker", str(theirs.fileno()), cpus],
        pass_fds=(theirs.fileno(),), env=env, start_new_session=True)
    theirs.close()
    return _Replica(index, proc, Connection(ours.detach()), placement)


def _await_ready(r: _Replica, timeout_s: float) -> dict[str, Any]:
    if not r.conn.poll(timeout_s):
        raise ReplicaError(f"replica {r.index} ({r.placement}) did not load within {timeout_s:.0f} s")
    try:
        (msg,) = r.conn.recv()
    except EOFError:
        raise ReplicaError(f"replica {r.index} ({r.placement}) exited while loading "
                           f"(code {r.proc.wait()})") from None
    if msg[0] == "failed":
        _, kind, text = msg
        if kind == "ModelLoadError":
            from engine.models import ModelLoadError

            raise ModelLoadError(text)
        raise (ConfigError if kind == "ConfigError" else ReplicaError)(text)
    return msg[1]
