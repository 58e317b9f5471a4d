"""Session workloads on the virtual clock: a trial's conversations (sessions.py) sent through the
simulator as session_loadgen.py sends them to the engine, so predictions, capacity plans and
duration estimates cover multi-turn load and the prefix reuse it carries.

Prompts are real token ids (the simulated engine's outputs are token 0): histories grow as they
do on the engine, so its prefix cache and a prefix_affinity router match what they would match
there. Single-threaded: every send is an event of the simulator's loop.
"""

from __future__ import annotations

from dataclasses import replace

from common.records import RequestRecord, TrialConfig
from engine.sequence import SeqStatus, Sequence
from engine.simulate import Simulator
from experiments.load.loadgen import record_from_sequence
from experiments.load.sessions import Conversation, SessionLoad, next_prompt, session_load, turn_index
from experiments.spec.profiles import Profile

# Token ids of simulated prompts: a byte vocabulary, so random 16-token blocks of two requests
# practically never collide (a vocabulary of 2 would make them collide once in 65,536).
SIM_VOCAB_SIZE = 256
# As predict/simulate.py: the context is no limit (the model is not known here).
SIM_CONTEXT_TOKENS = 1 << 20


class _SimulatedSessions:
    """One session run on a simulator: who sends which turn when (sessions.py numbering)."""

    def __init__(self, sim: Simulator, load: SessionLoad) -> None:
        self.sim, self.load = sim, load
        self.sent: dict[int, tuple[Sequence, int, int]] = {}  # index -> (seq, session, turn)
        self.num_sent_by_user = [0] * (load.concurrency or 0)
        self.num_sessions_by_user = [0] * (load.concurrency or 0)
        self.num_measured_ended = 0
        self.is_stopping = load.num_measured == 0

    def start(self) -> None:
        if self.load.concurrency is not None:
            for user in range(self.load.concurrency):
                self._next_session(user, 0.0)
            return
        assert self.load.arrivals_s is not None
        for s, (at_s, first) in enumerate(zip(self.load.arrivals_s, self.load.offsets(), strict=True)):
            self._send(Conversation(self.load.sessions[s], None, first), at_s)

    def _next_session(self, user: int, at_s: float) -> None:
        mine = self.load.user_sessions(user)
        k = self.num_sessions_by_user[user]
        self.num_sessions_by_user[user] = k + 1
        self._send(Conversation(mine[k % len(mine)], user, None), at_s)

    def _index(self, conv: Conversation) -> int:
        return turn_index(conv, self.num_sent_by_user, self.load.concurrency or 1)

    def _send(self, conv: Conversation, at_s: float) -> None:
        turn = conv.session.turns[conv.turn]
        prompt = next_prompt(conv.history, turn, self.load.max_context_tokens)
        if prompt is None:
            self._over(conv, at_s, conv.turn)
            return
        if self.is_stopping:
            return
        index = self._index(conv)
        self.sim.submit_at(at_s, len(prompt), turn.max_new_tokens, prompt_ids=prompt,
                           on_finish=lambda seq: self._finished(conv, index, seq))

    def _finished(self, conv: Conversation, index: int, seq: Sequence) -> None:
        self.sent[index] = (seq, conv.session.session_id, conv.turn + 1)
        self._count_ended(index)
        if self.is_stopping:
            return
        if seq.status is SeqStatus.FAILED:
            self._over(conv, seq.done_s or 0.0, conv.turn + 1)
            return
        conv.history = seq.prompt_ids + seq.output_ids
        conv.turn += 1
        assert seq.done_s is not None
        if conv.turn == len(conv.session.turns):
            self._over(conv, seq.done_s, conv.turn)
            return
        self._send(conv, seq.done_s + conv.session.turns[conv.turn].think_s)

    def _count_ended(self, index: int) -> None:
        if self.load.is_measured(index):
            self.num_measured_ended += 1
            # As the real run: once every measured turn ended nothing more is sent.
            self.is_stopping = self.num_measured_ended >= self.load.num_measured

    def _over(self, conv: Conversation, at_s: float, num_done: int) -> None:
        if conv.user is not None:
            if not self.is_stopping:
                self._next_session(conv.user, at_s)
            return
        assert conv.first_index is not None
        for t in range(num_done, len(conv.session.turns)):
            self._count_ended(conv.first_index + t)

    def records(self) -> tuple[list[RequestRecord], list[RequestRecord]]:
        measured, background = [], []
        for index, (seq, session_id, turn) in sorted(self.sent.items()):
            record = replace(record_from_sequence(seq, index), session_id=session_id, turn=turn)
            (measured if self.load.is_measured(index) else background).append(record)
        return measured, background


def simulate_sessions(sim: Simulator, config: TrialConfig, profile: Profile, num_requests: int,
                      seed: int = 0) -> tuple[list[RequestRecord], list[RequestRecord]]:
    """(measured, background) records of a session trial run to its end on `sim`."""
    load = session_load(profile, config.concurrency, config.rate, config.burstiness,
                        profile.warmup_requests, num_requests, seed, vocab_size=SIM_VOCAB_SIZE,
                        max_context_tokens=SIM_CONTEXT_TOKENS, avoid_ids=[])
    run = _SimulatedSessions(sim, load)
    run.start()
    sim.run()
    return run.records()
