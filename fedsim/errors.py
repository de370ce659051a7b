"""The errors every layer may raise (kept apart so that no layer imports another just for an error)."""

from __future__ import annotations


class DivergenceError(RuntimeError):
    """A run met NaN or inf (in a loss, an update, a gradient or the parameters) and stopped.

    ``history`` holds the records (one JSON-able dict per round or iteration) completed before it.
    """

    def __init__(self, message: str, history):
        super().__init__(message)
        self.history = history


class UsageError(Exception):
    """A command line that cannot be carried out; printed as one line, exit status 2."""
