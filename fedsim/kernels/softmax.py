"""Kernels of the softmax gradient's elementwise part: the work between a block's two matrix products.

:meth:`fedsim.models.softmax.SoftmaxRegression.loss_and_grad` walks its data in cache-sized blocks; for
each block of G models x R samples x C classes, after the forward product ``u = x W``, it computes::

    z = scale * u + b                        logits (scale: the 8-bit codes' factor, else 1)
    z = z - max_c z                          shift_logits: so that exp cannot overflow
    z_y = z[y]                               the shifted logit of each sample's label
    e = exp(z)                               NumPy (np.exp), in place
    t = sum_c e                              NumPy (np.add.reduce), one total per sample
    lt = log t                               NumPy (np.log)
    nll = lt - z_y                           softmax_residual: -log p[y]
    delta = (e / t - onehot(y)) * w          p - Y, times the sample's share w (m_i / sum m),
                                             or divided by n when the samples are unweighted
    grad_b += sum_i delta_i                  the bias gradient's share of the block

Two kernels do the two elementwise stretches in one pass each over the block, where NumPy needs about
twenty small calls (a few microseconds each, times hundreds of blocks per gradient). exp, log and the row
totals stay NumPy's own calls, so the results are bitwise those of the NumPy twins below (the lines the
model ran before these kernels existed): in z's dtype, fastmath off, the operations in the order written
above; the maximum propagates NaN as ``np.max`` does; the bias gradient's share is summed over the samples
in index order (as NumPy reduces a non-contiguous axis), then added to ``grad_b``.

:func:`gather_rows` copies a block's rows of the training set into a buffer the caller reuses from block
to block (it stays in cache, and the copy releases the GIL), where fancy indexing allocates fresh pages.

Shapes: ``z`` (G, R, C); ``bias`` (G or 1, C); ``labels`` (G or 1, R) int64 in [0, C); ``z_y``,
``total``, ``log_total``, ``nll`` (G, R); ``share`` (G or 1, R), or (0, 0) for unweighted samples (then
``divisor`` = n); ``grad_b`` (G, C). A leading 1 is shared by all G models.
"""

from __future__ import annotations

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS, checks
from fedsim.kernels.checks import FLOAT, INT64, Array, Real, checked


@numba.njit(**JIT_OPTIONS)
def _shift_logits_core(z, bias, scale, labels, z_y):
    G, R, C = z.shape
    shared_bias = bias.shape[0] == 1
    shared_labels = labels.shape[0] == 1
    for g in range(G):
        gb = 0 if shared_bias else g
        gl = 0 if shared_labels else g
        for r in range(R):
            top = z[g, r, 0] * scale + bias[gb, 0]
            z[g, r, 0] = top
            for c in range(1, C):
                v = z[g, r, c] * scale + bias[gb, c]
                z[g, r, c] = v
                if v > top or v != v:          # once NaN, stays NaN (np.max propagates it)
                    if top == top:
                        top = v
            for c in range(C):
                z[g, r, c] -= top
            z_y[g, r] = z[g, r, labels[gl, r]]


class _Block(Array):
    """An array of a block (any strides) in the dtype of ``z`` (or of ``dtypes``), whose shape is one of
    ``shapes`` (a function of ``z``'s shape (G, R, C), all of two dimensions), writable if ``output``."""

    def __init__(self, shapes, dtypes=None, output=False, then=None):
        super().__init__(dtypes or FLOAT, ndim=2, output=output, contiguous=False,
                         like=None if dtypes else "z", then=then)
        self.shapes = shapes

    def check(self, name, value, values):
        z = values[0]                                     # (z is each kernel's first argument)
        checks.array(name, value, self.dtypes if self.like is None else (z.dtype,), 2, self.output, contiguous=False)
        shapes = self.shapes(*z.shape)
        if value.shape not in shapes:
            raise ValueError(f"{name} must have shape {' or '.join(str(s) for s in dict.fromkeys(shapes))}, "
                             f"got {value.shape}")
        return value


class _ScalarOfZ(Real):
    """A finite real passed on as a scalar of z's dtype (z: the kernel's first argument)."""

    def check(self, name, value, values):
        return values[0].dtype.type(super().check(name, value, values))


def _has_a_class(z):
    if z.shape[2] < 1:
        raise ValueError(f"z must have at least one class (its last axis), got shape {z.shape}")


def _labels_in_range(z, labels):
    C = z.shape[2]
    if labels.size and (labels.min() < 0 or labels.max() >= C):
        raise ValueError(f"labels must lie in [0, {C - 1}], got range [{labels.min()}, {labels.max()}]")


Z = Array(FLOAT, ndim=3, output=True, contiguous=False, then=_has_a_class)
LABELS = _Block(lambda G, R, C: ((1, R), (G, R)), dtypes=INT64, then=_labels_in_range)
PER_SAMPLE = _Block(lambda G, R, C: ((G, R),))
PER_SAMPLE_OUT = _Block(lambda G, R, C: ((G, R),), output=True)


@checked(_shift_logits_core, z=Z, bias=_Block(lambda G, R, C: ((1, C), (G, C))), scale=_ScalarOfZ(),
         labels=LABELS, z_y=PER_SAMPLE_OUT)
def shift_logits(z, bias, scale, labels, z_y):
    """In place: ``z = scale * z + bias``, then ``z -= max_c z``; ``z_y = z[labels]`` (module docstring)."""


def shift_logits_numpy(z, bias, scale, labels, z_y):
    z, bias, scale, labels, z_y = shift_logits.check(z, bias, scale, labels, z_y)
    z *= scale
    z += bias[:, None, :]
    z -= z.max(axis=-1, keepdims=True)
    z_y[...] = np.take_along_axis(z, np.broadcast_to(labels, z_y.shape)[..., None], axis=-1)[..., 0]


@numba.njit(**JIT_OPTIONS)
def _softmax_residual_core(z, total, log_total, z_y, labels, share, divisor, nll, grad_b):
    G, R, C = z.shape
    shared_labels = labels.shape[0] == 1
    weighted = share.shape[1] > 0
    shared_share = share.shape[0] == 1
    block_sum = np.empty(C, dtype=z.dtype)
    one = z.dtype.type(1)                                     # not the int 1: that would compute in float64
    for g in range(G):
        gl = 0 if shared_labels else g
        gs = 0 if shared_share else g
        for r in range(R):
            nll[g, r] = log_total[g, r] - z_y[g, r]           # -log p[y] = log sum exp - z_y
            t = total[g, r]
            for c in range(C):
                z[g, r, c] = z[g, r, c] / t                   # p
            z[g, r, labels[gl, r]] -= one                     # p - Y
            if weighted:
                w = share[gs, r]
                for c in range(C):
                    z[g, r, c] = z[g, r, c] * w
            else:
                for c in range(C):
                    z[g, r, c] = z[g, r, c] / divisor
            if r == 0:
                for c in range(C):
                    block_sum[c] = z[g, 0, c]
            else:
                for c in range(C):
                    block_sum[c] += z[g, r, c]
        if R > 0:
            for c in range(C):
                grad_b[g, c] += block_sum[c]


@checked(_softmax_residual_core, z=Z, total=PER_SAMPLE, log_total=PER_SAMPLE, z_y=PER_SAMPLE, labels=LABELS,
         share=_Block(lambda G, R, C: ((0, 0), (1, R), (G, R))), divisor=_ScalarOfZ(0.0, low_open=True),
         nll=PER_SAMPLE_OUT, grad_b=_Block(lambda G, R, C: ((G, C),), output=True))
def softmax_residual(z, total, log_total, z_y, labels, share, divisor, nll, grad_b):
    """From ``z`` = exp of the shifted logits (in place): ``z = (z / total - onehot) * share`` (or
    ``/ divisor``), ``nll = log_total - z_y``, ``grad_b += sum over samples of z`` (module docstring)."""


def softmax_residual_numpy(z, total, log_total, z_y, labels, share, divisor, nll, grad_b):
    z, total, log_total, z_y, labels, share, divisor, nll, grad_b = softmax_residual.check(
        z, total, log_total, z_y, labels, share, divisor, nll, grad_b)
    G, R, C = z.shape
    nll[...] = log_total - z_y
    z /= total[..., None]
    at_label = np.arange(G * R) * C + np.broadcast_to(labels, (G, R)).ravel()
    z.reshape(-1)[at_label] -= 1
    if share.size:
        z *= share[..., None]
    else:
        z /= divisor
    grad_b += z.sum(axis=-2)


@numba.njit(**JIT_OPTIONS)
def _gather_rows_core(x, index, out):
    G, R = index.shape
    F = x.shape[1]
    for g in range(G):
        for r in range(R):
            row = index[g, r]
            for f in range(F):
                out[g, r, f] = x[row, f]


@checked(_gather_rows_core, x=Array(FLOAT, ndim=2),
         index=Array(INT64, ndim=2, contiguous=False, within=lambda x: x.shape[0]),
         out=Array(FLOAT, ndim=3, output=True, contiguous=False, shape=lambda x, index: index.shape + x.shape[1:],
                   like="x"))
def gather_rows(x, index, out):
    """``out[g, r] = x[index[g, r]]``: rows of the (N, F) array ``x`` into ``out`` (G, R, F)."""


def gather_rows_numpy(x, index, out):
    x, index, out = gather_rows.check(x, index, out)
    out[...] = x[index]
