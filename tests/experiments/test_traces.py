"""Traces: parsing (CSV, Mooncake JSONL, bad rows), window and speed-up arithmetic, length scaling."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from experiments.spec.arrivals import TraceArrival
from experiments.spec.profiles import ProfileError, load_profile
from experiments.spec.traces import (
    ATTRIBUTION,
    Trace,
    TraceError,
    load_trace,
    parse_csv,
    parse_jsonl,
    prepare_replay,
    replay_window,
    scale_lengths,
)

CSV = """\
TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.5000000,374,44
2023-11-16 18:15:47.0000000,396,109
2023-11-16 18:15:46.0000000,10,0
"""


def trace_error(fn, *args) -> str:
    with pytest.raises(TraceError) as info:
        fn(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_csv_with_datetimes_is_sorted_and_starts_at_zero():
    trace = parse_csv(CSV, "t.csv")
    assert trace.arrival_s.tolist() == [0.0, 0.5, 1.0]
    assert trace.prompt_tokens.tolist() == [10, 374, 396]
    assert trace.output_tokens.tolist() == [0, 44, 109]


def test_csv_with_named_columns_and_numeric_ms_times():
    text = "t,in,out\n1000,5,6\n1250,7,8\n"
    trace = parse_csv(text, "t.csv", {"timestamp": "t", "input": "in", "output": "out"}, "ms")
    assert trace.arrival_s.tolist() == [0.0, 0.25]
    assert trace.prompt_tokens.tolist() == [5, 7]


def test_csv_with_plain_input_output_columns_needs_no_column_names():
    trace = parse_csv("timestamp,Input,output\n0.5,9,3\n0,5,6\n", "io.csv")
    assert trace.arrival_s.tolist() == [0.0, 0.5]
    assert trace.prompt_tokens.tolist() == [5, 9] and trace.output_tokens.tolist() == [6, 3]
    # the more specific name still wins where a file has both
    both = parse_csv("timestamp,input,input_length,output,output_length\n0,1,2,3,4\n", "b.csv")
    assert (both.prompt_tokens.tolist(), both.output_tokens.tolist()) == ([2], [4])


@pytest.mark.parametrize("text, needle", [
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,5,6\n2.0,x,6\n", "line 3, column ContextTokens"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,5,6\n2.0,5,-1\n", "line 3, column GeneratedTokens"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,5,6\n2.0,5.5,1\n", "line 3, column ContextTokens"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,5,6\n2.0,5,1\nsoon,5,1\n", "line 4, column TIMESTAMP"),
    ("ts,a,b\n1,2,3\n", "no timestamp column"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
])
def test_bad_csv_names_line_and_column(text: str, needle: str):
    assert needle in trace_error(parse_csv, text, "bad.csv")


def test_jsonl_mooncake_timestamps_are_ms():
    text = ('{"timestamp": 0, "input_length": 100, "output_length": 5, "hash_ids": [1, 2]}\n'
            '\n{"timestamp": 1500, "input_length": 7, "output_length": 1}\n')
    trace = parse_jsonl(text, "m.jsonl")
    assert trace.arrival_s.tolist() == [0.0, 1.5]
    assert trace.prompt_tokens.tolist() == [100, 7] and trace.output_tokens.tolist() == [5, 1]


@pytest.mark.parametrize("line2, needle", [
    ('{"timestamp": 10, "input_length": 3', "line 2, column 36: invalid JSON"),
    ('{"timestamp": 10, "input_length": "3", "output_length": 1}', "line 2, column input_length"),
    ('{"timestamp": 10, "input_length": 3}', "line 2, column output_length"),
    ('[1, 2, 3]', "line 2: expected a JSON object"),
])
def test_bad_jsonl_names_line_and_column(line2: str, needle: str):
    text = '{"timestamp": 0, "input_length": 1, "output_length": 1}\n' + line2 + "\n"
    assert needle in trace_error(parse_jsonl, text, "bad.jsonl")


def test_window_and_speedup_arithmetic():
    trace = Trace("t", np.asarray([0.0, 1.0, 2.0, 3.0, 4.0, 10.0]),
                  np.arange(6), np.arange(6))
    # 1 s of replay at 3x, from 1 s into the trace: trace [1, 4) -> arrivals 0, 1/3, 2/3.
    replay = replay_window(trace, start_s=1.0, duration_s=1.0, speedup=3.0)
    assert replay.arrival_s.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert replay.prompt_tokens.tolist() == [1, 2, 3]
    assert (replay.start_s, replay.end_s) == (1.0, 4.0)
    # A slower replay keeps the gap before the first request in the window.
    assert replay_window(trace, 0.5, 4.0, 0.5).arrival_s.tolist() == [1.0, 3.0]
    assert "no requests in [5, 8)" in trace_error(replay_window, trace, 5.0, 3.0, 1.0)
    assert "speedup" in trace_error(replay_window, trace, 0.0, 1.0, 0.0)


def test_length_scaling_rounds_and_clips_to_at_least_one_token():
    tokens = np.asarray([0, 4, 5, 15, 1000])
    assert scale_lengths(tokens, 0.1, 64).tolist() == [1, 1, 1, 2, 64]  # rint(0.5) = 0 -> 1
    assert scale_lengths(tokens, 1.0, None).tolist() == [1, 4, 5, 15, 1000]


def test_builtin_traces_load_with_their_attribution():
    conv, code = load_trace("azure_conv"), load_trace("azure_code")
    assert (conv.num_requests, code.num_requests) == (19366, 8819)
    assert 3400 < conv.span_s < 3600 and np.all(np.diff(conv.arrival_s) >= 0)
    for name in ("azure-conv", "azure-code"):
        profile = load_profile(name)
        assert "CC-BY 4.0" in profile.description and "Splitwise" in profile.description
    assert "CC-BY 4.0" in ATTRIBUTION


def test_builtin_profile_replay_is_scaled_for_a_small_model():
    arrival = load_profile("azure-conv").arrival
    replay = prepare_replay(arrival, speedup=2.0, duration_s=10.0)
    assert replay.end_s - replay.start_s == 20.0 and replay.arrival_s.max() < 10.0
    assert replay.prompt_tokens.min() >= 1 and replay.prompt_tokens.max() <= 512
    assert replay.output_tokens.min() >= 1 and replay.output_tokens.max() <= 128


def test_trace_files_are_profiles(tmp_path):
    path = tmp_path / "my trace.csv"
    path.write_text("timestamp,input_length,output_length\n0,5,6\n0.5,7,8\n")
    profile = load_profile(str(path))
    assert profile.is_trace and profile.name == "my_trace.csv" and "ttft_ms" in profile.slos
    gz = tmp_path / "m.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"timestamp": 0, "input_length": 1, "output_length": 2}\n'))
    assert load_profile(str(gz)).is_trace
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,input_length,output_length\n0,5,6\n1,x,8\n")
    with pytest.raises(ProfileError, match="line 3, column input_length"):
        load_profile(str(bad))
    with pytest.raises(ProfileError, match="cannot read the file"):
        load_profile(str(tmp_path / "missing.jsonl"))


def test_trace_profile_needs_no_length_distributions():
    arrival = TraceArrival(mode="trace", trace="azure_code")
    assert arrival.label == "trace@1x"
