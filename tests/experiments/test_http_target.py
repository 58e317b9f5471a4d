"""HttpTarget against real servers on loopback: `tradeoff serve`, and a stub with odd habits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from engine.config import EngineConfig, SchedulerConfig
from engine.engine import Engine
from engine.factory import start_engine
from engine.models import build_byte_tokenizer
from experiments.load.loadgen import run_closed_loop
from experiments.load.workload import RequestSpec
from experiments.targets.http_target import HttpTarget, api_base, server_root, wait_for_health
from server.api import BackgroundServer, create_app

pytestmark = pytest.mark.slow  # loads builtin:tiny once for the module

MODEL = "builtin:tiny"
PROMPT = [72, 101, 108, 108, 111, 32, 119]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Engine]]:
    engine, loaded = start_engine(EngineConfig(model=MODEL), SchedulerConfig(max_batch_size=8))
    with BackgroundServer(create_app(engine, loaded, MODEL)) as base_url:
        yield base_url + "/v1", engine
    engine.close()


# -- against tradeoff's own server ---------------------------------------------------------------


def test_drives_the_load_generator_like_the_engine(served: tuple[str, Engine]) -> None:
    specs = [RequestSpec(PROMPT, n) for n in (3, 5, 2, 4, 3, 6)]
    with HttpTarget(served[0]) as target:
        assert target.model == MODEL  # resolved from /v1/models
        result = run_closed_loop(target, specs, concurrency=3, num_warmup=2)
    assert not result.was_cut and len(result.records) == 4
    assert [r.request_id for r in result.background][:2] == [0, 1]  # warm-up, then cooldown
    for rec, spec in zip(result.records, specs[2:], strict=True):
        assert rec.is_ok and rec.num_output_tokens == spec.max_new_tokens
        assert rec.num_prompt_tokens == len(PROMPT) and rec.admitted_s is None
        assert rec.scheduled_s <= rec.sent_s < rec.token_times_s[0] <= rec.done_s
        assert list(rec.token_times_s) == sorted(rec.token_times_s)
    # Cooldown requests end when the client hangs up; the server frees them at its next step.
    freed_by = time.monotonic() + 10
    while served[1].num_running and time.monotonic() < freed_by:
        time.sleep(0.02)
    assert served[1].num_running == 0


def test_server_errors_fail_the_request_with_the_message(served: tuple[str, Engine]) -> None:
    with HttpTarget(served[0]) as target:
        result = run_closed_loop(target, [RequestSpec([65] * 5000, 4)], concurrency=1, num_warmup=0)
    [rec] = result.records
    assert not rec.is_ok and "HTTP 400" in rec.error and "context length" in rec.error


# -- against a stub server that refuses token ids and sends two tokens per chunk, no usage -------


@pytest.fixture(scope="module")
def stub() -> Iterator[tuple[str, list[dict]]]:
    seen: list[dict] = []
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("authorization")})
        if not isinstance(body["prompt"], str):
            return JSONResponse({"error": {"message": "prompt must be a string"}}, 400)
        return StreamingResponse(_two_chunks(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "stub-model"}]}

    with BackgroundServer(app) as base_url:
        yield base_url, seen


async def _two_chunks() -> Any:
    for text, reason in (("ab", None), ("cd", "length")):
        choice = {"index": 0, "text": text, "finish_reason": reason}
        yield f"data: {json.dumps({'choices': [choice]})}\n\n"
        await asyncio.sleep(0.2)  # two reads, two arrival times, even on a loaded machine
    yield "data: [DONE]\n\n"


def test_falls_back_to_text_prompts_and_counts_tokens_with_the_tokenizer(stub: tuple) -> None:
    base_url, seen = stub
    tokenizer = build_byte_tokenizer()
    with HttpTarget(base_url, api_key="sk-secret", tokenizer=tokenizer) as target:
        assert target.model == "stub-model"
        result = run_closed_loop(target, [RequestSpec(PROMPT, 4)], concurrency=1, num_warmup=0)
        assert target.is_text_prompt
        assert "sk-secret" not in repr(vars(target))
    [rec] = result.records
    assert rec.is_ok and rec.num_output_tokens == 4
    times = rec.token_times_s
    assert times[0] == times[1] < times[2] == times[3]  # two tokens per chunk
    assert [s["body"]["prompt"] for s in seen[:2]] == [PROMPT, tokenizer.decode(PROMPT)]  # probe, run
    assert seen[-1]["auth"] == "Bearer sk-secret"
    assert seen[-1]["body"]["ignore_eos"] is True and seen[-1]["body"]["min_tokens"] == 4
    assert seen[-1]["body"]["stream_options"] == {"include_usage": True}


# -- pure helpers --------------------------------------------------------------------------------


def test_urls() -> None:
    assert api_base("http://h:1") == api_base("http://h:1/") == "http://h:1/v1"
    assert api_base("http://h:1/v1/") == "http://h:1/v1"
    assert server_root("http://h:1/v1") == "http://h:1"


def test_wait_for_health(served: tuple, stub: tuple) -> None:
    wait_for_health(served[0], timeout_s=5)
    wait_for_health(stub[0], timeout_s=5)  # no /health: falls back to /v1/models
    with pytest.raises(TimeoutError, match="not healthy"):
        wait_for_health("http://127.0.0.1:9", timeout_s=0.3, interval_s=0.05)
    with pytest.raises(RuntimeError, match="exited"):
        wait_for_health("http://127.0.0.1:9", timeout_s=5, is_alive=lambda: False)
