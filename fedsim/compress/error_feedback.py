"""Error feedback (error accumulation): one wrapper around any compressor, for either direction.

The residual ``r`` keeps what compression dropped and adds it to the next update (the STC paper's error
accumulation, arXiv 1903.02891; Seide et al. 2014; Karimireddy et al., arXiv 1901.09847)::

    a     = x + r              accumulate
    m     = C(a)               compress
    r_new = a - decoded(m)     keep what was not sent

The wrapper is a compressor itself: ``init`` gives an :class:`ErrorFeedbackState` (the wrapped
compressor's state and the residual), ``compress`` takes K rows and K residual rows. The federated
simulation keeps each client's residual row between rounds and the server's own residual downstream; it
hands the participants' rows in and stores what comes back.

Exactness: ``a`` and ``r_new`` are each computed once, in the update's dtype. Where nothing was sent
(``decoded_i = 0``) and where the value was sent as is (top-k, identity), ``r_new_i`` is exact and
``a_i == decoded_i + r_new_i`` bitwise. Where a *different* value was sent (STC's mu, sign),
``r_new_i = fl(a_i - sent_i)`` is the correctly rounded difference: exact, and the invariant bitwise,
whenever ``sent_i / 2 <= a_i <= 2 sent_i`` (Sterbenz's lemma); otherwise ``sent_i + r_new_i`` differs from
``a_i`` by at most half an ulp of ``r_new_i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.compress.base import Compressor, Layout, as_rows, float_dtype, layout_of


@dataclass(frozen=True)
class ErrorFeedbackState:
    """The wrapped compressor's state and the senders' residuals."""

    inner: Any                      # the wrapped compressor's state (its Layout for stateless ones)
    residual: np.ndarray | None     # (K, P) or (P,): what has not been sent yet; None: zeros

    @property
    def layout(self) -> Layout:
        return layout_of(self.inner)


@dataclass(frozen=True)
class ErrorFeedback:
    """Wrap ``compressor`` with a residual: ``a = x + r; m = C(a); r = a - decoded(m)``."""

    compressor: Compressor   # any compressor of fedsim.compress

    def init(self, spec_or_size, dtype=np.float32) -> ErrorFeedbackState:
        """The wrapped compressor's state and a zero residual vector of ``dtype`` (float32 or float64).
        For K senders, put their (K, P) residual rows into the state (``dataclasses.replace``)."""
        inner = self.compressor.init(spec_or_size)
        return ErrorFeedbackState(inner, np.zeros(layout_of(inner).size, float_dtype(dtype)))

    def compress(self, updates, state: ErrorFeedbackState, rng: np.random.Generator | None = None):
        """``(Compressed, new state)``: row r compresses ``updates[r] + residual[r]``; the new residual
        has the shape the residual (or, if None, the updates) had."""
        given = np.asarray(updates)
        rows = as_rows(given, state.layout)
        residual = np.zeros_like(given) if state.residual is None else np.asarray(state.residual)
        if residual.dtype != rows.dtype:
            raise ValueError(f"update dtype {rows.dtype} differs from the residual's {residual.dtype}")
        if residual.shape != given.shape:
            raise ValueError(f"residuals must match the updates' shape {given.shape}, got {residual.shape}")
        accumulated = np.ascontiguousarray(rows + residual.reshape(rows.shape))     # a = x + r
        compressed, inner = self.compressor.compress(accumulated, state.inner, rng)
        new_residual = accumulated - compressed.decoded                              # r = a - decoded
        return compressed, ErrorFeedbackState(inner, new_residual.reshape(residual.shape))

    def state_arrays(self, state: ErrorFeedbackState) -> dict[str, np.ndarray]:
        """The residual and the wrapped compressor's arrays (for a checkpoint)."""
        return {"residual": state.residual, **self.compressor.state_arrays(state.inner)}

    def load_state_arrays(self, state: ErrorFeedbackState, arrays) -> ErrorFeedbackState:
        if "residual" not in arrays:
            raise ValueError(f"checkpoint lacks the error-feedback array 'residual', got {sorted(arrays)}")
        inner = {key: value for key, value in arrays.items() if key != "residual"}
        return ErrorFeedbackState(self.compressor.load_state_arrays(state.inner, inner), arrays["residual"])

    def __getattr__(self, name):
        # name, aggregations, aggregate, message, decode, ...: those of the wrapped compressor
        if name == "compressor":
            raise AttributeError(name)
        return getattr(self.compressor, name)

