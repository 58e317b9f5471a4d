"""A run in the foreground of a command: its progress line on stderr, and Ctrl-C cancelling it."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class ctrl_c_cancels:
    """First Ctrl-C cancels the sweep gracefully (it keeps what finished); a second one aborts."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def __enter__(self) -> None:
        self.previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._handle)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: Any) -> None:
        print("\ncancelling: finishing the current step (Ctrl-C again to abort)", file=sys.stderr)
        self.stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)


def progress_printer():
    is_tty = sys.stderr.isatty()

    def show(p) -> None:
        finished = p.trials_done + p.trials_failed
        width = 30
        bar = "#" * (width * finished // max(p.trials_total, 1))
        eta = "?" if p.eta_s is None else f"{p.eta_s:.0f}s"
        line = (f"[{bar:<{width}}] {finished}/{p.trials_total} failed {p.trials_failed} "
                f"ETA {eta} {p.current_label or ''}")
        print(("\r" + line.ljust(110)) if is_tty else line, end="" if is_tty else "\n",
              file=sys.stderr, flush=True)
    return show
