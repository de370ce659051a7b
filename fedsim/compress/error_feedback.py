"""Error feedback (error accumulation): one wrapper around any compressor.

The residual ``r`` keeps what compression dropped and adds it to the next update (the STC paper's error
accumulation, arXiv 1903.02891; also Seide et al. 2014, Karimireddy et al., arXiv 1901.09847)::

    a     = x + r              accumulate
    m     = C(a)               compress
    r_new = a - decompress(m)  keep what was not sent

Exactness: ``a`` and ``r_new`` are each computed once, in the update's dtype. Where nothing was sent
(``decompress(m)_i = 0``) and where the value was sent as is (top-k, identity), ``r_new_i`` is exact and
``a_i == decompress(m)_i + r_new_i`` bitwise. Where a *different* value was sent (STC's mu, sign),
``r_new_i = fl(a_i - sent_i)`` is the correctly rounded difference: exact, and the invariant bitwise,
whenever ``sent_i / 2 <= a_i <= 2 sent_i`` (Sterbenz's lemma); otherwise ``sent_i + r_new_i`` differs from
``a_i`` by at most half an ulp of ``r_new_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.compress.base import FLOAT_DTYPES, BatchResult, Compressor, Layout, check_update


@dataclass(frozen=True)
class ErrorFeedbackState:
    """State of an error-feedback compressor: the wrapped compressor's state and the residual."""

    inner: Layout            # the wrapped compressor's state (its segment layout)
    residual: np.ndarray     # (P,) what has not been sent yet, in the updates' dtype


@dataclass(frozen=True)
class ErrorFeedback:
    """Wrap ``compressor`` with a residual: ``a = x + r; m = C(a); r = a - decompress(m)``."""

    compressor: Compressor   # any compressor of fedsim.compress

    def init(self, spec_or_size, dtype=np.float32) -> ErrorFeedbackState:
        """The wrapped compressor's state and a zero residual of ``dtype`` (float32 or float64)."""
        if np.dtype(dtype) not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        inner = self.compressor.init(spec_or_size)
        return ErrorFeedbackState(inner, np.zeros(inner.size, dtype))

    def compress(self, x, state: ErrorFeedbackState, rng: np.random.Generator | None = None):
        """``(message, new state)``: the message compresses ``x + residual``."""
        x = check_update(x, state.inner)
        if x.dtype != state.residual.dtype:
            raise ValueError(f"update dtype {x.dtype} differs from the residual's {state.residual.dtype}")
        accumulated = x + state.residual
        message, inner = self.compressor.compress(accumulated, state.inner, rng)
        residual = accumulated - self.compressor.decompress(message)
        return message, ErrorFeedbackState(inner, residual)

    def decompress(self, message):
        return self.compressor.decompress(message)

    def bits(self, message) -> int:
        return self.compressor.bits(message)

    def analytic_bits(self, message) -> float:
        return self.compressor.analytic_bits(message)

    def compress_batch(self, updates, state: Layout, rng: np.random.Generator | None = None,
                       residuals: np.ndarray | None = None) -> BatchResult:
        """K clients at once: row r equals ``compress(updates[r], ErrorFeedbackState(state, residuals[r]))``.

        ``state`` is the wrapped compressor's (shared) layout; ``residuals`` (K, P) the clients' residuals
        (zeros if None). Returns the sent rows, bits and the new residuals.
        """
        updates = np.asarray(updates)
        if residuals is None:
            residuals = np.zeros_like(updates)
        return self.compressor.compress_batch(updates, state, rng, residuals)
