"""What each export target calls the replica count and routing that tradeoff measured.

Kept apart from render.py so each target's scale-out vocabulary sits in one place.
"""

from __future__ import annotations

from common.records import TrialConfig


def engine_fields(config: TrialConfig) -> dict:
    """`replicas` and `router` for the json / yaml document (`tradeoff serve --config` reads them)."""
    return {"replicas": config.replicas, "router": config.router}


def exported_scale(engine: dict) -> tuple[int, str | None]:
    """(replicas, router) from an exported document's engine mapping; absent = one replica."""
    from engine.routing import check_replicas

    replicas, router = engine.get("replicas", 1), engine.get("router")
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise ValueError(f"engine.replicas must be an integer >= 1, got {replicas!r}")
    check_replicas(replicas, router)
    return replicas, router if replicas > 1 else None


def vllm_flags(config: TrialConfig) -> tuple[str, list[str]]:
    """vLLM: data-parallel size (N engines in one server behind vLLM's own balancer)."""
    n = config.replicas
    if n == 1:
        return "", []
    notes = [f"--data-parallel-size {n}: data parallelism, i.e. {n} engine replicas (one GPU each) "
             "inside one `vllm serve`, behind vLLM's own API-server load balancer; it is not "
             f"{n} servers behind an external load balancer."]
    if config.router == "least_outstanding":
        notes.append("vLLM's balancer sends each request to the engine with the fewest waiting + "
                     "running requests, as least_outstanding did here.")
    else:
        notes.append(f"The measured router, {config.router}, is not vLLM's (it balances by queue "
                     f"length); to keep it, run {n} `vllm serve` instances behind a load balancer "
                     f"doing {config.router} instead of --data-parallel-size.")
    return f" --data-parallel-size {n}", notes


def ray_serve_notes(config: TrialConfig) -> list[str]:
    """Ray Serve: num_replicas; its request router is power of two choices."""
    if config.replicas == 1:
        return []
    note = (f"num_replicas={config.replicas}: the {config.replicas} replicas measured, one GPU each "
            "(ray_actor_options num_gpus=1).")
    if config.router == "power_of_two":
        return [note, "Ray Serve's default request router is power of two choices, as measured."]
    return [note, f"Ray Serve routes by power of two choices (its default); the measured router "
                  f"was {config.router}, so expect slightly different tail latency."]


def ray_serve_options(config: TrialConfig) -> str:
    """Extra @serve.deployment arguments."""
    if config.replicas == 1:
        return ""
    return f", num_replicas={config.replicas}, ray_actor_options={{\"num_gpus\": 1}}"


def triton_instances(config: TrialConfig) -> tuple[str, list[str]]:
    """Triton: one model instance on each of N GPUs; the dynamic batcher feeds free instances."""
    if config.replicas == 1:
        return "", []
    gpus = ", ".join(str(i) for i in range(config.replicas))
    # Repeated fields written out one by one (`gpus: 0 gpus: 1`): plain protobuf text format.
    lines = "".join(f"  gpus: {i}\n" for i in range(config.replicas))
    body = f"instance_group {{\n  count: 1\n  kind: KIND_GPU\n{lines}}}\n"
    return body, [f"instance_group: one model instance on each of GPUs {gpus} ({config.replicas} "
                  "replicas); Triton hands each formed batch to a free instance, which is close to "
                  f"least_outstanding (measured: {config.router})."]


def torchserve_workers(config: TrialConfig) -> tuple[int, list[str]]:
    """TorchServe: N workers (spread over GPUs in turn); requests go to idle workers."""
    if config.replicas == 1:
        return 1, ["one worker, as tradeoff measured one engine replica."]
    return config.replicas, [f"{config.replicas} workers, as tradeoff measured {config.replicas} "
                             "replicas; TorchServe assigns GPUs to workers in turn and sends "
                             f"batches to idle workers (measured router: {config.router})."]

