"""The LAQ innovation quantizer (Sun, Chen, Giannakis, Yang, arXiv 1909.07588), batched over workers.

Each worker quantizes its gradient ``g`` *relative to the last quantized gradient it uploaded*,
``Q_prev``, on a uniform grid of ``2^b`` points spanning ``[Q_prev - R, Q_prev + R]``::

    R     = max_i |g_i - Q_prev_i|                          radius (one float per worker, sent as 32 bits)
    tau   = 1 / (2^b - 1)
    q_i   = floor((g_i - Q_prev_i + R) / (2 tau R) + 1/2)   integer code in [0, 2^b - 1] (b bits each)
    Q     = Q_prev + 2 tau R q - R                          what the server reconstructs
    e     = ||Q - g||^2                                     quantization error
    |Q_i - g_i| <= tau R                                    every entry (rounding to the nearest grid point)

``R = 0`` means the gradient equals ``Q_prev``: then ``Q = Q_prev``, ``e = 0`` and every code is
``2^(b-1)``, the code the formula gives an entry with zero innovation (the limit R -> 0 of
``(0 + R) / (2 tau R) + 1/2 = 2^(b-1)``); the reference code divided by zero there. Any code dequantizes to
``Q_prev`` when ``R = 0``, so the server needs no special case.

A worker whose innovation ``g - Q_prev`` has a NaN or an infinite entry gets ``R = nan``, all codes 0 and
``Q``, ``e`` and ``||Q - Q_prev||^2`` all NaN: nothing finite is pretended. Callers that must stop on
divergence check ``radius`` (the lazy algorithms check the gradient before quantizing).

Evaluation. With ``t_i = (g_i - Q_prev_i) / R`` in [-1, 1] and ``h = (2^b - 1) / 2 = 1 / (2 tau)`` the
same two equations read::

    q_i = floor((t_i + 1) h + 1/2)          = floor((g_i - Q_prev_i + R) / (2 tau R) + 1/2)
    Q_i = Q_prev_i + R (q_i / h - 1)        = Q_prev_i + 2 tau R q_i - R

and are computed in this form: the grid step ``2 tau R`` itself would underflow to 0 for a subnormal R
(a division by zero) and ``2 R`` would overflow for R above half the largest float. Both forms agree to
rounding; a zero-innovation entry (t = 0) gets exactly ``q = 2^(b-1)``. Arithmetic is float64 inside
(R, t, the codes, the reductions); ``Q`` is stored in the dtype of the ``quantized`` output array, so
|Q_i - g_i| <= tau R holds up to the rounding of Q_i to that dtype. An innovation ``g - Q_prev`` that
overflows (to inf) counts as non-finite.

Contract of :func:`laq_quantize` and its NumPy twin :func:`laq_quantize_numpy` (arrays in, preallocated
outputs written, nothing returned)::

    gradients  (M, P) float      g of each worker
    previous   (M, P) float      Q_prev of each worker (its last upload)
    bits       int in [1, 16]    b
    codes      (M, P) uint8 (b <= 8) or uint16 (b <= 16)      out: q
    quantized  (M, P) float      out: Q
    radius     (M,)   float64    out: R
    error      (M,)   float64    out: e = ||Q - g||^2
    innovation (M,)   float64    out: ||Q - Q_prev||^2 (what the LAQ upload rule compares)

:func:`quantize_innovation` validates, allocates and calls one of them; :func:`laq_dequantize` is the
server's side (codes + R -> Q).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS

MIN_BITS = 1
MAX_BITS = 16


def check_bits(bits) -> int:
    """``bits`` as an int, or ValueError unless it is an integer in [1, 16]."""
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) \
            or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return int(bits)


def code_dtype(bits) -> np.dtype:
    """The smallest unsigned integer type that holds the codes of ``bits``-bit quantization."""
    return np.dtype(np.uint8) if check_bits(bits) <= 8 else np.dtype(np.uint16)


def zero_innovation_code(bits) -> int:
    """The code every entry gets when ``R = 0``: ``2^(b-1)``."""
    return 1 << (check_bits(bits) - 1)


# NumPy's pairwise summation (``np.sum`` of a contiguous float64 row, numpy >= 1.9): a range of more than
# PAIRWISE_BLOCK entries is split in two (the first part a multiple of PAIRWISE_LANES long, about half) and
# the halves' sums are added; a range of 8..128 entries is summed in 8 interleaved running sums combined as
# ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)), then its tail (< 8 entries) added in order; fewer than
# 8 entries are added in order from 0. The jitted kernel computes its two sums in exactly this order, so it
# agrees bitwise with the twin's ``np.sum(..., axis=1)`` (the tests check it), and 8 independent sums keep
# the pipeline busy where one running sum would wait on every addition.
PAIRWISE_BLOCK = 128
PAIRWISE_LANES = 8
# Depth bound of the split tree: ranges halve down to PAIRWISE_BLOCK, so 64 levels cover any int64 size.
PAIRWISE_DEPTH = 64
# The codes and Q of a range of at most this many entries are computed just before its sums, which then
# read g, Q_prev and Q from the cache instead of memory (3 x 16 KiB in float64).
QUANTIZE_CHUNK = 2048


@numba.njit(**JIT_OPTIONS)
def _radius(gradient, previous):
    """(R = max_i |g_i - Q_prev_i| in float64, whether some difference is NaN) for one worker.

    Four running maxima (a maximum is exact in any order, so this equals the sequential maximum).
    """
    size = gradient.shape[0]
    r0 = 0.0
    r1 = 0.0
    r2 = 0.0
    r3 = 0.0
    nan = False
    i = 0
    while i + 4 <= size:
        a0 = abs(np.float64(gradient[i]) - np.float64(previous[i]))
        a1 = abs(np.float64(gradient[i + 1]) - np.float64(previous[i + 1]))
        a2 = abs(np.float64(gradient[i + 2]) - np.float64(previous[i + 2]))
        a3 = abs(np.float64(gradient[i + 3]) - np.float64(previous[i + 3]))
        r0 = a0 if a0 > r0 else r0          # a comparison with NaN is false: NaN never becomes R
        r1 = a1 if a1 > r1 else r1
        r2 = a2 if a2 > r2 else r2
        r3 = a3 if a3 > r3 else r3
        nan |= (a0 != a0) | (a1 != a1) | (a2 != a2) | (a3 != a3)
        i += 4
    while i < size:
        a = abs(np.float64(gradient[i]) - np.float64(previous[i]))
        r0 = a if a > r0 else r0
        nan |= a != a
        i += 1
    return max(max(r0, r1), max(r2, r3)), nan


@numba.njit(**JIT_OPTIONS)
def _quantize_chunk(gradient, previous, r, half_levels, codes, quantized, error_terms, innovation_terms):
    """Codes and Q of one chunk of one worker (R > 0 and finite), and the chunk's terms (Q_i - g_i)^2 and
    (Q_i - Q_prev_i)^2 (Q as stored) into ``error_terms`` / ``innovation_terms``. One vectorized loop; it
    takes views of the chunk, so its index runs from 0 and needs no negative-index handling."""
    for i in range(gradient.shape[0]):
        g = np.float64(gradient[i])
        q_prev = np.float64(previous[i])
        # q_i = floor((g_i - Q_prev_i + R) / (2 tau R) + 1/2) = floor((t_i + 1) h + 1/2)
        q = np.floor(((g - q_prev) / r + 1.0) * half_levels + 0.5)
        codes[i] = q
        # Q_i = Q_prev_i + 2 tau R q_i - R = Q_prev_i + R (q_i / h - 1)
        quantized[i] = q_prev + r * (q / half_levels - 1.0)
        stored = np.float64(quantized[i])
        error_terms[i] = (stored - g) ** 2
        innovation_terms[i] = (stored - q_prev) ** 2


@numba.njit(**JIT_OPTIONS)
def _block_sum(values):
    """NumPy's pairwise-sum leaf of ``values`` (at most PAIRWISE_BLOCK non-negative entries)."""
    count = values.shape[0]
    if count < PAIRWISE_LANES:
        total = 0.0
        for i in range(count):
            total += values[i]
        return total
    # Lane j sums entries j, j + 8, ... NumPy starts its 8 sums from the first 8 entries rather than from 0;
    # 0 + t == t for the non-negative terms summed here, so starting from 0 gives the same bits.
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    whole = count - count % PAIRWISE_LANES
    for block in range(whole // PAIRWISE_LANES):
        i = block * PAIRWISE_LANES
        s0 += values[i]
        s1 += values[i + 1]
        s2 += values[i + 2]
        s3 += values[i + 3]
        s4 += values[i + 4]
        s5 += values[i + 5]
        s6 += values[i + 6]
        s7 += values[i + 7]
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for i in range(whole, count):
        total += values[i]
    return total


@numba.njit(**JIT_OPTIONS)
def _quantize_and_sum(gradient, previous, r, half_levels, codes, quantized):
    """Codes and Q of one worker (R > 0 and finite), and (||Q - g||^2, ||Q - Q_prev||^2) summed in NumPy's
    pairwise order.

    The split tree is walked with an explicit stack (post-order), leaves left to right: a node's sum is
    its left half's sum plus its right half's sum, as in NumPy's recursion. The first node of at most
    ``QUANTIZE_CHUNK`` entries on each path is quantized when it is first visited (with its squared
    terms, into a small buffer), so every entry is quantized once, just before its terms are summed.
    """
    node_start = np.empty(PAIRWISE_DEPTH, np.int64)
    node_count = np.empty(PAIRWISE_DEPTH, np.int64)
    node_phase = np.empty(PAIRWISE_DEPTH, np.int64)     # 0: new, 1: left half pending, 2: right pending
    left_error = np.empty(PAIRWISE_DEPTH, np.float64)
    left_innovation = np.empty(PAIRWISE_DEPTH, np.float64)
    error_terms = np.empty(QUANTIZE_CHUNK, np.float64)        # the current chunk's squared terms
    innovation_terms = np.empty(QUANTIZE_CHUNK, np.float64)
    chunk_start = 0
    node_start[0] = 0
    node_count[0] = gradient.shape[0]
    node_phase[0] = 0
    depth = 1
    error_sum = 0.0          # the sums of the node finished last
    innovation_sum = 0.0
    while depth > 0:
        top = depth - 1
        start = node_start[top]
        count = node_count[top]
        phase = node_phase[top]
        if phase == 0 and count <= QUANTIZE_CHUNK and (top == 0 or node_count[top - 1] > QUANTIZE_CHUNK):
            stop = start + count
            _quantize_chunk(gradient[start:stop], previous[start:stop], r, half_levels, codes[start:stop],
                            quantized[start:stop], error_terms, innovation_terms)
            chunk_start = start
        if count <= PAIRWISE_BLOCK:
            offset = start - chunk_start
            error_sum = _block_sum(error_terms[offset:offset + count])
            innovation_sum = _block_sum(innovation_terms[offset:offset + count])
            depth -= 1
            continue
        first = count // 2
        first -= first % PAIRWISE_LANES
        if phase == 0:
            node_phase[top] = 1
            node_start[depth] = start
            node_count[depth] = first
            node_phase[depth] = 0
            depth += 1
        elif phase == 1:
            left_error[top] = error_sum
            left_innovation[top] = innovation_sum
            node_phase[top] = 2
            node_start[depth] = start + first
            node_count[depth] = count - first
            node_phase[depth] = 0
            depth += 1
        else:
            error_sum = left_error[top] + error_sum
            innovation_sum = left_innovation[top] + innovation_sum
            depth -= 1
    return error_sum, innovation_sum


@numba.njit(**JIT_OPTIONS)
def laq_quantize(gradients, previous, bits, codes, quantized, radius, error, innovation):
    """Quantize each worker's gradient innovation to ``bits`` bits (see the module docstring).

    Writes ``codes``, ``quantized``, ``radius``, ``error`` and ``innovation``, all bitwise equal to
    :func:`laq_quantize_numpy`. Two passes per worker: R (four running maxima), then, chunk by chunk,
    the codes and Q (a vectorized loop; its two divisions dominate the arithmetic) and the two sums in
    NumPy's pairwise order (8 independent running sums per block) while the chunk is in the cache.
    """
    n_workers, size = gradients.shape
    half_levels = 0.5 * ((1 << bits) - 1)        # h = (2^b - 1) / 2 = 1 / (2 tau)
    zero_code = 1 << (bits - 1)
    for m in range(n_workers):
        # Pass 1: R = max_i |g_i - Q_prev_i|, watching for NaN.
        r, nan = _radius(gradients[m], previous[m])
        if nan or r == np.inf:
            radius[m] = np.nan
            error[m] = np.nan
            innovation[m] = np.nan
            for i in range(size):
                codes[m, i] = 0
                quantized[m, i] = np.nan
            continue
        radius[m] = r
        if r == 0.0:
            # Nothing changed: Q = Q_prev, e = 0, every code 2^(b-1).
            for i in range(size):
                codes[m, i] = zero_code
                quantized[m, i] = previous[m, i]
            error[m] = 0.0
            innovation[m] = 0.0
            continue
        error_sum, innovation_sum = _quantize_and_sum(gradients[m], previous[m], r, half_levels, codes[m],
                                                      quantized[m])
        # e = ||Q - g||^2, ||Q - Q_prev||^2; np.sum starts from its identity 0.0
        error[m] = 0.0 + error_sum
        innovation[m] = 0.0 + innovation_sum


def laq_quantize_numpy(gradients, previous, bits, codes, quantized, radius, error, innovation):
    """NumPy twin of :func:`laq_quantize`: same contract, same arithmetic, bitwise equal outputs.

    The reductions (``error``, ``innovation``) are ``np.sum`` (NumPy's pairwise summation), which the
    jitted kernel reproduces step for step.
    """
    bits = check_bits(bits)
    half_levels = 0.5 * ((1 << bits) - 1)                           # h = 1 / (2 tau)
    g = np.asarray(gradients).astype(np.float64, copy=False)
    q_prev = np.asarray(previous).astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):                            # inf - inf is reported as NaN R
        difference = g - q_prev
    r = np.max(np.abs(difference), axis=1, initial=0.0)           # R per worker (NaN propagates)
    finite = np.isfinite(r)
    positive = finite & (r > 0)
    safe_r = np.where(positive, r, 1.0)[:, None]                   # no 0/0 where R = 0 or not finite
    with np.errstate(invalid="ignore"):
        q = np.floor((difference / safe_r + 1.0) * half_levels + 0.5)   # q_i = floor((t_i + 1) h + 1/2)
        q[~positive] = 0.0
        dequantized = q_prev + safe_r * (q / half_levels - 1.0)    # Q = Q_prev + R (q / h - 1)
    quantized[...] = dequantized
    quantized[~positive] = previous[~positive]                     # R = 0: Q = Q_prev
    quantized[~finite] = np.nan
    codes[...] = q
    codes[finite & ~positive] = 1 << (bits - 1)                    # R = 0: the zero-innovation code
    stored = quantized.astype(np.float64, copy=False)
    error[...] = np.sum((stored - g) ** 2, axis=1)                 # e = ||Q - g||^2
    innovation[...] = np.sum((stored - q_prev) ** 2, axis=1)       # ||Q - Q_prev||^2
    radius[...] = np.where(finite, r, np.nan)
    error[~finite] = np.nan
    innovation[~finite] = np.nan


class QuantizedInnovation(NamedTuple):
    """What :func:`quantize_innovation` returns (one row / entry per worker)."""

    codes: np.ndarray        # (M, P) uint8 or uint16: q, the b-bit codes a worker would send
    quantized: np.ndarray    # (M, P) float: Q = Q_prev + 2 tau R q - R
    radius: np.ndarray       # (M,) float64: R, sent with the codes as one 32-bit float
    error: np.ndarray        # (M,) float64: e = ||Q - g||^2
    innovation: np.ndarray   # (M,) float64: ||Q - Q_prev||^2


def quantize_innovation(gradients: np.ndarray, previous: np.ndarray, bits: int,
                        jit: bool = True) -> QuantizedInnovation:
    """Validate, allocate and quantize ``gradients`` relative to ``previous`` (both ``(M, P)``).

    Parameters
    ----------
    gradients, previous : ndarray, shape (M, P)
        Each worker's gradient ``g`` and its last uploaded quantized gradient ``Q_prev``; same shape
        and float dtype. ``quantized`` comes back in that dtype.
    bits : int
        ``b`` in [1, 16]; codes are uint8 for ``b <= 8``, else uint16.
    jit : bool
        Use the Numba kernel (default) or its NumPy twin.
    """
    bits = check_bits(bits)
    gradients = np.asarray(gradients)
    previous = np.asarray(previous)
    if gradients.ndim != 2 or gradients.shape != previous.shape:
        raise ValueError(f"gradients and previous must both have shape (workers, parameters), got "
                         f"{gradients.shape} and {previous.shape}")
    if gradients.dtype != previous.dtype or gradients.dtype.kind != "f":
        raise ValueError(f"gradients and previous must share one float dtype, got {gradients.dtype} "
                         f"and {previous.dtype}")
    n_workers = gradients.shape[0]
    codes = np.empty(gradients.shape, dtype=code_dtype(bits))
    quantized = np.empty_like(gradients)
    radius = np.empty(n_workers, dtype=np.float64)
    error = np.empty(n_workers, dtype=np.float64)
    innovation = np.empty(n_workers, dtype=np.float64)
    kernel = laq_quantize if jit else laq_quantize_numpy
    kernel(gradients, previous, bits, codes, quantized, radius, error, innovation)
    return QuantizedInnovation(codes, quantized, radius, error, innovation)


def laq_dequantize(codes: np.ndarray, previous: np.ndarray, radius: np.ndarray, bits: int) -> np.ndarray:
    """The server's reconstruction ``Q = Q_prev + 2 tau R q - R = Q_prev + R (q / h - 1)`` from what was sent.

    One vectorised expression (no kernel needed); equals the ``quantized`` output of the quantizer
    bitwise. ``R = 0`` gives ``Q_prev`` whatever the codes.
    """
    bits = check_bits(bits)
    half_levels = 0.5 * ((1 << bits) - 1)
    r = np.asarray(radius, dtype=np.float64)[:, None]
    q_prev = np.asarray(previous)
    offsets = r * (codes.astype(np.float64) / half_levels - 1.0)                # R (q / h - 1)
    dequantized = q_prev.astype(np.float64, copy=False) + offsets
    return dequantized.astype(q_prev.dtype, copy=False)
