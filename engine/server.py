"""`tradeoff serve`: the engine behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

This module wires the app: routes, error handlers, and running it. Request validation lives in
`server_requests`, token streaming and response bodies in `server_stream`, /metrics in
`server_metrics` (imports run downward: this module imports them, never the reverse).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.config import EngineConfig, SchedulerConfig
from engine.engine import Engine
from engine.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
    SamplingRequest,
    error_body,
    parse_request,
)
from engine.server_metrics import ServerMetrics
from engine.server_requests import RequestValidator, read_body
from engine.server_stream import Chunks, Generation, LoopBridge, complete, stream_body

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
          port: int = 8000, sock: socket.socket | None = None, replicas: int = 1,
          router: str | None = None) -> None:
    """Load the model, start the engine and serve until interrupted (Ctrl-C / SIGTERM).

    `sock`, already bound by the caller (the CLI binds before loading the model, so a port in
    use fails at once as one line), replaces host and port. `replicas` > 1 serves N replica
    processes behind `router` instead of one in-process engine."""
    if replicas > 1:
        from engine.replicas import ReplicaSet
        from engine.served_model import served_model

        engine = ReplicaSet.start(engine_config, sched_config, replicas, router, engine_config.seed)
        loaded = served_model(engine_config, engine)
    else:
        from engine.factory import start_engine  # torch and the model stack load only here

        engine, loaded = start_engine(engine_config, sched_config)
    try:
        app = create_app(engine, loaded, engine_config.model)
        # Access logs cost a line per request; a bounded graceful shutdown keeps a sweep's
        # SIGTERM from waiting on long streams.
        config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="info",
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
        uvicorn.Server(config).run(sockets=None if sock is None else [sock])
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
