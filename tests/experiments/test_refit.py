"""Issue 22: the black-box fit refitted as measured trials arrive, the TTFT residuals, the error
band, each config's capacity predicted before measuring, and the search's re-plans (start at
the predicted knee, skip, order) applied again on replay. The "server" is the simulator under a
known cost model, so what the fit must recover is exactly known."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from common.details import Prediction, Revision, SearchPlan, TrialDetails
from common.records import SLO, TrialConfig, TrialRecord
from engine.simulate import CostModel
from experiments.predict import accuracy
from experiments.predict.calibrate import Probe as ProbeReading
from experiments.predict.calibrate import fit
from experiments.predict.refit import Observed, PointProbe, refit
from experiments.predict.simulate import (
    BlackBoxCost,
    cost_from_dict,
    cost_to_dict,
    simulate_trial,
    stored_calibration,
)
from experiments.search.capacity import (
    ConfigCapacity,
    apply_revision,
    as_revision,
    knob_label,
    run_search,
    settings_for,
    trial_config,
)
from experiments.search.capacity_plan import replan, simulated_measure
from experiments.search.evidence import Sample
from experiments.search.strategy import Capacity, CapacitySearch, Probe, SearchSettings
from experiments.spec.grid import parse_spec
from experiments.spec.profiles import Profile

MS = 1e-3
TRUTH = CostModel(8 * MS, 0.3 * MS, 5 * MS, 0.8 * MS)  # the synthetic server's step costs
PROFILE = Profile.model_validate({
    "name": "p", "prompt_tokens": {"kind": "uniform", "min": 16, "max": 128},
    "output_tokens": {"kind": "uniform", "min": 8, "max": 32},
    "arrival": {"mode": "closed", "concurrency": 4},
    "slos": {"ttft_ms": {"percentile": "p90", "max_ms": 200.0},
             "tpot_ms": {"percentile": "p90", "max_ms": 20.0}}, "warmup_requests": 2})
SLOS = [SLO("ttft_ms", "p90", 200.0), SLO("tpot_ms", "p90", 20.0)]
KEYS = ("output_tokens_per_s", "tpot_ms_p50", "ttft_ms_p50")


def config(batch: int, users: int) -> TrialConfig:
    return TrialConfig("continuous", batch, 0.0, concurrency=users)


def measured(cost: CostModel, c: TrialConfig) -> Observed:
    return Observed(c, simulate_trial(c, PROFILE, 24, cost, SLOS, 0).flat(), 24, 0)


def rel_error(cost: CostModel, c: TrialConfig) -> float:
    """Worst relative error of the fitted-key metrics of `c` under `cost` against the truth."""
    p, m = (simulate_trial(c, PROFILE, 24, x, SLOS, 0).flat() for x in (cost, TRUTH))
    return max(abs(p[k] / m[k] - 1) for k in KEYS)


def test_the_refit_recovers_a_known_server_from_its_trials():
    # Probes that missed the decode slope (a server capped at 2 running shows none) and read
    # decode 30% fast: the trials at 8-16 running reveal both.
    wrong = CostModel(TRUTH.prefill_base_s, TRUTH.prefill_per_token_s, 3.5 * MS, 0.0)
    probes = [PointProbe("prefill", n, TRUTH.prefill_s(1, n)) for n in (16, 128, 512)]
    trials = [measured(TRUTH, config(16, u)) for u in (1, 4, 8, 16)]
    held_out = config(8, 12)
    fitted = refit(wrong, wrong, probes, trials, PROFILE, SLOS, iterations=6)
    assert rel_error(wrong, held_out) > 0.15
    assert rel_error(fitted, held_out) < 0.05
    assert fitted.decode_per_seq_s == pytest.approx(TRUTH.decode_per_seq_s, rel=0.35)


def test_each_refit_as_points_arrive_predicts_the_next_trial_better():
    wrong = CostModel(TRUTH.prefill_base_s, TRUTH.prefill_per_token_s, 2.5 * MS, 0.2 * MS)
    arriving = [config(16, u) for u in (2, 8, 16, 12)]
    cost, errors, seen = wrong, [], []
    for c in arriving:
        errors.append(rel_error(cost, c))  # predicted before it ran
        seen.append(measured(TRUTH, c))
        cost = refit(cost, wrong, [], seen, PROFILE, SLOS)
    assert errors[0] > 0.3 and errors[-1] < 0.15 and errors[-1] < errors[1] < errors[0]


def test_probe_fit_is_by_relative_error_and_keeps_the_ttft_residuals():
    # Prefill probes off a line at short prompts: by absolute error the 16-token probe would be
    # ignored; by relative error it is fitted as well as the 1,024-token one.
    prefill = [ProbeReading("prefill", n, s, 8, (-0.002, 0.0, 0.030)) for n, s in
               ((16, 0.014), (128, 0.042), (512, 0.176), (1024, 0.392))]
    decode = [ProbeReading("decode", c, 0.005 + 1e-3 * c, 8) for c in (1, 4, 16)]
    cal = fit(prefill + decode)
    assert isinstance(cal.cost, BlackBoxCost) and len(cal.cost.ttft_noise_s) == 12
    worst = max(abs(cal.fitted_s(p) / p.seconds - 1) for p in prefill)
    assert worst < 0.2  # a least-squares line through these misses the 16-token probe by 56%
    again = cost_from_dict(cost_to_dict(cal.cost))
    assert again.ttft_noise_s == pytest.approx(cal.cost.ttft_noise_s)
    assert again.decode_per_seq_s == pytest.approx(cal.cost.decode_per_seq_s)


def test_ttft_residuals_widen_the_tail_not_the_median():
    c = config(8, 2)
    plain = simulate_trial(c, PROFILE, 48, TRUTH, SLOS, 0).flat()
    stalls = (0.0,) * 8 + (0.2, 0.3)  # one request in five stalls 0.2-0.3 s
    noisy = simulate_trial(c, PROFILE, 48, BlackBoxCost(*vars(TRUTH).values(), stalls), SLOS, 0).flat()
    assert noisy["ttft_ms_p90"] > plain["ttft_ms_p90"] + 100
    assert noisy["ttft_ms_p50"] == pytest.approx(plain["ttft_ms_p50"], rel=0.2)
    assert noisy["tpot_ms_p50"] == pytest.approx(plain["tpot_ms_p50"], rel=0.01)


def trial(trial_id: int, c: TrialConfig, errors: dict, details: dict | None = None,
          metrics: dict | None = None) -> TrialRecord:
    prediction = {"predicted": {k: 100.0 for k in errors}, "error": errors}
    return TrialRecord(trial_id, 1, c, "done", metrics or {k: 100 / (1 + e) for k, e in errors.items()},
                       details={"prediction": prediction, **(details or {})})


def test_the_error_band_holds_the_measured_over_predicted_ratios():
    errs = [0.25, 0.0, -0.2, 0.1, 0.5]  # predicted / measured - 1
    trials = [trial(i, config(4, 1), {"output_tokens_per_s": e}) for i, e in enumerate(errs)]
    band = accuracy.error_band(trials)["output_tokens_per_s"]
    ratios = sorted(1 / (1 + e) for e in errs)
    assert band["n"] == 5 and ratios[0] < band["lo"] < ratios[1] and ratios[-2] < band["hi"] < ratios[-1]
    one = accuracy.ratio_band([math.log(1.1)])
    assert (one["lo"], one["hi"]) == (1.0, pytest.approx(1.1))  # always holds the prediction
    assert accuracy.knee_growth({}) == accuracy.DEFAULT_GROWTH
    assert accuracy.knee_growth({"capacity": {"lo": 0.9, "hi": 1.05, "n": 2}}) == accuracy.MIN_GROWTH
    assert accuracy.knee_growth({"capacity": {"lo": 0.7, "hi": 1.6, "n": 2}}) == pytest.approx(1.6)
    assert accuracy.knee_growth({"output_tokens_per_s": {"lo": 0.2, "hi": 1, "n": 2}}) == 2.0


def test_capacity_predicted_before_measuring_and_the_error_rows():
    plan = {"predicted": {"continuous b4 w0ms": 4.0, "continuous b8 w0ms": 10.0},
            "calibration_predicted": 12.0}
    t1 = trial(1, config(8, 12), {"output_tokens_per_s": 0.1}, {})
    t1 = replace(t1, details=replace(t1.details, prediction=replace(
        t1.details.prediction, plan=SearchPlan.from_dict(plan))))
    t2 = trial(2, config(8, 16), {"output_tokens_per_s": 0.0},
               {"revision": {"predicted": {"continuous b4 w0ms": 6.0}}})
    t3 = trial(3, config(4, 6), {"output_tokens_per_s": -0.1})
    before = accuracy.predicted_before([t3, t1, t2])
    assert before == {"continuous b8 w0ms": 12.0, "continuous b4 w0ms": 6.0}
    rows = accuracy.trial_rows([t1, t2, t3])
    assert [r["tok/s error"] for r in rows] == ["+10%", "+0%", "-10%"]
    b8 = replace(config(8, 1), concurrency=None)
    caps = [ConfigCapacity(b8, Capacity(15.0, 16.0, "decided", "", 2), "users")]
    row = accuracy.capacity_rows(caps, before)[0]
    assert (row["predicted"], row["measured"], row["error"]) == (12.0, 15.0, "-20%")


def users_spec(batch_sizes: list[int]):
    return parse_spec({"profile": "chat", "policies": ["continuous"], "batch_sizes": batch_sizes,
                       "max_wait_ms": [0], "requests": 24, "server_cmd": "srv --port {port} {batch_size}",
                       "search": {"load": "concurrency", "max_load": 64, "keep_ratio": 0.5}})


def test_a_replan_starts_fresh_configs_at_their_knee_orders_them_and_skips_the_weak():
    spec = users_spec([16, 4, 1, 2])
    knobs = {k.batch_size: k for k in spec.knob_configs()}
    searches = {k: CapacitySearch(settings_for(spec, PROFILE, k)) for k in knobs.values()}
    best = CapacitySearch(SearchSettings(0.9, True, 4, 1, 4))  # b16 measured: >= 4 users
    best.record(best.next_probe(), Sample(48, 48))
    assert best.next_probe() is None and best.result().is_decided
    searches[knobs[16]] = best
    revision = replan(spec, PROFILE, TRUTH, SLOS, searches, growth=1.3)
    assert revision.order == sorted(revision.order, key=lambda lb: -revision.predicted[lb])
    assert "continuous b1 w0ms" in revision.pruned  # predicted 1 user, below 0.5 x 4
    assert set(revision.start) == set(revision.order) and "continuous b16 w0ms" not in revision.start
    by_label = {knob_label(k): k for k in searches}
    apply_revision(spec, PROFILE, searches, by_label, as_revision(revision))
    first = revision.order[0]
    assert searches[knobs[1]].result().status == "pruned"
    unfinished = [k for k, x in searches.items() if not x.is_finished]
    assert unfinished == [by_label[label] for label in revision.order]  # most promising first
    fresh = searches[by_label[first]]
    assert fresh.next_probe().load == revision.start[first] and fresh.s.growth >= 1.3
    assert as_revision({"continuous b1 w0ms": "why"}).to_dict() == {"pruned": {"continuous b1 w0ms": "why"}}


def test_a_replay_applies_stored_replans_at_the_same_point():
    spec = users_spec([8, 4, 2])
    measure = simulated_measure(spec, PROFILE, TRUTH, SLOS)
    trials: list[TrialRecord] = []

    def live(c: TrialConfig):
        sample = measure(c)
        m = {"requests_completed": sample.num_total, "slo_attainment": sample.num_good / sample.num_total}
        trials.append(TrialRecord(len(trials) + 1, 1, c, "done", m, details={}))
        return sample

    def revise(c: TrialConfig, searches: dict) -> dict:
        revision = replan(spec, PROFILE, TRUTH, SLOS, searches, growth=1.25)
        trials[-1] = replace(trials[-1], details=replace(trials[-1].details, revision=revision))
        return revision

    plan = {"start": {"continuous b8 w0ms": 8.0}, "predicted": {"continuous b8 w0ms": 8.0}}
    first = run_search(spec, PROFILE, [], live, plan=plan, revise=revise)
    again = run_search(spec, PROFILE, trials, None, plan=plan)
    assert [c.capacity for c in again] == [c.capacity for c in first]
    assert sum(c.capacity.num_probes for c in again) == len(trials)
    b8 = next(k for k in spec.knob_configs() if k.batch_size == 8)
    assert trials[0].config == trial_config(spec, b8, Probe(8.0, 0))  # the plan's knee first
    # the configs started after a replan start where it said (the predicted knee)
    starts = {}
    for t in trials:
        starts.setdefault(knob_label(t.config), t.config.concurrency)
    for t in trials:
        for label, load in (t.details.revision or Revision()).start.items():
            if label in starts and trials.index(t) < next(i for i, x in enumerate(trials)
                                                           if knob_label(x.config) == label):
                assert starts[label] == int(load)


def test_stored_calibration_is_the_latest_refit():
    probe_fit = {"cost_model": cost_to_dict(BlackBoxCost(0.01, 0.0, 0.005, 0.0, 0.0, (0.001,)))}
    refit_1 = {"cost_model": cost_to_dict(TRUTH)}
    details = [{"prediction": {"calibration": probe_fit}}, {"prediction": {}},
               {"prediction": {"refit": refit_1}}]
    details = [TrialDetails.from_dict(d) for d in details]
    assert stored_calibration(details) == TRUTH
    assert stored_calibration(details[:2]).ttft_noise_s == (0.001,)
    assert stored_calibration([TrialDetails()]) is None


def test_on_started_servers_the_calibration_config_is_searched_first():
    spec = users_spec([8, 4, 2])
    measured_order: list[int] = []
    measure = simulated_measure(spec, PROFILE, TRUTH, SLOS)

    def live(c: TrialConfig):
        measured_order.append(c.batch_size)
        return measure(c)

    # b2 predicted best, but b8's server is the one already up (it was probed and calibrated)
    plan = {"predicted": {"continuous b2 w0ms": 9.0, "continuous b8 w0ms": 5.0},
            "first": "continuous b8 w0ms"}
    run_search(spec, PROFILE, [], live, plan=plan)
    runs = [b for i, b in enumerate(measured_order) if i == 0 or measured_order[i - 1] != b]
    assert runs == [8, 2, 4]  # one run per config (one server start each), the calibrated first


def stored(trial_id: int, c: TrialConfig, metrics: dict, prediction: dict) -> TrialRecord:
    return TrialRecord(trial_id, 1, c, "done", metrics, details={"prediction": prediction})


def test_the_refit_predicts_only_while_it_beats_the_probes_on_trials_it_had_not_seen():
    from experiments.predict.calibrate import refit_details

    spec = users_spec([16])
    wrong = CostModel(TRUTH.prefill_base_s, TRUTH.prefill_per_token_s, 2.5 * MS, 0.2 * MS)
    calibration = {"cost_model": cost_to_dict(wrong), "probes": []}
    trials: list[TrialRecord] = []
    fits = []
    for i, users in enumerate((2, 8, 16, 12)):  # a server the probes misread: trials correct it
        c = config(16, users)
        m = measured(TRUTH, c).metrics
        details = {"calibration": calibration} if i == 0 else {}
        fit_now = refit_details(trials, Prediction.from_dict(details), spec, PROFILE, SLOS, c, m, wrong)
        fits.append(fit_now)
        trials.append(stored(i + 1, c, m, {**details, "refit": fit_now}))
    assert not fits[0].uses_refit  # nothing held out yet: the probes predict
    assert fits[0].cost_model == cost_to_dict(wrong) and fits[0].chain != fits[0].cost_model
    assert fits[-1].uses_refit and fits[-1].held_out["num_trials"] == 4
    assert fits[-1].cost_model == fits[-1].chain
    assert stored_calibration(t.details for t in trials) == cost_from_dict(fits[-1].chain)


def test_the_refit_steps_aside_when_trials_mislead_it_and_skips_client_bound_ones():
    from experiments.predict.calibrate import refit_details

    spec = users_spec([16])
    calibration = {"cost_model": cost_to_dict(TRUTH), "probes": []}  # the probes were right
    slow = replace(TRUTH, decode_base_s=3 * TRUTH.decode_base_s)  # trials on a busy machine
    trials: list[TrialRecord] = []
    for i, users in enumerate((2, 8, 16, 12)):
        c = config(16, users)
        m = measured(slow if i % 2 == 0 else TRUTH, c).metrics  # alternately busy and quiet
        details = {"calibration": calibration} if i == 0 else {}
        fit_now = refit_details(trials, Prediction.from_dict(details), spec, PROFILE, SLOS, c, m, TRUTH)
        trials.append(stored(i + 1, c, m, {**details, "refit": fit_now}))
    assert not fit_now.uses_refit and fit_now.cost_model == cost_to_dict(TRUTH)
    lagged = {**measured(slow, config(16, 4)).metrics, "client_bound": True}
    after = refit_details(trials, Prediction(), spec, PROFILE, SLOS, config(16, 4), lagged, TRUTH)
    assert after.chain == fit_now.chain and after.held_out == fit_now.held_out


def test_probes_load_a_server_with_no_more_users_than_the_search_offers():
    from experiments.run.search_runner import probe_running

    spec = users_spec([128, 4])  # max_load 64 users
    assert probe_running(spec, 128) == 64 and probe_running(spec, 4) == 4
    by_rate = parse_spec({**spec.model_dump(), "search": {**spec.search.model_dump(), "load": "rate"}})
    assert probe_running(by_rate, 128) == 128  # at a rate, running requests are not capped by users
