"""Run page inputs for trace sweeps and the adaptive policy -> a validated SweepSpec."""

from __future__ import annotations

from app.dashboard import forms
from app.dashboard.forms import RunInputs


def test_trace_speedups_build_a_trace_sweep():
    spec, errors = forms.build_spec(RunInputs(profile="azure-conv", policies=("continuous", "adaptive"),
                                              load_mode="speedup", loads="1, 2, 4"), {})
    assert errors == {} and spec.load.speedup == [1.0, 2.0, 4.0] and spec.load.rate is None
    assert [c.load_label for c in spec.trial_configs()][:1] == ["trace@1x"]
    assert "adaptive" in spec.knobs.policies


def test_speedups_on_a_synthetic_profile_are_a_load_error():
    spec, errors = forms.build_spec(RunInputs(profile="chat", load_mode="speedup", loads="2"), {})
    assert spec is None and "replays no trace" in errors["load"]
