"""Where a result came from: versions, host and hardware, recorded with every sweep."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_sha() -> str | None:
    """The checkout's commit, when tradeoff runs from a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def gpu_name() -> str | None:
    """The first CUDA device's name, if torch is loaded and sees one.

    Never imports torch itself: queuing a sweep from the UI must not pay for it. The worker
    records the device the model really ran on (Store.set_sweep_device)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def provenance() -> dict[str, str | None]:
    """Versions and host facts for a sweep record and its exports."""
    return {
        "tradeoff": _version("tradeoff"),
        "git_sha": git_sha(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": gpu_name(),
        "hostname": socket.gethostname(),
    }
