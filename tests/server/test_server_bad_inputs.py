"""Bad HTTP bodies against `tradeoff serve` (issue 13): each gets a 4xx OpenAI error object whose
one-line message names the field, no traceback, and nothing reaches the engine.

A real Engine on builtin:tiny behind uvicorn on loopback, as in test_server.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engine.config import EngineConfig, SchedulerConfig
from engine.factory import start_engine
from server.api import BackgroundServer, create_app

pytestmark = pytest.mark.slow  # loads builtin:tiny once for the module

MODEL = "builtin:tiny"
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"


def chat(*messages: Any, **fields: Any) -> bytes:
    return json.dumps({"messages": list(messages), **fields}).encode()


def completion(**fields: Any) -> bytes:
    return json.dumps({"prompt": "Hi", **fields}).encode()


USER = {"role": "user", "content": "Hi"}

# id -> (path, raw body, status, the param the error names, text the message must contain)
CASES: dict[str, tuple[str, bytes, int, str | None, str]] = {
    # malformed JSON
    "truncated": (COMPLETIONS, b'{"prompt": "x", ', 400, None, "malformed JSON"),
    "trailing garbage": (COMPLETIONS, b'{"prompt": "x"} }', 400, None, "malformed JSON"),
    "not json": (COMPLETIONS, b"hello", 400, None, "malformed JSON"),
    "empty body": (COMPLETIONS, b"", 400, None, "JSON"),
    "not utf-8": (COMPLETIONS, b'{"prompt": "\xff\xfe"}', 400, None, "JSON"),
    "array body": (COMPLETIONS, b"[1, 2]", 400, None, "JSON object"),
    "string body": (CHAT, b'"hi"', 400, None, "JSON object"),
    "null body": (CHAT, b"null", 400, None, "JSON object"),
    # wrong types
    "max_tokens string": (COMPLETIONS, completion(max_tokens="5"), 400, "max_tokens", "max_tokens"),
    "max_tokens float": (COMPLETIONS, completion(max_tokens=2.5), 400, "max_tokens", "max_tokens"),
    "temperature string": (COMPLETIONS, completion(temperature="hot"), 400, "temperature",
                           "temperature"),
    "top_p string": (COMPLETIONS, completion(top_p="1"), 400, "top_p", "top_p"),
    "stream string": (COMPLETIONS, completion(stream="yes"), 400, "stream", "stream"),
    "ignore_eos string": (COMPLETIONS, completion(ignore_eos="true"), 400, "ignore_eos",
                          "ignore_eos"),
    "seed string": (COMPLETIONS, completion(seed="1"), 400, "seed", "seed"),
    "stop number": (COMPLETIONS, completion(stop=5), 400, "stop", "'stop'"),
    "stop list of numbers": (COMPLETIONS, completion(stop=[5]), 400, "stop", "stop[0]"),
    "model number": (COMPLETIONS, completion(model=5), 400, "model", "model"),
    "prompt number": (COMPLETIONS, b'{"prompt": 5}', 400, "prompt", "prompt"),
    "prompt object": (COMPLETIONS, b'{"prompt": {"a": 1}}', 400, "prompt", "prompt"),
    "messages string": (CHAT, b'{"messages": "hi"}', 400, "messages", "messages"),
    "content number": (CHAT, chat({"role": "user", "content": 5}), 400, "messages",
                       "messages[0].content"),
    "content part type": (CHAT, chat({"role": "user", "content": [{"type": "image", "text": "x"}]}),
                          400, "messages", "messages[0].content[0].type"),
    # absurd values
    "max_tokens huge": (COMPLETIONS, completion(max_tokens=10**9), 400, "max_tokens",
                        "context length"),
    "max_tokens negative": (COMPLETIONS, completion(max_tokens=-1), 400, "max_tokens", "max_tokens"),
    "max_tokens zero": (COMPLETIONS, completion(max_tokens=0), 400, "max_tokens", "max_tokens"),
    "temperature negative": (COMPLETIONS, completion(temperature=-1), 400, "temperature",
                             "temperature"),
    "temperature overflow": (COMPLETIONS, b'{"prompt": "x", "temperature": 1e999}', 400,
                             "temperature", "finite"),
    "temperature nan": (COMPLETIONS, b'{"prompt": "x", "temperature": NaN}', 400, "temperature",
                        "temperature"),
    "top_p zero": (COMPLETIONS, completion(top_p=0), 400, "top_p", "top_p"),
    "top_p over 1": (COMPLETIONS, completion(top_p=1.5), 400, "top_p", "top_p"),
    "seed huge": (COMPLETIONS, b'{"prompt": "x", "seed": 1e30}', 400, "seed", "seed"),
    "n 2": (COMPLETIONS, completion(n=2), 400, "n", "'n'"),
    "min_tokens over max": (COMPLETIONS, completion(max_tokens=4, min_tokens=9), 400, "min_tokens",
                            "min_tokens"),
    "min_tokens negative": (COMPLETIONS, completion(min_tokens=-1), 400, "min_tokens",
                            "min_tokens"),
    "chat max_completion_tokens 0": (CHAT, chat(USER, max_completion_tokens=0), 400,
                                     "max_completion_tokens", "max_completion_tokens"),
    # oversize prompts (the built-ins' context is far below these)
    "prompt text 1 MB": (COMPLETIONS, completion(prompt="a" * 2**20), 400, "prompt",
                         "context length"),
    "prompt ids 5000": (COMPLETIONS, completion(prompt=[65] * 5000), 400, "prompt",
                        "context length"),
    "chat message 100k": (CHAT, chat({"role": "user", "content": "a" * 100_000}), 400, "prompt",
                          "context length"),
    "body over 32 MiB": (COMPLETIONS, completion(prompt="a" * (33 * 2**20)), 413, None, "32 MiB"),
    # bad token ids, empty and batched prompts
    "token id negative": (COMPLETIONS, completion(prompt=[1, -1]), 400, "prompt", "token ids"),
    "token id too big": (COMPLETIONS, completion(prompt=[1, 999_999]), 400, "prompt", "token ids"),
    "token id float": (COMPLETIONS, completion(prompt=[1, 1.5]), 400, "prompt", "prompt"),
    "token id bool": (COMPLETIONS, completion(prompt=[True]), 400, "prompt", "prompt"),
    "empty prompt": (COMPLETIONS, completion(prompt=""), 400, "prompt", "empty"),
    "empty prompt in a list": (COMPLETIONS, completion(prompt=[""]), 400, "prompt", "empty"),
    "empty token list": (COMPLETIONS, completion(prompt=[]), 400, "prompt", "empty"),
    "empty nested token list": (COMPLETIONS, completion(prompt=[[]]), 400, "prompt", "empty"),
    "batched prompts": (COMPLETIONS, completion(prompt=["a", "b"]), 400, "prompt", "batched"),
    "missing prompt": (COMPLETIONS, b"{}", 400, "prompt", "'prompt' is required"),
    # unknown model
    "unknown model": (COMPLETIONS, completion(model="no-such-model"), 404, "model",
                      "no-such-model"),
    "unknown model chat": (CHAT, chat(USER, model="gpt-4"), 404, "model", "gpt-4"),
    # bad roles and messages
    "role wizard": (CHAT, chat({"role": "wizard", "content": "x"}), 400, "messages",
                    "system, developer, user, assistant, tool"),
    "role empty": (CHAT, chat({"role": "", "content": "x"}), 400, "messages", "messages[0].role"),
    "role capitalised": (CHAT, chat(USER, {"role": "Assistant", "content": "x"}), 400, "messages",
                         "messages[1].role"),
    "role number": (CHAT, chat({"role": 1, "content": "x"}), 400, "messages", "messages[0].role"),
    "role missing": (CHAT, chat({"content": "no role"}), 400, "messages", "messages[0].role"),
    "no messages": (CHAT, chat(), 400, "messages", "messages"),
    "messages missing": (CHAT, b'{"model": "builtin:tiny"}', 400, "messages", "required"),
    # bad stream options
    "stream_options number": (COMPLETIONS, completion(stream=True, stream_options=5), 400,
                              "stream_options", "stream_options"),
    "stream_options list": (COMPLETIONS, completion(stream=True, stream_options=[]), 400,
                            "stream_options", "stream_options"),
    "include_usage string": (CHAT, chat(USER, stream=True, stream_options={"include_usage": "yes"}),
                             400, "stream_options", "stream_options.include_usage"),
}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Any]]:
    engine, loaded = start_engine(EngineConfig(model=MODEL), SchedulerConfig(max_batch_size=4))
    app = create_app(engine, loaded, MODEL)
    with BackgroundServer(app) as base_url:
        yield base_url, app.state.server
    engine.close()


@pytest.fixture(scope="module")
def client(served: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], timeout=60) as c:
        yield c


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_body_gets_a_one_line_openai_error_and_never_reaches_the_engine(
        case: tuple, client: httpx.Client, served: tuple[str, Any]) -> None:
    path, body, status, param, needle = case
    metrics = served[1].metrics
    rejected, prompt_tokens = metrics.requests["rejected"], metrics.num_prompt_tokens
    resp = client.post(path, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text[:300]
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    message = error["message"]
    assert needle in message and "\n" not in message and "Traceback" not in resp.text
    assert metrics.requests["rejected"] == rejected + 1  # refused at the edge
    assert metrics.num_prompt_tokens == prompt_tokens  # no engine work was queued


def test_there_are_plenty_of_http_cases() -> None:
    assert len(CASES) >= 50


def test_a_valid_request_still_works_after_the_battery(client: httpx.Client) -> None:
    resp = client.post(CHAT, json={"messages": [USER], "max_tokens": 2, "ignore_eos": True})
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 2


class _Upload:
    """A request whose body arrives in chunks with no declared length (chunked encoding)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.headers, self.chunks = {}, chunks

    async def stream(self) -> Any:
        for chunk in self.chunks:
            yield chunk


def test_a_chunked_body_is_cut_off_at_the_limit_not_read_whole() -> None:
    import asyncio

    from server.openai_schema import RequestError
    from server.requests import read_body

    assert asyncio.run(read_body(_Upload([b"ab", b"cd"]), limit=4)) == b"abcd"
    with pytest.raises(RequestError) as exc:
        asyncio.run(read_body(_Upload([b"ab", b"cd", b"e", b"never read"]), limit=4))
    assert exc.value.status == 413 and "5 bytes" in exc.value.message
