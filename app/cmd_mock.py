"""`tradeoff mock-server`: an OpenAI-compatible server with exactly known timing."""

from __future__ import annotations

import asyncio
import contextlib

import typer

from app.cli import app
from app.errors import BadInput


@app.command("mock-server")
def mock_server(
    ttft_ms: float = typer.Option(..., "--ttft-ms", help="T: first token this long after service starts"),
    itl_ms: float = typer.Option(..., "--itl-ms", help="I: each further token this long after the last"),
    capacity: int = typer.Option(0, help="K: at most K in service, FIFO beyond (0 = unlimited)"),
    # typer renders help as rich markup, where an unescaped "[x ...]" is a tag and vanishes
    jitter_ms: float = typer.Option(0.0, "--jitter-ms", help="J: each gap uniform in \\[x - J, x + J]"),
    host: str = typer.Option("127.0.0.1", help="bind address"),
    port: int = typer.Option(8000, help="TCP port"),
    model: str = typer.Option("mock", help="the model name /v1/models lists"),
    seed: int = typer.Option(0, help="seed of the jitter"),
    no_usage: bool = typer.Option(False, "--no-usage", help="never send `usage` (clients must count tokens)"),
    ttft_per_token_ms: float = typer.Option(
        0.0, "--ttft-per-token-ms", help="first token later by this per prompt token"),
    itl_per_running_ms: float = typer.Option(
        0.0, "--itl-per-running-ms", help="each gap longer by this per request in service (a known "
                                          "batch-dependent decode cost, for calibration tests)"),
) -> None:
    """Serve fake completions whose timing is exactly known, to check a load generator."""
    from mock.server import MockConfigError, MockTiming, serve_mock

    if not 0 < port < 65536:
        raise BadInput(f"--port must be in 1..65535, got {port}")
    try:
        timing = MockTiming(ttft_ms, itl_ms, capacity or None, jitter_ms, seed, not no_usage,
                            ttft_per_token_ms, itl_per_running_ms)
    except MockConfigError as exc:
        raise BadInput(str(exc)) from None
    cap = capacity or "unlimited"
    print(f"mock server on http://{host}:{port}/v1  T={ttft_ms:g} ms  I={itl_ms:g} ms  "
          f"capacity={cap}  jitter={jitter_ms:g} ms", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_mock(timing, host, port, model))
