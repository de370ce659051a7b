"""The multilayer perceptron: loss and gradient against torch autograd, its layout and its one-line errors.
No data files: every problem is drawn here. What any model must do: tests/models/test_contract.py."""

import numpy as np
import pytest

from fedsim.models import SoftmaxRegression
from fedsim.models.mlp import MLP
from tests.models.conftest import CLASSES, CLIENTS, FEATURES, mlp_problem as _problem, torch_loss_and_grad


def _assert_close(got, expected, relative):
    """Equal to ``relative`` times the largest entry of ``expected`` (entries near 0 have no relative
    precision of their own); prints both arrays when it fails."""
    np.testing.assert_allclose(got, expected, rtol=relative, atol=relative * np.abs(expected).max())


@pytest.mark.oracle
@pytest.mark.parametrize("hidden", [(5,), (6, 4)])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("l2", [0.0, 0.01])
@pytest.mark.parametrize("shared_x", [False, True])
def test_float64_loss_and_grad_match_torch_autograd(torch, hidden, activation, weighted, l2, shared_x):
    model, theta, x, y, mask = _problem(np.float64, hidden, activation, l2, shared_x=shared_x)
    weights = mask if weighted else None
    loss, grad = model.loss_and_grad(theta, x, y, weights)
    ref_loss, ref_grad = torch_loss_and_grad(torch, model, theta, x, y, weights)
    assert loss.shape == (CLIENTS,) and grad.shape == (CLIENTS, model.size)
    assert loss.dtype == np.float64 and grad.dtype == np.float64
    _assert_close(loss, ref_loss, 1e-12)
    _assert_close(grad, ref_grad, 1e-12)
    _assert_close(model.loss(theta, x, y, weights), ref_loss, 1e-12)


@pytest.mark.oracle
@pytest.mark.parametrize("hidden, activation", [((5,), "relu"), ((6, 4), "tanh")])
@pytest.mark.parametrize("clients", [(), (CLIENTS,), (2, 2)])
def test_float32_loss_and_grad_match_torch_float32(torch, hidden, activation, clients):
    """In float32 throughout (the parameters' dtype); torch in float32 too, so both round alike to ~1e-6."""
    model, theta, x, y, mask = _problem(np.float32, hidden, activation, 0.01, clients)
    loss, grad = model.loss_and_grad(theta, x, y, mask)
    assert loss.dtype == np.float32 and grad.dtype == np.float32 and grad.shape == clients + (model.size,)
    ref_loss, ref_grad = torch_loss_and_grad(torch, model, theta, x, y, mask)
    _assert_close(loss, ref_loss, 2e-6)
    _assert_close(grad, ref_grad, 5e-6)


def test_without_hidden_layers_it_is_softmax_regression():
    """hidden = (): the layout W1, b1 is softmax regression's W, b, and so are loss and gradient."""
    model, theta, x, y, mask = _problem(np.float64, (), l2=0.02)
    softmax = SoftmaxRegression(FEATURES, CLASSES, l2=0.02)
    assert model.spec.shapes == softmax.spec.shapes
    for got, expected in zip(model.loss_and_grad(theta, x, y, mask), softmax.loss_and_grad(theta, x, y, mask)):
        _assert_close(got, expected, 1e-14)


def test_float64_data_are_computed_in_the_parameters_float32():
    model, theta, x, y, _ = _problem(np.float32, (5,))
    loss, grad = model.loss_and_grad(theta, x.astype(np.float64), y)
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    np.testing.assert_array_equal(grad, model.loss_and_grad(theta, x, y)[1])


def test_a_list_of_widths_becomes_a_tuple():
    assert MLP(3, [4, np.int64(2)], 3).hidden == (4, 2)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(hidden=(0,)), ValueError, r"hidden\[0\] must be an integer >= 1, got 0"),
    (dict(hidden=(200, -1)), ValueError, r"hidden\[1\] must be an integer >= 1"),
    (dict(hidden=(2.5,)), TypeError, r"hidden\[0\] must be an integer >= 1"),
    (dict(hidden=200), TypeError, "hidden must be a list of integer widths >= 1, got 200"),
    (dict(hidden="200"), TypeError, "hidden must be a list"),
    (dict(activation="sigmoid"), ValueError, "activation must be one of 'relu', 'tanh', got 'sigmoid'"),
    (dict(l2=-1.0), ValueError, "l2 must be"),
    (dict(n_features=0), ValueError, "n_features must be an integer >= 1"),
    (dict(n_classes=1), ValueError, "n_classes must be an integer >= 2"),
    (dict(dtype=np.int32), ValueError, "dtype must be float32 or float64"),
    (dict(dtype="half-precision"), ValueError, "dtype must be float32 or float64"),
    (dict(dtype=None), ValueError, "dtype must be float32 or float64"),
])
def test_bad_settings_name_the_setting(kwargs, error, message):
    with pytest.raises(error, match=message):
        MLP(**{**dict(n_features=3, hidden=(4,), n_classes=3), **kwargs})


def test_bad_arguments_name_the_argument():
    model, theta, x, y, mask = _problem(np.float64, (5,))
    cases = [
        (lambda: model.loss_and_grad(theta[:, :-1], x, y), r"theta must have shape \(\.\.\., 64\)"),
        (lambda: model.loss_and_grad(theta.astype(np.int64), x, y), "theta must be a float32 or float64"),
        (lambda: model.loss_and_grad(theta, x[..., :-1], y), r"x must have shape \(\.\.\., samples, 7\)"),
        (lambda: model.loss_and_grad(theta, x.astype(np.int32), y), "x must be a float32 or float64"),
        (lambda: model.loss_and_grad(theta, x, y[:, :-1]), "y of shape"),
        (lambda: model.loss_and_grad(theta, x, y + CLASSES), r"labels must lie in \[0, 3\]"),
        (lambda: model.loss_and_grad(theta, x, y.astype(float)), "y must be integer labels"),
        (lambda: model.loss_and_grad(theta, x, y, mask[:, :-1]), "weights of shape"),
        (lambda: model.loss_and_grad(theta, x, y, -mask), "weights must be finite and >= 0"),
        (lambda: model.loss_and_grad(theta, x, y, 0 * mask), "positive sum"),
        (lambda: model.loss_and_grad(theta, x, y, rows=np.zeros((3, 2), int)), "with rows, x must be one"),
        (lambda: model.init(np.random.default_rng(0), "he"), "init kind must be 'zeros' or 'glorot'"),
        (lambda: model.init(None, "glorot"), "needs a numpy.random.Generator"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
