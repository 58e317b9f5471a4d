"""Shared state: one Store per db URL and cached queries, keyed so they refresh as sweeps move.

Large results (trials, folded points) use `st.cache_resource`, not `st.cache_data`: they are
frozen records shared read-only, and unpickling 5,000 trials on every rerun would cost more
than the rest of the Explore page together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import streamlit as st

from common.records import SLO, TrialConfig, TrialRecord
from db.store import Store, StoredRequest, SweepRecord, resolve_db_url
from experiments.analysis.pareto import ConfigPoint, aggregate
from experiments.analysis.queries import SweepAnalysis, analyse, stored_slos
from experiments.analysis.recommend import (
    Recommendation,
)
from experiments.analysis.scaleout import MIN_SIM_REQUESTS, ScalePoint, ScaleView, simulate_scaling
from experiments.analysis.scaleout import scale_view as build_scale_view
from experiments.spec.profiles import Profile

LIVE_TTL_S = 2.0  # sweeps move while a page is open; the live panels poll at this pace
STABLE_TTL_S = 600.0  # keyed by the sweep's progress, so only memory bounds these

HOVER_KEYS = ("goodput_rps", "slo_attainment", "saturated", "client_bound", "client_bound_reason")
SweepVersion = tuple[int, str, int, int]


def db_url() -> str:
    """The store this dashboard shows: $TRADEOFF_DB (set by `tradeoff ui`) or ./tradeoff.db."""
    return resolve_db_url(None)


@st.cache_resource(show_spinner=False)
def get_store(url: str) -> Store:
    """One Store (engine and connection pool) per URL for all sessions."""
    return Store(url)


def version(sweep: SweepRecord) -> SweepVersion:
    """Changes whenever the sweep stores a trial or changes status: the cache key of its data."""
    return (sweep.id, sweep.status, sweep.trials_done, sweep.trials_failed)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def sweeps(url: str) -> list[SweepRecord]:
    """All sweeps, newest first (at most LIVE_TTL_S old)."""
    return get_store(url).list_sweeps()


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def user_profiles(url: str) -> dict[str, str]:
    """The user's saved profiles, name -> YAML text."""
    return get_store(url).list_profiles()


@st.cache_resource(ttl=STABLE_TTL_S, max_entries=16, show_spinner=False)
def trials(url: str, key: SweepVersion) -> list[TrialRecord]:
    """The trials of sweep `key[0]` as of version `key`."""
    return get_store(url).list_trials(key[0])


def slim(records: Sequence[TrialRecord], keys: Iterable[str]) -> list[TrialRecord]:
    """The trials with only the metrics in `keys`: folding 70 metrics of 5,000 trials takes a
    second, folding the few a chart or a recommendation reads takes a tenth of that."""
    wanted = set(keys)
    return [replace(t, metrics={k: v for k, v in t.metrics.items() if k in wanted})
            for t in records]


@st.cache_resource(ttl=STABLE_TTL_S, max_entries=32, show_spinner=False)
def points(url: str, key: SweepVersion, metric_keys: tuple[str, ...]) -> list[ConfigPoint]:
    """The sweep's finished trials folded per config, with `metric_keys` and the hover metrics."""
    return aggregate(slim(trials(url, key), (*metric_keys, *HOVER_KEYS)))


def point_details(url: str, key: SweepVersion, point: ConfigPoint) -> ConfigPoint:
    """`point` folded again with every metric (for its details table)."""
    ids = set(point.trial_ids)
    return aggregate([t for t in trials(url, key) if t.trial_id in ids])[0]


@st.cache_resource(ttl=STABLE_TTL_S, max_entries=16, show_spinner=False)
def base_slos(url: str, key: SweepVersion) -> list[SLO]:
    """The SLOs (in ms) the sweep's trials were judged against."""
    return stored_slos(trials(url, key), get_store(url))


@st.cache_resource(ttl=STABLE_TTL_S, max_entries=32, show_spinner=False)
def analysis(url: str, key: SweepVersion) -> SweepAnalysis:
    """The sweep's recommendation under its own SLOs."""
    store = get_store(url)
    return analyse(store, store.get_sweep(key[0]))


@st.cache_resource(ttl=STABLE_TTL_S, max_entries=64, show_spinner=False)
def requests(url: str, trial_id: int) -> list[StoredRequest]:
    """A finished trial's request rows (they never change)."""
    return get_store(url).get_requests(trial_id)


@st.cache_resource(ttl=STABLE_TTL_S, max_entries=64, show_spinner=False)
def whatif(url: str, key: SweepVersion, slos: tuple[SLO, ...], objective: str) -> Recommendation:
    """The recommendation under what-if SLOs (cached: sliders rerun the page often): the same
    analysis, with each trial's stored requests judged again under `slos`."""
    store = get_store(url)
    return analyse(store, store.get_sweep(key[0]), list(slos), objective).recommendation


def objective(sweep: SweepRecord) -> str:
    """The objective of the profile the sweep ran with."""
    return Profile(**sweep.profile).objective


def clear_live() -> None:
    """Forget cached sweep and profile lists after this session changed them."""
    sweeps.clear()
    user_profiles.clear()


@st.cache_resource(ttl=STABLE_TTL_S, max_entries=16, show_spinner=False)
def scale_view(url: str, key: SweepVersion) -> ScaleView | None:
    """The scale-out chart's inputs for one sweep (its trials, profile, SLOs, cost model)."""
    sweep = get_store(url).get_sweep(key[0])
    return build_scale_view(trials(url, key), Profile(**sweep.profile), base_slos(url, key), sweep.model)


@st.cache_resource(ttl=STABLE_TTL_S, max_entries=64, show_spinner="Simulating replicas…")
def scale_simulation(url: str, key: SweepVersion, base: TrialConfig, router: str) -> list[ScalePoint]:
    """Simulated goodput of one config at 1-64 replicas (a few seconds; cached)."""
    view = scale_view(url, key)
    return [] if view is None else simulate_scaling(base, view.profile, view.slos, view.cost, router,
                                                    min_requests=MIN_SIM_REQUESTS)
