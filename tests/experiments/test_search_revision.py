"""Revising a search as results arrive: configs shown (or, refitted, predicted) unable to beat
the best decided capacity are pruned, and a replay of the stored trials prunes at the same point."""

from __future__ import annotations

from common.records import SLO, TrialConfig, TrialRecord
from engine.simulate import CostModel
from experiments.analysis.answer import sentence
from experiments.search.capacity import knob_label, run_search, trial_config
from experiments.search.capacity_plan import predicted_capacities, revise_plan
from experiments.search.evidence import Sample
from experiments.search.strategy import AT_LIMIT, PRUNED, CapacitySearch, Probe, SearchSettings
from experiments.spec.grid import parse_spec
from experiments.spec.profiles import Profile

MS = 1e-3
COST = CostModel(prefill_base_s=6 * MS, prefill_per_token_s=0.2 * MS,
                 decode_base_s=5 * MS, decode_per_seq_s=0.4 * MS)
PROFILE = Profile.model_validate({
    "name": "p", "prompt_tokens": {"kind": "uniform", "min": 8, "max": 64},
    "output_tokens": {"kind": "uniform", "min": 4, "max": 16},
    "arrival": {"mode": "closed", "concurrency": 4},
    "slos": {"ttft_ms": {"percentile": "p90", "max_ms": 60.0},
             "tpot_ms": {"percentile": "p90", "max_ms": 9.0}}, "warmup_requests": 2})
SLOS = [SLO("ttft_ms", "p90", 60.0), SLO("tpot_ms", "p90", 9.0)]
PASS, FAIL, EDGE = Sample(48, 48), Sample(0, 48), Sample(43, 48)  # EDGE: 0.896, undecided


def users_spec(batch_sizes: list[int], max_load: float = 64) -> object:
    return parse_spec({"profile": "chat", "policies": ["continuous"], "batch_sizes": batch_sizes,
                       "max_wait_ms": [0], "requests": 24,
                       "search": {"load": "concurrency", "max_load": max_load}})


def searched(start: float, samples: list[Sample], max_load: float = 64) -> CapacitySearch:
    """A users search that starts at `start` and got `samples`, in order."""
    # Every repetition spent: `samples` are measured as listed (no futility stop).
    search = CapacitySearch(SearchSettings(0.9, True, start, 1.0, max_load, skip_futile_repeats=False))
    for sample in samples:
        search.record(search.next_probe(), sample)
    search.next_probe()  # as the search loop does next: a search whose answer is in finishes
    return search


def knobs(batch: int) -> TrialConfig:
    return TrialConfig("continuous", batch, 0.0)


def test_prune_ends_a_search_without_an_answer():
    search = searched(4, [PASS])
    search.prune("cannot win")
    assert search.next_probe() is None and search.result().status == PRUNED
    assert not search.result().is_decided and search.result().capacity == 4


def test_a_config_that_failed_below_the_best_capacity_is_pruned():
    best = searched(8, [PASS], max_load=8)  # at the limit: decided, 8 users
    assert best.result().status == AT_LIMIT
    failed_at_4 = searched(4, [FAIL])  # will bisect below 4: capacity < 4 < 8
    noisy_at_8 = searched(8, [EDGE, EDGE, EDGE])  # within noise at 8: it might tie the best
    only_passes = searched(2, [PASS])  # nothing says it cannot beat 8
    pruned = revise_plan(users_spec([8, 4, 2, 1]), PROFILE, None, SLOS,
                         {knobs(8): best, knobs(4): failed_at_4, knobs(2): noisy_at_8,
                          knobs(1): only_passes})
    assert set(pruned) == {"continuous b4 w0ms"}
    assert pruned["continuous b4 w0ms"] == ("missed the SLOs at 4 users, a load continuous b8 w0ms "
                                            "carries (8): it cannot carry more")


def test_a_load_shown_carried_prunes_before_any_search_finishes():
    # b8 passed 8 users and goes on searching; b4 missed at 4, below it: it cannot win. b2
    # missed at 16, above what b8 has shown so far: it stays in the race.
    leader, below, above = searched(8, [PASS]), searched(4, [FAIL]), searched(16, [FAIL])
    assert not leader.is_finished
    pruned = revise_plan(users_spec([8, 4, 2]), PROFILE, None, SLOS,
                         {knobs(8): leader, knobs(4): below, knobs(2): above})
    assert pruned == {"continuous b4 w0ms": "missed the SLOs at 4 users, a load continuous b8 "
                                            "w0ms carries (8): it cannot carry more"}
    # Nothing carried yet: nothing to prune by.
    assert revise_plan(users_spec([8, 4]), PROFILE, None, SLOS,
                       {knobs(8): searched(8, [FAIL]), knobs(4): searched(4, [FAIL])}) == {}


def test_a_config_predicted_far_below_the_best_measured_capacity_is_pruned():
    spec = users_spec([1, 8])
    predicted = predicted_capacities(spec, PROFILE, COST, SLOS)
    shown = 4 * predicted["continuous b1 w0ms"]  # b8 measured at 4x what b1 is predicted to carry
    best = searched(shown, [PASS], max_load=shown)
    small = CapacitySearch(SearchSettings(0.9, True, 1.0, 1.0, 64))
    pruned = revise_plan(spec, PROFILE, COST, SLOS, {knobs(8): best, knobs(1): small})
    assert pruned["continuous b1 w0ms"].startswith(
        f"refitted prediction {predicted['continuous b1 w0ms']:.3g} (shown so far: 0)")
    # the same config, once shown to carry half the best, stays
    small = searched(shown / 2, [PASS])
    assert revise_plan(spec, PROFILE, COST, SLOS, {knobs(8): best, knobs(1): small}) == {}



def test_a_black_box_band_prunes_a_config_one_band_above_its_prediction_still_below_the_best():
    spec = users_spec([1, 8])
    p1 = predicted_capacities(spec, PROFILE, COST, SLOS)["continuous b1 w0ms"]
    shown = 2 * p1  # b8 carried 2x what b1 is predicted to: keep_ratio 0.5 keeps b1 (not below)
    best = searched(shown, [PASS], max_load=shown)
    fresh = CapacitySearch(SearchSettings(0.9, True, 1.0, 1.0, 64))
    searches = {knobs(8): best, knobs(1): fresh}
    assert revise_plan(spec, PROFILE, COST, SLOS, searches) == {}  # no band: 0.5 x 2 p1 is not above p1
    # errors so far of +-25%: even 1.25 x its prediction b1 stays below what b8 carries
    pruned = revise_plan(spec, PROFILE, COST, SLOS, searches, growth=1.25)
    assert pruned["continuous b1 w0ms"] == (
        f"refitted prediction {p1:.3g} (shown so far: 0) x 1.25, one error band of the predictions"
        f" so far, is below the {shown:g} continuous b8 w0ms carries")
    # a wider band (2x) could reach it: kept; so is everything when the user keeps all (ratio 0)
    assert revise_plan(spec, PROFILE, COST, SLOS, searches, growth=2.0) == {}
    keep_all = spec.model_copy(update={"search": spec.search.model_copy(update={"keep_ratio": 0.0})})
    assert revise_plan(keep_all, PROFILE, COST, SLOS, searches, growth=1.25) == {}

def test_a_load_shown_carried_by_an_unfinished_or_unmeasurable_search_sets_the_bar_too():
    # The best config's search has not decided (still bisecting, or a load above it could not
    # be measured: client-bound three times): what it was shown to carry is still a lower bound
    # of its capacity, so a config that cannot reach it cannot win.
    spec = users_spec([1, 8])
    p1 = predicted_capacities(spec, PROFILE, COST, SLOS)["continuous b1 w0ms"]
    shown = 2 * p1
    bisecting = searched(shown, [PASS, FAIL])  # passed at `shown`, missed at 2x: not finished
    unmeasurable = searched(shown, [PASS, *[Sample(0, 48, is_valid=False, reason="client")] * 3])
    assert not bisecting.is_finished and unmeasurable.lo == shown
    for best in (bisecting, unmeasurable):
        fresh = CapacitySearch(SearchSettings(0.9, True, 1.0, 1.0, 64))
        pruned = revise_plan(spec, PROFILE, COST, SLOS, {knobs(8): best, knobs(1): fresh}, growth=1.25)
        assert pruned["continuous b1 w0ms"].endswith(f"is below the {shown:g} continuous b8 w0ms carries")


def test_a_replay_prunes_where_the_live_search_pruned():
    spec = parse_spec({"profile": "chat", "policies": ["static", "continuous"], "batch_sizes": [8],
                       "max_wait_ms": [0], "requests": 24,
                       "search": {"load": "concurrency", "max_load": 8, "start_load": 8}})
    capacity = {"continuous": 8, "static": 3}  # the true capacities, in users
    trials: list[TrialRecord] = []

    def measure(config: TrialConfig) -> Sample:
        sample = PASS if config.concurrency <= capacity[config.policy] else FAIL
        metrics = {"requests_completed": sample.num_total, "requests_failed": 0,
                   "slo_attainment": sample.num_good / sample.num_total}
        trials.append(TrialRecord(len(trials) + 1, 1, config, "done", metrics))
        return sample

    def revise(config: TrialConfig, searches: dict) -> dict[str, str]:
        pruned = revise_plan(spec, PROFILE, None, SLOS, searches)
        if pruned:  # noted with the trial just measured, as the runner does
            trials[-1] = TrialRecord(trials[-1].trial_id, 1, config, "done", trials[-1].metrics,
                                     details={"revision": {"pruned": pruned}})
        return pruned

    live = run_search(spec, PROFILE, [], measure, plan={}, revise=revise)
    by_policy = {c.config.policy: c.capacity for c in live}
    # both start at 8: continuous passes (at the limit), static fails: pruned, not bisected
    assert by_policy["continuous"].status == AT_LIMIT and by_policy["static"].status == PRUNED
    assert len(trials) == 2
    assert trials[-1].config == trial_config(spec, knobs(8), Probe(8, 0))  # the revision's trial
    replayed = run_search(spec, PROFILE, trials, plan={})  # no measure: stored trials only
    assert [c.capacity for c in replayed] == [c.capacity for c in live]
    assert "1 ruled out as unable to win" in sentence(replayed, "chat")
    assert knob_label(replayed[0].config) == "static b8 w0ms"


def test_a_policy_whose_configs_were_all_pruned_says_what_they_were_shown_to_carry():
    from experiments.search.capacity import ConfigCapacity
    from experiments.search.strategy import Capacity

    caps = [ConfigCapacity(knobs(8), Capacity(8.0, None, AT_LIMIT, "", 1), "users"),
            ConfigCapacity(TrialConfig("static", 8, 0.0), Capacity(2.0, 4.0, PRUNED, "why", 2), "users")]
    assert sentence(caps, "chat") == ("continuous b8 w0ms carries at least 8 users within the chat "
                                      "SLOs; static configs at least 2, then ruled out "
                                      "(1 ruled out as unable to win)")
