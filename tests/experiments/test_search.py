"""Capacity search: bisection on the virtual clock with a known capacity, noise, budget, validity."""

from __future__ import annotations

import numpy as np
import pytest

from common.records import SLO, TrialConfig
from engine.simulate import CostModel
from experiments.predict.simulate import simulate_trial
from experiments.search.evidence import Sample, decide_chance, flip_chance, is_futile, wilson, z_for
from experiments.search.strategy import (
    AT_LIMIT,
    DECIDED,
    INVALID,
    UNDECIDED,
    WITHIN_NOISE,
    CapacitySearch,
    Probe,
    SearchSettings,
    search_all,
)
from experiments.spec.profiles import Profile

MS = 1e-3
N = 48


def step_measure(capacity: float):
    """Every request meets the SLOs up to `capacity`, none above: a noiseless boundary."""
    def measure(_key, probe: Probe) -> Sample:
        return Sample(N if probe.load <= capacity else 0, N)
    return measure


def run_one(settings: SearchSettings, measure) -> tuple[object, list[Probe]]:
    search = CapacitySearch(settings)
    probes: list[Probe] = []

    def recording(key, probe):
        probes.append(probe)
        return measure(key, probe)
    result = search_all({"c": search}, recording)["c"]
    return result, probes


def test_wilson_interval_matches_hand_values():
    lo, hi = wilson(44, 48, 1.645)
    assert lo == pytest.approx(0.8269, abs=1e-3) and hi == pytest.approx(0.9619, abs=1e-3)
    assert wilson(48, 48, 1.645)[1] == 1.0 and wilson(0, 48, 1.645)[0] == 0.0


def test_rate_bisection_brackets_then_bisects_to_tolerance():
    result, probes = run_one(SearchSettings(start_load=1.0, rel_tol=0.1), step_measure(7.3))
    # doubling 1 -> 2 -> 4 -> 8 (fails), then bisection 6, 7, 7.5 (fails): 7.5 - 7 <= 10% of 7.5
    assert [p.load for p in probes] == [1, 2, 4, 8, 6, 7, 7.5]
    assert result.status == DECIDED and result.capacity == 7.0 and result.upper == 7.5
    assert result.upper - result.capacity <= 0.1 * result.upper


def test_start_above_capacity_halves_down():
    result, probes = run_one(SearchSettings(start_load=16.0, rel_tol=0.1), step_measure(3.0))
    assert [p.load for p in probes][:4] == [16, 8, 4, 2]
    assert result.capacity <= 3.0 < result.upper and result.status == DECIDED


def test_nothing_passes_gives_zero_capacity():
    result, _ = run_one(SearchSettings(start_load=1.0, min_load=0.2), step_measure(0.01))
    assert result.capacity == 0.0 and result.status == DECIDED and "misses" in result.reason


def test_at_limit_is_a_lower_bound():
    result, _ = run_one(SearchSettings(start_load=1.0, max_load=8.0), step_measure(100.0))
    assert result.status == AT_LIMIT and result.capacity == 8.0 and result.is_decided


def chat_like(tpot_max_ms: float) -> tuple[Profile, list[SLO]]:
    profile = Profile.model_validate({
        "name": "fixed", "prompt_tokens": {"kind": "fixed", "value": 8},
        "output_tokens": {"kind": "fixed", "value": 11}, "arrival": {"mode": "closed", "concurrency": 1},
        "slos": {"tpot_ms": {"percentile": "p90", "max_ms": tpot_max_ms}}, "warmup_requests": 0})
    return profile, [SLO("tpot_ms", "p90", tpot_max_ms)]


def test_concurrency_capacity_on_the_virtual_clock_is_exact():
    # Continuous batching, C users who all join together: every decode step runs C rows and
    # costs 10 + 1 x C ms, so TPOT = 10 + C ms. With a 20.5 ms TPOT SLO the capacity is 10 users.
    profile, slos = chat_like(20.5)
    cost = CostModel(prefill_base_s=5 * MS, decode_base_s=10 * MS, decode_per_seq_s=1 * MS)

    def measure(_key, probe: Probe) -> Sample:
        config = TrialConfig("continuous", 64, 0.0, concurrency=int(probe.load))
        m = simulate_trial(config, profile, 40, cost, slos)
        total = m.requests_completed + m.requests_failed
        return Sample(round(m.slo_attainment * total), total)

    result, probes = run_one(SearchSettings(is_integer=True, start_load=1, min_load=1), measure)
    assert [int(p.load) for p in probes] == [1, 2, 4, 8, 16, 12, 10, 11]
    assert result.status == DECIDED and result.capacity == 10 and result.upper == 11


def test_undecided_boundary_is_measured_again_until_the_interval_decides():
    # At 4 req/s the first repetition (45/48) leaves the interval straddling 90%; the second
    # (48/48) pools to 93/96, whose interval lies above 90%: a pass.
    answers = {(4.0, 0): Sample(45, N), (4.0, 1): Sample(48, N)}

    def measure(_key, probe):
        return answers.get((probe.load, probe.repetition), Sample(N if probe.load < 4 else 0, N))
    result, probes = run_one(SearchSettings(start_load=4.0, max_repeats=3), measure)
    assert probes[:3] == [Probe(4.0, 0), Probe(4.0, 1), Probe(8.0, 0)]
    assert result.capacity >= 4.0


def test_a_load_that_never_decides_is_judged_by_its_pooled_share_and_says_within_noise():
    def measure(_key, probe):
        if probe.load < 4:
            return Sample(N, N)
        # 91.7%: the interval straddles 90% forever, the pooled share passes; 62.5% misses.
        return Sample(44, N) if probe.load < 8 else Sample(30, N)
    # Every repetition spent (searches stored before the futility stop replay this way).
    result, probes = run_one(SearchSettings(start_load=1.0, max_repeats=3, skip_futile_repeats=False),
                             measure)
    # 4 req/s is measured three times, never decides, and passes by its pooled share (as one
    # repetition at 91.7% would on a grid); 8 misses; bisection: 6 and 7 pass the same way,
    # 7.5 too, and 8 - 7.5 <= 10% of 8.
    assert [(p.load, p.repetition) for p in probes] == [
        (1, 0), (2, 0), (4, 0), (4, 1), (4, 2), (8, 0), (6, 0), (6, 1), (6, 2), (7, 0), (7, 1),
        (7, 2), (7.5, 0), (7.5, 1), (7.5, 2)]
    assert result.status == WITHIN_NOISE and result.capacity == 7.5 and result.upper == 8.0
    assert "met, within noise" in result.reason and result.is_decided


def test_a_load_more_repetitions_could_not_decide_is_judged_at_once():
    # The same server with the futility stop: at 91.7% of 48, two more repetitions would decide
    # it with ~10% and reverse its verdict with ~19% (both under 20%), so each edge load is
    # measured once; the answer is the same, in 7 probes instead of 15.
    def measure(_key, probe):
        return Sample(N, N) if probe.load < 4 else Sample(44, N) if probe.load < 8 else Sample(30, N)
    result, probes = run_one(SearchSettings(start_load=1.0, max_repeats=3), measure)
    assert [(p.load, p.repetition) for p in probes] == [
        (1, 0), (2, 0), (4, 0), (8, 0), (6, 0), (7, 0), (7.5, 0)]
    assert result.status == WITHIN_NOISE and result.capacity == 7.5 and result.upper == 8.0
    assert "after 1 repetition (3 would likely neither decide nor reverse it): met" in result.reason


def test_decide_chance_matches_a_hand_computation():
    z = z_for(0.9)
    # 0.9375 over 15 effective requests, 30 more to come (45 in all). The pooled interval over 45
    # clears 90% from a share of ~0.974 up, which the new 30 reach at a share of
    # (0.974 x 45 - 0.9375 x 15) / 30 = 0.992: 1.24 sd above 0.9375 (sd sqrt(0.9375 x 0.0625 / 30)
    # = 0.0442), a chance of ~0.108; failing needs ~0.73, 4.7 sd below: ~0.
    assert decide_chance(0.9375, 15, 30, 0.9, z) == pytest.approx(0.108, abs=0.005)
    # 45 of 48 with 96 more: the share needed is 0.944, 0.26 sd above: ~0.40 (the test above
    # with 48 of 48 next: repeated, and it decided).
    assert decide_chance(45 / 48, 48, 96, 0.9, z) == pytest.approx(0.40, abs=0.02)
    assert decide_chance(1.0, 15, 30, 0.9, z) == 1.0  # all pass: the 45 clear 90%
    assert decide_chance(0.5, 15, 30, 0.9, z) > 0.999  # far below: a fail is all but sure
    # Reversing the verdict: the pooled share over 45 falls below 90% when the new 30 read under
    # (0.9 x 45 - 0.9375 x 15) / 30 = 0.881, 1.27 sd below 0.9375: ~0.102.
    assert flip_chance(0.9375, 15, 30, 0.9) == pytest.approx(0.102, abs=0.005)
    assert flip_chance(0.9, 15, 30, 0.9) == pytest.approx(0.5, abs=0.01)  # at the target: a coin
    # Futile only when both are unlikely: 0.9375 of 15 is; 0.906 of 9.7 (reversed with ~45%) and
    # 0.95 of 27.5 (decided with ~41%) are not.
    assert is_futile(0.9375, 15, 30, 0.9, z)
    assert not is_futile(0.906, 9.67, 19.33, 0.9, z) and not is_futile(0.95, 27.5, 55, 0.9, z)
    # The chance grows with the requests left, at one share.
    assert decide_chance(0.95, 15, 15, 0.9, z) < decide_chance(0.95, 15, 30, 0.9, z) < \
        decide_chance(0.95, 15, 300, 0.9, z)


def test_first_load_within_noise_still_searches_below_it():
    def measure(_key, probe):
        return Sample(N, N) if probe.load < 1 else Sample(42, N)  # 87.5%: a miss within noise
    result, _ = run_one(SearchSettings(start_load=1.0, max_repeats=2), measure)
    assert result.status == WITHIN_NOISE and 0.9 <= result.capacity < 1.0


def test_seeded_noise_brackets_the_true_capacity():
    # Attainment falls smoothly through 90% at 5 req/s; samples are binomial draws.
    rng = np.random.default_rng(7)

    def measure(_key, probe):
        p = 1 / (1 + np.exp((probe.load - 5.0) * 3 - np.log(9)))  # p(5.0) = 0.9
        return Sample(int(rng.binomial(N, p)), N)
    result, _ = run_one(SearchSettings(start_load=1.0, max_repeats=4), measure)
    assert result.status in (DECIDED, WITHIN_NOISE)
    assert 3.5 <= result.capacity <= 5.0 and result.upper > result.capacity


def test_budget_stop_leaves_every_config_with_its_bracket():
    searches = {b: CapacitySearch(SearchSettings(start_load=1.0)) for b in (1, 8)}
    calls = []

    def can_continue() -> bool:
        return len(calls) < 5
    measure = step_measure(6.0)
    out = search_all(searches, lambda k, p: calls.append(p) or measure(k, p), can_continue)
    assert len(calls) == 5
    # round-robin: 1, 1, 2, 2, 4 -> config 1 has passed 4, config 8 has passed 2
    assert out[1].capacity == 4.0 and out[8].capacity == 2.0
    assert all(r.status == UNDECIDED and "budget spent" in r.reason for r in out.values())
    assert not any(r.is_decided for r in out.values())


def test_invalid_evidence_stops_that_config_undecided():
    def measure(_key, probe):
        if probe.load >= 4:
            return Sample(0, 0, is_valid=False, reason="client-bound: the load generator lagged")
        return Sample(N, N)
    result, probes = run_one(SearchSettings(start_load=1.0, max_repeats=3), measure)
    # 4 req/s is client-bound three times: an upper bound for what can be shown; bisection goes
    # on below it (3, 3.5, 3.75 pass) and the answer stays undecided (a lower bound).
    assert [(p.load, p.repetition) for p in probes] == [
        (1, 0), (2, 0), (4, 0), (4, 1), (4, 2), (3, 0), (3.5, 0), (3.75, 0)]
    assert result.status == INVALID and result.capacity == 3.75 and not result.is_decided
    assert "client-bound" in result.reason and "could not be measured" in result.reason


def test_one_client_bound_trial_is_measured_again():
    def measure(_key, probe):
        if probe.load == 4 and probe.repetition == 0:
            return Sample(0, 0, is_valid=False, reason="client-bound")
        return Sample(N if probe.load <= 4 else 0, N)
    result, probes = run_one(SearchSettings(start_load=4.0, rel_tol=0.3), measure)
    assert probes[:3] == [Probe(4.0, 0), Probe(4.0, 1), Probe(8.0, 0)]
    assert result.status == DECIDED and result.capacity >= 4.0


def test_replaying_the_same_samples_asks_for_the_same_probes():
    # Resume relies on this: a resumed search replays stored trials and asks for the same loads.
    first = run_one(SearchSettings(start_load=1.5), step_measure(9.1))[1]
    again = run_one(SearchSettings(start_load=1.5), step_measure(9.1))[1]
    assert first == again


@pytest.mark.parametrize("bad", [{"target": 0.0}, {"start_load": 0.0}, {"growth": 1.0}])
def test_settings_are_validated(bad):
    with pytest.raises(ValueError):
        SearchSettings(**bad)


def test_a_saturated_load_is_a_miss_whatever_its_attainment():
    # Every request meets the SLOs (loose SLOs, short trials), but from 5 req/s on the queue
    # kept growing: the config cannot sustain those loads, so capacity is below 5.
    def measure(_key, probe: Probe) -> Sample:
        return Sample(N, N, saturated=probe.load >= 5)
    result, probes = run_one(SearchSettings(start_load=1.0, rel_tol=0.1), measure)
    # 1, 2, 4 pass; 8 is saturated; bisection 6 (saturated), 5 (saturated), 4.5 passes: resolved
    assert [p.load for p in probes] == [1, 2, 4, 8, 6, 5, 4.5]
    assert (result.status, result.capacity, result.upper) == (DECIDED, 4.5, 5.0)
    assert "the queue kept growing at 5 req/s (saturated; attainment 100.0% does not count)" \
        in result.reason
    assert result.attainment[5.0].mean == 1.0  # measured attainment is kept, just not trusted


def test_a_rate_limit_that_rounds_down_still_ends_the_bracket():
    # Loads are rounded to 3 significant figures: a 1024 req/s limit is measured as 1020, which
    # must count as reaching it (before, the search re-measured 1020 up to its probe limit).
    passes = step_measure(1e9)

    def measure(key, probe: Probe) -> Sample:
        assert probe.repetition < 3, f"re-measuring {probe.load} req/s"
        return passes(key, probe)
    result, probes = run_one(SearchSettings(start_load=512.0, max_load=1024.0), measure)
    assert [p.load for p in probes] == [512, 1020]
    assert result.status == AT_LIMIT and result.capacity == 1020.0


def test_loads_read_in_the_searchs_unit():
    result, _ = run_one(SearchSettings(start_load=1.0, rel_tol=0.1, unit="x speed-up"),
                        step_measure(7.3))
    assert result.reason == "capacity between 7x speed-up and 7.5x speed-up"
    users, _ = run_one(SearchSettings(start_load=1.0, is_integer=True, min_load=1.0),
                       step_measure(1.0))
    assert users.reason == "capacity between 1 user and 2 users"


def test_after_the_first_round_the_config_that_could_carry_most_is_probed():
    # A carries 6 (misses from 8 on), B carries 3 (misses from 4 on), both start at 1.
    searches = {"A": CapacitySearch(SearchSettings(start_load=1.0)),
                "B": CapacitySearch(SearchSettings(start_load=1.0))}
    caps = {"A": 6.0, "B": 3.0}
    calls: list[tuple[str, float]] = []

    def measure(key, probe):
        calls.append((key, probe.load))
        return Sample(N if probe.load <= caps[key] else 0, N)
    out = search_all(searches, measure)
    # Unbounded configs alternate (fewest probes first) until B misses at 4; then A, the one
    # whose miss is highest (8), is searched to its end before B goes on.
    assert calls == [("A", 1), ("B", 1), ("A", 2), ("B", 2), ("A", 4), ("B", 4), ("A", 8),
                     ("A", 6), ("A", 7), ("A", 6.5), ("B", 3), ("B", 3.5), ("B", 3.25)]
    assert (out["A"].capacity, out["B"].capacity) == (6.0, 3.0)


def test_decisive_requests_is_the_fewest_whose_all_pass_interval_clears_the_target():
    from experiments.search.evidence import decisive_requests, z_for

    n = decisive_requests(0.9, 0.9)
    assert n == 25  # by hand: n / (n + z^2) >= 0.9 with z = 1.645 first holds at n = 25
    assert wilson(n, n, z_for(0.9))[0] >= 0.9 > wilson(n - 1, n - 1, z_for(0.9))[0]
