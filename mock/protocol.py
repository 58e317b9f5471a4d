"""A minimal HTTP/1.1 server protocol for the mock server: keep-alive, Content-Length bodies,
chunked streaming responses. Raw asyncio, not a framework: a framework's per-request and
per-chunk cost (~0.3 ms and ~20 us in aiohttp.web) would itself be the bottleneck at the
1,000 streaming req/s the load generator is checked against on a 2-core machine.

Requests on one connection are answered in order, one at a time (clients do not pipeline
streams, but a pipelined request is buffered until the one before it has been answered).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           411: "Length Required", 413: "Payload Too Large", 431: "Request Header Fields Too Large"}


@dataclass(frozen=True)
class HttpRequest:
    """One parsed request."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


def response_head(status: int, content_type: str, length: int | None) -> bytes:
    """Status line and headers; `length` None means a chunked (streamed) body."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}\r\nContent-Type: {content_type}\r\n"
            f"{framing}\r\nCache-Control: no-cache\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, path, headers) from the bytes before the blank line; ValueError if malformed."""
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"malformed header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return method.upper(), path.split("?", 1)[0], headers


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests and hands each to `handler(request, conn)`.

    The handler answers with `write()` calls and ends the response with `finish()`; the next
    buffered request is dispatched then. `on_lost` callbacks run if the client goes away.
    """

    def __init__(self, handler: Callable[[HttpRequest, HttpConnection], None]) -> None:
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.is_busy = False
        self.on_lost: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.on_lost is not None:
            self.on_lost()
            self.on_lost = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.is_busy:
            self._next()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def finish(self) -> None:
        """The current response is complete: serve the next buffered request, if any."""
        self.is_busy, self.on_lost = False, None
        if self.buf and self.transport is not None:
            self._next()

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        """A whole response with a Content-Length body; ends the response."""
        self.write(response_head(status, content_type, len(body)) + body)
        self.finish()

    def _next(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD_BYTES:
                self._refuse(431, "request head too large")
            return
        try:
            method, path, headers = parse_head(self.buf[:end])
            length = int(headers.get("content-length", "0"))
        except ValueError as exc:
            self._refuse(400, f"malformed request: {exc}")
            return
        if "chunked" in headers.get("transfer-encoding", ""):
            self._refuse(411, "chunked request bodies are not supported; send Content-Length")
            return
        if length > MAX_BODY_BYTES:
            self._refuse(413, "request body too large")
            return
        if len(self.buf) < end + 4 + length:
            return  # the body is still arriving
        body, self.buf = self.buf[end + 4 : end + 4 + length], self.buf[end + 4 + length :]
        self.is_busy = True
        self.handler(HttpRequest(method, path, headers, body), self)

    def _refuse(self, status: int, message: str) -> None:
        # The stream's framing is lost: answer once and close the connection.
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
        self.write(response_head(status, "application/json", len(body)) + body)
        if self.transport is not None:
            self.transport.close()
