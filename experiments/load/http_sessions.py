"""Session workloads inside a client worker: conversations whose next prompt is built from the
previous response as it arrives (experiments/load/sessions.py plans them and numbers the requests).

Prompts go as text: the history is every earlier prompt plus the text the server streamed back,
then the new message, as a chat client re-sends a conversation. Token counts of the history come
from the server's `usage` (prompt and completion tokens) when it sends them, else from the
planned message lengths and the streamed chunks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# One turn as a worker sends it: (message text, its tokens, max_tokens, think time before it, s).
TurnText = tuple[str, int, int, float]
# A conversation's history as sent so far: (text, tokens).
History = tuple[str, int]
EMPTY: History = ("", 0)


@dataclass(frozen=True)
class SessionJob:
    """One worker's share of a session run (picklable)."""

    base_body: dict  # the request body but its prompt and token limits
    max_context_tokens: int
    num_warmup: int
    num_measured: int
    concurrency: int | None = None  # closed loop
    # Closed: user -> its sessions in order, each (session id, turns); cycled for cooldown.
    users: dict[int, list[tuple[int, list[TurnText]]]] = field(default_factory=dict)
    # Open: (arrival offset s, first request index, session id, turns) per session.
    arrivals: list[tuple[float, int, int, list[TurnText]]] = field(default_factory=list)

    def is_measured(self, index: int) -> bool:
        return self.num_warmup <= index < self.num_warmup + self.num_measured

    def num_measured_here(self) -> int:
        """Measured requests of this worker (each counts once it ended or was skipped)."""
        end = self.num_warmup + self.num_measured
        if self.concurrency is not None:
            return sum(self.is_measured(i) for u in self.users
                       for i in range(u, end, self.concurrency))
        return sum(self.is_measured(first + t) for _, first, _, turns in self.arrivals
                   for t in range(len(turns)))


class Sender(Protocol):
    """What a conversation needs of the worker's client (http_client.WorkerClient)."""

    is_stopping: bool

    async def until(self, when_s: float) -> None: ...

    async def request(self, body: bytes, index: int, scheduled_s: float, out: list,
                      session: tuple[int, int, int] | None = None) -> tuple: ...


def conversations(client: Sender, start_s: float, sj: SessionJob, out: list,
                  ended: Callable[[int], None]) -> list:
    """The worker's coroutines: one per closed-loop user, or one per open-loop session."""
    if sj.concurrency is not None:
        return [_user(client, start_s, sj, user, out, ended) for user in sj.users]
    return [_arriving(client, start_s, sj, arrival, out, ended) for arrival in sj.arrivals]


async def _user(client: Sender, start_s: float, sj: SessionJob, user: int, out: list,
                ended: Callable[[int], None]) -> None:
    # A closed-loop user: one conversation at a time; its j-th request has index user + j C.
    scheduled_s, num_sent, k = start_s, 0, 0
    mine = sj.users[user]
    while not client.is_stopping:
        session_id, turns = mine[k % len(mine)]
        k += 1
        history = EMPTY
        for t, turn in enumerate(turns):
            scheduled_s += turn[3]
            await client.until(scheduled_s)
            if client.is_stopping or not _fits(sj, turn, history):
                break
            index = user + num_sent * sj.concurrency  # type: ignore[operator]
            num_sent += 1
            raw, history = await _turn(client, turn, t, index, scheduled_s, session_id, history, sj, out)
            ended(index)
            scheduled_s = raw[7]
            if raw[8] is not None:  # a failed turn: the user gives up on the conversation
                break


async def _arriving(client: Sender, start_s: float, sj: SessionJob, arrival: tuple, out: list,
                    ended: Callable[[int], None]) -> None:
    # An open-loop conversation: arrives at its offset; turn t has index first + t.
    offset_s, first, session_id, turns = arrival
    scheduled_s, num_done, history = start_s + offset_s, 0, EMPTY
    for t, turn in enumerate(turns):
        scheduled_s += turn[3]
        await client.until(scheduled_s)
        if client.is_stopping or not _fits(sj, turn, history):
            break
        raw, history = await _turn(client, turn, t, first + t, scheduled_s, session_id, history, sj, out)
        num_done = t + 1
        ended(first + t)
        scheduled_s = raw[7]
        if raw[8] is not None:
            break
    for t in range(num_done, len(turns)):  # turns never sent count as ended
        ended(first + t)


def _fits(sj: SessionJob, turn: TurnText, history: History) -> bool:
    """Whether history + message + output fit the context (else the conversation ends)."""
    return history[1] + turn[1] + turn[2] <= sj.max_context_tokens


async def _turn(client: Sender, turn: TurnText, t: int, index: int, scheduled_s: float,
                session_id: int, history: History, sj: SessionJob, out: list) -> tuple[tuple, History]:
    """Send one turn; return its raw outcome and the history for the next turn."""
    text, num_tokens, max_tokens, _ = turn
    prompt = history[0] + text
    raw = await client.request(_body(sj.base_body, prompt, max_tokens), index, scheduled_s, out,
                               (session_id, t + 1, history[1] + num_tokens))
    num_output = raw[4] if raw[4] is not None else len(raw[3])
    return raw, (prompt + "".join(raw[5] or []), raw[10] + num_output)


def _body(base: dict[str, Any], prompt: str, max_tokens: int) -> bytes:
    body = {**base, "prompt": prompt, "max_tokens": max_tokens}
    if "min_tokens" in base:  # vLLM's extras: the planned output length, exactly
        body["min_tokens"] = max_tokens
    return json.dumps(body).encode()
