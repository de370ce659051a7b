"""The Elias omega code of positive integers (QSGD's "Elias recursive coding", arXiv 1610.02132).

Elias omega code (the paper's "Elias recursive coding")
---------------------------------------------------------
A positive integer k is written as: the binary digits of k preceded by the omega code of (its number of
binary digits - 1), recursively, down to a group "1x"; a single 0 ends the code. Procedure: code = "0";
while k > 1: code = binary(k) + code; k = bit_length(k) - 1. Examples: 1 -> ``0``, 2 -> ``100``,
3 -> ``110``, 4 -> ``101000``, 16 -> ``10100100000``. Length: ``B(1) = 1``,
``B(k) = bit_length(k) + B(bit_length(k) - 1)``: it depends on the bit length alone (``OMEGA_BITS``).
Decoding starts from n = 1: read a bit; 0 ends with the value n; 1 starts a group of n + 1 bits (that 1
and n more) whose value becomes the new n. Fields are written most significant bit first, in the bit
order of :mod:`fedsim.kernels.bitstream`.

Private helpers of the QSGD kernels (:mod:`fedsim.kernels.qsgd`), checked and tested alone.
"""

from __future__ import annotations

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS
from fedsim.kernels.bitstream import (BIT_END, BIT_OFFSET, BIT_OFFSET_TO_END, STREAM, _get_bit, _read_uint_core,
                                     _write_uint_core)
from fedsim.kernels.checks import Count, Stream, checked

_jit = numba.njit(**JIT_OPTIONS)

# Largest integer the Elias omega coder takes (a group of at most 63 bits).
MAX_OMEGA_VALUE = (1 << 62) - 1
OMEGA_RANGE_MESSAGE = "Elias omega codes integers in [1, 2^62)"


def _omega_bits_table() -> np.ndarray:
    """OMEGA_BITS[L]: bits of the omega code of any integer of bit length L (1 <= L <= 63)."""
    table = np.zeros(64, np.int64)
    table[1] = 1
    for length in range(2, 64):
        table[length] = length + table[(length - 1).bit_length()]
    return table


BYTE_BIT_LENGTH = np.array([value.bit_length() for value in range(256)], np.int64)
OMEGA_BITS = _omega_bits_table()
# The omega code length of every value below 256 (index 0 unused: 0).
OMEGA_BITS_SMALL = OMEGA_BITS[BYTE_BIT_LENGTH]


class _OmegaValue(Count):
    """A value the omega code carries: an int in [1, 2^62) (TypeError for a non-integer, ValueError with
    the code's range out of range)."""

    def __init__(self):
        super().__init__(1, MAX_OMEGA_VALUE)

    def check(self, name, value, values=None):
        try:
            return super().check(name, value, values)
        except ValueError as error:
            raise ValueError(f"{OMEGA_RANGE_MESSAGE}: {error}") from None


OMEGA_VALUE = _OmegaValue()


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
def _elias_omega_bits_core(value):
    if value < 1 or value > MAX_OMEGA_VALUE:
        raise ValueError(OMEGA_RANGE_MESSAGE)
    return _omega_bits_unchecked(value)


@checked(_elias_omega_bits_core, value=OMEGA_VALUE)
def _elias_omega_bits(value):
    """Bits of the Elias omega code of ``value`` (an integer in [1, 2^62))."""


def _elias_omega_bits_numpy(values):
    """NumPy twin of :func:`_elias_omega_bits`, elementwise (an integer, or an integer array or list)."""
    if isinstance(values, (np.ndarray, list, tuple)):
        values = np.asarray(values)
        if values.dtype.kind not in "iu" and values.size:
            raise TypeError(f"values must be integers, got dtype {values.dtype}")
        if values.size and (values.min() < 1 or values.max() > MAX_OMEGA_VALUE):
            raise ValueError(OMEGA_RANGE_MESSAGE)
        values = values.astype(np.int64)
    else:
        values = np.int64(OMEGA_VALUE.check("value", values))
    # bit length = the frexp exponent of float64(value); above 2^53 the conversion may round a value up
    # to the next power of two, which the comparison corrects
    exponent = np.frexp(values.astype(np.float64))[1].astype(np.int64)
    exponent -= (np.left_shift(np.int64(1), exponent - 1) > values)
    return OMEGA_BITS[exponent]


@_jit
def _write_elias_omega_core(stream, bit_offset, value):
    """The groups are placed from the end backwards (the terminating 0 last), so no group list is needed."""
    total = _elias_omega_bits_core(value)
    position = bit_offset + total - 1
    _write_uint_core(stream, position, np.int64(0), np.int64(1))
    group = value
    while group > 1:
        width = _bit_length(group)
        position -= width
        _write_uint_core(stream, position, group, width)
        group = width - 1
    return bit_offset + total


@checked(_write_elias_omega_core, stream=Stream(output=True, start="bit_offset", bits=_omega_bits_unchecked),
         bit_offset=BIT_OFFSET, value=OMEGA_VALUE)
def _write_elias_omega(stream, bit_offset, value):
    """Write the omega code of ``value`` (an integer in [1, 2^62)) at ``bit_offset``; returns the offset
    after it. The code must lie inside ``stream`` (writable uint8)."""


@_jit
def _read_elias_omega_core(stream, bit_offset, bit_end):
    value = np.int64(1)
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
        value = (np.int64(1) << width) | _read_uint_core(stream, offset, width)
        offset += width


@checked(_read_elias_omega_core, stream=STREAM, bit_offset=BIT_OFFSET_TO_END, bit_end=BIT_END)
def _read_elias_omega(stream, bit_offset, bit_end):
    """Read one omega code at ``bit_offset``, never past ``bit_end`` (0 <= bit_offset <= bit_end <=
    8 len(stream)): (value, offset after it)."""
