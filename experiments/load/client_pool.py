"""Client worker processes: each owns an event loop and runs its share of a load run.

The parent sends each worker a Job, waits until every worker's measured requests have ended (or
the deadline, or a stop request), tells them all to stop, and collects their raw timelines.
Workers ignore SIGINT (Ctrl-C reaches the whole process group; the parent decides), exit when
the parent says so, when their pipe to it closes, or when it dies (PR_SET_PDEATHSIG on Linux):
no orphans, whatever way the parent ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path

from experiments.load.http_client import ClientSpec, Job, Raw, WorkerClient

START_TIMEOUT_S = 60.0
RESULT_TIMEOUT_S = 120.0
EXIT_GRACE_S = 5.0
POLL_S = 0.25  # how often a waiting run asks `should_stop` (it may query the db)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_main(conn: Connection, spec: ClientSpec, use_uvloop: bool) -> None:
    """A worker process: serve jobs from `conn` until told to exit or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if use_uvloop:
        import uvloop

        uvloop.install()
    with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError):  # the parent is gone
        asyncio.run(_serve(conn, spec))


async def _serve(conn: Connection, spec: ClientSpec) -> None:
    loop = asyncio.get_running_loop()
    client, inbox = WorkerClient(spec), asyncio.Queue()
    # A blocking reader thread, not loop.add_reader: that makes the socket non-blocking, and a
    # large result then fails to send (EAGAIN). The thread wakes only when the parent writes.
    threading.Thread(target=_read_inbox, args=(conn, loop, inbox), daemon=True).start()
    conn.send(("ready", os.getpid()))
    try:
        while True:
            kind, payload = await inbox.get()
            if kind in ("exit", "eof"):
                return
            if kind == "job":
                await _run_job(client, payload, inbox, conn)
    finally:
        await client.close()


def _read_inbox(conn: Connection, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            message = ("eof", None)
        loop.call_soon_threadsafe(inbox.put_nowait, message)
        if message[0] in ("exit", "eof"):
            return


async def _run_job(client: WorkerClient, job: Job, inbox: asyncio.Queue, conn: Connection) -> None:
    # Two phases: armed (the job is unpacked), then go with the start time every worker shares.
    conn.send(("armed", None))
    kind, start_s = await inbox.get()
    if kind != "go":
        conn.send(("result", ([], {})))
        if kind in ("exit", "eof"):
            raise EOFError
        return
    cpu0, wall0 = time.process_time(), time.monotonic()
    job = dataclasses.replace(job, start_s=start_s)
    run = asyncio.ensure_future(client.run(job, lambda: conn.send(("measured", None))))
    getter = asyncio.ensure_future(inbox.get())
    await asyncio.wait([run, getter], return_when=asyncio.FIRST_COMPLETED)
    if not getter.done():  # every request ended by itself (an open loop's last arrival)
        getter.cancel()
        kind = "stop"
    else:
        kind = getter.result()[0]
    client.stop()
    raws, lags = await run
    stats = {"cpu_s": time.process_time() - cpu0, "wall_s": time.monotonic() - wall0,
             "loop_lag_s": lags, "pid": os.getpid()}
    conn.send(("result", (raws, stats)))
    if kind in ("exit", "eof"):
        raise EOFError


class ClientPool:
    """Client processes, started when a run first needs them and reused by later runs."""

    def __init__(self, spec: ClientSpec, use_uvloop: bool) -> None:
        self.spec, self.use_uvloop = spec, use_uvloop
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []

    def grow(self, num_workers: int) -> None:
        """Have at least `num_workers` running (started in parallel, then awaited)."""
        # Plain child interpreters (`python -m experiments.load.client_pool`), not multiprocessing's
        # spawn: that re-runs the caller's __main__, which breaks scripts without a main guard.
        root = str(Path(__file__).resolve().parents[2])  # the checkout, above experiments/
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        new = []
        try:
            for _ in range(num_workers - len(self.procs)):
                ours, theirs = socket.socketpair()
                with ours, theirs:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "experiments.load.client_pool", str(theirs.fileno())],
                        pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
                    self.procs.append(proc)
                    self.conns.append(Connection(os.dup(ours.fileno())))
                new.append(self.conns[-1])
                new[-1].send((self.spec, self.use_uvloop))
            for conn in new:
                if not conn.poll(START_TIMEOUT_S):
                    raise RuntimeError(f"a client worker did not start in {START_TIMEOUT_S:g} s")
                self._recv(conn)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def run(self, jobs: list[Job], start_margin_s: float, max_duration_s: float | None,
            should_stop: Callable[[], bool] | None) -> tuple[float, list[tuple[list[Raw], dict]], str]:
        """One job per worker: (start_s, raws and stats per worker, outcome)."""
        self.grow(len(jobs))
        conns = self.conns[: len(jobs)]
        for conn, job in zip(conns, jobs, strict=True):
            conn.send(("job", job))
        for conn in conns:
            self._expect(conn, "armed")
        start_s = time.monotonic() + start_margin_s
        for conn in conns:
            conn.send(("go", start_s))
        deadline_s = None if max_duration_s is None else start_s + max_duration_s
        try:
            outcome = self._wait_measured(conns, deadline_s, should_stop)
        finally:  # also on Ctrl-C: the workers cancel what is in flight
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.send(("stop", None))
        return start_s, [self._expect(conn, "result") for conn in conns], outcome

    def _wait_measured(self, conns: list[Connection], deadline_s: float | None,
                       should_stop: Callable[[], bool] | None) -> str:
        waiting = set(conns)
        while waiting:
            left_s = POLL_S if deadline_s is None else min(POLL_S, deadline_s - time.monotonic())
            for conn in wait(list(waiting), max(0.0, left_s)):
                kind, _ = self._recv(conn)
                if kind == "measured":
                    waiting.discard(conn)
            if deadline_s is not None and time.monotonic() >= deadline_s and waiting:
                return "cut"
            if should_stop is not None and waiting and should_stop():
                return "stopped"
        return "done"

    def _expect(self, conn: Connection, kind: str) -> object:
        """The next message of `kind` from `conn` (others, e.g. a late "measured", skipped)."""
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        while conn.poll(max(0.0, deadline - time.monotonic())):
            got, payload = self._recv(conn)
            if got == kind:
                return payload
        raise RuntimeError(f"a client worker sent no {kind!r} in {RESULT_TIMEOUT_S:g} s")

    def _recv(self, conn: Connection) -> tuple[str, object]:
        try:
            return conn.recv()
        except EOFError:
            raise RuntimeError("a client worker died mid-run") from None

    def close(self) -> None:
        """Ask every worker to exit; terminate, then kill, what does not."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("exit", None))
        deadline = time.monotonic() + EXIT_GRACE_S
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(1.0)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []


def _main(argv: list[str]) -> None:
    conn = Connection(int(argv[1]))
    spec, use_uvloop = conn.recv()
    worker_main(conn, spec, use_uvloop)


if __name__ == "__main__":
    _main(sys.argv)
