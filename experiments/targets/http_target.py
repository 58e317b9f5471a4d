"""An OpenAI-compatible server (vLLM, TGI, SGLang, llama.cpp, `tradeoff serve`) as a load target.

`HttpTarget` drives the server from client worker processes (experiments/load/client_pool.py), each
with its own event loop and a share of the virtual users or arrivals, so the client is not the
bottleneck at the rates real GPU servers reach. The load generator hands it the whole run
(`drive_closed_loop` / `drive_open_loop`) instead of submitting requests one by one; the parent
merges the workers' raw timelines into RequestRecords (experiments/load/http_records.py). Times are
`time.monotonic()` seconds (CLOCK_MONOTONIC), a clock every process shares.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from engine.config import SchedulerConfig
from engine.core import StepRecord
from experiments.load.client_pool import ClientPool
from experiments.load.http_client import ClientSpec, Job
from experiments.load.http_records import load_result
from experiments.load.http_sessions import SessionJob, TurnText
from experiments.load.sessions import Session, SessionLoad
from experiments.run.provenance import ServerInfo, said

USERS_PER_WORKER = 16  # closed loop: one client process per this many virtual users
RATE_PER_WORKER = 200.0  # open loop: one client process per this many requests/s
START_MARGIN_S = 0.05  # workers are armed; the run starts this long after the last one is
DESCRIBE_TIMEOUT_S = 2.0  # /v1/models and /version for labels only: a server without them is fine


class Tokenizer(Protocol):
    """What the client needs from a tokenizer (LoadedModel and HF tokenizers fit)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class TargetError(RuntimeError):
    """The server answered with an error, or could not be reached."""


def api_base(base_url: str) -> str:
    """`http://h:p` or `http://h:p/` -> `http://h:p/v1`; a URL with a path is kept as given."""
    url = base_url.rstrip("/")
    return url if urlsplit(url).path else url + "/v1"


def server_root(base_url: str) -> str:
    """`http://h:p/v1` -> `http://h:p` (where /health lives)."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


def default_num_workers() -> int:
    """Client processes a target may use: one per CPU core this process may run on (at least 1).

    The affinity mask, not os.cpu_count(): a container pinned to 2 of a host's 64 cores must
    not start 64 workers that then fight over 2."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


class HttpTarget:
    """Drives an OpenAI-compatible server with streaming completions from worker processes."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 tokenizer: Tokenizer | None = None, timeout_s: float | None = None,
                 send_vllm_extras: bool = True, max_workers: int | None = None,
                 use_uvloop: bool | None = None) -> None:
        self.api_base = api_base(base_url)
        self.tokenizer = tokenizer
        self.send_vllm_extras = send_vllm_extras  # ignore_eos / min_tokens, as vLLM and SGLang
        self.is_text_prompt: bool | None = None  # probed on the first run
        self.max_workers = max_workers or default_num_workers()
        self.use_uvloop = _has_uvloop() if use_uvloop is None else use_uvloop
        # The key lives only in the workers' session headers and this closure: never in an
        # attribute, a log or a repr.
        self._spec = lambda: ClientSpec(f"{self.api_base}/completions", api_key, timeout_s)
        self._auth = lambda: {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._pool: ClientPool | None = None
        self._info: ServerInfo | None = None
        self.model = model or self._first_model()

    # -- the target interface -----------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic()

    def take_steps(self) -> list[StepRecord]:
        """An external server's steps are unknown."""
        return []

    def reconfigure(self, sched_config: SchedulerConfig) -> None:
        """No-op: server-side knobs are set by the command that starts the server."""

    @property
    def num_waiting(self) -> int:
        return 0  # known per run only, from the timelines (metrics.depth_samples)

    @property
    def num_running(self) -> int:
        return 0

    @property
    def worker_pids(self) -> list[int]:
        return [] if self._pool is None else self._pool.pids

    def drive_closed_loop(self, specs: list, concurrency: int, num_warmup: int,
                          max_duration_s: float | None, should_stop: Callable[[], bool] | None):
        """C virtual users, split over the workers; all stay busy until the measured ones end.

        User u sends requests u, u + C, ... of `specs`, then cycles them (cooldown). With more
        users than specs (C > warm-up + measured), user u >= len(specs) has none of its own: it
        sends cooldown requests from the start (spec u mod len(specs), as the in-process driver
        does), so C requests are in flight from the first one, as the trial's concurrency says.
        """
        num_workers = min(self.max_workers, math.ceil(concurrency / USERS_PER_WORKER))
        bodies, n = self._bodies(specs), len(specs)
        # Cooldown cycle k sends index i + k * stride: unique, since every first index is < C
        # <= stride, and of the same spec, since stride is a multiple of n.
        stride = n * math.ceil(concurrency / n)
        users = [list(range(u, n, concurrency)) or [u] for u in range(concurrency)]
        jobs = []
        for w in range(num_workers):
            mine = [u for i, u in enumerate(users) if i % num_workers == w]
            indices = [i for user in mine for i in user]
            pos = dict(zip(indices, range(len(indices)), strict=True))
            jobs.append(Job("closed", [bodies[i % n] for i in indices], indices,
                            [num_warmup <= i < n for i in indices], 0.0, stride,
                            users=[[pos[i] for i in user] for user in mine]))
        return self._run(jobs, specs, num_warmup, None, max_duration_s, should_stop)

    def drive_open_loop(self, specs: list, arrivals: list[float], num_warmup: int, batch_size: int,
                        max_duration_s: float | None, should_stop: Callable[[], bool] | None):
        """Request i at start + arrivals[i], the arrivals dealt round-robin to the workers."""
        rate = (len(arrivals) - 1) / arrivals[-1] if len(arrivals) > 1 and arrivals[-1] > 0 else 1.0
        num_workers = min(self.max_workers, len(arrivals), math.ceil(rate / RATE_PER_WORKER))
        bodies = self._bodies(specs)
        jobs = []
        for w in range(num_workers):
            indices = list(range(w, len(arrivals), num_workers))
            jobs.append(Job("open", [bodies[i] for i in indices], indices,
                            [i >= num_warmup for i in indices], 0.0, len(specs),
                            offsets_s=[arrivals[i] for i in indices]))
        return self._run(jobs, specs, num_warmup, batch_size, max_duration_s, should_stop)

    def drive_sessions(self, load: SessionLoad, batch_size: int | None,
                       max_duration_s: float | None, should_stop: Callable[[], bool] | None):
        """Multi-turn conversations from the workers: each turn re-sends the history as text
        (earlier prompts and the streamed responses) plus its message (experiments/load/http_sessions.py)."""
        if self.tokenizer is None:
            raise TargetError("a session workload sends the conversation as text: give the "
                              "target a tokenizer (--tokenizer)")
        base = self._body([], 1, as_text=True)
        for key in ("prompt", "max_tokens"):
            base.pop(key)
        jobs = session_jobs(load, base, self.tokenizer, self.max_workers)
        if self._pool is None:
            self._pool = ClientPool(self._spec(), self.use_uvloop)
        start_s, per_worker, outcome = self._pool.run(jobs, START_MARGIN_S, max_duration_s,
                                                      should_stop)
        is_open = load.arrivals_s is not None
        return load_result(per_worker, outcome, None, load.num_warmup, start_s,
                           batch_size if is_open else None, self.tokenizer, self.use_uvloop,
                           load.num_measured)

    def describe(self) -> ServerInfo:
        """What the server says it runs (asked once, briefly; see `describe_server`)."""
        if self._info is None:
            self._info = describe_server(self.api_base, self.model, self._auth())
        return self._info

    def close(self) -> None:
        """Stop the client workers (what is in flight is cancelled)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> HttpTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _run(self, jobs: list[Job], specs: list, num_warmup: int, batch_size: int | None,
             max_duration_s: float | None, should_stop: Callable[[], bool] | None):
        if self._pool is None:
            self._pool = ClientPool(self._spec(), self.use_uvloop)
        start_s, per_worker, outcome = self._pool.run(jobs, START_MARGIN_S, max_duration_s,
                                                      should_stop)
        return load_result(per_worker, outcome, specs, num_warmup, start_s, batch_size,
                           self.tokenizer, self.use_uvloop)

    def _bodies(self, specs: list) -> list[bytes]:
        # Built once per run in the parent: the workers' send path only posts bytes.
        if self.is_text_prompt is None:
            self.is_text_prompt = self._refuses_token_ids(specs[0].prompt_ids)
        return [json.dumps(self._body(s.prompt_ids, s.max_new_tokens)).encode() for s in specs]

    def _body(self, prompt_ids: list[int], max_tokens: int, as_text: bool = False) -> dict[str, Any]:
        is_text = as_text or self.is_text_prompt
        prompt: Any = self.tokenizer.decode(prompt_ids) if is_text else prompt_ids
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0,
            "top_p": 1.0, "stream": True, "stream_options": {"include_usage": True},
        }
        if self.send_vllm_extras:
            body.update(ignore_eos=True, min_tokens=max_tokens)
        return body

    def _refuses_token_ids(self, prompt_ids: list[int]) -> bool:
        """Probe once: does the server refuse token-id prompts (then prompts go as text)?"""
        if self.tokenizer is None:
            return False
        body = {**self._body(prompt_ids, 1), "stream": False}
        body.pop("stream_options")
        status, _ = self._http("POST", "/completions", json.dumps(body).encode())
        return status in (400, 422)

    def _first_model(self) -> str:
        status, text = self._http("GET", "/models")
        if status != 200:
            raise TargetError(f"GET {self.api_base}/models: HTTP {status}: {_message_of(text)}; "
                              "pass the model name explicitly")
        models = json.loads(text).get("data") or []
        if not models:
            raise TargetError(f"{self.api_base}/models lists no model; pass the model name")
        return str(models[0]["id"])

    def _http(self, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
        headers = {**self._auth(), "Content-Type": "application/json"}
        req = urllib.request.Request(f"{self.api_base}{path}", body, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60.0) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")


def session_jobs(load: SessionLoad, base_body: dict, tokenizer: Tokenizer,
                 max_workers: int) -> list[Job]:
    """The workers' shares of a session run: closed, users dealt round-robin; open, sessions."""
    def texts(session: Session) -> list[TurnText]:
        return [(tokenizer.decode(t.message_ids), len(t.message_ids), t.max_new_tokens, t.think_s)
                for t in session.turns]

    def job(**share: Any) -> Job:
        sj = SessionJob(base_body, load.max_context_tokens, load.num_warmup, load.num_measured,
                        load.concurrency, **share)
        return Job("sessions", [], [], [], 0.0, 0, sessions=sj)

    if load.concurrency is not None:
        num_workers = min(max_workers, math.ceil(load.concurrency / USERS_PER_WORKER))
        return [job(users={u: [(s.session_id, texts(s)) for s in load.user_sessions(u)]
                           for u in range(w, load.concurrency, num_workers)})
                for w in range(num_workers)]
    arrivals = load.arrivals_s or []
    turns_per_s = sum(len(s.turns) for s in load.sessions) / max(arrivals[-1], 1e-9)
    num_workers = max(1, min(max_workers, len(arrivals), math.ceil(turns_per_s / RATE_PER_WORKER)))
    rows = list(zip(arrivals, load.offsets(), load.sessions, strict=True))
    return [job(arrivals=[(a, first, s.session_id, texts(s)) for a, first, s in rows[w::num_workers]])
            for w in range(num_workers)]


def _message_of(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500]
    error = body.get("error", body) if isinstance(body, dict) else body
    return str(error.get("message", error) if isinstance(error, dict) else error)


def describe_server(base_url: str, model: str, headers: dict[str, str] | None = None,
                    timeout_s: float = DESCRIBE_TIMEOUT_S) -> ServerInfo:
    """The served model's `owned_by` (GET /v1/models) and the server's version (GET /version,
    vLLM's {"version": ...}), each None when the route is absent, slow or answers otherwise:
    OpenAI-compatible servers differ here, and a label is not worth failing a run for."""
    url = api_base(base_url)
    listed = _get_json(f"{url}/models", headers or {}, timeout_s)
    models = listed.get("data") if isinstance(listed, dict) else None
    entries = [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []
    entry = next((m for m in entries if m.get("id") == model), {})
    version = _get_json(f"{server_root(url)}/version", headers or {}, timeout_s)
    return ServerInfo(url, model, said(entry.get("owned_by")),
                      said(version.get("version") if isinstance(version, dict) else None))


def _get_json(url: str, headers: dict[str, str], timeout_s: float) -> object:
    """GET `url` as JSON; None on any failure (an error status, a timeout, not JSON)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=timeout_s) as resp:
            return json.loads(resp.read(1 << 20))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return None


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
