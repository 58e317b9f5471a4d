"""The store's own errors: one-line messages that say what is wrong and what to do."""

from __future__ import annotations


class StoreError(RuntimeError):
    """Any failure of the result store (bad URL, unreachable server, constraint, driver error)."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer tradeoff than this one."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"database schema version {found} is newer than this tradeoff "
            f"(supports {supported}); upgrade tradeoff"
        )
        self.found, self.supported = found, supported


class UnknownSweepError(StoreError):
    """No sweep with the given id."""

    def __init__(self, sweep_id: int) -> None:
        super().__init__(f"no sweep with id {sweep_id}; list them with `tradeoff sweeps`")
        self.sweep_id = sweep_id


class DuplicateTrialError(StoreError):
    """The sweep already holds a trial with the same configuration."""
