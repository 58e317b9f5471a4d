"""Scale-out page: goodput vs replicas (1-64) per batching config and per router, simulated apart
from measured."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from app.dashboard import charts_scale, state, widgets
from common.records import TrialConfig
from common.vocab import DEFAULT_ROUTER, ROUTERS
from db.store import SweepRecord
from experiments.analysis.scaleout import REPLICA_COUNTS, ScalePoint, ScaleView, measured_routers

ROUTER_NAMES = {"least_outstanding": "least outstanding", "round_robin": "round robin",
                "power_of_two": "power of two choices", "prefix_affinity": "prefix affinity"}
METRIC_NAMES = {"per_replica": "Goodput per replica", "efficiency": "Scaling efficiency",
                "total": "Total goodput"}
MAX_CONFIGS = 4


def render() -> None:
    """The Scale-out page."""
    st.title("Scale-out")
    url = state.db_url()
    sweeps = state.sweeps(url)
    if not sweeps:
        st.caption(_intro("replicas"))
        st.info("No sweeps yet: run one on the Run page (add `--replicas 1,2` to measure replicas).")
        return
    sweep = widgets.pick_sweep(sweeps, key="scale_sweep")
    replicas = replicas_title(sweep)
    st.caption(_intro(replicas.lower()))
    key = state.version(sweep)
    view = state.scale_view(url, key)
    if view is None:
        st.info("No finished one-replica trial with a rate or concurrency in this sweep yet.")
        return
    left, mid, right = st.columns(3)
    load = left.selectbox("Load per replica", view.loads, key=f"scale_load_{sweep.id}")
    metric = mid.selectbox("Show", list(METRIC_NAMES), key=f"scale_metric_{sweep.id}",
                           format_func=METRIC_NAMES.__getitem__)
    routers = measured_routers(view.measured)  # compare like with like: a router measured here
    router = right.selectbox("Router (simulated)", list(ROUTER_NAMES), key=f"scale_router_{sweep.id}",
                             index=list(ROUTER_NAMES).index(routers[0] if routers else DEFAULT_ROUTER),
                             format_func=ROUTER_NAMES.__getitem__)
    configs = [c for c in view.bases if c.load_label == load][:MAX_CONFIGS]
    simulated = [p for c in configs for p in state.scale_simulation(url, key, c, router)]
    measured = [p for p in view.measured if p.load_per_replica == load
                and p.config in {s.config for s in simulated} and (p.replicas == 1 or p.router == router)]
    st.plotly_chart(charts_scale.scale_figure(simulated + measured, metric, replicas),
                    key=f"scale_chart_{sweep.id}")
    st.caption(f"Cost model: {view.cost_source}. Simulated at {', '.join(map(str, REPLICA_COUNTS))} "
               f"replicas behind {ROUTER_NAMES[router]}; measured diamonds: trials behind the same "
               f"router. One panel per config: the {MAX_CONFIGS} best one-replica configs at this "
               "load. " + _metric_note(metric))
    _routers(url, key, view, configs, load, metric, replicas)


def replicas_title(sweep: SweepRecord) -> str:
    """The replica axis' title: a replica is a GPU only where the sweep ran on one."""
    return "Replicas (GPUs)" if str(sweep.device).startswith("cuda") else "Replicas"


def _intro(replicas: str) -> str:
    return (f"More {replicas} gain less than they could under a poor batching config or uneven "
            "routing. Lines: the simulator (this engine's scheduler on a virtual clock, step "
            "times fitted to the sweep's measured steps) with N replicas behind a router and "
            "N times one replica's load. Diamonds: trials measured on this machine.")


def _metric_note(metric: str) -> str:
    return {"per_replica": "Perfect scaling is a flat line: each replica carries what one did.",
            "efficiency": "Perfect scaling is 100%: goodput = N x one replica's.",
            "total": "Both axes are log: perfect scaling is a straight line of slope 1."}[metric]


def _routers(url: str, key: state.SweepVersion, view: ScaleView, configs: Sequence[TrialConfig],
             load: str, metric: str, replicas: str) -> None:
    st.subheader("Routers")
    labels = {c.server_label: c for c in configs}
    if not labels:
        return
    config = st.selectbox("Config", list(labels), key=f"scale_router_config_{key[0]}")
    measured = [p for p in view.measured if p.config == config and p.load_per_replica == load]
    by_router = measured_by_router(measured)
    st.markdown(_measured_words(by_router))
    if st.toggle(f"Simulate every router for {config}, 1-64 replicas (a few seconds)",
                 key=f"scale_router_sim_{key[0]}"):
        for router in ROUTERS:
            by_router.setdefault(router, [])
            by_router[router] = [*state.scale_simulation(url, key, labels[config], router),
                                 *by_router[router]]
        st.caption(prefix_note(view, labels[config]))
    if any(by_router.values()):
        st.plotly_chart(charts_scale.router_figure(by_router, ROUTER_NAMES, metric, replicas),
                        key=f"scale_router_chart_{key[0]}")


def measured_by_router(points: Sequence[ScalePoint]) -> dict[str, list[ScalePoint]]:
    """Measured points per router; one-replica trials (no router) join every router's series."""
    ones = [p for p in points if p.replicas == 1]
    routed: dict[str, list[ScalePoint]] = {}
    for p in points:
        if p.replicas > 1 and p.router:
            routed.setdefault(p.router, []).append(p)
    order = sorted(routed, key=lambda r: ROUTERS.index(r) if r in ROUTERS else len(ROUTERS))
    return {r: [*ones, *routed[r]] for r in order}


def _measured_words(by_router: dict[str, list[ScalePoint]]) -> str:
    if not by_router:
        return ("**Measured:** no trial of this config ran on more than one replica; measure "
                "routers with e.g. `--replicas 1,2 --routers least_outstanding,prefix_affinity`. "
                "Simulate them below.")
    names = ", ".join(ROUTER_NAMES.get(r, r) for r in by_router)
    return f"**Measured** behind {names} (diamonds). Simulated lines are the simulator's, not trials."


def prefix_note(view: ScaleView, config: TrialConfig) -> str:
    """What the simulated prefix_affinity line can show for this profile and config."""
    shares = view.profile.session is not None or view.profile.shared_prefix is not None
    if not shares:
        return ("Simulated. This profile has no sessions or shared prefixes: prefix affinity "
                "finds no prefix to follow and routes as least outstanding does.")
    cache = "on" if config.prefix_caching else "off"
    return (f"Simulated, with the profile's real prompts (sessions re-send their history), prefix "
            f"caching {cache} as in this config: prefix affinity sends a conversation's turns to "
            "the replica that served its history" + (", where its prefix is cached." if
                                                     config.prefix_caching else
                                                     "; with caching off that saves nothing."))
