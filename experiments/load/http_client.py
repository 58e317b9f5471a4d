"""The load generator's streaming client, as it runs inside one client worker process.

A worker owns one event loop, one pooled aiohttp session and a share of the virtual users (or of
the open-loop arrivals). The hot path per chunk is: stamp `time.monotonic()` where the read
returns, split the bytes into SSE events, classify each with a byte scan (experiments/load/sse.py),
append the time. Everything that can wait (JSON of the finish chunk and of `usage`, token texts
when the server sends no `usage`, tokenizer calls, building records) waits until the request ends
or, for tokenizing, until the trial ends in the parent. Times are CLOCK_MONOTONIC seconds, the
one clock every process of the machine shares.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp

from common.pacer import Pacer
from experiments.load import sse
from experiments.load.http_sessions import SessionJob, conversations

MAX_CONNECTIONS = 4096  # far above any load level a sweep offers
CONNECT_TIMEOUT_S = 30.0
READ_BUFFER_BYTES = 2**18
LAG_PROBE_INTERVAL_S = 0.01
JSON_HEADERS = {"Content-Type": "application/json"}
CANCELLED = "cancelled by client"


@dataclass(frozen=True)
class ClientSpec:
    """Where and how a worker sends requests (picklable)."""

    url: str  # the full /completions URL
    api_key: str | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class Job:
    """One worker's share of one load run (picklable)."""

    kind: str  # "closed" | "open"
    bodies: list[bytes]  # request bodies, this worker's items in order
    indices: list[int]  # each item's request index in the whole trial
    is_measured: list[bool]
    start_s: float  # absolute monotonic start, the same for every worker
    # Closed loop: cooldown requests cycle each user's items, the k-th cycle's index being
    # idx + k * index_stride (a multiple of the trial's spec count, at least its user count).
    index_stride: int
    users: list[list[int]] = field(default_factory=list)  # closed: each user's item positions
    offsets_s: list[float] = field(default_factory=list)  # open: each item's scheduled offset
    sessions: SessionJob | None = None  # kind "sessions": conversations, bodies built as they go


# One request's raw outcome, a tuple to pickle cheaply: (index, scheduled_s, sent_s,
# chunk_times_s, usage_tokens, texts (without usage, or for sessions), finish_reason, done_s,
# error, cached_tokens (usage.prompt_tokens_details.cached_tokens), prompt_tokens (usage's,
# else for sessions the worker's count), session_id, turn).
Raw = tuple


class WorkerClient:
    """Runs jobs on this process's loop; `stop()` cancels what is in flight."""

    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.pacer = Pacer(self.loop)
        headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=spec.timeout_s, sock_connect=CONNECT_TIMEOUT_S),
            headers=headers, read_bufsize=READ_BUFFER_BYTES, auto_decompress=False,
        )
        self.is_stopping = False
        self.tasks: set[asyncio.Task] = set()

    async def close(self) -> None:
        await self.session.close()
        self.pacer.close()

    def stop(self) -> None:
        """Stop issuing and cancel every request in flight (each is recorded as cancelled)."""
        self.is_stopping = True
        for task in list(self.tasks):
            task.cancel()

    async def run(self, job: Job, on_measured_done: object) -> tuple[list[Raw], list[float]]:
        """Run `job`; call `on_measured_done()` once its measured items have ended."""
        self.is_stopping, out, lags = False, [], []
        sessions = job.sessions
        num_measured = sum(job.is_measured) if sessions is None else sessions.num_measured_here()
        left = [num_measured]

        def ended(pos: int) -> None:
            # Sessions: `pos` is the request index (their requests are not known up front).
            is_measured = (pos < len(job.is_measured) and job.is_measured[pos] if sessions is None
                           else sessions.is_measured(pos))
            if is_measured:
                left[0] -= 1
                if left[0] == 0:
                    on_measured_done()

        if num_measured == 0:
            on_measured_done()
        probe = self.loop.create_task(self._probe_lag(lags))
        try:
            await self.until(job.start_s)
            if sessions is not None:
                await self._gather(conversations(self, job.start_s, sessions, out, ended))
            elif job.kind == "closed":
                await self._gather([self._user(job, items, out, ended) for items in job.users])
            else:
                await self._send_arrivals(job, out, ended)
        finally:
            probe.cancel()
        return out, lags

    async def _gather(self, coros: list) -> None:
        tasks = [self._track(self.loop.create_task(c)) for c in coros]
        await asyncio.gather(*tasks, return_exceptions=True)

    def _track(self, task: asyncio.Task) -> asyncio.Task:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _user(self, job: Job, items: list[int], out: list[Raw], ended: object) -> None:
        # A virtual user: its next request is scheduled when its previous one ended.
        if not items:  # nothing to send (cycling nothing would spin and block the loop)
            return
        scheduled_s, cycle = job.start_s, 0
        while not self.is_stopping:
            for pos in items:
                if self.is_stopping:
                    return
                index = job.indices[pos] + cycle * job.index_stride
                raw = await self.request(job.bodies[pos], index, scheduled_s, out)
                if cycle == 0:
                    ended(pos)
                scheduled_s = raw[7]
            cycle += 1

    async def _send_arrivals(self, job: Job, out: list[Raw], ended: object) -> None:
        # Sleeps until each scheduled time (timerfd-precise); a late wake still stamps the
        # intended time, so latency counts from the schedule (no coordinated omission).
        sends = []
        for pos, offset_s in enumerate(job.offsets_s):
            await self.until(job.start_s + offset_s)
            if self.is_stopping:
                break
            coro = self.request(job.bodies[pos], job.indices[pos], job.start_s + offset_s, out)
            task = self._track(self.loop.create_task(coro))
            task.add_done_callback(lambda _t, pos=pos: ended(pos))
            sends.append(task)
        await asyncio.gather(*sends, return_exceptions=True)

    async def until(self, when_s: float) -> None:
        if when_s - time.monotonic() <= 0:
            return
        wake = self.loop.create_future()
        self.pacer.call_at(when_s, lambda: wake.done() or wake.set_result(None))
        await wake

    async def _probe_lag(self, lags: list[float]) -> None:
        # Event-loop lag: how late a timerfd-precise wake-up runs, i.e. how late a chunk that
        # arrives now would be stamped: a busy loop and a process the OS did not run both show.
        while True:
            when_s = time.monotonic() + LAG_PROBE_INTERVAL_S
            await self.until(when_s)
            lags.append(time.monotonic() - when_s)

    async def request(self, body: bytes, index: int, scheduled_s: float, out: list[Raw],
                       session: tuple[int, int, int] | None = None) -> Raw:
        # session: (session id, turn, prompt tokens as counted by the worker); its response
        # text is kept, since the next turn re-sends it.
        stream = _Stream(keep_text=session is not None)
        sent_s = time.monotonic()
        error = None
        try:
            async with self.session.post(self.spec.url, data=body, headers=JSON_HEADERS) as resp:
                if resp.status != 200:
                    error = f"HTTP {resp.status}: {await _error_text(resp)}"
                else:
                    await stream.read(resp)
                    error = stream.finish()
        except asyncio.CancelledError:
            error = CANCELLED
            raise
        except Exception as exc:  # a broken stream fails this request only
            error = f"{type(exc).__name__}: {exc}"
        finally:
            raw = stream.raw(index, scheduled_s, sent_s, error, session)
            out.append(raw)
        return raw


class _Stream:
    """What one response stream carried."""

    __slots__ = ("times", "token_payloads", "usage_tokens", "done_s", "error", "reason",
                 "keep_text", "prompt_tokens", "cached_tokens")

    def __init__(self, keep_text: bool = False) -> None:
        self.times: list[float] = []
        self.token_payloads: list[bytes] = []
        self.usage_tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.cached_tokens: int | None = None
        self.keep_text = keep_text
        self.done_s: float | None = None
        self.error: str | None = None
        self.reason: str | None = None

    async def read(self, resp: aiohttp.ClientResponse) -> None:
        # Whole reads, split into events here: events that arrived in one read share its time.
        pending, times, payloads = b"", self.times, self.token_payloads
        async for data in resp.content.iter_any():
            now_s = time.monotonic()
            events, pending = sse.split_events(pending, data)
            for event in events:
                payload = sse.sse_data(event)
                kind = sse.classify(payload)
                if kind == sse.TOKEN:
                    times.append(now_s)
                    payloads.append(payload)
                elif kind == sse.DONE:
                    self.done_s = now_s  # the body's end follows: read it, so the
                    # connection goes back to the pool instead of being closed
                elif kind == sse.PARSE and self._parsed(payload, now_s):
                    return

    def _parsed(self, payload: bytes, now_s: float) -> bool:
        """Handle a rare event (usage, error); True if the stream is over."""
        event = sse.parse_event(payload)
        self.error = sse.event_error(event)
        if self.error is not None:
            self.error = f"server error mid-stream: {self.error}"
            return True
        self.usage_tokens = sse.completion_tokens(event) or self.usage_tokens
        prompt_tokens, cached_tokens = prompt_usage(event)
        self.prompt_tokens = prompt_tokens if prompt_tokens is not None else self.prompt_tokens
        self.cached_tokens = cached_tokens if cached_tokens is not None else self.cached_tokens
        if sse.has_choice(event):
            self.times.append(now_s)
            self.token_payloads.append(payload)
        return False

    def finish(self) -> str | None:
        """After the stream ended: its finish reason, or why it failed."""
        if self.error is not None:
            return self.error
        if self.token_payloads:
            self.reason = sse.chunk_text_and_reason(self.token_payloads[-1])[1]
        if self.done_s is None and self.reason is None:
            return "TargetError: the stream ended before `data: [DONE]`"
        return None

    def raw(self, index: int, scheduled_s: float, sent_s: float, error: str | None,
            session: tuple[int, int, int] | None = None) -> Raw:
        done_s = self.done_s if error is None and self.done_s else time.monotonic()
        texts = None
        if error is None and (self.usage_tokens is None or self.keep_text):
            texts = [sse.chunk_text_and_reason(p)[0] for p in self.token_payloads]
        reason = ("cancelled" if error == CANCELLED else "error") if error else self.reason
        session_id, turn, num_prompt = session or (None, None, None)
        if self.prompt_tokens is not None:
            num_prompt = self.prompt_tokens
        return (index, scheduled_s, sent_s, self.times, self.usage_tokens, texts, reason,
                done_s, error, self.cached_tokens, num_prompt, session_id, turn)


def prompt_usage(event: dict) -> tuple[int | None, int | None]:
    """(usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens), each None if absent."""
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return None, None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt = usage.get("prompt_tokens")
    return (prompt if isinstance(prompt, int) else None,
            cached if isinstance(cached, int) else None)


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    text = await resp.text()
    try:
        return sse.event_error(sse.parse_event(text.encode())) or text[:500]
    except ValueError:
        return text[:500]
