"""Softmax regression: loss and gradient against torch autograd and five-point finite differences."""

import numpy as np
import pytest

from fedsim.models import SoftmaxRegression
from fedsim.params import ParamSpec


def _problem(dtype, batch=(), n=13, features=6, classes=4, seed=0, l2=0.0):
    rng = np.random.default_rng(seed)
    model = SoftmaxRegression(features, classes, l2=l2)
    theta = rng.normal(size=batch + (model.size,)).astype(dtype)
    x = rng.normal(size=batch + (n, features)).astype(dtype)
    y = rng.integers(0, classes, size=batch + (n,))
    return model, theta, x, y


def _torch_loss_and_grad(torch, model, theta, x, y):
    """An independent computation with torch's cross_entropy and autograd."""
    t = torch.tensor(theta, requires_grad=True)
    F, C = model.n_features, model.n_classes
    W = t[..., : F * C].reshape(theta.shape[:-1] + (F, C))
    b = t[..., F * C:]
    z = torch.matmul(torch.tensor(x), W) + b.unsqueeze(-2)
    nll = torch.nn.functional.cross_entropy(z.reshape(-1, C), torch.tensor(y).reshape(-1), reduction="none")
    loss = nll.reshape(y.shape).mean(-1) + 0.5 * model.l2 * (t * t).sum(-1)
    loss.sum().backward()
    return loss.detach().numpy(), t.grad.numpy()


@pytest.mark.oracle
@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("l2", [0.0, 0.01])
@pytest.mark.parametrize("batch", [(), (5,)])
def test_loss_and_grad_match_torch_autograd(torch, dtype, tol, l2, batch):
    model, theta, x, y = _problem(dtype, batch, l2=l2)
    loss, grad = model.loss_and_grad(theta, x, y)
    ref_loss, ref_grad = _torch_loss_and_grad(torch, model, theta, x, y)
    assert loss.dtype == dtype and grad.dtype == dtype
    np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, ref_grad, rtol=tol, atol=tol)
    np.testing.assert_allclose(model.loss(theta, x, y), loss, rtol=tol)


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_gradient_equals_five_point_finite_differences(l2):
    model, theta, x, y = _problem(np.float64, l2=l2, seed=3)
    _, grad = model.loss_and_grad(theta, x, y)
    h = 1e-3
    numeric = np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        f = [model.loss(theta + s * e, x, y) for s in (-2, -1, 1, 2)]
        numeric[i] = (f[0] - 8 * f[1] + 8 * f[2] - f[3]) / (12 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-8, atol=1e-10)


def test_batched_equals_one_model_at_a_time():
    model, theta, x, y = _problem(np.float64, (4,), l2=0.05)
    loss, grad = model.loss_and_grad(theta, x, y)
    for k in range(4):
        loss_k, grad_k = model.loss_and_grad(theta[k], x[k], y[k])
        np.testing.assert_allclose(loss[k], loss_k, rtol=1e-14)
        np.testing.assert_allclose(grad[k], grad_k, rtol=1e-12, atol=1e-15)


def test_shared_model_over_many_client_batches():
    # theta (P,) broadcast against x (clients, n, F): one model, every client's gradient.
    model, theta, x, y = _problem(np.float64, (3,))
    loss, grad = model.loss_and_grad(theta[0], x, y)
    assert grad.shape == (3, model.size)
    loss_1, grad_1 = model.loss_and_grad(theta[0], x[1], y[1])
    np.testing.assert_allclose(grad[1], grad_1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(loss[1], loss_1, rtol=1e-14)


def test_zero_weights_pad_ragged_batches():
    model, theta, x, y = _problem(np.float64, (2,), n=10)
    weights = np.ones((2, 10))
    weights[:, 7:] = 0
    x_padded = x.copy()
    x_padded[:, 7:] = 1e3  # garbage in the padding must not matter
    loss, grad = model.loss_and_grad(theta, x_padded, y, weights)
    ref_loss, ref_grad = model.loss_and_grad(theta, x[:, :7], y[:, :7])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-15)


def test_extreme_logits_stay_finite():
    model = SoftmaxRegression(2, 3)
    theta = np.zeros(model.size)
    model.spec.view(theta, "W")[...] = [[1e4, -1e4, 0], [0, 0, 0]]
    x = np.array([[1.0, 0.0], [-1.0, 0.0]])
    loss, grad = model.loss_and_grad(theta, x, np.array([1, 1]))
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, 1e4, rtol=1e-12)


def test_prediction_and_accuracy():
    model = SoftmaxRegression(2, 2)
    theta = model.spec.flatten({"W": np.array([[1.0, -1.0], [0.0, 0.0]]), "b": np.zeros(2)})
    x = np.array([[2.0, 0.0], [-2.0, 0.0], [3.0, 1.0]])
    np.testing.assert_array_equal(model.predict(theta, x), [0, 1, 0])
    assert model.accuracy(theta, x, np.array([0, 1, 1])) == pytest.approx(2 / 3)


def test_glorot_init_is_seeded_and_bounded():
    model = SoftmaxRegression(30, 10)
    a = model.init(np.random.default_rng(1), "glorot", np.float64)
    b = model.init(np.random.default_rng(1), "glorot", np.float64)
    np.testing.assert_array_equal(a, b)
    limit = np.sqrt(6 / 40)
    W = model.spec.view(a, "W")
    assert np.abs(W).max() <= limit and np.abs(W).max() > 0.9 * limit
    np.testing.assert_array_equal(model.spec.view(a, "b"), 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_features=0, n_classes=3), "n_features"),
    (dict(n_features=3, n_classes=1), "n_classes"),
    (dict(n_features=3, n_classes=3, l2=-1.0), "l2"),
])
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SoftmaxRegression(**kwargs)


def test_labels_out_of_range_are_rejected():
    model, theta, x, y = _problem(np.float64)
    y[0] = model.n_classes
    with pytest.raises(ValueError, match="labels must lie in"):
        model.loss_and_grad(theta, x, y)


def test_param_spec_views_write_through_and_round_trip():
    spec = ParamSpec(("W", "b"), ((3, 2), (2,)))
    theta = spec.zeros(np.float64, batch=(4,))
    spec.view(theta, "b")[...] = 7.0
    assert theta[:, 6:].tolist() == [[7.0, 7.0]] * 4
    W = np.arange(24.0).reshape(4, 3, 2)
    flat = spec.flatten({"W": W, "b": np.ones((4, 2))})
    np.testing.assert_array_equal(spec.view(flat, "W"), W)
    assert spec.size == 8 and spec.offsets.tolist() == [0, 6, 8]
    with pytest.raises(ValueError, match="needs 8"):
        spec.view(np.zeros(7), "W")
    with pytest.raises(ValueError, match="unique"):
        ParamSpec(("W", "W"), ((1,), (1,)))


def test_evaluate_equals_loss_and_accuracy():
    model, theta, x, y = _problem(np.float64, l2=0.02, n=50)
    loss, accuracy = model.evaluate(theta, x, y)
    assert loss == pytest.approx(model.loss(theta, x, y), rel=1e-14)
    assert accuracy == model.accuracy(theta, x, y)
