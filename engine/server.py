"""`tradeoff serve`: the engine behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

The engine runs in its own thread; each request gets an asyncio.Queue that the engine's
callbacks feed through one loop wake-up per batch of events (not one per token). Bad requests
are refused before they reach the engine, so they cannot fail or stall other requests.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.config import EngineConfig, SchedulerConfig
from engine.engine import Engine
from engine.openai_schema import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    RequestError,
    SamplingRequest,
    error_body,
    parse_request,
)
from engine.sequence import SamplingParams, SeqStatus, Sequence

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
SAMPLING_EPS = 1e-5  # temperatures below this are greedy (as vLLM): 1/T would overflow
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_WINDOW_S = 10
GRACEFUL_SHUTDOWN_S = 5
DETOKENIZE_PROMPT_TAIL = 5  # prompt ids that seed incremental decoding (leading-space context)
_FINISHED = None  # queue item: the engine finished (or failed) the sequence
_Item = tuple[int, str | None] | None  # (token id, engine finish reason) or _FINISHED
_encode_str = json.encoder.encode_basestring_ascii  # C-accelerated JSON string literal


# -- metrics -------------------------------------------------------------------------------------


class _Histogram:
    """A Prometheus histogram with fixed upper bounds (seconds)."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds, self.counts = bounds, [0] * (len(bounds) + 1)
        self.total, self.num = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total, self.num = self.total + value, self.num + 1

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, count in zip((*self.bounds, "+Inf"), self.counts, strict=True):
            cumulative += count
            out.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        return [*out, f"{name}_sum {self.total}", f"{name}_count {self.num}"]


class _RateWindow:
    """Events per second over the last complete `window_s` seconds, from one-second buckets."""

    def __init__(self, window_s: int = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self.seconds, self.counts = [-1] * window_s, [0] * window_s

    def add(self, now_s: float, num: int) -> None:
        sec = int(now_s)
        idx = sec % self.window_s
        if self.seconds[idx] != sec:
            self.seconds[idx], self.counts[idx] = sec, 0
        self.counts[idx] += num

    def rate(self, now_s: float) -> float:
        sec = int(now_s)
        total = sum(c for s, c in zip(self.seconds, self.counts, strict=True)
                    if sec - self.window_s <= s < sec)
        return total / self.window_s


class ServerMetrics:
    """Counters and histograms for GET /metrics; touched only on the event loop."""

    def __init__(self) -> None:
        self.requests = {"finished": 0, "failed": 0, "cancelled": 0, "rejected": 0}
        self.num_prompt_tokens = self.num_output_tokens = 0
        self.output_rate = _RateWindow()
        self.ttft_s, self.e2e_s = _Histogram(), _Histogram()

    def add_output_tokens(self, now_s: float, num: int) -> None:
        self.num_output_tokens += num
        self.output_rate.add(now_s, num)

    def render(self, engine: Engine) -> str:
        """Prometheus text exposition format 0.0.4."""
        now_s = engine.now()
        out = _gauge("tradeoff_num_requests_waiting", "Requests queued, not yet in a batch.",
                     engine.num_waiting)
        out += _gauge("tradeoff_num_requests_running", "Requests in the running batch.",
                      engine.num_running)
        out += _gauge("tradeoff_generation_tokens_per_second",
                      f"Output tokens per second over the last {RATE_WINDOW_S} s.",
                      self.output_rate.rate(now_s))
        out += _counter("tradeoff_generation_tokens_total", "Output tokens streamed.",
                        self.num_output_tokens)
        out += _counter("tradeoff_prompt_tokens_total", "Prompt tokens admitted.",
                        self.num_prompt_tokens)
        out += _header("tradeoff_requests_total", "Requests by outcome.", "counter")
        out += [f'tradeoff_requests_total{{status="{k}"}} {v}' for k, v in self.requests.items()]
        out += _histogram("tradeoff_time_to_first_token_seconds",
                          "Arrival to first token, seconds.", self.ttft_s)
        out += _histogram("tradeoff_e2e_request_latency_seconds",
                          "Arrival to last token, seconds (finished requests).", self.e2e_s)
        return "\n".join(out) + "\n"


def _header(name: str, help_text: str, kind: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _gauge(name: str, help_text: str, value: float) -> list[str]:
    return [*_header(name, help_text, "gauge"), f"{name} {value}"]


def _counter(name: str, help_text: str, value: float) -> list[str]:
    return [*_header(name, help_text, "counter"), f"{name} {value}"]


def _histogram(name: str, help_text: str, hist: _Histogram) -> list[str]:
    return [*_header(name, help_text, "histogram"), *hist.lines(name)]


# -- engine thread -> event loop -----------------------------------------------------------------


class _LoopBridge:
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


class _Detokenizer:
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


class _StopFilter:
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


class _EngineError(Exception):
    """The engine failed the request (model error, or the engine stopped)."""


Delta = tuple[str, str | None]  # (text, finish_reason or None): one per output token


class _Generation:
    """One request in flight: its engine sequence and the tokens flowing back to the loop."""

    def __init__(self, srv: _Server, prompt_ids: list[int], params: SamplingParams,
                 stops: list[str], arrived_s: float) -> None:
        self.srv, self.arrived_s = srv, arrived_s
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.detok = _Detokenizer(srv.loaded.decode, prompt_ids)
        self.stop = _StopFilter(stops)
        self.num_tokens, self.finish_reason, self.is_failed = 0, None, False
        bridge, queue = srv.bridge, self.queue
        self.seq: Sequence = srv.engine.submit(
            prompt_ids, params,
            # finish_reason is set before on_token, so the last token's chunk can carry it
            on_token=lambda seq: bridge.put(queue, (seq.output_ids[-1], seq.finish_reason)),
            on_finish=lambda seq: bridge.put(queue, _FINISHED),
        )

    @property
    def usage(self) -> dict[str, int]:
        num_prompt = self.seq.num_prompt_tokens
        return {"prompt_tokens": num_prompt, "completion_tokens": self.num_tokens,
                "total_tokens": num_prompt + self.num_tokens}

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
            raise _EngineError(seq.error or "the engine failed this request")
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


class _Chunks:
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


def _error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, param=exc.param, code=exc.code), exc.status)


def _sse_error(message: str) -> str:
    return f"data: {json.dumps(error_body(message, 'server_error'))}\n\n"


# -- the server ----------------------------------------------------------------------------------


class _Server:
    """Request handling shared by both endpoints."""

    def __init__(self, engine: Engine, loaded: Any, model_name: str) -> None:
        self.engine, self.loaded, self.model_name = engine, loaded, model_name
        self.metrics = ServerMetrics()
        self.bridge: _LoopBridge | None = None
        self.vocab_size = _vocab_size(loaded)

    async def handle(self, request: Request, kind: type[SamplingRequest]) -> Response:
        arrived_s = self.engine.now()
        if self.bridge is None:
            self.bridge = _LoopBridge(asyncio.get_running_loop())
        try:
            req = parse_request(kind, await request.body())
            prompt_ids, params = self._prepare(req)
        except RequestError as exc:
            self.metrics.requests["rejected"] += 1
            return _error_response(exc)
        self.metrics.num_prompt_tokens += len(prompt_ids)
        gen = _Generation(self, prompt_ids, params, req.stop_strings, arrived_s)
        chunks = _Chunks(kind is ChatCompletionRequest, self.model_name)
        if req.stream:
            return StreamingResponse(_stream(gen, chunks, req.include_usage),
                                     media_type="text/event-stream")
        return await _unless_disconnected(request, _complete(gen, chunks))

    def _prepare(self, req: SamplingRequest) -> tuple[list[int], SamplingParams]:
        if req.model is not None and req.model != self.model_name:
            raise RequestError(f"The model `{req.model}` does not exist; this server serves "
                               f"`{self.model_name}`", "model", "model_not_found", status=404)
        if isinstance(req, ChatCompletionRequest):
            prompt_ids = self._chat_prompt_ids(req.messages)
        else:
            prompt_ids = self._completion_prompt_ids(req.prompt)
        return prompt_ids, self._sampling(req, len(prompt_ids))

    def _completion_prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise RequestError("batched prompts are not supported; send one prompt per "
                                   "request", "prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            return self.loaded.encode(prompt)
        if not prompt:
            raise RequestError("'prompt' must not be empty", "prompt")
        if not all(0 <= t < self.vocab_size for t in prompt):
            raise RequestError(f"token ids must be in [0, {self.vocab_size})", "prompt")
        return prompt

    def _chat_prompt_ids(self, messages: list[ChatMessage]) -> list[int]:
        tokenizer = getattr(self.loaded, "tokenizer", None)
        if not getattr(tokenizer, "chat_template", None):  # e.g. the builtins: a plain template
            return self.loaded.encode("".join(f"{m.role}: {m.text}\n" for m in messages)
                                      + "assistant:")
        conversation = [{"role": m.role, "content": m.text} for m in messages]
        try:
            text = tokenizer.apply_chat_template(conversation, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as exc:  # the template rejects the conversation (e.g. role order)
            raise RequestError(f"cannot render messages with the chat template: {exc}",
                               "messages") from None
        return list(tokenizer.encode(text, add_special_tokens=False))  # the template has BOS

    def _sampling(self, req: SamplingRequest, num_prompt: int) -> SamplingParams:
        max_tokens = self._max_tokens(req, num_prompt)
        if req.min_tokens > max_tokens:
            raise RequestError(f"min_tokens ({req.min_tokens}) must be <= max_tokens "
                               f"({max_tokens})", "min_tokens")
        temperature = req.temperature if req.temperature >= SAMPLING_EPS else 0.0
        # The engine has no min_tokens: min_tokens == max_tokens is exactly ignore_eos.
        ignore_eos = req.ignore_eos or req.min_tokens >= max_tokens
        return SamplingParams(max_new_tokens=max_tokens, temperature=temperature,
                              top_p=req.top_p, ignore_eos=ignore_eos, seed=req.seed)

    def _max_tokens(self, req: SamplingRequest, num_prompt: int) -> int:
        limit = min(self.loaded.max_context_tokens, self._kv_budget_tokens)
        requested = _requested_max_tokens(req)
        if requested is None:  # chat: the room left, as vLLM
            requested = max(1, limit - num_prompt)
        if num_prompt + requested > limit:
            raise RequestError(_too_long_message(num_prompt, requested, limit, self.loaded),
                               "max_tokens" if num_prompt < limit else "prompt",
                               "context_length_exceeded")
        return requested

    @property
    def _kv_budget_tokens(self) -> int:
        # A request over the KV budget alone would be failed by the engine; refuse it here.
        return self.engine.kv_budget_tokens


def _requested_max_tokens(req: SamplingRequest) -> int | None:
    if isinstance(req, ChatCompletionRequest):
        return req.max_completion_tokens or req.max_tokens
    return DEFAULT_COMPLETION_MAX_TOKENS if req.max_tokens is None else req.max_tokens


def _too_long_message(num_prompt: int, max_tokens: int, limit: int, loaded: Any) -> str:
    what = "maximum context length" if limit == loaded.max_context_tokens else "KV-cache budget"
    return (f"This model's {what} is {limit} tokens. However, you requested "
            f"{num_prompt + max_tokens} tokens ({num_prompt} in the prompt, {max_tokens} "
            "for the completion). Please reduce the prompt or max_tokens.")


def _vocab_size(loaded: Any) -> int:
    config = loaded.model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(config.vocab_size)


async def _stream(gen: _Generation, chunks: _Chunks, include_usage: bool) -> AsyncIterator[str]:
    """The SSE body; a client that goes away cancels this, which cancels the sequence."""
    try:
        if chunks.is_chat:
            yield chunks.role()
        async for batch in gen.deltas():
            yield "".join([chunks.token(text, reason) for text, reason in batch])
        if include_usage:
            yield chunks.usage(gen.usage)
    except _EngineError as exc:
        yield _sse_error(str(exc))
    finally:
        gen.close()
    yield "data: [DONE]\n\n"


async def _complete(gen: _Generation, chunks: _Chunks) -> Response:
    try:
        text = await gen.text()
    except _EngineError as exc:
        return JSONResponse(error_body(str(exc), "server_error"), 500)
    finally:
        gen.close()
    return JSONResponse(chunks.full(text, gen.finish_reason, gen.usage))


async def _unless_disconnected(request: Request, work: Any) -> Response:
    """Run `work`, cancelling it if the client disconnects first (frees its batch slot)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    watcher.cancel()
    if not task.done():
        task.cancel()
        return Response(status_code=499)  # nobody reads it: the client is gone
    return task.result()


async def _disconnected(request: Request) -> None:
    # The body is already read, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(engine: Engine, loaded: Any, model_name: str) -> FastAPI:
    """The OpenAI-compatible app over a started engine."""
    srv = _Server(engine, loaded, model_name)
    app = FastAPI(title="tradeoff serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await srv.handle(request, CompletionRequest)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await srv.handle(request, ChatCompletionRequest)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return _models_body(model_name, loaded.max_context_tokens)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(srv.metrics.render(engine),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _models_body(model_name: str, max_context_tokens: int) -> dict[str, Any]:
    card = {"id": model_name, "object": "model", "created": int(time.time()),
            "owned_by": "tradeoff", "max_model_len": max_context_tokens}
    return {"object": "list", "data": [card]}


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    status = getattr(exc, "status_code", 500)
    return JSONResponse(error_body(str(getattr(exc, "detail", exc))), status)


async def _server_error(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(error_body(f"{type(exc).__name__}: {exc}", "server_error"), 500)


# -- running it ----------------------------------------------------------------------------------


def serve(engine_config: EngineConfig, sched_config: SchedulerConfig, host: str = "127.0.0.1",
          port: int = 8000) -> None:
    """Load the model, start the engine and serve until interrupted (Ctrl-C / SIGTERM)."""
    from engine.factory import start_engine  # torch and the model stack load only here

    engine, loaded = start_engine(engine_config, sched_config)
    try:
        app = create_app(engine, loaded, engine_config.model)
        # Access logs cost a line per request; a bounded graceful shutdown keeps a sweep's
        # SIGTERM from waiting on long streams.
        uvicorn.run(app, host=host, port=port, access_log=False, log_level="info",
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    finally:
        engine.close()


class BackgroundServer:
    """Serves an app with uvicorn in a daemon thread on a loopback port (tests, overhead runs)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app, self.host, self.port = app, host, port
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> str:
        """Bind, start serving, and return the base URL once it accepts connections."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name="tradeoff-http", daemon=True)
        self.thread.start()
        _wait_until(lambda: self.server.started, timeout_s, "the HTTP server did not start")
        return self.base_url

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_until(is_ready: Callable[[], bool], timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not is_ready():
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.01)
