"""Analytic message sizes: the STC paper's estimates (arXiv 1903.02891), beside the exact encoded sizes.

Every message reports two numbers: :meth:`encoded_bits` is the length of the real bit stream that
:meth:`encode` writes (counted without encoding by the same rules; headers included), and
:meth:`analytic_bits` is the paper's estimate below (no headers; 32 bits for every float, whatever the dtype)::

    dense          32 N
    sign           N                       (+ 32 per segment if a scale is sent)
    top-k          sum over segments of  c (E(q') + 32)
    STC            sum over segments of  c (E(q') + 1) + 32 [c > 0]       (1 sign bit per entry, 32 for mu)

with ``c`` the number of kept entries of a segment of ``N`` entries, density ``q' = c / N``, and the expected
Golomb-Rice bits per position at the paper's parameter b* for q' (:mod:`fedsim.kernels.golomb`)::

    E(q') = b* + 1 / (1 - (1 - q')^(2^b*))

Check values (bits per kept entry with the sign bit, E(p) + 1): p = 1/25: 7.085, 1/100: 9.108,
1/400: 11.114.
"""

from __future__ import annotations

import numpy as np

from fedsim.kernels import golomb

# Bits of every transmitted float (values, mu, scales, R) in the estimates and in the lazy family's
# counts, whatever dtype the simulation runs in: the one definition of the float width.
FLOAT_BITS = 32


def rice_parameter_for_density(density):
    """b* = max(0, min(62, 1 + floor(log2(ln(phi - 1) / ln(1 - q'))))) for a density q' in [0, 1] (array or
    scalar; :mod:`fedsim.kernels.golomb`'s rule, vectorized); 0 where q' = 0. ``ln(1 - q')`` as ``log1p(-q')``."""
    density = np.asarray(density, dtype=np.float64)
    if np.any((density < 0) | (density > 1)):
        raise ValueError(f"density must be in [0, 1], got {density}")
    with np.errstate(divide="ignore"):
        ratio = golomb.LOG_GOLDEN_CONJUGATE / np.log1p(-density)      # 0 at q' = 1, +-inf at q' = 0
        exponent = np.floor(np.log2(np.where((ratio >= 1) & np.isfinite(ratio), ratio, 1.0)))
    parameter = np.where(ratio >= 1, np.minimum(1 + exponent, golomb.MAX_RICE_PARAMETER), 0)
    return np.where(density > 0, parameter, 0).astype(np.int64)


def expected_position_bits(density):
    """E(q') = b* + 1 / (1 - (1 - q')^(2^b*)), the expected Golomb-Rice bits per kept position; 0 at q' = 0.
    ``(1 - q')^(2^b)`` is computed as ``exp(2^b log1p(-q'))`` and ``1 - that`` as ``-expm1(...)``."""
    density = np.asarray(density, dtype=np.float64)
    parameter = rice_parameter_for_density(density)
    with np.errstate(divide="ignore", invalid="ignore"):
        miss_all = -np.expm1(np.exp2(parameter) * np.log1p(-density))   # 1 - (1 - q')^(2^b)
        bits = parameter + 1.0 / miss_all
    return np.where(density > 0, bits, 0.0)


def stc_bits_per_entry(p):
    """Analytic bits per kept STC entry: E(p) + 1 sign bit (the module docstring's check values)."""
    return expected_position_bits(p) + 1.0


def dense_analytic_bits(size):
    """32 N."""
    return float(FLOAT_BITS * size)


def sign_analytic_bits(size, n_scales=0):
    """N sign bits, plus 32 per transmitted scale."""
    return float(size + FLOAT_BITS * n_scales)


def sparse_analytic_bits(counts, sizes, bits_per_entry, trailer_bits):
    """Sum over segments of ``c (E(c / N) + bits_per_entry) + trailer_bits [c > 0]``.

    ``counts`` (..., S): kept entries per segment, a row per message; ``sizes`` (S,): the lengths N;
    ``bits_per_entry``: 32 for top-k values, 1 for STC signs; ``trailer_bits``: 32 for STC's mu, 0 for
    top-k. Summed over segments in order (for one message and a batch alike: they agree bitwise).
    """
    counts = np.asarray(counts, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    total = np.zeros(counts.shape[:-1], dtype=np.float64)
    for segment, size in enumerate(sizes):
        count = counts[..., segment]
        density = count / size if size > 0 else np.zeros_like(count, dtype=np.float64)
        total = total + (count * (expected_position_bits(density) + bits_per_entry)
                         + np.where(count > 0, trailer_bits, 0.0))
    return total


def top_k_analytic_bits(counts, sizes):
    """Top-k: position code + 32 bits per kept value."""
    return sparse_analytic_bits(counts, sizes, FLOAT_BITS, 0.0)


def stc_analytic_bits(counts, sizes):
    """STC: position code + 1 sign bit per kept entry + 32 bits for mu (per nonempty segment)."""
    return sparse_analytic_bits(counts, sizes, 1.0, FLOAT_BITS)


def sparse_vector_bits(positions: np.ndarray, size: int, value_bits: int = FLOAT_BITS) -> int:
    """Encoded bits of a sparse vector sent as positions + ``value_bits``-bit values: top-k's message
    (:mod:`fedsim.compress.topk`) of one segment. The federated family's catch-up uses it."""
    return int(golomb.sparse_segment_bits(np.asarray(positions, np.int64), size, value_bits, 0))


def dense_bits(size: int, value_bits: int = FLOAT_BITS) -> int:
    """Encoded bits of a dense vector of ``value_bits``-bit floats (a full model, a GD or LAG upload): 32 N
    by default."""
    return int(value_bits) * int(size)


def quantized_bits(size: int, bits: int) -> int:
    """A LAQ / QGD upload: b bits per entry and the radius R as one float, ``b N + 32`` (the LAQ
    reference counted ``b N``, forgetting R)."""
    return int(bits) * int(size) + FLOAT_BITS
