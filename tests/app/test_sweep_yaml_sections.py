"""`--config sweep.yaml` in sections merges with the command line's flat flags (flags win)."""

from __future__ import annotations

from pathlib import Path

from app.cmd_sweep import spec_from_flags
from experiments.spec.grid import parse_spec

NESTED_YAML = """\
name: nested
target: {model: builtin:tiny, dtype: float32}
knobs: {policies: [continuous], batch_sizes: [1, 4]}
load: {concurrency: [1, 2], requests: 8}
"""
FLAT_YAML = """\
name: nested
model: builtin:tiny
dtype: float32
policies: [continuous]
batch_sizes: [1, 4]
concurrency: [1, 2]
requests: 8
"""


def test_a_nested_sweep_yaml_reads_as_the_flat_one(tmp_path: Path):
    (tmp_path / "nested.yaml").write_text(NESTED_YAML)
    (tmp_path / "flat.yaml").write_text(FLAT_YAML)
    nested = parse_spec(spec_from_flags(tmp_path / "nested.yaml", {}))
    assert nested == parse_spec(spec_from_flags(tmp_path / "flat.yaml", {}))
    assert nested.knobs.batch_sizes == [1, 4] and nested.target.dtype == "float32"



def test_dashed_names_read_inside_sections_too_but_not_inside_data(tmp_path: Path):
    dashed = NESTED_YAML.replace("batch_sizes", "batch-sizes")
    (tmp_path / "d.yaml").write_text(dashed.replace("dtype: float32", "engine-env: {MY-VAR: x}"))
    raw = spec_from_flags(tmp_path / "d.yaml", {})
    assert raw["batch_sizes"] == [1, 4]  # a section's field, dashed as on the command line
    assert raw["engine_env"] == {"MY-VAR": "x"}  # a variable's name is data: as written


def test_flags_win_over_a_nested_sweep_yaml(tmp_path: Path):
    (tmp_path / "nested.yaml").write_text(NESTED_YAML)
    flags = {"requests": 16, "target": None, "batch_sizes": [8], "dtype": None}
    spec = parse_spec(spec_from_flags(tmp_path / "nested.yaml", flags))
    assert (spec.load.requests, spec.knobs.batch_sizes) == (16, [8])
    assert spec.target.dtype == "float32"  # a flag not given keeps the file's section value


def test_a_target_flag_is_the_url_beside_a_target_section(tmp_path: Path):
    # `target` names both the section and the flat URL key: the flag must not replace the section.
    (tmp_path / "t.yaml").write_text("target: {target_model: m, tokenizer: builtin:tiny}\n"
                                     "load: {concurrency: [1]}\n")
    spec = parse_spec(spec_from_flags(tmp_path / "t.yaml", {"target": "http://h:8000/v1"}))
    assert (spec.target.url, spec.target.target_model, spec.target.tokenizer) == (
        "http://h:8000/v1", "m", "builtin:tiny")
    assert spec.is_bare_target
