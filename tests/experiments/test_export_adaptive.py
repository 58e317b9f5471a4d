"""The adaptive policy in recommendations and exports: its own explanation, and servers
without an equivalent get the nearest fixed config, said so."""

from __future__ import annotations

import shlex

import pytest
import yaml

from common.records import SLO, TrialConfig
from experiments.export.render import FORMATS, export_config, load_exported_config
from tests.experiments.test_export import PROVENANCE, TTFT_500, comments, parse_pbtxt, rec_for, trial

ADAPTIVE = TrialConfig("adaptive", 16, 20.0, speedup=4.0)


def test_recommendation_explains_the_adaptive_policy():
    rec = rec_for(ADAPTIVE)
    assert rec.config == ADAPTIVE
    assert "batch cap (up to 16)" in rec.explanation and "wait (up to 20 ms)" in rec.explanation
    assert "carries at least 4x speed-up" in rec.explanation


@pytest.mark.parametrize("fmt", FORMATS[2:])
def test_servers_without_adaptive_get_the_nearest_fixed_config(fmt):
    text = export_config(rec_for(ADAPTIVE), fmt, PROVENANCE)
    notes = comments(text)
    assert "policy adaptive has no" in notes and "equivalent" in notes
    assert "nearest fixed config, continuous batch 16, wait 20 ms" in notes
    assert "trace replay at 4x" in notes


def test_nearest_fixed_config_is_what_the_server_formats_carry():
    rec = rec_for(ADAPTIVE)
    assert shlex.split(export_config(rec, "vllm", PROVENANCE), comments=True)[-1] == "16"
    assert parse_pbtxt(export_config(rec, "triton", PROVENANCE)) == {
        "max_batch_size": [16], "dynamic_batching": [{"max_queue_delay_microseconds": [20000]}]}


def test_tradeoff_documents_keep_adaptive_with_its_slo_targets():
    slos = [TTFT_500, SLO("tpot_ms", "p90", 40.0)]
    from experiments.analysis.recommend import recommend

    rec = recommend([trial(1, ADAPTIVE, 30.0, 12.0)], "max_goodput", slos)
    text = export_config(rec, "yaml", PROVENANCE)
    doc = yaml.safe_load(text)
    assert doc["engine"]["policy"] == "adaptive" and doc["load"] == {"speedup": 4.0}
    assert (doc["engine"]["ttft_slo_ms"], doc["engine"]["tpot_slo_ms"]) == (500.0, 40.0)
    loaded = load_exported_config(text)
    assert (loaded["policy"], loaded["ttft_slo_ms"], loaded["tpot_slo_ms"]) == ("adaptive", 500.0, 40.0)


def test_bad_slo_targets_in_an_exported_config_are_rejected():
    with pytest.raises(ValueError, match="engine.tpot_slo_ms"):
        load_exported_config("engine: {policy: adaptive, max_batch_size: 4, max_wait_ms: 0, "
                             "model: m, tpot_slo_ms: -3}")
