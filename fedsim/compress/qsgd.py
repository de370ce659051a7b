"""QSGD: stochastic quantization to s levels (Alistarh, Grubic, Li, Tomioka, Vojnovic, NeurIPS 2017,
arXiv 1610.02132).

Each segment (one parameter tensor with ``scope="tensor"``, the whole vector with ``scope="global"``) is
cut into buckets of ``bucket_size = d`` consecutive entries (the paper's practical variant; the last bucket
of a segment may be shorter), or is one bucket when d = 0 (the paper's basic scheme). Entry i of a bucket
v of n entries becomes ``Q(v)_i = ||v||_2 sign(v_i) level_i / s`` (s = ``levels``), its level
``|v_i| s / ||v||_2`` rounded up with probability its fractional part (one uniform u_i in [0, 1) per entry);
the equations bit for bit (the order of the operations, the roundings, the zero bucket) are those of
:mod:`fedsim.kernels.qsgd`. QSGD is unbiased, E[Q(v)_i] = v_i, so it needs no error feedback; its variance
is at most min(n / s^2, sqrt(n) / s) ||v||^2 per bucket (the paper's lemma 3.1, section 3).

Randomness: P uniforms per row (``rng.random``, float64), :func:`fedsim.compress.base.uniform_chunks`.

Defaults: s = 16 and d = 512, the regime of the paper's bucketed practical variant: a variance bound of
min(512 / 256, sqrt(512) / 16) = 1.41 ||v||^2 per bucket (measured on a normal vector: 0.33 ||v||^2) for
about 2.4 bits per entry of a normal update (13 times fewer than 32-bit floats). The basic scheme (d = 0)
over the STC seed model's whole 10,240-entry weight tensor at s = 16 would have a bound of 6.3 ||v||^2.

Wire format (``qsgd``), bucket after bucket in order: the paper's Code_s with the Elias omega code (a
bucket whose norm is 0 sends its norm only) and an end marker of fedsim's (the paper does not say how a
decoder finds the end of a bucket); the kernels of :mod:`fedsim.kernels.qsgd` write, read and count it,
and its docstring gives it bit by bit with the bits of a bucket. d and s are the format's options.

Analytic bits: the paper's bound on the expected code length (its coding theorem in section 3, for s
levels and n entries), per bucket with the o(1) term dropped and logarithms to base 2::

    (3 + 3/2 log2( 2 (s^2 + n) / (s (s + sqrt n)) )) s (s + sqrt n) + 32

summed over the buckets (32 bits for the norm whatever the dtype, as every analytic count in
:mod:`fedsim.compress.bits`). It bounds the expected number of nonzeros by s (s + sqrt n) (lemma 3.1)
and does not take the minimum with n, so it is loose for s near sqrt n or above: at s = sqrt n it is
9 n + 32, where the paper also quotes about 2.8 n + 32 bits from a finer analysis of that case (not used
here). Measured on a float32 normal vector of 1e6 entries: s = 1000 (= sqrt n), one bucket: 2.76 n
encoded bits against the bound 9 n; s = 16, buckets of 512: 2.39 n against 6.06 n (32 n for floats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedsim.compress import bits as analytic
from fedsim.compress.base import (BIT_PATTERN, Compressor, float_bits, frozen_array, Layout, layout_of, MessageFormat,
                                  register, register_message, require_generator, scope_setting, SegmentedMessage,
                                  uniform_chunks)
from fedsim.compress.theory import Theory, relative_error
from fedsim.constraints import Integer, setting
from fedsim.kernels import qsgd as kernels

LEVELS = Integer(1, 2 ** 31 - 1)       # s, the number of levels (at most 2^31 - 1: the signed levels are int32)
BUCKET_SIZE = Integer(low=0)           # d, entries per bucket (0: one bucket per segment)


def level_dtype(levels: int) -> np.dtype:
    """The integer type of the signed levels in a batch's fields: int16 for s <= 32767, else int32."""
    return np.dtype(np.int16) if levels <= np.iinfo(np.int16).max else np.dtype(np.int32)


def bucket_bound_bits(levels: int, size: int) -> float:
    """The paper's bound for one bucket of ``size`` entries at s = ``levels`` (module docstring); 0 for
    an empty bucket."""
    if size == 0:
        return 0.0
    s, n = float(levels), float(size)
    nonzeros = s * (s + math.sqrt(n))
    return (3.0 + 1.5 * math.log2(2.0 * (s * s + n) / nonzeros)) * nonzeros + analytic.FLOAT_BITS


def qsgd_analytic_bits(levels: int, bucket_sizes) -> float:
    """Sum of :func:`bucket_bound_bits` over the buckets (by distinct size, in increasing size)."""
    sizes, counts = np.unique(np.asarray(bucket_sizes, np.int64), return_counts=True)
    total = 0.0
    for size, count in zip(sizes, counts):
        total += int(count) * bucket_bound_bits(levels, int(size))
    return total


@register_message
@dataclass(frozen=True, eq=False)
class QSGDMessage(SegmentedMessage):
    """One norm per bucket and a signed level in {-s, ..., s} per entry."""

    kind: ClassVar[str] = "qsgd"
    levels: int                        # s, the number of levels
    bucket_size: int                   # d: entries per bucket (0: one bucket per segment)
    norms: np.ndarray                  # (B,) float32/float64, >= 0: each bucket's norm
    signed_levels: np.ndarray          # (N,) int32, sign(v_i) level_i; all 0 in a bucket whose norm is 0

    def __post_init__(self):
        self._set(segment_offsets=Layout(self.segment_offsets).segment_offsets,
                  levels=LEVELS.check("levels", self.levels),
                  bucket_size=BUCKET_SIZE.check("bucket_size", self.bucket_size),
                  norms=frozen_array(self.norms), signed_levels=frozen_array(self.signed_levels, np.int32))
        offsets = self.bucket_offsets
        if self.signed_levels.size != self.size:
            raise ValueError(f"{self.signed_levels.size} levels for a vector of {self.size}")
        if self.norms.size != offsets.size - 1:
            raise ValueError(f"one norm per bucket: {offsets.size - 1} buckets, {self.norms.size} norms")
        if not np.all(np.isfinite(self.norms)) or np.any(np.signbit(self.norms)):
            raise ValueError(f"norms must be finite and >= +0.0, got {self.norms}")
        if np.any(np.abs(self.signed_levels.astype(np.int64)) > self.levels):
            raise ValueError(f"levels must lie in [-{self.levels}, {self.levels}]")
        zero_buckets = np.repeat(self.norms == 0, np.diff(offsets))
        if np.any(self.signed_levels[zero_buckets]):
            raise ValueError("a bucket whose norm is 0 has nonzero levels")

    @property
    def bucket_offsets(self) -> np.ndarray:
        return kernels.bucket_offsets(self.segment_offsets, self.bucket_size)

    @property
    def format(self) -> MessageFormat:
        return MessageFormat(self.kind, self.segment_offsets, self.norms.dtype.name,
                             options=(("levels", self.levels), ("bucket_size", self.bucket_size)))

    def to_dense(self) -> np.ndarray:
        """norm sign(v_i) level_i / s per entry, computed as ``dtype(float64(norm) * (|level| / s))``
        with its sign (+0.0 for level 0), the kernel's arithmetic."""
        per_entry = np.repeat(self.norms.astype(np.float64), np.diff(self.bucket_offsets))
        magnitudes = (per_entry * (np.abs(self.signed_levels).astype(np.float64) / self.levels))
        magnitudes = magnitudes.astype(self.norms.dtype)
        return np.where(self.signed_levels < 0, -magnitudes, magnitudes)

    def symbols(self) -> np.ndarray:
        """The signed levels (the norms aside)."""
        return self.signed_levels

    # The message built and validated its arrays itself (__post_init__): it calls the kernels' unchecked
    # cores. decode reads a stream from outside and calls the checked kernel.
    def encoded_bits(self) -> int:
        return int(kernels.qsgd_bits.core(self.signed_levels, self.bucket_offsets, self.norms,
                                          float_bits(self.norms.dtype)))

    def _write(self, stream):
        patterns = self.norms.view(BIT_PATTERN[self.norms.dtype]).astype(np.int64)     # what the writer takes
        return kernels.qsgd_encode_into.core(self.signed_levels, self.bucket_offsets, patterns,
                                             float_bits(self.norms.dtype), stream, 0)

    def analytic_bits(self) -> float:
        return qsgd_analytic_bits(self.levels, np.diff(self.bucket_offsets))

    @classmethod
    def decode(cls, stream: np.ndarray, fmt: MessageFormat) -> QSGDMessage:
        options = dict(fmt.options)
        if set(options) != {"levels", "bucket_size"}:
            raise ValueError(f"a qsgd format needs the options levels and bucket_size, got {fmt.options}")
        stream = np.ascontiguousarray(stream, np.uint8)
        offsets = kernels.bucket_offsets(fmt.segment_offsets, options["bucket_size"])
        patterns = np.zeros(offsets.size - 1, np.int64)
        levels = np.zeros(offsets[-1], np.int64)
        end = kernels.qsgd_decode_from(stream, 0, stream.size * 8, offsets, float_bits(fmt.dtype), patterns,
                                       levels)
        if (end + 7) // 8 != stream.size:
            raise ValueError(f"qsgd stream has {stream.size} bytes, its code ends at bit {end}")
        if np.any(np.abs(levels) > options["levels"]):
            raise ValueError(f"corrupt qsgd stream: a level beyond s = {options['levels']}")
        dtype = np.dtype(fmt.dtype)
        return cls(fmt.segment_offsets, options["levels"], options["bucket_size"],
                   patterns.astype(BIT_PATTERN[dtype]).view(dtype), levels)


@register
@dataclass(frozen=True)
class QSGD(Compressor):
    """Stochastic quantization to s levels per bucket (module docstring). Message: :class:`QSGDMessage`."""

    name: ClassVar[str] = "qsgd"     # unbiased: no residuals by default (Compressor.error_feedback)
    budget_knob: ClassVar[str] = "levels"

    levels: int = setting(16, "s: magnitudes are sent as multiples 0, 1/s, ..., 1 of their bucket's norm",
                          LEVELS)
    bucket_size: int = setting(512, "d: entries per bucket, each with its own norm; 0 = one bucket per segment",
                               BUCKET_SIZE)
    scope: str = scope_setting('"tensor": buckets within each parameter tensor; "global": over the whole vector')

    def bucket_offsets(self, state) -> np.ndarray:
        """Boundaries of the buckets of the state's layout (int64, from 0 to P)."""
        return kernels.bucket_offsets(layout_of(state).segment_offsets, self.bucket_size)

    def _compress_rows(self, rows, layout, rng):
        require_generator(rng, "QSGD, for its stochastic rounding,")
        n_rows, size = rows.shape
        offsets = self.bucket_offsets(layout)
        decoded = np.empty_like(rows)
        norms = np.empty((n_rows, offsets.size - 1), rows.dtype)
        signed_levels = np.empty((n_rows, size), level_dtype(self.levels))
        encoded = np.zeros(n_rows, np.int64)
        # every argument is built here (rows: contiguous (K, P) float from as_rows): the unchecked core
        for first, last, uniforms in uniform_chunks(n_rows, size, rng):
            kernels.qsgd_quantize.core(rows[first:last], offsets, self.levels, uniforms,
                                       float_bits(rows.dtype), decoded[first:last], norms[first:last],
                                       signed_levels[first:last], encoded[first:last])
        estimated = np.full(n_rows, qsgd_analytic_bits(self.levels, np.diff(offsets)), np.float64)
        return decoded, encoded, estimated, {"norms": norms, "signed_levels": signed_levels}

    def theory(self, x, state):
        """Unbiased, and lemma 3.1's variance bound per bucket (module docstring; fedsim normalizes by
        ||v||_2, as the lemma does), summed over the buckets and divided by ||x||^2."""
        offsets = self.bucket_offsets(state)
        sizes, s = np.diff(offsets).astype(np.float64), float(self.levels)
        factors = np.minimum(sizes / s ** 2, np.sqrt(sizes) / s)
        return Theory(True, relative_error(factors, x, Layout(tuple(int(o) for o in offsets))), "<=",
                      "Alistarh et al. 2017 (1610.02132) lemma 3.1: min(d/s^2, sqrt(d)/s)")

    def message(self, compressed, row):
        return QSGDMessage(compressed.layout.segment_offsets, self.levels, self.bucket_size,
                           compressed.fields["norms"][row], compressed.fields["signed_levels"][row])
