"""Softmax (multinomial logistic) regression with hand-written loss and gradient.

Parameters are one flat vector ``theta`` = [W (n_features x n_classes, row-major), b (n_classes)]
(:mod:`fedsim.params`). Every function also takes a stack of models, ``theta`` of shape
``(clients, size)`` with ``x`` of shape ``(clients, batch, n_features)``: one batched matmul serves
all clients, no Python loop.

Equations (n samples, one-hot labels Y, optional weights m_i for ragged batches, sum m_i = n)::

    z = x W + b                                    logits, (n, C)
    p = softmax(z) = exp(z - max z) / sum exp(z - max z)
    loss = (1/n) sum_i m_i * (-log p[i, y_i]) + (l2 / 2) * ||theta||^2
    grad_W = x^T (m * (p - Y)) / n + l2 * W
    grad_b = sum_i m_i * (p_i - Y_i) / n + l2 * b
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.params import ParamSpec


@dataclass(frozen=True)
class SoftmaxRegression:
    """Softmax regression on ``n_features`` inputs and ``n_classes`` classes.

    Parameters
    ----------
    n_features : int
        Input dimension (1024 for the STC pipeline's 32x32 images, 784 for the LAQ pipeline).
    n_classes : int
        Number of classes (at least 2).
    l2 : float
        Coefficient of the ``(l2 / 2) * ||theta||^2`` penalty over all parameters, W and b alike
        (as in the LAQ reference). 0 disables it.
    """

    n_features: int
    n_classes: int
    l2: float = 0.0

    def __post_init__(self):
        if int(self.n_features) < 1:
            raise ValueError(f"n_features must be >= 1, got {self.n_features}")
        if int(self.n_classes) < 2:
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")
        if not (np.isfinite(self.l2) and self.l2 >= 0):
            raise ValueError(f"l2 must be a finite number >= 0, got {self.l2}")

    @property
    def spec(self) -> ParamSpec:
        return ParamSpec(("W", "b"), ((self.n_features, self.n_classes), (self.n_classes,)))

    @property
    def size(self) -> int:
        return self.spec.size

    def init(self, rng: np.random.Generator | None = None, kind: str = "zeros",
             dtype=np.float32, batch: tuple[int, ...] = ()) -> np.ndarray:
        """Initial parameters: ``"zeros"``, or ``"glorot"`` (W ~ U(-a, a), a = sqrt(6 / (F + C)); b = 0)."""
        theta = self.spec.zeros(dtype, batch)
        if kind == "zeros":
            return theta
        if kind != "glorot":
            raise ValueError(f"init kind must be 'zeros' or 'glorot', got {kind!r}")
        if rng is None:
            raise ValueError("init kind 'glorot' needs a numpy.random.Generator (rng)")
        limit = np.sqrt(6.0 / (self.n_features + self.n_classes))
        W = self.spec.view(theta, "W")
        W[...] = rng.uniform(-limit, limit, size=W.shape)
        return theta

    def logits(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """z = x W + b, shape ``(..., n, n_classes)``."""
        W = self.spec.view(theta, "W")
        b = self.spec.view(theta, "b")
        return np.matmul(x, W) + b[..., None, :]

    def predict(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Predicted class of each sample, ``argmax_c z``."""
        return np.argmax(self.logits(theta, x), axis=-1)

    def accuracy(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Fraction of samples whose predicted class equals the label."""
        return np.mean(self.predict(theta, x) == y, axis=-1)

    def evaluate(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean loss (with the L2 penalty) and accuracy from one pass over the logits."""
        z = self.logits(theta, x)
        accuracy = np.mean(np.argmax(z, axis=-1) == y, axis=-1)
        z -= z.max(axis=-1, keepdims=True)
        z_y = np.take_along_axis(z, np.asarray(y)[..., None], axis=-1)[..., 0]
        nll = np.log(np.exp(z).sum(axis=-1)) - z_y
        return nll.mean(axis=-1) + self._penalty(theta), accuracy

    def loss(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray,
             weights: np.ndarray | None = None) -> np.ndarray:
        """Mean cross-entropy plus the L2 penalty; one value per model of the stack."""
        _, nll = self._shifted_exp_and_nll(theta, x, y)
        return self._mean(nll, weights) + self._penalty(theta)

    def loss_and_grad(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray,
                      weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Loss (shape ``theta.shape[:-1]``) and its gradient (shape of ``theta``).

        ``weights`` (shape ``(..., n)``, optional) weigh the samples: the mean becomes
        ``sum_i m_i l_i / sum_i m_i``, so a 0/1 mask pads ragged client batches to one array.
        """
        shifted_exp, nll = self._shifted_exp_and_nll(theta, x, y)
        loss = self._mean(nll, weights) + self._penalty(theta)
        # p - Y, scaled by m_i / sum m: the derivative of the weighted mean cross-entropy w.r.t. z.
        delta = shifted_exp
        delta /= delta.sum(axis=-1, keepdims=True)
        np.put_along_axis(delta, y[..., None],
                          np.take_along_axis(delta, y[..., None], axis=-1) - 1, axis=-1)
        if weights is None:
            delta /= x.shape[-2]
        else:
            delta *= (weights / weights.sum(axis=-1, keepdims=True))[..., None]
        grad = np.empty(np.broadcast_shapes(theta.shape, delta.shape[:-2] + (self.size,)),
                        dtype=np.result_type(theta, delta))
        spec = self.spec
        # grad_W = x^T delta, grad_b = sum_i delta_i  (then + l2 * theta)
        self.weight_gradient(x, delta, spec.view(grad, "W"))
        spec.view(grad, "b")[...] = delta.sum(axis=-2)
        if self.l2:
            grad += self.l2 * theta
        return loss, grad

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
    def _shifted_exp_and_nll(self, theta, x, y):
        """exp(z - max z) (rows not normalised) and -log p[y] = log sum exp(z - max z) - (z - max z)[y]."""
        y = np.asarray(y)
        if y.size and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"labels must lie in [0, {self.n_classes - 1}], got range "
                             f"[{y.min()}, {y.max()}]")
        z = self.logits(theta, x)
        z -= z.max(axis=-1, keepdims=True)
        z_y = np.take_along_axis(z, y[..., None], axis=-1)[..., 0]
        np.exp(z, out=z)
        nll = np.log(z.sum(axis=-1)) - z_y
        return z, nll

    @staticmethod
    def _mean(nll, weights):
        if weights is None:
            return nll.mean(axis=-1)
        return (nll * weights).sum(axis=-1) / weights.sum(axis=-1)

    def _penalty(self, theta):
        if not self.l2:
            return 0.0
        return 0.5 * self.l2 * np.einsum("...i,...i->...", theta, theta)
