"""Request traces: load (CSV or Mooncake JSONL), window, time-scale and length-scale them.

A trace is arrival times plus prompt and output token counts, nothing else (no prompt text).
Loading is vectorised (pandas / numpy): a one-hour, 20k-row trace loads and prepares in well
under a second. Every bad file gives one line naming the line and the column to fix.

Built-in traces (`experiments/traces/*.csv.gz`) are the Azure LLM inference traces of
2023-11-16, CC-BY 4.0: see `ATTRIBUTION`, which ships with every use of them.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.spec.arrivals import ATTRIBUTION, BUILTIN_TRACES, TraceArrival

# The experiments package's folder: its traces ship inside it (package data, experiments/traces/).
_PACKAGE_DIR = Path(__file__).resolve().parent.parent

__all__ = ["ATTRIBUTION", "BUILTIN_TRACES"]  # re-exported: where trace users look for them

# Column names tried, in order, when a CSV's columns are not given (case-insensitive).
TIMESTAMP_ALIASES = ("timestamp", "arrival_time", "time")
INPUT_ALIASES = ("contexttokens", "input_length", "input_tokens", "prompt_tokens", "input")
OUTPUT_ALIASES = ("generatedtokens", "output_length", "output_tokens", "output")
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


class TraceError(ValueError):
    """A trace that cannot be read; one line naming the file, line and column, and the fix."""


@dataclass(frozen=True)
class Trace:
    """Arrivals (s from the first request, sorted) and token counts, one row per request."""

    name: str
    arrival_s: np.ndarray  # float64, non-decreasing, arrival_s[0] == 0
    prompt_tokens: np.ndarray  # int64 >= 0
    output_tokens: np.ndarray  # int64 >= 0
    # Mooncake's `hash_ids`: each row's prompt blocks by hash (same hash, same tokens); None
    # when the trace has none (CSV traces, JSONL without the field).
    hash_ids: tuple[tuple[int, ...], ...] | None = None

    @property
    def num_requests(self) -> int:
        return int(self.arrival_s.size)

    @property
    def span_s(self) -> float:
        return float(self.arrival_s[-1]) if self.num_requests else 0.0


@dataclass(frozen=True)
class Replay:
    """One window of a trace as sent: arrival offsets (wall s from the window start) and lengths."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    start_s: float  # window in trace time (s from the trace's first request)
    end_s: float
    hash_ids: tuple[tuple[int, ...], ...] | None = None  # per row, as in Trace

    @property
    def num_requests(self) -> int:
        return int(self.arrival_s.size)


# -- loading ------------------------------------------------------------------------------------


def load_trace(source: str, columns: dict[str, str] | None = None, time_unit: str | None = None) -> Trace:
    """A built-in trace by name (`azure_conv`) or a .csv / .jsonl file (cached per file)."""
    if source in BUILTIN_TRACES:
        return _load_builtin(source)
    path = Path(source)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise TraceError(f"trace '{source}': cannot read the file ({exc.strerror or exc}); "
                         f"built-in traces: {', '.join(BUILTIN_TRACES)}") from None
    cols = tuple(sorted((columns or {}).items()))
    return _load_file(str(path), mtime, cols, time_unit)


@functools.lru_cache(maxsize=4)
def _load_builtin(name: str) -> Trace:
    data = _PACKAGE_DIR.joinpath(f"traces/{BUILTIN_TRACES[name]}").read_bytes()
    return parse_csv(gzip.decompress(data).decode("utf-8"), name)


@functools.lru_cache(maxsize=8)
def _load_file(path: str, mtime_ns: int, columns: tuple, time_unit: str | None) -> Trace:
    del mtime_ns  # part of the cache key only: an edited file is read again
    try:
        raw = Path(path).read_bytes()
        text = (gzip.decompress(raw) if path.endswith(".gz") else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise TraceError(f"trace '{path}': cannot read the file ({exc})") from None
    stem = path.removesuffix(".gz")
    if stem.endswith((".jsonl", ".json")):
        return parse_jsonl(text, path, time_unit or "ms")
    return parse_csv(text, path, dict(columns), time_unit or "s")


def parse_csv(text: str, source: str, columns: dict[str, str] | None = None,
              time_unit: str = "s") -> Trace:
    """A CSV trace: a timestamp column (datetimes, or numbers in `time_unit`) and two token counts."""
    try:
        df = pd.read_csv(io.StringIO(text), skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise TraceError(f"trace '{source}': not a CSV file ({str(exc).splitlines()[0]})") from None
    if df.empty:
        raise TraceError(f"trace '{source}': no requests (only a header?)")
    ts_col, in_col, out_col = _pick_columns(df, columns or {}, source)
    arrival = _parse_times(df[ts_col], ts_col, time_unit, source)
    prompt = _parse_counts(df[in_col], in_col, source)
    output = _parse_counts(df[out_col], out_col, source)
    return _make_trace(Path(source).name, arrival, prompt, output, source)


def parse_jsonl(text: str, source: str, time_unit: str = "ms") -> Trace:
    """A Mooncake-style JSONL trace: `timestamp` (ms), `input_length`, `output_length` per line,
    and `hash_ids` (the prompt's block hashes), kept when every line has them."""
    rows: list[tuple[float, int, int]] = []
    hashes: list[tuple[int, ...] | None] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            obj = _jsonl_object(line, line_no, source)
            rows.append(_jsonl_row(obj, line_no, source))
            hashes.append(_hash_ids(obj, line_no, source))
    if not rows:
        raise TraceError(f"trace '{source}': no requests; each line needs timestamp, "
                         "input_length and output_length")
    arr = np.asarray(rows, dtype=float)
    unit = _time_unit(time_unit, source)
    hash_ids = None if any(h is None for h in hashes) else tuple(hashes)
    return _make_trace(Path(source).name, arr[:, 0] * unit, arr[:, 1].astype(np.int64),
                       arr[:, 2].astype(np.int64), source, hash_ids)


def _hash_ids(obj: dict, line_no: int, source: str) -> tuple[int, ...] | None:
    value = obj.get("hash_ids")
    if value is None:
        return None
    is_ok = isinstance(value, list) and all(
        isinstance(h, int) and not isinstance(h, bool) for h in value)
    if not is_ok:
        raise TraceError(f"trace '{source}' line {line_no}, column hash_ids: needs a list of "
                         f"whole numbers (block hashes), got {value!r}")
    return tuple(value)


def _jsonl_object(line: str, line_no: int, source: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceError(f"trace '{source}' line {line_no}, column {exc.colno}: invalid JSON "
                         f"({exc.msg})") from None
    if not isinstance(obj, dict):
        raise TraceError(f"trace '{source}' line {line_no}: expected a JSON object per line")
    return obj


def _jsonl_row(obj: dict, line_no: int, source: str) -> tuple[float, int, int]:
    values = []
    for key in ("timestamp", "input_length", "output_length"):
        value = obj.get(key)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        is_ok = is_int or (key == "timestamp" and isinstance(value, float) and np.isfinite(value))
        if not is_ok or value < 0:
            raise TraceError(f"trace '{source}' line {line_no}, column {key}: needs a number >= 0"
                             f"{'' if key == 'timestamp' else ' (whole tokens)'}, got {value!r}")
        values.append(value)
    return values[0], values[1], values[2]


def _pick_columns(df: pd.DataFrame, columns: dict[str, str], source: str) -> tuple[str, str, str]:
    unknown = set(columns) - {"timestamp", "input", "output"}
    if unknown:
        raise TraceError(f"trace '{source}': unknown column role(s) {', '.join(sorted(unknown))}; "
                         "use timestamp, input, output")
    by_lower = {c.strip().lower(): c for c in df.columns}
    picked = []
    for role, aliases in (("timestamp", TIMESTAMP_ALIASES), ("input", INPUT_ALIASES),
                          ("output", OUTPUT_ALIASES)):
        wanted = (columns[role],) if role in columns else aliases
        found = next((by_lower[w.lower()] for w in wanted if w.lower() in by_lower), None)
        if found is None:
            raise TraceError(f"trace '{source}': no {role} column (looked for {', '.join(wanted)}; "
                             f"the file has {', '.join(df.columns)}); name it in columns.{role}")
        picked.append(found)
    return picked[0], picked[1], picked[2]


def _parse_times(col: pd.Series, name: str, time_unit: str, source: str) -> np.ndarray:
    # Fast paths first: a clean numeric column, then a clean date-time column.
    if pd.api.types.is_numeric_dtype(col) and col.notna().all():
        return col.to_numpy(dtype=float) * _time_unit(time_unit, source)
    stamps = pd.to_datetime(col, errors="coerce", format="ISO8601")
    if stamps.notna().all():
        ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        return (ns - ns.min()) / 1e9
    numbers = pd.to_numeric(col, errors="coerce")
    # Report the first bad row of whichever reading fits the column better.
    bad = (numbers.isna() if numbers.notna().sum() >= stamps.notna().sum() else stamps.isna()).to_numpy()
    row = int(np.argmax(bad))
    raise TraceError(f"trace '{source}' line {row + 2}, column {name}: not a timestamp "
                     f"(got {col.iloc[row]!r}); use a date-time or a number of {time_unit}")


def _parse_counts(col: pd.Series, name: str, source: str) -> np.ndarray:
    numbers = (col if pd.api.types.is_numeric_dtype(col)
               else pd.to_numeric(col, errors="coerce")).to_numpy(dtype=float)
    bad = ~(np.isfinite(numbers) & (numbers >= 0) & (numbers == np.floor(numbers)))
    if bad.any():
        row = int(np.argmax(bad))
        raise TraceError(f"trace '{source}' line {row + 2}, column {name}: needs a whole number "
                         f"of tokens >= 0, got {col.iloc[row]!r}")
    return numbers.astype(np.int64)


def _time_unit(unit: str, source: str) -> float:
    if unit not in TIME_UNITS:
        raise TraceError(f"trace '{source}': time_unit must be one of {', '.join(TIME_UNITS)}, got {unit!r}")
    return TIME_UNITS[unit]


def _make_trace(name: str, arrival: np.ndarray, prompt: np.ndarray, output: np.ndarray,
                source: str, hash_ids: tuple[tuple[int, ...], ...] | None = None) -> Trace:
    if arrival.size == 0:
        raise TraceError(f"trace '{source}': no requests (only a header?)")
    order = np.argsort(arrival, kind="stable")  # some traces log out of order
    arrival = arrival[order] - arrival[order[0]]
    hashes = None if hash_ids is None else tuple(hash_ids[i] for i in order)
    return Trace(name, arrival, prompt[order], output[order], hashes)


# -- window, speed-up, lengths ------------------------------------------------------------------


def replay_window(trace: Trace, start_s: float, duration_s: float, speedup: float) -> Replay:
    """Rows with trace time in [start_s, start_s + duration_s x speedup), arriving at
    (trace time - start_s) / speedup: `duration_s` wall seconds of the trace, `speedup`x faster."""
    if not speedup > 0 or not np.isfinite(speedup):
        raise TraceError(f"speedup must be a finite number > 0, got {speedup}")
    if not start_s >= 0 or not duration_s > 0:
        raise TraceError(f"trace window needs start_s >= 0 and duration_s > 0, got {start_s}, {duration_s}")
    end_s = start_s + duration_s * speedup
    lo, hi = np.searchsorted(trace.arrival_s, [start_s, end_s], side="left")
    if lo == hi:
        raise TraceError(f"trace '{trace.name}' has no requests in [{start_s:g}, {end_s:g}) s "
                         f"(it spans {trace.span_s:.0f} s); move start_s or lengthen the window")
    return Replay((trace.arrival_s[lo:hi] - start_s) / speedup, trace.prompt_tokens[lo:hi],
                  trace.output_tokens[lo:hi], start_s, end_s,
                  None if trace.hash_ids is None else trace.hash_ids[lo:hi])


def scale_lengths(tokens: np.ndarray, length_scale: float, max_tokens: int | None) -> np.ndarray:
    """round(tokens x length_scale), clipped to [1, max_tokens]: every request keeps >= 1 token."""
    scaled = np.rint(tokens * length_scale).astype(np.int64)
    return np.clip(scaled, 1, max_tokens if max_tokens is not None else None)


def prepare_replay(arrival: TraceArrival, speedup: float | None = None,
                   duration_s: float | None = None) -> Replay:
    """The profile's trace window at `speedup` (default the profile's), lengths scaled and clipped."""
    trace = load_trace(arrival.trace, arrival.columns, arrival.time_unit)
    window = replay_window(trace, arrival.start_s, duration_s or arrival.duration_s,
                           speedup or arrival.speedup)
    return Replay(window.arrival_s,
                  scale_lengths(window.prompt_tokens, arrival.length_scale, arrival.max_prompt_tokens),
                  scale_lengths(window.output_tokens, arrival.length_scale, arrival.max_output_tokens),
                  window.start_s, window.end_s, window.hash_ids)


def block_tokens_of(arrival: TraceArrival) -> int:
    """Tokens per `hash_ids` block as replayed: the trace's block size x length_scale (>= 1)."""
    return max(1, round(arrival.block_tokens * arrival.length_scale))


def scaled_rows(arrival: TraceArrival, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` rows' (prompt, output) lengths from the window start on, scaled and clipped; the
    rows cycle when the trace runs out. For requests not replayed on the trace's clock
    (the unloaded baseline, warm-ups, a closed loop over a trace profile)."""
    trace = load_trace(arrival.trace, arrival.columns, arrival.time_unit)
    first = int(np.searchsorted(trace.arrival_s, arrival.start_s, side="left")) % trace.num_requests
    rows = (first + np.arange(n)) % trace.num_requests
    return (scale_lengths(trace.prompt_tokens[rows], arrival.length_scale, arrival.max_prompt_tokens),
            scale_lengths(trace.output_tokens[rows], arrival.length_scale, arrival.max_output_tokens))
