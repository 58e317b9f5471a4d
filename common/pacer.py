"""Callbacks at exact `time.monotonic()` instants on an asyncio loop.

asyncio's own timers wake up to 1 ms late (epoll's timeout is whole milliseconds, rounded up;
libuv's clock is milliseconds too), which is half the inter-token gap the mock server must
reproduce. On Linux a timerfd armed at an absolute CLOCK_MONOTONIC time wakes the loop within
tens of microseconds; elsewhere the loop's own timers are used.

Standard library only: the mock server (mock/server.py) and the HTTP load generator's workers
(experiments/load/http_client.py) both pace with it, so it lives in common/.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import os
import sys
import time
from collections.abc import Callable

CLOCK_MONOTONIC = 1
TFD_NONBLOCK, TFD_CLOEXEC, TFD_TIMER_ABSTIME = 0o4000, 0o2000000, 1
SLACK_S = 20e-6  # events due this close to now run now instead of re-arming the timer


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _timerfd() -> tuple[int, Callable[[float], None]] | None:
    """A non-blocking timerfd and a function arming it at an absolute monotonic time."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None

    def arm(when_s: float) -> None:
        when_ns = max(1, int(when_s * 1e9))  # 0 would disarm; a past time fires at once
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(when_ns // 10**9, when_ns % 10**9))
        libc.timerfd_settime(fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None)

    return fd, arm


class Pacer:
    """`call_at(when_s, fn)` on the running loop, `when_s` on the `time.monotonic()` clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._ids = itertools.count()
        self._armed_s: float | None = None
        timer = _timerfd()
        self._fd, self._arm = timer if timer is not None else (None, None)
        if self._fd is not None:
            loop.add_reader(self._fd, self._on_timer)

    @property
    def is_precise(self) -> bool:
        return self._fd is not None

    def call_at(self, when_s: float, fn: Callable[[], None]) -> None:
        """Run `fn()` at `when_s` (or as soon as possible if that has passed)."""
        if self._fd is None:
            self.loop.call_later(max(0.0, when_s - time.monotonic()), fn)
            return
        heapq.heappush(self._heap, (when_s, next(self._ids), fn))
        if self._armed_s is None or when_s < self._armed_s:
            self._armed_s = when_s
            self._arm(when_s)

    def close(self) -> None:
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    def _on_timer(self) -> None:
        with contextlib.suppress(BlockingIOError):  # re-armed since it fired: nothing to read
            os.read(self._fd, 8)
        horizon_s = time.monotonic() + SLACK_S
        while self._heap and self._heap[0][0] <= horizon_s:
            heapq.heappop(self._heap)[2]()
        self._armed_s = self._heap[0][0] if self._heap else None
        if self._armed_s is not None:
            self._arm(self._armed_s)
