"""The mock server: exact token schedule (pure), and the OpenAI surface over real HTTP."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator

import pytest

from experiments.targets.external import free_port
from experiments.targets.http_target import wait_for_health
from mock.server import MockConfigError, MockTiming, parse_ask, token_offsets_s


def test_token_schedule_is_t_then_every_i() -> None:
    offsets = token_offsets_s(MockTiming(ttft_ms=5, itl_ms=2), 4, random.Random(0))
    assert offsets == pytest.approx([0.005, 0.007, 0.009, 0.011])
    assert MockTiming(5, 2).service_s(4) == pytest.approx(0.011)


def test_jitter_stays_within_its_bounds_and_never_goes_back() -> None:
    offsets = token_offsets_s(MockTiming(5, 2, jitter_ms=3), 200, random.Random(1))
    gaps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    assert gaps[0] <= 0.008 and all(0 <= g <= 0.005 + 1e-12 for g in gaps[1:])
    assert len(set(gaps)) > 100  # really jittered


@pytest.mark.parametrize("kwargs", [{"ttft_ms": -1, "itl_ms": 1}, {"ttft_ms": 1, "itl_ms": float("nan")},
                                    {"ttft_ms": 1, "itl_ms": 1, "capacity": 0}])
def test_bad_timing_is_refused(kwargs: dict) -> None:
    with pytest.raises(MockConfigError):
        MockTiming(**kwargs)


def test_parse_ask() -> None:
    ask = parse_ask("/v1/completions", b'{"prompt": [1, 2, 3], "max_tokens": 7, "stream": true,'
                                        b' "stream_options": {"include_usage": true}}')
    assert (ask.num_tokens, ask.num_prompt_tokens, ask.is_stream, ask.include_usage) == (7, 3, True, True)
    chat = parse_ask("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hey"}]}')
    assert chat.is_chat and chat.num_tokens == 16 and chat.num_prompt_tokens == 3
    for bad in (b"nope", b'{"prompt": [1], "max_tokens": 0}', b'{"prompt": {"a": 1}}'):
        with pytest.raises(ValueError):
            parse_ask("/v1/completions", bad)


# -- over real HTTP: the CLI's server process, the openai SDK as a client -----------------------


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "mock-server", "--ttft-ms", "20",
                             "--itl-ms", "5", "--capacity", "2", "--port", str(port)],
                            stdout=subprocess.DEVNULL)
    try:
        wait_for_health(f"http://127.0.0.1:{port}/v1", 30, is_alive=lambda: proc.poll() is None)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


def test_openai_sdk_streams_completions_and_chat_with_usage(mock_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=mock_url, api_key="unused")
    assert [m.id for m in client.models.list().data] == ["mock"]
    chunks = list(client.completions.create(model="mock", prompt=[1, 2], max_tokens=5, stream=True,
                                            stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert texts == list("abcde") and chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    chat = list(client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=3, stream=True))
    assert "".join(c.choices[0].delta.content for c in chat) == "abc" and chat[0].usage is None
    whole = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4)
    assert whole.choices[0].message.content == "abcd" and whole.usage.total_tokens == 6


def test_errors_and_health(mock_url: str) -> None:
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(mock_url.removesuffix("/v1") + "/health") as resp:
        assert resp.status == 200
    req = urllib.request.Request(f"{mock_url}/completions", b'{"prompt": [1], "max_tokens": -3}',
                                 {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 400 and "max_tokens" in json.loads(err.value.read())["error"]["message"]


def test_capacity_is_never_exceeded(mock_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    client = OpenAI(base_url=mock_url, api_key="unused")
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: client.completions.create(model="mock", prompt=[1], max_tokens=3),
                      range(12)))
    import urllib.request

    with urllib.request.urlopen(f"{mock_url}/mock/stats") as resp:
        stats = json.loads(resp.read())
    assert stats["max_in_service"] == 2 and stats["queued"] == 0 and stats["is_precise"]


def test_cli_refuses_bad_timing() -> None:
    proc = subprocess.run([sys.executable, "-m", "app.cli", "mock-server", "--ttft-ms", "-1",
                           "--itl-ms", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--ttft-ms must be >= 0" in proc.stderr
