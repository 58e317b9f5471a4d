"""`tradeoff serve`: the engine behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

This module wires the app: routes, error handlers, and running it. Request validation lives in
`requests`, token streaming and response bodies in `stream`, /metrics in `metrics`, the
engine's process and its health in `backend` (imports run downward: this module imports them,
never the reverse).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.config import EngineConfig, SchedulerConfig
from engine.engine import Engine
from server.backend import EngineGoneError, EngineWatch, engine_health, start_served_engine
from server.metrics import ServerMetrics
from server.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
    SamplingRequest,
    error_body,
    parse_request,
)
from server.requests import RequestValidator, read_body
from server.stream import Chunks, Generation, LoopBridge, complete, stream_body

GRACEFUL_SHUTDOWN_S = 5


class _Server:
    """Request handling shared by both endpoints."""

    def __init__(self, engine: Engine, loaded: Any, model_name: str) -> None:
        self.engine, self.loaded, self.model_name = engine, loaded, model_name
        self.metrics = ServerMetrics()
        self.bridge: LoopBridge | None = None
        self.validator = RequestValidator(engine, loaded, model_name)

    async def handle(self, request: Request, kind: type[SamplingRequest]) -> Response:
        arrived_s = self.engine.now()
        health = engine_health(self.engine)
        if health.is_dead:  # refused at once: nothing could answer it
            self.metrics.requests["rejected"] += 1
            return JSONResponse(error_body(f"the engine has stopped: {health.reason}",
                                           "server_error", code="engine_gone"), 503)
        if self.bridge is None:
            self.bridge = LoopBridge(asyncio.get_running_loop())
        try:
            req = parse_request(kind, await read_body(request))
            prompt_ids, params = self.validator.prepare(req)
        except RequestError as exc:
            self.metrics.requests["rejected"] += 1
            return _error_response(exc)
        self.metrics.num_prompt_tokens += len(prompt_ids)
        gen = Generation(self, prompt_ids, params, req.stop_strings, arrived_s)
        chunks = Chunks(kind is ChatCompletionRequest, self.model_name)
        if req.stream:
            return StreamingResponse(stream_body(gen, chunks, req.include_usage),
                                     media_type="text/event-stream")
        return await _unless_disconnected(request, complete(gen, chunks))


def _error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, param=exc.param, code=exc.code), exc.status)


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
    async def health() -> Response:
        state = engine_health(engine)
        if not state.is_ok:  # an engine process exited: a supervisor should restart us
            return JSONResponse({"status": "unhealthy", "reason": state.reason}, 503)
        return JSONResponse({"status": "ok"})

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
          port: int = 8000, sock: socket.socket | None = None, replicas: int = 1,
          router: str | None = None, in_process: bool = False) -> None:
    """Load the model, start the engine and serve until interrupted (Ctrl-C / SIGTERM).

    `sock`, already bound by the caller (the CLI binds before loading the model, so a port in
    use fails at once as one line), replaces host and port. The engine runs in its own process
    (`replicas` > 1: N processes behind `router`), or on a thread here with `in_process`.
    EngineGoneError once every engine process has exited (the server stops serving then)."""
    engine, loaded = start_served_engine(engine_config, sched_config, replicas, router, in_process)
    try:
        app = create_app(engine, loaded, engine_config.model)
        # Access logs cost a line per request; a bounded graceful shutdown keeps a sweep's
        # SIGTERM from waiting on long streams.
        config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="info",
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
        server = uvicorn.Server(config)
        with (EngineWatch(engine, lambda _reason: setattr(server, "should_exit", True)) as watch,
              _sigterm_unwinds()):
            server.run(sockets=None if sock is None else [with_tcp_proto(sock)])
    finally:
        engine.close()
    if watch.reason is not None:
        raise EngineGoneError(f"the engine process has exited ({watch.reason}); the server stopped")


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM exits through `finally` blocks (the engine processes are stopped, not orphaned
    to die with PR_SET_PDEATHSIG): uvicorn shuts down on it, then re-raises it to the handler
    it found, whose default would end the process on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_cleanly(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def with_tcp_proto(sock: socket.socket) -> socket.socket:
    """The same bound socket, its protocol read back from the kernel (IPPROTO_TCP, not 0).

    asyncio turns Nagle's algorithm off (TCP_NODELAY) only on accepted sockets whose `proto` is
    IPPROTO_TCP; one made by `socket.socket(family, SOCK_STREAM)` says 0, so every stream's
    first chunks waited ~40 ms for the client's delayed ACK (TTFT +40 ms at one user)."""
    return socket.socket(fileno=sock.detach())


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
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [with_tcp_proto(sock)]},
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
