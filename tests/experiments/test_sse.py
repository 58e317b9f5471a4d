"""The SSE scan (hot path) and token times from chunk times: pure functions."""

from experiments.load.sse import (
    DONE,
    PARSE,
    SKIP,
    TOKEN,
    apportion,
    chunk_text_and_reason,
    classify,
    split_events,
    sse_data,
    token_times,
)


def test_token_times_from_chunks() -> None:
    assert token_times([1.0, 2.0, 3.0], 3) == [1.0, 2.0, 3.0]
    assert token_times([1.0, 2.0, 3.0], 2) == [1.0, 2.0]  # a trailing finish-only chunk
    assert token_times([1.0, 2.0], 5) == [1.0, 2.0, 2.0, 2.0, 2.0]  # unknown split: the last
    assert token_times([1.0, 2.0], 5, weights=[3, 2]) == [1.0, 1.0, 1.0, 2.0, 2.0]


def test_apportion_sums_exactly() -> None:
    assert apportion(10, [1, 1, 1]) == [1, 1, 8]
    for weights in ([3, 5, 2], [7, 1, 1, 4], [2, 2, 2]):
        counts = apportion(17, weights)
        assert sum(counts) == 17 and min(counts) >= 1


def test_sse_data_payloads() -> None:
    assert sse_data(b'data: {"a": 1}') == b'{"a": 1}'
    assert sse_data(b": keep-alive comment") == b""
    assert sse_data(b"event: message\ndata: [DONE]") == b"[DONE]"


def test_split_events_keeps_the_incomplete_rest() -> None:
    events, rest = split_events(b"data: 1\n\ndata: 2", b"\n\ndata: 3")
    assert events == [b"data: 1", b"data: 2"] and rest == b"data: 3"
    assert split_events(b"", b"data: x\r\n\r\n") == ([b"data: x"], b"")


def test_classify_scans_bytes_and_parses_only_what_it_must() -> None:
    token = b'{"choices":[{"index":0,"text":"say \\"error\\"","finish_reason":null}],"usage":null}'
    assert classify(token) == TOKEN  # escaped quotes in text and a null usage stay on the fast path
    assert classify(b'{"choices":[],"usage":{"completion_tokens":3}}') == PARSE
    assert classify(b'{"choices": [], "usage": {"completion_tokens": 3}}') == PARSE
    assert classify(b'{"error":{"message":"boom"}}') == PARSE
    assert classify(b"[DONE]") == DONE and classify(b"") == SKIP


def test_chunk_text_and_reason_for_completions_and_chat() -> None:
    assert chunk_text_and_reason(b'{"choices":[{"text":"ab","finish_reason":"length"}]}') == ("ab", "length")
    assert chunk_text_and_reason(b'{"choices":[{"delta":{"content":"c"}}]}') == ("c", None)
