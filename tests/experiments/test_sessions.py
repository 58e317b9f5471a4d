"""Session workloads: planning (seeded, hand-checked) and the in-process driver against a real
Engine whose executor emits known tokens, so every turn's prompt can be checked exactly."""

from __future__ import annotations

import threading
import time

import pytest

from engine.config import SchedulerConfig
from engine.engine import Engine
from engine.sequence import Sequence
from experiments.load.session_loadgen import run_sessions
from experiments.load.sessions import (
    SessionLoad,
    Turn,
    closed_index,
    next_prompt,
    plan_sessions,
    session_load,
    sessions_needed,
)
from experiments.spec.profiles import parse_profile_yaml

VOCAB, CONTEXT = 50, 4096
SESSION_YAML = """\
name: s
prompt_tokens: {kind: fixed, value: 4}
output_tokens: {kind: fixed, value: 3}
session:
  turns: {kind: fixed, value: 3}
  think_time_s: {kind: fixed, value: %s}
%s
arrival: {mode: closed, concurrency: 2}
objective: max_throughput
warmup_requests: 0
"""


def profile(think_s: float = 0.0, extra: str = ""):
    return parse_profile_yaml(SESSION_YAML % (think_s, extra), "test")


class CountingExecutor:
    """Every step ~1 ms; each sequence's k-th output token is 100 + seq_id * 3 + k (distinct)."""

    def prefill(self, seqs: list[Sequence]) -> list[int]:
        time.sleep(0.001)
        return [self._next(s) for s in seqs]

    def decode(self, seqs: list[Sequence]) -> list[int]:
        time.sleep(0.001)
        return [self._next(s) for s in seqs]

    def release(self, seqs: list[Sequence]) -> None:
        pass

    @staticmethod
    def _next(seq: Sequence) -> int:
        return 100 + seq.seq_id * 3 + len(seq.output_ids)


class Recorder:
    """The engine, remembering every submitted sequence."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.seqs, self.lock = engine, [], threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    def submit(self, prompt_ids, params, scheduled_s=None, on_token=None, on_finish=None):
        seq = self.engine.submit(prompt_ids, params, scheduled_s, on_token, on_finish)
        with self.lock:
            self.seqs.append(seq)
        return seq


def run(load: SessionLoad) -> tuple:
    with Engine(CountingExecutor(), SchedulerConfig("continuous", 8), 10**6) as engine:
        target = Recorder(engine)
        result = run_sessions(target, load)
    return result, target.seqs


# -- planning -------------------------------------------------------------------------------------


def test_next_prompt_is_history_plus_message_within_the_context() -> None:
    turn = Turn([7, 8], max_new_tokens=2, think_s=0.0)
    assert next_prompt([1, 2, 3], turn, max_context_tokens=7) == [1, 2, 3, 7, 8]
    assert next_prompt([1, 2, 3], turn, max_context_tokens=6) is None  # 5 + 2 > 6: the end


def test_closed_index_numbers_users_as_the_plain_closed_loop() -> None:
    assert [closed_index(1, j, 3) for j in range(4)] == [1, 4, 7, 10]


def test_plan_is_seeded_and_a_longer_plan_starts_with_the_same_sessions() -> None:
    p = parse_profile_yaml((SESSION_YAML % (0.5, "")).replace(
        "{kind: fixed, value: 3}", "{kind: uniform, min: 1, max: 5}"), "t")
    short, long_ = plan_sessions(p, 3, 7, VOCAB, CONTEXT, [0]), plan_sessions(p, 6, 7, VOCAB, CONTEXT, [0])
    assert long_[:3] == short
    assert plan_sessions(p, 3, 8, VOCAB, CONTEXT, [0]) != short
    assert all(1 <= len(s.turns) <= 5 for s in long_)
    assert all(s.turns[0].think_s == 0 and all(t.think_s == 0.5 for t in s.turns[1:]) for s in long_)
    assert all(0 not in t.message_ids for s in long_ for t in s.turns)  # special id avoided


def test_shared_prefix_starts_each_first_turn_only() -> None:
    p = profile(extra="shared_prefix: {num_prefixes: 1, prefix_tokens: 6}")
    sessions = plan_sessions(p, 4, 0, VOCAB, CONTEXT, [])
    prefix = sessions[0].turns[0].message_ids[:6]
    for s in sessions:
        assert len(s.turns[0].message_ids) == 6 + 4 and s.turns[0].message_ids[:6] == prefix
        assert all(len(t.message_ids) == 4 for t in s.turns[1:])


def test_sessions_needed_covers_one_turn_sessions() -> None:
    p = profile()
    assert sessions_needed(p, 10, concurrency=4) == 4 * (3 + 1)
    assert sessions_needed(p, 10, concurrency=None) == 4 + 1  # ceil(10 / 3 turns) + 1


# -- the driver -----------------------------------------------------------------------------------


def by_session(seqs: list[Sequence], load: SessionLoad) -> dict[int, list[Sequence]]:
    """Sequences per planned session, in turn order (matched on the first message)."""
    firsts = {tuple(s.turns[0].message_ids): s.session_id for s in load.sessions}
    out: dict[int, list[Sequence]] = {}
    for seq in sorted(seqs, key=lambda s: s.seq_id):
        first = firsts.get(tuple(seq.prompt_ids))
        if first is not None:
            out[first] = [seq]
        else:  # a later turn: it extends the one whose prompt + output it starts with
            owner = next(k for k, turns in out.items()
                         if seq.prompt_ids[:len(turns[-1].prompt_ids) + 3]
                         == turns[-1].prompt_ids + turns[-1].output_ids)
            out[owner].append(seq)
    return out


def test_each_turn_resends_the_previous_prompt_and_its_actual_response() -> None:
    load = session_load(profile(), 2, None, 1.0, 0, 12, seed=3, vocab_size=VOCAB,
                        max_context_tokens=CONTEXT, avoid_ids=[])
    result, seqs = run(load)
    plans = {s.session_id: s for s in load.sessions}
    assert sorted(r.request_id for r in result.records) == list(range(12))
    for session_id, turns in by_session(seqs, load).items():
        for k in range(1, len(turns)):
            prev, cur = turns[k - 1], turns[k]
            message = plans[session_id].turns[k].message_ids
            # Turn k's prompt = turn k-1's prompt + its generated tokens + the new message.
            assert cur.prompt_ids == prev.prompt_ids + prev.output_ids + message
            assert len(cur.prompt_ids) == 4 + k * (3 + 4)
    for r in result.records:  # session and turn stamped on the records
        assert r.turn is not None and 1 <= r.turn <= 3 and r.session_id is not None
        assert r.num_prompt_tokens == 4 + (r.turn - 1) * 7


def test_closed_users_number_requests_user_plus_j_times_c() -> None:
    load = session_load(profile(), 2, None, 1.0, 0, 8, seed=0, vocab_size=VOCAB,
                        max_context_tokens=CONTEXT, avoid_ids=[])
    result, _ = run(load)
    # User 0 runs sessions 0, 2, ...; its requests are 0, 2, 4, ... in order: turns 1, 2, 3, 1.
    user0 = sorted((r for r in result.records if r.request_id % 2 == 0), key=lambda r: r.request_id)
    assert [(r.session_id, r.turn) for r in user0] == [(0, 1), (0, 2), (0, 3), (2, 1)]


def test_think_time_is_respected_and_latency_counts_from_it() -> None:
    load = session_load(profile(think_s=0.05), 2, None, 1.0, 0, 6, seed=0, vocab_size=VOCAB,
                        max_context_tokens=CONTEXT, avoid_ids=[])
    _, seqs = run(load)
    for turns in by_session(seqs, load).values():
        for prev, cur in zip(turns, turns[1:], strict=False):
            assert cur.scheduled_s == pytest.approx(prev.done_s + 0.05, abs=1e-9)
            assert cur.sent_s >= cur.scheduled_s  # never sent before the user is done thinking


def test_open_sessions_arrive_on_schedule_with_offset_indices() -> None:
    p = profile()
    load = session_load(p, None, 20.0, 1.0, 0, 9, seed=1, vocab_size=VOCAB,
                        max_context_tokens=CONTEXT, avoid_ids=[])
    assert load.offsets()[:3] == [0, 3, 6]
    result, _ = run(load)
    assert sorted(r.request_id for r in result.records) == list(range(9))
    firsts = sorted((r for r in result.records if r.turn == 1), key=lambda r: r.request_id)
    start = firsts[0].scheduled_s
    for r in firsts:  # session s's first turn is scheduled at its arrival
        assert r.request_id == 3 * r.session_id
        assert r.scheduled_s - start == pytest.approx(load.arrivals_s[r.session_id], abs=1e-9)


def test_a_conversation_that_outgrows_the_context_ends_and_the_user_starts_another() -> None:
    # 4-token messages, 3-token answers: turn 2 needs 4 + 3 + 4 + 3 = 14 > 12 tokens.
    load = session_load(profile(), 1, None, 1.0, 0, 3, seed=0, vocab_size=VOCAB,
                        max_context_tokens=12, avoid_ids=[])
    result, _ = run(load)
    assert [(r.session_id, r.turn) for r in result.records] == [(0, 1), (1, 1), (2, 1)]
