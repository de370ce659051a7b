"""Kernels of PowerSGD (Vogels, Karimireddy, Jaggi, arXiv 1905.13727): Gram-Schmidt and the low-rank product.

Conventions
-----------
A matrix segment of the flat vector is an ``n x m`` row-major matrix ``M``; its factors are row-major
arrays ``P`` / ``P_hat`` of shape ``(n, r)`` and ``Q`` of shape ``(m, r)``. The kernels work in the dtype of
their input (float32 or float64) except where said; non-finite input raises
``ValueError(sparsify.NONFINITE_MESSAGE)``.

**Orthogonalization** (:func:`orthogonalize`), defined bit for bit. The r columns ``p_0 .. p_(r-1)`` of
``P`` are converted to float64 and processed in order; ``norm(v)`` is the scaled 2-norm
``s * sqrt(sum_i (v_i / s)^2)`` with ``s = max_i |v_i|`` (0 when ``s = 0``), the sum taken sequentially in
index order, so that no square under- or overflows::

    a_j = norm(p_j)
    v   = p_j
    twice:  for i < j (in order):  v = v - (q_i . v) q_i        modified Gram-Schmidt, re-run once
    b_j = norm(v)
    q_j = (v / s) / sqrt(sum_i (v_i / s)^2)     if b_j > tol * a_j      (a unit vector; s = max |v_i|)
    q_j = 0                                      otherwise               (dropped: zero or dependent)

``q_i . v`` is the sequential float64 sum of ``q_ki v_k`` in index order. The second projection pass
("twice is enough", Kahan and Parlett) keeps the kept columns orthogonal to working precision even when a
column is nearly dependent on the earlier ones; a dropped (zero) column projects out nothing. ``P_hat``
is the q_j rounded to ``P``'s dtype. The paper orthogonalizes with Gram-Schmidt; the drop rule is
fedsim's (the paper does not say what happens to a zero column). :data:`DROP_TOLERANCE` gives ``tol``:
``sqrt(eps)`` of the data dtype. Rounding in ``P = M Q`` alone perturbs a column by about
``eps sqrt(m)`` of its length, so a column whose part outside the earlier columns' span is below
``sqrt(eps)`` of its length carries no trustworthy new direction (rank-deficient ``M``, an all-zero
matrix); dropping it leaves that part of ``M`` in the error-feedback residual.

**Low-rank product** (:func:`low_rank_product`): ``out = left right^T``, each entry
``out_ij = (((l_i0 r_j0) + l_i1 r_j1) + ...) + l_i(r-1) r_j(r-1)``, summed over the rank in order in the
data dtype (no fused multiply-add), so the sender, the receiver's message and the NumPy twin agree bitwise
whatever BLAS does.

**One power step** (:func:`power_step`) on the K senders' matrices ``M_k`` with the shared warm start
``Q`` (the matrix products are NumPy's, BLAS)::

    P_k = M_k Q;  P = (P_0 + P_1 + ... + P_(K-1)) / K;  P_hat = orthogonalize(P)
    Q_k = M_k^T P_hat;  decoded_k = low_rank_product(P_hat, Q_k);  Q_new = (Q_0 + ... + Q_(K-1)) / K

(sums in sender order, elementwise in the data dtype). Each kernel has a NumPy twin ``*_numpy``, bitwise
equal; :func:`power_step_numpy` is the same step built on the twins.
"""

from __future__ import annotations

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS
from fedsim.kernels.sparsify import NONFINITE_MESSAGE

# Relative drop tolerance of the orthogonalization: sqrt(eps) of the data dtype (module docstring).
DROP_TOLERANCE = {np.dtype(np.float32): float(np.sqrt(np.finfo(np.float32).eps)),
                  np.dtype(np.float64): float(np.sqrt(np.finfo(np.float64).eps))}
# Projection passes of the Gram-Schmidt step (one pass and one reorthogonalization).
PROJECTION_PASSES = 2

_jit = numba.njit(**JIT_OPTIONS)


def drop_tolerance(dtype) -> float:
    """``tol`` of :func:`orthogonalize` for data of ``dtype`` (float32 or float64)."""
    return DROP_TOLERANCE[np.dtype(dtype)]


# ----------------------------------------------------------------------------------------------------
# Orthogonalization
# ----------------------------------------------------------------------------------------------------

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
def orthogonalize(p, tolerance, out):
    """Gram-Schmidt on the r columns of ``p`` (n, r) into ``out`` (n, r, ``p``'s dtype); returns the number
    of kept (nonzero) columns. Definition, drop rule and ``tolerance``: module docstring."""
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


def _scaled_norm_numpy(column):
    largest = np.max(np.abs(column)) if column.size else 0.0
    if largest == 0.0:
        return 0.0, 0.0, 0.0
    scaled = column / largest
    root = np.sqrt(np.cumsum(scaled * scaled)[-1])
    return largest * root, largest, root


def orthogonalize_numpy(p, tolerance, out):
    """NumPy twin of :func:`orthogonalize` (bitwise equal)."""
    if not np.all(np.isfinite(p)):
        raise ValueError(NONFINITE_MESSAGE)
    columns = np.ascontiguousarray(p.T, dtype=np.float64)
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


# ----------------------------------------------------------------------------------------------------
# Low-rank product
# ----------------------------------------------------------------------------------------------------

@_jit
def low_rank_product(left, right, out):
    """``out`` (n, m) = ``left`` (n, r) times ``right`` (m, r) transposed, summed over the rank in order."""
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


def low_rank_product_numpy(left, right, out):
    """NumPy twin of :func:`low_rank_product` (bitwise equal)."""
    np.multiply(left[:, 0:1], right[:, 0][None, :], out=out)
    for t in range(1, left.shape[1]):
        out += left[:, t:t + 1] * right[:, t][None, :]


# ----------------------------------------------------------------------------------------------------
# One power step over K senders
# ----------------------------------------------------------------------------------------------------

def _sender_mean(stacked):
    """(x_0 + x_1 + ... + x_(K-1)) / K, elementwise in sender order, in the data dtype."""
    total = stacked[0].copy()
    for k in range(1, stacked.shape[0]):
        total += stacked[k]
    return total / stacked.dtype.type(stacked.shape[0])


def _power_step(matrices, q, tolerance, decoded_out, orthogonalize_fn, product_fn):
    matrices = np.asarray(matrices)
    p_each = np.matmul(matrices, q)                                     # P_k = M_k Q      (K, n, r)
    p_hat = np.empty(p_each.shape[1:], matrices.dtype)
    orthogonalize_fn(_sender_mean(p_each), tolerance, p_hat)           # P_hat = orth(mean_k P_k)
    q_each = np.ascontiguousarray(np.matmul(matrices.transpose(0, 2, 1), p_hat))   # Q_k = M_k^T P_hat
    for k in range(matrices.shape[0]):
        product_fn(p_hat, q_each[k], decoded_out[k])                    # decoded_k = P_hat Q_k^T
    return p_hat, q_each, _sender_mean(q_each)


def power_step(matrices, q, tolerance, decoded_out):
    """One PowerSGD power step (module docstring) with the jitted kernels.

    Parameters
    ----------
    matrices : (K, n, m) float32/float64
        The senders' matrices M_k.
    q : (m, r), same dtype
        The shared warm start Q.
    tolerance : float
        The drop tolerance of :func:`orthogonalize`.
    decoded_out : (K, n, m), same dtype
        Out: ``decoded_k = P_hat Q_k^T`` (:func:`low_rank_product`).

    Returns
    -------
    (P_hat (n, r), Q_k (K, m, r), Q_new = mean_k Q_k (m, r))
    """
    return _power_step(matrices, q, tolerance, decoded_out, orthogonalize, low_rank_product)


def power_step_numpy(matrices, q, tolerance, decoded_out):
    """:func:`power_step` built on the NumPy twins (bitwise equal to it)."""
    return _power_step(matrices, q, tolerance, decoded_out, orthogonalize_numpy, low_rank_product_numpy)


__all__ = ["DROP_TOLERANCE", "drop_tolerance", "low_rank_product", "low_rank_product_numpy", "orthogonalize",
           "orthogonalize_numpy", "power_step", "power_step_numpy"]
