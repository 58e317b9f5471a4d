"""The one to/from-dict rule every record of a trial's details follows (common/details.py).

A details record is a frozen dataclass whose fields are named as the JSON keys are, so the
stored `details_json`, `tradeoff trial --json` and the report keep their shape. Reading is
tolerant, because rows written by every earlier version stay in the store: a missing key is the
field's default, and a key the record does not know is kept in `extra` and written back as it
was (dropping it would lose data on the next rewrite: `Store.set_trial_details`, the migration;
some parts are open by design, e.g. a Ray worker's provenance or a load client's own facts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Record")


@dataclass(frozen=True)
class Record:
    """Base of every details record: `to_dict()` / `from_dict()` by field name (see the module doc).

    Subclasses list in NESTED the fields that hold another record (read from a nested dict), and
    in OPTIONAL the keys their writers add only sometimes: those are left out of `to_dict()`
    while at their default (None, or an empty container). Every other field is always written
    (None meaning unknown). A record read from a dict writes back the keys it read (and any
    field set since), so reading never changes a stored row's shape."""

    NESTED: ClassVar[Mapping[str, type[Record]]] = {}
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any] | None) -> R:
        """The record of a stored dict of any version (None or {}: every field at its default)."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in (data or {}).items():
            if key not in names:
                extra[key] = value
            elif key not in cls.NESTED or value is None or isinstance(value, Record):
                known[key] = value
            elif isinstance(value, Mapping):
                known[key] = cls.NESTED[key].from_dict(value)
            else:  # a shape no version wrote: kept as it was, not guessed at
                extra[key] = value
        record = cls(**known, extra=extra)  # type: ignore[call-arg]
        object.__setattr__(record, "_read_keys", frozenset(known))  # not a field: not compared
        return record

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: nested records as dicts, OPTIONAL fields at their default left out."""
        out: dict[str, Any] = dict(self.extra)  # type: ignore[attr-defined]
        read = getattr(self, "_read_keys", None)
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            left_out = f.name in self.OPTIONAL if read is None else f.name not in read
            if left_out and _is_default(f, value):
                out.pop(f.name, None)
                continue
            out[f.name] = value.to_dict() if isinstance(value, Record) else value
        return out

    def is_empty(self) -> bool:
        """Nothing recorded (the store writes no JSON for it)."""
        return not self.to_dict()


def _is_default(f: Field, value: Any) -> bool:
    if value is None:
        return True
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return value == f.default_factory()  # type: ignore[misc]
    return f.default is not MISSING and value == f.default


def extra_field() -> Any:
    """The `extra` field every record ends with: keys this version does not know, kept."""
    return field(default_factory=dict, repr=False)


def part(kind: type[R], value: R | Mapping[str, Any] | None) -> R | None:
    """`value` as a `kind` record: a writer may hand over either (None stays None)."""
    if value is None or isinstance(value, kind):
        return value
    return kind.from_dict(value)
