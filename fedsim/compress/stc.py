"""Sparse Ternary Compression (Sattler, Wiedemann, Mueller, Samek, arXiv 1903.02891).

Per segment of N entries: k = ceil(p N), and the message is ``mu * sign(x_i)`` on the kept set K(x, k),
0 elsewhere (K and mu: :mod:`fedsim.kernels.selection`; :func:`fedsim.kernels.ternary._ternarize`).

With ``threshold="sampled"`` the threshold and mu are estimated from a sample of
``n_s = min(max(ceil(N f), ceil(100 / p)), N)`` entries with ``k_s = ceil(n_s p)`` (what is sent, and the
exact fallback: :func:`fedsim.kernels.ternary._sampled_ternarize`). The sample is drawn from the Generator
passed to ``compress``: ``"uniform"`` (the default, a uniform subset without replacement: an unbiased
estimate of the quantile) or ``"window"`` (the reference's contiguous window at a uniform random offset,
biased when magnitudes vary along the tensor).

Wire format (``ternary``), per segment: count c (32 bits); Golomb-Rice code of the c positions (as top-k);
c sign bits (1 = negative); mu (only if c > 0). Paper's estimate: :mod:`fedsim.compress.bits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedsim.compress import bits as analytic
from fedsim.compress.base import (FRACTION, ceil_product, Compressor, decode_positions, float_bits, frozen_array,
                                  Layout, layout_of, MessageFormat, PositionsMessage, read_floats, register,
                                  register_message, require_generator, scope_setting, write_floats)
from fedsim.compress.theory import Theory
from fedsim.constraints import OneOf, setting
from fedsim.compress.topk import rice_stretches, sparsify_rows
from fedsim.kernels import bitstream, golomb

# The sampled threshold keeps at least this many expected entries in its sample: n_s >= ceil(100 / p).
MIN_SAMPLED_ENTRIES = 100


@register_message
@dataclass(frozen=True, eq=False)
class TernaryMessage(PositionsMessage):
    """Kept positions, their signs, and one mean magnitude mu per segment."""

    kind: ClassVar[str] = "ternary"
    signs: np.ndarray   # (c,) int8, +1 or -1
    mu: np.ndarray      # (segments,) float32/float64; 0 for an empty segment

    def __post_init__(self):
        self._check_positions()
        self._set(signs=frozen_array(self.signs, np.int8), mu=frozen_array(self.mu))
        if self.signs.size != self.positions.size:
            raise ValueError(f"{self.positions.size} positions but {self.signs.size} signs")
        if np.any(np.abs(self.signs) != 1):
            raise ValueError("ternary signs must be +1 or -1")
        if self.mu.size != len(self.segment_offsets) - 1:
            raise ValueError(f"one mu per segment: {len(self.segment_offsets) - 1} segments, "
                             f"{self.mu.size} mu")

    @classmethod
    def from_dense(cls, dense: np.ndarray, segment_offsets) -> "TernaryMessage":
        """The message whose :meth:`to_dense` is ``dense`` (values +-mu_j in segment j, or 0)."""
        dense = np.asarray(dense)
        positions = np.flatnonzero(dense)
        mu = np.zeros(len(segment_offsets) - 1, dense.dtype)
        first = np.searchsorted(positions, np.asarray(segment_offsets[:-1], np.int64))
        for j, start in enumerate(first):
            if start < positions.size and positions[start] < segment_offsets[j + 1]:
                mu[j] = abs(dense[positions[start]])
        return cls(tuple(segment_offsets), positions, np.sign(dense[positions]).astype(np.int8), mu)

    @property
    def format(self) -> MessageFormat:
        return MessageFormat(self.kind, self.segment_offsets, self.mu.dtype.name)

    def to_dense(self) -> np.ndarray:
        dense = np.zeros(self.size, self.mu.dtype)
        dense[self.positions] = self.signs * np.repeat(self.mu, self.counts)
        return dense

    def symbols(self) -> np.ndarray:
        """Ternary: the sign at a kept position, 0 elsewhere (mu aside)."""
        dense = np.zeros(self.size, np.int8)
        dense[self.positions] = self.signs
        return dense

    def encoded_bits(self) -> int:
        mu_bits = float_bits(self.mu.dtype)
        return int(sum(golomb.sparse_segment_bits(local, size, 1, mu_bits)
                       for local, size in zip(self.local_positions(), self.layout.sizes)))

    def _write_segment(self, stream, offset, j, start, count):
        """Segment j after its positions: its signs, then its mu (if it keeps any entry)."""
        offset = bitstream.pack_signs_into(self.signs[start:start + count], stream, offset)
        if count:
            offset = write_floats(stream, offset, self.mu[j:j + 1])
        return offset

    def analytic_bits(self) -> float:
        return float(analytic.stc_analytic_bits(self.counts, self.layout.sizes))

    @classmethod
    def decode(cls, stream: np.ndarray, fmt: MessageFormat) -> "TernaryMessage":
        layout = Layout(fmt.segment_offsets)
        positions, signs = [], []
        mu = np.zeros(layout.n_segments, fmt.dtype)
        offset = 0
        for j, (start, stop) in enumerate(layout.segments()):
            count, offset, local = decode_positions(stream, offset, stop - start)
            segment_signs = np.empty(count, np.int8)
            offset = bitstream.unpack_signs_from(np.asarray(stream, np.uint8), offset, count, segment_signs)
            if count:
                value, offset = read_floats(stream, offset, 1, fmt.dtype)
                mu[j] = value[0]
            positions.append(local + start)
            signs.append(segment_signs)
        return cls(fmt.segment_offsets, np.concatenate(positions), np.concatenate(signs), mu)


@register
@dataclass(frozen=True)
class STC(Compressor):
    """Sparse ternary compression (module docstring). Message: :class:`TernaryMessage`."""

    name: ClassVar[str] = "stc"
    error_feedback: ClassVar[bool] = True
    budget_knob: ClassVar[str] = "p"

    p: float = setting(0.01, "fraction of entries kept per segment", FRACTION)
    threshold: str = setting("exact", "exact | sampled (the reference's approximate top-k threshold)",
                             OneOf("exact", "sampled"))
    sample_fraction: float = setting(0.1, "sampled threshold: fraction f of each segment sampled", FRACTION)
    sample_mode: str = setting("uniform", "sampled threshold: uniform subset | window (the reference's)",
                               OneOf("uniform", "window"))
    scope: str = scope_setting('"tensor": per parameter tensor (the reference); "global": whole vector')

    def sample_sizes(self, state: Layout) -> np.ndarray:
        """n_s = min(max(ceil(N f), ceil(100 / p)), N) per segment."""
        floor_size = ceil_product(MIN_SAMPLED_ENTRIES / self.p, 1)
        return np.array([min(max(ceil_product(self.sample_fraction, size), floor_size), size)
                         for size in layout_of(state).sizes], np.int64)

    def sample_budgets(self, state: Layout) -> np.ndarray:
        """k_s = ceil(n_s p) per segment."""
        return np.array([ceil_product(self.p, n) for n in self.sample_sizes(state)], np.int64)

    def draw_sample(self, size: int, sample_size: int, rng: np.random.Generator) -> np.ndarray:
        """Sample positions within a segment of ``size`` entries (int64; nothing drawn if empty)."""
        if sample_size == 0:
            return np.zeros(0, np.int64)
        if self.sample_mode == "uniform":
            return rng.choice(size, size=sample_size, replace=False, shuffle=False).astype(np.int64)
        offset = int(rng.integers(0, size - sample_size + 1))
        return np.arange(offset, offset + sample_size, dtype=np.int64)

    def _compress_rows(self, rows, layout, rng):
        samples = None
        if self.threshold == "sampled":
            require_generator(rng, "STC with threshold='sampled'")
            sample_sizes = self.sample_sizes(layout)
            # drawn row by row, segment by segment: row r consumes what it would alone
            drawn = [self.draw_sample(stop - start, sample_sizes[j], rng)
                     for _ in range(rows.shape[0]) for j, (start, stop) in enumerate(layout.segments())]
            starts = np.concatenate(([0], np.cumsum([s.size for s in drawn]))).astype(np.int64)
            samples = (np.concatenate(drawn).astype(np.int64), starts, self.sample_budgets(layout))
        decoded, counts, encoded = sparsify_rows(rows, layout, self.p, ternary=True, samples=samples)
        return decoded, encoded, analytic.stc_analytic_bits(counts, layout.sizes), {}

    def theory(self, x, state):
        """Sattler et al. (arXiv 1903.02891) state no bound on the error of STC: measured only. Biased."""
        return Theory(False, None, "<=", "Sattler et al. 2019 (1903.02891): no bound stated, measured only")

    def knob_stretches(self, state):
        """As top-k's with the exact threshold; None with the sampled one (each p draws a sample of its own)."""
        return rice_stretches(layout_of(state)) if self.threshold == "exact" else None

    def message(self, compressed, row):
        return TernaryMessage.from_dense(compressed.decoded[row], compressed.layout.segment_offsets)
