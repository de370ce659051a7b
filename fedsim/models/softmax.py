"""Softmax (multinomial logistic) regression with hand-written loss and gradient.

``theta`` = [W (n_features x n_classes, row-major), b (n_classes)]; the shapes, stacks and 8-bit data every
call takes: the protocol of :mod:`fedsim.models.base`.

One pass over the data: the samples are visited in cache-sized blocks (``_Plan``), and a gradient
computes each block's logits, residual and weight-gradient share while the block is in cache, so each
sample is read from memory once per gradient (twice with two whole-array products: forward, then
backward). Small data (the clients of a round, at most ``WHOLE_BYTES``) is one block, one batched
product for all clients.

Equations (n samples, one-hot labels Y, optional weights m_i for ragged batches, sum m_i = n)::

    z = x W + b                                    logits, (n, C)
    p = softmax(z) = exp(z - max z) / sum exp(z - max z)
    loss = (1/n) sum_i m_i * (-log p[i, y_i]) + (l2 / 2) * ||theta||^2
    grad_W = x^T (m * (p - Y)) / n + l2 * W
    grad_b = sum_i m_i * (p_i - Y_i) / n + l2 * b
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import MISSING, dataclass

import numpy as np

from fedsim.constraints import Integer, Real, check_fields, setting
from fedsim.kernels import softmax as softmax_kernels
from fedsim.models.base import Classifier, initialize_weights
from fedsim.models.features import checked_rows, decoded, split as split_features
from fedsim.params import ParamSpec


@dataclass(frozen=True)
class SoftmaxRegression(Classifier):
    """Softmax regression on ``n_features`` inputs (1024 for the STC pipeline, 784 for LAQ's) and
    ``n_classes`` classes; the L2 penalty covers W and b alike (as in the LAQ reference)."""

    n_features: int = setting(MISSING, "input dimension", Integer(low=1))
    n_classes: int = setting(MISSING, "number of classes", Integer(low=2))
    l2: float = setting(0.0, "coefficient of the (l2 / 2) ||theta||^2 penalty; 0 disables it", Real(low=0))

    def __post_init__(self):
        check_fields(self)

    @property
    def spec(self) -> ParamSpec:
        return ParamSpec(("W", "b"), ((self.n_features, self.n_classes), (self.n_classes,)))

    def multiply_adds_per_sample(self) -> int:
        """The products of one sample, for the simulated clock: u = x W forward, grad_W = x^T delta backward
        (no gradient of the input): 2 F C (the bias, softmax and penalty not counted)."""
        return 2 * self.n_features * self.n_classes

    def init(self, rng: np.random.Generator | None = None, kind: str = "zeros",
             dtype=np.float32, batch: tuple[int, ...] = ()) -> np.ndarray:
        """Initial parameters: ``"zeros"``, or ``"glorot"`` (W ~ U(-a, a), a = sqrt(6 / (F + C)); b = 0)."""
        theta = self.spec.zeros(dtype, batch)
        initialize_weights([self.spec.view(theta, "W")], kind, rng)
        return theta

    def logits(self, theta: np.ndarray, x) -> np.ndarray:
        """z = x W + b, shape ``(..., n, n_classes)``; ``x`` a float array or :class:`Codes`."""
        plan = _Plan(self, theta, x)
        z = np.empty((plan.models, plan.n, self.n_classes), dtype=plan.dtype)

        def work(blocks):                     # the blocks write disjoint rows of z: any split is exact
            scratch = _Scratch(plan.dtype)
            for k0, k1, s0, s1 in blocks:
                z[k0:k1, s0:s1] = plan.forward(k0, k1, s0, s1, scratch)[0]

        _on_threads(work, _split(plan.blocks, [[block] for block in plan.blocks]))
        return z.reshape(plan.batch + (plan.n, self.n_classes))

    def loss_and_grad(self, theta: np.ndarray, x, y: np.ndarray, weights: np.ndarray | None = None,
                      rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The protocol's loss and gradient (:mod:`fedsim.models.base`), in one pass over x: each cache-sized
        block of samples (``x[rows]`` gathered block by block) is read from memory once, its logits, the residual
        ``delta = m (p - Y) / sum m`` and its share ``x_block^T delta`` of the weight gradient computed while it
        is in cache (the products' summation order is that of the blocks, see ``_Plan``)."""
        self._check_label_range(np.asarray(y))
        plan = _Plan(self, theta, x, rows)
        L, n, F, C = plan.models, plan.n, self.n_features, self.n_classes
        dtype = plan.dtype.type
        labels = plan.flat(np.asarray(y).astype(np.int64, copy=False), 1)
        mask = None if weights is None else plan.flat(np.asarray(weights, dtype=plan.dtype), 1)
        # The residual's per-sample factor: m_i / sum m (or 1 / n, a division by n: share of shape (0, 0)).
        share = np.empty((0, 0), plan.dtype) if mask is None else mask / mask.sum(axis=-1, keepdims=True)
        nll = np.empty((L, n), dtype=plan.dtype)
        grad = np.empty((L, self.size), dtype=plan.dtype)
        grad_W = grad[:, :F * C].reshape(L, F, C)
        grad_b = grad[:, F * C:]
        grad_W[...] = 0
        grad_b[...] = 0
        shift, residual = softmax_kernels.shift_logits.core, softmax_kernels.softmax_residual.core

        def work(blocks):
            part = np.empty((plan.group, F, C), dtype=plan.dtype)
            scratch = _Scratch(plan.dtype)
            for k0, k1, s0, s1 in blocks:
                z, x_block = plan.products(k0, k1, s0, s1, scratch)   # x W, then in place:
                block_labels = plan.block_of(labels, k0, k1, s0, s1)
                z_y = np.empty(z.shape[:-1], dtype=plan.dtype)
                bias = plan.bias[k0:k1] if plan.bias.shape[0] > 1 else plan.bias
                shift(z, bias, dtype(plan.scale), block_labels, z_y)   # z = scale x W + b, minus its max
                np.exp(z, out=z)
                total = np.add.reduce(z, axis=-1)
                residual(z, total, np.log(total), z_y, block_labels,   # z = delta = (p - Y) m_i / sum m
                         share if mask is None else plan.block_of(share, k0, k1, s0, s1), dtype(n),
                         nll[k0:k1, s0:s1], grad_b[k0:k1])         # nll = -log p[y]; grad_b += sum_i delta_i
                plan.backward(x_block, z, grad_W[k0:k1], part[: k1 - k0])   # grad_W += x_block^T delta

        # Only models of several row blocks (LAQ's shards) are shared out among the threads (see "threads"
        # below): a round's small client batches gained nothing on two (STC seed round, 16.3 ms on one block
        # thread, 16.7 on two; the gradient alone gains, the rest of the round loses it).
        runs = plan.by_model()
        _on_threads(work, _split(plan.blocks, runs) if max(map(len, runs)) > 1 else [plan.blocks])
        if plan.scale != 1.0:                                    # x = scale u + offset (Codes)
            grad_W *= plan.dtype.type(plan.scale)
        if plan.offset != 0.0:
            grad_W += plan.dtype.type(plan.offset) * grad_b[:, None, :]
        loss = self._mean(nll.reshape(plan.batch + (n,)),
                          None if weights is None else np.asarray(weights, dtype=plan.dtype))
        grad = grad.reshape(plan.batch + (self.size,))
        return self._penalized(loss, grad, theta), grad

    def batch_gradient(self, x, models: int, batch: int, dtype) -> BatchGradient | None:
        """The protocol's optional batch gradient (:mod:`fedsim.models.base`); None where this model's calls
        would split a batch into several products (:class:`BatchGradient`)."""
        plan = _Plan(self, np.zeros((models, self.size), dtype), x, np.zeros((models, batch), np.int64))
        whole_batches = all(s0 == 0 and s1 == batch for _, _, s0, s1 in plan.blocks)
        one_product = batch <= plan.product_rows or all(k1 - k0 > 1 for k0, k1, _, _ in plan.blocks)
        return BatchGradient(self, plan, models, batch) if whole_batches and one_product else None

    @staticmethod
    def weight_gradient(x: np.ndarray, delta: np.ndarray, out: np.ndarray) -> None:
        """``out = x^T delta`` (shape ``(..., n_features, n_classes)``): the backward matrix product."""
        if x.shape[-2] > x.shape[-1]:
            # More samples than features (e.g. the LAQ shards, 6,000 x 784): BLAS computes the same
            # products about 20% faster as (delta^T x)^T, transposed into place (a small copy).
            out[...] = np.swapaxes(np.matmul(np.swapaxes(delta, -1, -2), x), -1, -2)
        else:
            np.matmul(np.swapaxes(x, -1, -2), delta, out=out)

    # -- pieces -----------------------------------------------------------------------------------
    @staticmethod
    def _mean(nll, weights):
        if weights is None:
            return nll.mean(axis=-1)
        return (nll * weights).sum(axis=-1) / weights.sum(axis=-1)

    def smoothness_bounds(self, x, sizes: np.ndarray) -> tuple[np.ndarray, float]:
        """Upper bounds on the smoothness constants of each worker's loss ``f_m`` and of ``f = sum_m f_m``.

        ``x``: the workers' samples stacked, (M, n_max, F) floats or :class:`Codes`, rows past a shard's end
        zero; ``sizes``: (M,) samples per shard. The Hessian of the mean cross-entropy is
        ``(1/n) sum_i (diag(p_i) - p_i p_i^T) (x) x~_i x~_i^T`` with ``x~_i = [x_i, 1]`` (the 1 is the bias),
        and ``diag(p) - p p^T <= I / 2`` (Boehning's bound), so::

            L_m = 0.5 * lambda_max(X~_m^T X~_m) / n_m + l2               (LAG-PS's L_m)
            L_f = 0.5 * lambda_max(sum_m X~_m^T X~_m / n_m) + M * l2     (<= sum_m L_m; for the 2 / L check)

        Both are bounds, not the curvature along the actual path, which can be several times smaller.
        The bias column makes them valid for the parameters [W, b] (``0.5 lambda_max(X^T X) / n`` alone,
        without it, bounds only the W block). Computed exactly: one (F+1)^2 Gram matrix per worker
        (a batched matmul) and ``scipy.linalg.eigvalsh`` for its largest eigenvalue.
        """
        x, sizes = decoded(x), np.asarray(sizes)
        n_workers, _, n_features = x.shape
        gram = np.empty((n_workers, n_features + 1, n_features + 1), dtype=np.float64)
        gram[:, :n_features, :n_features] = np.matmul(np.swapaxes(x, 1, 2), x)       # X^T X (padding is 0)
        column_sums = x.sum(axis=1)                                                   # X^T 1 over real rows
        gram[:, :n_features, n_features] = column_sums
        gram[:, n_features, :n_features] = column_sums
        gram[:, n_features, n_features] = sizes                                       # 1^T 1 = n_m
        gram /= sizes[:, None, None]
        top = [_largest_eigenvalue(gram[m]) for m in range(n_workers)]
        per_worker = 0.5 * np.array(top) + self.l2
        total = 0.5 * _largest_eigenvalue(gram.sum(axis=0)) + n_workers * self.l2
        return per_worker, float(total)


class BatchGradient:
    """Softmax regression's batch gradient (the protocol: :mod:`fedsim.models.base`): the operations of
    :meth:`~SoftmaxRegression.loss_and_grad` on the same shapes, in the same order (the gather, one batched
    forward product, the two softmax kernels with NumPy's exp, sum and log between them, one batched backward
    product), so the results are bitwise equal, without what a general call re-derives each time (its plan of
    blocks, label checks, fresh arrays). That equality holds where every batch is one product of its own
    there: :meth:`SoftmaxRegression.batch_gradient` returns None otherwise (a single model whose batch exceeds
    ``product_rows``, or a batch over the block size)."""

    def __init__(self, model: SoftmaxRegression, plan: _Plan, models: int, batch: int):
        F, C, K, B = model.n_features, model.n_classes, models, batch
        self.model = model
        self.x, self.scale, self.offset, self.dtype = plan.x, plan.scale, plan.offset, plan.dtype
        self.rows_buffer = np.empty((K, B, F), self.dtype)        # the gathered batches, reused
        self.z = np.empty((K, B, C), self.dtype)                  # logits, then delta
        self.z_y, self.total, self.log_total, self.nll = (np.empty((K, B), self.dtype) for _ in range(4))
        self.grad = np.empty((K, model.size), self.dtype)
        self.grad_W = self.grad[:, :F * C].reshape(K, F, C)
        self.grad_b = self.grad[:, F * C:]
        self.no_share = np.empty((0, 0), self.dtype)

    def __call__(self, theta: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                 mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``theta`` (K, P); ``rows`` (K, B) int64, in range; ``labels`` (K, B) int64 in [0, C); ``mask`` 0/1."""
        dtype = self.dtype.type
        F, C = self.model.n_features, self.model.n_classes
        W = theta[:, :F * C].reshape(len(theta), F, C)            # views of theta = [W, b]
        bias = theta[:, F * C:]
        if self.offset != 0.0:                                    # x = scale u + offset: offset 1^T W + b
            bias = bias + dtype(self.offset) * W.sum(axis=-2, dtype=self.dtype)
        x, z = self.rows_buffer, self.z
        softmax_kernels.gather_rows.core(self.x, rows, x)         # 8-bit codes are cast exactly
        np.matmul(x, W, out=z)                                    # u = x W
        softmax_kernels.shift_logits.core(z, bias, dtype(self.scale), labels, self.z_y)   # z = scale u + b - max
        np.exp(z, out=z)
        np.add.reduce(z, axis=-1, out=self.total)
        np.log(self.total, out=self.log_total)
        share = self.no_share if mask is None else mask / mask.sum(axis=-1, keepdims=True)
        self.grad_b[...] = 0
        softmax_kernels.softmax_residual.core(z, self.total, self.log_total, self.z_y, labels, share,
                                              dtype(labels.shape[-1]), self.nll, self.grad_b)   # z = delta
        np.matmul(np.swapaxes(x, -1, -2), z, out=self.grad_W)      # grad_W = x^T delta
        if self.scale != 1.0:
            self.grad_W *= dtype(self.scale)
        if self.offset != 0.0:
            self.grad_W += dtype(self.offset) * self.grad_b[:, None, :]
        if mask is None:                                          # nll.mean(axis=-1), without its wrapper
            loss = np.add.reduce(self.nll, axis=-1)
            np.true_divide(loss, labels.shape[-1], out=loss)
        else:
            loss = self.model._mean(self.nll, mask)
        return self.model._penalized(loss, self.grad, theta), self.grad


def _largest_eigenvalue(symmetric: np.ndarray) -> float:
    import scipy.linalg   # here, not at the top: a federated run, or a config, needs no SciPy
    size = symmetric.shape[0]
    return float(scipy.linalg.eigvalsh(symmetric, subset_by_index=[size - 1, size - 1])[0])


# Block sizes, measured at 1 thread (in cache; float64, 784 features, 10 classes): a product of at most
# SMALL_PRODUCT multiply-adds (rows x features x classes) takes OpenBLAS's small-matrix path at 50-56
# GFLOP/s (96-127 rows), where 128 rows fall to 28 GFLOP/s; float32 with 1,024 features likewise, 77 GFLOP/s
# at 96 rows, 54 at 100. So one model's rows go through the products SMALL_PRODUCT at a time (and at most
# PRODUCT_BYTES), and a block (the rows between one softmax and the backward) holds at most BLOCK_BYTES:
# on 60,000 x 784 float64, a gradient in blocks of one 127-row product takes 89 ms, of two 110 ms (the
# backward no longer finds the block in a 2 MiB L2), of 65-row products 100-110 ms (the softmax's ~40 us
# a call adds up), and as two whole-array products 148 ms. Data of at most WHOLE_BYTES in all is one
# block (small runs: no Python loop at all).
SMALL_PRODUCT = 1_000_000
PRODUCT_BYTES = 800 * 1024
BLOCK_BYTES = 800 * 1024
WHOLE_BYTES = 1024 * 1024


class _Plan:
    """How one call walks its data: the stack of L models (flattened batch dimensions), and the blocks
    ``(k0, k1, s0, s1)`` of models ``k0:k1`` and samples ``s0:s1`` it visits, each a cache-sized piece.

    A block holds several whole models' samples when a model's samples are small (the clients of a
    round), else a run of rows of one model (a LAQ worker's shard). The weight gradient is the sum of the
    blocks' products in block order; logits and per-sample losses do not depend on the blocks.
    """

    def __init__(self, model: SoftmaxRegression, theta, x, rows=None):
        array, self.scale, self.offset, data_dtype = split_features(x)
        theta = np.asarray(theta)
        self.dtype = np.result_type(theta.dtype, data_dtype)
        F, C = model.n_features, model.n_classes
        if array.shape[-1] != F:
            raise ValueError(f"the model has {F} features, the data has {array.shape[-1]}")
        if rows is None:
            data_batch, self.n = array.shape[:-2], array.shape[-2]
        else:
            rows = checked_rows(array, rows)
            data_batch, self.n = rows.shape[:-1], rows.shape[-1]
        self.batch = np.broadcast_shapes(theta.shape[:-1], data_batch)
        self.models = int(np.prod(self.batch, dtype=np.int64))
        spec = model.spec
        self.W = self.flat(spec.view(theta, "W"), 2)             # (1 or L, F, C)
        bias = spec.view(theta, "b").astype(self.dtype, copy=False)
        if self.offset != 0.0:                                   # offset * 1^T W + b
            bias = bias + self.dtype.type(self.offset) * spec.view(theta, "W").sum(axis=-2, dtype=self.dtype)
        self.bias = self.flat(bias, 1)                           # (1 or L, C)
        if rows is None:
            self.x, self.rows = self.flat(array, 2), None        # (1 or L, n, F)
        else:
            self.x, self.rows = array, self.flat(rows, 1)        # (N, F) and (1 or L, n)
        shared_data = (self.x if rows is None else self.rows).shape[0] == 1
        row_bytes = F * self.dtype.itemsize
        model_bytes = self.n * row_bytes
        self.product_rows = max(1, min(PRODUCT_BYTES // row_bytes, SMALL_PRODUCT // (F * C)))
        L = self.models
        if (1 if shared_data else L) * model_bytes <= WHOLE_BYTES:
            self.blocks = [(0, L, 0, self.n)]
        elif model_bytes <= BLOCK_BYTES:
            g = max(1, BLOCK_BYTES // model_bytes)
            self.blocks = [(k0, min(L, k0 + g), 0, self.n) for k0 in range(0, L, g)]
        else:
            r = self.product_rows * max(1, BLOCK_BYTES // (self.product_rows * row_bytes))
            self.blocks = [(k, k + 1, s0, min(self.n, s0 + r)) for k in range(L) for s0 in range(0, self.n, r)]
        self.group = max(k1 - k0 for k0, k1, _, _ in self.blocks)

    def flat(self, a: np.ndarray, tail: int) -> np.ndarray:
        """``a`` of shape ``(*lead, *tail shape)`` as ``(L, *tail shape)``, or ``(1, ...)`` if shared."""
        lead, rest = a.shape[:a.ndim - tail], a.shape[a.ndim - tail:]
        if lead == ():
            return a.reshape((1,) + rest)
        if lead != self.batch:
            a = np.broadcast_to(a, self.batch + rest)
        return a.reshape((self.models,) + rest)

    def by_model(self) -> list[list[tuple[int, int, int, int]]]:
        """The blocks in runs that share their models (one model's row blocks; a group of whole models)."""
        runs = []
        for block in self.blocks:
            if runs and runs[-1][-1][:2] == block[:2]:
                runs[-1].append(block)
            else:
                runs.append([block])
        return runs

    def backward(self, x: np.ndarray, delta: np.ndarray, out: np.ndarray, part: np.ndarray) -> None:
        """``out += x^T delta`` for one block, ``product_rows`` rows a product (``part``: scratch of out's
        shape)."""
        rows, step = x.shape[-2], self.product_rows
        if x.ndim == 2 and delta.ndim == 3 and delta.shape[0] == 1:     # one model: 2-D products
            delta, out, part = delta[0], out[0], part[0]
        if rows <= step or x.ndim != 2 or delta.ndim != 2:
            SoftmaxRegression.weight_gradient(x, delta, part)
            out += part
            return
        for r0 in range(0, rows, step):
            SoftmaxRegression.weight_gradient(x[r0:r0 + step], delta[..., r0:r0 + step, :], part)
            out += part

    @staticmethod
    def block_of(a: np.ndarray, k0: int, k1: int, s0: int, s1: int) -> np.ndarray:
        """Samples s0:s1 of models k0:k1 of a per-sample array ``(1 or L, n)`` (all of a shared one's)."""
        return a[k0:k1, s0:s1] if a.shape[0] > 1 else a[:, s0:s1]

    @staticmethod
    def take(a: np.ndarray, k0: int, k1: int):
        """Models k0:k1 of ``a`` (a shared ``a``, or a single model, without its stack axis)."""
        if a.shape[0] == 1:
            return a[0]
        return a[k0] if k1 - k0 == 1 else a[k0:k1]

    def products(self, k0: int, k1: int, s0: int, s1: int, scratch: _Scratch) -> tuple[np.ndarray, np.ndarray]:
        """The block's forward products ``u = x W`` (a new C-contiguous array of shape ``(k1 - k0, rows, C)``,
        or ``(1, rows, C)`` when data and model are both shared) and its samples as floats (in cache, for
        the backward product; 8-bit codes are cast into ``scratch``, the calling thread's buffer)."""
        if self.rows is None:
            x = self.take(self.x, k0, k1)[..., s0:s1, :]
            if x.dtype != self.dtype:                             # 8-bit codes to floats (exact), in cache
                x = scratch.holding(x)
        else:
            index = self.take(self.rows, k0, k1)[..., s0:s1]
            if self.x.dtype == self.dtype:                        # the gather: one read of each sample,
                x = scratch.gathered(self.x, index)               # into this thread's cached buffer
            else:
                x = scratch.holding(self.x[index])
        W = self.take(self.W, k0, k1)
        rows, step = s1 - s0, self.product_rows
        if rows <= step or x.ndim != 2 or W.ndim != 2:
            u = np.matmul(x, W)
        else:                                   # one model's rows: ``product_rows`` a product
            u = np.empty((rows, W.shape[-1]), dtype=self.dtype)
            for r0 in range(0, rows, step):
                np.matmul(x[r0:r0 + step], W, out=u[r0:r0 + step])
        return (u[None] if u.ndim == 2 else u), x

    def forward(self, k0: int, k1: int, s0: int, s1: int, scratch: _Scratch) -> tuple[np.ndarray, np.ndarray]:
        """The block's logits ``z = scale (x W) + bias`` and its samples as floats (see :meth:`products`)."""
        z, x = self.products(k0, k1, s0, s1, scratch)
        if self.scale != 1.0:
            z *= self.dtype.type(self.scale)
        z += self.take(self.bias, k0, k1)[..., None, :]
        return z, x


class _Scratch:
    """A block-sized float buffer of one thread, reused from block to block (so it stays in cache)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self._buffer = np.empty(0, dtype=dtype)

    def _shaped(self, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        if self._buffer.size < size:
            self._buffer = np.empty(size, dtype=self.dtype)
        return self._buffer[:size].reshape(shape)

    def holding(self, source: np.ndarray) -> np.ndarray:
        """The buffer, shaped as ``source`` and holding its values cast to floats (exact for 8-bit codes)."""
        out = self._shaped(source.shape)
        np.copyto(out, source, casting="safe")
        return out

    def gathered(self, x: np.ndarray, index: np.ndarray) -> np.ndarray:
        """The buffer holding ``x[index]`` (``index`` of shape (R,) or (G, R), in range), shaped so."""
        out = self._shaped(index.shape + x.shape[1:])
        rows = index.reshape(-1, index.shape[-1])
        softmax_kernels.gather_rows.core(x, rows, out.reshape(rows.shape + x.shape[1:]))
        return out


# -- threads ------------------------------------------------------------------------------------------
# The block loops run on ``threads()`` threads (1 unless set_threads or fedsim.runs.provenance.pinned_threads
# says otherwise). Each thread walks its own contiguous share of the blocks; NumPy's ufuncs and products
# and the Numba kernels release the GIL, so the threads compute and read memory at the same time. Results
# do not depend on the thread count: blocks that add into one model's gradient stay on one thread, in order.

_threads = 1
_pool = None                 # (executor, its thread count, the process id that made it)
_pool_lock = threading.Lock()


def threads() -> int:
    """How many threads the block loops use."""
    return _threads


def set_threads(count: int) -> int:
    """Run the block loops on ``count`` threads (an integer >= 1); returns the previous count."""
    global _threads
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"threads must be an integer >= 1, got {count!r}")
    previous, _threads = _threads, int(count)
    return previous


def _split(blocks: list, runs: list[list]) -> list[list]:
    """``runs`` (consecutive blocks that must stay together) dealt into at most ``threads()`` contiguous
    shares of about equal numbers of samples; one share (the whole list) on one thread."""
    count = min(_threads, len(runs))
    if count <= 1:
        return [blocks]
    weight = [sum((k1 - k0) * (s1 - s0) for k0, k1, s0, s1 in run) for run in runs]
    total, shares, taken, current = sum(weight), [], 0, []
    for run, w in zip(runs, weight):
        current += run
        taken += w
        if len(shares) < count - 1 and taken * count >= total * (len(shares) + 1):
            shares.append(current)
            current = []
    if current:
        shares.append(current)
    return shares


def _on_threads(work, shares: list[list]) -> None:
    """``work(share)`` for every share: on this thread if there is one share, else on the pool's threads
    (the first exception is raised here, after every share has finished)."""
    if len(shares) == 1:
        work(shares[0])
        return
    global _pool
    with _pool_lock:
        if _pool is None or _pool[1] < len(shares) or _pool[2] != os.getpid():   # none yet, or a forked copy
            if _pool is not None and _pool[2] == os.getpid():
                _pool[0].shutdown(wait=True)
            _pool = (ThreadPoolExecutor(max_workers=len(shares), thread_name_prefix="fedsim-blocks"),
                     len(shares), os.getpid())
        pool = _pool[0]
    futures = [pool.submit(work, share) for share in shares]
    wait(futures)
    for future in futures:
        future.result()
