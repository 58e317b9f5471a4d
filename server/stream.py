"""Streaming in `tradeoff serve`: engine-thread tokens to the event loop, incremental
detokenization, stop strings, and the SSE / JSON response bodies.

The engine runs in its own thread; each request gets an asyncio.Queue that the engine's
callbacks feed through one loop wake-up per batch of events (not one per token).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi.responses import JSONResponse, Response

from engine.engine import Engine
from engine.sequence import SamplingParams, SeqStatus, Sequence
from server.metrics import ServerMetrics
from server.openai_schema import error_body

DETOKENIZE_PROMPT_TAIL = 5  # prompt ids that seed incremental decoding (leading-space context)
_FINISHED = None  # queue item: the engine finished (or failed) the sequence
_Item = tuple[int, str | None] | None  # (token id, engine finish reason) or _FINISHED
_encode_str = json.encoder.encode_basestring_ascii  # C-accelerated JSON string literal


# -- engine thread -> event loop -----------------------------------------------------------------


class LoopBridge:
    """Hands engine-thread events to the loop: one wake-up per burst, not one per token."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, _Item]] = []

    def put(self, queue: asyncio.Queue, item: _Item) -> None:
        """Called in the engine thread; must stay cheap."""
        with self._lock:
            self._pending.append((queue, item))
            is_first = len(self._pending) == 1
        if is_first:
            # A closed loop (shutdown) has nobody left to listen.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, item in pending:
            queue.put_nowait(item)


# -- text out ------------------------------------------------------------------------------------


class Detokenizer:
    """Incremental decoding that never emits half a multi-byte character (vLLM's offsets)."""

    def __init__(self, decode: Callable[[list[int]], str], prompt_ids: list[int]) -> None:
        self.decode = decode
        self.ids = list(prompt_ids[-DETOKENIZE_PROMPT_TAIL:])
        self.prefix, self.read = 0, len(self.ids)  # ids[prefix:read] is context already emitted

    def add(self, token_id: int) -> str:
        """The new text that `token_id` completes ("" while a character is still partial)."""
        self.ids.append(token_id)
        seen = self.decode(self.ids[self.prefix : self.read])
        text = self.decode(self.ids[self.prefix :])
        if len(text) <= len(seen) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(seen) :]

    def flush(self) -> str:
        """Whatever is still held back (at the end of the output)."""
        if self.read == len(self.ids):
            return ""
        seen = self.decode(self.ids[self.prefix : self.read])
        return self.decode(self.ids[self.prefix :])[len(seen) :]


class StopFilter:
    """Cuts the text at the first stop string; holds back a tail that may start one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.held, self.is_hit = stops, "", False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.held += text
        hits = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.held, self.is_hit = self.held[: min(hits)], "", True
            return out
        keep = self._partial_len()
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out

    def _partial_len(self) -> int:
        # Longest suffix of `held` that is a proper prefix of some stop string.
        for n in range(min(len(self.held), max(map(len, self.stops)) - 1), 0, -1):
            if any(s.startswith(self.held[-n:]) for s in self.stops):
                return n
        return 0


class EngineError(Exception):
    """The engine failed the request (model error, or the engine stopped)."""


Delta = tuple[str, str | None]  # (text, finish_reason or None): one per output token


class Serving(Protocol):
    """What a generation needs of the server it runs in."""

    engine: Engine
    loaded: Any  # the LoadedModel: `decode` turns ids into text
    bridge: LoopBridge
    metrics: ServerMetrics


class Generation:
    """One request in flight: its engine sequence and the tokens flowing back to the loop."""

    def __init__(self, srv: Serving, prompt_ids: list[int], params: SamplingParams,
                 stops: list[str], arrived_s: float) -> None:
        self.srv, self.arrived_s = srv, arrived_s
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.detok = Detokenizer(srv.loaded.decode, prompt_ids)
        self.stop = StopFilter(stops)
        self.num_tokens, self.finish_reason, self.is_failed = 0, None, False
        bridge, queue = srv.bridge, self.queue
        self.seq: Sequence = srv.engine.submit(
            prompt_ids, params,
            # finish_reason is set before on_token, so the last token's chunk can carry it
            on_token=lambda seq: bridge.put(queue, (seq.output_ids[-1], seq.finish_reason)),
            on_finish=lambda seq: bridge.put(queue, _FINISHED),
        )

    @property
    def usage(self) -> dict:
        """OpenAI's usage, with the prompt tokens the prefix cache served (as vLLM reports them)."""
        num_prompt = self.seq.num_prompt_tokens
        return {"prompt_tokens": num_prompt, "completion_tokens": self.num_tokens,
                "total_tokens": num_prompt + self.num_tokens,
                "prompt_tokens_details": {"cached_tokens": self.seq.num_cached_tokens}}

    async def deltas(self) -> AsyncIterator[list[Delta]]:
        """Batches of per-token deltas as they arrive; the last one carries the finish reason."""
        while self.finish_reason is None:
            items = [await self.queue.get()]
            while not self.queue.empty():
                items.append(self.queue.get_nowait())
            yield self._consume(items)

    async def text(self) -> str:
        """The whole output (non-streaming)."""
        return "".join([t for batch in [b async for b in self.deltas()] for t, _ in batch])

    def close(self) -> None:
        """Cancel in the engine if still running (client gone), and record the outcome."""
        metrics = self.srv.metrics
        if self.finish_reason is None and not self.is_failed:
            self.srv.engine.cancel(self.seq)
        status = "finished" if self.finish_reason else "failed" if self.is_failed else "cancelled"
        metrics.requests[status] += 1
        if self.seq.token_times_s:
            metrics.ttft_s.observe(self.seq.token_times_s[0] - self.arrived_s)
        if self.finish_reason:
            metrics.e2e_s.observe(self.srv.engine.now() - self.arrived_s)

    def _consume(self, items: list[_Item]) -> list[Delta]:
        out: list[Delta] = []
        for item in items:
            if item is _FINISHED:
                self._finish_from_engine()
                break
            token_id, engine_reason = item
            self.num_tokens += 1
            out.append((self.stop.feed(self.detok.add(token_id)), None))
            if self.stop.is_hit:  # our own stop: the engine need not go on
                self.finish_reason = "stop"
                self.srv.engine.cancel(self.seq)
                break
            self.finish_reason = engine_reason
            if self.finish_reason:
                break
        self.srv.metrics.add_output_tokens(self.srv.engine.now(), len(out))
        return self._close_batch(out) if self.finish_reason else out

    def _finish_from_engine(self) -> None:
        seq = self.seq
        if seq.status is not SeqStatus.FINISHED:
            self.is_failed = True
            raise EngineError(seq.error or "the engine failed this request")
        self.finish_reason = seq.finish_reason

    def _close_batch(self, out: list[Delta]) -> list[Delta]:
        # The final token's chunk carries the finish reason and any held-back text.
        tail = ""
        if not self.stop.is_hit:
            tail = self.stop.feed(self.detok.flush())
            tail += "" if self.stop.is_hit else self.stop.flush()
            self.finish_reason = "stop" if self.stop.is_hit else self.finish_reason
        text = out.pop()[0] if out else ""
        return [*out, (text + tail, self.finish_reason)]


# -- response formats ----------------------------------------------------------------------------


class Chunks:
    """SSE chunks for one response, pre-rendered so each token JSON-encodes only its text."""

    def __init__(self, is_chat: bool, model: str) -> None:
        self.is_chat, self.created = is_chat, int(time.time())
        self.rid = ("chatcmpl-" if is_chat else "cmpl-") + secrets.token_hex(12)
        self.obj = "chat.completion.chunk" if is_chat else "text_completion"
        self.head = (f'data: {{"id":"{self.rid}","object":"{self.obj}","created":{self.created},'
                     f'"model":{_encode_str(model)},"choices":')
        self.model = model
        field = '[{"index":0,"delta":{"content":' if is_chat else '[{"index":0,"text":'
        self.open = self.head + field
        self.close = ('}' if is_chat else '') + ',"logprobs":null,"finish_reason":'

    def token(self, text: str, reason: str | None) -> str:
        end = "null" if reason is None else f'"{reason}"'
        return f"{self.open}{_encode_str(text)}{self.close}{end}}}]}}\n\n"

    def role(self) -> str:
        """Chat's first chunk: the assistant role, no content yet (as OpenAI)."""
        return (self.head + '[{"index":0,"delta":{"role":"assistant","content":""},'
                '"logprobs":null,"finish_reason":null}]}\n\n')

    def usage(self, usage: dict[str, int]) -> str:
        return f"{self.head}[],\"usage\":{json.dumps(usage)}}}\n\n"

    def full(self, text: str, reason: str | None, usage: dict[str, int]) -> dict[str, Any]:
        """The non-streaming response body."""
        obj = "chat.completion" if self.is_chat else "text_completion"
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": reason}
        if self.is_chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model,
                "choices": [choice], "usage": usage}


def sse_error(message: str) -> str:
    return f"data: {json.dumps(error_body(message, 'server_error'))}\n\n"


async def stream_body(gen: Generation, chunks: Chunks, include_usage: bool) -> AsyncIterator[str]:
    """The SSE body; a client that goes away cancels this, which cancels the sequence."""
    try:
        if chunks.is_chat:
            yield chunks.role()
        async for batch in gen.deltas():
            yield "".join([chunks.token(text, reason) for text, reason in batch])
        if include_usage:
            yield chunks.usage(gen.usage)
    except EngineError as exc:
        yield sse_error(str(exc))
    finally:
        gen.close()
    yield "data: [DONE]\n\n"


async def complete(gen: Generation, chunks: Chunks) -> Response:
    try:
        text = await gen.text()
    except EngineError as exc:
        return JSONResponse(error_body(str(exc), "server_error"), 500)
    finally:
        gen.close()
    return JSONResponse(chunks.full(text, gen.finish_reason, gen.usage))
