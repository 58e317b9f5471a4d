"""The client workers' raw timelines merged into one run's RequestRecords and LoadResult.

Token counting happens here, in the parent, after the run: from `usage` when the server sent
it, else from the chunk texts with the tokenizer (never on a worker's hot path).
"""

from __future__ import annotations

from typing import Any

from common.records import RequestRecord
from experiments.analysis.metrics import depth_samples, is_saturated
from experiments.load import sse
from experiments.load.client_stats import ClientStats
from experiments.load.http_client import CANCELLED, Raw
from experiments.load.loadgen import LoadResult, achieved_rate, offered_rate
from experiments.load.workload import RequestSpec


def num_text_tokens(tokenizer: Any, text: str) -> int:
    """Tokens in `text`; encode() may add special tokens (BOS): an empty text's count is removed."""
    return max(0, len(tokenizer.encode(text)) - len(tokenizer.encode("")))


def to_record(raw: Raw, specs: list[RequestSpec] | None, tokenizer: Any) -> RequestRecord:
    """One request's RequestRecord from a worker's raw tuple (sessions: no `specs`, the worker
    counted the prompt)."""
    index, scheduled_s, sent_s, times, usage_tokens, texts, _reason, done_s, error = raw[:9]
    cached_tokens, num_prompt, session_id, turn = raw[9:13]
    if error is None:
        times = _token_times(times, usage_tokens, texts, tokenizer)
    if specs is not None:
        num_prompt = len(specs[index % len(specs)].prompt_ids)
    return RequestRecord(
        request_id=index, scheduled_s=scheduled_s, sent_s=sent_s, admitted_s=None,
        token_times_s=tuple(times), done_s=done_s, num_prompt_tokens=num_prompt,
        num_output_tokens=len(times), error=error, session_id=session_id, turn=turn,
        num_cached_tokens=cached_tokens,
    )


def _token_times(times: list[float], usage_tokens: int | None, texts: list[str] | None,
                 tokenizer: Any) -> list[float]:
    if usage_tokens is not None:
        return sse.token_times(times, usage_tokens)
    if tokenizer is None or texts is None:
        return times  # one token per chunk: the best guess without usage or a tokenizer
    weights = [max(1, num_text_tokens(tokenizer, t)) for t in texts]
    return sse.token_times(times, num_text_tokens(tokenizer, "".join(texts)), weights)


def load_result(per_worker: list[tuple[list[Raw], dict]], outcome: str,
                specs: list[RequestSpec] | None, num_warmup: int, start_s: float,
                batch_size: int | None, tokenizer: Any, use_uvloop: bool,
                num_measured: int | None = None) -> LoadResult:
    """Merge the workers' outcomes; `batch_size` is set for open loops (the saturation rule).
    Measured: indices from `num_warmup` on, `num_measured` of them (default: to len(specs))."""
    raws = sorted((raw for raws, _ in per_worker for raw in raws), key=lambda r: r[0])
    end = num_warmup + num_measured if num_measured is not None else len(specs or [])
    measured, background = [], []
    for raw in raws:
        is_measured = num_warmup <= raw[0] < end
        if is_measured and raw[8] == CANCELLED:
            continue  # cut by the deadline or a stop: not a result
        (measured if is_measured else background).append(to_record(raw, specs, tokenizer))
    saturated, depths = False, []
    if batch_size is not None:
        sent = [r.scheduled_s for r in measured]
        depths = depth_samples(sorted(sent), measured + background)
        saturated = is_saturated(depths, offered_rate(sent), achieved_rate(measured), batch_size)
    stats = [s for _, s in per_worker if s]
    client = ClientStats(
        loop_lag_s=[lag for s in stats for lag in s["loop_lag_s"]],
        cpu_s=sum(s["cpu_s"] for s in stats), wall_s=max((s["wall_s"] for s in stats), default=0.0),
        num_workers=len(per_worker), info={"uvloop": use_uvloop, "process": "client workers",
                                           "cpu_s_per_worker": [round(s["cpu_s"], 3) for s in stats]},
    )
    return LoadResult(measured, outcome == "cut", outcome == "stopped", saturated, depths,
                      background=background, client=client)
