"""Kernels of PowerSGD (Vogels, Karimireddy, Jaggi, arXiv 1905.13727): Gram-Schmidt and the low-rank product.

A matrix segment of the flat vector is an ``n x m`` row-major matrix ``M``; its factors are row-major
``P`` / ``P_hat`` (n, r) and ``Q`` (m, r), in the input's dtype (float32 or float64) except where said.

**Orthogonalization** (:func:`_orthogonalize`), bit for bit. The r columns ``p_j`` of ``P`` are converted to
float64 and processed in order; ``norm(v) = s * sqrt(sum_i (v_i / s)^2)`` with ``s = max_i |v_i|`` (0 when
``s = 0``), summed sequentially in index order, so that no square under- or overflows::

    a_j = norm(p_j)
    v   = p_j
    twice:  for i < j (in order):  v = v - (q_i . v) q_i        modified Gram-Schmidt, re-run once
    b_j = norm(v)
    q_j = (v / s) / sqrt(sum_i (v_i / s)^2)     if b_j > tol * a_j      (a unit vector; s = max |v_i|)
    q_j = 0                                      otherwise               (dropped: zero or dependent)

``q_i . v`` is the sequential float64 sum of ``q_ki v_k``. The second pass ("twice is enough", Kahan and
Parlett) keeps the kept columns orthogonal to working precision; a dropped (zero) column projects out
nothing. ``P_hat`` is the q_j rounded to ``P``'s dtype. The drop rule is fedsim's (the paper does not say
what happens to a zero column): ``tol`` = sqrt(eps) of the dtype (:data:`DROP_TOLERANCE`), since rounding
in ``P = M Q`` alone perturbs a column by about ``eps sqrt(m)`` of its length; a dropped column leaves its
part of ``M`` in the error-feedback residual.

**Low-rank product** (:func:`low_rank_product`): ``out = left right^T``, each entry
``out_ij = (((l_i0 r_j0) + l_i1 r_j1) + ...) + l_i(r-1) r_j(r-1)`` summed over the rank in order in the
data dtype (no fused multiply-add), so that sender, receiver and NumPy twin agree whatever BLAS does.

**One power step** (:func:`power_step`): the round of :mod:`fedsim.compress.powersgd` (its equations) on
the K senders' matrices ``M_k`` with the shared warm start ``Q``: the matrix products NumPy's (BLAS), the
means summed in sender order, elementwise in the data dtype, and ``decoded_k = low_rank_product(P_hat,
Q_k)``; :func:`power_step_numpy` is the same step built on the twins. The arrays are of one float dtype,
C-contiguous where jitted code reads or writes them (the matrices and ``q``, read by NumPy's products only,
may have any strides). Finite matrices whose products overflow the dtype (entries near the float maximum)
raise ``UpdateOverflowError(PRODUCT_OVERFLOW_MESSAGE)`` (a ValueError): mean_k P_k and mean_k Q_k are checked,
and the decoded rows only where some ``sum_t |Q_kjt|`` nears the maximum (``|P_hat| <= 1`` bounds them by it).
"""

from __future__ import annotations

import numba
import numpy as np

from fedsim.errors import UpdateOverflowError
from fedsim.kernels import JIT_OPTIONS, checks
from fedsim.kernels.checks import FLOAT, Array, Real, checked
from fedsim.kernels.selection import NONFINITE_MESSAGE

# Relative drop tolerance of the orthogonalization: sqrt(eps) of the data dtype (module docstring).
DROP_TOLERANCE = {np.dtype(t): float(np.sqrt(np.finfo(t).eps)) for t in (np.float32, np.float64)}
PRODUCT_OVERFLOW_MESSAGE = ("PowerSGD: the update is finite, but its products with the factors overflow its dtype "
                            "(entries near the float maximum; the update has diverged)")
# Projection passes of the Gram-Schmidt step (one pass and one reorthogonalization).
PROJECTION_PASSES = 2

_jit = numba.njit(**JIT_OPTIONS)


def drop_tolerance(dtype) -> float:
    """``tol`` of :func:`_orthogonalize` for data of ``dtype`` (float32 or float64)."""
    return DROP_TOLERANCE[np.dtype(dtype)]


# --- Orthogonalization ----------------------------------------------------------------------------

@_jit
def _scaled_norm(columns, j):
    """(norm of row ``j`` of ``columns``, its largest magnitude s, sqrt(sum (v_i / s)^2))."""
    n = columns.shape[1]
    largest = 0.0
    for i in range(n):
        largest = max(largest, abs(columns[j, i]))
    if largest == 0.0:
        return 0.0, 0.0, 0.0
    total = 0.0
    for i in range(n):
        scaled = columns[j, i] / largest
        total += scaled * scaled
    root = np.sqrt(total)
    return largest * root, largest, root


@_jit
def _orthogonalize_core(p, tolerance, out):
    n, rank = p.shape
    columns = np.empty((rank, n), np.float64)     # column j of p as row j: contiguous
    for i in range(n):
        for j in range(rank):
            value = p[i, j]
            if not np.isfinite(value):
                raise ValueError(NONFINITE_MESSAGE)
            columns[j, i] = np.float64(value)
    kept = 0
    for j in range(rank):
        before = _scaled_norm(columns, j)[0]
        for _ in range(PROJECTION_PASSES):
            for previous in range(j):
                dot = 0.0
                for i in range(n):
                    dot += columns[previous, i] * columns[j, i]
                for i in range(n):
                    columns[j, i] = columns[j, i] - dot * columns[previous, i]
        after, largest, root = _scaled_norm(columns, j)
        if after > tolerance * before:
            for i in range(n):
                columns[j, i] = (columns[j, i] / largest) / root
            kept += 1
        else:
            for i in range(n):
                columns[j, i] = 0.0
    for i in range(n):
        for j in range(rank):
            out[i, j] = columns[j, i]
    return kept


@checked(_orthogonalize_core, p=Array(FLOAT, ndim=2), tolerance=Real(0.0),
         out=Array(FLOAT, output=True, shape=lambda p: p.shape, like="p"))
def _orthogonalize(p, tolerance, out):
    """Gram-Schmidt on the r columns of ``p`` (n, r) into ``out``; returns the number of kept (nonzero)
    columns. Definition, drop rule and ``tolerance``: module docstring."""


def _scaled_norm_numpy(column):
    largest = np.max(np.abs(column)) if column.size else 0.0
    if largest == 0.0:
        return 0.0, 0.0, 0.0
    scaled = column / largest
    root = np.sqrt(np.cumsum(scaled * scaled)[-1])
    return largest * root, largest, root


def _orthogonalize_numpy(p, tolerance, out):
    p, tolerance, out = _orthogonalize.check(p, tolerance, out)
    if not np.all(np.isfinite(p)):
        raise ValueError(NONFINITE_MESSAGE)
    columns = np.array(p.T, dtype=np.float64, order="C")       # a copy (a view would write into p)
    kept = 0
    for j in range(columns.shape[0]):
        before = _scaled_norm_numpy(columns[j])[0]
        for _ in range(PROJECTION_PASSES):
            for previous in range(j):
                dot = np.cumsum(columns[previous] * columns[j])[-1] if columns.shape[1] else 0.0
                columns[j] = columns[j] - dot * columns[previous]
        after, largest, root = _scaled_norm_numpy(columns[j])
        if after > tolerance * before:
            columns[j] = (columns[j] / largest) / root
            kept += 1
        else:
            columns[j] = 0.0
    out[...] = columns.T
    return kept


# --- Low-rank product -----------------------------------------------------------------------------

@_jit
def _low_rank_product_core(left, right, out):          # (r >= 1)
    n, rank = left.shape
    m = right.shape[0]
    transposed = np.empty((rank, m), right.dtype)   # rows of right^T: the inner loop runs contiguously
    for j in range(m):
        for t in range(rank):
            transposed[t, j] = right[j, t]
    for i in range(n):
        weight = left[i, 0]
        for j in range(m):
            out[i, j] = weight * transposed[0, j]
        for t in range(1, rank):
            weight = left[i, t]
            for j in range(m):
                out[i, j] = out[i, j] + weight * transposed[t, j]


def _has_rank(left):
    if left.shape[1] < 1:
        raise ValueError(f"left must have r >= 1 columns (the rank), got shape {left.shape}")


def _same_rank(left, right):
    if right.shape[1] != left.shape[1]:
        raise ValueError(f"right must have the r = {left.shape[1]} columns of left, got shape {right.shape}")


@checked(_low_rank_product_core, left=Array(FLOAT, ndim=2, then=_has_rank),
         right=Array(FLOAT, ndim=2, like="left", then=_same_rank),
         out=Array(FLOAT, output=True, shape=lambda left, right: (left.shape[0], right.shape[0]), like="left"))
def low_rank_product(left, right, out):
    """``out`` (n, m) = ``left`` (n, r) times ``right`` (m, r) transposed, summed over the rank in order
    (r >= 1)."""


def low_rank_product_numpy(left, right, out):
    left, right, out = low_rank_product.check(left, right, out)
    np.multiply(left[:, 0:1], right[:, 0][None, :], out=out)
    for t in range(1, left.shape[1]):
        out += left[:, t:t + 1] * right[:, t][None, :]


# --- One power step over K senders ----------------------------------------------------------------

def _sender_mean(stacked):
    """(x_0 + x_1 + ... + x_(K-1)) / K, elementwise in sender order, in the data dtype."""
    total = stacked[0].copy()
    for k in range(1, stacked.shape[0]):
        total += stacked[k]
    return total / stacked.dtype.type(stacked.shape[0])


def _finite(products, matrices):
    """``products`` if finite; else UpdateOverflowError(PRODUCT_OVERFLOW_MESSAGE) when the matrices are finite, a
    ValueError(NONFINITE_MESSAGE) when not."""
    if not np.isfinite(products).all():
        raise (UpdateOverflowError(PRODUCT_OVERFLOW_MESSAGE) if np.isfinite(matrices).all() else
               ValueError(NONFINITE_MESSAGE))
    return products


def _power_step(matrices, q, tolerance, decoded_out, orthogonalize_fn, product_fn):
    with np.errstate(over="ignore", invalid="ignore"):     # an overflow is refused in one line (_finite)
        p_each = np.matmul(matrices, q)                                 # P_k = M_k Q      (K, n, r)
        p_hat = np.empty(p_each.shape[1:], matrices.dtype)
        orthogonalize_fn(_finite(_sender_mean(p_each), matrices), tolerance, p_hat)   # P_hat = orth(mean_k P_k)
        q_each = np.ascontiguousarray(np.matmul(matrices.transpose(0, 2, 1), p_hat))   # Q_k = M_k^T P_hat
        q_mean = _finite(_sender_mean(q_each), matrices)
        for k in range(matrices.shape[0]):
            product_fn(p_hat, q_each[k], decoded_out[k])                # decoded_k = P_hat Q_k^T
        if not np.isfinite(2 * np.abs(q_each).sum(axis=2)).all():     # (module docstring)
            _finite(decoded_out, matrices)
    return p_hat, q_each, q_mean


# power_step's core: NumPy's products and the jitted cores
_power_step_core = checks.python_core(_power_step, orthogonalize_fn=_orthogonalize_core,
                                      product_fn=_low_rank_product_core)


def _has_senders(matrices):
    if matrices.shape[0] == 0:
        raise ValueError(f"matrices must hold K >= 1 senders' (n, m) matrices, got shape {matrices.shape}")


def _warm_start_fits(matrices, q):
    m = matrices.shape[2]
    if q.shape[0] != m or q.shape[1] < 1:
        raise ValueError(f"q must have shape (m, r) = ({m}, r) with r >= 1, got {q.shape}")


def _matrices_contiguous(decoded_out):
    """Each decoded_out[k] C-contiguous (the rows of a batch may be apart: a view into a wider (K, P) array
    is accepted)."""
    if not decoded_out[0].flags.c_contiguous:
        raise ValueError("decoded_out must hold C-contiguous (n, m) matrices (np.ascontiguousarray gives a "
                         "contiguous copy)")


# matrices and q: any strides (only NumPy reads them)
@checked(_power_step_core, matrices=Array(FLOAT, ndim=3, contiguous=False, then=_has_senders),
         q=Array(FLOAT, ndim=2, contiguous=False, like="matrices", then=_warm_start_fits), tolerance=Real(0.0),
         decoded_out=Array(FLOAT, ndim=3, output=True, contiguous=False, shape=lambda matrices: matrices.shape,
                           like="matrices", then=_matrices_contiguous))
def power_step(matrices, q, tolerance, decoded_out):
    """One PowerSGD power step (module docstring) with the jitted kernels: the senders' matrices M_k
    (K, n, m), the shared warm start Q (m, r), the drop ``tolerance`` of :func:`_orthogonalize`; writes
    ``decoded_k = P_hat Q_k^T`` into ``decoded_out`` (K, n, m). Returns (P_hat (n, r), Q_k (K, m, r),
    Q_new = mean_k Q_k (m, r)).
    """


def power_step_numpy(matrices, q, tolerance, decoded_out):
    matrices, q, tolerance, decoded_out = power_step.check(matrices, q, tolerance, decoded_out)
    return _power_step(matrices, q, tolerance, decoded_out, _orthogonalize_numpy, low_rank_product_numpy)


__all__ = ["DROP_TOLERANCE", "drop_tolerance", "low_rank_product", "low_rank_product_numpy", "power_step",
           "power_step_numpy"]
