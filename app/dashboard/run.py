"""Run page: configure a sweep grid or a capacity search, see its size and estimated duration,
start it, watch it."""

from __future__ import annotations

import json

import streamlit as st

from app import launcher, runs
from app.dashboard import capacity_view, charts, forms, state, widgets
from app.dashboard.forms import RunInputs
from common.vocab import POLICIES
from db.errors import StoreError
from db.store import SweepRecord
from experiments.analysis.pareto import classify
from experiments.analysis.queries import is_search
from experiments.predict.estimate import estimate_search_s, estimate_sweep_s
from experiments.search.capacity import can_continue
from experiments.spec.grid import GridError, SweepSpec
from experiments.spec.profiles import list_builtin_profiles

OTHER_MODEL = "Hugging Face id or local path..."
AUTO_ESTIMATE_MAX_CONFIGS = 64  # the estimate simulates every trial: ~50 ms each on 2 cores
AUTO_SEARCH_ESTIMATE_CONFIGS = 4  # a search estimate simulates ~10 trials per config, and a plan
RUN_KINDS: dict[str, str] = {"grid": "Grid of load levels",
                             "capacity": "Find capacity (largest load within the SLOs)"}


def render() -> None:
    """The Run page."""
    st.title("Run a sweep")
    url = state.db_url()
    st.caption("Each trial runs one batching config at one load level; the sweep runs in a "
               "background worker, so closing or refreshing this tab never stops it.")
    with st.container(border=True):
        kind = st.radio("Run", list(RUN_KINDS), key="run_kind", horizontal=True,
                        format_func=RUN_KINDS.get)
        inputs, slots = _inputs(url, is_search=kind == "capacity")
        spec, errors = forms.build_spec(inputs, state.user_profiles(url))
        for field, message in errors.items():  # each error under its field (the slot after it)
            slots.get(field, slots["name"]).error(widgets.md(message), icon=":material/error:")
        _start_row(url, spec)
    _sweeps_panel(url)


def _inputs(url: str, is_search: bool = False) -> tuple[RunInputs, dict]:
    """Every field, each followed by an empty slot where its error goes."""
    slots: dict = {}
    left, right = st.columns(2)
    with left:
        model, device, profile, name = _where_inputs(url, slots)
    search_load, budget_min = None, 10.0
    with right:
        policies, batch_sizes, waits, token_budgets = _knob_inputs(slots)
        if is_search:
            search_load, budget_min, burstiness = _search_inputs(slots)
            mode, loads = search_load, ""
        else:
            mode, loads, burstiness = _load_inputs(slots)
    left, right = st.columns(2)
    requests = left.number_input("Requests per trial", 1, 100_000, 48, key="run_requests")
    slots["requests"] = left.empty()
    repetitions = right.number_input("Repetitions", 1, 100, 1, key="run_repetitions",
                                     help="2+ gives error bars (95% intervals)")
    slots["repetitions"] = right.empty()
    replicas, routers = _replica_inputs(slots, is_search)
    executor, ray_address, engine = _executor_inputs(slots, is_search)
    launch = _launch_inputs() if engine else ("", "", "")
    slos = slots.pop("slos_input")
    inputs = RunInputs(model, device, profile, tuple(policies), batch_sizes, waits, mode, loads,
                       burstiness, int(requests), int(repetitions), name, search_load,
                       float(budget_min), token_budgets, executor, ray_address, replicas,
                       tuple(routers), engine, *launch, slos)
    return inputs, slots


def _launch_inputs() -> tuple[str, str, str]:
    """How the engine's server starts (the CLI's --engine-python, --engine-args, --engine-env)."""
    python = st.text_input("Engine's Python (optional)", key="run_engine_python",
                           help="the python of the environment the engine lives in, e.g. "
                                ".venv-vllm/bin/python (.ci/vllm.sh makes one with vLLM's CPU build)")
    left, right = st.columns(2)
    args = left.text_input("Extra server arguments", key="run_engine_args",
                           help='e.g. --max-model-len 2048 --enforce-eager (not the flags the grid sets)')
    env = right.text_input("Server environment", key="run_engine_env",
                           help="NAME=VALUE, comma-separated, e.g. VLLM_CPU_KVCACHE_SPACE=2")
    return python, args, env


def _replica_inputs(slots: dict, is_search: bool) -> tuple[str, list[str]]:
    if is_search:
        return "1", ["least_outstanding"]
    left, right = st.columns(2)
    replicas = left.text_input("Replicas", "1", key="run_replicas",
                               help="engine replicas behind a router, e.g. 1, 2: one process each, "
                                    "pinned to its own GPU or its share of the CPU cores")
    slots["replicas"] = left.empty()
    routers = right.multiselect("Routers (for 2+ replicas)", list(forms.ROUTERS),
                                default=["least_outstanding"], key="run_routers")
    slots["routers"] = right.empty()
    return replicas, routers


def _executor_inputs(slots: dict, is_search: bool) -> tuple[str, str, str | None]:
    """Where trials run: (executor, Ray address, engine preset or None)."""
    # A search probes one load after another: not on Ray, but a deployed engine's server works.
    kinds = [k for k in forms.EXECUTORS if not (is_search and k == "ray")]
    left, right = st.columns(2)
    executor = left.radio("Run trials on", kinds, key="run_executor", horizontal=True,
                          format_func=forms.EXECUTORS.get)
    address, engine = "", None
    if executor == "ray":
        address = right.text_input("Ray head address (HOST:PORT)", key="run_ray_address",
                                   help="empty: a local Ray cluster on this machine for the sweep's "
                                        "lifetime")
    elif executor == "engine":
        engine = right.selectbox("Engine", list(forms.ENGINE_NAMES), key="run_engine",
                                 format_func=forms.ENGINE_NAMES.get,
                                 help="its server starts once per batching config with that "
                                      "config's flags, on this machine, serving the model above; "
                                      "it must be installed here")
    slots["executor"] = st.empty()
    return executor, address, engine


def _search_inputs(slots: dict) -> tuple[str, float, float]:
    load = st.radio("Search over", ["rate", "concurrency"], key="run_search_load",
                    horizontal=True, format_func={"rate": "open loop: requests/s",
                                                  "concurrency": "closed loop: users"}.get)
    budget = st.number_input("Time budget (minutes)", min_value=0.5, max_value=24 * 60.0,
                             value=10.0, key="run_budget",
                             help="the search stops cleanly when it is spent, with the best "
                                  "answer so far; resume it to go on")
    slots["budget"] = st.empty()
    slots["load"] = st.empty()
    burstiness = 1.0 if load != "rate" else st.number_input(
        "Burstiness (gamma shape; 1 = Poisson, < 1 burstier)", min_value=0.05,
        max_value=100.0, value=1.0, key="run_search_burstiness")
    slots["burstiness"] = st.empty()
    return load, float(budget), float(burstiness)


def _where_inputs(url: str, slots: dict) -> tuple[str, str, str, str]:
    model = _model_input()
    slots["model"] = st.empty()
    device = st.selectbox("Device", forms.DEVICES, key="run_device",
                          help="auto = CUDA if present, then MPS, then CPU")
    slots["device"] = st.empty()
    profiles = list_builtin_profiles() + sorted(state.user_profiles(url))
    profile = st.selectbox("Workload profile", profiles, key="run_profile",
                           index=profiles.index("chat") if "chat" in profiles else 0,
                           help="request lengths, SLOs and objective (see Profiles)")
    slots["profile"] = st.empty()
    slots["slos_input"] = _slo_inputs()
    slots["slos"] = st.empty()
    name = st.text_input("Sweep name (optional)", key="run_name", max_chars=200)
    slots["name"] = st.empty()
    return model, device, profile, name


def _slo_inputs() -> tuple[tuple[str, float], ...] | None:
    """Absolute p90 SLOs in place of the profile's (the CLI's --slo); None: the profile's own."""
    if not st.checkbox("Set absolute SLOs instead of the profile's", key="run_slos_on",
                       help="the profile's relative SLOs (e.g. 5 x the unloaded TTFT) move with "
                            "the machine; absolute ones judge every sweep alike"):
        return None
    cols = st.columns(3)
    values = [(metric, col.number_input(f"p90 {label} (ms, 0 = none)", 0.0, 1e6, default,
                                        key=f"run_slo_{metric}"))
              for col, (metric, label, default) in zip(cols, (("ttft_ms", "TTFT", 500.0),
                                                             ("tpot_ms", "TPOT", 100.0),
                                                             ("e2e_ms", "E2E", 0.0)), strict=True)]
    return tuple((m, float(v)) for m, v in values if v > 0)


def _knob_inputs(slots: dict) -> tuple[list[str], str, str, str]:
    policies = st.multiselect("Batching policies", list(POLICIES),
                              default=["static", "continuous"], key="run_policies",
                              help="adaptive: continuous batching whose cap and wait follow the "
                                   "SLOs at run time (up to the max batch size and wait below)")
    slots["policies"] = st.empty()
    batch_sizes = st.text_input("Max batch sizes", "1, 4, 16", key="run_batch_sizes")
    slots["batch_sizes"] = st.empty()
    waits = st.text_input("Max batching waits (ms)", "0, 10", key="run_waits")
    slots["max_wait_ms"] = st.empty()
    budgets = st.text_input("Prefill token budgets", "none", key="run_token_budgets",
                            help="max_num_batched_tokens: the most tokens one step processes; long "
                                 "prompts are prefilled in chunks next to running decodes "
                                 "(continuous only). none = whole prompts. e.g. 64, 256, none")
    slots["max_num_batched_tokens"] = st.empty()
    return policies, batch_sizes, waits, budgets


def _model_input() -> str:
    choice = st.selectbox("Model", [*forms.BUILTIN_MODELS, OTHER_MODEL], key="run_model_choice",
                          help="builtin:tiny (~3M params) and builtin:small (~24M) need no "
                               "download")
    if choice != OTHER_MODEL:
        return choice
    return st.text_input("Hugging Face id or local path", key="run_model_other",
                         placeholder="e.g. Qwen/Qwen2.5-0.5B-Instruct")


def _load_inputs(slots: dict) -> tuple[str, str, float]:
    mode = st.radio("Load", list(forms.LOAD_MODES), key="run_load_mode", horizontal=True,
                    format_func=forms.LOAD_MODES.get)
    label, default = {"concurrency": ("Concurrent users", "1, 8"),
                      "rate": ("Arrival rates (requests/s)", "1, 4"),
                      "speedup": ("Trace speed-ups (x; trace profiles such as azure-conv)",
                                  "1, 2, 4")}[mode]
    loads = st.text_input(label, default, key=f"run_{mode}")
    slots["load"] = st.empty()
    burstiness = 1.0 if mode != "rate" else st.number_input(
        "Burstiness (gamma shape; 1 = Poisson, < 1 burstier)", min_value=0.05,
        max_value=100.0, value=1.0, key="run_burstiness")
    slots["burstiness"] = st.empty()
    return mode, loads, float(burstiness)


def _start_row(url: str, spec: SweepSpec | None) -> None:
    left, mid, right = st.columns([1, 2, 2], vertical_alignment="center")
    if spec is None:
        left.metric("Trials", "-")
        mid.caption("Fix the fields marked above to see the grid size and duration.")
    elif spec.target.engine is not None:
        left.metric("Trials" if spec.search is None else "Trials (at most)", spec.num_trials)
        mid.caption(f"No duration estimate: {forms.ENGINE_NAMES[spec.target.engine]} runs at its own "
                    f"speed, and its server starts once per config ({len(spec.knob_configs())}).")
    elif spec.search is not None:
        left.metric("Trials (at most)", spec.num_trials,
                    help="a search stops each config once its capacity is decided")
        with mid:
            _search_estimate(url, spec)
    else:
        left.metric("Trials", spec.num_trials)
        with mid:
            _estimate(url, spec)
    with right:
        label = "Find capacity" if spec is not None and spec.search is not None else "Start sweep"
        if st.button(label, type="primary", disabled=spec is None, key="run_start",
                     icon=":material/play_arrow:"):
            widgets.start(url, spec)
        if st.button("Run the demo sweep", key="run_demo", help=widgets.DEMO_HELP):
            widgets.start_demo(url)


def _estimate(url: str, spec: SweepSpec) -> None:
    num_configs = spec.num_trials // spec.load.repetitions
    if num_configs > AUTO_ESTIMATE_MAX_CONFIGS and not st.button(
            "Estimate duration", help=f"simulates all {num_configs} configs: a few seconds"):
        st.caption(f"{num_configs} configs x {spec.load.repetitions} repetitions")
        return
    profile_yaml = state.user_profiles(url).get(spec.load.profile, "")
    seconds = _estimate_s(spec.model_dump_json(), profile_yaml)
    st.metric("Estimated duration", widgets.duration(seconds),
              help="simulated with a rough cost model of this model and a 2-core CPU; "
                   "a guide, not a promise")


@st.cache_data(show_spinner="Estimating the duration...", max_entries=64)
def _estimate_s(spec_json: str, profile_yaml: str) -> float:
    spec = SweepSpec(**json.loads(spec_json))
    user = {spec.load.profile: profile_yaml} if profile_yaml else {}
    return estimate_sweep_s(spec, runs.profile_of(spec, lambda: user))


def _search_estimate(url: str, spec: SweepSpec) -> None:
    if len(spec.knob_configs()) > AUTO_SEARCH_ESTIMATE_CONFIGS and not st.button(
            "Estimate duration", help="runs the search on simulated trials: a few seconds"):
        st.caption(f"{len(spec.knob_configs())} configs, budget {spec.search.budget_s / 60:g} min")
        return
    profile_yaml = state.user_profiles(url).get(spec.load.profile, "")
    seconds, trials = _search_estimate_s(spec.model_dump_json(), profile_yaml)
    st.metric("Estimated duration", widgets.duration(seconds),
              help=f"about {trials} trials: the search run on simulated trials with a rough cost "
                   "model of this model, capped by the budget; a guide, not a promise")


@st.cache_data(show_spinner="Estimating the search...", max_entries=32)
def _search_estimate_s(spec_json: str, profile_yaml: str) -> tuple[float, int]:
    spec = SweepSpec(**json.loads(spec_json))
    user = {spec.load.profile: profile_yaml} if profile_yaml else {}
    return estimate_search_s(spec, runs.profile_of(spec, lambda: user))


def _sweeps_panel(url: str) -> None:
    """The store's sweeps; the chart redraws only when a trial lands (see _live_status)."""
    sweeps = state.get_store(url).list_sweeps()  # uncached: this is the live view
    st.subheader("Sweeps")
    sweep = None
    if sweeps:
        active = next((s for s in sweeps if launcher.is_active(s)), None)
        sweep = widgets.pick_sweep(sweeps, key="run_sweep", label="Show sweep", prefer=active)
    else:
        st.caption("No sweeps yet: start one above, or run the demo sweep.")
    _live_status(url, sweep.id if sweep else None, tuple(state.version(s) for s in sweeps))
    if sweep is not None:
        _growing_frontier(url, sweep)
        with st.expander(f"All sweeps ({len(sweeps)})"):
            st.dataframe([_row(s) for s in sweeps], hide_index=True)


@st.fragment(run_every=widgets.LIVE_REFRESH_S)
def _live_status(url: str, sweep_id: int | None, shown: tuple) -> None:
    """Polls the store: status and buttons here, the whole page again when any sweep moved."""
    store = state.get_store(url)
    launcher.watch(store, url)
    sweeps = store.list_sweeps()
    if tuple(state.version(s) for s in sweeps) != shown:
        state.clear_live()
        st.rerun(scope="app")
    sweep = next((s for s in sweeps if s.id == sweep_id), None)
    if sweep is not None:
        widgets.status_line(sweep)
        _controls(url, sweep)


def _controls(url: str, sweep: SweepRecord) -> None:
    store = state.get_store(url)
    try:
        if launcher.is_active(sweep) and st.button("Cancel sweep", key="run_cancel",
                                                   icon=":material/stop:"):
            launcher.cancel_sweep(store, sweep.id)
            st.toast("Cancelling: the worker stops after the current step.")
        if is_search(sweep):
            _resume_search(url, sweep)
        elif launcher.can_resume(sweep) and st.button("Resume sweep", key="run_resume",
                                                      icon=":material/replay:"):
            launcher.resume_sweep(store, url, sweep.id)
            st.toast("Resuming: finished trials are kept.")
    except (StoreError, GridError) as exc:
        st.error(widgets.md(str(exc)))


def _resume_search(url: str, sweep: SweepRecord) -> None:
    """A stopped search with configs left undecided continues under a new budget, reusing
    every stored trial (the worker runs it as `tradeoff search --resume` does)."""
    if launcher.is_active(sweep) or not can_continue(capacity_view.capacities(url, state.version(sweep))):
        return
    left, right = st.columns([2, 1], vertical_alignment="bottom")
    minutes = left.number_input("Time budget to resume with (minutes)", min_value=0.5,
                                max_value=24 * 60.0, value=10.0, key="run_resume_budget",
                                help="the stored trials are reused; only undecided configs go on")
    if right.button("Resume search", key="run_resume_search", icon=":material/replay:"):
        launcher.resume_search(state.get_store(url), url, sweep.id, float(minutes) * 60)
        st.toast("Resuming the search: its stored trials are kept.")


def _growing_frontier(url: str, sweep: SweepRecord) -> None:
    key = state.version(sweep)
    throughput, latency = widgets.default_axes(sweep, state.base_slos(url, key))
    points = state.points(url, key, (throughput, latency))
    if not points:
        if launcher.is_active(sweep):
            st.caption("The frontier appears here as trials finish.")
        return
    labels = classify(points, throughput, latency)
    capacity_view.capacity_section(url, sweep, "run_capacity")
    fig = charts.frontier_figure(points, labels, throughput, latency, height=420)
    capacity_view.add_predictions(fig, state.trials(url, key), throughput, latency)
    st.plotly_chart(fig, key="run_frontier")


def _row(sweep: SweepRecord) -> dict:
    return {"id": sweep.id, "name": sweep.name, "status": sweep.status,
            "trials": f"{sweep.trials_done + sweep.trials_failed}/{sweep.trials_total}",
            "failed": sweep.trials_failed, "model": sweep.model,
            "profile": sweep.profile_name, "device": sweep.device_name or sweep.device,
            "created (UTC)": sweep.created_at.strftime("%Y-%m-%d %H:%M")}
