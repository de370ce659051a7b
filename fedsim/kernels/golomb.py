"""Bit streams: Golomb-Rice coding of sorted positions, sign bits and fixed-width fields.

Bit order
---------
A stream is a uint8 array; stream bit ``t`` is bit ``7 - t % 8`` of byte ``t // 8`` (most significant bit
first, the order of ``np.packbits`` / ``np.unpackbits`` with their default ``bitorder="big"``). Multi-bit
fields are written most significant bit first. Bits after the last written one are zero.

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

Sign bits
---------
One bit per sign: 1 for a negative sign (-1), 0 for a positive one (+1), like an IEEE sign bit; so
``pack_signs(s) == np.packbits(s < 0)``. Only +-1 can be packed: zeros need a separate code (see the sign
compressor's message format in :mod:`fedsim.compress.base`).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS

_jit = numba.njit(**JIT_OPTIONS)

# ln(phi - 1) with phi the golden ratio: ln((sqrt(5) - 1) / 2).
LOG_GOLDEN_CONJUGATE = math.log((math.sqrt(5.0) - 1.0) / 2.0)
# Largest Rice parameter (gaps are int64 values below 2^63).
MAX_RICE_PARAMETER = 62


# ----------------------------------------------------------------------------------------------------
# Rice parameter
# ----------------------------------------------------------------------------------------------------

@_jit
def rice_parameter(count, size):
    """b* for ``count`` kept positions out of ``size`` (density q' = count / size); 0 if count is 0.

    b* = max(0, min(62, 1 + floor(log2(ln(phi - 1) / ln(1 - q'))))).
    """
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


def rice_parameter_numpy(count, size):
    """NumPy twin of :func:`rice_parameter`."""
    if count < 0 or count > size:
        raise ValueError("rice_parameter: count must be in [0, size]")
    if count == 0:
        return 0
    with np.errstate(divide="ignore"):   # log1p(-1) = -inf is the intended limit (ratio 0)
        ratio = LOG_GOLDEN_CONJUGATE / np.log1p(-np.float64(count) / np.float64(size))
    if ratio < 1.0:
        return 0
    return int(min(1 + np.floor(np.log2(ratio)), MAX_RICE_PARAMETER))


# ----------------------------------------------------------------------------------------------------
# Single bits and fixed-width fields
# ----------------------------------------------------------------------------------------------------

@_jit
def _put_bit(stream, bit_offset, bit):
    byte = bit_offset >> 3
    mask = 1 << (7 - (bit_offset & 7))
    if bit:
        stream[byte] = stream[byte] | mask
    else:
        stream[byte] = stream[byte] & (255 ^ mask)


@_jit
def _get_bit(stream, bit_offset):
    return (stream[bit_offset >> 3] >> (7 - (bit_offset & 7))) & 1


@_jit
def write_uint(stream, bit_offset, value, width):
    """Write ``value`` (0 <= value < 2^width, width <= 64) in ``width`` bits at ``bit_offset``, most
    significant first. Returns the offset after it. A 64-bit field takes the value's int64 bit pattern.

    Byte by byte: each byte the field touches is masked and merged once (bits around the field keep
    their values).
    """
    bits = np.int64(value)
    offset = bit_offset
    remaining = width
    while remaining > 0:
        used = offset & 7                          # bits of this byte before the field
        take = min(8 - used, remaining)            # field bits that land in this byte
        shift = 8 - used - take
        chunk = (bits >> (remaining - take)) & ((1 << take) - 1)
        mask = ((1 << take) - 1) << shift
        byte = offset >> 3
        stream[byte] = (stream[byte] & (255 ^ mask)) | (chunk << shift)
        offset += take
        remaining -= take
    return bit_offset + width


@_jit
def read_uint(stream, bit_offset, width):
    """Read a ``width``-bit field (most significant first) at ``bit_offset``; returns it as int64
    (a 64-bit field comes back as the same int64 bit pattern that :func:`write_uint` took)."""
    if bit_offset + width > stream.shape[0] * 8:
        raise ValueError("bit stream ends inside a fixed-width field")
    value = 0
    offset = bit_offset
    remaining = width
    while remaining > 0:
        used = offset & 7
        take = min(8 - used, remaining)
        chunk = (np.int64(stream[offset >> 3]) >> (8 - used - take)) & ((1 << take) - 1)
        value = (value << take) | chunk
        offset += take
        remaining -= take
    return value


# ----------------------------------------------------------------------------------------------------
# Golomb-Rice code of positions
# ----------------------------------------------------------------------------------------------------

def _check_parameter(b):
    if not (0 <= b <= MAX_RICE_PARAMETER):
        raise ValueError(f"Golomb-Rice parameter b must be in [0, {MAX_RICE_PARAMETER}], got {b}")


@_jit
def golomb_rice_bits(positions, b):
    """Exact length in bits of the Golomb-Rice code of ``positions`` (sum of q + 1 + b over the gaps),
    equal to the encoder's ``n_bits``, computed without encoding."""
    if b < 0 or b > MAX_RICE_PARAMETER:
        raise ValueError("Golomb-Rice parameter b must be in [0, 62]")
    total = 0
    previous = -1
    for j in range(positions.shape[0]):
        gap = positions[j] - previous
        if gap < 1:
            raise ValueError("positions must be non-negative and strictly increasing")
        total += ((gap - 1) >> b) + 1 + b
        previous = positions[j]
    return total


def golomb_rice_bits_numpy(positions, b):
    """NumPy twin of :func:`golomb_rice_bits`."""
    _check_parameter(b)
    gaps = np.diff(np.asarray(positions, np.int64), prepend=-1)
    if np.any(gaps < 1):
        raise ValueError("positions must be non-negative and strictly increasing")
    return int(np.sum(((gaps - 1) >> b) + 1 + b))


@_jit
def golomb_rice_encode_into(positions, b, stream, bit_offset):
    """Write the Golomb-Rice code of ``positions`` into ``stream`` from ``bit_offset`` (the stream must
    be long enough: :func:`golomb_rice_bits` tells how much). Returns the offset after the code."""
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
            offset = write_uint(stream, offset, (((1 << quotient) - 1) << (b + 1)) | remainder,
                                quotient + 1 + b)
        else:
            ones = quotient
            while ones > 0:
                run = min(ones, 32)
                offset = write_uint(stream, offset, (1 << run) - 1, run)
                ones -= run
            offset = write_uint(stream, offset, remainder, b + 1)     # the zero, then r
        previous = positions[j]
    return offset


@_jit
def golomb_rice_encode(positions, b):
    """Golomb-Rice code of sorted positions.

    Parameters
    ----------
    positions : (n,) int64
        Strictly increasing, non-negative.
    b : int
        Rice parameter, 0 <= b <= 62.

    Returns
    -------
    stream : (ceil(n_bits / 8),) uint8
        The code, most significant bit first, zero-padded to a whole byte.
    n_bits : int
        Its length in bits (= :func:`golomb_rice_bits`).
    """
    n_bits = golomb_rice_bits(positions, b)
    stream = np.zeros((n_bits + 7) // 8, np.uint8)
    golomb_rice_encode_into(positions, b, stream, 0)
    return stream, n_bits


def golomb_rice_encode_numpy(positions, b):
    """NumPy twin of :func:`golomb_rice_encode` (builds the bit array with vectorized index arithmetic)."""
    n_bits = golomb_rice_bits_numpy(positions, b)
    gaps = np.diff(np.asarray(positions, np.int64), prepend=-1)
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
def golomb_rice_decode_from(stream, bit_offset, bit_end, count, b, positions_out):
    """Read ``count`` Golomb-Rice coded positions from ``stream`` starting at ``bit_offset``, never past
    ``bit_end``, into ``positions_out[:count]``. Returns the offset after the code."""
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
                raise ValueError("Golomb-Rice stream ends before the last position")
            bit = _get_bit(stream, offset)
            offset += 1
            if bit == 0:
                break
            quotient += 1
        if offset + b > bit_end:
            raise ValueError("Golomb-Rice stream ends before the last position")
        remainder = read_uint(stream, offset, b)
        offset += b
        previous = previous + (quotient << b) + remainder + 1
        positions_out[j] = previous
    return offset


@_jit
def golomb_rice_decode(stream, n_bits, count, b):
    """Inverse of :func:`golomb_rice_encode`: ``count`` positions (int64) from the first ``n_bits`` bits."""
    positions = np.empty(count, np.int64)
    golomb_rice_decode_from(stream, 0, n_bits, count, b, positions)
    return positions


def golomb_rice_decode_numpy(stream, n_bits, count, b):
    """NumPy twin of :func:`golomb_rice_decode` (a plain loop over ``np.unpackbits``)."""
    _check_parameter(b)
    bits = np.unpackbits(np.asarray(stream, np.uint8))[:n_bits]
    positions = np.empty(count, np.int64)
    offset = 0
    previous = -1
    for j in range(count):
        zero = np.flatnonzero(bits[offset:] == 0)
        if zero.size == 0 or offset + zero[0] + 1 + b > n_bits:
            raise ValueError("Golomb-Rice stream ends before the last position")
        quotient = int(zero[0])
        offset += quotient + 1
        remainder = 0
        for bit in bits[offset:offset + b]:
            remainder = 2 * remainder + int(bit)
        offset += b
        previous += quotient * 2 ** b + remainder + 1
        positions[j] = previous
    return positions


# ----------------------------------------------------------------------------------------------------
# Sign bits
# ----------------------------------------------------------------------------------------------------

@_jit
def write_uints(stream, bit_offset, values, width):
    """Write each of ``values`` (integers; their low ``width`` bits) as a ``width``-bit field, in order.
    Returns the offset after them. Used for IEEE bit patterns of floats (viewed as integers)."""
    offset = bit_offset
    for j in range(values.shape[0]):
        offset = write_uint(stream, offset, values[j], width)
    return offset


@_jit
def read_uints(stream, bit_offset, width, values_out):
    """Read ``len(values_out)`` fields of ``width`` bits into ``values_out`` (an integer array wide
    enough: uint32 for 32-bit fields, int64 for 64-bit ones). Returns the offset after them."""
    offset = bit_offset
    for j in range(values_out.shape[0]):
        values_out[j] = read_uint(stream, offset, width)
        offset += width
    return offset


@_jit
def pack_signs_into(signs, stream, bit_offset):
    """Write one bit per sign (1 for -1, 0 for +1) from ``bit_offset``; returns the offset after them."""
    for j in range(signs.shape[0]):
        value = signs[j]
        if value != 1 and value != -1:
            raise ValueError("only signs +1 and -1 can be packed")
        _put_bit(stream, bit_offset + j, value < 0)
    return bit_offset + signs.shape[0]


@_jit
def unpack_signs_from(stream, bit_offset, count, signs_out):
    """Read ``count`` sign bits from ``bit_offset`` into ``signs_out`` (int8 +-1); returns the end offset."""
    if bit_offset + count > stream.shape[0] * 8:
        raise ValueError("bit stream ends before the last sign bit")
    for j in range(count):
        signs_out[j] = -1 if _get_bit(stream, bit_offset + j) else 1
    return bit_offset + count


@_jit
def pack_signs(signs):
    """Signs (+-1, any integer dtype) as a bit stream: bit 1 for -1; equals ``np.packbits(signs < 0)``."""
    stream = np.zeros((signs.shape[0] + 7) // 8, np.uint8)
    pack_signs_into(signs, stream, 0)
    return stream


def pack_signs_numpy(signs):
    """NumPy twin of :func:`pack_signs`."""
    signs = np.asarray(signs)
    if np.any((signs != 1) & (signs != -1)):
        raise ValueError("only signs +1 and -1 can be packed")
    return np.packbits(signs < 0)


@_jit
def unpack_signs(stream, count):
    """Inverse of :func:`pack_signs`: ``count`` int8 signs (+-1)."""
    signs = np.empty(count, np.int8)
    unpack_signs_from(stream, 0, count, signs)
    return signs


def unpack_signs_numpy(stream, count):
    """NumPy twin of :func:`unpack_signs`."""
    bits = np.unpackbits(np.asarray(stream, np.uint8), count=count)
    if bits.size < count:
        raise ValueError("bit stream ends before the last sign bit")
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


# ----------------------------------------------------------------------------------------------------
# Message sizes (the formats are described in fedsim.compress.base)
# ----------------------------------------------------------------------------------------------------

# Width of the count field that starts every sparse segment and every sign segment.
COUNT_BITS = 32


@_jit
def sparse_segment_bits(local_positions, size, bits_per_entry, trailer_bits):
    """Encoded bits of one sparse segment: 32-bit count + Golomb-Rice positions (b* from count / size)
    + ``bits_per_entry`` per kept entry + ``trailer_bits`` (the mean, if any entry is kept)."""
    count = local_positions.shape[0]
    total = COUNT_BITS + golomb_rice_bits(local_positions, rice_parameter(count, size))
    total += count * bits_per_entry
    if count > 0:
        total += trailer_bits
    return total
