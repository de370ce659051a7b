"""The models' batch_gradient (a round's K batches, buffers allocated once) against their general
``loss_and_grad`` on the same rows: bitwise equal loss and gradient. Softmax regression on float and 8-bit
data, with and without a mask, over one block and several, with and without L2, and None where the general
call would split a batch into several products; the MLP (relu and tanh, one and two hidden layers) on
float data, and None for 8-bit data or another dtype."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.models import MLP, SoftmaxRegression
from fedsim.models.features import Codes


def data(rng, n, F, dtype, zero_columns=True):
    x = rng.standard_normal((n, F)).astype(dtype)
    if zero_columns:
        x[:, : F // 8] = 0                          # as an image's border pixels
    return x


def assert_same_as_loss_and_grad(rng, model, x, y, K: int, B: int, dtype, draw_theta) -> None:
    """Three calls of the model's batch gradient (its buffers reused), the last with a mask, each bitwise
    equal to ``loss_and_grad`` on the same rows."""
    gradient = model.batch_gradient(x, K, B, dtype)
    assert gradient is not None
    for call in range(3):
        theta, rows = draw_theta(), rng.integers(0, len(y), (K, B))
        mask = None
        if call == 2:
            mask = (np.arange(B) < rng.integers(1, B + 1, K)[:, None]).astype(dtype)
        want_loss, want_grad = model.loss_and_grad(theta, x, y[rows], mask, rows=rows)
        loss, grad = gradient(theta, rows, y[rows], mask)
        assert loss.dtype == want_loss.dtype and grad.dtype == want_grad.dtype
        assert loss.tobytes() == want_loss.tobytes(), (loss, want_loss)
        assert grad.tobytes() == want_grad.tobytes(), np.abs(grad - want_grad).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K, B, F, C", [(10, 20, 784, 10), (1, 20, 100, 10), (30, 50, 300, 10), (3, 1, 16, 4)])
@pytest.mark.parametrize("storage", ["float", "codes"])
def test_batch_gradient_equals_loss_and_grad_bitwise(dtype, K, B, F, C, storage):
    rng = np.random.default_rng(K * 1000 + B + F)
    N = 400
    if storage == "float":
        x = data(rng, N, F, dtype)
    else:
        x = Codes(rng.integers(0, 256, (N, F), dtype=np.uint8), 1 / 255, -0.25, np.dtype(dtype))
    y = rng.integers(0, C, N)
    for l2 in (0.0, 0.01):
        model = SoftmaxRegression(F, C, l2)
        assert_same_as_loss_and_grad(rng, model, x, y, K, B, dtype,
                                     lambda model=model: (rng.standard_normal((K, model.size)) * 0.1).astype(dtype))


def test_batch_gradient_declines_what_it_cannot_compute_bitwise():
    """Softmax regression: a batch the general call splits into several products; the MLP: 8-bit codes and
    another dtype."""
    rng = np.random.default_rng(3)
    model = SoftmaxRegression(784, 10)
    x = data(rng, 500, 784, np.float32)
    # One model of 300 rows: the general call takes its products 127 rows at a time.
    assert model.batch_gradient(x, 1, 300, np.float32) is None
    # Two models of 130 rows a block: one batched product, one per model, whatever the rows.
    assert model.batch_gradient(x, 4, 130, np.float32) is not None
    # One model of 150 rows a block (470 KB each): split again.
    assert model.batch_gradient(x, 4, 150, np.float32) is None
    rng = np.random.default_rng(5)
    model = MLP(16, (8,), 4)
    assert model.batch_gradient(Codes(rng.integers(0, 256, (30, 16), dtype=np.uint8), 1 / 255), 2, 5,
                                np.float64) is None
    assert model.batch_gradient(data(rng, 30, 16, np.float32), 2, 5, np.float64) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden, activation", [((32,), "relu"), ((16, 8), "tanh")])
@pytest.mark.parametrize("K, B", [(10, 20), (1, 7)])
def test_mlp_batch_gradient_equals_loss_and_grad_bitwise(dtype, hidden, activation, K, B):
    rng = np.random.default_rng(K * 100 + B + len(hidden))
    F, C, N = 50, 10, 300
    x, y = data(rng, N, F, dtype), rng.integers(0, C, N)
    for l2 in (0.0, 0.01):
        model = MLP(F, hidden, C, activation, l2)
        assert_same_as_loss_and_grad(rng, model, x, y, K, B, dtype,
                                     lambda model=model: np.stack([model.init(rng, "glorot", dtype) for _ in range(K)]))
