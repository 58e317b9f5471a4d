"""One engine replica in its own process: `python -m engine.replica_worker FD CPUS`.

The parent (engine/replicas.py) sets CUDA_VISIBLE_DEVICES (one GPU per replica) or passes the
CPU cores this replica may use; this process pins itself before torch loads, builds the engine
and serves it over a socket. Every timestamp is taken here, in the engine thread, on the
machine-wide monotonic clock (`time.perf_counter` is CLOCK_MONOTONIC on Linux), so the parent
reads them on its own clock without conversion; it checks that at start-up.
The process dies with its parent (PR_SET_PDEATHSIG) and when the socket closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux only; elsewhere the closed socket (EOF) still ends the process.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _pin(cpus: list[int]) -> None:
    os.sched_setaffinity(0, cpus)
    os.environ["OMP_NUM_THREADS"] = str(len(cpus))


class _Serve:
    """The request loop: submit/cancel/call messages in, batched token and finish events out."""

    def __init__(self, conn: Connection, engine: Any, loaded: Any) -> None:
        self.conn, self.engine, self.loaded = conn, engine, loaded
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.seqs: dict[int, Any] = {}

    def run(self) -> None:
        sender = threading.Thread(target=self._send_loop, name="replica-sender", daemon=True)
        sender.start()
        try:
            while True:
                msg = self.conn.recv()
                if msg[0] == "stop":
                    break
                self._handle(msg)
        except (EOFError, OSError):  # the parent is gone
            pass
        finally:
            self.engine.close()
            self.outbox.put(None)
            sender.join(timeout=5)

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "submit":
            _, rid, prompt_ids, params = msg
            self.seqs[rid] = self.engine.submit(
                prompt_ids, params, on_token=lambda s, r=rid: self._token(r, s),
                on_finish=lambda s, r=rid: self._finish(r, s))
        elif kind == "cancel":
            seq = self.seqs.get(msg[1])
            if seq is not None:
                self.engine.cancel(seq)
        elif kind == "call":
            self.outbox.put(("reply", *self._call(msg[1], msg[2:])))

    def _call(self, name: str, args: tuple) -> tuple[bool, Any]:
        import time

        from engine.models import peak_memory_mb, reset_peak_memory

        try:
            if name == "now":
                return True, time.perf_counter()
            if name == "reconfigure":
                return True, self.engine.reconfigure(*args)
            if name == "take_steps":
                return True, self.engine.take_steps()
            if name == "memory":
                return True, peak_memory_mb(self.loaded.device)
            if name == "reset_memory":
                return True, reset_peak_memory(self.loaded.device)
            return False, f"unknown call {name!r}"
        except Exception as exc:  # the parent raises it on its side
            return False, f"{type(exc).__name__}: {exc}"

    def _token(self, rid: int, seq: Any) -> None:
        # Runs in the engine thread: the engine stamped the time; one tuple, no I/O here.
        # A last token carries its finish state, as the core sets it before on_token.
        self.outbox.put(("token", rid, seq.output_ids[-1], seq.token_times_s[-1], seq.admitted_s,
                         seq.status.value, seq.finish_reason, seq.done_s, seq.num_cached_tokens))

    def _finish(self, rid: int, seq: Any) -> None:
        self.seqs.pop(rid, None)
        self.outbox.put(("finish", rid, seq.done_s, seq.status.value, seq.finish_reason, seq.error,
                         seq.admitted_s))

    def _send_loop(self) -> None:
        # One send per burst: a decode step of a batch of 16 is one message, not 16.
        while True:
            batch = [self.outbox.get()]
            while True:
                try:
                    batch.append(self.outbox.get_nowait())
                except queue.Empty:
                    break
            done = batch[-1] is None
            batch = [m for m in batch if m is not None]
            try:
                if batch:
                    self.conn.send(batch)
            except OSError:
                return
            if done:
                return


def _describe(engine: Any, loaded: Any) -> dict:
    special = {loaded.eos_token_id, loaded.pad_token_id} - {None}
    return {"vocab_size": int(loaded.model.config.vocab_size),
            "max_context_tokens": loaded.max_context_tokens, "avoid_ids": sorted(special),
            "device": str(loaded.device), "device_name": loaded.device_name,
            "dtype": str(loaded.dtype), "kv_budget_tokens": engine.kv_budget_tokens,
            "pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0)),
            "threads": torch_threads()}


def torch_threads() -> int:
    """The engine's intra-op threads (torch is loaded by then)."""
    import torch

    return torch.get_num_threads()


def main(argv: list[str]) -> int:
    """Pin, load, serve until told to stop or the parent goes away."""
    _die_with_parent()
    fd, cpus = int(argv[0]), [int(c) for c in argv[1].split(",") if c]
    if cpus:
        _pin(cpus)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see docs/architecture.md
    conn = Connection(fd)
    engine_config, sched_config = conn.recv()
    try:
        from engine.factory import start_engine
        from engine.threads import engine_num_threads

        # A process of its own, pinned: all its cores, but one when they are all the machine's
        # (the HTTP front end and the client run beside it: measured 2x slower decode at 16 users
        # with both cores, docs/benchmarks.md "tradeoff serve vs vLLM").
        host = int(os.environ.get("_TRADEOFF_HOST_CPUS", "0"))
        threads = engine_num_threads(len(cpus), is_sharing_cores=len(cpus) >= host) if cpus else None
        engine, loaded = start_engine(engine_config, sched_config, threads)
    except Exception as exc:  # a bad model or device: the parent reports it as a load error
        conn.send([("failed", type(exc).__name__, str(exc))])
        return 1
    conn.send([("ready", _describe(engine, loaded))])
    _Serve(conn, engine, loaded).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
