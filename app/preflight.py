"""Checks commands run before they write anything or load a model: the result store can be
opened (without creating one yet), an external target answers, a server can bind its address.

Each failure is BadInput (or the library's own bad-input error): one line, exit 2.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from app.errors import BadInput

TARGET_PROBE_TIMEOUT_S = 3.0


def existing_store(db: str | None):
    """The store if its database exists (opening checks the URL, reachability and schema),
    else None, once it is clear a new SQLite file could be created there later."""
    from db.store import Store, make_engine, resolve_db_url

    url = resolve_db_url(db)
    engine = make_engine(url)  # StoreError on an unknown dialect or a missing driver
    try:
        is_sqlite, path = engine.url.get_backend_name() == "sqlite", engine.url.database
    finally:
        engine.dispose()
    if is_sqlite and path not in (None, "", ":memory:") and not os.path.exists(path):
        _check_creatable(Path(path))
        return None
    return Store(url)


def _check_creatable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadInput(f"--db: cannot create {path}: {parent} is not a directory; "
                       "give a path in an existing directory")
    try:  # an unnamed temporary file (O_TMPFILE): even root cannot write a read-only folder
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise BadInput(f"--db: cannot create {path}: {parent} is not writable ({exc.strerror}); "
                       "give a path in a directory you can write to") from None


def check_target_answers(url: str, timeout_s: float = TARGET_PROBE_TIMEOUT_S) -> None:
    """BadInput unless something speaks HTTP at `url` (any status: auth comes later)."""
    from experiments.targets.http_target import api_base, server_root

    if not url.startswith(("http://", "https://")):
        raise BadInput(f"--target {url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/v1")
    problem = None
    for probe in (f"{server_root(url)}/health", f"{api_base(url)}/models"):
        problem = _http_problem(probe, timeout_s)
        if problem is None:
            return
    raise BadInput(f"--target {url} does not answer ({problem}); start the server or fix the URL")


def _http_problem(url: str, timeout_s: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None  # an HTTP answer, even 401 or 404, means a server is there
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason) or type(exc).__name__


def check_bind(host: str, port: int, option: str = "--port") -> socket.socket:
    """A listening-ready socket bound to (host, port); BadInput naming what is wrong."""
    if not 1 <= port <= 65535:
        raise BadInput(f"{option} {port} is out of range; give a TCP port in 1-65535")
    family = _family(host)
    sock = socket.socket(family, socket.SOCK_STREAM)
    # As uvicorn: a port left in TIME_WAIT by a previous run is free; one with a listener is not.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BadInput(_bind_message(host, port, option, exc)) from None
    return sock


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a name: resolve it
        try:
            return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
        except (socket.gaierror, UnicodeError):
            raise BadInput(f"--host {host!r} is not an IP address or a known host name; "
                           "e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None


def _bind_message(host: str, port: int, option: str, exc: OSError) -> str:
    import errno

    if exc.errno == errno.EADDRINUSE:
        return f"{option} {port}: the port is already in use on {host}; stop that server or pick another port"
    if exc.errno == errno.EACCES:
        return f"{option} {port}: permission denied (ports below 1024 need privileges); pick a port >= 1024"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {host}: not an address of this machine; use 127.0.0.1 or 0.0.0.0"
    return f"cannot bind {host}:{port}: {exc.strerror}"
