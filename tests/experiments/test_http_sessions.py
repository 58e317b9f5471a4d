"""Sessions over HTTP: the usage fields a worker reads, records from session raws, and whole
conversations against the mock server (which counts a text prompt's bytes as its tokens)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from common.records import TrialConfig
from engine.models import build_byte_tokenizer
from experiments.load.http_client import prompt_usage
from experiments.load.http_records import to_record
from experiments.load.session_loadgen import run_sessions
from experiments.load.sessions import session_load
from experiments.spec.profiles import parse_profile_yaml
from experiments.targets.external import ServerProcess
from experiments.targets.http_target import HttpTarget

ANY = TrialConfig("continuous", 1, 0.0, concurrency=1)  # the mock ignores server knobs
PROFILE = """\
name: s
prompt_tokens: {kind: fixed, value: 6}
output_tokens: {kind: fixed, value: 4}
session:
  turns: {kind: fixed, value: 3}
  think_time_s: {kind: fixed, value: 0.02}
arrival: {mode: closed, concurrency: 2}
objective: max_throughput
warmup_requests: 0
"""


def test_prompt_usage_reads_cached_tokens_or_says_none() -> None:
    event = {"usage": {"prompt_tokens": 120, "completion_tokens": 8,
                       "prompt_tokens_details": {"cached_tokens": 96}}}
    assert prompt_usage(event) == (120, 96)
    assert prompt_usage({"usage": {"prompt_tokens": 5, "completion_tokens": 1}}) == (5, None)
    assert prompt_usage({"usage": {"prompt_tokens": 5, "prompt_tokens_details": None}}) == (5, None)
    assert prompt_usage({"choices": []}) == (None, None)


def test_a_session_raw_becomes_a_record_with_its_session_turn_and_cache() -> None:
    raw = (7, 1.0, 1.1, [1.2, 1.3], 2, ["a", "b"], "length", 1.3, None, 40, 64, 3, 2)
    record = to_record(raw, None, None)
    assert (record.request_id, record.num_prompt_tokens, record.num_output_tokens) == (7, 64, 2)
    assert (record.session_id, record.turn, record.num_cached_tokens) == (3, 2, 40)


@pytest.fixture()
def mock_url() -> Iterator[str]:
    cmd = (f"{sys.executable} -m app.cli mock-server --ttft-ms 5 --itl-ms 1 --port {{port}}")
    server = ServerProcess(cmd, ANY, health_timeout_s=30)
    server.start()
    yield server.base_url
    server.stop()


@pytest.mark.slow
def test_conversations_over_http_resend_the_streamed_history(mock_url: str) -> None:
    tokenizer = build_byte_tokenizer()
    profile = parse_profile_yaml(PROFILE, "s")
    # Printable ASCII ids only, so one byte per token both ways.
    avoid = [i for i in range(256) if not 0x41 <= i <= 0x5A]
    load = session_load(profile, 2, None, 1.0, 0, 8, seed=0, vocab_size=256,
                        max_context_tokens=4096, avoid_ids=avoid)
    with HttpTarget(mock_url, tokenizer=tokenizer) as target:
        result = run_sessions(target, load)
    records = sorted(result.records, key=lambda r: r.request_id)
    assert [r.request_id for r in records] == list(range(8))
    plans = {s.session_id: s for s in load.sessions}
    by_session: dict = {}
    for r in sorted(result.records + result.background, key=lambda r: r.scheduled_s):
        by_session.setdefault(r.session_id, []).append(r)
    for session_id, turns in by_session.items():
        assert [r.turn for r in turns] == list(range(1, len(turns) + 1))
        for prev, cur in zip(turns, turns[1:], strict=False):
            if cur.error or prev.error:
                continue
            message = tokenizer.decode(plans[session_id].turns[cur.turn - 1].message_ids)
            # Turn k's prompt = turn k-1's prompt + its streamed answer + the new message.
            assert cur.num_prompt_tokens == \
                prev.num_prompt_tokens + prev.num_output_tokens + len(message.encode())
            assert cur.scheduled_s == pytest.approx(prev.done_s + 0.02, abs=1e-6)
            assert cur.sent_s >= cur.scheduled_s
    assert all(r.num_cached_tokens is None for r in records)  # the mock does not say
