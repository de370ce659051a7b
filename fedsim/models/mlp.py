"""A multilayer perceptron with hand-written forward and backward passes, batched over clients.

Parameters are one flat vector ``theta`` (:mod:`fedsim.params`) holding, layer by layer, the weights
``W1`` (n_features x H1, row-major), the bias ``b1`` (H1), ``W2`` (H1 x H2), ``b2``, ..., and last the
output layer ``WL`` (H_{L-1} x n_classes) and ``bL`` (n_classes): a compressor's per-tensor scope follows
the layers. With no hidden layer the layout and the results are those of softmax regression.

Stacks of models and data (the protocol of :mod:`fedsim.models.base`) broadcast as in ``np.matmul``: each
layer is one batched matrix product for all K clients. The computation is in the parameters' dtype (float32
or float64); the layers' weights are views of ``theta``, never copies.

Equations (L layers, h_0 = x; one-hot labels Y; optional sample weights m_i, else m_i = 1)::

    z_l = h_{l-1} W_l + b_l                         l = 1 .. L
    h_l = act(z_l)                                  act = relu (max(z, 0)) or tanh, l < L
    p = softmax(z_L) = exp(z_L - max z_L) / sum exp(z_L - max z_L)
    loss = sum_i m_i (-log p[i, y_i]) / sum_i m_i + (l2 / 2) ||theta||^2

    dz_L = (p - Y) m / sum m                        dL/dz_L, one row per sample
    dW_l = h_{l-1}^T dz_l + l2 W_l,   db_l = sum_i dz_l[i] + l2 b_l
    dh_{l-1} = dz_l W_l^T
    dz_{l-1} = dh_{l-1} * act'(z_{l-1})             relu' = [z > 0] = [h > 0];  tanh' = 1 - h^2

The L2 penalty covers weights and biases alike, as softmax regression's does (the LAQ reference's).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass

import numpy as np

from fedsim.constraints import Integer, OneOf, Real, check_fields, setting
from fedsim.models.base import ACTIVATIONS, Classifier, initialize_weights, log_softmax
from fedsim.models.features import FLOAT_DTYPES, Codes, checked_rows, decoded
from fedsim.params import ParamSpec


@dataclass(frozen=True)
class MLP(Classifier):
    """A network ``n_features -> hidden[0] -> ... -> hidden[-1] -> n_classes`` with ``activation`` on the
    hidden layers and a softmax cross-entropy output (the LAQ reference's network: ``MLP(784, (200,), 10)``)."""

    n_features: int = setting(MISSING, "input dimension", Integer(low=1))
    hidden: tuple[int, ...] = setting(MISSING, "widths of the hidden layers, input side first, e.g. [200]")
    n_classes: int = setting(MISSING, "number of classes", Integer(low=2))
    activation: str = setting("relu", "activation of the hidden layers", OneOf(*ACTIVATIONS))
    l2: float = setting(0.0, "coefficient of the (l2 / 2) ||theta||^2 penalty; 0 disables it", Real(low=0))
    dtype: np.dtype = setting(np.dtype(np.float64), "float type of the parameters init makes")

    def __post_init__(self):
        check_fields(self)
        if isinstance(self.hidden, (str, bytes)) or not np.iterable(self.hidden):
            raise TypeError(f"hidden must be a list of integer widths >= 1, got {self.hidden!r}")
        widths = tuple(Integer(low=1).check(f"hidden[{i}]", width) for i, width in enumerate(self.hidden))
        object.__setattr__(self, "hidden", widths)
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            dtype = np.dtype(object)                             # not a dtype: refused below
        if self.dtype is None or dtype not in FLOAT_DTYPES:     # (np.dtype(None) would be float64)
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype)

    @property
    def widths(self) -> tuple[int, ...]:
        """The widths of all layers' outputs, the input first: ``(n_features, *hidden, n_classes)``."""
        return (self.n_features,) + self.hidden + (self.n_classes,)

    def multiply_adds_per_sample(self) -> int:
        """The products of one sample, for the simulated clock: z_l = h_{l-1} W_l forward, dW_l = h_{l-1}^T dz_l
        and, above the first layer, dh_{l-1} = dz_l W_l^T backward: 3 sum_l a_{l-1} a_l - a_0 a_1 (a_l the
        widths; biases, activations and the softmax not counted)."""
        weights = [fan_in * fan_out for fan_in, fan_out in zip(self.widths, self.widths[1:])]
        return 3 * sum(weights) - weights[0]

    @property
    def spec(self) -> ParamSpec:
        """``W1, b1, ..., WL, bL``: layer l's weights ``(fan_in, fan_out)`` and bias ``(fan_out,)``."""
        names, shapes = [], []
        for layer, (fan_in, fan_out) in enumerate(zip(self.widths[:-1], self.widths[1:]), start=1):
            names += [f"W{layer}", f"b{layer}"]
            shapes += [(fan_in, fan_out), (fan_out,)]
        return ParamSpec(tuple(names), tuple(shapes))

    def layers(self, theta: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(W_l, b_l), ...]`` as views of ``theta`` (shape ``(..., size)``), shapes ``(..., fan_in,
        fan_out)`` and ``(..., fan_out)``; writing into them writes into ``theta``."""
        spec = self.spec
        return [(spec.view(theta, f"W{l}"), spec.view(theta, f"b{l}")) for l in range(1, len(self.widths))]

    def init(self, rng: np.random.Generator | None = None, kind: str = "glorot", dtype=None,
             batch: tuple[int, ...] = ()) -> np.ndarray:
        """Initial parameters of ``dtype`` (the model's ``dtype`` if None): ``"glorot"`` (Xavier-uniform,
        each layer W_l ~ U(-a_l, a_l), a_l = sqrt(6 / (fan_in + fan_out)), drawn layer by layer; b_l = 0)
        or ``"zeros"`` (every parameter 0: the hidden units then stay 0, so only for tests; model.init refuses
        it with hidden layers)."""
        theta = self.spec.zeros(self.dtype if dtype is None else dtype, batch)
        initialize_weights([W for W, _ in self.layers(theta)], kind, rng)
        return theta

    # -- forward and backward ------------------------------------------------------------------------
    def forward(self, theta: np.ndarray, x, rows: np.ndarray | None = None) -> list[np.ndarray]:
        """The layers' outputs ``[h_0 = x, h_1, ..., h_{L-1}, z_L]`` (the last: the logits), computed in
        ``theta``'s dtype; shapes ``(..., n, width)``. ``x``: floats or :class:`Codes`; with ``rows``, the
        samples are ``x[rows]`` of one ``(N, n_features)`` set."""
        theta = self._checked_theta(theta)
        return self._forward(self._samples(x, rows, theta.dtype), self.layers(theta))

    def _forward(self, samples: np.ndarray, layers: list, buffers: list | None = None) -> list[np.ndarray]:
        """:meth:`forward` from the samples as floats and the layers' views; each z_l into ``buffers[l - 1]``
        if given (else a new array)."""
        outputs = [samples]
        for l, (W, b) in enumerate(layers, start=1):
            z = np.matmul(outputs[-1], W, out=None if buffers is None else buffers[l - 1])
            z += b[..., None, :]                                  # z_l = h_{l-1} W_l + b_l
            if l < len(layers):                                   # h_l = act(z_l), in place
                if self.activation == "relu":
                    np.maximum(z, 0, out=z)
                else:
                    np.tanh(z, out=z)
            outputs.append(z)
        return outputs

    def loss_and_grad(self, theta: np.ndarray, x, y: np.ndarray, weights: np.ndarray | None = None,
                      rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The protocol's loss and gradient (:mod:`fedsim.models.base`; the batch: that of ``theta``, ``x`` and
        ``y`` broadcast), by one forward and one backward pass."""
        outputs = self.forward(theta, x, rows)
        theta = np.asarray(theta)
        dtype = theta.dtype
        logits = outputs.pop()
        batch = np.broadcast_shapes(theta.shape[:-1], logits.shape[:-2], np.shape(y)[:-1])
        labels = self._checked_labels(y, batch + logits.shape[-2:-1])
        share = self._sample_shares(weights, labels.shape, dtype)          # m_i / sum m, or 1 / n
        grad = np.empty(batch + (self.size,), dtype=dtype)
        loss = self._backward(theta, self.layers(theta), outputs, logits, labels, share, grad, self.layers(grad))
        return loss, grad

    def _backward(self, theta: np.ndarray, layers: list, outputs: list, logits: np.ndarray, labels: np.ndarray,
                  share: np.ndarray, grad: np.ndarray, grads: list) -> np.ndarray:
        """The loss, and its gradient into ``grad`` (``grads``: its layers' views), from the forward pass's
        ``outputs`` (the logits popped off) and each sample's share of the mean."""
        nll, delta, total = log_softmax(np.broadcast_to(logits, labels.shape + logits.shape[-1:]), labels)
        delta /= total                                            # p
        np.put_along_axis(delta, labels[..., None], np.take_along_axis(delta, labels[..., None], axis=-1) - 1,
                          axis=-1)                                # p - Y
        loss = np.sum(nll * share, axis=-1)
        delta *= share[..., None]                                 # dz_L = (p - Y) m / sum m
        for l in range(len(layers), 0, -1):
            h_below = outputs[l - 1]
            grad_W, grad_b = grads[l - 1]
            np.matmul(np.swapaxes(h_below, -1, -2), delta, out=grad_W)   # dW_l = h_{l-1}^T dz_l
            np.sum(delta, axis=-2, out=grad_b)                           # db_l = sum_i dz_l[i]
            if l > 1:
                delta = np.matmul(delta, np.swapaxes(layers[l - 1][0], -1, -2))   # dh_{l-1} = dz_l W_l^T
                if self.activation == "relu":                         # dz_{l-1} = dh_{l-1} * act'(z_{l-1})
                    delta *= h_below > 0
                else:
                    delta *= 1 - h_below * h_below
        return self._penalized(loss, grad, theta)

    def batch_gradient(self, x, models: int, batch: int, dtype) -> MLPBatchGradient | None:
        """The protocol's optional batch gradient (:mod:`fedsim.models.base`): None for 8-bit Codes or another
        dtype."""
        if isinstance(x, Codes) or np.asarray(x).dtype != np.dtype(dtype) or np.asarray(x).ndim != 2:
            return None
        return MLPBatchGradient(self, np.asarray(x), models, batch)

    # -- evaluation ----------------------------------------------------------------------------------
    def logits(self, theta: np.ndarray, x) -> np.ndarray:
        """z_L, shape ``(..., n, n_classes)``."""
        return self.forward(theta, x)[-1]

    # -- pieces --------------------------------------------------------------------------------------
    def _mean(self, nll: np.ndarray, weights) -> np.ndarray:
        """``sum_i m_i l_i / sum_i m_i`` (:meth:`_sample_shares`) of the per-sample losses ``nll``."""
        return np.sum(nll * self._sample_shares(weights, nll.shape, nll.dtype), axis=-1)

    def _checked_theta(self, theta) -> np.ndarray:
        theta = np.asarray(theta)
        if theta.dtype not in FLOAT_DTYPES:
            raise ValueError(f"theta must be a float32 or float64 array, got dtype {theta.dtype}")
        if theta.ndim < 1 or theta.shape[-1] != self.size:
            raise ValueError(f"theta must have shape (..., {self.size}) for layers {self.widths}, "
                             f"got {theta.shape}")
        return theta

    def _samples(self, x, rows, dtype: np.dtype) -> np.ndarray:
        """The samples as floats of ``dtype``, shape ``(..., n, n_features)`` (``x[rows]`` with rows)."""
        if not isinstance(x, Codes):
            x = np.asarray(x)
            if x.dtype not in FLOAT_DTYPES:
                raise ValueError(f"x must be a float32 or float64 array or Codes, got dtype {x.dtype}")
        if x.ndim < 2 or x.shape[-1] != self.n_features:
            raise ValueError(f"x must have shape (..., samples, {self.n_features}), got {x.shape}")
        if rows is not None:
            x = x[checked_rows(x, rows)]
        return decoded(x).astype(dtype, copy=False)

    @staticmethod
    def _sample_shares(weights, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Each sample's share of the mean, ``m_i / sum m`` (shape ``shape``), or ``1 / n`` without weights."""
        if weights is None:
            return np.full(shape[-1:], 1 / shape[-1], dtype=dtype)
        weights = np.asarray(weights, dtype=dtype)
        try:
            weights = np.broadcast_to(weights, shape)
        except ValueError:
            raise ValueError(f"weights of shape {weights.shape} do not fit the samples {shape}") from None
        if not np.all(np.isfinite(weights) & (weights >= 0)) or not np.all(weights.sum(axis=-1) > 0):
            raise ValueError("weights must be finite and >= 0, with a positive sum for every model")
        return weights / weights.sum(axis=-1, keepdims=True)


class MLPBatchGradient:
    """The MLP's batch gradient (the protocol: :mod:`fedsim.models.base`): ``loss_and_grad``'s own passes
    (:meth:`MLP._forward`, :meth:`MLP._backward`), with the layers' slices, the logits' and gradient's buffers
    and the even shares made once, and the samples gathered by a kernel: bitwise equal results without
    re-deriving them (and the checks) on every call."""

    def __init__(self, model: MLP, x: np.ndarray, models: int, batch: int):
        from fedsim.kernels import softmax as softmax_kernels
        self.gather = softmax_kernels.gather_rows.core
        self.model, self.x, self.dtype = model, x, x.dtype
        spec = model.spec
        self.slices = [(spec.slice(f"W{l}"), spec.shapes[2 * l - 2], spec.slice(f"b{l}"))
                       for l in range(1, len(model.widths))]
        K, B = models, batch
        self.samples = np.empty((K, B, model.n_features), self.dtype)
        self.z = [np.empty((K, B, width), self.dtype) for width in model.widths[1:]]
        self.grad = np.empty((K, model.size), self.dtype)
        self.grads = self._layers(self.grad)
        self.even_share = np.full(B, 1 / B, dtype=self.dtype)      # 1 / n without weights

    def _layers(self, theta: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`MLP.layers` of a (K, P) stack, from the slices made once."""
        K = theta.shape[0]
        return [(theta[:, w].reshape((K,) + shape), theta[:, b]) for w, shape, b in self.slices]

    def __call__(self, theta: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                 mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``theta`` (K, P); ``rows`` (K, B) int64, in range; ``labels`` (K, B) int64 in [0, C); ``mask`` 0/1."""
        model, layers = self.model, self._layers(theta)
        self.gather(self.x, rows, self.samples)                       # x[rows]
        outputs = model._forward(self.samples, layers, self.z)
        logits = outputs.pop()
        share = self.even_share if mask is None else model._sample_shares(mask, labels.shape, self.dtype)
        return model._backward(theta, layers, outputs, logits, labels, share, self.grad, self.grads), self.grad
