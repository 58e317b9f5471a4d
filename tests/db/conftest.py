"""Store fixtures: every store test runs on a real SQLite file and on PostgreSQL.

PostgreSQL cases need TRADEOFF_TEST_PG_URL (`eval "$(.ci/postgres.sh start)"`); they skip,
with the reason shown by `pytest -rs`, only when it is unset or the server cannot be reached.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError

from common.records import Dist, RequestRecord, TrialConfig, TrialMetrics
from db import Store
from db.models import Base

PG_ENV = "TRADEOFF_TEST_PG_URL"
_pg_problem: dict[str, str | None] = {}  # url -> why it cannot be used (None: usable)


def _pg_reachable(url: str, attempts: int = 3) -> str | None:
    # The answer is cached for the whole run, so one slow connect on a loaded machine would
    # skip every PostgreSQL case: try a few times before calling the server unreachable.
    if url not in _pg_problem:
        engine = create_engine(url, connect_args={"connect_timeout": 5})
        try:
            for attempt in range(attempts):
                try:
                    with engine.connect():
                        _pg_problem[url] = None
                    break
                except SQLAlchemyError as exc:
                    _pg_problem[url] = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
                    if attempt + 1 < attempts:
                        time.sleep(1.0)
        finally:
            engine.dispose()
    return _pg_problem[url]


def _pg_execute(url: str, sql: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


# Named, not reflected: reflection costs ~0.5 s a test on a busy machine.
_TABLES = [t.name for t in reversed(Base.metadata.sorted_tables)]
_DROP_ALL = f"DROP TABLE IF EXISTS {', '.join(_TABLES)} CASCADE"
_EMPTY_ALL = f"TRUNCATE {', '.join(t for t in _TABLES if t != 'schema_version')} RESTART IDENTITY"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the test runs on; postgres skips when the server is not there."""
    if request.param == "postgres":
        _pg_url_or_skip()
    return request.param


def _pg_url_or_skip() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f'{PG_ENV} is unset; run: eval "$(.ci/postgres.sh start)"')
    problem = _pg_reachable(url)
    if problem:
        pytest.skip(f"PostgreSQL at {PG_ENV} unreachable: {problem}")
    return url


@pytest.fixture
def db_url(backend: str, tmp_path) -> Iterator[str]:
    """An empty database: a SQLite file in tmp_path, or the (wiped) test PostgreSQL db."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'tradeoff.db'}"
        return
    url = _pg_url_or_skip()
    _pg_execute(url, _DROP_ALL)
    yield url
    _pg_execute(url, _DROP_ALL)  # no odd schema (too new, half-built) left for `store`


@pytest.fixture
def store(backend: str, tmp_path) -> Iterator[Store]:
    """A Store on a database at the current schema with no rows, closed after the test."""
    if backend == "sqlite":
        opened = Store(f"sqlite:///{tmp_path / 'tradeoff.db'}")
    else:  # keep the schema, empty the tables: much faster than recreating them
        opened = Store(_pg_url_or_skip())
        _pg_execute(opened.url, _EMPTY_ALL)
    yield opened
    opened.close()


@pytest.fixture
def new_sweep(store: Store) -> Callable[..., int]:
    """Create a queued sweep with sensible defaults; keyword arguments override them."""

    def make(**overrides) -> int:
        fields = {
            "name": "chat-cpu", "model": "tiny-llama", "device": "cpu",
            "device_name": "Test CPU", "dtype": "float32",
            "profile": {"name": "chat", "slos": {"ttft_ms": {"p90": 500.0}}},
            "grid": {"policies": ["static", "continuous"], "batch_sizes": [1, 4]},
            "seed": 7, "provenance": {"tradeoff": "0.1.0", "hostname": "ci", "git_sha": None},
            "trials_total": 4,
        }
        return store.create_sweep(**{**fields, **overrides})

    return make


def _make_metrics(**overrides) -> TrialMetrics:
    """Metrics with every kind of value: numbers, a missing Dist (None), a bool."""
    dist = Dist(p50=10.0, p90=20.0, p95=25.0, p99=30.0, mean=12.5, count=8)
    fields = {
        "requests_completed": 8, "requests_failed": 0, "duration_s": 2.0,
        "requests_per_s": 4.0, "output_tokens_per_s": 64.0, "total_tokens_per_s": 192.0,
        "ttft_ms": dist, "tpot_ms": None, "itl_ms": dist, "e2e_ms": dist,
        "queue_wait_ms": dist, "service_ms": dist, "goodput_rps": 3.5, "slo_attainment": 0.875,
        "mean_batch_size": 3.25, "peak_memory_mb": None, "saturated": False,
        "slos": {"ttft_ms": {"p90": 500.0}},
    }
    return TrialMetrics(**{**fields, **overrides})


def _make_requests(n: int, start_s: float = 1000.0) -> list[RequestRecord]:
    """n requests 10 ms apart on a clock that starts at start_s, 3 output tokens each."""
    return [
        RequestRecord(
            request_id=i, scheduled_s=start_s + 0.01 * i, sent_s=start_s + 0.01 * i + 0.001,
            admitted_s=start_s + 0.01 * i + 0.002,
            token_times_s=tuple(start_s + 0.01 * i + t for t in (0.02, 0.03, 0.05)),
            done_s=start_s + 0.01 * i + 0.05, num_prompt_tokens=16, num_output_tokens=3,
        )
        for i in range(n)
    ]


@pytest.fixture
def make_metrics() -> Callable[..., TrialMetrics]:
    """Factory of TrialMetrics (keyword arguments override fields)."""
    return _make_metrics


@pytest.fixture
def make_requests() -> Callable[..., list[RequestRecord]]:
    """Factory of request timelines: make_requests(n, start_s=1000.0)."""
    return _make_requests


@pytest.fixture
def config() -> TrialConfig:
    """A closed-loop trial config."""
    return TrialConfig(policy="static", batch_size=4, max_wait_ms=5.0, concurrency=2)
