"""Random-k sparsification (Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory", arXiv 1809.07599;
Wangni, Wang, Liu, Zhang, "Gradient Sparsification for Communication-Efficient Distributed
Optimization", arXiv 1710.09854): k entries chosen uniformly at random, their values sent.

Per segment of N entries, k = ceil(p N) positions ``i_1, ..., i_k`` are drawn uniformly without
replacement, and the receiver reconstructs::

    unbiased:  decoded_i = dtype(N / k) * x_i    at the k positions, 0 elsewhere    (E[decoded] = x)
    none:      decoded_i = x_i                   at the k positions, 0 elsewhere    (E[decoded] = (k / N) x)

``dtype(N / k)`` is N / k in float64 rounded once to the data's dtype, and ``*`` is one multiply in that
dtype (so E[decoded] = x up to that one rounding, a relative 2^-24 in float32). The unscaled form is the
one used with error feedback (Stich et al.'s memory: ``federated.accumulate_up = true``); the unbiased
form is Wangni et al.'s unbiased sparsifier with uniform probabilities, meant without residuals.

Shared randomness: the positions cost no bits. For each row (each sender) the compressor draws one
64-bit seed from the Generator passed to ``compress`` (one ``integers`` draw per row, in row order); the
positions of segment j are a pure function of (seed, j, N, k) that sender and receiver both compute:
SplitMix64 streams and Floyd's algorithm, defined bit for bit in :mod:`fedsim.kernels.randomk`. The
Generator is used for the seeds only.

Wire format (``randomk``): the seed (64 bits, as an unsigned integer, most significant bit first); then,
segment after segment, the k values ``x_i`` (unscaled, as floats) in increasing position order. No count
is sent: k follows from p and N (p and the scaling are the format's options).

Bits: encoded = 64 + sum over segments of k * float bits; the paper's estimate (analytic) = 32 k per
segment, without the seed (it counts no headers). The seed is counted because the receiver reads it from
the stream: fedsim draws it from the run's shared compression stream, whose state at a given row depends on
every earlier draw of the run, so a receiver holding only the message could not know it. A deployment
deriving each sender's seed from state both sides share (the run's seed, the round, the client's id)
could leave it out and save these 64 bits per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedsim.compress import bits as analytic
from fedsim.compress.base import (layout_of, FRACTION, Compressor, float_bits, float_dtype, frozen_array, Layout,
                                  MessageFormat, read_floats, register, register_message, require_generator,
                                  scope_setting, SegmentedMessage, write_floats)
from fedsim.compress.theory import Theory, relative_error
from fedsim.constraints import Integer, OneOf, setting
from fedsim.compress.topk import budgets
from fedsim.kernels import bitstream
from fedsim.kernels import randomk as kernels

# Bits of the per-message seed (an unsigned 64-bit integer).
SEED_BITS = 64
SEED_MAX = (1 << SEED_BITS) - 1
SEED = Integer(0, SEED_MAX)
SCALING = OneOf("unbiased", "none")


def segment_scales(p: float, scaling: str, layout: Layout, dtype) -> np.ndarray:
    """The factor of each segment's sent values, in ``dtype``: dtype(N / k) for ``scaling="unbiased"``
    (N / k in float64, rounded once; 0 for an empty segment, where it is never used) or 1 for
    ``scaling="none"`` (multiplying a finite value by 1 is exact, so the values are sent as they are)."""
    dtype = float_dtype(dtype)
    if scaling == "none":
        return np.ones(layout.n_segments, dtype)
    ratios = [size / k if k else 0.0 for size, k in zip(layout.sizes, budgets(p, layout).tolist())]
    return np.array(ratios, np.float64).astype(dtype)


def check_segments(layout: Layout) -> None:
    if layout.n_segments and max(layout.sizes) > kernels.MAX_SEGMENT:
        raise ValueError(f"random-k needs segments of at most 2^32 entries, got {max(layout.sizes)}")


def chosen_positions(seed: int, layout: Layout, ks) -> np.ndarray:
    """The global positions ``seed`` chooses (int64), segment after segment, each segment's in Floyd's order."""
    parts = [np.zeros(0, np.int64)]
    for j, (start, size, k) in enumerate(zip(layout.segment_offsets, layout.sizes, ks)):
        local = np.empty(int(k), np.int64)
        kernels.random_positions(np.uint64(seed), j, size, int(k), local)
        parts.append(local + start)
    return np.concatenate(parts)


@register_message
@dataclass(frozen=True, eq=False)
class RandomKMessage(SegmentedMessage):
    """A seed and the values at the positions it determines (module docstring)."""

    kind: ClassVar[str] = "randomk"
    p: float                           # the sparsity: k = ceil(p N) per segment
    seed: int                          # 64-bit seed of the positions, in [0, 2^64)
    values: np.ndarray                 # (sum of k,) the unscaled x_i, segment by segment, positions ascending
    scaling: str = "unbiased"          # unbiased (receiver multiplies by dtype(N / k)) | none

    def __post_init__(self):
        layout = Layout(self.segment_offsets)
        self._set(segment_offsets=layout.segment_offsets, p=FRACTION.check("p", self.p),
                  seed=SEED.check("seed", self.seed))
        SCALING.check("scaling", self.scaling)
        self._set(values=frozen_array(self.values))
        check_segments(layout)
        expected = int(self.budgets.sum())
        if self.values.size != expected:
            raise ValueError(f"random-k with p={self.p} on segments {layout.sizes} sends {expected} "
                             f"values, got {self.values.size}")

    @property
    def budgets(self) -> np.ndarray:
        """k = ceil(p N) per segment."""
        return budgets(self.p, self.layout)

    @property
    def positions(self) -> np.ndarray:
        """The global positions of the values (int64, increasing), rebuilt from the seed."""
        return np.sort(chosen_positions(self.seed, self.layout, self.budgets))

    @property
    def format(self) -> MessageFormat:
        return MessageFormat(self.kind, self.segment_offsets, self.values.dtype.name,
                             options=(("p", self.p), ("scaling", self.scaling)))

    def to_dense(self) -> np.ndarray:
        """decoded_i = values * scale of the segment at the positions (one multiply in the dtype)."""
        dense = np.zeros(self.size, self.values.dtype)
        scales = segment_scales(self.p, self.scaling, self.layout, self.values.dtype)
        positions = self.positions
        with np.errstate(over="ignore"):        # |x_i| > max / (N / k) gives inf, as the kernel does
            dense[positions] = self.values * np.repeat(scales, self.budgets)
        return dense

    def symbols(self) -> np.ndarray:
        """The values it sends, unscaled (their positions come from the seed)."""
        return self.values

    def encoded_bits(self) -> int:
        return SEED_BITS + float_bits(self.values.dtype) * self.values.size

    def _write(self, stream):
        seed = np.array([self.seed], np.uint64).view(np.int64)       # write_uint takes the int64 pattern
        offset = bitstream.write_uints(stream, 0, seed, SEED_BITS)
        return write_floats(stream, offset, self.values)

    def analytic_bits(self) -> float:
        return float(analytic.FLOAT_BITS * self.values.size)

    @classmethod
    def decode(cls, stream: np.ndarray, fmt: MessageFormat) -> "RandomKMessage":
        options = dict(fmt.options)
        if set(options) != {"p", "scaling"}:
            raise ValueError(f"a randomk format needs the options p and scaling, got {fmt.options}")
        p = FRACTION.check("p", options["p"])
        count = int(budgets(p, Layout(fmt.segment_offsets)).sum())
        stream = np.asarray(stream, np.uint8)
        if stream.size * 8 < SEED_BITS + count * float_bits(fmt.dtype):
            raise ValueError(f"randomk stream has {stream.size} bytes, too few for a seed and {count} "
                             f"{fmt.dtype} values")
        seed = np.zeros(1, np.int64)
        offset = bitstream.read_uints(stream, 0, SEED_BITS, seed)
        values, _ = read_floats(stream, offset, count, fmt.dtype)
        return cls(fmt.segment_offsets, p, int(seed.view(np.uint64)[0]), values, options["scaling"])


@register
@dataclass(frozen=True)
class RandomK(Compressor):
    """Random-k sparsification (module docstring). Message: :class:`RandomKMessage`."""

    name: ClassVar[str] = "randomk"
    budget_knob: ClassVar[str] = "p"

    p: float = setting(0.01, "fraction of entries kept per segment", FRACTION)
    scaling: str = setting("unbiased", "unbiased (N / k x_i, E[decoded] = x) | none (x_i as is, for error "
                           "feedback)", SCALING)
    scope: str = scope_setting('"tensor": per parameter tensor; "global": whole vector')

    def _compress_rows(self, rows, layout, rng):
        check_segments(layout)
        require_generator(rng, "random-k, for the seeds of its positions,")
        n_rows = rows.shape[0]
        ks = budgets(self.p, layout)
        # one uniform 64-bit seed per row, each one 64-bit output of the Generator: K at once = K draws of one
        seeds = rng.integers(0, SEED_MAX, size=n_rows, dtype=np.uint64, endpoint=True)
        decoded = np.empty_like(rows)
        values = np.empty((n_rows, int(ks.sum())), rows.dtype)
        scales = segment_scales(self.p, self.scaling, layout, rows.dtype)
        kernels.randomk_compress_batch(rows, layout.offsets_array, ks, scales, seeds, decoded, values)
        encoded = np.full(n_rows, SEED_BITS + float_bits(rows.dtype) * int(ks.sum()), np.int64)
        estimated = np.full(n_rows, float(analytic.FLOAT_BITS * int(ks.sum())), np.float64)
        return decoded, encoded, estimated, {"seeds": seeds, "values": values}

    def theory(self, x, state):
        """Exact, per segment of N_j entries with k_j kept and summed over the segments, over ||x||^2::

            unbiased (N / k scaling):  E||C(x_j) - x_j||^2 = (N_j / k_j - 1) ||x_j||^2, E[C(x)] = x
            none:                      E||C(x_j) - x_j||^2 = (1 - k_j / N_j) ||x_j||^2   (a k/N contraction)

        (each entry is kept with probability k / N: Wangni et al., arXiv 1710.09854; Stich et al., arXiv
        1809.07599, definition 2.1)."""
        layout = layout_of(state)
        ks = budgets(self.p, layout)
        if self.scaling == "unbiased":
            factors = [n / k - 1.0 if k else 0.0 for k, n in zip(ks, layout.sizes)]
            source = "Wangni et al. 2017 (1710.09854): unbiased, variance d/k - 1"
        else:
            factors = [1.0 - k / n if n else 0.0 for k, n in zip(ks, layout.sizes)]
            source = "Stich et al. 2018 (1809.07599) def. 2.1: a k/d contraction"
        return Theory(self.scaling == "unbiased", relative_error(factors, x, layout), "=", source)

    def message(self, compressed, row):
        layout = compressed.layout
        seed = int(compressed.fields["seeds"][row])
        in_position_order = np.argsort(chosen_positions(seed, layout, budgets(self.p, layout)), kind="stable")
        return RandomKMessage(layout.segment_offsets, self.p, seed, compressed.fields["values"][row][in_position_order],
                              self.scaling)
