"""Bit streams: single bits, fixed-width fields and sign bits (the primitives of every encoded message).

Bit order
---------
A stream is a uint8 array; stream bit ``t`` is bit ``7 - t % 8`` of byte ``t // 8`` (most significant bit
first, the order of ``np.packbits`` / ``np.unpackbits`` with their default ``bitorder="big"``). Multi-bit
fields are written most significant bit first. Bits after the last written one are zero.

Sign bits
---------
One bit per sign: 1 for a negative sign (-1), 0 for a positive one (+1), like an IEEE sign bit; so
``pack_signs_into(s, stream, 0)`` writes ``np.packbits(s < 0)``. Only +-1 can be packed: zeros need a
separate code (the sign compressor's message format, :mod:`fedsim.compress.sign`).
"""

from __future__ import annotations

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS, checks
from fedsim.kernels.checks import Array, Count, Stream, checked

_jit = numba.njit(**JIT_OPTIONS)

# Widest fixed-width field.
MAX_FIELD_BITS = 64

FIELD_MESSAGE = "bit stream ends inside a fixed-width field"
SIGNS_MESSAGE = "bit stream ends before the last sign bit"


class _FieldValue(Count):
    """The value of a ``width``-bit field: in [0, 2^width), or for a 64-bit field any integer in
    [-2^63, 2^64) (an int64 or uint64 bit pattern; passed on as the int64 with that pattern)."""

    def __init__(self):
        super().__init__(low=lambda width: -(1 << 63) if width == MAX_FIELD_BITS else 0,
                         high=lambda width: (1 << MAX_FIELD_BITS) - 1 if width == MAX_FIELD_BITS else
                         (1 << width) - 1)

    def check(self, name, value, values):
        value = super().check(name, value, values)
        return value - (1 << 64) if value > checks.INT64_MAX else value


BIT_OFFSET = Count(0, checks.COUNT_MAX)
# A read from a stream that stops at bit_end: 0 <= bit_offset <= bit_end <= 8 len(stream)
STREAM = Array(checks.UINT8)
BIT_END = Count(0, high=lambda stream: 8 * stream.shape[0])
BIT_OFFSET_TO_END = Count(0, high="bit_end")
WIDTH = Count(0, MAX_FIELD_BITS)
COUNT = Count(0, checks.COUNT_MAX)
INTEGERS = Array(checks.INTEGER)


def _holds_fields(width, values_out):
    """values_out's integer dtype holds ``width``-bit fields."""
    held = 8 * values_out.dtype.itemsize
    if not (held >= width if values_out.dtype.kind == "u" else held > width or held == width == 64):
        raise TypeError(f"values_out of dtype {values_out.dtype} cannot hold {width}-bit fields")


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
    """Each byte the field touches is masked and merged once (bits around the field keep their values)."""
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


@checked(_write_uint_core, stream=Stream(output=True, start="bit_offset", bits="width"),
         bit_offset=BIT_OFFSET, value=_FieldValue(), width=WIDTH)
def write_uint(stream, bit_offset, value, width):
    """Write ``value`` (in [0, 2^width); for width 64 any integer in [-2^63, 2^64), as its int64 bit
    pattern) in ``width`` bits at ``bit_offset``, most significant first; returns the offset after it."""


@_jit
def _read_uint_core(stream, bit_offset, width):
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


@checked(_read_uint_core, stream=Stream(start="bit_offset", bits="width", message=FIELD_MESSAGE),
         bit_offset=BIT_OFFSET, width=WIDTH)
def read_uint(stream, bit_offset, width):
    """The ``width``-bit field at ``bit_offset`` as int64 (a 64-bit field: the bit pattern
    :func:`write_uint` took)."""


@_jit
def _write_uints_core(stream, bit_offset, values, width):
    offset = bit_offset
    for j in range(values.shape[0]):
        offset = _write_uint_core(stream, offset, values[j], width)
    return offset


@checked(_write_uints_core, bit_offset=BIT_OFFSET, values=INTEGERS, width=WIDTH,
         stream=Stream(output=True, start="bit_offset", bits=lambda values, width: values.shape[0] * width))
def write_uints(stream, bit_offset, values, width):
    """Write the low ``width`` bits of each of ``values`` as a field, in order (IEEE bit patterns of
    floats viewed as integers); returns the offset after them."""


@_jit
def _read_uints_core(stream, bit_offset, width, values_out):
    offset = bit_offset
    for j in range(values_out.shape[0]):
        values_out[j] = _read_uint_core(stream, offset, width)
        offset += width
    return offset


@checked(_read_uints_core, extra=_holds_fields, bit_offset=BIT_OFFSET, width=WIDTH,
         values_out=Array(checks.INTEGER, output=True),
         stream=Stream(start="bit_offset", bits=lambda width, values_out: values_out.shape[0] * width,
                       message=FIELD_MESSAGE))
def read_uints(stream, bit_offset, width, values_out):
    """Read ``len(values_out)`` fields of ``width`` bits into ``values_out`` (unsigned of at least
    ``width`` bits, signed of more, or int64 for 64); returns the offset after them."""


@_jit
def _pack_signs_into_core(signs, stream, bit_offset):
    for j in range(signs.shape[0]):
        value = signs[j]
        if value != 1 and value != -1:
            raise ValueError("only signs +1 and -1 can be packed")
        _put_bit(stream, bit_offset + j, value < 0)
    return bit_offset + signs.shape[0]


@checked(_pack_signs_into_core, signs=INTEGERS,
         stream=Stream(output=True, start="bit_offset", bits="signs", message=SIGNS_MESSAGE),
         bit_offset=BIT_OFFSET)
def pack_signs_into(signs, stream, bit_offset):
    """Write one bit per sign (+-1) from ``bit_offset``; returns the offset after them."""


@_jit
def _unpack_signs_from_core(stream, bit_offset, count, signs_out):
    if bit_offset + count > stream.shape[0] * 8:
        raise ValueError(SIGNS_MESSAGE)
    for j in range(count):
        signs_out[j] = -1 if _get_bit(stream, bit_offset + j) else 1
    return bit_offset + count


@checked(_unpack_signs_from_core, stream=Stream(start="bit_offset", bits="count", message=SIGNS_MESSAGE),
         bit_offset=BIT_OFFSET, count=COUNT, signs_out=Array(checks.INT8, output=True, at_least="count"))
def unpack_signs_from(stream, bit_offset, count, signs_out):
    """Read ``count`` sign bits from ``bit_offset`` into ``signs_out`` (int8 +-1); returns the end offset."""
