"""Which kept target a search's config runs on: a local engine per replica count."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

from common.records import TrialConfig
from experiments.run.placement import LocalEngine


class CountingEngine(LocalEngine):
    """LocalEngine whose `open` hands out a stand-in target and counts the opens."""

    def __init__(self, runner) -> None:
        super().__init__(runner)
        self.opened: list[int] = []

    @contextlib.contextmanager
    def open(self, config: TrialConfig):
        self.opened.append(config.replicas)
        yield SimpleNamespace(replicas=config.replicas)

    def slos(self, target) -> list:
        return []  # resolved SLOs are not what this checks


def test_a_search_over_replica_counts_opens_a_target_per_count():
    runner = SimpleNamespace(servers=SimpleNamespace(died=lambda: False))
    placement = CountingEngine(runner)
    one, two = TrialConfig("continuous", 4, 0.0, rate=1.0), TrialConfig(
        "continuous", 4, 0.0, rate=1.0, replicas=2, router="least_outstanding")
    assert placement.target(one)[0].replicas == 1
    assert placement.target(one)[0].replicas == 1  # kept: the same count
    assert placement.target(two)[0].replicas == 2  # another count: its own target
    assert placement.target(one)[0].replicas == 1
    assert placement.opened == [1, 2, 1]
