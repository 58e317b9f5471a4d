"""`--config FILE` of `trial` and `serve`: a config written by `tradeoff export --format yaml`,
its values used where no flag gives them."""

from __future__ import annotations

from pathlib import Path

from app.errors import BadInput


def from_exported(path: Path, model: str) -> tuple[str, str, int, float, int | None]:
    from experiments.export.render import load_exported_config

    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInput(f"--config: cannot read {path}: {exc.strerror}") from None
    try:
        cfg = load_exported_config(text)
    except ValueError as exc:
        raise BadInput(f"--config {path}: {exc}") from None
    return (cfg.get("model") or model, cfg["policy"], cfg["batch_size"], cfg["max_wait_ms"],
            cfg.get("max_num_batched_tokens"))


def exported_caching(path: Path, given: bool | None) -> bool | None:
    """The exported config's prefix caching, unless given as a flag."""
    from experiments.export.render import load_exported_config

    return given if given is not None else load_exported_config(path.read_text())["prefix_caching"]


def exported_scale(path: Path, replicas: int, router: str | None) -> tuple[int, str | None]:
    """The replica count and router of an exported config, unless given as flags."""
    from experiments.export.render import load_exported_config

    if replicas != 1 or router is not None:
        return replicas, router
    cfg = load_exported_config(path.read_text())  # already validated by from_exported
    return cfg["replicas"], cfg["router"]
