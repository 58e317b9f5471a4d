"""HttpTarget: the load generator's Engine interface over streaming HTTP, on loopback."""

from __future__ import annotations

import json
import threading
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
from engine.sequence import SamplingParams, SeqStatus, Sequence
from engine.server import BackgroundServer, create_app
from experiments.http_target import (
    HttpTarget,
    _sse_data,
    api_base,
    apportion,
    server_root,
    token_times,
    wait_for_health,
)
from experiments.loadgen import RequestSpec, run_closed_loop

pytestmark = pytest.mark.slow  # loads builtin:tiny once for the module

MODEL = "builtin:tiny"
PROMPT = [72, 101, 108, 108, 111, 32, 119]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Engine]]:
    engine, loaded = start_engine(EngineConfig(model=MODEL), SchedulerConfig(max_batch_size=8))
    with BackgroundServer(create_app(engine, loaded, MODEL)) as base_url:
        yield base_url + "/v1", engine
    engine.close()


@pytest.fixture()
def target(served: tuple[str, Engine]) -> Iterator[HttpTarget]:
    with HttpTarget(served[0]) as t:
        yield t


class Finishes:
    """Collects on_finish calls; `wait(n)` blocks until n requests have finished."""

    def __init__(self) -> None:
        self.seqs: list[Sequence] = []
        self.cond = threading.Condition()

    def __call__(self, seq: Sequence) -> None:
        with self.cond:
            self.seqs.append(seq)
            self.cond.notify_all()

    def wait(self, n: int, timeout_s: float = 30.0) -> list[Sequence]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.seqs) >= n, timeout_s)
            return list(self.seqs)


def wait_for(predicate: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- against tradeoff's own server ---------------------------------------------------------------


def test_fills_timelines_like_the_engine(target: HttpTarget) -> None:
    assert target.model == MODEL  # resolved from /v1/models
    finishes, num_tokens_seen = Finishes(), []
    scheduled_s = target.now() - 0.005  # sent late: latency still counts from the schedule
    for _ in range(4):
        target.submit(PROMPT, SamplingParams(max_new_tokens=6, ignore_eos=True), scheduled_s,
                      on_token=lambda s: num_tokens_seen.append(s.num_output_tokens),
                      on_finish=finishes)
    for seq in finishes.wait(4):
        assert seq.status is SeqStatus.FINISHED and seq.finish_reason == "length"
        assert seq.error is None and seq.admitted_s is None
        assert seq.num_output_tokens == 6 and len(seq.token_times_s) == 6
        assert seq.scheduled_s == scheduled_s < seq.sent_s < seq.token_times_s[0]
        assert seq.token_times_s == sorted(seq.token_times_s) and seq.token_times_s[-1] <= seq.done_s
        assert seq.first_token_s - seq.scheduled_s > 0  # TTFT
    assert sorted(num_tokens_seen) == sorted(list(range(1, 7)) * 4)
    assert target.num_waiting == target.num_running == 0
    assert target.take_steps() == []


def test_cancel_mid_stream_frees_the_server_slot(target: HttpTarget, served: tuple) -> None:
    finishes, first_token = Finishes(), threading.Event()
    seq = target.submit(PROMPT, SamplingParams(max_new_tokens=3000, ignore_eos=True),
                        on_token=lambda s: first_token.set(), on_finish=finishes)
    assert first_token.wait(30) and target.num_running == 1 and target.num_waiting == 0
    target.cancel(seq)
    [done] = finishes.wait(1)
    assert done is seq and seq.status is SeqStatus.FAILED and seq.finish_reason == "cancelled"
    assert wait_for(lambda: served[1].num_running == 0, timeout_s=3.0)
    assert target.num_running == 0


def test_cancel_right_after_submit_still_finishes(target: HttpTarget) -> None:
    finishes = Finishes()
    for _ in range(20):  # cancelled before its task first runs: must still call on_finish
        target.cancel(target.submit(PROMPT, SamplingParams(max_new_tokens=50),
                                    on_finish=finishes))
    assert {s.finish_reason for s in finishes.wait(20)} == {"cancelled"}
    assert wait_for(lambda: target.num_waiting == target.num_running == 0)


def test_server_errors_fail_the_request_with_the_message(target: HttpTarget) -> None:
    finishes = Finishes()
    target.submit([65] * 5000, SamplingParams(max_new_tokens=4), on_finish=finishes)
    [seq] = finishes.wait(1)
    assert seq.status is SeqStatus.FAILED and seq.finish_reason == "error"
    assert "HTTP 400" in seq.error and "context length" in seq.error
    assert target.num_waiting == 0


def test_drives_the_load_generator(target: HttpTarget) -> None:
    specs = [RequestSpec(PROMPT, n) for n in (3, 5, 2, 4, 3, 6)]
    result = run_closed_loop(target, specs, concurrency=3, num_warmup=2)
    assert not result.was_cut and len(result.records) == 4
    for rec, spec in zip(result.records, specs[2:], strict=True):
        assert rec.is_ok and rec.num_output_tokens == spec.max_new_tokens
        assert rec.num_prompt_tokens == len(PROMPT) and rec.admitted_s is None


def test_close_cancels_what_is_in_flight(served: tuple) -> None:
    finishes = Finishes()
    target = HttpTarget(served[0], model=MODEL)
    target.submit(PROMPT, SamplingParams(max_new_tokens=3000, ignore_eos=True), on_finish=finishes)
    assert wait_for(lambda: target.num_running == 1, timeout_s=30)
    target.close()
    [seq] = finishes.wait(1)
    assert seq.finish_reason == "cancelled"
    assert wait_for(lambda: served[1].num_running == 0, timeout_s=3.0)


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
    yield "data: [DONE]\n\n"


def test_falls_back_to_text_prompts_and_counts_tokens_with_the_tokenizer(stub: tuple) -> None:
    base_url, seen = stub
    tokenizer, finishes = build_byte_tokenizer(), Finishes()
    with HttpTarget(base_url, api_key="sk-secret", tokenizer=tokenizer) as target:
        assert target.model == "stub-model"
        target.submit(PROMPT, SamplingParams(max_new_tokens=4, ignore_eos=True), on_finish=finishes)
        [seq] = finishes.wait(1)
        assert target.is_text_prompt
        assert "sk-secret" not in repr(vars(target))
    assert seq.status is SeqStatus.FINISHED and seq.num_output_tokens == 4
    times = seq.token_times_s
    assert times[0] == times[1] < times[2] == times[3]  # two tokens per chunk
    assert [s["body"]["prompt"] for s in seen[-2:]] == [PROMPT, tokenizer.decode(PROMPT)]
    assert seen[-1]["auth"] == "Bearer sk-secret"
    assert seen[-1]["body"]["ignore_eos"] is True and seen[-1]["body"]["min_tokens"] == 4
    assert seen[-1]["body"]["stream_options"] == {"include_usage": True}


# -- pure helpers --------------------------------------------------------------------------------


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
    assert _sse_data(b'data: {"a": 1}') == b'{"a": 1}'
    assert _sse_data(b": keep-alive comment") == b""
    assert _sse_data(b"event: message\ndata: [DONE]") == b"[DONE]"


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
