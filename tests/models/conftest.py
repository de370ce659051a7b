"""Helpers of the models' tests: the torch oracle of a model, and its gradient by finite differences."""

import numpy as np

from tests.algorithms.torch_models import TorchNetwork


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
