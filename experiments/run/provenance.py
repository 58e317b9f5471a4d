"""Where a result came from: versions, host and hardware, recorded with every sweep; for a run
against an external server, which server (its URL, model, engine and version where it says them)."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_sha() -> str | None:
    """The checkout's commit, when tradeoff runs from a git checkout."""
    root = Path(__file__).resolve().parents[2]  # the checkout, above experiments/
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


# -- external servers -------------------------------------------------------------------------
# A run against an external server measured that server, not tradeoff's engine. Its sweep records
# the server as its device (sweeps.device SERVER_DEVICE, device_name one of the two shapes below),
# because the device is what every listing and export already names as "where it ran": a sweep
# row and an export's provenance then say which server, without a schema change.

SERVER_DEVICE = "server"
_AT = "server at "  # a --target URL, batching by its own settings (tradeoff set none of them)
_PER_CONFIG = "server per config from "  # --engine / --server-cmd: tradeoff set the knobs
_MAX_SAID = 80  # a server's own words (owned_by, version) are capped: they end up in the db


@dataclass(frozen=True)
class ServerInfo:
    """What a server under test says it runs: the model its requests named, the `owned_by` of
    that model in /v1/models (vLLM says "vllm", SGLang "sglang", llama.cpp "llamacpp") and the
    version from /version (as vLLM serves it); None where the server does not say."""

    url: str
    model: str
    owned_by: str | None = None
    version: str | None = None

    @property
    def engine(self) -> str:
        """`vllm 0.6.3`, `vllm`, `version 0.6.3`, or "" when the server says neither."""
        if self.owned_by and self.version:
            return f"{self.owned_by} {self.version}"
        return self.owned_by or (f"version {self.version}" if self.version else "")

    @property
    def label(self) -> str:
        """`meta-llama/Llama-3.1-8B at http://h:8000/v1 (vllm 0.6.3)`."""
        return f"{self.model} at {self.url}" + (f" ({self.engine})" if self.engine else "")

    def to_dict(self) -> dict[str, str | None]:
        return {"url": self.url, "model": self.model, "owned_by": self.owned_by,
                "version": self.version}


def said(value: object) -> str | None:
    """A server's answer as label text: printable, one line, capped; None if empty or absent."""
    if value is None or isinstance(value, (dict, list)):
        return None
    text = "".join(ch for ch in str(value) if ch.isprintable()).strip()
    return text[:_MAX_SAID] or None


def server_at(info: ServerInfo) -> str:
    """The device of a bare --target run: `server at http://h:8000/v1 (vllm 0.6.3)`."""
    return _AT + info.url + (f" ({info.engine})" if info.engine else "")


def server_per_config(how: str) -> str:
    """The device of a run that started a server per config: `server per config from --engine vllm`."""
    return _PER_CONFIG + how


def is_server(device: object) -> bool:
    """Whether a recorded device is an external server (either shape), not tradeoff's engine."""
    return str(device or "").startswith((_AT, _PER_CONFIG))


def batches_by_itself(device: object) -> bool:
    """Whether a recorded device is a bare --target: its batching knobs were not tradeoff's."""
    return str(device or "").startswith(_AT)
