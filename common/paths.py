"""Where tradeoff keeps what it can rebuild: probes' results, built kernels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """~/.cache/tradeoff, or under $XDG_CACHE_HOME when set."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tradeoff"
