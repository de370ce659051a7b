"""The errors every layer may raise (kept apart so that no layer imports another just for an error)."""

from __future__ import annotations


class DivergenceError(RuntimeError):
    """A run met NaN or inf (in a loss, an update, a gradient or the parameters) and stopped.

    ``history`` holds the records (one JSON-able dict per round or iteration) completed before it.
    """

    def __init__(self, message: str, history):
        super().__init__(message)
        self.history = history


class UpdateOverflowError(ValueError):
    """A finite update that a compressor cannot encode: a scale it computes overflows the data dtype (STC's or
    the scaled sign's mean magnitude, QSGD's norm, PowerSGD's products: the ``*_OVERFLOW_MESSAGE`` of
    :mod:`fedsim.kernels`), so the update has diverged. Raised by the jitted kernels too; a run ends as
    diverged (:class:`DivergenceError`)."""


class UsageError(Exception):
    """A command line that cannot be carried out; printed as one line, exit status 2."""
