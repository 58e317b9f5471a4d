"""Small view pieces the pages share: escaping, sweep pickers, metric pickers, the demo offer
and the live progress strip."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import streamlit as st

from app import launcher
from app.dashboard import charts, state
from common.details import TrialDetails
from common.records import LATENCY_METRICS, SLO, STATS, THROUGHPUT_METRICS
from db.errors import StoreError
from db.store import SweepRecord
from experiments.analysis.recommend import KNEE_LATENCY_KEY, OBJECTIVES
from experiments.spec.grid import SweepSpec
from experiments.spec.profiles import SLO_METRICS, ProfileError

SHARED_SWEEP = "sweep_id"  # the sweep the user last looked at, kept across pages
LIVE_REFRESH_S = 2.0
# CommonMark lets any ASCII punctuation be backslash-escaped; these are the ones Streamlit's
# markdown gives a meaning to (emphasis, links, HTML, lists, tables, `:red[...]`, `$LaTeX$`).
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&=])")


def md(text: str) -> str:
    """Text that Streamlit markdown shows literally: no markup, links, colours, HTML or LaTeX."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def sweep_label(sweep: SweepRecord) -> str:
    """Plain-text label for pickers (options are not rendered as markdown)."""
    return f"#{sweep.id} {sweep.name} · {sweep.status}"


def pick_sweep(sweeps: Sequence[SweepRecord], key: str, label: str = "Sweep",
               prefer: SweepRecord | None = None) -> SweepRecord:
    """A sweep picker that follows the sweep last looked at (or started), on any page."""
    by_id = {s.id: s for s in sweeps}
    shared = st.session_state.get(SHARED_SWEEP)
    if shared not in by_id:
        shared = prefer.id if prefer is not None else sweeps[0].id
    # Set before the widget exists in this run, so a sweep chosen elsewhere shows up here too.
    st.session_state[key] = shared
    st.session_state[SHARED_SWEEP] = shared
    st.selectbox(label, list(by_id), key=key, format_func=lambda i: sweep_label(by_id[i]),
                 on_change=_share, args=(key,))
    return by_id[shared]


def _share(key: str) -> None:
    st.session_state[SHARED_SWEEP] = st.session_state[key]


def default_axes(sweep: SweepRecord, slos: Sequence[SLO]) -> tuple[str, str]:
    """The objective's metric against the first SLO's latency (p90 E2E without SLOs)."""
    first = min(slos, key=lambda s: SLO_METRICS.index(s.metric), default=None)
    return OBJECTIVES[state.objective(sweep)], first.key if first else KNEE_LATENCY_KEY


def pick_axes(key: str, default_throughput: str, default_latency: str) -> tuple[str, str]:
    """Throughput metric (y), latency metric and percentile (x): their flat metric keys."""
    metric, _, stat = default_latency.rpartition("_")
    left, mid, right = st.columns([2, 2, 1])
    throughput = left.selectbox("Throughput (y axis)", THROUGHPUT_METRICS, key=f"{key}_thr",
                                index=THROUGHPUT_METRICS.index(default_throughput),
                                format_func=charts.throughput_label)
    latency = mid.selectbox("Latency (x axis)", LATENCY_METRICS, key=f"{key}_lat",
                            index=LATENCY_METRICS.index(metric),
                            format_func=lambda m: charts.LATENCY_NAMES[m])
    percentile = right.selectbox("Percentile", STATS, key=f"{key}_pct", index=STATS.index(stat))
    return throughput, f"{latency}_{percentile}"


DEMO_HELP = ("builtin:tiny, static and continuous batching, batch 4 and 16, at 2 and 16 users, "
             "2 repetitions, under the chat and the batch profile: about a minute in all on a "
             "2-core CPU")


def demo_offer(url: str, key: str) -> None:
    """The empty state: what a sweep is, and a button that starts the demo one."""
    st.info("No sweeps yet. The demo sweep runs the built-in tiny model under two workloads, chat "
            "and batch, with both batching policies (static and continuous), batch sizes 4 and 16, "
            "at 2 and 16 concurrent users, twice each: it shows batching raising throughput at a "
            "latency cost, and the two workloads recommending different configs. It runs in a "
            "background worker, so you can keep browsing.")
    if st.button("Run the demo sweep", type="primary", key=key, icon=":material/play_arrow:",
                 help=DEMO_HELP):
        start_demo(url)


def start_demo(url: str) -> None:
    """Queue the demo's sweeps (chat, then batch) and focus every page on the first."""
    start(url, *launcher.demo_specs())


def start(url: str, *specs: SweepSpec) -> None:
    """Queue sweeps, start a worker if needed, and focus every page on the first."""
    try:
        with st.spinner("Queuing the sweep..."):
            ids = [launcher.start_sweep(state.get_store(url), url, spec) for spec in specs]
    except (StoreError, ProfileError) as exc:
        st.error(f"Could not start the sweep: {md(str(exc))}")
        return
    st.session_state[SHARED_SWEEP] = ids[0]
    state.clear_live()
    st.rerun()


def progress_text(sweep: SweepRecord) -> str:
    """`3/8 trials (1 failed) · now: static/b8/... · ETA 40 s` for a progress bar."""
    finished = sweep.trials_done + sweep.trials_failed
    parts = [f"{finished}/{sweep.trials_total} trials"]
    if sweep.trials_failed:
        parts[0] += f" ({sweep.trials_failed} failed)"
    if sweep.current_label:
        parts.append(f"now: {sweep.current_label}")
    eta = launcher.eta_s(sweep)
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    return " · ".join(parts)


def duration(seconds: float) -> str:
    """`40 s`, `2.5 min` or `1.2 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def status_line(sweep: SweepRecord) -> None:
    """The sweep's status as one coloured line (escaped: names and errors are user text)."""
    text = f"Sweep #{sweep.id} **{md(sweep.name)}** is {sweep.status}"
    if sweep.status == "done":
        st.success(f"{text}: {sweep.trials_done} trials stored.", icon=":material/check:")
    elif sweep.status == "failed":
        st.error(f"{text}: {md(sweep.error or 'unknown error')}", icon=":material/error:")
    elif sweep.status == "cancelled":
        st.warning(f"{text}.", icon=":material/stop:")
    else:
        finished = sweep.trials_done + sweep.trials_failed
        st.progress(min(1.0, finished / max(sweep.trials_total, 1)), text=f"{text}: {progress_text(sweep)}")


@st.fragment(run_every=LIVE_REFRESH_S)
def live_strip(url: str, sweep_id: int, shown: state.SweepVersion) -> None:
    """Progress of an active sweep; reruns the page when it stores a trial or finishes."""
    store = state.get_store(url)
    launcher.watch(store, url)
    sweep = store.get_sweep(sweep_id)
    if state.version(sweep) != shown:
        state.clear_live()  # else the rerun could read the old version from the cache again
        st.rerun(scope="app")
    status_line(sweep)


def where_it_ran(details: TrialDetails | Mapping) -> str | None:
    """`Ran on worker 1 (node gpu-3, cuda, GPUs 0), attempt 2` or the replicas it had; None if unknown."""
    where = TrialDetails.of(details).provenance
    if where is None or where.is_empty():
        return None
    parts = [f"node {where.node or '?'}", str(where.device_name or where.device or "?")]
    if where.gpu_ids:
        parts.append(f"GPUs {', '.join(where.gpu_ids)}")
    runner = f"Ray worker {where.worker}" if where.executor == "ray" else "this engine"
    started = where.engine
    if started:  # a server tradeoff started: its name, version, start-up and the exact command
        version = f" {started['version']}" if started.get("version") else ""
        start = where.server_start_s
        took = f", started in {start:.0f} s" if start is not None else ""
        return (f"Ran on {started.get('name') or 'a server'}{version} started by tradeoff{took}: "
                f"`{started.get('command')}` (log: {where.server_log}).")
    text = f"Ran on {runner} ({', '.join(parts)})"
    if (where.attempt or 1) > 1:
        text += f", attempt {where.attempt} (its first worker was lost)"
    replicas = where.replicas
    if replicas:
        text += f"; {replicas['replicas']} replicas on {', '.join(replicas['placements'])}"
        text += f" behind {replicas['router']}" if replicas.get("router") else ""
    return text + "."
