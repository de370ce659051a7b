"""The errors every layer may raise (kept apart so that no layer imports another just for an error)."""

from __future__ import annotations


class DivergenceError(RuntimeError):
    """A run met NaN or inf (in a loss, an update, a gradient or the parameters) and stopped.

    ``history`` holds what was completed before it: the record list of a federated run, the
    :class:`~fedsim.algorithms.lazy.LazyHistory` of a lazy one.
    """

    def __init__(self, message: str, history):
        super().__init__(message)
        self.history = history
