"""The local engine: EngineCore driven by a background thread on the wall clock.

Clients call `submit` from any thread; every timestamp after `sent` is taken in the engine
thread where the event happens. Callbacks run in the engine thread and must be quick
(append to a list, put on a queue, submit the next request).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.config import ConfigError, SchedulerConfig
from engine.core import EngineCore, Executor, StepRecord
from engine.scheduler import Scheduler
from engine.sequence import SamplingParams, Sequence

SeqCallback = Callable[[Sequence], None]


class WallClock:
    """Monotonic seconds; the engine's only time source."""

    def now(self) -> float:
        return time.perf_counter()


@dataclass
class _Callbacks:
    on_token: SeqCallback | None
    on_finish: SeqCallback | None


class Engine:
    """Runs one model with one batching config; thread-safe `submit` and `cancel`."""

    def __init__(
        self,
        executor: Executor,
        sched_config: SchedulerConfig,
        kv_budget_tokens: int,
        eos_token_id: int | None = None,
        max_model_len: int | None = None,
    ) -> None:
        check_prefix_caching(executor, sched_config)
        self.clock = WallClock()
        self._callbacks: dict[int, _Callbacks] = {}
        self.core = EngineCore(
            Scheduler(sched_config, kv_budget_tokens, max_model_len), executor, self.clock, eos_token_id,
            on_token=self._on_token, on_finish=self._on_finish,
        )
        self._ids = itertools.count()
        self._inbox: list[Sequence] = []
        self._cancels: list[Sequence] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.loop_error: str | None = None

    @property
    def kv_budget_tokens(self) -> int:
        """The KV-cache budget (tokens) the scheduler admits against."""
        return self.core.scheduler.kv_budget_tokens

    @property
    def sched_config(self) -> SchedulerConfig:
        return self.core.scheduler.config

    def now(self) -> float:
        """The engine clock (seconds); load generators schedule on it."""
        return self.clock.now()

    def start(self) -> Engine:
        """Start the engine thread (idempotent)."""
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="tradeoff-engine", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the engine thread; requests still queued or running are failed as cancelled."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        scheduled_s: float | None = None,
        on_token: SeqCallback | None = None,
        on_finish: SeqCallback | None = None,
    ) -> Sequence:
        """Queue one request; `scheduled_s` defaults to now (latency counts from it)."""
        sent_s = self.now()
        seq = Sequence(next(self._ids), list(prompt_ids), params,
                       sent_s if scheduled_s is None else scheduled_s, sent_s)
        with self._cond:
            self._callbacks[seq.seq_id] = _Callbacks(on_token, on_finish)
            self._inbox.append(seq)
            self._cond.notify()
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Abort a request (client gone); its batch slot frees at the next step boundary."""
        with self._cond:
            self._cancels.append(seq)
            self._cond.notify()

    def reconfigure(self, sched_config: SchedulerConfig) -> None:
        """Switch batching knobs between trials; the engine must be idle."""
        with self._cond:
            if self._inbox or self.core.scheduler.has_work:
                raise ConfigError("cannot change the batching config while requests are in flight")
            check_prefix_caching(self.core.executor, sched_config)
            self.core.scheduler.config = sched_config

    def take_steps(self) -> list[StepRecord]:
        """Return and clear the step log (one trial's steps)."""
        with self._cond:
            steps, self.core.steps = self.core.steps, []
        return steps

    @property
    def num_waiting(self) -> int:
        return len(self.core.scheduler.waiting) + len(self._inbox)

    @property
    def num_running(self) -> int:
        return len(self.core.scheduler.running)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stop:
                    break
                self._drain_inbox()
            try:
                plan = self.core.step()
            except Exception as exc:  # a bug, not a model error: fail everything, keep serving
                self.loop_error = f"{type(exc).__name__}: {exc}"
                self._fail_all(self.loop_error)
                continue
            if plan.is_idle:
                self._wait(plan.wake_at_s)
        self._fail_all("engine stopped", finish_reason="cancelled")

    def _drain_inbox(self) -> None:
        inbox, self._inbox = self._inbox, []
        cancels, self._cancels = self._cancels, []
        for seq in inbox:
            self.core.add(seq)
        if cancels:
            self.core.fail(cancels, "cancelled by client", finish_reason="cancelled")

    def _wait(self, wake_at_s: float | None) -> None:
        with self._cond:
            if self._inbox or self._cancels or self._stop:
                return
            timeout = None if wake_at_s is None else max(0.0, wake_at_s - self.now())
            self._cond.wait(timeout)

    def _fail_all(self, reason: str, finish_reason: str = "error") -> None:
        sched = self.core.scheduler
        with self._cond:
            self._drain_inbox()
        self.core.fail(list(sched.running) + list(sched.waiting), reason, finish_reason)

    def _on_token(self, seq: Sequence) -> None:
        cbs = self._callbacks.get(seq.seq_id)
        if cbs is not None and cbs.on_token is not None:
            cbs.on_token(seq)

    def _on_finish(self, seq: Sequence) -> None:
        cbs = self._callbacks.pop(seq.seq_id, None)
        if cbs is not None and cbs.on_finish is not None:
            cbs.on_finish(seq)


def check_prefix_caching(executor: Executor, sched_config: SchedulerConfig) -> None:
    """Refuse prefix caching on an executor that cannot start a prompt after cached blocks."""
    if sched_config.enable_prefix_caching and not getattr(executor, "can_cache_prefixes", False):
        raise ConfigError("prefix caching needs the lean runner (Llama-family models: Llama, Qwen2, "
                          "Mistral); this model runs on the Hugging Face forward, which recomputes "
                          "every prompt: use --prefix-caching off")
