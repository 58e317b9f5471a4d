"""A real trace sweep on builtin:tiny: speed-up as the load axis, adaptive beside continuous,
details stored, then recommend and export (the nearest fixed config for vLLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from db.store import Store
from tests.integration.test_sweep import tradeoff

pytestmark = pytest.mark.slow


def test_trace_sweep_recommend_export(tmp_path: Path):
    db = f"sqlite:///{tmp_path / 't.db'}"
    run = tradeoff("sweep", "--model", "builtin:tiny", "--profile", "azure-conv",
                   "--policy", "continuous,adaptive", "--batch-sizes", "4", "--max-wait-ms", "5",
                   "--speedup", "0.5,1", "--trace-start", "600", "--trace-duration", "4",
                   "--db", db, "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["trials_done"] == 4 and out["trials_failed"] == 0
    trials = Store(db, create=False).list_trials(out["sweep_id"])
    assert {t.config.load_label for t in trials} == {"trace@0.5x", "trace@1x"}
    for t in trials:
        trace = t.details.trace.to_dict()
        assert trace["duration_s"] == 4.0 and trace["requests_replayed"] == trace["requests_in_window"]
        assert t.details.timeseries.t_s
    # azure-conv from 600 s: 4 s of replay cover 2 s of trace at 0.5x, 4 s at 1x.
    spans = {t.config.speedup: t.details.trace.window_end_s for t in trials}
    assert spans == {0.5: 602.0, 1.0: 604.0}

    rec = tradeoff("recommend", "--sweep", str(out["sweep_id"]), "--profile", "azure-conv",
                   "--format", "json", "--db", db)
    assert rec.returncode == 0, rec.stderr
    exported = tradeoff("export", "--profile", "azure-conv", "--format", "vllm", "--db", db)
    assert exported.returncode == 0, exported.stderr
    if json.loads(rec.stdout)["config"]["policy"] == "adaptive":
        assert "policy adaptive has no vLLM equivalent" in " ".join(exported.stdout.split())
