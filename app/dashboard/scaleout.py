"""Scale-out page: goodput vs replicas (1-64) per batching config, simulated apart from measured."""

from __future__ import annotations

import streamlit as st

from app.dashboard import charts_scale, state, widgets
from experiments.scaleout import REPLICA_COUNTS

ROUTER_NAMES = {"least_outstanding": "least outstanding", "round_robin": "round robin",
                "power_of_two": "power of two choices"}
MAX_CONFIGS = 4


def render() -> None:
    """The Scale-out page."""
    st.title("Scale-out")
    st.caption("More GPUs gain less than they could under a poor batching config or uneven "
               "routing. Lines: the simulator (this engine's scheduler on a virtual clock, step "
               "times fitted to the sweep's measured steps) with N replicas behind a router and "
               "N times one replica's load. Diamonds: trials measured on this machine.")
    url = state.db_url()
    sweeps = state.sweeps(url)
    if not sweeps:
        st.info("No sweeps yet: run one on the Run page (add `--replicas 1,2` to measure replicas).")
        return
    sweep = widgets.pick_sweep(sweeps, key="scale_sweep")
    key = state.version(sweep)
    view = state.scale_view(url, key)
    if view is None:
        st.info("No finished one-replica trial with a rate or concurrency in this sweep yet.")
        return
    left, right = st.columns([1, 1])
    load = left.selectbox("Load per replica", view.loads, key=f"scale_load_{sweep.id}")
    router = right.selectbox("Router (simulated)", list(ROUTER_NAMES), key=f"scale_router_{sweep.id}",
                             format_func=ROUTER_NAMES.__getitem__)
    configs = [c for c in view.bases if c.load_label == load][:MAX_CONFIGS]
    simulated = [p for c in configs for p in state.scale_simulation(url, key, c, router)]
    measured = [p for p in view.measured if p.load_per_replica == load
                and p.config in {s.config for s in simulated}]
    st.plotly_chart(charts_scale.scale_figure(simulated + measured), key=f"scale_chart_{sweep.id}")
    st.caption(f"Cost model: {view.cost_source}. Simulated at {', '.join(map(str, REPLICA_COUNTS))} "
               f"replicas; the {MAX_CONFIGS} best one-replica configs at this load are shown.")

