"""Kernels of TernGrad (Wen et al., arXiv 1705.07878): stochastic ternarization and the base-3 code.

Ternarization
-------------
:func:`terngrad_batch` ternarizes every row of a (K, P) batch segment by segment (a segment is one
parameter tensor, the paper's layer-wise scaling, or the whole vector). For a segment ``x`` of N entries
(float32 or float64), a clipping factor ``c >= 0`` and N float64 uniforms ``u_i`` in [0, 1) drawn by the
caller::

    mean  = (sum_i float64(x_i)) / N                       sequential float64 sums, in index order
    var   = (sum_i (float64(x_i) - mean)^2) / N            (population variance)
    sigma = sqrt(var)
    b     = dtype(c * sigma)           if c > 0 and that is > 0;  +inf otherwise (no clipping)
    m_i   = min(|x_i|, b)              magnitude after clipping to [-b, b] (exact, in the dtype)
    s     = max_i m_i = min(max_i |x_i|, b)                the segment's scale (0 for an empty segment)
    r_i   = float64(m_i) / float64(s)                      one correctly rounded float64 division
    keep  = u_i < r_i                                      Bernoulli(r_i) (never where s = 0)
    out_i = +s if keep and x_i >= 0;  -s if keep and x_i < 0;  +0.0 otherwise

So ``E[out_i] = sign(x_i) m_i``, the clipped entry, up to the rounding of ``r_i`` and the 2^-53 grid of the
uniforms; the largest magnitude is always kept. A segment with ``s = 0`` sends zeros and consumes its
uniforms like any other. A constant segment (sigma = 0, also a single entry) is not clipped: clipping it to
[0, 0] would erase it. For float64 data so large that a sum overflows, sigma is inf and nothing is clipped.
Maxima and minima are exact in any order.

Base-3 code of ternary symbols
------------------------------
Each entry is one ternary digit ``d_i``: 0 for 0, 1 for +s, 2 for -s. Groups of five consecutive digits
form one value ``v = d_0 + 3 d_1 + 9 d_2 + 27 d_3 + 81 d_4 <= 242`` written in 8 bits (3^5 = 243 <= 256:
1.6 bits per entry against log2(3) = 1.585). A last group of ``r = N mod 5`` digits is written in
``REMAINDER_BITS[r] = ceil(log2(3^r))`` = 2, 4, 5, 7 bits. Fields are most significant bit first
(:mod:`fedsim.kernels.bitstream`); N digits take ``8 floor(N / 5) + REMAINDER_BITS[N mod 5]`` bits
(:func:`_ternary_code_bits`). The decoder rejects a group value >= 3^r.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import overload

from fedsim.kernels import JIT_OPTIONS, checks
from fedsim.kernels.checks import Array, Flag, Real, Stream, checked
from fedsim.kernels.bitstream import COUNT, FIELD_MESSAGE, INTEGERS, _read_uint_core, _write_uint_core
from fedsim.kernels.selection import NONFINITE_MESSAGE, _round_to_dtype

_jit = numba.njit(**JIT_OPTIONS)

# Ternary digits per packed group, and the bits of a full group.
GROUP = 5
GROUP_BITS = 8
# Bits of a last group of r = 0..4 digits: ceil(log2(3^r)).
REMAINDER_BITS = (0, 2, 4, 5, 7)
# 3^r for r = 0..5 (a group of r digits must hold a value below 3^r).
POWERS_OF_THREE = (1, 3, 9, 27, 81, 243)


# --- Sizes ----------------------------------------------------------------------------------------

@_jit
def _ternary_code_bits(count):
    """Bits of the base-3 code of ``count`` digits: 8 floor(count / 5) + REMAINDER_BITS[count mod 5]."""
    return GROUP_BITS * (count // GROUP) + REMAINDER_BITS[count % GROUP]


@_jit
def _segment_bits_core(size, scale_nonzero, float_bits):
    if scale_nonzero:
        return float_bits + _ternary_code_bits(size)
    return float_bits


@checked(_segment_bits_core, size=COUNT, scale_nonzero=Flag(), float_bits=checks.FLOAT_BITS)
def segment_bits(size, scale_nonzero, float_bits):
    """Encoded bits of one TernGrad segment of ``size`` entries: the scale (``float_bits``, 32 or 64),
    then the code of its ``size`` digits unless the scale is 0 (``scale_nonzero``, a bool)."""


# --- Ternarization --------------------------------------------------------------------------------

def _max_magnitude(x):
    """(max_i |x_i| in x's dtype, whether every x_i is finite). Jitted, on the IEEE bit patterns with the
    sign bit cleared: they are ordered as the magnitudes, inf and NaN last, so one integer maximum (which
    the compiler vectorizes) gives both at once."""
    magnitudes = np.abs(x)
    largest = magnitudes.max() if x.size else x.dtype.type(0)
    return x.dtype.type(largest), bool(np.all(np.isfinite(x)))


def _max_magnitude_of(unsigned, sign_mask, infinity_pattern, float_type):
    def implementation(x):
        patterns = x.view(unsigned)
        largest = unsigned(0)
        for i in range(patterns.shape[0]):
            pattern = patterns[i] & sign_mask
            largest = pattern if pattern > largest else largest
        holder = np.empty(1, unsigned)
        holder[0] = largest
        return holder.view(float_type)[0], largest < infinity_pattern
    return implementation


@overload(_max_magnitude, jit_options=JIT_OPTIONS)
def _max_magnitude_overload(x):
    if x.dtype == types.float32:
        return _max_magnitude_of(np.uint32, np.uint32(0x7FFF_FFFF), np.uint32(0x7F80_0000), np.float32)
    if x.dtype == types.float64:
        return _max_magnitude_of(np.uint64, np.uint64(0x7FFF_FFFF_FFFF_FFFF),
                                 np.uint64(0x7FF0_0000_0000_0000), np.float64)
    return None


@_jit
def _standard_deviation(x):
    """sigma of the module docstring: sequential float64 mean and population variance (x nonempty)."""
    size = x.shape[0]
    total = 0.0
    for i in range(size):
        total += np.float64(x[i])
    mean = total / size
    squares = 0.0
    for i in range(size):
        deviation = np.float64(x[i]) - mean
        squares += deviation * deviation
    return math.sqrt(squares / size)


@_jit
def _clip_bound(x, clip):
    """b = dtype(c sigma), or +inf when c = 0 or b rounds to 0 (returned in x's dtype)."""
    if clip > 0 and x.shape[0] > 0:
        bound = _round_to_dtype(x, clip * _standard_deviation(x))
        if bound > 0:
            return bound
    return _round_to_dtype(x, np.inf)


@_jit
def _ternarize_segment(x, uniforms, clip, out):
    """Ternarize one segment into ``out`` (module docstring); returns the scale s (x's dtype)."""
    largest, finite = _max_magnitude(x)
    if not finite:
        raise ValueError(NONFINITE_MESSAGE)
    bound = _clip_bound(x, clip)
    scale = min(largest, bound)
    zero = _round_to_dtype(x, 0.0)
    if scale == 0:
        for i in range(x.shape[0]):
            out[i] = zero
        return scale
    scale64 = np.float64(scale)
    negative_scale = -scale
    for i in range(x.shape[0]):
        value = x[i]
        magnitude = min(abs(value), bound)
        keep = uniforms[i] < np.float64(magnitude) / scale64
        signed = negative_scale if value < 0 else scale
        out[i] = signed if keep else zero
    return scale


@_jit
def _terngrad_batch_core(updates, segment_offsets, uniforms, clip, float_bits, decoded_out, scales_out,
                         encoded_bits_out):
    n_rows = updates.shape[0]
    n_segments = segment_offsets.shape[0] - 1
    for row in range(n_rows):
        total_bits = 0
        for j in range(n_segments):
            start = segment_offsets[j]
            stop = segment_offsets[j + 1]
            scale = _ternarize_segment(updates[row, start:stop], uniforms[row, start:stop], clip,
                                       decoded_out[row, start:stop])
            scales_out[row, j] = scale
            total_bits += _segment_bits_core(stop - start, scale != 0, float_bits)
        encoded_bits_out[row] = total_bits


@checked(_terngrad_batch_core, updates=checks.UPDATES, segment_offsets=checks.SEGMENT_OFFSETS,
         uniforms=Array(checks.FLOAT64, shape=checks.updates_shape), clip=Real(0.0), float_bits=checks.FLOAT_BITS,
         decoded_out=checks.PER_ENTRY_OUT, scales_out=checks.PER_SEGMENT_OUT,
         encoded_bits_out=checks.ENCODED_BITS_OUT)
def terngrad_batch(updates, segment_offsets, uniforms, clip, float_bits, decoded_out, scales_out,
                   encoded_bits_out):
    """TernGrad of every row of ``updates``, segment by segment (module docstring), in one call: ``uniforms``
    in [0, 1) are the u of each entry (their range is not checked), ``clip`` is c (0: no clipping),
    ``float_bits`` the width of an encoded scale (32 for float32 data, 64 for float64). Written: the ternary
    rows (+-s_j or +0.0), s of every row and segment, each row's message length (the sum of
    :func:`segment_bits` over its segments)."""


def clip_bound_numpy(x, clip):
    """NumPy twin of the clipping bound b (x's dtype; +inf when not clipping)."""
    dtype = x.dtype.type
    if clip > 0 and x.size > 0:
        with np.errstate(over="ignore", invalid="ignore"):
            wide = x.astype(np.float64)
            mean = np.cumsum(wide)[-1] / x.size
            deviations = wide - mean
            sigma = math.sqrt(np.cumsum(deviations * deviations)[-1] / x.size)
            bound = dtype(clip * sigma)
        if bound > 0:
            return bound
    return dtype(np.inf)


def _ternarize_segment_numpy(x, uniforms, clip, out):
    if not np.all(np.isfinite(x)):
        raise ValueError(NONFINITE_MESSAGE)
    bound = clip_bound_numpy(x, clip)
    magnitudes = np.minimum(np.abs(x), bound)
    scale = min(x.dtype.type(magnitudes.max()) if x.size else x.dtype.type(0), bound)
    if scale == 0:
        out[:] = 0
        return scale
    keep = uniforms < magnitudes.astype(np.float64) / np.float64(scale)
    out[:] = np.where(keep, np.where(x < 0, -scale, scale), x.dtype.type(0))
    return scale


def terngrad_batch_numpy(updates, segment_offsets, uniforms, clip, float_bits, decoded_out, scales_out,
                         encoded_bits_out):
    (updates, offsets, uniforms, clip, float_bits, decoded_out, scales_out,
     encoded_bits_out) = terngrad_batch.check(updates, segment_offsets, uniforms, clip, float_bits,
                                              decoded_out, scales_out, encoded_bits_out)
    for row in range(updates.shape[0]):
        total_bits = 0
        for j, (start, stop) in enumerate(zip(offsets[:-1], offsets[1:])):
            scale = _ternarize_segment_numpy(updates[row, start:stop], uniforms[row, start:stop], clip,
                                             decoded_out[row, start:stop])
            scales_out[row, j] = scale
            size = int(stop - start)
            total_bits += float_bits + (GROUP_BITS * (size // GROUP) + REMAINDER_BITS[size % GROUP] if scale else 0)
        encoded_bits_out[row] = total_bits


# --- Base-3 code ----------------------------------------------------------------------------------

@_jit
def _digit(code):
    if code == 0:
        return 0
    if code == 1:
        return 1
    if code == -1:
        return 2
    raise ValueError("ternary codes must be -1, 0 or +1")


@_jit
def _pack_ternary_into_core(codes, stream, bit_offset):
    count = codes.shape[0]
    offset = bit_offset
    start = 0
    while start < count:
        width = min(GROUP, count - start)
        value = np.int64(0)
        for t in range(width - 1, -1, -1):              # digit 0 least significant
            value = 3 * value + _digit(codes[start + t])
        offset = _write_uint_core(stream, offset, value,
                                  GROUP_BITS if width == GROUP else REMAINDER_BITS[width])
        start += width
    return offset


def _code_bits(codes):
    return _ternary_code_bits(codes.shape[0])


@checked(_pack_ternary_into_core, codes=INTEGERS, stream=Stream(output=True, start="bit_offset", bits=_code_bits),
         bit_offset=COUNT)
def pack_ternary_into(codes, stream, bit_offset):
    """Write the base-3 code of ``codes`` (1-D integers in {-1, 0, +1}, int8 in practice) from
    ``bit_offset``; returns the offset after it (``bit_offset + _ternary_code_bits(len(codes))``, which
    must not pass the end of ``stream``)."""


@_jit
def _unpack_ternary_from_core(stream, bit_offset, count, codes_out):
    offset = bit_offset
    start = 0
    while start < count:
        width = min(GROUP, count - start)
        bits = GROUP_BITS if width == GROUP else REMAINDER_BITS[width]
        value = _read_uint_core(stream, offset, bits)
        offset += bits
        if value >= POWERS_OF_THREE[width]:
            raise ValueError("corrupt stream: a base-3 group holds a value beyond its digits")
        for t in range(width):
            digit = value % 3
            value //= 3
            codes_out[start + t] = -1 if digit == 2 else digit
        start += width
    return offset


@checked(_unpack_ternary_from_core, stream=Stream(start="bit_offset", bits=_ternary_code_bits, message=FIELD_MESSAGE),
         bit_offset=COUNT, count=COUNT, codes_out=Array(checks.INT8, output=True, at_least="count"))
def unpack_ternary_from(stream, bit_offset, count, codes_out):
    """Read the base-3 code of ``count`` digits from ``bit_offset`` into ``codes_out`` (int8 -1/0/+1, at
    least ``count`` entries); returns the end offset. The code must lie inside ``stream``; a group value
    >= 3^r is a corrupt stream (ValueError)."""
