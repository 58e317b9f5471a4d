"""`tradeoff mock-server`: an OpenAI-compatible server whose timing is exactly known.

Every request, once in service, streams its first token `ttft_ms` after service starts and
each further token `itl_ms` later (S = T + (n - 1) I for n tokens), optionally jittered
uniformly by +-`jitter_ms` per gap. At most `capacity` requests are in service at once; the
rest wait in a FIFO queue. So closed-loop load with C > K users gives req/s = K / S and
E2E = C S / K, and open-loop Poisson load with K = 1 is an M/D/1 queue (experiments/load/queueing.py).

Tokens are emitted on an absolute schedule (no drift), by a timerfd-paced loop (common/pacer.py);
tokens already due when the loop wakes go out in one write. Each token's text is one ASCII
letter, so a byte-level tokenizer counts one token per chunk when `usage` is not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections import deque
from dataclasses import dataclass

from common.pacer import Pacer
from mock.protocol import LAST_CHUNK, HttpConnection, HttpRequest, chunk, response_head

DEFAULT_MAX_TOKENS = 16
SSE = "text/event-stream"


class MockConfigError(ValueError):
    """A mock-server setting is out of range."""


@dataclass(frozen=True)
class MockTiming:
    """The mock server's timing: T, I, capacity K (None = unlimited), jitter J, in ms."""

    ttft_ms: float
    itl_ms: float
    capacity: int | None = None
    jitter_ms: float = 0.0
    seed: int = 0
    send_usage: bool = True  # False: never send `usage` (to check clients that count tokens)
    # A known batch-dependent cost (calibration tests): a request's first token waits this much
    # more per prompt token, and each further gap this much more per request in service when
    # it started (itself included): I(n) = I + b n, like a decode step of n rows.
    ttft_per_token_ms: float = 0.0
    itl_per_running_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "itl_ms", "jitter_ms", "ttft_per_token_ms", "itl_per_running_ms"):
            value = getattr(self, name)
            if not (value >= 0 and value < float("inf")):
                raise MockConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.capacity is not None and self.capacity < 1:
            raise MockConfigError(f"--capacity must be >= 1 (0 = unlimited), got {self.capacity}")

    def service_s(self, num_tokens: int) -> float:
        """S = T + (n - 1) I, in seconds (without jitter)."""
        return (self.ttft_ms + (num_tokens - 1) * self.itl_ms) / 1e3


def token_offsets_s(timing: MockTiming, num_tokens: int, rng: random.Random,
                    num_prompt_tokens: int = 0, num_running: int = 1) -> list[float]:
    """Each token's time after service start (s): T, T + I, ...; jittered gaps clipped at 0.
    With the per-token and per-running costs: T + t p, then gaps of I + b n."""
    ttft_ms = timing.ttft_ms + timing.ttft_per_token_ms * num_prompt_tokens
    itl_ms = timing.itl_ms + timing.itl_per_running_ms * num_running
    gaps = [ttft_ms] + [itl_ms] * (num_tokens - 1)
    if timing.jitter_ms > 0:
        gaps = [max(0.0, g + rng.uniform(-timing.jitter_ms, timing.jitter_ms)) for g in gaps]
    return list(itertools.accumulate(g / 1e3 for g in gaps))


def _error(status: int, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                         "code": status}}).encode()


@dataclass
class _Ask:
    """A parsed generation request."""

    is_chat: bool
    is_stream: bool
    include_usage: bool
    num_tokens: int
    num_prompt_tokens: int


def parse_ask(path: str, body: bytes) -> _Ask:
    """The request's shape, or ValueError with a message for the client."""
    try:
        req = json.loads(body)
    except ValueError:
        raise ValueError("the body is not valid JSON") from None
    if not isinstance(req, dict):
        raise ValueError("the body must be a JSON object")
    is_chat = path.endswith("/chat/completions")
    num_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
    num_tokens = DEFAULT_MAX_TOKENS if num_tokens is None else num_tokens
    if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {num_tokens!r}")
    options = req.get("stream_options") or {}
    return _Ask(is_chat, bool(req.get("stream")), bool(options.get("include_usage")), num_tokens,
                _num_prompt_tokens(req, is_chat))


def _num_prompt_tokens(req: dict, is_chat: bool) -> int:
    # Token-id prompts count their ids; text counts its bytes (a byte-level tokenizer's count).
    if is_chat:
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        return sum(len(str(m.get("content", "")).encode()) for m in messages if isinstance(m, dict))
    prompt = req.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, str):
        return len(prompt.encode())
    raise ValueError("prompt must be a string or a list of token ids")


class _Chunks:
    """Pre-rendered SSE bytes for one response (the hot path only concatenates)."""

    def __init__(self, ask: _Ask, request_id: int, model: str) -> None:
        kind = "chat.completion.chunk" if ask.is_chat else "text_completion"
        self.head = (f'data: {{"id":"cmpl-{request_id}","object":"{kind}","created":'
                     f'{int(time.time())},"model":{json.dumps(model)},"choices":[').encode()
        self.ask = ask

    def token(self, k: int, is_last: bool) -> bytes:
        letter = chr(97 + k % 26)
        reason = '"length"' if is_last else "null"
        if self.ask.is_chat:
            role = '"role":"assistant",' if k == 0 else ""
            choice = f'{{"index":0,"delta":{{{role}"content":"{letter}"}},"finish_reason":{reason}}}'
        else:
            choice = f'{{"index":0,"text":"{letter}","logprobs":null,"finish_reason":{reason}}}'
        return self.head + choice.encode() + b"]}\n\n"

    def tail(self, send_usage: bool) -> bytes:
        usage = b""
        if send_usage and self.ask.include_usage:
            usage = self.head + b'],"usage":' + json.dumps(self.usage()).encode() + b"}\n\n"
        return usage + b"data: [DONE]\n\n"

    def usage(self) -> dict[str, int]:
        n, p = self.ask.num_tokens, self.ask.num_prompt_tokens
        return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}


class _Job:
    """One generation request: waits for a slot, then emits its tokens on schedule."""

    def __init__(self, server: MockServer, conn: HttpConnection, ask: _Ask, request_id: int) -> None:
        self.server, self.conn, self.ask = server, conn, ask
        self.chunks = _Chunks(ask, request_id, server.model)
        self.offsets_s = token_offsets_s(server.timing, ask.num_tokens, server.rng)
        self.num_sent = 0
        self.start_s: float | None = None
        self.is_over = False
        conn.on_lost = self.abort

    def start(self) -> None:
        self.start_s = time.monotonic()
        timing = self.server.timing
        if timing.ttft_per_token_ms or timing.itl_per_running_ms:  # known at service start only
            self.offsets_s = token_offsets_s(timing, self.ask.num_tokens, self.server.rng,
                                             self.ask.num_prompt_tokens, len(self.server.in_service))
        if self.ask.is_stream:
            self.conn.write(response_head(200, SSE, None))
            self.server.pacer.call_at(self.start_s + self.offsets_s[0], self._emit)
        else:
            self.server.pacer.call_at(self.start_s + self.offsets_s[-1], self._reply_whole)

    def abort(self) -> None:
        """The client went away: free the slot (or leave the queue)."""
        if not self.is_over:
            self.is_over = True
            self.server.release(self)

    def _emit(self) -> None:
        if self.is_over:
            return
        elapsed_s, n = time.monotonic() - self.start_s, self.ask.num_tokens
        first = self.num_sent
        while self.num_sent < n and self.offsets_s[self.num_sent] <= elapsed_s:
            self.num_sent += 1
        self.num_sent = max(self.num_sent, first + 1)  # the pacer fired: that token is due
        data = b"".join(self.chunks.token(k, k == n - 1) for k in range(first, self.num_sent))
        if self.num_sent < n:
            self.conn.write(chunk(data))
            self.server.pacer.call_at(self.start_s + self.offsets_s[self.num_sent], self._emit)
            return
        self.conn.write(chunk(data + self.chunks.tail(self.server.timing.send_usage)) + LAST_CHUNK)
        self._end()

    def _reply_whole(self) -> None:
        if self.is_over:
            return
        text = "".join(chr(97 + k % 26) for k in range(self.ask.num_tokens))
        choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                   "finish_reason": "length"} if self.ask.is_chat
                  else {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"})
        body = {"id": "cmpl-mock", "object": "chat.completion" if self.ask.is_chat else "text_completion",
                "created": int(time.time()), "model": self.server.model, "choices": [choice]}
        if self.server.timing.send_usage:
            body["usage"] = self.chunks.usage()
        self.num_sent = self.ask.num_tokens
        self._end(json.dumps(body).encode())

    def _end(self, whole_body: bytes | None = None) -> None:
        self.is_over = True
        self.server.release(self)
        if whole_body is not None:
            self.conn.reply(200, whole_body)
        else:
            self.conn.finish()


class MockServer:
    """Routes requests, and keeps at most `capacity` jobs in service (FIFO beyond)."""

    def __init__(self, timing: MockTiming, model: str, loop: asyncio.AbstractEventLoop) -> None:
        self.timing, self.model = timing, model
        self.pacer = Pacer(loop)
        self.rng = random.Random(timing.seed)
        self.ids = itertools.count()
        self.in_service: set[_Job] = set()
        self.queue: deque[_Job] = deque()
        self.stats = {"requests_started": 0, "requests_finished": 0, "max_in_service": 0}

    def handle(self, req: HttpRequest, conn: HttpConnection) -> None:
        """Answer one HTTP request."""
        if req.path in ("/v1/completions", "/v1/chat/completions", "/completions", "/chat/completions"):
            if req.method != "POST":
                conn.reply(*_error(405, f"{req.path} takes POST"))
                return
            self._generate(req, conn)
        elif req.method != "GET":
            conn.reply(*_error(405 if req.path in ("/health", "/v1/models") else 404,
                               f"no route {req.method} {req.path}"))
        elif req.path == "/health":
            conn.reply(200, b"{}")
        elif req.path in ("/v1/models", "/models"):
            conn.reply(200, json.dumps({"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "tradeoff"}]}).encode())
        elif req.path == "/v1/mock/stats":
            stats = {**self.stats, "in_service": len(self.in_service), "queued": len(self.queue),
                     "is_precise": self.pacer.is_precise}
            conn.reply(200, json.dumps(stats).encode())
        else:
            conn.reply(*_error(404, f"no route {req.method} {req.path}"))

    def _generate(self, req: HttpRequest, conn: HttpConnection) -> None:
        try:
            ask = parse_ask(req.path, req.body)
        except ValueError as exc:
            conn.reply(*_error(400, str(exc)))
            return
        job = _Job(self, conn, ask, next(self.ids))
        if self.timing.capacity is None or len(self.in_service) < self.timing.capacity:
            self._start(job)
        else:
            self.queue.append(job)

    def _start(self, job: _Job) -> None:
        self.in_service.add(job)
        self.stats["requests_started"] += 1
        self.stats["max_in_service"] = max(self.stats["max_in_service"], len(self.in_service))
        job.start()

    def release(self, job: _Job) -> None:
        """`job` is over (done or aborted): free its slot for the oldest waiting job."""
        if job in self.in_service:
            self.in_service.discard(job)
            self.stats["requests_finished"] += job.num_sent == job.ask.num_tokens
        else:
            with contextlib.suppress(ValueError):
                self.queue.remove(job)
        while self.queue and (self.timing.capacity is None
                              or len(self.in_service) < self.timing.capacity):
            self._start(self.queue.popleft())


async def serve_mock(timing: MockTiming, host: str, port: int, model: str = "mock",
                     ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled."""
    loop = asyncio.get_running_loop()
    server = MockServer(timing, model, loop)
    listener = await loop.create_server(lambda: HttpConnection(server.handle), host, port,
                                        backlog=4096, reuse_address=True)
    if ready is not None:
        ready.set()
    try:
        async with listener:
            await listener.serve_forever()
    finally:
        server.pacer.close()
