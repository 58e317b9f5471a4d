"""Queueing truth for the mock server, hand-computed."""

import pytest

from experiments.load.queueing import closed_loop, md1_mean_e2e_s, service_s


def test_service_time() -> None:
    assert service_s(0.005, 0.002, 32) == pytest.approx(0.067)


def test_closed_loop_below_and_above_capacity() -> None:
    below = closed_loop(4, None, 0.040, 0.010, 16)  # S = 190 ms, every user in service
    assert below.requests_per_s == pytest.approx(4 / 0.19) and below.e2e_s == pytest.approx(0.19)
    assert below.ttft_s == pytest.approx(0.040)
    above = closed_loop(6, 2, 0.020, 0.005, 5)  # S = 40 ms: K/S = 50 req/s, E2E = C S / K
    assert above.requests_per_s == pytest.approx(50.0) and above.e2e_s == pytest.approx(0.120)
    assert above.ttft_s == pytest.approx(0.120 - 0.040 + 0.020)  # queue wait + T


def test_md1() -> None:
    # rho = 20/s x 20 ms = 0.4: W = 0.4 x 20 / (2 x 0.6) = 6.67 ms
    assert md1_mean_e2e_s(20.0, 0.020) == pytest.approx(0.020 + 0.4 * 0.020 / 1.2)
    with pytest.raises(ValueError, match="rho"):
        md1_mean_e2e_s(50.0, 0.020)
