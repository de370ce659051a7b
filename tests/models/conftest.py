"""Helpers of the models' tests: each built-in model's random problem, the ways softmax regression walks the
data, the torch oracle of a model, and its gradient by finite differences."""

import numpy as np

import fedsim.models.softmax as softmax_module
from fedsim.models import MLP, SoftmaxRegression
from tests.algorithms.torch_models import TorchNetwork

FEATURES, CLASSES, CLIENTS, SAMPLES = 7, 4, 3, 9          # the MLP's problems


def softmax_problem(dtype, batch=(), n=13, features=6, classes=4, seed=0, l2=0.0):
    rng = np.random.default_rng(seed)
    model = SoftmaxRegression(features, classes, l2=l2)
    theta = rng.normal(size=batch + (model.size,)).astype(dtype)
    x = rng.normal(size=batch + (n, features)).astype(dtype)
    y = rng.integers(0, classes, size=batch + (n,))
    return model, theta, x, y


def mlp_problem(dtype=np.float64, hidden=(5,), activation="relu", l2=0.0, clients=(CLIENTS,), shared_x=False,
                seed=0):
    """A model, K = clients stacked parameter vectors (glorot, plus noise so the biases are not 0), the
    clients' batches (one shared batch with ``shared_x``), labels and a 0/1 padding mask."""
    rng = np.random.default_rng(seed)
    model = MLP(FEATURES, hidden, CLASSES, activation=activation, l2=l2, dtype=dtype)
    theta = model.init(rng, batch=clients)
    theta += rng.normal(scale=0.3, size=theta.shape).astype(dtype)
    x = rng.normal(size=(() if shared_x else clients) + (SAMPLES, FEATURES)).astype(dtype)
    y = rng.integers(0, CLASSES, size=clients + (SAMPLES,))
    mask = (np.arange(SAMPLES) < rng.integers(1, SAMPLES + 1, size=clients + (1,))).astype(dtype)
    return model, theta, x, y, mask


# (whole, block, product) byte sizes that force each way softmax regression walks the data on small problems.
WALKS = {
    "one block": (10 ** 9, 10 ** 9, 10 ** 9),
    "models grouped": (0, 6000, 6000),                # several whole models a block
    "rows of one model": (0, 500, 200),               # row blocks, each in several products (2 rows)
    "one row a block": (0, 1, 1),
}


def walk_by(name, monkeypatch):
    """Make softmax regression walk the data as WALKS[name] says."""
    for constant, size in zip(("WHOLE_BYTES", "BLOCK_BYTES", "PRODUCT_BYTES"), WALKS[name]):
        monkeypatch.setattr(softmax_module, constant, size)


def torch_loss_and_grad(torch, model, theta, x, y, weights=None):
    """An independent computation of ``model.loss_and_grad``: torch's layers over the flat vector's views,
    its activations, cross_entropy and autograd (:class:`TorchNetwork`)."""
    return TorchNetwork.of_model(model).stacked_loss_and_grad(torch, theta, x, y, model.l2, weights)


def five_point_gradient(loss, theta: np.ndarray, h: float) -> np.ndarray:
    """The gradient of ``loss`` at ``theta`` by five-point central differences, entry by entry:
    (f(-2h) - 8 f(-h) + 8 f(h) - f(2h)) / 12h."""
    numeric = np.empty_like(theta)
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = h
        f = [loss(theta + s * step) for s in (-2, -1, 1, 2)]
        numeric[i] = (f[0] - 8 * f[1] + 8 * f[2] - f[3]) / (12 * h)
    return numeric
