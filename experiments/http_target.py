"""An OpenAI-compatible server (vLLM, TGI, SGLang, llama.cpp, `tradeoff serve`) behind the
Engine interface the load generator drives: `now`, `submit`, `cancel`, `num_waiting`, ...

One asyncio loop in a background thread streams every request over a pooled aiohttp session
(aiohttp, not httpx: ~0.45 ms vs ~5 ms of client CPU per streamed request, see
scripts/bench_http_client.py). Times are `time.perf_counter()` seconds, the Engine's clock.
Token times are the arrival times of the stream's chunks; the token count comes from `usage`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from engine.config import SchedulerConfig
from engine.core import StepRecord
from engine.sequence import SamplingParams, SeqStatus, Sequence

SeqCallback = Callable[[Sequence], None]
MAX_CONNECTIONS = 4096  # far above any load level a sweep offers
CONNECT_TIMEOUT_S = 30.0
READ_BUFFER_BYTES = 2**18


class Tokenizer(Protocol):
    """What the client needs from a tokenizer (LoadedModel and HF tokenizers fit)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class TargetError(RuntimeError):
    """The server answered with an error, or the stream broke off."""


def api_base(base_url: str) -> str:
    """`http://h:p` or `http://h:p/` -> `http://h:p/v1`; a URL with a path is kept as given."""
    url = base_url.rstrip("/")
    return url if urlsplit(url).path else url + "/v1"


def server_root(base_url: str) -> str:
    """`http://h:p/v1` -> `http://h:p` (where /health lives)."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class _Stream:
    """What one response stream carried: chunk arrival times and texts, usage, finish."""

    times_s: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    num_tokens: int | None = None  # usage.completion_tokens
    finish_reason: str | None = None
    done_s: float | None = None  # when `[DONE]` arrived


class HttpTarget:
    """Drives an OpenAI-compatible server over streaming HTTP with the Engine's interface."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 tokenizer: Tokenizer | None = None, timeout_s: float | None = None,
                 send_vllm_extras: bool = True) -> None:
        self.api_base = api_base(base_url)
        self.tokenizer = tokenizer
        self.send_vllm_extras = send_vllm_extras  # ignore_eos / min_tokens, as vLLM and SGLang
        self.is_text_prompt = False  # set once the server refuses token-id prompts
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._num_waiting = self._num_running = 0
        self._tasks: dict[int, asyncio.Task] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tradeoff-http-target",
                                         daemon=True)
        self._thread.start()
        # The key lives only in the session's headers: never an attribute, a log or a repr.
        self._call(self._open(api_key, timeout_s))
        try:
            self.model = model or self._call(self._first_model())
        except BaseException:
            self.close()
            raise

    # -- the Engine interface ------------------------------------------------------------------

    def now(self) -> float:
        return time.perf_counter()

    def submit(self, prompt_ids: list[int], params: SamplingParams,
               scheduled_s: float | None = None, on_token: SeqCallback | None = None,
               on_finish: SeqCallback | None = None) -> Sequence:
        """Send one streaming request (from any thread); `scheduled_s` defaults to now."""
        sent_s = self.now()
        seq = Sequence(next(self._ids), list(prompt_ids), params,
                       sent_s if scheduled_s is None else scheduled_s, sent_s)
        self._add(waiting=1)
        self._loop.call_soon_threadsafe(self._start, seq, on_token, on_finish)
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Abort a request: its connection closes and it finishes as cancelled."""
        self._loop.call_soon_threadsafe(self._cancel, seq.seq_id)

    @property
    def num_waiting(self) -> int:
        """Requests sent that have no first token yet (the client's view of the queue)."""
        return self._num_waiting

    @property
    def num_running(self) -> int:
        """Requests streaming tokens."""
        return self._num_running

    def take_steps(self) -> list[StepRecord]:
        """An external server's steps are unknown."""
        return []

    def reconfigure(self, sched_config: SchedulerConfig) -> None:
        """No-op: server-side knobs are set by the command that starts the server."""

    def close(self) -> None:
        """Cancel what is in flight (each finishes as cancelled), close the pool, stop the loop."""
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> HttpTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop thread -----------------------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _open(self, api_key: str | None, timeout_s: float | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=CONNECT_TIMEOUT_S),
            headers=headers, read_bufsize=READ_BUFFER_BYTES,
        )

    async def _first_model(self) -> str:
        async with self._session.get(f"{self.api_base}/models") as resp:
            if resp.status != 200:
                raise TargetError(f"GET {self.api_base}/models: HTTP {resp.status}: "
                                  f"{await _error_text(resp)}; pass the model name explicitly")
            models = (await resp.json()).get("data") or []
        if not models:
            raise TargetError(f"{self.api_base}/models lists no model; pass the model name")
        return str(models[0]["id"])

    async def _shutdown(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._session.close()

    def _start(self, seq: Sequence, on_token: SeqCallback | None,
               on_finish: SeqCallback | None) -> None:
        stream = _Stream()
        task = self._loop.create_task(self._request(seq, stream, on_token))
        # A done callback, not try/finally in the coroutine: a task cancelled before its first
        # step never runs its body, yet its request must still finish (drivers wait for it).
        task.add_done_callback(lambda t: self._done(t, seq, stream, on_finish))
        self._tasks[seq.seq_id] = task

    def _cancel(self, seq_id: int) -> None:
        task = self._tasks.get(seq_id)
        if task is not None:  # absent: it already finished
            task.cancel()

    def _add(self, waiting: int = 0, running: int = 0) -> None:
        with self._lock:
            self._num_waiting += waiting
            self._num_running += running

    def _done(self, task: asyncio.Task, seq: Sequence, stream: _Stream,
              on_finish: SeqCallback | None) -> None:
        self._tasks.pop(seq.seq_id, None)
        self._settle(task, seq, stream)
        if stream.times_s:
            self._add(running=-1)
        else:
            self._add(waiting=-1)
        if on_finish is not None:
            on_finish(seq)

    def _settle(self, task: asyncio.Task, seq: Sequence, stream: _Stream) -> None:
        """Set the request's outcome: finished, cancelled, or failed with the error."""
        if task.cancelled():
            _fail(seq, "cancelled by client", "cancelled", self.now())
            return
        exc = task.exception()
        if exc is None:
            try:
                self._finish(seq, stream)
                return
            except Exception as finish_error:  # e.g. a stream cut short
                exc = finish_error
        _fail(seq, f"{type(exc).__name__}: {exc}", "error", self.now())

    async def _request(self, seq: Sequence, stream: _Stream, on_token: SeqCallback | None) -> None:
        resp = await self._post(seq, self.is_text_prompt)
        if resp.status in (400, 422) and not self.is_text_prompt and self.tokenizer is not None:
            resp.release()  # maybe token-id prompts are refused: retry once as text
            resp = await self._post(seq, as_text=True)
            self.is_text_prompt = resp.status == 200
        async with resp:
            if resp.status != 200:
                raise TargetError(f"HTTP {resp.status}: {await _error_text(resp)}")
            await self._read(resp, seq, stream, on_token)

    async def _post(self, seq: Sequence, as_text: bool) -> aiohttp.ClientResponse:
        body = json.dumps(self._body(seq, as_text)).encode()
        seq.sent_s = self.now()
        return await self._session.post(f"{self.api_base}/completions", data=body,
                                        headers={"Content-Type": "application/json"})

    def _body(self, seq: Sequence, as_text: bool) -> dict[str, Any]:
        p = seq.params
        prompt: Any = self.tokenizer.decode(seq.prompt_ids) if as_text else seq.prompt_ids
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt, "max_tokens": p.max_new_tokens,
            "temperature": p.temperature, "top_p": p.top_p, "stream": True,
            "stream_options": {"include_usage": True},
        }
        if p.seed is not None:
            body["seed"] = p.seed
        if self.send_vllm_extras and p.ignore_eos:
            body.update(ignore_eos=True, min_tokens=p.max_new_tokens)
        return body

    async def _read(self, resp: aiohttp.ClientResponse, seq: Sequence, stream: _Stream,
                    on_token: SeqCallback | None) -> None:
        # Whole reads, split into SSE events here: one await per read instead of per line, and
        # events that arrived in one read share its arrival time.
        pending = b""
        async for data in resp.content.iter_any():
            now_s = self.now()
            *events, pending = (pending + data).replace(b"\r\n", b"\n").split(b"\n\n")
            for payload in filter(None, map(_sse_data, events)):
                if payload == b"[DONE]":
                    stream.done_s = now_s
                    return
                self._on_event(json.loads(payload), now_s, seq, stream, on_token)

    def _on_event(self, event: dict[str, Any], now_s: float, seq: Sequence, stream: _Stream,
                  on_token: SeqCallback | None) -> None:
        if "error" in event:
            raise TargetError(f"server error mid-stream: {_message(event)}")
        if event.get("usage"):
            stream.num_tokens = event["usage"].get("completion_tokens")
        if not event.get("choices"):
            return
        choice = event["choices"][0]
        stream.finish_reason = choice.get("finish_reason") or stream.finish_reason
        if not stream.times_s:
            self._add(waiting=-1, running=1)
        stream.times_s.append(now_s)
        stream.texts.append(choice.get("text") or "")
        seq.token_times_s.append(now_s)  # provisional: one token per chunk until usage says
        seq.output_ids.append(0)  # token ids are not streamed; only their count is known
        if on_token is not None:
            on_token(seq)

    def _finish(self, seq: Sequence, stream: _Stream) -> None:
        if stream.done_s is None and stream.finish_reason is None:
            raise TargetError("the stream ended before `data: [DONE]`")
        num_tokens = stream.num_tokens
        if num_tokens is None:
            num_tokens = self._count_tokens(stream)
        seq.token_times_s = token_times(stream.times_s, num_tokens, self._chunk_weights(stream))
        seq.output_ids = [0] * len(seq.token_times_s)
        seq.status, seq.finish_reason = SeqStatus.FINISHED, stream.finish_reason
        seq.done_s = stream.done_s or self.now()

    def _count_tokens(self, stream: _Stream) -> int:
        if self.tokenizer is None:
            return len(stream.times_s)
        return self._num_text_tokens("".join(stream.texts))

    def _num_text_tokens(self, text: str) -> int:
        # encode() may add special tokens (BOS): count them off with an empty text's encoding.
        return max(0, len(self.tokenizer.encode(text)) - len(self.tokenizer.encode("")))

    def _chunk_weights(self, stream: _Stream) -> list[int] | None:
        if self.tokenizer is None:
            return None
        return [max(1, self._num_text_tokens(text)) for text in stream.texts]


def token_times(chunk_times_s: list[float], num_tokens: int,
                weights: list[int] | None = None) -> list[float]:
    """One time per output token from chunk arrival times (usually one chunk per token)."""
    # Extra chunks (a trailing finish-only one) are dropped from the end. Fewer chunks than
    # tokens: some carried several; each gets one, the rest go by `weights` (their text's
    # token counts), else all to the last chunk.
    if num_tokens <= len(chunk_times_s):
        return chunk_times_s[:num_tokens]
    counts = apportion(num_tokens, weights or [1] * len(chunk_times_s))
    return [t for t, n in zip(chunk_times_s, counts, strict=True) for _ in range(n)]


def apportion(total: int, weights: list[int]) -> list[int]:
    """Split `total` (>= len(weights) >= 1) into counts >= 1, the excess by `weights` - 1."""
    extra, spare = total - len(weights), [max(0, w - 1) for w in weights]
    if not sum(spare):
        return [1] * (len(weights) - 1) + [1 + extra]
    out, done, cum = [], 0, 0.0
    for s in spare:  # cumulative rounding: the counts sum to `total` exactly
        cum += extra * s / sum(spare)
        out.append(1 + round(cum) - done)
        done = round(cum)
    return out


def _sse_data(event: bytes) -> bytes:
    """The `data:` payload of one SSE event (b"" for comments and other fields)."""
    lines = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)


def _fail(seq: Sequence, error: str, finish_reason: str, now_s: float) -> None:
    seq.status, seq.finish_reason, seq.error, seq.done_s = SeqStatus.FAILED, finish_reason, error, now_s


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    text = await resp.text()
    try:
        return _message(json.loads(text))
    except (ValueError, AttributeError, TypeError):
        return text[:500]


def _message(body: dict[str, Any]) -> str:
    error = body.get("error", body)
    return str(error.get("message", error) if isinstance(error, dict) else error)


def wait_for_health(base_url: str, timeout_s: float, interval_s: float = 0.25,
                    is_alive: Callable[[], bool] | None = None) -> None:
    """Poll GET /health, else GET /v1/models, until 200; TimeoutError after `timeout_s`."""
    # `is_alive` (e.g. `lambda: proc.poll() is None`) ends the wait early if the server died.
    urls = [f"{server_root(base_url)}/health", f"{api_base(base_url)}/models"]
    deadline, last_error = time.monotonic() + timeout_s, "no answer yet"
    while time.monotonic() < deadline:
        if is_alive is not None and not is_alive():
            raise RuntimeError(f"the server exited before it was healthy ({last_error})")
        for url in urls:
            last_error = _probe(url)
            if last_error is None:
                return
        time.sleep(interval_s)
    raise TimeoutError(f"{base_url} not healthy after {timeout_s:g} s (last: {last_error})")


def _probe(url: str) -> str | None:
    """None if `url` answers 200, else what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return None if resp.status == 200 else f"{url}: HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"
