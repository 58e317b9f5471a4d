"""Dashboard test fixtures: stores filled through the real Store (synthetic trials, no model),
AppTest runners per page, and a launcher that records workers instead of starting them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dashboard_helpers import MARKUP_NAME

from app import launcher
from app.dashboard.synthetic import add_synthetic_sweep
from db.store import Store
from experiments.spec.grid import SweepSpec
from experiments.spec.profiles import load_profile

CHAT_SPEC = {"name": MARKUP_NAME, "profile": "chat", "policies": ["static", "continuous"],
             "batch_sizes": [1, 4, 16], "max_wait_ms": [0.0], "concurrency": [1, 4, 16],
             "requests": 12, "repetitions": 2}
BATCH_SPEC = {"name": "batch sweep", "profile": "batch", "policies": ["continuous"],
              "batch_sizes": [1, 8], "max_wait_ms": [0.0], "concurrency": [1, 8], "requests": 8}


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty SQLite store that the dashboard reads through $TRADEOFF_DB."""
    url = f"sqlite:///{tmp_path / 'tradeoff.db'}"
    monkeypatch.setenv("TRADEOFF_DB", url)
    Store(url).close()
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """The test's store, closed after the test."""
    opened = Store(db_url)
    yield opened
    opened.close()


@pytest.fixture
def results(store: Store) -> dict[str, int]:
    """Two finished sweeps: chat (SLOs, 2 repetitions, a markup name) and batch (no SLOs)."""
    chat = add_synthetic_sweep(store, CHAT_SPEC)
    batch = add_synthetic_sweep(store, BATCH_SPEC, slos=())
    return {"chat": chat, "batch": batch}


@dataclass
class Launches:
    """What the pages asked the launcher to do, instead of starting processes."""

    commands: list[list[str]] = field(default_factory=list)
    specs: list[SweepSpec] = field(default_factory=list)


class _Running:
    """Stands in for a worker process that is still alive."""

    def poll(self) -> None:
        return None


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> Iterator[Launches]:
    """Record worker launches; queue sweeps without importing the engine (torch)."""
    seen = Launches()

    def spawn(command: list[str], url: str) -> _Running:
        seen.commands.append(command)
        return _Running()

    def start_sweep(store: Store, url: str, spec: SweepSpec) -> int:
        seen.specs.append(spec)
        sweep_id = store.create_sweep(
            name=spec.name or "test", model=spec.target.model, device=spec.target.device, device_name=None,
            dtype=spec.target.dtype, profile=load_profile(spec.load.profile).model_dump(mode="json"),
            grid=spec.model_dump(mode="json"),
            seed=spec.load.seed, provenance={}, trials_total=spec.num_trials)
        launcher.watch(store, url, force=True)
        return sweep_id

    monkeypatch.setattr(launcher, "_spawn", spawn)
    monkeypatch.setattr(launcher, "start_sweep", start_sweep)
    yield seen
    launcher._workers.clear()
    launcher._watched.clear()
