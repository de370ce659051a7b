"""Golomb-Rice coding of sorted positions, and the bit count of a sparse segment.

The streams are those of :mod:`fedsim.kernels.bitstream` (bit order, fixed-width fields).

Golomb-Rice code of positions (STC, arXiv 1903.02891, section on encoding)
----------------------------------------------------------------------------
Positions ``s_1 < s_2 < ... < s_n`` (non-negative int64) become gaps ``g_1 = s_1 + 1``,
``g_j = s_j - s_(j-1)`` (all >= 1). With parameter ``b >= 0`` each gap is written as::

    g - 1 = q 2^b + r,   0 <= r < 2^b
    code(g) = q ones, one zero, then r in b bits          ->  q + 1 + b bits

The parameter that the paper derives for a density ``q' = n / N`` is
``b* = 1 + floor(log2(ln(phi - 1) / ln(1 - q')))`` with ``phi = (1 + sqrt 5) / 2`` (the golden ratio),
taken as ``max(0, .)`` (for ``q' >= 1 - (phi - 1)^2 ~ 0.62`` the formula drops below 0; ``b = 0`` is the
unary code) and capped at 62 (gaps are int64). ``ln(1 - q')`` is computed as ``log1p(-q')`` so tiny
densities keep their precision.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS
from fedsim.kernels.bitstream import (BIT_END, BIT_OFFSET, BIT_OFFSET_TO_END, STREAM, WIDTH, _get_bit,
                                     _read_uint_core, _write_uint_core)
from fedsim.kernels.checks import INT64, Array, Count, Stream, checked

_jit = numba.njit(**JIT_OPTIONS)

# ln(phi - 1) with phi the golden ratio: ln((sqrt(5) - 1) / 2).
LOG_GOLDEN_CONJUGATE = math.log((math.sqrt(5.0) - 1.0) / 2.0)
# Largest Rice parameter (gaps are int64 values below 2^63).
MAX_RICE_PARAMETER = 62
# Largest segment size whose message length is computed (kept far from int64 overflow: 64 bits per
# entry for 2^56 entries is 2^62 bits).
MAX_SEGMENT_SIZE = 1 << 56
GOLOMB_END_MESSAGE = "Golomb-Rice stream ends before the last position"

RICE = Count(0, MAX_RICE_PARAMETER, label="Golomb-Rice parameter b")
POSITIONS = Array(INT64)


def _room_for(bit_offset, bit_end, count, b):
    """Room for ``count`` code words of at least 1 + b bits each in [bit_offset, bit_end)."""
    if count * (b + 1) > bit_end - bit_offset:
        raise ValueError(GOLOMB_END_MESSAGE)


@_jit
def _rice_parameter_core(count, size):
    if count < 0 or count > size:
        raise ValueError("rice_parameter: count must be in [0, size]")
    if count == 0:
        return 0
    density = count / size
    ratio = LOG_GOLDEN_CONJUGATE / math.log1p(-density)   # 0 when density = 1 (log1p(-1) = -inf)
    if ratio < 1.0:
        return 0
    parameter = 1 + int(math.floor(math.log2(ratio)))
    return min(parameter, MAX_RICE_PARAMETER)


@checked(_rice_parameter_core, count=Count(0, high="size"), size=Count())
def rice_parameter(count, size):
    """b* for ``count`` kept positions out of ``size`` (density q' = count / size); 0 if count is 0.

    b* = max(0, min(62, 1 + floor(log2(ln(phi - 1) / ln(1 - q')))))
    """


def rice_parameter_numpy(count, size):
    count, size = rice_parameter.check(count, size)
    if count == 0:
        return 0
    with np.errstate(divide="ignore"):   # log1p(-1) = -inf is the intended limit (ratio 0)
        ratio = LOG_GOLDEN_CONJUGATE / np.log1p(-np.float64(count) / np.float64(size))
    if ratio < 1.0:
        return 0
    return int(min(1 + np.floor(np.log2(ratio)), MAX_RICE_PARAMETER))


@_jit
def _golomb_rice_bits_core(positions, b):
    if b < 0 or b > MAX_RICE_PARAMETER:
        raise ValueError("Golomb-Rice parameter b must be in [0, 62]")
    total = 0
    previous = -1
    for j in range(positions.shape[0]):
        gap = positions[j] - previous
        if gap < 1:
            raise ValueError("positions must be non-negative and strictly increasing")
        total += ((gap - 1) >> b) + 1 + b
        if total < 0:                          # each term is below 2^63: an overflow turns it negative
            raise ValueError("the Golomb-Rice code of these positions is longer than 2^63 bits")
        previous = positions[j]
    return total


@checked(_golomb_rice_bits_core, positions=POSITIONS, b=RICE)
def golomb_rice_bits(positions, b):
    """The length in bits of the Golomb-Rice code of ``positions`` (the sum of q + 1 + b over the gaps),
    without encoding."""


def golomb_rice_bits_numpy(positions, b):
    positions, b = golomb_rice_bits.check(positions, b)
    gaps = np.diff(positions, prepend=-1)
    if np.any(gaps < 1):
        raise ValueError("positions must be non-negative and strictly increasing")
    return int(np.sum(((gaps - 1) >> b) + 1 + b))


@_jit
def _golomb_rice_encode_into_core(positions, b, stream, bit_offset):
    if b < 0 or b > MAX_RICE_PARAMETER:
        raise ValueError("Golomb-Rice parameter b must be in [0, 62]")
    remainder_mask = (1 << b) - 1
    previous = -1
    offset = bit_offset
    for j in range(positions.shape[0]):
        gap = positions[j] - previous
        if gap < 1:
            raise ValueError("positions must be non-negative and strictly increasing")
        quotient = (gap - 1) >> b
        remainder = (gap - 1) & remainder_mask
        if quotient + 1 + b <= MAX_RICE_PARAMETER:
            # q ones, a zero, r in b bits = the (q + 1 + b)-bit field ((2^q - 1) << (b + 1)) | r
            offset = _write_uint_core(stream, offset, (((1 << quotient) - 1) << (b + 1)) | remainder,
                                      quotient + 1 + b)
        else:
            ones = quotient
            while ones > 0:
                run = min(ones, 32)
                offset = _write_uint_core(stream, offset, (1 << run) - 1, run)
                ones -= run
            offset = _write_uint_core(stream, offset, remainder, b + 1)     # the zero, then r
        previous = positions[j]
    return offset


@checked(_golomb_rice_encode_into_core, positions=POSITIONS, b=RICE,
         stream=Stream(output=True, start="bit_offset", bits=_golomb_rice_bits_core), bit_offset=BIT_OFFSET)
def golomb_rice_encode_into(positions, b, stream, bit_offset):
    """Write the Golomb-Rice code of ``positions`` from ``bit_offset`` (the check computes its length,
    :func:`golomb_rice_bits`: one pass); returns the offset after the code."""


@_jit
def _golomb_rice_encode_core(positions, b):
    n_bits = _golomb_rice_bits_core(positions, b)
    stream = np.zeros((n_bits + 7) // 8, np.uint8)
    _golomb_rice_encode_into_core(positions, b, stream, 0)
    return stream, n_bits


@checked(_golomb_rice_encode_core, positions=POSITIONS, b=RICE)
def golomb_rice_encode(positions, b):
    """(stream, n_bits): the Golomb-Rice code of ``positions`` (strictly increasing, non-negative int64),
    zero-padded to a whole byte, and its length in bits."""


def golomb_rice_encode_numpy(positions, b):
    """NumPy twin of :func:`golomb_rice_encode` (builds the bit array with vectorized index arithmetic)."""
    positions, b = golomb_rice_encode.check(positions, b)
    n_bits = golomb_rice_bits_numpy(positions, b)
    gaps = np.diff(positions, prepend=-1)
    quotients = (gaps - 1) >> b
    remainders = (gaps - 1) & ((1 << b) - 1)
    lengths = quotients + 1 + b
    starts = np.cumsum(lengths) - lengths
    bits = np.zeros(n_bits, np.uint8)
    # unary part: bits starts[j] .. starts[j] + quotients[j] - 1 are ones
    ones = np.repeat(starts, quotients) + (np.arange(quotients.sum()) - np.repeat(np.cumsum(quotients)
                                                                               - quotients, quotients))
    bits[ones] = 1
    # remainder part: b bits after the terminating zero, most significant first
    for t in range(b):
        bits[starts + quotients + 1 + t] = (remainders >> (b - 1 - t)) & 1
    return np.packbits(bits), n_bits


@_jit
def _golomb_rice_decode_from_core(stream, bit_offset, bit_end, count, b, positions_out):
    if b < 0 or b > MAX_RICE_PARAMETER:
        raise ValueError("Golomb-Rice parameter b must be in [0, 62]")
    if bit_end > stream.shape[0] * 8:
        raise ValueError("bit_end lies beyond the stream")
    offset = bit_offset
    previous = -1
    for j in range(count):
        quotient = 0
        while True:
            if offset >= bit_end:
                raise ValueError(GOLOMB_END_MESSAGE)
            bit = _get_bit(stream, offset)
            offset += 1
            if bit == 0:
                break
            quotient += 1
        if offset + b > bit_end:
            raise ValueError(GOLOMB_END_MESSAGE)
        remainder = _read_uint_core(stream, offset, b)
        offset += b
        previous = previous + (quotient << b) + remainder + 1
        positions_out[j] = previous
    return offset


@checked(_golomb_rice_decode_from_core, extra=_room_for, stream=STREAM, bit_offset=BIT_OFFSET_TO_END,
         bit_end=BIT_END, count=Count(), b=RICE, positions_out=Array(INT64, output=True, at_least="count"))
def golomb_rice_decode_from(stream, bit_offset, bit_end, count, b, positions_out):
    """Read ``count`` coded positions from ``bit_offset``, never past ``bit_end``, into
    ``positions_out[:count]``; returns the offset after the code (room for ``count`` words of 1 + b bits
    is checked first)."""


@_jit
def _golomb_rice_decode_core(stream, n_bits, count, b):
    positions = np.empty(count, np.int64)
    _golomb_rice_decode_from_core(stream, 0, n_bits, count, b, positions)
    return positions


@checked(_golomb_rice_decode_core, extra=lambda n_bits, count, b: _room_for(0, n_bits, count, b),
         stream=STREAM, n_bits=BIT_END, count=Count(), b=RICE)
def golomb_rice_decode(stream, n_bits, count, b):
    """Inverse of :func:`golomb_rice_encode`: ``count`` positions (int64) from the first ``n_bits`` bits."""


def golomb_rice_decode_numpy(stream, n_bits, count, b):
    """NumPy twin of :func:`golomb_rice_decode` (a plain loop over ``np.unpackbits``)."""
    stream, n_bits, count, b = golomb_rice_decode.check(stream, n_bits, count, b)
    bits = np.unpackbits(stream)[:n_bits]
    positions = np.empty(count, np.int64)
    offset = 0
    previous = -1
    for j in range(count):
        zero = np.flatnonzero(bits[offset:] == 0)
        if zero.size == 0 or offset + zero[0] + 1 + b > n_bits:
            raise ValueError(GOLOMB_END_MESSAGE)
        quotient = int(zero[0])
        offset += quotient + 1
        remainder = 0
        for bit in bits[offset:offset + b]:
            remainder = 2 * remainder + int(bit)
        offset += b
        previous += quotient * 2 ** b + remainder + 1
        positions[j] = previous
    return positions


# Width of the count field that starts every sparse segment and every sign segment.
COUNT_BITS = 32


@_jit
def _sparse_segment_bits_core(local_positions, size, bits_per_entry, trailer_bits):
    count = local_positions.shape[0]
    total = COUNT_BITS + _golomb_rice_bits_core(local_positions, _rice_parameter_core(count, size))
    total += count * bits_per_entry
    if count > 0:
        total += trailer_bits
    return total


def _segment_holds(local_positions, size):
    """At most ``size`` positions, the last below ``size`` (the core checks that they increase)."""
    count = local_positions.shape[0]
    if count > size:
        raise ValueError(f"local_positions holds {count} positions, more than the segment's {size} entries")
    if count and local_positions[-1] >= size:
        raise ValueError(f"local_positions must lie in [0, {size}), got {int(local_positions[-1])}")


@checked(_sparse_segment_bits_core, extra=_segment_holds, local_positions=POSITIONS,
         size=Count(0, MAX_SEGMENT_SIZE), bits_per_entry=WIDTH, trailer_bits=WIDTH)
def sparse_segment_bits(local_positions, size, bits_per_entry, trailer_bits):
    """Encoded bits of one sparse segment: 32-bit count + Golomb-Rice positions (b* from count / size)
    + ``bits_per_entry`` per kept entry + ``trailer_bits`` (the mean, if any entry is kept); the
    positions strictly increase in [0, size)."""
