"""A sweep spec's validation errors as one line naming the field, and the field as data: the
Run page shows each error beside its field without reading the text (as profile_errors.py does
for profiles, this holds the words; `experiments.spec.grid` owns the model)."""

from __future__ import annotations

from collections.abc import Container


class GridError(ValueError):
    """An invalid sweep spec; one line naming the field. `field`: the spec field it is about (None:
    no one field), so a form shows it there; `reason`: the message less that field's name."""

    def __init__(self, message: str, field: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.field, self.reason = field, message if reason is None else reason


def grid_error(loc: tuple, msg: str, fields: Container[str]) -> GridError:
    """A spec's validation error at `loc` (its flat name, sections.flat_name) as one line:
    `batch_sizes: every batch size must be >= 1`, or `sweep: ...` for a check across fields;
    `fields`: the spec's flat field names."""
    where = ".".join(str(p) for p in loc) or "sweep"
    msg = str(msg).removeprefix("Value error, ")
    return GridError(f"{where}: {msg}", _field_of(loc, msg, fields), msg)


def _field_of(loc: tuple, msg: str, fields: Container[str]) -> str | None:
    """Checks across fields have no location: the field leads the message (check_launch's), or
    it is the token budget's or an engine's lacking knobs (`vllm has no setting for ...`)."""
    if loc:
        return str(loc[0])
    head = msg.partition(": ")[0]
    if head in fields:
        return head
    if "max_num_batched_tokens" in msg:
        return "max_num_batched_tokens"
    return "engine" if " has no setting for " in msg else None
