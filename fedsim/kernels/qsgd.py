"""Kernels of QSGD (Alistarh, Grubic, Li, Tomioka, Vojnovic, arXiv 1610.02132): stochastic quantization
of buckets to s levels, and the Elias omega code of the quantized buckets.

Buckets
-------
A row of P entries is cut into segments (one per parameter tensor, or one for the whole vector), and each
segment into buckets: with a bucket size ``d > 0`` a segment of N entries has buckets of d consecutive
entries, the last one holding the remaining ``N - d floor((N - 1) / d)``; with ``d = 0`` the segment is
one bucket (the paper's basic scheme). Empty segments have no bucket. :func:`bucket_offsets` lists the
boundaries: bucket b is ``[offsets[b], offsets[b + 1])``, and the buckets tile ``[0, P)`` in order.

Quantization
------------
For a bucket v of n entries (dtype float32 or float64), s >= 1 levels and n uniforms u_i in [0, 1)
(float64, drawn by the caller), bit for bit::

    norm    = dtype(sqrt(sum_i float64(v_i)^2))        float64 squares summed sequentially in index order,
                                                        one float64 sqrt, one rounding to the data's dtype
    r_i     = min(s, (float64(|v_i|) / float64(norm)) * s)     one division, then one multiplication
    l_i     = floor(r_i)
    level_i = l_i + [u_i < r_i - l_i]                  in {0, 1, ..., s} (r_i - l_i is exact)
    out_i   = sign(v_i) dtype(float64(norm) * (level_i / s))   +0.0 where level_i = 0

so level_i is l_i + 1 with probability r_i - l_i and E[out_i] = v_i up to the roundings (relative
~2^-52 in r_i, one rounding of out_i to the dtype, and the 2^-53 grid of the uniforms). The clamp
``min(s, .)`` only matters when the rounded norm is below the largest |v_i| (possible in float64 by one
ulp; in float32 the float64 sum of exact squares never rounds below it): that entry then gets level s.
A bucket whose norm is 0 (all zero) gets level 0 everywhere, out = +0.0, and uses none of its uniforms
(they are still consumed: each row takes P uniforms). The signed levels ``sign(v_i) level_i`` are the
message's payload. For float64 data the squares can overflow (entries beyond ~1e154) or underflow
(entries below ~1e-154 lose precision, and a bucket whose entries are all below ~1e-162 has norm 0 and
is sent as zero: QSGD is then no longer unbiased there); an overflowing norm (also a float32 norm beyond
the float32 maximum) raises ``ValueError(NORM_OVERFLOW_MESSAGE)``. float32 data has neither problem.

Arithmetic: the sum is a plain sequential float64 loop (numba's fastmath is off, so no reassociation and
no fused multiply-add); the NumPy twin sums with ``np.cumsum`` along the bucket, which adds in the same
order. Each remaining step is one correctly rounded IEEE operation, so kernel, twin and any other
implementation of the same steps (the torch reference) agree bitwise.

Elias omega code (the paper's "Elias recursive coding")
---------------------------------------------------------
A positive integer k is written as: the binary digits of k preceded by the omega code of (its number of
binary digits - 1), recursively, down to a group "1x"; a single 0 ends the code. Procedure: code = "0";
while k > 1: code = binary(k) + code; k = bit_length(k) - 1. Examples: 1 -> ``0``, 2 -> ``100``,
3 -> ``110``, 4 -> ``101000``, 16 -> ``10100100000``. Length: ``B(1) = 1``,
``B(k) = bit_length(k) + B(bit_length(k) - 1)``: it depends on the bit length alone (``OMEGA_BITS``).
Decoding starts from n = 1: read a bit; 0 ends with the value n; 1 starts a group of n + 1 bits (that 1
and n more) whose value becomes the new n. Fields are written most significant bit first, in the bit
order of :mod:`fedsim.kernels.golomb`.

Code of one bucket (the paper's Code_s, section 3 and its coding appendix)
--------------------------------------------------------------------------
The norm as a float (32 bits for float32 data, 64 for float64: its IEEE bit pattern). If the norm is 0,
nothing else. Otherwise, for each nonzero level in index order: ``omega(gap)``, one sign bit (1 =
negative), ``omega(|level|)``, where gap = local index + 1 for the first nonzero of the bucket and the
index difference to the previous nonzero after that. Then an end marker, ``omega(n - last)`` with ``last``
the local index of the bucket's last nonzero (-1 if none): the gap to the virtual position n just past
the bucket. The paper leaves the end of the code implicit (it counts the norm and the nonzeros only);
the marker is what lets a decoder that knows n find where the next bucket starts, at about
log2(gap) bits per bucket. Bits of a bucket (:func:`bucket_bits`)::

    F                                                                         norm = 0
    F + sum over nonzero i of (B(gap_i) + 1 + B(|level_i|)) + B(n - last)    norm > 0

Every kernel ``foo`` has a NumPy twin ``foo_numpy``, bitwise equal; a non-finite input raises
``ValueError(sparsify.NONFINITE_MESSAGE)``.
"""

from __future__ import annotations

import itertools
import math

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS
from fedsim.kernels.golomb import _get_bit, read_uint, write_uint
from fedsim.kernels.sparsify import NONFINITE_MESSAGE

_jit = numba.njit(**JIT_OPTIONS)

NORM_OVERFLOW_MESSAGE = ("QSGD: a bucket's norm overflows its dtype (entries near the float maximum; "
                         "the update has diverged)")
# Largest integer the Elias omega coder takes (a group of at most 63 bits).
MAX_OMEGA_VALUE = (1 << 62) - 1


def _bit_length_table() -> np.ndarray:
    return np.array([int(v).bit_length() for v in range(256)], np.int64)


def _omega_bits_table() -> np.ndarray:
    """OMEGA_BITS[L]: bits of the omega code of any integer of bit length L (1 <= L <= 63)."""
    table = np.zeros(64, np.int64)
    table[1] = 1
    for length in range(2, 64):
        table[length] = length + table[(length - 1).bit_length()]
    return table


BYTE_BIT_LENGTH = _bit_length_table()
OMEGA_BITS = _omega_bits_table()
# The omega code length of every value below 256 (index 0 unused: 0).
OMEGA_BITS_SMALL = OMEGA_BITS[BYTE_BIT_LENGTH]


# ----------------------------------------------------------------------------------------------------
# Buckets
# ----------------------------------------------------------------------------------------------------

def bucket_offsets(segment_offsets, bucket_size: int) -> np.ndarray:
    """Boundaries (int64, starting at 0) of the buckets of every segment, in order (module docstring)."""
    offsets = np.asarray(segment_offsets, np.int64)
    bounds = [np.zeros(1, np.int64)]
    for start, stop in itertools.pairwise(offsets):
        if stop == start:
            continue
        if bucket_size > 0:
            bounds.append(np.arange(start + bucket_size, stop, bucket_size, dtype=np.int64))
        bounds.append(np.array([stop], np.int64))
    return np.concatenate(bounds)


# ----------------------------------------------------------------------------------------------------
# Elias omega code
# ----------------------------------------------------------------------------------------------------

@_jit
def _bit_length(value):
    length = 0
    while value >= 256:
        value >>= 8
        length += 8
    return length + BYTE_BIT_LENGTH[value]


@_jit
def _omega_bits_unchecked(value):
    """Bits of the omega code of ``value`` >= 1 (a table lookup for values below 256)."""
    if value < 256:
        return OMEGA_BITS_SMALL[value]
    return OMEGA_BITS[_bit_length(value)]


@_jit
def elias_omega_bits(value):
    """Bits of the Elias omega code of ``value`` (an integer in [1, 2^62))."""
    if value < 1 or value > MAX_OMEGA_VALUE:
        raise ValueError("Elias omega codes integers in [1, 2^62)")
    return _omega_bits_unchecked(value)


def elias_omega_bits_numpy(values):
    """NumPy twin of :func:`elias_omega_bits`, elementwise (int64 array or scalar)."""
    values = np.asarray(values, np.int64)
    if np.any((values < 1) | (values > MAX_OMEGA_VALUE)):
        raise ValueError("Elias omega codes integers in [1, 2^62)")
    # bit length = the frexp exponent of float64(value); above 2^53 the conversion may round a value up
    # to the next power of two, which the comparison corrects
    exponent = np.frexp(values.astype(np.float64))[1].astype(np.int64)
    exponent -= (np.left_shift(np.int64(1), exponent - 1) > values)
    return OMEGA_BITS[exponent]


@_jit
def write_elias_omega(stream, bit_offset, value):
    """Write the omega code of ``value`` at ``bit_offset``; returns the offset after it.

    The groups are placed from the end backwards (the terminating 0 last), so no group list is needed."""
    total = elias_omega_bits(value)
    position = bit_offset + total - 1
    write_uint(stream, position, 0, 1)
    group = value
    while group > 1:
        width = _bit_length(group)
        position -= width
        write_uint(stream, position, group, width)
        group = width - 1
    return bit_offset + total


@_jit
def read_elias_omega(stream, bit_offset, bit_end):
    """Read one omega code at ``bit_offset`` (never past ``bit_end``): (value, offset after it)."""
    value = 1
    offset = bit_offset
    while True:
        if offset >= bit_end:
            raise ValueError("Elias omega code runs past the end of the stream")
        bit = _get_bit(stream, offset)
        offset += 1
        if bit == 0:
            return value, offset
        width = value
        if width > 61:
            raise ValueError("corrupt Elias omega code (a value of 2^62 or more)")
        if offset + width > bit_end:
            raise ValueError("Elias omega code runs past the end of the stream")
        value = (np.int64(1) << width) | read_uint(stream, offset, width)
        offset += width


# ----------------------------------------------------------------------------------------------------
# Bit counts
# ----------------------------------------------------------------------------------------------------

@_jit
def bucket_bits(signed_levels, norm_nonzero, float_bits):
    """Encoded bits of one bucket from its signed levels (module docstring)."""
    if not norm_nonzero:
        return float_bits
    total = float_bits
    previous = -1
    for i in range(signed_levels.shape[0]):
        # selects, not a branch on the (random) nonzero pattern; the table branches are predictable
        magnitude = abs(np.int64(signed_levels[i]))
        sent = magnitude != 0
        entry = _omega_bits_unchecked(i - previous) + 1 + _omega_bits_unchecked(max(magnitude, 1))
        total += entry if sent else 0
        previous = i if sent else previous
    return total + _omega_bits_unchecked(signed_levels.shape[0] - previous)


@_jit
def qsgd_bits(signed_levels, bucket_offsets, norms, float_bits):
    """Encoded bits of one row's message: the sum of :func:`bucket_bits` over its buckets.

    ``signed_levels`` (P,) integer, ``bucket_offsets`` (B + 1,) int64, ``norms`` (B,) float."""
    total = 0
    for b in range(bucket_offsets.shape[0] - 1):
        total += bucket_bits(signed_levels[bucket_offsets[b]:bucket_offsets[b + 1]], norms[b] != 0,
                             float_bits)
    return total


def qsgd_bits_numpy(signed_levels, bucket_offsets, norms, float_bits):
    """NumPy twin of :func:`qsgd_bits`, vectorized over a (P,) row or a (K, P) batch (then (K,) int64)."""
    levels = np.asarray(signed_levels).astype(np.int64)
    norms = np.asarray(norms)
    single = levels.ndim == 1
    levels, norms = np.atleast_2d(levels), np.atleast_2d(norms)
    offsets = np.asarray(bucket_offsets, np.int64)
    n_rows, n_buckets = norms.shape
    sizes = np.diff(offsets)
    live = norms != 0                                             # (K, B): buckets that send entries
    rows, columns = np.nonzero(levels)
    buckets = np.searchsorted(offsets, columns, side="right") - 1
    sent = live[rows, buckets]                                    # a zero-norm bucket sends no entries
    rows, columns, buckets = rows[sent], columns[sent], buckets[sent]
    local = columns - offsets[buckets]
    keys = rows * n_buckets + buckets                             # sorted: row-major nonzero order
    first = np.ones(keys.size, bool)
    first[1:] = keys[1:] != keys[:-1]
    gaps = np.where(first, local + 1, local - np.concatenate(([0], local[:-1])))
    per_entry = elias_omega_bits_numpy(gaps) + 1 + elias_omega_bits_numpy(np.abs(levels[rows, columns]))
    last = np.full(n_rows * n_buckets, -1, np.int64)
    np.maximum.at(last, keys, local)
    end_gaps = np.tile(sizes, n_rows) - last
    bucket_totals = np.full(n_rows * n_buckets, float_bits, np.int64)
    live_flat = live.reshape(-1)
    bucket_totals[live_flat] += elias_omega_bits_numpy(end_gaps[live_flat])
    np.add.at(bucket_totals, keys, per_entry)
    totals = bucket_totals.reshape(n_rows, n_buckets).sum(axis=1)
    return int(totals[0]) if single else totals


# ----------------------------------------------------------------------------------------------------
# Quantization
# ----------------------------------------------------------------------------------------------------

@_jit
def _quantize_bucket(x, uniforms, levels, norm_out, decoded_out, levels_out):
    """Quantize one bucket into the outputs (module docstring): its norm into ``norm_out[0]``, which is
    also returned (x's dtype)."""
    total = 0.0
    for i in range(x.shape[0]):
        wide = np.float64(x[i])
        total += wide * wide
    if not np.isfinite(total):               # NaN or inf in x, or the sum overflowed
        for i in range(x.shape[0]):
            if not np.isfinite(x[i]):
                raise ValueError(NONFINITE_MESSAGE)
        raise ValueError(NORM_OVERFLOW_MESSAGE)
    norm_out[0] = math.sqrt(total)            # rounded to the dtype by the store
    norm = norm_out[0]
    if not np.isfinite(norm):
        raise ValueError(NORM_OVERFLOW_MESSAGE)
    if norm == 0:
        for i in range(x.shape[0]):
            decoded_out[i] = 0.0
            levels_out[i] = 0
        return norm
    norm64 = np.float64(norm)
    s = np.float64(levels)
    for i in range(x.shape[0]):
        # written as selects, not branches: the rounding and the signs are random, so branches on them
        # would be mispredicted half of the time
        value = x[i]
        ratio = min((np.float64(abs(value)) / norm64) * s, s)
        lower = math.floor(ratio)
        level = lower + np.float64(uniforms[i] < ratio - lower)
        magnitude = norm64 * (level / s)               # +0.0 for level 0 (norm64 > 0)
        flip = value < 0 and level != 0
        decoded_out[i] = -magnitude if flip else magnitude     # rounded to the dtype by the store
        whole = np.int64(level)
        levels_out[i] = -whole if flip else whole
    return norm


@_jit
def qsgd_quantize(updates, bucket_offsets, levels, uniforms, float_bits, decoded_out, norms_out, levels_out,
                  encoded_bits_out):
    """QSGD of every row of ``updates``, bucket by bucket (module docstring), in one call.

    Parameters
    ----------
    updates : (K, P) float32 or float64, C-contiguous
    bucket_offsets : (B + 1,) int64
        Bucket b of a row is ``[offsets[b], offsets[b + 1])``; 0 = offsets[0] <= ... <= offsets[B] = P
        (:func:`bucket_offsets`).
    levels : int
        s >= 1.
    uniforms : (K, P) float64 in [0, 1)
        ``u`` of each entry (row r, entry i uses ``uniforms[r, i]``).
    float_bits : int
        Bits of an encoded norm (32 for float32 data, 64 for float64).
    decoded_out : (K, P), the dtype of ``updates``
        Receives what the receiver reconstructs.
    norms_out : (K, B), the dtype of ``updates``
        Receives each bucket's norm.
    levels_out : (K, P) int16 or int32
        Receives the signed levels ``sign(v_i) level_i`` (int16 suffices for s <= 32767).
    encoded_bits_out : (K,) int64
        Receives each row's encoded message length (:func:`qsgd_bits` of its levels and norms).
    """
    n_rows, size = updates.shape
    n_buckets = bucket_offsets.shape[0] - 1
    if bucket_offsets[0] != 0 or bucket_offsets[n_buckets] != size:
        raise ValueError("bucket_offsets must start at 0 and end at the row length")
    if levels < 1:
        raise ValueError("levels must be >= 1")
    for row in range(n_rows):
        total_bits = 0
        for b in range(n_buckets):
            start = bucket_offsets[b]
            stop = bucket_offsets[b + 1]
            if stop < start:
                raise ValueError("bucket_offsets must be non-decreasing")
            norm = _quantize_bucket(updates[row, start:stop], uniforms[row, start:stop], levels,
                                    norms_out[row, b:b + 1], decoded_out[row, start:stop],
                                    levels_out[row, start:stop])
            total_bits += bucket_bits(levels_out[row, start:stop], norm != 0, float_bits)
        encoded_bits_out[row] = total_bits


def _bucket_norms_numpy(updates, offsets):
    """(K, B) float64 sqrt of the sequential float64 sums of squares of every bucket (before rounding).

    Buckets of equal length are gathered into a (K, count, length) block and summed along their last axis
    with ``np.cumsum`` (sequential, as the kernel's loop)."""
    n_rows = updates.shape[0]
    sizes = np.diff(offsets)
    sums = np.zeros((n_rows, sizes.size), np.float64)
    for length in np.unique(sizes):
        if length == 0:
            continue
        which = np.flatnonzero(sizes == length)
        columns = offsets[which][:, None] + np.arange(length)
        wide = updates[:, columns].astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            sums[:, which] = np.cumsum(wide * wide, axis=2)[:, :, -1]
    return sums


def qsgd_quantize_numpy(updates, bucket_offsets, levels, uniforms, float_bits, decoded_out, norms_out,
                        levels_out, encoded_bits_out):
    """NumPy twin of :func:`qsgd_quantize` (vectorized over the whole batch)."""
    updates = np.asarray(updates)
    offsets = np.asarray(bucket_offsets, np.int64)
    n_rows, size = updates.shape
    if offsets[0] != 0 or offsets[-1] != size or np.any(np.diff(offsets) < 0):
        raise ValueError("bucket_offsets must start at 0, be non-decreasing and end at the row length")
    if levels < 1:
        raise ValueError("levels must be >= 1")
    if not np.all(np.isfinite(updates)):
        raise ValueError(NONFINITE_MESSAGE)
    dtype = updates.dtype
    sums = _bucket_norms_numpy(updates, offsets)
    if not np.all(np.isfinite(sums)):
        raise ValueError(NORM_OVERFLOW_MESSAGE)
    with np.errstate(over="ignore"):
        norms = np.sqrt(sums).astype(dtype)
    if not np.all(np.isfinite(norms)):
        raise ValueError(NORM_OVERFLOW_MESSAGE)
    sizes = np.diff(offsets)
    per_entry = np.repeat(norms.astype(np.float64), sizes, axis=1)      # (K, P) float64 norm of each entry
    live = per_entry != 0
    s = np.float64(levels)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.minimum((np.abs(updates).astype(np.float64) / per_entry) * s, s)
    lower = np.floor(ratio)
    level = np.where(live, lower + (uniforms < ratio - lower), 0.0)
    magnitude = (per_entry * (level / s)).astype(dtype)
    nonzero = level != 0
    decoded_out[...] = np.where(nonzero, np.where(updates < 0, -magnitude, magnitude), dtype.type(0))
    signed = np.where(updates < 0, -level, level).astype(np.int64)
    levels_out[...] = np.where(nonzero, signed, 0)
    norms_out[...] = norms
    encoded_bits_out[...] = qsgd_bits_numpy(levels_out, offsets, norms, float_bits) if n_rows else 0


# ----------------------------------------------------------------------------------------------------
# The wire code of a message
# ----------------------------------------------------------------------------------------------------

@_jit
def qsgd_encode_into(signed_levels, bucket_offsets, norm_patterns, float_bits, stream, bit_offset):
    """Write a row's buckets (module docstring) from ``bit_offset``; returns the offset after them.

    ``norm_patterns`` (B,) int64 holds each norm's IEEE bit pattern (a float32's as a non-negative
    int64); a bucket whose pattern is 0 (norm +0.0) sends its norm only."""
    offset = bit_offset
    for b in range(bucket_offsets.shape[0] - 1):
        start = bucket_offsets[b]
        stop = bucket_offsets[b + 1]
        offset = write_uint(stream, offset, norm_patterns[b], float_bits)
        if norm_patterns[b] == 0:
            continue
        previous = -1
        for i in range(stop - start):
            level = np.int64(signed_levels[start + i])
            if level != 0:
                offset = write_elias_omega(stream, offset, i - previous)
                offset = write_uint(stream, offset, 1 if level < 0 else 0, 1)
                offset = write_elias_omega(stream, offset, abs(level))
                previous = i
        offset = write_elias_omega(stream, offset, stop - start - previous)
    return offset


@_jit
def qsgd_decode_from(stream, bit_offset, bit_end, bucket_offsets, float_bits, norm_patterns_out,
                     levels_out):
    """Read the buckets written by :func:`qsgd_encode_into`; returns the offset after them.

    ``levels_out`` (P,) int64 must be zero-filled; ``norm_patterns_out`` (B,) int64 receives the norm bit
    patterns. A gap that jumps past a bucket's end, a zero level, or a stream that ends early raise
    ValueError."""
    if bit_end > stream.shape[0] * 8:
        raise ValueError("bit_end lies beyond the stream")
    offset = bit_offset
    for b in range(bucket_offsets.shape[0] - 1):
        start = bucket_offsets[b]
        size = bucket_offsets[b + 1] - start
        if offset + float_bits > bit_end:
            raise ValueError("QSGD stream ends inside a norm")
        pattern = read_uint(stream, offset, float_bits)
        offset += float_bits
        norm_patterns_out[b] = pattern
        if pattern == 0:
            continue
        position = -1
        while True:
            gap, offset = read_elias_omega(stream, offset, bit_end)
            position += gap
            if position == size:
                break
            if position > size:
                raise ValueError("corrupt QSGD stream: a gap jumps past the end of its bucket")
            if offset >= bit_end:
                raise ValueError("QSGD stream ends before a sign bit")
            negative = _get_bit(stream, offset)
            offset += 1
            level, offset = read_elias_omega(stream, offset, bit_end)
            levels_out[start + position] = -level if negative else level
    return offset
