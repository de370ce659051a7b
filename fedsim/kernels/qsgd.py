"""Kernels of QSGD (Alistarh, Grubic, Li, Tomioka, Vojnovic, arXiv 1610.02132): stochastic quantization
of buckets to s levels, and the Elias omega code (:mod:`fedsim.kernels.omega`) of the quantized buckets.

Buckets
-------
A row of P entries is cut into segments (one per parameter tensor, or one for the whole vector), and each
segment into buckets of d consecutive entries (the last one holding the remaining ``N - d floor((N - 1) /
d)``), or with ``d = 0`` into one bucket (the paper's basic scheme). Empty segments have no bucket.
Bucket b is ``[offsets[b], offsets[b + 1])`` (:func:`bucket_offsets`); the buckets tile ``[0, P)``.

Quantization
------------
For a bucket v of n entries (float32 or float64), s >= 1 levels and n float64 uniforms u_i in [0, 1)
drawn by the caller, bit for bit::

    norm    = dtype(sqrt(sum_i float64(v_i)^2))        float64 squares summed sequentially in index order,
                                                        one float64 sqrt, one rounding to the data's dtype
    r_i     = min(s, (float64(|v_i|) / float64(norm)) * s)     one division, then one multiplication
    l_i     = floor(r_i)
    level_i = l_i + [u_i < r_i - l_i]                  in {0, 1, ..., s} (r_i - l_i is exact)
    out_i   = sign(v_i) dtype(float64(norm) * (level_i / s))   +0.0 where level_i = 0

so E[out_i] = v_i up to the roundings. The clamp ``min(s, .)`` only matters when the rounded norm is below
the largest |v_i| (float64, by one ulp): that entry gets level s. An all-zero bucket (norm 0) gets level 0
and out = +0.0 everywhere; its uniforms are consumed all the same (each row takes P). The signed levels
``sign(v_i) level_i`` are the message's payload. float64 squares can overflow (entries beyond ~1e154) or
underflow (a bucket whose entries are all below ~1e-162 has norm 0 and is sent as zero: QSGD is then
biased there); an overflowing norm raises ``UpdateOverflowError(NORM_OVERFLOW_MESSAGE)`` (a ValueError). Every
step but the sum is one correctly rounded IEEE operation, so kernel, twin and the torch reference agree bitwise.

Code of one bucket (the paper's Code_s, section 3 and its coding appendix)
--------------------------------------------------------------------------
The norm's IEEE bit pattern (F = 32 bits for float32 data, 64 for float64). If the norm is 0, nothing else.
Otherwise, for each nonzero level in index order: ``omega(gap)``, one sign bit (1 = negative),
``omega(|level|)``, with gap = local index + 1 for the bucket's first nonzero and the index difference to
the previous nonzero after that. Then the end marker ``omega(n - last)`` (``last`` the local index of the
last nonzero, -1 if none): the paper leaves the end implicit; the marker lets a decoder that knows n find
where the next bucket starts. Bits of a bucket (:func:`_bucket_bits`)::

    F                                                                         norm = 0
    F + sum over nonzero i of (B(gap_i) + 1 + B(|level_i|)) + B(n - last)    norm > 0
"""

from __future__ import annotations

import itertools
import math

import numba
import numpy as np

from fedsim.errors import UpdateOverflowError
from fedsim.kernels import JIT_OPTIONS, checks
from fedsim.kernels.bitstream import (BIT_END, BIT_OFFSET, BIT_OFFSET_TO_END, STREAM, _get_bit,
                                     _read_uint_core, _write_uint_core)
from fedsim.kernels.checks import Array, Count, Offsets, Stream, checked
from fedsim.kernels.omega import (MAX_OMEGA_VALUE, _elias_omega_bits_numpy, _omega_bits_unchecked,
                                  _read_elias_omega_core, _write_elias_omega_core)
from fedsim.kernels.selection import NONFINITE_MESSAGE

_jit = numba.njit(**JIT_OPTIONS)

NORM_OVERFLOW_MESSAGE = ("QSGD: a bucket's norm overflows its dtype (entries near the float maximum; "
                         "the update has diverged)")
# Largest number of levels s: the signed levels written by qsgd_quantize are int16 or int32.
MAX_LEVELS = (1 << 31) - 1
LEVEL_DTYPES = (np.dtype(np.int16), np.dtype(np.int32))


# --- Buckets --------------------------------------------------------------------------------------

def bucket_offsets(segment_offsets, bucket_size: int) -> np.ndarray:
    """Boundaries (int64, from 0) of the buckets of every segment, in order (module docstring)."""
    offsets = np.asarray(segment_offsets, np.int64)
    bounds = [np.zeros(1, np.int64)]
    for start, stop in itertools.pairwise(offsets):
        if stop == start:
            continue
        if bucket_size > 0:
            bounds.append(np.arange(start + bucket_size, stop, bucket_size, dtype=np.int64))
        bounds.append(np.array([stop], np.int64))
    return np.concatenate(bounds)


# --- Argument checks shared by the kernels and their twins ----------------------------------------

def _within_omega(signed_levels):
    """Integer signed levels, each within +-(2^62 - 1) (what the omega code carries): one pass over the
    data for 64-bit dtypes only (narrower ones hold nothing larger)."""
    if signed_levels.dtype.itemsize == 8 and signed_levels.size:
        low, high = int(signed_levels.min()), int(signed_levels.max())
        if low < -MAX_OMEGA_VALUE or high > MAX_OMEGA_VALUE:
            bad = low if low < -MAX_OMEGA_VALUE else high
            raise ValueError(f"signed_levels must lie within +-(2^62 - 1) (the Elias omega code's range), "
                             f"got {bad}")


def _patterns_fit(norm_patterns, float_bits):
    """A float32 norm's pattern lies in [0, 2^32) (a float64's is any int64)."""
    if float_bits == 32 and norm_patterns.shape[0]:
        low, high = checks.smallest(norm_patterns), int(norm_patterns.max())
        if low < 0 or high >= 1 << 32:
            raise ValueError(f"norm_patterns must be float32 bit patterns in [0, 2^32) for float_bits 32, got "
                             f"{low if low < 0 else high}")


def _buckets(bucket_offsets):
    return (bucket_offsets.shape[0] - 1,)


def _rows_by_buckets(updates, bucket_offsets):
    return (updates.shape[0], bucket_offsets.shape[0] - 1)


def _levels_shape(bucket_offsets):
    return (int(bucket_offsets[-1]),)


def _levels_fit(levels, levels_out):
    if levels > np.iinfo(levels_out.dtype).max:
        raise TypeError(f"levels_out ({levels_out.dtype}) cannot hold the signed levels +-{levels}: int16 "
                        f"holds s <= 32767, int32 any s")


def _zero_filled(levels_out):
    if levels_out.size and levels_out.any():
        raise ValueError("levels_out must be zero-filled (the decoder writes the nonzero levels only)")


# Signed levels: integers within +-(2^62 - 1), what the omega code carries (one pass for 64-bit dtypes)
SIGNED_LEVELS = Array(checks.INTEGER, then=_within_omega)
ROW_BUCKETS = Offsets(total=lambda signed_levels: signed_levels.shape[-1])


# --- Bit counts -----------------------------------------------------------------------------------

@_jit
def _bucket_bits(signed_levels, norm_nonzero, float_bits):
    """Encoded bits of one bucket (module docstring) from its signed levels, whether its norm is nonzero
    and the width of the norm (32 or 64)."""
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
def _qsgd_bits_core(signed_levels, bucket_offsets, norm_patterns, float_bits):
    """``norm_patterns`` may also be the norms: only which of them are nonzero counts."""
    total = 0
    for b in range(bucket_offsets.shape[0] - 1):
        total += _bucket_bits(signed_levels[bucket_offsets[b]:bucket_offsets[b + 1]], norm_patterns[b] != 0,
                              float_bits)
    return total


@checked(_qsgd_bits_core, signed_levels=SIGNED_LEVELS, bucket_offsets=ROW_BUCKETS,
         norms=Array(checks.FLOAT, shape=_buckets), float_bits=checks.FLOAT_BITS)
def qsgd_bits(signed_levels, bucket_offsets, norms, float_bits):
    """Encoded bits of one row's message, the sum of :func:`_bucket_bits` over its buckets: ``signed_levels``
    (P,), ``bucket_offsets`` (B + 1,) tiling [0, P), ``norms`` (B,) (only whether each is nonzero counts)."""


def qsgd_bits_numpy(signed_levels, bucket_offsets, norms, float_bits):
    levels, offsets, norms, float_bits = qsgd_bits.check(signed_levels, bucket_offsets, norms, float_bits)
    return int(_rows_bits_numpy(levels[None], offsets, norms[None], float_bits)[0])


def _rows_bits_numpy(levels, offsets, norms, float_bits):
    """:func:`qsgd_bits` of each row of a (K, P) batch with (K, B) norms, vectorized: (K,) int64."""
    levels = levels.astype(np.int64)
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
    per_entry = _elias_omega_bits_numpy(gaps) + 1 + _elias_omega_bits_numpy(np.abs(levels[rows, columns]))
    last = np.full(n_rows * n_buckets, -1, np.int64)
    np.maximum.at(last, keys, local)
    end_gaps = np.tile(sizes, n_rows) - last
    bucket_totals = np.full(n_rows * n_buckets, float_bits, np.int64)
    live_flat = live.reshape(-1)
    bucket_totals[live_flat] += _elias_omega_bits_numpy(end_gaps[live_flat])
    np.add.at(bucket_totals, keys, per_entry)
    return bucket_totals.reshape(n_rows, n_buckets).sum(axis=1)


# --- Quantization ---------------------------------------------------------------------------------

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
        raise UpdateOverflowError(NORM_OVERFLOW_MESSAGE)
    norm_out[0] = math.sqrt(total)            # rounded to the dtype by the store
    norm = norm_out[0]
    if not np.isfinite(norm):
        raise UpdateOverflowError(NORM_OVERFLOW_MESSAGE)
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
def _qsgd_quantize_core(updates, bucket_offsets, levels, uniforms, float_bits, decoded_out, norms_out,
                        levels_out, encoded_bits_out):
    n_rows = updates.shape[0]
    n_buckets = bucket_offsets.shape[0] - 1
    for row in range(n_rows):
        total_bits = 0
        for b in range(n_buckets):
            start = bucket_offsets[b]
            stop = bucket_offsets[b + 1]
            norm = _quantize_bucket(updates[row, start:stop], uniforms[row, start:stop], levels,
                                    norms_out[row, b:b + 1], decoded_out[row, start:stop],
                                    levels_out[row, start:stop])
            total_bits += _bucket_bits(levels_out[row, start:stop], norm != 0, float_bits)
        encoded_bits_out[row] = total_bits


@checked(_qsgd_quantize_core, updates=checks.UPDATES, bucket_offsets=checks.SEGMENT_OFFSETS,
         levels=Count(1, MAX_LEVELS), uniforms=Array(checks.FLOAT64, shape=checks.updates_shape),
         float_bits=checks.FLOAT_BITS, decoded_out=checks.PER_ENTRY_OUT,
         norms_out=Array(checks.FLOAT, output=True, shape=_rows_by_buckets, like="updates"),
         levels_out=Array(LEVEL_DTYPES, output=True, shape=checks.updates_shape, then=_levels_fit),
         encoded_bits_out=checks.ENCODED_BITS_OUT)
def qsgd_quantize(updates, bucket_offsets, levels, uniforms, float_bits, decoded_out, norms_out, levels_out,
                  encoded_bits_out):
    """QSGD of every row of ``updates``, bucket by bucket (module docstring), in one call: ``levels`` is s,
    ``uniforms`` in [0, 1) the u of each entry (their range is not checked), ``float_bits`` the width of an
    encoded norm. Written: what the receiver reconstructs, each bucket's norm, the signed levels (int16 holds
    s <= 32767) and each row's :func:`qsgd_bits`."""


def _bucket_norms_numpy(updates, offsets):
    """(K, B) float64 sequential sums of squares of every bucket: buckets of equal length are gathered into
    a (K, count, length) block and summed along their last axis with ``np.cumsum`` (the kernel's order)."""
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
    (updates, offsets, levels, uniforms, float_bits, decoded_out, norms_out, levels_out,
     encoded_bits_out) = qsgd_quantize.check(updates, bucket_offsets, levels, uniforms, float_bits,
                                             decoded_out, norms_out, levels_out, encoded_bits_out)
    if not np.all(np.isfinite(updates)):
        raise ValueError(NONFINITE_MESSAGE)
    dtype = updates.dtype
    sums = _bucket_norms_numpy(updates, offsets)
    if not np.all(np.isfinite(sums)):
        raise UpdateOverflowError(NORM_OVERFLOW_MESSAGE)
    with np.errstate(over="ignore"):
        norms = np.sqrt(sums).astype(dtype)
    if not np.all(np.isfinite(norms)):
        raise UpdateOverflowError(NORM_OVERFLOW_MESSAGE)
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
    encoded_bits_out[...] = _rows_bits_numpy(levels_out, offsets, norms, float_bits)


# --- The wire code of a message -------------------------------------------------------------------

@_jit
def _qsgd_encode_into_core(signed_levels, bucket_offsets, norm_patterns, float_bits, stream, bit_offset):
    offset = bit_offset
    for b in range(bucket_offsets.shape[0] - 1):
        start = bucket_offsets[b]
        stop = bucket_offsets[b + 1]
        offset = _write_uint_core(stream, offset, norm_patterns[b], float_bits)
        if norm_patterns[b] == 0:
            continue
        previous = -1
        for i in range(stop - start):
            level = np.int64(signed_levels[start + i])
            if level != 0:
                offset = _write_elias_omega_core(stream, offset, i - previous)
                offset = _write_uint_core(stream, offset, np.int64(1 if level < 0 else 0), np.int64(1))
                offset = _write_elias_omega_core(stream, offset, abs(level))
                previous = i
        offset = _write_elias_omega_core(stream, offset, stop - start - previous)
    return offset


@checked(_qsgd_encode_into_core, extra=_patterns_fit, signed_levels=SIGNED_LEVELS, bucket_offsets=ROW_BUCKETS,
         norm_patterns=Array(checks.INT64, shape=_buckets), float_bits=checks.FLOAT_BITS,
         stream=Stream(output=True, start="bit_offset", bits=_qsgd_bits_core), bit_offset=BIT_OFFSET)
def qsgd_encode_into(signed_levels, bucket_offsets, norm_patterns, float_bits, stream, bit_offset):
    """Write a row's buckets (module docstring) into ``stream`` from ``bit_offset``; returns the offset after
    them. ``norm_patterns`` (B,) int64 holds each norm's IEEE bit pattern (a float32's below 2^32); a bucket
    whose pattern is 0 (norm +0.0) sends its norm only. The code (:func:`qsgd_bits`) must fit."""


@_jit
def _qsgd_decode_from_core(stream, bit_offset, bit_end, bucket_offsets, float_bits, norm_patterns_out,
                           levels_out):
    if bit_end > stream.shape[0] * 8:
        raise ValueError("bit_end lies beyond the stream")
    offset = bit_offset
    for b in range(bucket_offsets.shape[0] - 1):
        start = bucket_offsets[b]
        size = bucket_offsets[b + 1] - start
        if offset + float_bits > bit_end:
            raise ValueError("QSGD stream ends inside a norm")
        pattern = _read_uint_core(stream, offset, float_bits)
        offset += float_bits
        norm_patterns_out[b] = pattern
        if pattern == 0:
            continue
        position = -1
        while True:
            gap, offset = _read_elias_omega_core(stream, offset, bit_end)
            position += gap
            if position == size:
                break
            if position > size:
                raise ValueError("corrupt QSGD stream: a gap jumps past the end of its bucket")
            if offset >= bit_end:
                raise ValueError("QSGD stream ends before a sign bit")
            negative = _get_bit(stream, offset)
            offset += 1
            level, offset = _read_elias_omega_core(stream, offset, bit_end)
            levels_out[start + position] = -level if negative else level
    return offset


@checked(_qsgd_decode_from_core, stream=STREAM, bit_offset=BIT_OFFSET_TO_END, bit_end=BIT_END,
         bucket_offsets=Offsets(), float_bits=checks.FLOAT_BITS,
         norm_patterns_out=Array(checks.INT64, output=True, shape=_buckets),
         levels_out=Array(checks.INT64, output=True, shape=_levels_shape, then=_zero_filled))
def qsgd_decode_from(stream, bit_offset, bit_end, bucket_offsets, float_bits, norm_patterns_out,
                     levels_out):
    """Read the buckets written by :func:`qsgd_encode_into`, never past ``bit_end``; returns the offset
    after them. ``levels_out`` (P,) must be zero-filled; ``norm_patterns_out`` (B,) receives the norms' bit
    patterns. A gap past a bucket's end, a zero level or a stream that ends early raise ValueError."""
