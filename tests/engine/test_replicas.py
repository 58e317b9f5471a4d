"""Real replica processes: routing, honest timelines, and clean-up on stop, crash and parent death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from engine.config import EngineConfig, SchedulerConfig
from engine.replica_placement import cpu_shares
from engine.replicas import ReplicaSet
from engine.sequence import SamplingParams, SeqStatus


def test_cpu_shares_split_cores_contiguously_and_reuse_them_when_short():
    assert cpu_shares([0, 1, 2, 3], 2) == [[0, 1], [2, 3]]
    assert cpu_shares([3, 1, 0, 2, 4], 2) == [[0, 1, 2], [3, 4]]
    assert cpu_shares([0, 1], 1) == [[0, 1]]
    assert cpu_shares([0, 1], 3) == [[0], [1], [0]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids: list[int], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def _submit_and_wait(rs: ReplicaSet, num: int, max_new_tokens: int = 6) -> list:
    done = threading.Semaphore(0)
    seqs = [rs.submit([5, 6, 7, 8], SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
                      on_finish=lambda s: done.release()) for _ in range(num)]
    for _ in seqs:
        assert done.acquire(timeout=60)
    return seqs


@pytest.mark.slow
def test_two_replicas_serve_as_one_target_and_stop_cleanly():
    rs = ReplicaSet.start(EngineConfig(model="builtin:tiny", device="cpu"), SchedulerConfig(), 2,
                          "round_robin")
    pids = [r.proc.pid for r in rs.replicas]
    try:
        assert rs.placements() == [f"cpu:{','.join(map(str, s))}" for s in
                                   cpu_shares(sorted(os.sched_getaffinity(0)), 2)]
        assert [r.info["cpus"] for r in rs.replicas] == cpu_shares(sorted(os.sched_getaffinity(0)), 2)
        # A share of the machine: every core of it (1 each on 2 cores).
        assert [r.info["threads"] for r in rs.replicas] == [max(1, len(r.info["cpus"]))
                                                            for r in rs.replicas]
        seqs = _submit_and_wait(rs, 6)
        for seq in seqs:
            assert seq.status is SeqStatus.FINISHED and seq.num_output_tokens == 6
            # Replica stamps and ours are on one clock: the timeline is ordered end to end.
            times = [seq.scheduled_s, seq.sent_s, seq.admitted_s, *seq.token_times_s, seq.done_s]
            assert times == sorted(times)
        assert [r.outstanding for r in rs.replicas] == [0, 0]
        assert rs.num_waiting == rs.num_running == 0
        steps = rs.take_steps()
        assert sum(s.num_seqs for s in steps if s.phase == "prefill") == 6
        rs.reconfigure(SchedulerConfig("static", 2, 0.0))
        rs.set_router("least_outstanding")
        assert all(s.status is SeqStatus.FINISHED for s in _submit_and_wait(rs, 4))
    finally:
        rs.close()
    assert _wait_gone(pids)


@pytest.mark.slow
def test_a_crashed_replica_fails_its_requests_with_the_reason_and_the_rest_serve_on():
    rs = ReplicaSet.start(EngineConfig(model="builtin:tiny", device="cpu"), SchedulerConfig(), 2,
                          "round_robin")
    pids = [r.proc.pid for r in rs.replicas]
    try:
        finished = threading.Semaphore(0)
        long = SamplingParams(max_new_tokens=2000, ignore_eos=True)
        seqs = [rs.submit([5, 6, 7], long, on_finish=lambda s: finished.release()) for _ in range(2)]
        mid_by = time.monotonic() + 60
        while not seqs[1].output_ids:  # replica 1 is mid-request
            assert time.monotonic() < mid_by, "replica 1 never produced a token"
            time.sleep(0.01)
        os.kill(pids[1], signal.SIGKILL)
        assert finished.acquire(timeout=30)
        assert seqs[1].status is SeqStatus.FAILED and "replica 1 (cpu:" in seqs[1].error
        assert "exited" in seqs[1].error
        # The router now sends everything to the live replica.
        rs.set_router("least_outstanding")
        rs.cancel(seqs[0])
        assert finished.acquire(timeout=30)
        assert all(s.status is SeqStatus.FINISHED for s in _submit_and_wait(rs, 2))
    finally:
        rs.close()
    assert _wait_gone(pids)


PARENT = """
import sys
from engine.config import EngineConfig, SchedulerConfig
from engine.replicas import ReplicaSet
rs = ReplicaSet.start(EngineConfig(model="builtin:tiny", device="cpu"), SchedulerConfig(), 2, None)
print(" ".join(str(r.proc.pid) for r in rs.replicas), flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_replicas_die_with_a_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        parent.kill()
        parent.wait()
        assert _wait_gone(pids)
    finally:
        parent.kill()


@pytest.mark.slow
def test_one_replica_on_every_core_leaves_one_to_the_front_end_and_client():
    rs = ReplicaSet.start(EngineConfig(model="builtin:tiny", device="cpu"), SchedulerConfig(), 1, None)
    try:
        cores = len(os.sched_getaffinity(0))
        assert rs.replicas[0].info["threads"] == max(1, cores - 1)
    finally:
        rs.close()
