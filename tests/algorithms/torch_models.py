"""The torch side of the oracles: a model's loss written in torch over one flat parameter vector (the
models' own oracle tests and the algorithms'), and the small class-structured data the MLP oracles train on
(made here: no download).

The layout is the documented convention of ``fedsim.models`` (``W1, b1, ..., WL, bL``, each weight
``(fan_in, fan_out)`` row-major), written again here from the layer widths alone; softmax regression is the
network without a hidden layer. The loss is ``torch.nn.functional.cross_entropy`` and gradients come from
autograd, so nothing of fedsim's hand-written backpropagation is reused.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fedsim.data.dataset import Dataset


class TorchNetwork(NamedTuple):
    """``n_features -> hidden ... -> n_classes`` with ``activation`` between layers, in torch."""

    widths: tuple[int, ...]       # (n_features, *hidden, n_classes)
    activation: str               # "relu" | "tanh" (unused without a hidden layer)

    @classmethod
    def of(cls, model_config, n_features: int, n_classes: int) -> TorchNetwork:
        """The network of a ``[model]`` table (softmax regression: no hidden layer)."""
        return cls((n_features, *model_config.hidden, n_classes), model_config.activation)

    @property
    def tensor_sizes(self) -> list[int]:
        """Sizes of the flat vector's tensors in order: ``fan_in * fan_out`` and ``fan_out`` per layer."""
        sizes = []
        for fan_in, fan_out in zip(self.widths[:-1], self.widths[1:]):
            sizes += [fan_in * fan_out, fan_out]
        return sizes

    @classmethod
    def of_model(cls, model) -> TorchNetwork:
        """The network of a fedsim model object, from its widths alone (softmax regression: no hidden layer)."""
        return cls((model.n_features, *getattr(model, "hidden", ()), model.n_classes),
                   getattr(model, "activation", "relu"))

    def logits(self, torch, theta, x):
        """z_L of the samples ``x`` (..., n, n_features) under the flat parameters ``theta`` (..., P) (views
        into it); leading axes broadcast as in ``torch.matmul``."""
        activation = {"relu": torch.relu, "tanh": torch.tanh}[self.activation]
        h, start, n_layers = x, 0, len(self.widths) - 1
        for layer, (fan_in, fan_out) in enumerate(zip(self.widths[:-1], self.widths[1:]), start=1):
            W = theta[..., start:start + fan_in * fan_out].reshape(theta.shape[:-1] + (fan_in, fan_out))
            b = theta[..., start + fan_in * fan_out:start + fan_in * fan_out + fan_out]
            start += fan_in * fan_out + fan_out
            h = h @ W + b.unsqueeze(-2)
            if layer < n_layers:
                h = activation(h)
        return h

    def loss_and_grad(self, torch, theta, x, y, l2: float = 0.0):
        """Mean cross-entropy (+ (l2 / 2) ||theta||^2) at ``theta`` and its autograd gradient (detached)."""
        point = theta.detach().clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(self.logits(torch, point, x), y)
        if l2:
            loss = loss + 0.5 * l2 * (point * point).sum()
        (grad,) = torch.autograd.grad(loss, point)
        return loss.detach(), grad

    def stacked_loss_and_grad(self, torch, theta, x, y, l2: float = 0.0, weights=None):
        """NumPy in and out, for stacked models ``theta`` (..., P) on ``x`` (..., n, n_features): each model's
        cross-entropy, its mean weighted by ``weights`` (sum m_i l_i / sum m_i) if given, + (l2 / 2)
        ||theta||^2, and the autograd gradient."""
        t = torch.tensor(theta, requires_grad=True)
        z = self.logits(torch, t, torch.tensor(x))
        labels = torch.tensor(np.broadcast_to(y, z.shape[:-1]).copy())
        nll = torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), labels.reshape(-1),
                                                reduction="none").reshape(labels.shape)
        m = torch.ones_like(nll) if weights is None else torch.tensor(weights)
        loss = (nll * m).sum(-1) / m.sum(-1) + 0.5 * l2 * (t * t).sum(-1)
        loss.sum().backward()
        return loss.detach().numpy(), t.grad.numpy()


def teacher_dataset(n_samples: int, n_features: int, n_classes: int, seed: int = 0) -> Dataset:
    """``n_samples`` uniform features labelled by a random linear teacher plus noise; its first 10 rows
    double as the test split."""
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(n_features, n_classes)) * 2
    x = rng.random((n_samples, n_features))
    y = np.argmax(x @ teacher + rng.normal(size=(n_samples, n_classes)), axis=1)
    return Dataset("oracle", x, y, x[:10], y[:10], n_classes)
