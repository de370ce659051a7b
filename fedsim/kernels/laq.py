"""The LAQ innovation quantizer (Sun, Chen, Giannakis, Yang, arXiv 1909.07588), batched over workers.

Each worker quantizes its gradient ``g`` *relative to the last quantized gradient it uploaded*,
``Q_prev``, on a uniform grid of ``2^b`` points spanning ``[Q_prev - R, Q_prev + R]``::

    R     = max_i |g_i - Q_prev_i|                          radius (one float per worker, sent as 32 bits)
    tau   = 1 / (2^b - 1)
    q_i   = floor((g_i - Q_prev_i + R) / (2 tau R) + 1/2)   integer code in [0, 2^b - 1] (b bits each)
    Q     = Q_prev + 2 tau R q - R                          what the server reconstructs
    e     = ||Q - g||^2                                     quantization error
    |Q_i - g_i| <= tau R                                    every entry (rounding to the nearest grid point)

``R = 0`` (the gradient equals ``Q_prev``) gives ``Q = Q_prev``, ``e = 0`` and every code ``2^(b-1)``,
the limit R -> 0 of the formula for a zero innovation (the reference code divided by zero there); any code
dequantizes to ``Q_prev`` when ``R = 0``. A worker whose innovation ``g - Q_prev`` has a NaN or an
infinite entry (also by overflow) gets ``R = nan``, all codes 0 and ``Q``, ``e`` and ``||Q - Q_prev||^2``
NaN: callers that must stop on divergence check ``radius``.

Evaluation. With ``h = (2^b - 1) / 2 = 1 / (2 tau)`` (so ``h + 1/2 = 2^(b-1)``), a scale ``s = h / R`` and
the grid step ``delta = R / h = 2 tau R``, both computed once per worker, the two equations read::

    q_i = floor((g_i - Q_prev_i) s + 2^(b-1))   = floor((g_i - Q_prev_i + R) / (2 tau R) + 1/2)
    Q_i = Q_prev_i + (q_i delta - R)            = Q_prev_i + 2 tau R q_i - R

a multiplication per entry where the published form divides. Where ``s`` or ``delta`` would not be a
normal float64 (R within a factor ``h`` of the smallest normal number or of the largest float) that worker
takes the division form ``q_i = floor(((g_i - Q_prev_i) / R + 1) h + 1/2)``, ``Q_i = Q_prev_i + R (q_i / h
- 1)``. The forms agree to rounding; a zero-innovation entry gets exactly ``q = 2^(b-1)`` in both and the
codes stay in [0, 2^b - 1]. Arithmetic is float64 inside; ``Q`` is stored in the dtype of the
``quantized`` output, so |Q_i - g_i| <= tau R holds up to that rounding.

:func:`laq_quantize` (and its NumPy twin, bitwise equal) writes preallocated outputs::

    gradients  (M, P) float      g of each worker
    previous   (M, P) float      Q_prev of each worker (its last upload)
    bits       int in [1, 16]    b
    codes      (M, P) uint8 (b <= 8) or uint16 (b <= 16)      out: q
    quantized  (M, P) float      out: Q
    radius     (M,)   float64    out: R
    error      (M,)   float64    out: e = ||Q - g||^2
    innovation (M,)   float64    out: ||Q - Q_prev||^2 (what the LAQ upload rule compares)

checking that contract first (:mod:`fedsim.kernels.checks`). :func:`quantize_innovation` validates,
allocates and calls one of them; :func:`_laq_dequantize` is the server's side (codes + R -> Q).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS, LAQ_MAX_BITS as MAX_BITS, LAQ_MIN_BITS as MIN_BITS, checks
from fedsim.kernels.checks import CODE, FLOAT, FLOAT64, Array, Count, checked


def check_bits(bits) -> int:
    """``bits`` as an int, or ValueError unless it is an integer in [1, 16]."""
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) \
            or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return int(bits)


def code_dtype(bits) -> np.dtype:
    """The smallest unsigned integer type that holds the codes of ``bits``-bit quantization."""
    return np.dtype(np.uint8) if check_bits(bits) <= 8 else np.dtype(np.uint16)


# The two sums e = ||Q - g||^2 and ||Q - Q_prev||^2 are taken in column order: a worker's P terms, laid out
# in rows of SUM_COLUMNS (the last padded with zeros), are added down each column row after row (elementwise:
# the kernel folds it into its vectorized quantization loop), then the column sums are added by ``np.sum``
# (pairwise: two halves of 256, each two leaves of 128 summed in 8 interleaved running sums combined as
# ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))). The twin computes the same order with NumPy.
SUM_COLUMNS = 512
PAIRWISE_BLOCK = 128
PAIRWISE_LANES = 8
SMALLEST_NORMAL = float(np.finfo(np.float64).tiny)


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


def grid_constants(radius, half_levels):
    """``(s, delta) = (h / R, R / h)`` for the multiplication form, or ``(0.0, 0.0)`` where either is not
    a normal float64 (then the worker is quantized in the division form). Shared by the kernel, its twin
    and the server's dequantizer, so all three choose the same form."""
    scale = half_levels / radius
    step = radius / half_levels
    if SMALLEST_NORMAL <= scale < np.inf and SMALLEST_NORMAL <= step < np.inf:
        return scale, step
    return 0.0, 0.0


_grid_constants = numba.njit(**JIT_OPTIONS)(grid_constants)


def _grid_constants_per_worker(safe_radius: np.ndarray, half_levels: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`grid_constants` of each worker's (positive, finite) radius, as two ``(M, 1)`` columns."""
    with np.errstate(over="ignore", divide="ignore"):
        constants = np.array([grid_constants(r_m, half_levels) for r_m in safe_radius], dtype=np.float64)
    constants = constants.reshape(-1, 2)
    return constants[:, :1], constants[:, 1:]


@numba.njit(**JIT_OPTIONS)
def _quantize_row(gradient, previous, r, half_levels, scale, step, zero_code, codes, quantized,
                  error_columns, innovation_columns):
    """Codes and Q of one row of at most SUM_COLUMNS entries of one worker (R > 0 and finite), adding the
    row's terms (Q_i - g_i)^2 and (Q_i - Q_prev_i)^2 (Q as stored) into the column sums. One vectorized
    loop per form; it takes views of the row, so its index runs from 0 and needs no negative-index
    handling."""
    if step > 0.0:
        for i in range(gradient.shape[0]):
            g = np.float64(gradient[i])
            q_prev = np.float64(previous[i])
            q = np.floor((g - q_prev) * scale + zero_code)          # q_i = floor(d_i s + 2^(b-1))
            codes[i] = q
            quantized[i] = q_prev + (q * step - r)                   # Q_i = Q_prev_i + (q_i delta - R)
            stored = np.float64(quantized[i])
            error_columns[i] += (stored - g) ** 2
            innovation_columns[i] += (stored - q_prev) ** 2
    else:
        for i in range(gradient.shape[0]):
            g = np.float64(gradient[i])
            q_prev = np.float64(previous[i])
            q = np.floor(((g - q_prev) / r + 1.0) * half_levels + 0.5)   # q_i = floor((d_i / R + 1) h + 1/2)
            codes[i] = q
            quantized[i] = q_prev + r * (q / half_levels - 1.0)        # Q_i = Q_prev_i + R (q_i / h - 1)
            stored = np.float64(quantized[i])
            error_columns[i] += (stored - g) ** 2
            innovation_columns[i] += (stored - q_prev) ** 2


@numba.njit(**JIT_OPTIONS)
def _leaf_sum(values):
    """NumPy's pairwise-sum leaf of PAIRWISE_BLOCK non-negative entries: 8 interleaved running sums.

    NumPy starts its 8 sums from the first 8 entries rather than from 0; 0 + t == t for the non-negative
    terms summed here, so starting from 0 gives the same bits."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    for i in range(0, PAIRWISE_BLOCK, PAIRWISE_LANES):
        s0 += values[i]
        s1 += values[i + 1]
        s2 += values[i + 2]
        s3 += values[i + 3]
        s4 += values[i + 4]
        s5 += values[i + 5]
        s6 += values[i + 6]
        s7 += values[i + 7]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@numba.njit(**JIT_OPTIONS)
def _column_total(columns):
    """``np.sum`` of the SUM_COLUMNS (a power of two times PAIRWISE_BLOCK) column sums, in its pairwise
    order: the leaves' sums, then adjacent pairs added level by level."""
    sums = np.empty(SUM_COLUMNS // PAIRWISE_BLOCK, np.float64)
    for leaf in range(sums.shape[0]):
        sums[leaf] = _leaf_sum(columns[leaf * PAIRWISE_BLOCK:(leaf + 1) * PAIRWISE_BLOCK])
    count = sums.shape[0]
    while count > 1:
        count //= 2
        for j in range(count):
            sums[j] = sums[2 * j] + sums[2 * j + 1]
    return sums[0]


@numba.njit(**JIT_OPTIONS)
def _laq_quantize_core(gradients, previous, bits, codes, quantized, radius, error, innovation):
    n_workers, size = gradients.shape
    half_levels = 0.5 * ((1 << bits) - 1)        # h = (2^b - 1) / 2 = 1 / (2 tau)
    zero_code = 1 << (bits - 1)
    error_columns = np.empty(SUM_COLUMNS, np.float64)
    innovation_columns = np.empty(SUM_COLUMNS, np.float64)
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
        scale, step = _grid_constants(r, half_levels)
        error_columns[:] = 0.0
        innovation_columns[:] = 0.0
        for start in range(0, size, SUM_COLUMNS):
            stop = min(start + SUM_COLUMNS, size)
            width = stop - start
            _quantize_row(gradients[m, start:stop], previous[m, start:stop], r, half_levels, scale, step,
                          float(zero_code), codes[m, start:stop], quantized[m, start:stop],
                          error_columns[:width], innovation_columns[:width])
        # e = ||Q - g||^2, ||Q - Q_prev||^2 from the column sums; np.sum starts from its identity 0.0
        error[m] = 0.0 + _column_total(error_columns)
        innovation[m] = 0.0 + _column_total(innovation_columns)


class _Bits(Count):
    """The bits b of the quantization (:func:`check_bits`: ValueError for any wrong value or type)."""

    type_errors = (ValueError,)

    def __init__(self):
        super().__init__(MIN_BITS, MAX_BITS)

    def check(self, name, value, values):
        return check_bits(value)


def _workers_and_parameters(gradients):
    return gradients.shape


def _workers(gradients):
    return gradients.shape[:1]


def _codes_hold(bits, codes):
    """codes wide enough for ``bits``-bit codes."""
    if bits > 8 * codes.dtype.itemsize:
        raise TypeError(f"codes must have dtype {code_dtype(bits)} (or wider) for {bits}-bit codes, got "
                        f"{codes.dtype}")


_PER_WORKER = Array(FLOAT64, output=True, shape=_workers)


@checked(_laq_quantize_core, extra=_codes_hold, gradients=Array(FLOAT, ndim=2),
         previous=Array(FLOAT, shape=_workers_and_parameters), bits=_Bits(),
         codes=Array(CODE, output=True, shape=_workers_and_parameters),
         quantized=Array(FLOAT, output=True, shape=_workers_and_parameters), radius=_PER_WORKER,
         error=_PER_WORKER, innovation=_PER_WORKER)
def laq_quantize(gradients, previous, bits, codes, quantized, radius, error, innovation):
    """Quantize each worker's gradient innovation to ``bits`` bits (module docstring for the contract).

    Two passes per worker: R (four running maxima), then, row by row of SUM_COLUMNS entries, the codes, Q
    and the two sums' column sums in one vectorized loop; the column sums are added in NumPy's pairwise
    order at the end.
    """


def laq_quantize_numpy(gradients, previous, bits, codes, quantized, radius, error, innovation):
    """NumPy twin of :func:`laq_quantize`, bitwise equal (the sums in the kernel's order:
    :func:`column_order_sum`)."""
    gradients, previous, bits, codes, quantized, radius, error, innovation = laq_quantize.check(
        gradients, previous, bits, codes, quantized, radius, error, innovation)
    half_levels = 0.5 * ((1 << bits) - 1)                           # h = 1 / (2 tau)
    zero_code = float(1 << (bits - 1))                              # 2^(b-1) = h + 1/2
    g = np.asarray(gradients).astype(np.float64, copy=False)
    q_prev = np.asarray(previous).astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):                            # inf - inf is reported as NaN R
        difference = g - q_prev
    r = np.max(np.abs(difference), axis=1, initial=0.0)           # R per worker (NaN propagates)
    finite = np.isfinite(r)
    positive = finite & (r > 0)
    safe_r = np.where(positive, r, 1.0)                            # no 0/0 where R = 0 or not finite
    scale, step = _grid_constants_per_worker(safe_r, half_levels)
    multiply = step > 0
    safe_r = safe_r[:, None]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # q_i = floor(d_i s + 2^(b-1)), or floor((d_i / R + 1) h + 1/2) where s or delta is not normal
        q = np.where(multiply, np.floor(difference * scale + zero_code),
                     np.floor((difference / safe_r + 1.0) * half_levels + 0.5))
        q[~positive] = 0.0
        # Q_i = Q_prev_i + (q_i delta - R), or Q_prev_i + R (q_i / h - 1)
        dequantized = np.where(multiply, q_prev + (q * step - safe_r), q_prev + safe_r * (q / half_levels - 1.0))
    quantized[...] = dequantized
    quantized[~positive] = previous[~positive]                     # R = 0: Q = Q_prev
    quantized[~finite] = np.nan
    codes[...] = q
    codes[finite & ~positive] = 1 << (bits - 1)                    # R = 0: the zero-innovation code
    stored = quantized.astype(np.float64, copy=False)
    with np.errstate(over="ignore"):                               # R near the largest float: e = inf
        error[...] = column_order_sum((stored - g) ** 2)           # e = ||Q - g||^2
        innovation[...] = column_order_sum((stored - q_prev) ** 2) # ||Q - Q_prev||^2
    radius[...] = np.where(finite, r, np.nan)
    error[~finite] = np.nan
    innovation[~finite] = np.nan


def column_order_sum(terms: np.ndarray) -> np.ndarray:
    """Each row of ``terms`` (shape ``(M, P)``) summed in the kernel's order: laid out in rows of
    SUM_COLUMNS (zero-padded), added down the columns row after row, then ``np.sum`` of the columns."""
    n_workers, size = terms.shape
    rows = -(-size // SUM_COLUMNS)
    padded = np.zeros((n_workers, rows * SUM_COLUMNS), dtype=np.float64)
    padded[:, :size] = terms
    padded = padded.reshape(n_workers, rows, SUM_COLUMNS)
    columns = np.zeros((n_workers, SUM_COLUMNS), dtype=np.float64)
    for row in range(rows):
        columns += padded[:, row]              # one row at a time: the order is the kernel's, not NumPy's choice
    return np.sum(columns, axis=1)


class QuantizedInnovation(NamedTuple):
    """What :func:`quantize_innovation` returns (one row / entry per worker)."""

    codes: np.ndarray        # (M, P) uint8 or uint16: q, the b-bit codes a worker would send
    quantized: np.ndarray    # (M, P) float: Q = Q_prev + 2 tau R q - R
    radius: np.ndarray       # (M,) float64: R, sent with the codes as one 32-bit float
    error: np.ndarray        # (M,) float64: e = ||Q - g||^2
    innovation: np.ndarray   # (M,) float64: ||Q - Q_prev||^2


def quantize_innovation(gradients: np.ndarray, previous: np.ndarray, bits: int,
                        jit: bool = True) -> QuantizedInnovation:
    """Validate, allocate and quantize ``gradients`` relative to ``previous`` (both (M, P), one float dtype,
    which ``quantized`` keeps), with the Numba kernel (``jit``) or its NumPy twin."""
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
    gradients = np.ascontiguousarray(gradients)          # the kernels take C-contiguous arrays
    previous = np.ascontiguousarray(previous)
    codes = np.empty(gradients.shape, dtype=code_dtype(bits))
    quantized = np.empty_like(gradients)
    radius = np.empty(n_workers, dtype=np.float64)
    error = np.empty(n_workers, dtype=np.float64)
    innovation = np.empty(n_workers, dtype=np.float64)
    kernel = laq_quantize if jit else laq_quantize_numpy
    kernel(gradients, previous, bits, codes, quantized, radius, error, innovation)
    return QuantizedInnovation(codes, quantized, radius, error, innovation)


def _check_dequantize(codes, previous, radius, bits):
    """(codes, previous, radius as float64) for :func:`_laq_dequantize`, or ValueError / TypeError."""
    checks.array("codes", codes, checks.INTEGER, 2, contiguous=False)
    checks.array("previous", previous, checks.FLOAT, 2, contiguous=False)
    checks.array("radius", radius, checks.FLOAT, 1, contiguous=False)
    if codes.shape != previous.shape:
        raise ValueError(f"codes and previous must both have shape (workers, parameters), got {codes.shape} "
                         f"and {previous.shape}")
    if radius.shape != previous.shape[:1]:
        raise ValueError(f"radius must have shape {previous.shape[:1]} (one per worker), got {radius.shape}")
    if codes.size and (codes.min() < 0 or codes.max() > (1 << bits) - 1):
        bad = codes[(codes < 0) | (codes > (1 << bits) - 1)][0]
        raise ValueError(f"codes must be in [0, {(1 << bits) - 1}] for {bits}-bit quantization, got {int(bad)}")
    r = radius.astype(np.float64)
    if not np.all(np.isfinite(r) & (r >= 0)):
        bad = r[~(np.isfinite(r) & (r >= 0))][0]
        raise ValueError(f"radius must be finite and >= 0 (a NaN radius is a diverged worker), got {bad}")
    return codes, previous, r


def _laq_dequantize(codes: np.ndarray, previous: np.ndarray, radius: np.ndarray, bits: int) -> np.ndarray:
    """The server's reconstruction ``Q = Q_prev + 2 tau R q - R`` from the (M, P) codes and the (M,) radii,
    in the quantizer's arithmetic (so bitwise its ``quantized``); ``R = 0`` gives ``Q_prev``. A NaN radius
    (a diverged worker) raises ValueError."""
    bits = check_bits(bits)
    codes, q_prev, r = _check_dequantize(codes, previous, radius, bits)
    half_levels = 0.5 * ((1 << bits) - 1)
    q = codes.astype(np.float64)
    moving = r > 0
    safe_r = np.where(moving, r, 1.0)
    _, step = _grid_constants_per_worker(safe_r, half_levels)
    safe_r = safe_r[:, None]
    offsets = np.where(step > 0, q * step - safe_r, safe_r * (q / half_levels - 1.0))
    q_prev64 = q_prev.astype(np.float64, copy=False)
    dequantized = np.where(moving[:, None], q_prev64 + offsets, q_prev64)
    return dequantized.astype(q_prev.dtype, copy=False)
