"""Where each replica runs: one visible GPU each, else a contiguous share of this process's cores.

Pure except for reading the environment and `nvidia-smi -L` (CUDA is never initialised here,
so the replicas, not this process, own the GPUs).
"""

from __future__ import annotations

import os
import subprocess

from engine.config import ConfigError, EngineConfig


def cpu_shares(cpus: list[int], num_replicas: int) -> list[list[int]]:
    """Split cores into `num_replicas` contiguous shares (sizes differ by at most one); with
    fewer cores than replicas, each replica gets one core, reused in turn."""
    cpus = sorted(cpus)
    if num_replicas > len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(num_replicas)]
    size, extra = divmod(len(cpus), num_replicas)
    shares, start = [], 0
    for i in range(num_replicas):
        end = start + size + (1 if i < extra else 0)
        shares.append(cpus[start:end])
        start = end
    return shares


def placements(config: EngineConfig, num_replicas: int) -> list[tuple[str, dict[str, str]]]:
    """(placement label, child environment) per replica: one GPU each, else a share of cores;
    ConfigError when N GPUs are asked for and fewer are visible."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    gpus = _visible_gpus() if config.device in ("auto", "cuda") or config.device.startswith("cuda") else []
    if gpus:
        if num_replicas > len(gpus):
            raise ConfigError(f"{num_replicas} replicas need {num_replicas} GPUs (one each) but "
                              f"{len(gpus)} are visible; lower --replicas")
        index = config.device.partition(":")[2]
        if num_replicas == 1 and index.isdigit() and int(index) < len(gpus):
            gpus = [gpus[int(index)]]  # one engine on the GPU asked for (`serve --device cuda:1`)
        return [(f"cuda:{g}", {**env, "CUDA_VISIBLE_DEVICES": g}) for g in gpus[:num_replicas]]
    if config.device.startswith("cuda"):
        raise ConfigError(f"device {config.device!r} asked for but no GPU is visible; use cpu or auto")
    cpus = sorted(os.sched_getaffinity(0))
    shares = cpu_shares(cpus, num_replicas)
    # The replica learns how many cores the whole set has: one that holds them all shares them
    # with the HTTP front end and the client (engine/threads.py).
    return [(f"cpu:{','.join(map(str, s))}", {**env, "_TRADEOFF_CPUS": ",".join(map(str, s)),
                                              "_TRADEOFF_HOST_CPUS": str(len(cpus))})
            for s in shares]


def _visible_gpus() -> list[str]:
    """GPU ids a child may be given, without initialising CUDA in this process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def child_config(config: EngineConfig) -> EngineConfig:
    # Inside a replica its one GPU is cuda:0; "auto" still falls back to CPU there.
    if config.device.startswith("cuda"):
        return EngineConfig(**{**config.__dict__, "device": "cuda"})
    return config
