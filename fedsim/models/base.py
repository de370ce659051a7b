"""The model protocol, the registry of models (:data:`MODELS`) and the config table ``[model]``.

A model is one module of this package plus its registration line (in ``fedsim/models/__init__.py``, or in a
plugin's own module): ``register_model(name, build, default_init=..., hidden_layers=...)``, where
``build(settings, n_features, n_classes, l2)`` makes the model from the ``[model]`` table
(:class:`ModelConfig`), the dataset's shape and the family's L2 coefficient (0 where the family adds its own
penalty). Both families build their model so (:meth:`ModelConfig.build`) and call only this protocol::

    model.spec                                  its flat vector's tensors (fedsim.params.ParamSpec): a
                                                compressor's per-tensor scope follows them
    theta = model.init(rng, kind, dtype)        (P,) initial parameters: "zeros" | "glorot" (Xavier-uniform
                                                weights, zero biases), drawn from the Generator rng
    loss, grad = model.loss_and_grad(theta, x, y, weights=None, rows=None)
                                                K clients at once: theta (K, P) or (P,); x (K, n, F), or
                                                (N, F) with rows (K, n) the samples' indices; y (K, n);
                                                weights (K, n) weigh the mean (a 0/1 mask pads ragged
                                                batches); loss (K,) and grad (K, P), the L2 term included
    loss, accuracy = model.evaluate(theta, x, y)     on one evaluation set
    L_m, L_f = model.smoothness_bounds(x, sizes)     optional: bounds on the smoothness of each worker's
                                                loss and of their sum (x (M, n, F), sizes (M,)), for a
                                                model that has one (softmax regression); the lazy family
                                                estimates the curvature of a model without it
    gradient = model.batch_gradient(x, K, B, dtype)  optional: loss_and_grad for K batches of B rows of
                                                the (N, F) set x, called many times (a federated round's
                                                local steps) with buffers allocated once: gradient(theta,
                                                rows, labels, mask) -> (loss, grad), bitwise loss_and_grad's
                                                results, grad overwritten by the next call; or None where
                                                it cannot (the run then calls loss_and_grad); softmax
                                                regression and the MLP have one
    model.multiply_adds_per_sample()            optional: multiply-adds of one sample's forward and backward
                                                products as the model computes them, for the simulated clock
                                                (fedsim.system); without it, :func:`multiply_adds_per_sample`
                                                derives them from the spec (a chain of dense layers)

``x`` is a float array or 8-bit :class:`~fedsim.models.features.Codes` (``features.decoded`` gives floats).

A run needs only this protocol (a plugin's model may stop there). A model of fedsim itself also passes the
contract suite (tests/models/test_contract.py, its entry in ``SETTINGS``), which calls ``size``, ``logits(theta,
x)``, ``loss``, ``predict`` and ``accuracy``, ``init`` with defaults (``init(kind="zeros")``) and ``batch=(K,)``,
and ``loss_and_grad(..., rows=)`` refusing rows outside the set (``features.checked_rows``): subclass
:class:`Classifier`, which gives all but ``logits`` and ``init`` (ARCHITECTURE.md, "Adding a model").
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fedsim.constraints import (Constraint, OneOf, Optional, Registered, check_fields, lookup, register_into,
                                setting)

INIT_KINDS = ("zeros", "glorot")
ACTIVATIONS = ("relu", "tanh")


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: how to build it from the ``[model]`` table, and its defaults."""

    name: str
    build: Callable            # (ModelConfig, n_features, n_classes, l2) -> a model (the protocol above)
    default_init: str          # the init kind of an unset model.init
    hidden_layers: bool        # whether model.hidden and model.activation apply to it
    convex: bool               # whether its loss is convex in theta (then with l2 > 0 strongly convex)


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, build: Callable, *, default_init: str = "zeros",
                   hidden_layers: bool = False, convex: bool = True) -> ModelEntry:
    """Make a model available as ``model.name = name`` (``build``: see the module docstring)."""
    OneOf(*INIT_KINDS).check("default_init", default_init)
    return register_into(MODELS, name, ModelEntry(name, build, default_init, hidden_layers, convex), "model name")


class _ModelName(Registered):
    """A registered model's name; an unknown one is answered with the closest name."""

    def check(self, name: str, value):
        try:
            return super().check(name, value)
        except ValueError as error:
            close = difflib.get_close_matches(value, list(self.names()), n=1)
            raise ValueError(f"{error}; did you mean {close[0]!r}?" if close else str(error)) from None


@dataclass(frozen=True)
class Widths(Constraint):
    """A list of layer widths, each an integer >= 1 (kept as a tuple); empty for no hidden layer."""

    def describe(self) -> str:
        return "a list of integer widths >= 1, like [200] or [256, 128]"

    def normalize(self, value) -> tuple:
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(width, int) and not isinstance(width, bool) for width in value):
            raise TypeError
        return tuple(value)

    def allows(self, value: tuple) -> bool:
        return all(width >= 1 for width in value)


@dataclass(frozen=True)
class ModelConfig:
    """The ``[model]`` table: which registered model the run trains, its hidden layers and its init."""

    name: str = setting("softmax", "softmax (regression), or another registered model (fedsim.models)",
                       _ModelName(lambda: MODELS))
    hidden: tuple = setting((), "widths of the hidden layers, input side first (models with hidden layers)",
                            Widths())
    activation: str = setting(ACTIVATIONS[0], "activation of the hidden layers (models with hidden layers)",
                              OneOf(*ACTIVATIONS))
    init: str | None = setting(None, 'theta^0: "zeros", or seeded "glorot" (Xavier-uniform W, zero b)',
                               Optional(OneOf(*INIT_KINDS), "the model's own default"))

    def __post_init__(self):
        check_fields(self)
        if self.hidden and not self.entry.hidden_layers:
            raise ValueError(f"hidden must be empty for model {self.name!r} (it has no hidden layer), "
                             f"got {list(self.hidden)}")
        if not self.hidden and self.activation != ACTIVATIONS[0]:
            raise ValueError(f"activation applies to hidden layers only and model {self.name!r} has none: leave "
                             f"it {ACTIVATIONS[0]!r} (the default), got {self.activation!r}")
        if self.hidden and self.init_kind == "zeros":
            raise ValueError("init must be 'glorot' for a model with hidden layers, got 'zeros': a network "
                             "started at zero never breaks the symmetry of its hidden units (they stay 0)")

    @property
    def entry(self) -> ModelEntry:
        return lookup(MODELS, self.name, "model.name")

    @property
    def init_kind(self) -> str:
        """``init``, or the model's own default when unset (zeros for softmax regression)."""
        return self.init or self.entry.default_init

    def build(self, n_features: int, n_classes: int, l2: float = 0.0, rows: int = 1, whose: str = "",
              dtype="float64"):
        """The model for data of ``n_features`` inputs and ``n_classes`` classes (protocol above); one whose
        ``rows`` parameter vectors of ``dtype`` (a run's per-participant or per-worker (rows, P) arrays, of
        ``whose``: e.g. "worker (lazy.n_workers = 10)") would not fit in this machine's memory is
        refused."""
        model = self.entry.build(self, n_features, n_classes, l2)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
        size, itemsize = model.spec.size, np.dtype(dtype).itemsize
        if memory and rows * itemsize * size > memory:
            layers = f"model.hidden = {list(self.hidden)} makes" if self.hidden else "makes"
            held = f", {rows * itemsize * size / 2**30:,.1f} GiB for one per {whose}" if rows > 1 else ""
            raise ValueError(f"{layers} {self.name} on {n_features} features and {n_classes} classes {size:,} "
                             f"parameters: {itemsize * size / 2**30:,.1f} GiB a vector{held}, more than this "
                             f"machine's {memory / 2**30:,.1f} GiB of memory")
        return model


class Classifier:
    """What the built-in models share, from their ``spec``, ``l2``, ``logits(theta, x)`` and ``_mean(nll,
    weights)`` (the mean of per-sample losses, weighted as in ``loss_and_grad``): the flat vector's length, the
    predicted classes, the loss and evaluation by the stable log-softmax, the L2 penalty and the labels' checks."""

    @property
    def size(self) -> int:
        return self.spec.size

    def predict(self, theta: np.ndarray, x) -> np.ndarray:
        """Predicted class of each sample, ``argmax_c z``."""
        return np.argmax(self.logits(theta, x), axis=-1)

    def accuracy(self, theta: np.ndarray, x, y: np.ndarray) -> np.ndarray:
        """Fraction of samples whose predicted class equals the label."""
        return np.mean(self.predict(theta, x) == y, axis=-1)

    def loss(self, theta: np.ndarray, x, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Mean cross-entropy plus the L2 penalty; one value per model of the stack."""
        _, _, nll = self._scored(theta, x, y)
        return self._mean(nll, weights) + self._penalty(theta)

    def evaluate(self, theta: np.ndarray, x, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean loss (with the L2 penalty) and accuracy from one forward pass."""
        logits, labels, nll = self._scored(theta, x, y)
        accuracy = np.mean(np.argmax(logits, axis=-1) == labels, axis=-1)
        return nll.mean(axis=-1) + self._penalty(theta), accuracy

    def _scored(self, theta: np.ndarray, x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The logits, the labels (checked, broadcast against the logits) and each sample's -log p[y]."""
        logits = self.logits(theta, x)
        labels = self._checked_labels(y, np.broadcast_shapes(logits.shape[:-1], np.shape(y)))
        nll, _, _ = log_softmax(np.broadcast_to(logits, labels.shape + logits.shape[-1:]), labels)
        return logits, labels, nll

    def _penalty(self, theta):
        """(l2 / 2) ||theta||^2 per model (0 without a penalty)."""
        if not self.l2:
            return 0.0
        return 0.5 * self.l2 * np.einsum("...i,...i->...", theta, theta)

    def _penalized(self, loss, grad: np.ndarray, theta: np.ndarray):
        """The L2 term of a loss and its gradient: ``loss + (l2 / 2) ||theta||^2``, and ``grad += l2 theta``."""
        if not self.l2:
            return loss
        grad += self.l2 * theta
        return loss + self._penalty(theta)

    def _checked_labels(self, y, shape: tuple[int, ...]) -> np.ndarray:
        """``y`` as int64 labels broadcast to ``shape`` (the batch and the samples)."""
        y = np.asarray(y)
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y must be integer labels, got dtype {y.dtype}")
        try:
            y = np.broadcast_to(y.astype(np.int64, copy=False), shape)
        except ValueError:
            raise ValueError(f"y of shape {y.shape} does not fit the samples {shape}") from None
        self._check_label_range(y)
        return y

    def _check_label_range(self, y: np.ndarray) -> None:
        if y.size and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"labels must lie in [0, {self.n_classes - 1}], got range [{y.min()}, {y.max()}]")


def log_softmax(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-log p[y] by the stable log-softmax, s = z - max z: ``log sum exp(s) - s[y]``; and ``exp(s)`` (a new
    array) with its sum over the classes (keeping that axis), so that ``p = exp(s) / sum exp(s)``."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=-1, keepdims=True)
    nll = np.log(total[..., 0]) - np.take_along_axis(shifted, labels[..., None], axis=-1)[..., 0]
    return nll, exp, total


def initialize_weights(weights: list[np.ndarray], kind: str, rng: np.random.Generator | None) -> None:
    """Fill a model's weight matrices (views of its zero flat vector, each ``(..., fan_in, fan_out)``) for
    init ``kind``: ``"zeros"`` leaves them 0; ``"glorot"`` (Xavier-uniform) draws them from ``rng`` in list
    order, W ~ U(-a, a) with a = sqrt(6 / (fan_in + fan_out)). The biases stay 0 either way."""
    if kind not in INIT_KINDS:
        raise ValueError(f"init kind must be 'zeros' or 'glorot', got {kind!r}")
    if kind == "glorot" and rng is None:
        raise ValueError("init kind 'glorot' needs a numpy.random.Generator (rng)")
    for W in weights if kind == "glorot" else ():
        limit = np.sqrt(6.0 / (W.shape[-2] + W.shape[-1]))
        W[...] = rng.uniform(-limit, limit, size=W.shape)


def multiply_adds_per_sample(model) -> int:
    """Multiply-adds of the matrix products of one training sample (forward and backward) of ``model``: its own
    ``multiply_adds_per_sample()`` if it has one (softmax regression and the MLP count exactly what they
    compute), else that of a chain of dense layers, assumed to be the spec's 2-D tensors W_l (fan_in x fan_out)
    in input order: forward h_{l-1} W_l and the weight's gradient h_{l-1}^T delta_l for each, the gradient
    passed down delta_l W_l^T for all but the first (the input needs none), so 3 x sum fan_in x fan_out - that
    of W_1. Biases, activations and the loss are not counted."""
    own = getattr(model, "multiply_adds_per_sample", None)
    if callable(own):
        return int(own())
    weights = [shape[0] * shape[1] for shape in model.spec.shapes if len(shape) == 2]
    return 3 * sum(weights) - weights[0] if weights else 0


__all__ = ["multiply_adds_per_sample", "ACTIVATIONS", "Classifier", "INIT_KINDS", "MODELS", "ModelConfig", "ModelEntry",
           "Widths", "initialize_weights", "log_softmax", "register_model"]
