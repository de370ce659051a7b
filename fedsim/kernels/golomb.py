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

Arguments
---------
The public kernels check their arguments in plain Python before any jitted code runs
(:mod:`fedsim.kernels.checks`): streams are C-contiguous 1-D uint8 arrays (writable where written),
bit offsets are integers >= 0 and every field, code or sign bit must lie inside the stream, outputs must
be long enough, widths are in [0, 64] and the Rice parameter in [0, 62]; a violation raises ValueError
(TypeError for a wrong type or dtype) naming the argument. The jitted cores ``_<name>_core`` behind
them trust their arguments (jitted code that calls a public name compiles to its core).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS, checks
from fedsim.kernels.checks import checked

_jit = numba.njit(**JIT_OPTIONS)

# ln(phi - 1) with phi the golden ratio: ln((sqrt(5) - 1) / 2).
LOG_GOLDEN_CONJUGATE = math.log((math.sqrt(5.0) - 1.0) / 2.0)
# Largest Rice parameter (gaps are int64 values below 2^63).
MAX_RICE_PARAMETER = 62
# Largest segment size whose message length is computed (kept far from int64 overflow: 64 bits per
# entry for 2^56 entries is 2^62 bits).
MAX_SEGMENT_SIZE = 1 << 56
# Widest fixed-width field.
MAX_FIELD_BITS = 64

FIELD_MESSAGE = "bit stream ends inside a fixed-width field"
SIGNS_MESSAGE = "bit stream ends before the last sign bit"
GOLOMB_END_MESSAGE = "Golomb-Rice stream ends before the last position"


# ----------------------------------------------------------------------------------------------------
# Argument checks shared by the kernels and their twins
# ----------------------------------------------------------------------------------------------------

def _parameter(b):
    """The Rice parameter as an int in [0, 62]."""
    return checks.integer("Golomb-Rice parameter b", b, 0, MAX_RICE_PARAMETER)


def _width(width):
    return checks.integer("width", width, 0, MAX_FIELD_BITS)


def _bit_offset(bit_offset, name="bit_offset"):
    return checks.integer(name, bit_offset, 0, checks.COUNT_MAX)


def _stream(stream, writable=False):
    return checks.array("stream", stream, checks.UINT8, 1, writable)


def _integers(name, values, writable=False):
    return checks.array(name, values, checks.INTEGER, 1, writable)


def _field_value(value, width):
    """``value`` as the int64 the core writes: in [0, 2^width), or for a 64-bit field any integer in
    [-2^63, 2^64) (an int64 or uint64 bit pattern; returned as the int64 with that pattern)."""
    if width == MAX_FIELD_BITS:
        value = checks.integer("value", value, -(1 << 63), (1 << 64) - 1)
        return value - (1 << 64) if value > checks.INT64_MAX else value
    return checks.integer("value", value, 0, (1 << width) - 1)


def _signs_fit(stream, bit_offset, count):
    checks.bits_fit("stream", stream, bit_offset, count, SIGNS_MESSAGE)


# ----------------------------------------------------------------------------------------------------
# Rice parameter
# ----------------------------------------------------------------------------------------------------

@_jit
def _rice_parameter_core(count, size):
    """:func:`rice_parameter` without the argument checks (it still rejects count outside [0, size])."""
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


@checked(_rice_parameter_core)
def rice_parameter(count, size):
    """b* for ``count`` kept positions out of ``size`` (density q' = count / size); 0 if count is 0.

    b* = max(0, min(62, 1 + floor(log2(ln(phi - 1) / ln(1 - q'))))). Integers, 0 <= count <= size < 2^63.
    """
    size = checks.integer("size", size)
    return checks.integer("count", count, 0, size), size


def rice_parameter_numpy(count, size):
    """NumPy twin of :func:`rice_parameter`."""
    count, size = rice_parameter.check(count, size)
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
def _write_uint_core(stream, bit_offset, value, width):
    """:func:`write_uint` without the argument checks.

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


@checked(_write_uint_core)
def write_uint(stream, bit_offset, value, width):
    """Write ``value`` (0 <= value < 2^width, width <= 64) in ``width`` bits at ``bit_offset``, most
    significant first. Returns the offset after it. A 64-bit field takes the value's int64 bit pattern
    (any integer in [-2^63, 2^64)). The field must lie inside ``stream`` (writable uint8)."""
    _stream(stream, writable=True)
    bit_offset = _bit_offset(bit_offset)
    width = _width(width)
    checks.bits_fit("stream", stream, bit_offset, width)
    return stream, bit_offset, _field_value(value, width), width


@_jit
def _read_uint_core(stream, bit_offset, width):
    """:func:`read_uint` without the argument checks (it still rejects a field past the stream's end)."""
    if bit_offset + width > stream.shape[0] * 8:
        raise ValueError(FIELD_MESSAGE)
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


@checked(_read_uint_core)
def read_uint(stream, bit_offset, width):
    """Read a ``width``-bit field (0 <= width <= 64, most significant first) at ``bit_offset``; returns
    it as int64 (a 64-bit field comes back as the same int64 bit pattern that :func:`write_uint` took)."""
    _stream(stream)
    bit_offset = _bit_offset(bit_offset)
    width = _width(width)
    checks.bits_fit("stream", stream, bit_offset, width, FIELD_MESSAGE)
    return stream, bit_offset, width


# ----------------------------------------------------------------------------------------------------
# Golomb-Rice code of positions
# ----------------------------------------------------------------------------------------------------

@_jit
def _golomb_rice_bits_core(positions, b):
    """:func:`golomb_rice_bits` without the argument checks (it still checks b and the positions)."""
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


@checked(_golomb_rice_bits_core)
def golomb_rice_bits(positions, b):
    """Exact length in bits of the Golomb-Rice code of ``positions`` (int64, strictly increasing,
    non-negative; sum of q + 1 + b over the gaps), equal to the encoder's ``n_bits``, computed without
    encoding."""
    return checks.array("positions", positions, checks.INT64), _parameter(b)


def golomb_rice_bits_numpy(positions, b):
    """NumPy twin of :func:`golomb_rice_bits`."""
    positions, b = golomb_rice_bits.check(positions, b)
    gaps = np.diff(positions, prepend=-1)
    if np.any(gaps < 1):
        raise ValueError("positions must be non-negative and strictly increasing")
    return int(np.sum(((gaps - 1) >> b) + 1 + b))


@_jit
def _golomb_rice_encode_into_core(positions, b, stream, bit_offset):
    """:func:`golomb_rice_encode_into` without the argument checks."""
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


@checked(_golomb_rice_encode_into_core)
def golomb_rice_encode_into(positions, b, stream, bit_offset):
    """Write the Golomb-Rice code of ``positions`` into ``stream`` from ``bit_offset`` (the stream must
    be long enough: :func:`golomb_rice_bits` tells how much, and is computed here to check it: one pass
    over the positions). Returns the offset after the code."""
    checks.array("positions", positions, checks.INT64)
    b = _parameter(b)
    _stream(stream, writable=True)
    bit_offset = _bit_offset(bit_offset)
    checks.bits_fit("stream", stream, bit_offset, _golomb_rice_bits_core(positions, b))
    return positions, b, stream, bit_offset


@_jit
def _golomb_rice_encode_core(positions, b):
    """:func:`golomb_rice_encode` without the argument checks."""
    n_bits = _golomb_rice_bits_core(positions, b)
    stream = np.zeros((n_bits + 7) // 8, np.uint8)
    _golomb_rice_encode_into_core(positions, b, stream, 0)
    return stream, n_bits


@checked(_golomb_rice_encode_core)
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
    return checks.array("positions", positions, checks.INT64), _parameter(b)


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
    """:func:`golomb_rice_decode_from` without the argument checks (it still never reads past
    ``bit_end`` and rejects a ``bit_end`` beyond the stream)."""
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


def _check_decode(stream, bit_offset, bit_end, count, b, end_name="bit_end"):
    """(bit_offset, bit_end, count, b) of a decode: 0 <= bit_offset <= bit_end <= 8 len(stream), and
    room for ``count`` code words of at least 1 + b bits each (``end_name``: what the caller calls
    ``bit_end``)."""
    _stream(stream)
    b = _parameter(b)
    bit_end = checks.integer(end_name, bit_end, 0, 8 * stream.shape[0])
    bit_offset = checks.integer("bit_offset", bit_offset, 0, bit_end)
    count = checks.integer("count", count)
    if count * (b + 1) > bit_end - bit_offset:
        raise ValueError(GOLOMB_END_MESSAGE)
    return bit_offset, bit_end, count, b


@checked(_golomb_rice_decode_from_core)
def golomb_rice_decode_from(stream, bit_offset, bit_end, count, b, positions_out):
    """Read ``count`` Golomb-Rice coded positions from ``stream`` starting at ``bit_offset``, never past
    ``bit_end`` (0 <= bit_offset <= bit_end <= 8 len(stream)), into ``positions_out[:count]`` (int64,
    at least ``count`` entries). Returns the offset after the code."""
    bit_offset, bit_end, count, b = _check_decode(stream, bit_offset, bit_end, count, b)
    checks.output("positions_out", positions_out, checks.INT64, count)
    return stream, bit_offset, bit_end, count, b, positions_out


@_jit
def _golomb_rice_decode_core(stream, n_bits, count, b):
    """:func:`golomb_rice_decode` without the argument checks."""
    positions = np.empty(count, np.int64)
    _golomb_rice_decode_from_core(stream, 0, n_bits, count, b, positions)
    return positions


@checked(_golomb_rice_decode_core)
def golomb_rice_decode(stream, n_bits, count, b):
    """Inverse of :func:`golomb_rice_encode`: ``count`` positions (int64) from the first ``n_bits`` bits
    (``n_bits <= 8 len(stream)``)."""
    _, n_bits, count, b = _check_decode(stream, 0, n_bits, count, b, "n_bits")
    return stream, n_bits, count, b


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


# ----------------------------------------------------------------------------------------------------
# Sign bits
# ----------------------------------------------------------------------------------------------------

@_jit
def _write_uints_core(stream, bit_offset, values, width):
    """:func:`write_uints` without the argument checks."""
    offset = bit_offset
    for j in range(values.shape[0]):
        offset = _write_uint_core(stream, offset, values[j], width)
    return offset


@checked(_write_uints_core)
def write_uints(stream, bit_offset, values, width):
    """Write each of ``values`` (a 1-D integer array; their low ``width`` bits, 0 <= width <= 64) as a
    ``width``-bit field, in order. Returns the offset after them. Used for IEEE bit patterns of floats
    (viewed as integers). All fields must lie inside ``stream``."""
    _stream(stream, writable=True)
    bit_offset = _bit_offset(bit_offset)
    _integers("values", values)
    width = _width(width)
    checks.bits_fit("stream", stream, bit_offset, values.shape[0] * width)
    return stream, bit_offset, values, width


@_jit
def _read_uints_core(stream, bit_offset, width, values_out):
    """:func:`read_uints` without the argument checks."""
    offset = bit_offset
    for j in range(values_out.shape[0]):
        values_out[j] = _read_uint_core(stream, offset, width)
        offset += width
    return offset


@checked(_read_uints_core)
def read_uints(stream, bit_offset, width, values_out):
    """Read ``len(values_out)`` fields of ``width`` bits into ``values_out`` (an integer array wide
    enough: an unsigned type of at least ``width`` bits, e.g. uint32 for 32-bit fields, or a signed type
    of more than ``width`` bits, or int64 for 64-bit fields). Returns the offset after them."""
    _stream(stream)
    bit_offset = _bit_offset(bit_offset)
    width = _width(width)
    _integers("values_out", values_out, writable=True)
    held = 8 * values_out.dtype.itemsize
    if not (held >= width if values_out.dtype.kind == "u" else held > width or held == width == 64):
        raise TypeError(f"values_out of dtype {values_out.dtype} cannot hold {width}-bit fields")
    checks.bits_fit("stream", stream, bit_offset, values_out.shape[0] * width, FIELD_MESSAGE)
    return stream, bit_offset, width, values_out


@_jit
def _pack_signs_into_core(signs, stream, bit_offset):
    """:func:`pack_signs_into` without the argument checks (it still rejects signs other than +-1)."""
    for j in range(signs.shape[0]):
        value = signs[j]
        if value != 1 and value != -1:
            raise ValueError("only signs +1 and -1 can be packed")
        _put_bit(stream, bit_offset + j, value < 0)
    return bit_offset + signs.shape[0]


@checked(_pack_signs_into_core)
def pack_signs_into(signs, stream, bit_offset):
    """Write one bit per sign (``signs``: 1-D integers +-1; bit 1 for -1, 0 for +1) from ``bit_offset``;
    returns the offset after them. The bits must lie inside ``stream``."""
    _integers("signs", signs)
    _stream(stream, writable=True)
    bit_offset = _bit_offset(bit_offset)
    _signs_fit(stream, bit_offset, signs.shape[0])
    return signs, stream, bit_offset


@_jit
def _unpack_signs_from_core(stream, bit_offset, count, signs_out):
    """:func:`unpack_signs_from` without the argument checks (it still checks the stream's length)."""
    if bit_offset + count > stream.shape[0] * 8:
        raise ValueError(SIGNS_MESSAGE)
    for j in range(count):
        signs_out[j] = -1 if _get_bit(stream, bit_offset + j) else 1
    return bit_offset + count


@checked(_unpack_signs_from_core)
def unpack_signs_from(stream, bit_offset, count, signs_out):
    """Read ``count`` sign bits from ``bit_offset`` into ``signs_out`` (int8 +-1, at least ``count``
    entries); returns the end offset."""
    _stream(stream)
    bit_offset = _bit_offset(bit_offset)
    count = checks.integer("count", count, 0, checks.COUNT_MAX)
    _signs_fit(stream, bit_offset, count)
    checks.output("signs_out", signs_out, checks.INT8, count)
    return stream, bit_offset, count, signs_out


@_jit
def _pack_signs_core(signs):
    """:func:`pack_signs` without the argument checks."""
    stream = np.zeros((signs.shape[0] + 7) // 8, np.uint8)
    _pack_signs_into_core(signs, stream, 0)
    return stream


@checked(_pack_signs_core)
def pack_signs(signs):
    """Signs (+-1, a 1-D array of any integer dtype) as a bit stream: bit 1 for -1; equals
    ``np.packbits(signs < 0)``."""
    return (_integers("signs", signs),)


def pack_signs_numpy(signs):
    """NumPy twin of :func:`pack_signs`."""
    (signs,) = pack_signs.check(signs)
    if np.any((signs != 1) & (signs != -1)):
        raise ValueError("only signs +1 and -1 can be packed")
    return np.packbits(signs < 0)


@_jit
def _unpack_signs_core(stream, count):
    """:func:`unpack_signs` without the argument checks."""
    signs = np.empty(count, np.int8)
    _unpack_signs_from_core(stream, 0, count, signs)
    return signs


@checked(_unpack_signs_core)
def unpack_signs(stream, count):
    """Inverse of :func:`pack_signs`: ``count`` int8 signs (+-1), ``count <= 8 len(stream)``."""
    _stream(stream)
    count = checks.integer("count", count, 0, checks.COUNT_MAX)
    _signs_fit(stream, 0, count)
    return stream, count


def unpack_signs_numpy(stream, count):
    """NumPy twin of :func:`unpack_signs`."""
    stream, count = unpack_signs.check(stream, count)
    bits = np.unpackbits(stream, count=count)
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


# ----------------------------------------------------------------------------------------------------
# Message sizes (the formats are described in fedsim.compress.base)
# ----------------------------------------------------------------------------------------------------

# Width of the count field that starts every sparse segment and every sign segment.
COUNT_BITS = 32


@_jit
def _sparse_segment_bits_core(local_positions, size, bits_per_entry, trailer_bits):
    """:func:`sparse_segment_bits` without the argument checks."""
    count = local_positions.shape[0]
    total = COUNT_BITS + _golomb_rice_bits_core(local_positions, _rice_parameter_core(count, size))
    total += count * bits_per_entry
    if count > 0:
        total += trailer_bits
    return total


@checked(_sparse_segment_bits_core)
def sparse_segment_bits(local_positions, size, bits_per_entry, trailer_bits):
    """Encoded bits of one sparse segment: 32-bit count + Golomb-Rice positions (b* from count / size)
    + ``bits_per_entry`` per kept entry + ``trailer_bits`` (the mean, if any entry is kept).

    ``local_positions``: int64, strictly increasing, in [0, size); ``size`` <= 2^56; the two widths are
    integers in [0, 64]."""
    checks.array("local_positions", local_positions, checks.INT64)
    size = checks.integer("size", size, 0, MAX_SEGMENT_SIZE)
    count = local_positions.shape[0]
    if count > size:
        raise ValueError(f"local_positions holds {count} positions, more than the segment's {size} entries")
    if count and local_positions[-1] >= size:       # (the core checks that the positions increase)
        raise ValueError(f"local_positions must lie in [0, {size}), got {int(local_positions[-1])}")
    bits_per_entry = checks.integer("bits_per_entry", bits_per_entry, 0, MAX_FIELD_BITS)
    trailer_bits = checks.integer("trailer_bits", trailer_bits, 0, MAX_FIELD_BITS)
    return local_positions, size, bits_per_entry, trailer_bits
