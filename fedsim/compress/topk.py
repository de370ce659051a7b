"""Top-k sparsification (DGC-style; Lin et al., arXiv 1712.01887): the k largest magnitudes, values kept.

Per segment of N entries, k = ceil(p N); the message is x_i on the kept set K(x, k) (:mod:`fedsim.kernels.selection`).

Wire format (``sparse``), per segment: count c (32 bits); Golomb-Rice code of the c positions within the
segment with b* = rice_parameter(c, N); the c values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedsim.compress import bits as analytic
from fedsim.compress.base import (FRACTION, Compressor, Layout, MessageFormat, PositionsMessage, ceil_product,
                                  decode_positions, float_bits, frozen_array, layout_of, read_floats, register,
                                  register_message, scope_setting, write_floats)
from fedsim.compress.theory import Theory, relative_error
from fedsim.constraints import setting
from fedsim.kernels import golomb, sparsify


@register_message
@dataclass(frozen=True, eq=False)
class SparseMessage(PositionsMessage):
    """Kept positions and their exact values."""

    kind: ClassVar[str] = "sparse"
    values: np.ndarray   # (c,) float32/float64, x at the positions

    def __post_init__(self):
        self._check_positions()
        self._set(values=frozen_array(self.values))
        if self.values.size != self.positions.size:
            raise ValueError(f"{self.positions.size} positions but {self.values.size} values")

    @classmethod
    def from_dense(cls, dense: np.ndarray, segment_offsets=None) -> "SparseMessage":
        """The nonzero entries of ``dense`` as a sparse message (e.g. the sum of a client's missed STC
        messages under caching: positions + values, no longer ternary). One segment unless given."""
        dense = np.asarray(dense)
        offsets = (0, dense.size) if segment_offsets is None else tuple(segment_offsets)
        positions = np.flatnonzero(dense)
        return cls(offsets, positions, dense[positions])

    @property
    def format(self) -> MessageFormat:
        return MessageFormat(self.kind, self.segment_offsets, self.values.dtype.name)

    def to_dense(self) -> np.ndarray:
        dense = np.zeros(self.size, self.values.dtype)
        dense[self.positions] = self.values
        return dense

    def encoded_bits(self) -> int:
        value_bits = float_bits(self.values.dtype)
        return int(sum(golomb.sparse_segment_bits(local, size, value_bits, 0)
                       for local, size in zip(self.local_positions(), self.layout.sizes)))

    def _write_segment(self, stream, offset, j, start, count):
        return write_floats(stream, offset, self.values[start:start + count])     # after its positions

    def analytic_bits(self) -> float:
        return float(analytic.top_k_analytic_bits(self.counts, self.layout.sizes))

    @classmethod
    def decode(cls, stream: np.ndarray, fmt: MessageFormat) -> "SparseMessage":
        positions, values = [], []
        offset = 0
        for start, stop in Layout(fmt.segment_offsets).segments():
            count, offset, local = decode_positions(stream, offset, stop - start)
            segment_values, offset = read_floats(stream, offset, count, fmt.dtype)
            positions.append(local + start)
            values.append(segment_values)
        return cls(fmt.segment_offsets, np.concatenate(positions),
                   np.concatenate(values).astype(fmt.dtype))


def budgets(p: float, layout: Layout) -> np.ndarray:
    """k = ceil(p N) per segment."""
    return np.array([ceil_product(p, size) for size in layout.sizes], np.int64)


def rice_stretches(layout: Layout) -> list[float]:
    """Where the encoded bits of top-k and exact STC may fall as p grows (``Compressor.knob_stretches``): a
    segment's kept set grows with k = ceil(p N), each entry kept adding bits, except where its Golomb-Rice
    parameter falls from k - 1 to k (every position's code one bit shorter); each such k starts a stretch at
    the smallest p above (k - 1) / N at which any segment's k changes."""
    sizes, starts = layout.sizes, set()
    for size in set(sizes):
        parameters = analytic.rice_parameter_for_density(np.arange(1, size + 1) / size)
        near = {int(k) + shift for k in np.flatnonzero(np.diff(parameters) < 0) + 2 for shift in (-1, 0, 1)}
        for k in near:                    # the vectorized rule's falls, checked with the kernel's own
            if 2 <= k <= size and golomb.rice_parameter(k, size) < golomb.rice_parameter(k - 1, size):
                below = (k - 1) / size
                starts.add(min(top for n in sizes if n for top in (ceil_product(below, n) / n,
                                                                     (ceil_product(below, n) + 1) / n) if top > below))
    return sorted(starts)


def sparsify_rows(rows, layout: Layout, p: float, ternary: bool, samples=None):
    """Top-k (``ternary=False``) or STC on the rows, by :func:`fedsim.kernels.sparsify.sparse_compress_batch`:
    ``(decoded, kept entries per row and segment, encoded bits per row)``. ``samples`` is sampled STC's
    ``(positions, starts, budgets)``; the caller drew them, each within its segment, so the unchecked core
    skips the public kernel's pass over them (every other argument is built here too)."""
    n_rows = rows.shape[0]
    decoded = np.zeros_like(rows)
    counts = np.zeros((n_rows, layout.n_segments), np.int64)
    encoded = np.zeros(n_rows, np.int64)
    empty = np.zeros(0, np.int64)
    positions, starts, sample_budgets = (empty, np.zeros(1, np.int64), empty) if samples is None else samples
    kernel = sparsify.sparse_compress_batch if samples is None else sparsify.sparse_compress_batch.core
    kernel(rows, layout.offsets_array, budgets(p, layout), ternary=ternary, float_bits=float_bits(rows.dtype),
           sampled=samples is not None, sample_positions=positions, sample_starts=starts,
           sample_budgets=sample_budgets, sent_out=decoded, counts_out=counts, encoded_bits_out=encoded)
    return decoded, counts, encoded


@register
@dataclass(frozen=True)
class TopK(Compressor):
    """Top-k sparsification (module docstring). Message: :class:`SparseMessage`."""

    name: ClassVar[str] = "topk"
    error_feedback: ClassVar[bool] = True
    budget_knob: ClassVar[str] = "p"

    p: float = setting(0.01, "fraction of entries kept per segment", FRACTION)
    scope: str = scope_setting('"tensor": per parameter tensor (the reference); "global": whole vector')

    def _compress_rows(self, rows, layout, rng):
        decoded, counts, encoded = sparsify_rows(rows, layout, self.p, ternary=False)
        return decoded, encoded, analytic.top_k_analytic_bits(counts, layout.sizes), {}

    def theory(self, x, state):
        """The k/N contraction of Stich, Cordonnier, Jaggi (arXiv 1809.07599, definition 2.1 and the top-k
        example beside it), per segment: ||C(x_j) - x_j||^2 <= (1 - k_j / N_j) ||x_j||^2, summed over the
        segments and divided by ||x||^2. Biased."""
        layout = layout_of(state)
        kept = [1.0 - k / n if n else 0.0 for k, n in zip(budgets(self.p, layout), layout.sizes)]
        return Theory(False, relative_error(kept, x, layout), "<=",
                      "Stich et al. 2018 (1809.07599) def. 2.1: a k/d contraction")

    def knob_stretches(self, state):
        return rice_stretches(layout_of(state))

    def message(self, compressed, row):
        return SparseMessage.from_dense(compressed.decoded[row], compressed.layout.segment_offsets)
