"""The product's vocabularies, defined once: every validator, CLI option, form and label reads
these, so a new policy, router or engine is one edit here plus the code that implements it."""

from __future__ import annotations

from typing import Literal, get_args

# Batching policies of tradeoff's engine (engine.scheduler implements them).
Policy = Literal["static", "continuous", "adaptive"]
POLICIES: tuple[str, ...] = get_args(Policy)

# Request routers in front of N replicas (engine.routing implements them).
ROUTERS: tuple[str, ...] = ("round_robin", "least_outstanding", "power_of_two", "prefix_affinity")
# When N > 1 replicas are asked for without a router: what vLLM's router and most LLM load
# balancers do by default, and the one that keeps long requests from queueing short ones.
DEFAULT_ROUTER = "least_outstanding"
# Short router names for labels (`x2lo` = 2 replicas behind least_outstanding).
ROUTER_ABBREV: dict[str, str] = {"round_robin": "rr", "least_outstanding": "lo", "power_of_two": "p2",
                                 "prefix_affinity": "pa"}

# Deployed engines tradeoff can start per server config (experiments.targets.engines presets).
EngineName = Literal["vllm", "sglang", "tgi", "llamacpp"]
ENGINES: tuple[str, ...] = get_args(EngineName)

# Load axes: closed-loop users, open-loop arrivals per second, a trace's replay speed-up.
LoadAxis = Literal["concurrency", "rate", "speedup"]
LOAD_AXES: tuple[str, ...] = get_args(LoadAxis)
