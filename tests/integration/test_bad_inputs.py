"""Every bad input is refused cleanly (issue 13): exit 2, one line on stderr naming the field,
no traceback, nothing on stdout, and the database byte-identical afterwards (no new file).

Cases run in-process through `app.cli.main`, the function the `tradeoff` console script calls,
so each one exercises the real parsing, validation and store code without a Python start-up;
a few run as real processes to pin the exit-code contract. None loads a model: every case
must fail validation first (a model load here would mean validation came too late).
"""

from __future__ import annotations

import http.server
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from bad_inputs_cases import CASES, FILES, Case

from app.cli import main
from common.records import Dist, TrialConfig, TrialMetrics
from db.store import Store
from experiments.spec.profiles import load_profile

ROOT = Path(__file__).resolve().parents[2]
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def _metrics(goodput: float, ttft_ms: float) -> TrialMetrics:
    dist = Dist(p50=ttft_ms, p90=ttft_ms, p95=ttft_ms, p99=ttft_ms, mean=ttft_ms, count=8)
    return TrialMetrics(
        requests_completed=8, requests_failed=0, duration_s=2.0, requests_per_s=goodput,
        output_tokens_per_s=64 * goodput, total_tokens_per_s=96 * goodput, ttft_ms=dist,
        tpot_ms=dist, itl_ms=dist, e2e_ms=dist, queue_wait_ms=dist, service_ms=dist,
        goodput_rps=goodput, slo_attainment=1.0, mean_batch_size=2.0, peak_memory_mb=None,
        saturated=False, slos={"ttft_ms": {"percentile": "p90", "max_ms": 500.0}})


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A db with one finished chat sweep of two trials (made by hand: no model runs)."""
    path = tmp_path_factory.mktemp("seed") / "seed.db"
    with Store(f"sqlite:///{path}") as store:
        sweep_id = store.create_sweep(
            name="seed", model="builtin:tiny", device="cpu", device_name=None, dtype="float32",
            profile=load_profile("chat").model_dump(mode="json"), grid={}, seed=0,
            provenance={}, trials_total=2)
        for batch, goodput, ttft in ((1, 4.0, 100.0), (4, 9.0, 300.0)):
            store.add_trial(sweep_id, TrialConfig("continuous", batch, 0.0, concurrency=4),
                            _metrics(goodput, ttft), [], datetime(2026, 1, 1), datetime(2026, 1, 1))
        store.finish_sweep(sweep_id, "done")
    return path


@pytest.fixture(scope="module")
def newer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A db written by a future tradeoff (schema version 99)."""
    path = tmp_path_factory.mktemp("newer") / "newer.db"
    Store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        conn.execute("insert into schema_version values (99, 'from the future', '2030-01-01')")
    conn.close()
    return path


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A loopback port with a listener on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def live_url() -> Iterator[str]:
    """Something that answers HTTP (200 on every GET): a reachable target."""
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _dead_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on (freed at once)
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()
            if p.is_file() and not p.name.endswith(SQLITE_SIDECARS)}


@pytest.fixture
def workdir(tmp_path: Path, seeded: Path) -> Path:
    for name, content in FILES.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "t.db").write_bytes(seeded.read_bytes())
    return tmp_path


def assert_refused(code: int, out: str, err: str, field: str) -> None:
    """Exit 2, nothing on stdout, exactly one `error: ...` line naming the field, no traceback."""
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and field in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_refused_and_nothing_is_written(
        case: Case, workdir: Path, newer: Path, busy_port: int, live_url: str,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here: look-ups must fail fast, not retry
    monkeypatch.delenv("TRADEOFF_TEST_NO_SUCH_KEY", raising=False)
    monkeypatch.chdir(workdir)  # a default ./tradeoff.db would land here, and be caught
    newer_before = newer.read_bytes()
    argv = shlex.split(case.argv.format(
        db=f"sqlite:///{workdir / 't.db'}", newdb=f"sqlite:///{workdir / 'new.db'}",
        tmp=workdir, dead=_dead_url(), busy=busy_port, newer=f"sqlite:///{newer}", live=live_url))
    before = _snapshot(workdir)
    code = main(argv)
    out, err = capsys.readouterr()
    assert_refused(code, out, err, case.field)
    assert _snapshot(workdir) == before  # the db byte-identical, no new file (new.db included)
    assert newer.read_bytes() == newer_before


def test_there_are_at_least_80_cases_plus_http() -> None:
    assert len(CASES) >= 80  # HTTP bodies: tests/server/test_server_bad_inputs.py


def test_cases_fail_before_any_model_loads() -> None:
    # Run in a fresh interpreter: if validation came after the model load, torch would be in.
    code = ("import sys; from app.cli import main; "
            "rc = main(['sweep', '--concurrency', '1', '--db', 'sqlite:///:memory:', "
            "'--server-cmd', 'x {nosuch}']); "
            "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.stdout.split() == ["2", "False", "False"], run.stderr


@pytest.mark.parametrize("args, field", [
    (["sweep", "--concurrency", "1", "--server-cmd", "x {nosuch}"], "{nosuch}"),
    (["serve", "--port", "70000"], "--port"),
    (["recommend", "--sweep", "1", "--profile", "nosuch"], "--profile"),
    (["trial", "--batch-size", "0"], "batch size"),
])
def test_exit_code_contract_in_a_real_process(args: list[str], field: str, workdir: Path) -> None:
    before = _snapshot(workdir)
    run = subprocess.run([sys.executable, "-m", "app.cli", *args, *(
        ["--db", f"sqlite:///{workdir / 't.db'}"] if args[0] in ("sweep", "recommend") else [])],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_refused(run.returncode, run.stdout, run.stderr, field)
    assert _snapshot(workdir) == before
