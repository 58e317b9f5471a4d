"""Security checks as tests (issue 13): loopback binds by default, no shell anywhere near user
text, and an API key that reaches the server but nothing else (db, exports, logs, report)."""

from __future__ import annotations

import ast
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from common.records import TrialConfig
from experiments.targets.server_cmd import render_server_cmd

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "engine", "server", "mock", "experiments", "db")
SECRET = "sk-test-7f3a9c-never-store-me"


# -- binds -----------------------------------------------------------------------------------------


def test_serve_binds_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.api

    bound: list[tuple[str, int]] = []
    monkeypatch.setattr(server.api, "serve",
                        lambda *a, sock, **k: bound.append(sock.getsockname()[:2]))
    assert main(["serve", "--port", "0"]) == 2  # port 0 is refused: a port must be chosen
    free = _free_port()
    assert main(["serve", "--port", str(free)]) == 0
    assert bound == [("127.0.0.1", free)]


def test_ui_binds_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    import app.cmd_ui

    commands: list[list[str]] = []
    monkeypatch.setattr(app.cmd_ui, "serve", lambda command, env: commands.append(command) or 0)
    assert main(["ui", "--db", f"sqlite:///{tmp_path / 'u.db'}", "--port", str(_free_port())]) == 0
    command = commands[0]
    assert command[command.index("--server.address") + 1] == "127.0.0.1"


def test_background_server_defaults_to_loopback() -> None:
    import inspect

    from server.api import BackgroundServer

    assert inspect.signature(BackgroundServer).parameters["host"].default == "127.0.0.1"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- no shell ------------------------------------------------------------------------------------


def _calls(tree: ast.AST) -> Iterator[ast.Call]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def test_no_shell_true_and_no_os_system_anywhere() -> None:
    offenders = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for call in _calls(ast.parse(path.read_text(), str(path))):
                name = ast.unparse(call.func)
                shell = any(k.arg == "shell" and not (isinstance(k.value, ast.Constant)
                                                      and k.value.value is False)
                            for k in call.keywords)
                if shell or name in ("os.system", "os.popen", "subprocess.getoutput",
                                     "subprocess.getstatusoutput"):
                    offenders.append(f"{path.relative_to(ROOT)}:{call.lineno} {name}")
    assert offenders == []


def test_server_cmd_placeholders_fill_one_argument_each() -> None:
    config = TrialConfig("continuous", 4, 2.5, concurrency=1)
    argv = render_server_cmd("srv --port {port} 'two words' --x={batch_size};rm --w {max_wait_ms}",
                             config, 8123)
    # The `;` stays inside its argument: no shell ever sees it.
    assert argv == ["srv", "--port", "8123", "two words", "--x=4;rm", "--w", "2.5"]


def test_shell_syntax_in_a_server_cmd_reaches_the_program_as_plain_text(tmp_path: Path) -> None:
    from experiments.targets.external import ServerProcess, TargetSetupError

    out, marker = tmp_path / "argv.json", tmp_path / "PWNED"
    script = "import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))"
    template = (f"{sys.executable} -c \"{script}\" {out} '$(touch {marker})' "
                f"'`touch {marker}`' '; touch {marker}' '{{port}}|touch {marker}'")
    with pytest.raises(TargetSetupError, match="exited"):  # it never serves: it only records
        ServerProcess(template, TrialConfig("static", 1, 0.0, concurrency=1),
                      health_timeout_s=30).start()
    argv = json.loads(out.read_text())
    assert argv[1:4] == [f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker}"]
    assert argv[4].endswith(f"|touch {marker}") and not marker.exists()


# -- the API key ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[tuple[str, list[str]]]:
    """`tradeoff serve`'s app on builtin:tiny, recording the Authorization headers it gets."""
    from engine.config import EngineConfig, SchedulerConfig
    from engine.factory import start_engine
    from server.api import BackgroundServer, create_app

    seen: list[str] = []
    engine, loaded = start_engine(EngineConfig(model="builtin:tiny"), SchedulerConfig(max_batch_size=4))
    app = create_app(engine, loaded, "builtin:tiny")

    @app.middleware("http")
    async def record(request: Any, call_next: Any) -> Any:
        seen.append(request.headers.get("authorization", ""))
        return await call_next(request)

    with BackgroundServer(app) as base_url:
        yield f"{base_url}/v1", seen
    engine.close()


@pytest.mark.slow
def test_api_key_reaches_the_server_and_nothing_else(
        keyed_server: tuple[str, list[str]], tiny_profile: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = keyed_server
    monkeypatch.setenv("TRADEOFF_TEST_KEY", SECRET)
    # This test follows the key, not the client's health: on a busy CI machine the 2-user trial
    # can be flagged client-bound, and then there would be no recommendation to export.
    monkeypatch.setattr("experiments.load.client_stats.MIN_LIMIT_MS", 1e9)
    caplog.set_level(logging.DEBUG)  # every logger, at its chattiest
    db = tmp_path / "k.db"
    # No knob flags: a bare --target batches by its own settings (they would be refused).
    target = ["--target", url, "--api-key-env", "TRADEOFF_TEST_KEY", "--profile", str(tiny_profile)]
    assert main(["sweep", *target, "--concurrency", "2", "--requests", "4",
                 "--db", f"sqlite:///{db}", "--json"]) == 0
    assert main(["trial", *target, "--concurrency", "2", "--requests", "4", "--json"]) == 0
    assert f"Bearer {SECRET}" in seen  # the key was really used
    texts = [capsys.readouterr(), caplog.text]
    for fmt in ("json", "yaml", "vllm", "triton", "ray-serve", "torchserve"):
        out = tmp_path / f"export.{fmt}"
        assert main(["export", "--sweep", "1", "--format", fmt, "-o", str(out),
                     "--db", f"sqlite:///{db}"]) == 0
        texts.append(out.read_text())
    for args in (["trials", "1", "--format", "json"], ["trials", "1", "--format", "csv"],
                 ["recommend", "--sweep", "1", "--format", "json"], ["sweeps", "--json"]):
        assert main([*args, "--db", f"sqlite:///{db}"]) == 0
        texts.append(capsys.readouterr())
    texts.append(_report(db))
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("k.db*"))  # the db and its WAL
    assert SECRET.encode() not in stored
    assert [t for t in texts if SECRET in str(t)] == []


def _report(db: Path) -> str:
    from app.dashboard.report import build_report
    from db.store import Store
    from experiments.analysis.queries import analyse

    with Store(f"sqlite:///{db}", create=False) as store:
        return build_report(analyse(store, store.get_sweep(1)))
