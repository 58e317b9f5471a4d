"""`--slo METRIC[:PCT]=MS`: absolute SLOs in place of the profile's, parsed and applied once."""

from __future__ import annotations

import pytest

from app.errors import BadInput
from app.parsing import parse_slos
from experiments.run.sweep import with_slos
from experiments.spec.grid import GridError
from experiments.spec.profiles import load_profile


def test_slo_flags_parse_with_p90_by_default():
    assert parse_slos(None) is None
    assert parse_slos(["ttft_ms=200", "tpot_ms:p99=50.5"]) == {
        "ttft_ms": {"percentile": "p90", "max_ms": 200.0},
        "tpot_ms": {"percentile": "p99", "max_ms": 50.5}}


@pytest.mark.parametrize("bad", ["ttft_ms", "ttft_ms=fast", "=200", "ttft_ms:p90"])
def test_malformed_slo_flags_say_the_form(bad: str):
    with pytest.raises(BadInput, match=r"give METRIC\[:PERCENTILE\]=MS"):
        parse_slos([bad])


def test_the_profile_is_judged_by_the_given_slos_only():
    chat = load_profile("chat")
    assert set(chat.slos) == {"ttft_ms", "tpot_ms"} and chat.slos["ttft_ms"].max_x_baseline
    judged = with_slos(chat, {"e2e_ms": {"percentile": "p99", "max_ms": 900.0}})
    assert set(judged.slos) == {"e2e_ms"} and judged.slos["e2e_ms"].max_ms == 900.0
    assert judged.prompt_tokens == chat.prompt_tokens  # nothing else changes
    assert with_slos(chat, None) is chat
    with pytest.raises(GridError, match="slos: ttfb"):
        with_slos(chat, {"ttfb": {"percentile": "p90", "max_ms": 1.0}})
