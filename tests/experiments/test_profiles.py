"""Profiles: the built-ins, validation errors as one actionable line, SLO resolution."""

from __future__ import annotations

import pytest

from common.records import SLO
from experiments.spec.profiles import (
    ClosedArrival,
    OpenArrival,
    ProfileError,
    list_builtin_profiles,
    load_profile,
    needs_baseline,
    parse_profile_yaml,
    resolve_slos,
)

BASE = """\
name: x
prompt_tokens: {kind: fixed, value: 8}
output_tokens: {kind: uniform, min: 4, max: 8}
arrival: {mode: closed, concurrency: 2}
"""
GOOD = BASE + "slos:\n  ttft_ms: {percentile: p90, max_ms: 50}\n"
BASELINE = {"ttft_ms": 10.0, "tpot_ms": 2.0, "e2e_ms": 100.0}


def parse_error(text: str) -> str:
    with pytest.raises(ProfileError) as info:
        parse_profile_yaml(text, "x.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_builtin_profiles_load_with_their_objectives() -> None:
    assert list_builtin_profiles() == ["azure-code", "azure-conv", "batch", "chat", "chat-multiturn",
                                       "code", "rag", "rag-shared"]
    objectives = {name: load_profile(name).objective for name in list_builtin_profiles()}
    assert objectives == {"batch": "max_throughput", "chat": "max_goodput",
                          "code": "max_goodput", "rag": "max_goodput",
                          "azure-code": "max_goodput", "azure-conv": "max_goodput",
                          "chat-multiturn": "max_goodput", "rag-shared": "max_goodput"}


def test_builtin_slos_match_their_workloads() -> None:
    slo_metrics = {name: sorted(load_profile(name).slos) for name in list_builtin_profiles()}
    assert slo_metrics == {"batch": ["e2e_ms"], "chat": ["tpot_ms", "ttft_ms"],
                           "code": ["e2e_ms"], "rag": ["ttft_ms"], "rag-shared": ["ttft_ms"],
                           "chat-multiturn": ["tpot_ms", "ttft_ms"],
                           "azure-code": ["tpot_ms", "ttft_ms"], "azure-conv": ["tpot_ms", "ttft_ms"]}
    assert all(needs_baseline(load_profile(n)) for n in list_builtin_profiles())


def test_builtin_lengths_stay_small_enough_for_a_cpu_trial() -> None:
    chat, rag = load_profile("chat"), load_profile("rag")
    assert chat.prompt_tokens.max <= 256 and chat.output_tokens.max <= 128
    assert rag.prompt_tokens.mean > 4 * chat.prompt_tokens.mean  # long prompts
    assert rag.output_tokens.max < chat.output_tokens.max  # short outputs


def test_parse_good_profile() -> None:
    profile = parse_profile_yaml(GOOD, "x.yaml")
    assert profile.name == "x" and profile.warmup_requests == 4
    assert isinstance(profile.arrival, ClosedArrival) and profile.arrival.label == "concurrent@2"


def test_open_arrival_label() -> None:
    text = BASE.replace("{mode: closed, concurrency: 2}", "{mode: open, rate: 2, burstiness: 0.5}")
    profile = parse_profile_yaml(text + "objective: max_throughput\n", "x.yaml")
    assert isinstance(profile.arrival, OpenArrival) and profile.arrival.label == "gamma(0.5)@2.00"


def test_bad_percentile_names_field_and_choices() -> None:
    text = BASE + "slos:\n  ttft_ms: {percentile: p42, max_ms: 50}\n"
    assert parse_error(text) == (
        "profile 'x.yaml': slos.ttft_ms.percentile: must be one of p50, p90, p95, p99 (got 'p42')")


@pytest.mark.parametrize(("edit", "expected"), [
    (("max_ms: 50", "max_ms: 50, max_x_baseline: 2"),
     "slos.ttft_ms: set exactly one of max_ms (absolute) or max_x_baseline"),
    (("max_ms: 50", "max_x: 2"), "slos.ttft_ms.max_x: unknown field; allowed fields: percentile,"),
    (("ttft_ms:", "ttft:"), "slos.ttft: must be one of ttft_ms, tpot_ms, e2e_ms (got 'ttft')"),
    (("kind: uniform", "kind: gauss"),
     "output_tokens: kind must be one of fixed, uniform, normal, lognormal, choice (got 'gauss')"),
    (("min: 4, max: 8", "min: 9, max: 8"), "output_tokens: max (8) must be >= min (9)"),
    (("min: 4, max: 8", "min: 4"), "output_tokens.max: required field is missing; add it"),
    (("value: 8", "value: 0"), "prompt_tokens.value: must be greater than or equal to 1 (got 0)"),
    (("value: 8", "value: 8.5"), "prompt_tokens.value: must be a valid integer (got 8.5)"),
    (("concurrency: 2", "rate: 2"), "arrival.rate: unknown field; allowed fields: mode, concurrency"),
    (("name: x", "name: x\ncolour: red"), "colour: unknown field; allowed fields: name,"),
])
def test_validation_errors_are_one_actionable_line(edit: tuple[str, str], expected: str) -> None:
    assert expected in parse_error(GOOD.replace(*edit))


def test_goodput_objective_needs_an_slo() -> None:
    assert parse_error(BASE) == ("profile 'x.yaml': objective: max_goodput needs at least one SLO; "
                                 "add slos or use objective: max_throughput")


def test_choice_weights_must_match_values() -> None:
    text = GOOD.replace("{kind: fixed, value: 8}", "{kind: choice, values: [8, 64], weights: [1]}")
    assert "prompt_tokens: weights needs one weight per value (2), got 1" in parse_error(text)


def test_malformed_yaml_names_the_line() -> None:
    message = parse_error("name: x\nprompt_tokens: {kind: fixed\narrival: [\n")
    assert message.startswith("profile 'x.yaml': invalid YAML at line ")


def test_non_mapping_yaml() -> None:
    assert "must be a YAML mapping" in parse_error("- a\n- b\n")


def test_unknown_profile_lists_builtins() -> None:
    with pytest.raises(ProfileError) as info:
        load_profile("foo")
    assert str(info.value) == (
        "unknown profile 'foo'; built-in profiles: azure-code, azure-conv, batch, chat, "
        "chat-multiturn, code, rag, rag-shared "
        "(or pass a .yaml path, or a .csv / .jsonl trace to replay)")


def test_load_from_path_and_user_profiles(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD)
    assert load_profile(str(path)).name == "x"
    assert load_profile("x", user_profiles={"x": GOOD}).name == "x"
    with pytest.raises(ProfileError, match="cannot read the file"):
        load_profile(str(tmp_path / "missing.yaml"))


def test_resolve_absolute_and_relative_slos() -> None:
    text = BASE + ("slos:\n  e2e_ms: {percentile: p99, max_ms: 900}\n"
                   "  ttft_ms: {percentile: p90, max_x_baseline: 3}\n")
    profile = parse_profile_yaml(text, "x.yaml")
    assert resolve_slos(profile, BASELINE) == [SLO("ttft_ms", "p90", 30.0), SLO("e2e_ms", "p99", 900)]


def test_relative_slo_without_baseline_is_a_clear_error() -> None:
    profile = load_profile("chat")
    with pytest.raises(ProfileError, match="slos.ttft_ms is relative .* measure one"):
        resolve_slos(profile, None)


def test_absolute_slos_need_no_baseline() -> None:
    profile = parse_profile_yaml(GOOD, "x.yaml")
    assert not needs_baseline(profile)
    assert resolve_slos(profile, None) == [SLO("ttft_ms", "p90", 50.0)]


SESSION = GOOD + ("session:\n  turns: {kind: uniform, min: 2, max: 4}\n"
                  "  think_time_s: {kind: fixed, value: 0.5}\n")


def test_session_and_shared_prefix_profiles_parse() -> None:
    profile = parse_profile_yaml(SESSION + "shared_prefix: {num_prefixes: 2, prefix_tokens: 16}\n", "s")
    assert profile.session is not None and profile.session.think_time_s.value == 0.5
    assert (profile.shared_prefix.num_prefixes, profile.shared_prefix.prefix_tokens) == (2, 16)
    assert parse_profile_yaml(GOOD + "session: {turns: {kind: fixed, value: 3}}\n", "s") \
        .session.think_time_s.value == 0.0  # no think time unless asked


@pytest.mark.parametrize(("edit", "expected"), [
    (("min: 2, max: 4", "min: 0, max: 4"), "session.turns.uniform.min: must be greater than or equal to 1"),
    (("kind: fixed, value: 0.5", "kind: fixed, value: -1"),
     "session.think_time_s.fixed.value: must be greater than or equal to 0"),
    (("kind: fixed, value: 0.5", "kind: poisson, mean: 1"),
     "session.think_time_s: kind must be one of fixed, uniform, exponential (got 'poisson')"),
    (("turns:", "turn:"), "session.turn: unknown field; allowed fields: turns, think_time_s"),
])
def test_bad_session_profiles_are_one_line_naming_the_field(edit: tuple[str, str], expected: str) -> None:
    assert expected in parse_error(SESSION.replace(*edit))


def test_bad_shared_prefix_and_trace_sessions_are_refused() -> None:
    assert "shared_prefix.num_prefixes: must be greater than or equal to 1" in parse_error(
        GOOD + "shared_prefix: {num_prefixes: 0, prefix_tokens: 8}\n")
    trace = ("name: t\narrival: {mode: trace, trace: azure_conv}\nobjective: max_throughput\n"
             "session: {turns: {kind: fixed, value: 2}}\n")
    assert "'x.yaml': session: a trace replay has no session" in parse_error(trace)


def test_builtin_session_and_shared_prefix_profiles() -> None:
    chat = load_profile("chat-multiturn")
    assert chat.session is not None and chat.arrival.mode == "closed"
    rag = load_profile("rag-shared")
    assert rag.shared_prefix is not None and rag.shared_prefix.num_prefixes > 1
