"""`tradeoff serve` with the engine in its own process: health, the watch, the socket's TCP
options, and the lifecycle from outside (start, cancel, stop, engine crash, server killed, no
orphans)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import pytest

from server.api import create_app, with_tcp_proto
from server.backend import EngineHealth, EngineWatch, engine_health

# -- health and the watch (no model) -------------------------------------------------------------


class _Replicas:
    """What the server reads of a ReplicaSet's health."""

    def __init__(self, num: int) -> None:
        self.replicas, self.lost = [object()] * num, []
        self.kv_budget_tokens, self.num_waiting, self.num_running = 4096, 0, 0

    def now(self) -> float:
        return time.perf_counter()


@dataclass
class _Config:
    vocab_size: int = 256


@dataclass
class _Model:
    config: _Config


class _Loaded:
    model = _Model(_Config())
    max_context_tokens = 4096

    def encode(self, text: str) -> list[int]:
        return list(text.encode())


def test_health_is_ok_until_a_replica_goes_and_dead_when_all_have():
    engine = _Replicas(2)
    assert engine_health(engine) == EngineHealth((), 2) and engine_health(engine).is_ok
    engine.lost.append("replica 1 (cpu:1) exited with code -9")
    health = engine_health(engine)
    assert not health.is_ok and not health.is_dead and health.reason == engine.lost[0]
    engine.lost.append("replica 0 (cpu:0) exited with code 1")
    assert engine_health(engine).is_dead


def test_an_in_process_engine_is_always_healthy():
    assert engine_health(object()).is_ok  # it has no process of its own to lose


def test_the_watch_calls_once_when_the_last_engine_is_gone():
    engine, calls = _Replicas(1), []
    with EngineWatch(engine, calls.append, interval_s=0.01) as watch:
        time.sleep(0.05)
        assert calls == []
        engine.lost.append("replica 0 (cpu:0,1) exited with code -9")
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
    assert calls == ["replica 0 (cpu:0,1) exited with code -9"] and watch.reason == calls[0]


def test_a_server_whose_engine_is_gone_answers_503_at_once():
    engine = _Replicas(1)
    engine.lost.append("replica 0 (cpu:0,1) exited with code -9")
    transport = httpx.ASGITransport(app=create_app(engine, _Loaded(), "m"))

    async def calls() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.get("/health"),
                    await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}))

    health, completion = asyncio.run(calls())
    assert health.status_code == 503 and "code -9" in health.json()["reason"]
    assert completion.status_code == 503
    assert completion.json()["error"]["code"] == "engine_gone"


def test_served_connections_have_nagle_off():
    """A socket bound as the CLI binds it (proto 0) still gets TCP_NODELAY on its connections."""
    bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bound.bind(("127.0.0.1", 0))
    sock = with_tcp_proto(bound)
    port = sock.getsockname()[1]

    async def nodelay_of_accepted() -> int:
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_client(_reader: Any, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_client, sock=sock)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        value = await asyncio.wait_for(seen, 5)
        writer.close()
        server.close()
        return value

    assert asyncio.run(nodelay_of_accepted()) != 0


# -- the lifecycle, from outside -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    proc: subprocess.Popen
    base: str

    @property
    def engine_pids(self) -> list[int]:
        return [p.pid for p in psutil.Process(self.proc.pid).children()]


def _start_serve() -> Served:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port),
                             "--device", "cpu", "--batch-size", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return Served(proc, base)
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("tradeoff serve did not answer /health")


@pytest.fixture
def served() -> Iterator[Served]:
    srv = _start_serve()
    pids = srv.engine_pids
    yield srv
    if srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait(30)
    assert _gone(pids), "an engine process outlived its server"


def _gone(pids: list[int], timeout_s: float = 20.0) -> bool:
    procs = [p for p in (_process(pid) for pid in pids) if p is not None]
    alive = psutil.wait_procs(procs, timeout=timeout_s)[1]
    return all(p.status() == psutil.STATUS_ZOMBIE for p in alive)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _gauge(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


LONG = {"prompt": "hello", "max_tokens": 3000, "ignore_eos": True, "stream": True}


@pytest.mark.slow
def test_serve_runs_the_engine_in_a_child_process_that_cancels_and_stops_with_it(served: Served):
    assert len(served.engine_pids) == 1, "one engine process"
    body = {"prompt": "hello", "max_tokens": 5, "ignore_eos": True}
    assert httpx.post(f"{served.base}/v1/completions", json=body, timeout=60).json()[
        "usage"]["completion_tokens"] == 5
    with httpx.stream("POST", f"{served.base}/v1/completions", json=LONG, timeout=60) as resp:
        next(resp.iter_lines())  # streaming: then the client goes away
    deadline = time.monotonic() + 10
    while _gauge(served.base, "tradeoff_num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gauge(served.base, "tradeoff_num_requests_running") == 0
    assert 'tradeoff_requests_total{status="cancelled"} 1' in httpx.get(f"{served.base}/metrics").text
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(30) == 0


@pytest.mark.slow
def test_an_engine_crash_fails_the_streams_and_stops_the_server_with_one_line(served: Served):
    (engine_pid,) = served.engine_pids
    lines: list[str] = []

    def stream() -> None:
        with httpx.stream("POST", f"{served.base}/v1/completions", json=LONG, timeout=60) as resp:
            lines.extend(line for line in resp.iter_lines() if line.startswith("data: "))

    reader = threading.Thread(target=stream)
    reader.start()
    time.sleep(1.0)  # tokens are flowing
    psutil.Process(engine_pid).kill()
    reader.join(30)
    assert not reader.is_alive(), "the stream hung after the engine died"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert "exited with code -9" in error["message"] and lines[-1] == "data: [DONE]"
    assert served.proc.wait(20) == 1
    stderr = served.proc.stderr.read().strip().splitlines()
    assert stderr[-1].startswith("error: the engine process has exited (")


@pytest.mark.slow
def test_a_killed_server_takes_its_engine_process_with_it(served: Served):
    pids = served.engine_pids
    served.proc.kill()
    served.proc.wait(10)
    assert _gone(pids)
