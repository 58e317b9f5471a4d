"""Errors the CLI turns into one-line messages and exit codes (2 bad input, 1 runtime failure)."""

from __future__ import annotations


class BadInput(ValueError):
    """The user asked for something invalid; the message says what and how to fix it."""


EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
