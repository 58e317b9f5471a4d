"""Session workloads, pure and seeded: multi-turn conversations and who sends which turn when.

A session is a list of turns; turn k's prompt is the history so far (turn 1..k-1's prompts and
the responses the target really generated) plus turn k's new message, so only the messages and
limits are planned here; the drivers (session_loadgen.py in-process, http_client.py over HTTP)
grow the history as responses arrive. Both number requests the same way:

- closed loop, C users: user u runs sessions u, u + C, u + 2C, ... one at a time (cycling its
  sessions for cooldown); its j-th request has index u + j C, as the plain closed loop's users do;
- open loop: session s arrives at arrivals[s]; its turn t (0-based) has index offset[s] + t.

The first `num_warmup` indices are warm-up, the next `num_measured` are measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import numpy as np

from experiments.load.prefixes import allowed_ids, prefix_choices, shared_prefixes
from experiments.load.workload import (
    RequestSpec,
    open_loop_arrivals,
    requests_of_lengths,
    sample_lengths,
    with_prefix,
)
from experiments.spec.profiles import (
    ChoiceLength,
    ExponentialThink,
    FixedLength,
    FixedThink,
    OpenArrival,
    Profile,
    ThinkTime,
    UniformThink,
)

# Random streams of their own (workload.py uses 0-3, prefixes.py 10-13).
TURNS_STREAM, THINK_STREAM, MESSAGE_SEED_STREAM = 20, 21, 22


@dataclass(frozen=True)
class Turn:
    """One turn to send: its new message, its output limit, the think time before it (s)."""

    message_ids: list[int]
    max_new_tokens: int
    think_s: float  # after the previous turn's response; 0 for a session's first turn


@dataclass(frozen=True)
class Session:
    """One conversation: its id (its index in the plan) and its turns, in order."""

    session_id: int
    turns: list[Turn]


@dataclass(frozen=True)
class SessionLoad:
    """A session run as both drivers send it: the sessions and how they arrive (picklable)."""

    sessions: list[Session]
    num_warmup: int
    num_measured: int
    max_context_tokens: int
    concurrency: int | None = None  # closed loop
    arrivals_s: list[float] | None = None  # open loop: each session's first turn

    def is_measured(self, index: int) -> bool:
        return self.num_warmup <= index < self.num_warmup + self.num_measured

    def user_sessions(self, user: int) -> list[Session]:
        """Closed loop: the sessions user `user` runs, in order (then cycled)."""
        assert self.concurrency is not None
        return self.sessions[user :: self.concurrency] or [self.sessions[user % len(self.sessions)]]

    def offsets(self) -> list[int]:
        """Open loop: each session's first request index."""
        return np.cumsum([0] + [len(s.turns) for s in self.sessions[:-1]]).tolist()


def next_prompt(history: list[int], turn: Turn, max_context_tokens: int) -> list[int] | None:
    """History + the new message; None when prompt and output no longer fit the context (the
    conversation ends there: truncating the history would break its prefix reuse)."""
    prompt = history + turn.message_ids
    return prompt if len(prompt) + turn.max_new_tokens <= max_context_tokens else None


def closed_index(user: int, num_sent: int, concurrency: int) -> int:
    """Closed loop: the index of user `user`'s request number `num_sent` (0-based)."""
    return user + num_sent * concurrency


@dataclass
class Conversation:
    """One session in flight: the turn to send next and the history so far (the load
    generator's and the simulator's)."""

    session: Session
    user: int | None  # closed loop
    first_index: int | None  # open loop
    turn: int = 0  # 0-based position of the next turn
    history: list[int] = field(default_factory=list)


def turn_index(conv: Conversation, num_sent_by_user: list[int], concurrency: int) -> int:
    """The index of `conv`'s next request (this numbering); counts a closed-loop user's send."""
    if conv.user is None:
        assert conv.first_index is not None
        return conv.first_index + conv.turn
    num_sent = num_sent_by_user[conv.user]
    num_sent_by_user[conv.user] = num_sent + 1
    return closed_index(conv.user, num_sent, concurrency)


def sample_think_s(dist: ThinkTime, n: int, rng: np.random.Generator) -> list[float]:
    """`n` think times (s) drawn from `dist`."""
    if isinstance(dist, FixedThink):
        return [dist.value] * n
    if isinstance(dist, UniformThink):
        return rng.uniform(dist.min, dist.max, size=n).tolist()
    assert isinstance(dist, ExponentialThink)
    return rng.exponential(dist.mean, size=n).tolist()


def plan_sessions(profile: Profile, num_sessions: int, seed: int, vocab_size: int,
                  max_context_tokens: int, avoid_ids: Seq[int]) -> list[Session]:
    """`num_sessions` seeded conversations (a longer plan starts with the same sessions)."""
    spec = profile.session
    assert spec is not None and profile.prompt_tokens is not None  # a session profile
    assert profile.output_tokens is not None
    num_turns = sample_lengths(spec.turns, num_sessions, _rng(seed, TURNS_STREAM))
    # Per-turn draws per session, so session s is the same however many are planned.
    sessions = []
    for s, n in enumerate(num_turns):
        rng_seed = [seed, MESSAGE_SEED_STREAM, s]
        prompts = sample_lengths(profile.prompt_tokens, n, _rng(rng_seed, 0))
        outputs = sample_lengths(profile.output_tokens, n, _rng(rng_seed, 1))
        thinks = [0.0, *sample_think_s(spec.think_time_s, n - 1, _rng(rng_seed, THINK_STREAM))]
        specs = requests_of_lengths(prompts, outputs, _message_seed(seed, s), vocab_size,
                                    max_context_tokens, avoid_ids)
        sessions.append(Session(s, [Turn(r.prompt_ids, r.max_new_tokens, t)
                                    for r, t in zip(specs, thinks, strict=True)]))
    return _with_prefixes(profile, sessions, seed, vocab_size, max_context_tokens, avoid_ids)


def _with_prefixes(profile: Profile, sessions: list[Session], seed: int, vocab_size: int,
                   max_context_tokens: int, avoid_ids: Seq[int]) -> list[Session]:
    """Each session's first message starts with its shared prefix (a system prompt)."""
    prefix = profile.shared_prefix
    if prefix is None:
        return sessions
    prefixes = shared_prefixes(prefix.num_prefixes, prefix.prefix_tokens, seed,
                               allowed_ids(vocab_size, avoid_ids))
    choices = prefix_choices(prefix.num_prefixes, len(sessions), seed)
    out = []
    for session, k in zip(sessions, choices, strict=True):
        first = session.turns[0]
        # Clipped as any first prompt is, so a session's first turn always fits the context.
        spec = with_prefix(prefixes[k], RequestSpec(first.message_ids, first.max_new_tokens),
                           max_context_tokens)
        turns = [Turn(spec.prompt_ids, spec.max_new_tokens, 0.0), *session.turns[1:]]
        out.append(Session(session.session_id, turns))
    return out


def sessions_needed(profile: Profile, num_requests: int, concurrency: int | None) -> int:
    """Sessions to plan so the warm-up and measured requests never run out of fresh ones:
    closed, every user gets enough even if each session ended after one turn (plus one);
    open, enough sessions at the smallest turn count (a session cut short skips its indices)."""
    if concurrency is not None:
        return concurrency * (math.ceil(num_requests / concurrency) + 1)
    assert profile.session is not None
    return math.ceil(num_requests / max(1, _min_turns(profile))) + 1


def _min_turns(profile: Profile) -> int:
    assert profile.session is not None
    dist = profile.session.turns
    if isinstance(dist, FixedLength):
        return dist.value
    return min(dist.values) if isinstance(dist, ChoiceLength) else dist.min


def _message_seed(seed: int, session: int) -> int:
    # requests_of_lengths seeds its token stream with one int: derive one per session.
    return int(np.random.default_rng([seed, MESSAGE_SEED_STREAM, session, 2]).integers(1 << 62))


def _rng(seed: int | list[int], stream: int) -> np.random.Generator:
    parts = seed if isinstance(seed, list) else [seed]
    return np.random.default_rng([*parts, stream])


def session_load(profile: Profile, concurrency: int | None, rate: float | None, burstiness: float,
                 num_warmup: int, num_measured: int, seed: int, vocab_size: int,
                 max_context_tokens: int, avoid_ids: Seq[int]) -> SessionLoad:
    """The sessions a trial sends: closed (`concurrency` users) or open (`rate` sessions/s)."""
    if concurrency is None and rate is None:
        raise ValueError(f"profile '{profile.name}' has sessions: give a concurrency (users) or "
                         "a rate (sessions/s)")
    total = num_warmup + num_measured
    sessions = plan_sessions(profile, sessions_needed(profile, total, concurrency), seed,
                             vocab_size, max_context_tokens, avoid_ids)
    if concurrency is not None:
        return SessionLoad(sessions, num_warmup, num_measured, max_context_tokens, concurrency)
    schedule = profile.arrival.schedule if isinstance(profile.arrival, OpenArrival) else None
    arrivals = open_loop_arrivals(rate, burstiness, len(sessions), seed, schedule)
    return SessionLoad(sessions, num_warmup, num_measured, max_context_tokens, arrivals_s=arrivals)
