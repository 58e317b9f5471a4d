"""Server-sent events of OpenAI-compatible streams: a cheap scan for the hot path, full parsing
only for the few events that need it, and token times from chunk times (pure functions)."""

from __future__ import annotations

import json
from typing import Any

# What one event is, from a byte scan (no JSON parsing for ordinary token chunks).
TOKEN, DONE, PARSE, SKIP = range(4)


def split_events(pending: bytes, data: bytes) -> tuple[list[bytes], bytes]:
    """Complete events in `pending + data`, and the incomplete rest."""
    buf = pending + data if pending else data
    if b"\r" in buf:
        buf = buf.replace(b"\r\n", b"\n")
    *events, rest = buf.split(b"\n\n")
    return events, rest


def sse_data(event: bytes) -> bytes:
    """The `data:` payload of one SSE event (b"" for comments and other fields)."""
    if event.startswith(b"data: ") and b"\n" not in event:  # the usual one-line event
        return event[6:]
    lines = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)


def classify(payload: bytes) -> int:
    """TOKEN for an ordinary chunk, DONE, SKIP for nothing, PARSE when only JSON can tell."""
    # A `usage` object, an `error`, or an empty choice list need parsing; `"usage": null` (sent
    # in every chunk by some servers) does not. Escaped quotes in token text never match.
    if not payload:
        return SKIP
    if payload == b"[DONE]":
        return DONE
    if b'"error"' in payload or b'"choices":[]' in payload or b'"choices": []' in payload:
        return PARSE
    at = payload.find(b'"usage"')
    if at >= 0 and payload[at + 7 : at + 12].lstrip(b": ")[:1] == b"{":
        return PARSE
    return TOKEN


def parse_event(payload: bytes) -> dict[str, Any]:
    """A PARSE event as a dict; ValueError if it is not a JSON object."""
    event = json.loads(payload)
    if not isinstance(event, dict):
        raise ValueError(f"stream event is not a JSON object: {payload[:200]!r}")
    return event


def event_error(event: dict[str, Any]) -> str | None:
    """The server's error message carried by an event, if any."""
    if "error" not in event:
        return None
    error = event["error"]
    return str(error.get("message", error) if isinstance(error, dict) else error)


def has_choice(event: dict[str, Any]) -> bool:
    return bool(event.get("choices"))


def completion_tokens(event: dict[str, Any]) -> int | None:
    usage = event.get("usage")
    return usage.get("completion_tokens") if isinstance(usage, dict) else None


def chunk_text_and_reason(payload: bytes) -> tuple[str, str | None]:
    """(text, finish_reason) of a token chunk (completions `text` or chat `delta.content`)."""
    choices = json.loads(payload).get("choices") or [{}]
    choice = choices[0]
    text = choice.get("text")
    if text is None:
        text = (choice.get("delta") or {}).get("content")
    return text or "", choice.get("finish_reason")


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
