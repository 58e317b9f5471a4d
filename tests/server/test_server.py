"""`tradeoff serve` over real HTTP on loopback: a real Engine on builtin:tiny behind uvicorn."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from engine.config import EngineConfig, SchedulerConfig
from engine.engine import Engine
from engine.factory import start_engine
from server.api import BackgroundServer, create_app
from server.stream import Detokenizer, StopFilter

pytestmark = pytest.mark.slow  # loads builtin:tiny once for the module

MODEL = "builtin:tiny"
LONG = 3000  # tokens: a request that is still running when the test acts on it


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Engine, Any]]:
    engine, loaded = start_engine(EngineConfig(model=MODEL), SchedulerConfig(max_batch_size=8))
    with BackgroundServer(create_app(engine, loaded, MODEL)) as base_url:
        yield base_url, engine, loaded
    engine.close()


@pytest.fixture(scope="module")
def client(served: tuple[str, Engine, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], timeout=60) as c:
        yield c


def sse_events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    """POST a streaming request; the `data:` payloads in order ("[DONE]" kept as a string)."""
    with client.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line[len("data: "):] for line in resp.iter_lines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def wait_for(predicate: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- completions ---------------------------------------------------------------------------------


def test_completion_non_streaming(client: httpx.Client, served: tuple) -> None:
    loaded = served[2]
    resp = client.post("/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 5,
                                                "ignore_eos": True, "temperature": 0})
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "text_completion" and body["model"] == MODEL
    assert body["choices"][0]["finish_reason"] == "length"
    num_prompt = len(loaded.encode("Hello"))
    assert body["usage"] == {"prompt_tokens": num_prompt, "completion_tokens": 5,
                             "total_tokens": num_prompt + 5,
                             "prompt_tokens_details": {"cached_tokens": 0}}  # caching is off


def test_completion_stream_sends_a_chunk_per_token_then_usage_and_done(
        client: httpx.Client) -> None:
    body = {"prompt": [72, 101, 108, 108, 111], "max_tokens": 7, "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    events = sse_events(client, "/v1/completions", body)
    assert events[-1] == "[DONE]"
    tokens, usage = events[:-2], events[-2]
    assert len(tokens) == 7
    assert [e["choices"][0]["finish_reason"] for e in tokens] == [None] * 6 + ["length"]
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 0}}
    streamed = "".join(e["choices"][0]["text"] for e in tokens)
    whole = client.post("/v1/completions", json={**body, "stream": False}).json()
    assert streamed == whole["choices"][0]["text"]  # greedy: same text both ways


def test_stream_without_include_usage_has_no_usage_chunk(client: httpx.Client) -> None:
    events = sse_events(client, "/v1/completions",
                        {"prompt": "a", "max_tokens": 3, "ignore_eos": True, "stream": True})
    assert events[-1] == "[DONE]" and len(events) == 4
    assert all(e["choices"] and "usage" not in e for e in events[:-1])


def test_stop_string_cuts_text_and_frees_the_request(client: httpx.Client,
                                                     served: tuple) -> None:
    base = {"prompt": "Hello", "max_tokens": 16, "ignore_eos": True, "temperature": 0}
    text = client.post("/v1/completions", json=base).json()["choices"][0]["text"]
    stop = next(ch for ch in text[2:] if ch != "\ufffd")
    expected = text[: text.index(stop)]
    whole = client.post("/v1/completions", json={**base, "stop": [stop]}).json()
    assert whole["choices"][0] == {"index": 0, "logprobs": None, "finish_reason": "stop",
                                   "text": expected}
    events = sse_events(client, "/v1/completions", {**base, "stop": stop, "stream": True})
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == expected
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert wait_for(lambda: served[1].num_running == 0)


# -- chat ----------------------------------------------------------------------------------------


def test_chat_non_streaming_and_streaming(client: httpx.Client) -> None:
    body = {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hi"}],
            "max_tokens": 4, "ignore_eos": True, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=body).json()
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"]["role"] == "assistant"
    assert whole["usage"]["completion_tokens"] == 4
    events = sse_events(client, "/v1/chat/completions",
                        {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1] == "[DONE]" and events[-2]["usage"] == whole["usage"]
    deltas = [e["choices"][0]["delta"]["content"] for e in events[1:-2]]
    assert len(deltas) == 4 and "".join(deltas) == whole["choices"][0]["message"]["content"]


def test_openai_client_works_unchanged(served: tuple) -> None:
    client = openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]
    done = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3,
                                     extra_body={"ignore_eos": True})
    assert done.usage.completion_tokens == 3 and done.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert len([c for c in chunks if c.choices]) == 3 and chunks[-1].usage.completion_tokens == 3
    messages = [{"role": "user", "content": "Hi"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 3
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3,
                                            stream=True, extra_body={"ignore_eos": True})
    assert len([c for c in stream if c.choices and c.choices[0].delta.content is not None]) == 4


# -- bad requests --------------------------------------------------------------------------------

BAD_REQUESTS = [
    ("/v1/completions", b'{"prompt": "x", ', 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", b"{}", 400, "prompt"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": -1}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 1000000000}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": "5"}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": 5}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": []}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": [1, 999999]}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": ["a", "b"]}', 400, "prompt"),
    ("/v1/completions", json.dumps({"prompt": [65] * 5000}).encode(), 400, "prompt"),
    ("/v1/completions", b'{"prompt": "x", "model": "no-such-model"}', 404, "model"),
    ("/v1/completions", b'{"prompt": "x", "temperature": "hot"}', 400, "temperature"),
    ("/v1/completions", b'{"prompt": "x", "stream": "yes"}', 400, "stream"),
    ("/v1/completions", b'{"prompt": "x", "n": 2}', 400, "n"),
    ("/v1/completions", b'{"prompt": "x", "seed": 1e30}', 400, "seed"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 4, "min_tokens": 9}', 400, "min_tokens"),
    ("/v1/chat/completions", b'{"model": "builtin:tiny"}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": []}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": [{"content": "no role"}]}', 400, "messages"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD_REQUESTS)
def test_bad_requests_get_openai_errors(client: httpx.Client, path: str, body: bytes,
                                        status: int, param: str | None) -> None:
    resp = client.post(path, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == status
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param


def test_bad_requests_do_not_disturb_a_running_stream(client: httpx.Client) -> None:
    body = {"prompt": "x", "max_tokens": 40, "ignore_eos": True, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as resp:
        lines = resp.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        for path, bad, status, _ in BAD_REQUESTS[:6]:
            assert client.post(path, content=bad).status_code == status
        rest = [line for line in lines if line.startswith("data: ")]
    assert len(rest) == 40  # 39 more tokens, then [DONE]
    assert client.get("/health").json() == {"status": "ok"}


def test_unknown_route_is_an_openai_error(client: httpx.Client) -> None:
    resp = client.get("/v1/nope")
    assert resp.status_code == 404 and "error" in resp.json()


# -- disconnects ---------------------------------------------------------------------------------


def _raw_post(base_url: str, body: dict[str, Any]) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_frees_its_batch_slot(served: tuple, stream: bool) -> None:
    base_url, engine, _ = served
    assert wait_for(lambda: engine.num_running == 0)
    with _raw_post(base_url, {"prompt": "x", "max_tokens": LONG, "ignore_eos": True,
                              "stream": stream}) as sock:
        assert wait_for(lambda: engine.num_running == 1)
        received = b""
        while stream and b"data: " not in received:  # a token reached us: mid-stream
            received += sock.recv(65536)
    assert wait_for(lambda: engine.num_running == 0, timeout_s=3.0)


# -- models, health, metrics ---------------------------------------------------------------------

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? '
                    r"(-?[0-9.e+-]+|\+Inf|NaN)$")


def test_models_and_health(client: httpx.Client) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]
    assert client.get("/health").status_code == 200


def test_metrics_are_prometheus_text(client: httpx.Client) -> None:
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    resp = client.get("/metrics")
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = resp.text.splitlines()
    assert all(SAMPLE.match(line) or line.startswith("# ") for line in lines), lines
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in lines if not line.startswith("#")}
    assert values['tradeoff_requests_total{status="finished"}'] >= 1
    assert values["tradeoff_generation_tokens_total"] >= 2
    assert "tradeoff_num_requests_running" in values and "tradeoff_num_requests_waiting" in values
    for hist in ("tradeoff_time_to_first_token_seconds", "tradeoff_e2e_request_latency_seconds"):
        assert "# TYPE " + hist + " histogram" in lines
        assert values[hist + '_bucket{le="+Inf"}'] == values[hist + "_count"] >= 1


# -- text helpers (pure) -------------------------------------------------------------------------


def test_stop_filter_holds_back_a_possible_stop_prefix() -> None:
    stop = StopFilter(["bcd"])
    assert stop.feed("ab") == "a"  # "b" may start "bcd"
    assert stop.feed("c") == ""
    assert stop.feed("x") == "bcx"  # not a stop after all
    assert stop.feed("abcdz") == "a" and stop.is_hit


def test_detokenizer_never_splits_a_multibyte_character(served: tuple) -> None:
    loaded = served[2]
    ids = loaded.encode("é€!")[1:]  # byte tokens, BOS dropped
    detok = Detokenizer(loaded.decode, [])
    assert [detok.add(i) for i in ids] == ["", "é", "", "", "€", "!"]
