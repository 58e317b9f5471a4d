"""Rate schedules: time warping of open-loop arrivals (steps, ramp, periodic), hand-computed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.load.workload import open_loop_arrivals
from experiments.spec.arrivals import PeriodicSchedule, RampSchedule, StepSchedule, warp_arrivals
from experiments.spec.profiles import ProfileError, parse_profile_yaml

HEAD = ("name: x\nobjective: max_throughput\nprompt_tokens: {kind: fixed, value: 8}\n"
        "output_tokens: {kind: fixed, value: 8}\n")


def steps(*pairs: tuple[float, float]) -> StepSchedule:
    return StepSchedule(kind="steps", steps=[{"at_s": a, "multiplier": m} for a, m in pairs])


def test_steps_warp_is_exact():
    # 1x until 10 s, then 2x: unit-rate times 0, 5, 10, 12, 20 land at 0, 5, 10, 11, 15.
    assert warp_arrivals([0.0, 5.0, 10.0, 12.0, 20.0], steps((10, 2.0))) == pytest.approx(
        [0.0, 5.0, 10.0, 11.0, 15.0], abs=1e-9)


def test_ramp_warp_solves_the_quadratic():
    # m(t) = 1 + t/10 over 10 s: M(t) = t + t^2/20, so M(5) = 6.25 and M(10) = 15; then 2x.
    ramp = RampSchedule(kind="ramp", start_multiplier=1.0, end_multiplier=2.0, ramp_s=10.0)
    assert warp_arrivals([0.0, 6.25, 15.0, 25.0], ramp) == pytest.approx([0.0, 5.0, 10.0, 15.0], abs=1e-6)


def test_periodic_warp_averages_out_over_whole_periods():
    # Over whole periods the sine integrates to 0: M(k x period) = k x period.
    wave = PeriodicSchedule(kind="periodic", period_s=20.0, amplitude=0.5)
    assert warp_arrivals([20.0, 40.0], wave) == pytest.approx([20.0, 40.0], abs=1e-5)
    # In the first quarter the rate is above 1x: M(5) = 5 + 0.5 x 20 / (2 pi) x (1 - cos(pi/2)).
    m5 = 5 + 0.5 * 20 / (2 * math.pi)
    assert warp_arrivals([m5], wave) == pytest.approx([5.0], abs=1e-5)


def test_scheduled_arrivals_follow_the_rate_over_time():
    # Poisson at 10/s, 1x for 100 s then 4x: about 1000 arrivals before 100 s, 4000 in the next 100 s.
    arrivals = np.asarray(open_loop_arrivals(10.0, 1.0, 5000, seed=1, schedule=steps((100, 4.0))))
    before, after = np.sum(arrivals < 100), np.sum((arrivals >= 100) & (arrivals < 200))
    assert abs(before - 1000) < 4 * math.sqrt(1000) and abs(after - 4000) < 4 * math.sqrt(4000)
    # Without a schedule the arrivals are the seeded constant-rate ones, unchanged.
    assert open_loop_arrivals(10.0, 1.0, 50, seed=1) == open_loop_arrivals(10.0, 1.0, 50, 1, None)


@pytest.mark.parametrize("schedule, needle", [
    ("{kind: steps, steps: [{at_s: 5, multiplier: 2}, {at_s: 1, multiplier: 1}]}", "strictly increasing"),
    ("{kind: ramp, start_multiplier: 0, end_multiplier: 2, ramp_s: 10}", "start_multiplier"),
    ("{kind: periodic, period_s: 10, amplitude: 1.5}", "amplitude"),
    ("{kind: sawtooth}", "kind"),
])
def test_bad_schedules_are_one_line_profile_errors(schedule: str, needle: str):
    text = (HEAD +
            f"arrival: {{mode: open, rate: 2, schedule: {schedule}}}\n")
    with pytest.raises(ProfileError) as info:
        parse_profile_yaml(text, "x.yaml")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_open_profile_with_a_schedule_parses_and_labels():
    text = (HEAD +
            "arrival: {mode: open, rate: 2, schedule: {kind: ramp, start_multiplier: 0.5, "
            "end_multiplier: 2, ramp_s: 60}}\n")
    assert parse_profile_yaml(text, "x.yaml").arrival.label == "poisson@2.00/ramp"
