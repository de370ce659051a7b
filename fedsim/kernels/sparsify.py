"""The sparsifying compressors' kernels: top-k, STC (exact and sampled) and sign of a batch of updates.

Each batched kernel compresses K updates (rows) segment by segment in one call, each segment exactly as
the one-vector helpers of :mod:`fedsim.kernels.selection` (the kept set K(x, k) of top-k and STC, its mean
magnitude, the sampled threshold) and :mod:`fedsim.kernels.ternary` (_ternarize, sign) give it.
"""

from __future__ import annotations

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS, checks
from fedsim.kernels.checks import Array, Flag, checked
from fedsim.kernels.golomb import (COUNT_BITS, _golomb_rice_bits_core, _rice_parameter_core,
                                   _sparse_segment_bits_core, golomb_rice_bits_numpy, rice_parameter_numpy)
from fedsim.kernels.selection import (NONFINITE_MESSAGE, PIVOT_SAMPLE, SMALL_SEGMENT, _round_to_dtype,
                                      _top_k_into, _top_k_sparsify_numpy)
from fedsim.kernels.ternary import (_mean_magnitude_core, _mean_magnitude_numpy, _sampled_ternarize_into,
                                    _sampled_ternarize_numpy, _sign_core, _sign_numpy, _ternarize_into,
                                    _ternarize_numpy)

__all__ = ["NONFINITE_MESSAGE", "all_finite", "all_finite_numpy", "sign_compress_batch", "sign_compress_batch_numpy",
           "sparse_compress_batch", "sparse_compress_batch_numpy"]

_jit = numba.njit(**JIT_OPTIONS)


@_jit
def _all_finite_core(x):
    flat = x.reshape(-1)
    for i in range(flat.shape[0]):
        if not np.isfinite(flat[i]):
            return False
    return True


@checked(_all_finite_core, x=Array(checks.FLOAT, ndim=None))
def all_finite(x):
    """True if every entry of ``x`` (of any shape) is finite."""


def all_finite_numpy(x):
    (x,) = all_finite.check(x)
    return bool(np.all(np.isfinite(x)))


@_jit
def _longest_segment(segment_offsets):
    longest = 0
    for j in range(segment_offsets.shape[0] - 1):
        longest = max(longest, segment_offsets[j + 1] - segment_offsets[j])
    return longest


@_jit
def _batch_buffers(segment_offsets, dtype_like):
    """The work buffers of a batch, sized for its longest segment."""
    longest = _longest_segment(segment_offsets)
    scratch_length = longest if longest <= SMALL_SEGMENT else max(longest, PIVOT_SAMPLE)
    dtype = dtype_like.dtype
    return (np.empty(longest, np.int64), np.empty(longest, dtype), np.empty(scratch_length, dtype),
            np.empty(longest, dtype), np.empty(longest, np.int64), np.empty(longest, np.int8))


@_jit
def _write_ternary(sent_out, row, start, stop, positions, signs, count, mu, float_bits):
    """Row ``row``'s segment [start, stop) of ``sent_out`` = signs * mu at the kept positions; its bits."""
    for t in range(count):
        sent_out[row, start + positions[t]] = signs[t] * mu
    # (np.int64: one compiled bit counter for every caller, not one per literal argument)
    return _sparse_segment_bits_core(positions[:count], stop - start, np.int64(1), float_bits)


@_jit
def _exact_batch_core(updates, segment_offsets, budgets, ternary, float_bits, sent_out, counts_out,
                      encoded_bits_out):
    """Exact STC (``ternary``) or top-k with values of every row (see :func:`sparse_compress_batch`)."""
    n_segments = segment_offsets.shape[0] - 1
    candidate_positions, candidate_magnitudes, scratch, _, positions, signs = _batch_buffers(segment_offsets,
                                                                                            updates)
    for row in range(updates.shape[0]):
        total_bits = 0
        for j in range(n_segments):
            start = segment_offsets[j]
            stop = segment_offsets[j + 1]
            x = updates[row, start:stop]
            if ternary:
                count, mu = _ternarize_into(x, budgets[j], candidate_positions, candidate_magnitudes, scratch,
                                            positions, signs)
                total_bits += _write_ternary(sent_out, row, start, stop, positions, signs, count, mu, float_bits)
            else:
                count = _top_k_into(x, budgets[j], candidate_positions, candidate_magnitudes, scratch, positions)
                for t in range(count):
                    sent_out[row, start + positions[t]] = x[positions[t]]
                total_bits += _sparse_segment_bits_core(positions[:count], stop - start, float_bits, np.int64(0))
            counts_out[row, j] = count
        encoded_bits_out[row] = total_bits


@_jit
def _sampled_batch_core(updates, segment_offsets, budgets, float_bits, sample_positions, sample_starts,
                        sample_budgets, sent_out, counts_out, encoded_bits_out):
    """STC with the sampled threshold of every row (see :func:`sparse_compress_batch`)."""
    n_segments = segment_offsets.shape[0] - 1
    candidate_positions, candidate_magnitudes, scratch, sample_buffer, positions, signs = _batch_buffers(
        segment_offsets, updates)
    for row in range(updates.shape[0]):
        total_bits = 0
        for j in range(n_segments):
            start = segment_offsets[j]
            stop = segment_offsets[j + 1]
            first = sample_starts[row * n_segments + j]
            last = sample_starts[row * n_segments + j + 1]
            count, mu, _ = _sampled_ternarize_into(
                updates[row, start:stop], sample_positions[first:last], sample_budgets[j], budgets[j],
                sample_buffer, candidate_positions, candidate_magnitudes, scratch, positions, signs)
            total_bits += _write_ternary(sent_out, row, start, stop, positions, signs, count, mu, float_bits)
            counts_out[row, j] = count
        encoded_bits_out[row] = total_bits


def _sparse_batch(updates, segment_offsets, budgets, ternary, float_bits, sampled, sample_positions, sample_starts,
                  sample_budgets, sent_out, counts_out, encoded_bits_out, exact_core, sampled_core):
    """:func:`sparse_compress_batch`'s core: one jitted kernel for exact top-k and STC, one for sampled STC, so
    that a run compiles only the one it uses."""
    if ternary and sampled:
        return sampled_core(updates, segment_offsets, budgets, float_bits, sample_positions, sample_starts,
                            sample_budgets, sent_out, counts_out, encoded_bits_out)
    return exact_core(updates, segment_offsets, budgets, ternary, float_bits, sent_out, counts_out, encoded_bits_out)


_sparse_compress_batch_core = checks.python_core(_sparse_batch, exact_core=_exact_batch_core,
                                                 sampled_core=_sampled_batch_core)


def _sample_starts_shape(updates, segment_offsets, ternary, sampled):
    """(K S + 1,) for sampled STC; not checked otherwise."""
    return (updates.shape[0] * (segment_offsets.shape[0] - 1) + 1,) if ternary and sampled else None


def _sample_budgets_shape(segment_offsets, ternary, sampled):
    """(S,) for sampled STC; not checked otherwise."""
    return checks.segments(segment_offsets) if ternary and sampled else None


def _sampled_stc(ternary, sampled):
    return ternary and sampled


def _batch_samples_fit(updates, segment_offsets, ternary, sampled, sample_positions, sample_starts):
    """The samples of a sampled STC batch: one per (row, segment), row-major, each position within its
    segment and no more positions than the segment has entries (a pass over the sample positions)."""
    if not (ternary and sampled):
        return
    n_rows = updates.shape[0]
    sizes = np.diff(segment_offsets)
    n_segments = sizes.shape[0]
    n_samples = n_rows * n_segments
    counts = np.diff(sample_starts)
    if sample_starts[0] != 0 or sample_starts[-1] != sample_positions.shape[0] \
            or (n_samples and counts.min() < 0):
        raise ValueError(f"sample_starts must run from 0 to len(sample_positions) = "
                         f"{sample_positions.shape[0]} without decreasing")
    limits = np.tile(sizes, n_rows)
    if n_samples and np.any(counts > limits):
        where = int(np.flatnonzero(counts > limits)[0])
        raise ValueError(f"sample_starts gives row {where // n_segments}, segment {where % n_segments} "
                         f"{int(counts[where])} sample positions, more than its {int(limits[where])} "
                         f"entries")
    if sample_positions.shape[0]:
        bounds = np.repeat(limits, counts)
        outside = (sample_positions < 0) | (sample_positions >= bounds)
        if outside.any():
            where = int(np.flatnonzero(outside)[0])
            raise ValueError(f"sample_positions must lie within their segment: entry {where} is "
                             f"{int(sample_positions[where])}, its segment has {int(bounds[where])} entries")


@checked(_sparse_compress_batch_core, extra=_batch_samples_fit, updates=checks.UPDATES,
         segment_offsets=checks.SEGMENT_OFFSETS, budgets=Array(checks.INT64, shape=checks.segments, nonnegative=True),
         ternary=Flag(),
         float_bits=checks.FLOAT_BITS, sampled=Flag(), sample_positions=Array(checks.INT64),
         sample_starts=Array(checks.INT64, shape=_sample_starts_shape),
         sample_budgets=Array(checks.INT64, shape=_sample_budgets_shape, nonnegative=_sampled_stc),
         sent_out=checks.PER_ENTRY_OUT, counts_out=Array(checks.INT64, output=True, shape=checks.rows_by_segments),
         encoded_bits_out=checks.ENCODED_BITS_OUT)
def sparse_compress_batch(updates, segment_offsets, budgets, ternary, float_bits, sampled,
                          sample_positions, sample_starts, sample_budgets,
                          sent_out, counts_out, encoded_bits_out):
    """Top-k or STC of every row of ``updates``, segment by segment, in one call.

    Row r, segment j (``updates[r, offsets[j]:offsets[j + 1]]``) gets exactly what
    :func:`_top_k_sparsify` (``ternary`` False), :func:`_ternarize` (``ternary`` True) or
    :func:`_sampled_ternarize` (``ternary`` and ``sampled``) give it with budget ``budgets[j]``;
    ``float_bits`` is the width of one encoded float (top-k's values, STC's mu). Sampled STC reads the samples
    of row r, segment j as ``sample_positions[sample_starts[r S + j]:sample_starts[r S + j + 1]]`` with
    budgets ``sample_budgets``. Out: ``sent_out`` (zero-filled) the decompressed messages, ``counts_out``
    the kept entries, ``encoded_bits_out`` each row's encoded length (the formats: :mod:`fedsim.compress.topk`,
    :mod:`fedsim.compress.stc`).
    """


def _segment_bits_numpy(kept, size, bits_per_entry, trailer_bits):
    """A sparse segment's bits: 32-bit count + Golomb-Rice positions (b* from count / size) + ``bits_per_entry``
    per kept entry + ``trailer_bits`` if any is kept (:func:`fedsim.kernels.golomb.sparse_segment_bits`)."""
    count = kept.shape[0]
    return (COUNT_BITS + golomb_rice_bits_numpy(kept, rice_parameter_numpy(count, size)) + count * bits_per_entry
            + (trailer_bits if count else 0))


def sparse_compress_batch_numpy(updates, segment_offsets, budgets, ternary, float_bits, sampled,
                                sample_positions, sample_starts, sample_budgets, sent_out, counts_out,
                                encoded_bits_out):
    (updates, segment_offsets, budgets, ternary, float_bits, sampled, sample_positions, sample_starts,
     sample_budgets, sent_out, counts_out, encoded_bits_out) = sparse_compress_batch.check(
        updates, segment_offsets, budgets, ternary, float_bits, sampled, sample_positions, sample_starts,
        sample_budgets, sent_out, counts_out, encoded_bits_out)
    n_segments = segment_offsets.shape[0] - 1
    for row in range(updates.shape[0]):
        total = 0
        for j in range(n_segments):
            start, stop = segment_offsets[j], segment_offsets[j + 1]
            x, k = updates[row, start:stop], budgets[j]
            positions, signs, values = np.empty(stop - start, np.int64), np.empty(stop - start, np.int8), \
                np.empty(stop - start, x.dtype)
            if ternary and sampled:
                first, last = sample_starts[row * n_segments + j], sample_starts[row * n_segments + j + 1]
                count, mu, _ = _sampled_ternarize_numpy(x, sample_positions[first:last], sample_budgets[j], k,
                                                        positions, signs)
            elif ternary:
                count, mu = _ternarize_numpy(x, k, positions, signs)
            else:
                count = _top_k_sparsify_numpy(x, k, positions, values)
            kept = positions[:count]
            sent_out[row, start + kept] = signs[:count] * mu if ternary else values[:count]
            total += _segment_bits_numpy(kept, stop - start, 1 if ternary else float_bits,
                                         float_bits if ternary else 0)
            counts_out[row, j] = count
        encoded_bits_out[row] = total


@_jit
def _sign_compress_batch_core(updates, segment_offsets, scaled, float_bits, sent_out, scales_out,
                              encoded_bits_out):
    n_rows = updates.shape[0]
    n_segments = segment_offsets.shape[0] - 1
    longest = _longest_segment(segment_offsets)
    signs = np.empty(longest, np.int8)
    zero_positions = np.empty(longest, np.int64)
    for row in range(n_rows):
        total_bits = 0
        for j in range(n_segments):
            start = segment_offsets[j]
            stop = segment_offsets[j + 1]
            x = updates[row, start:stop]
            n_zeros = _sign_core(x, signs)
            scale = _mean_magnitude_core(x) if scaled else _round_to_dtype(x, 1.0)
            if scale == 0:          # mean |x| underflowed to 0: the segment is sent as zeros, no sign bits
                signs[:stop - start] = 0
                n_zeros = stop - start
            scales_out[row, j] = scale
            found = 0
            for i in range(stop - start):
                if signs[i] == 0:
                    zero_positions[found] = i
                    found += 1
                sent_out[row, start + i] = signs[i] * scale
            total_bits += COUNT_BITS + _golomb_rice_bits_core(zero_positions[:n_zeros],
                                                              _rice_parameter_core(n_zeros, stop - start))
            total_bits += stop - start - n_zeros
            if scaled:
                total_bits += float_bits
        encoded_bits_out[row] = total_bits


@checked(_sign_compress_batch_core, updates=checks.UPDATES, segment_offsets=checks.SEGMENT_OFFSETS, scaled=Flag(),
         float_bits=checks.FLOAT_BITS, sent_out=checks.PER_ENTRY_OUT, scales_out=checks.PER_SEGMENT_OUT,
         encoded_bits_out=checks.ENCODED_BITS_OUT)
def sign_compress_batch(updates, segment_offsets, scaled, float_bits, sent_out, scales_out,
                        encoded_bits_out):
    """sign (times the segment's mean magnitude if ``scaled``) of every row, in one call:
    ``sent_out[r, i] = sign(x_ri) * scale_rj`` (scale 1 when unscaled), ``scales_out[r, j]`` the scale,
    ``encoded_bits_out[r]`` the length of the sign message (:mod:`fedsim.compress.sign`). A segment whose mean
    magnitude rounds to 0 (all zeros, or subnormals whose mean underflows) is sent as zeros: its signs would
    reach the receiver multiplied by 0.
    """


def sign_compress_batch_numpy(updates, segment_offsets, scaled, float_bits, sent_out, scales_out, encoded_bits_out):
    updates, segment_offsets, scaled, float_bits, sent_out, scales_out, encoded_bits_out = sign_compress_batch.check(
        updates, segment_offsets, scaled, float_bits, sent_out, scales_out, encoded_bits_out)
    for row in range(updates.shape[0]):
        total = 0
        for j in range(segment_offsets.shape[0] - 1):
            start, stop = segment_offsets[j], segment_offsets[j + 1]
            x, signs = updates[row, start:stop], np.empty(stop - start, np.int8)
            n_zeros = _sign_numpy(x, signs)
            scale = _mean_magnitude_numpy(x) if scaled else x.dtype.type(1)
            if scale == 0:          # as the kernel: the segment is sent as zeros, no sign bits
                signs[:], n_zeros = 0, stop - start
            scales_out[row, j] = scale
            sent_out[row, start:stop] = signs * scale
            total += COUNT_BITS + golomb_rice_bits_numpy(np.flatnonzero(signs == 0),
                                                         rice_parameter_numpy(n_zeros, stop - start))
            total += stop - start - n_zeros + (float_bits if scaled else 0)
        encoded_bits_out[row] = total
