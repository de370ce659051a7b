"""The multilayer perceptron: loss and gradient against torch autograd and finite differences, its layout,
its initialization and its one-line errors. No data files: every problem is drawn here."""

import numpy as np
import pytest

from fedsim.models import SoftmaxRegression
from fedsim.models.features import Codes
from fedsim.models.mlp import MLP
from tests.models.conftest import five_point_gradient, torch_loss_and_grad

FEATURES, CLASSES, CLIENTS, SAMPLES = 7, 4, 3, 9


def _problem(dtype=np.float64, hidden=(5,), activation="relu", l2=0.0, clients=(CLIENTS,), shared_x=False,
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


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_gradient_equals_five_point_finite_differences(activation):
    model, theta, x, y, mask = _problem(np.float64, (6, 4), activation, l2=0.05, clients=(), seed=3)
    _, grad = model.loss_and_grad(theta, x, y, mask)
    _assert_close(grad, five_point_gradient(lambda point: model.loss(point, x, y, mask), theta, 1e-4), 1e-8)


def test_without_hidden_layers_it_is_softmax_regression():
    """hidden = (): the layout W1, b1 is softmax regression's W, b, and so are loss and gradient."""
    model, theta, x, y, mask = _problem(np.float64, (), l2=0.02)
    softmax = SoftmaxRegression(FEATURES, CLASSES, l2=0.02)
    assert model.spec.shapes == softmax.spec.shapes
    for got, expected in zip(model.loss_and_grad(theta, x, y, mask), softmax.loss_and_grad(theta, x, y, mask)):
        _assert_close(got, expected, 1e-14)


def test_batched_equals_one_model_at_a_time_and_a_shared_model_every_batch():
    model, theta, x, y, mask = _problem(np.float64, (6, 4), "tanh", l2=0.05)
    loss, grad = model.loss_and_grad(theta, x, y, mask)
    shared_loss, shared_grad = model.loss_and_grad(theta[0], x, y)          # theta (P,), x (K, n, F)
    assert shared_grad.shape == grad.shape
    for k in range(CLIENTS):
        one_loss, one_grad = model.loss_and_grad(theta[k], x[k], y[k], mask[k])
        _assert_close(loss[k], one_loss, 1e-14)
        _assert_close(grad[k], one_grad, 1e-13)
        one_loss, one_grad = model.loss_and_grad(theta[0], x[k], y[k])
        _assert_close(shared_loss[k], one_loss, 1e-14)
        _assert_close(shared_grad[k], one_grad, 1e-13)


def test_zero_weights_pad_ragged_batches():
    model, theta, x, y, _ = _problem(np.float64, (5,))
    mask = np.ones((CLIENTS, SAMPLES))
    mask[:, 6:] = 0
    padded = x.copy()
    padded[:, 6:] = 1e3                                   # garbage in the padding must not matter
    for got, expected in zip(model.loss_and_grad(theta, padded, y, mask),
                             model.loss_and_grad(theta, x[:, :6], y[:, :6])):
        _assert_close(got, expected, 1e-13)


def test_gathered_rows_codes_and_float64_data_equal_the_decoded_copy():
    """``rows=`` reads ``x[rows]`` of one set; 8-bit :class:`Codes` stand for ``scale u + offset``."""
    model, theta, _, _, _ = _problem(np.float32, (5,))
    rng = np.random.default_rng(4)
    features = Codes(rng.integers(0, 256, size=(40, FEATURES), dtype=np.uint8), 1 / 255, -0.5, np.float32)
    labels = rng.integers(0, CLASSES, size=40)
    rows = rng.integers(0, 40, size=(CLIENTS, SAMPLES))
    got = model.loss_and_grad(theta, features, labels[rows], rows=rows)
    expected = model.loss_and_grad(theta, features.decode()[rows], labels[rows])
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    for bad in (rows - 40, rows + 40):
        with pytest.raises(ValueError, match=r"rows must lie in \[0, 40\)"):
            model.loss_and_grad(theta, features, labels[rows], rows=bad)
    # float64 data are computed in the parameters' float32
    _, _, x, y, _ = _problem(np.float32, (5,))
    loss, grad = model.loss_and_grad(theta, x.astype(np.float64), y)
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    np.testing.assert_array_equal(grad, model.loss_and_grad(theta, x, y)[1])


def test_evaluate_predict_and_extreme_logits():
    model, theta, x, y, _ = _problem(np.float64, (6, 4), "tanh", l2=0.02)
    loss, accuracy = model.evaluate(theta, x, y)
    _assert_close(loss, model.loss(theta, x, y), 1e-15)
    np.testing.assert_array_equal(accuracy, model.accuracy(theta, x, y))
    np.testing.assert_array_equal(model.predict(theta, x), np.argmax(model.logits(theta, x), axis=-1))
    np.testing.assert_array_equal(accuracy, np.mean(model.predict(theta, x) == y, axis=-1))
    big = MLP(2, (1,), 3)                                 # logits (1e4, -1e4, 0) for x = (1, 0)
    theta = big.spec.flatten({"W1": [[1.0], [0.0]], "b1": [0.0], "W2": [[1e4, -1e4, 0.0]], "b2": np.zeros(3)})
    loss, grad = big.loss_and_grad(theta, np.array([[1.0, 0.0]]), np.array([1]))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, 2e4, rtol=1e-12)


def test_spec_names_each_layer_and_its_views_write_through_the_flat_vector():
    model = MLP(FEATURES, (6, 4), CLASSES)
    spec = model.spec
    assert spec.names == ("W1", "b1", "W2", "b2", "W3", "b3")
    assert spec.shapes == ((7, 6), (6,), (6, 4), (4,), (4, 4), (4,))
    assert spec.offsets.tolist() == [0, 42, 48, 72, 76, 92, 96] and model.size == 96
    theta = np.arange(2 * model.size, dtype=np.float64).reshape(2, model.size)
    for layer, (W, b) in enumerate(model.layers(theta), start=1):
        assert np.shares_memory(W, theta) and np.shares_memory(b, theta)
        np.testing.assert_array_equal(W, theta[:, spec.slice(f"W{layer}")].reshape(W.shape))
        np.testing.assert_array_equal(b, theta[:, spec.slice(f"b{layer}")])
        b[...] = -layer
    assert theta[1, 92:].tolist() == [-3.0] * 4 and theta[0, 42:48].tolist() == [-1.0] * 6
    assert MLP(3, [4, np.int64(2)], 3).hidden == (4, 2)          # a list of widths becomes a tuple


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_glorot_init_is_seeded_bounded_and_has_zero_biases(dtype):
    model = MLP(300, (200, 100), 10, dtype=dtype)
    theta = model.init(np.random.default_rng(1))
    np.testing.assert_array_equal(theta, model.init(np.random.default_rng(1)))
    assert theta.dtype == dtype and theta.shape == (model.size,)
    for W, b in model.layers(theta):
        limit = np.sqrt(6 / (W.shape[0] + W.shape[1]))    # U(-a, a): mean 0, variance a^2 / 3
        assert np.abs(W).max() <= limit and np.abs(W).max() > 0.99 * limit
        # Within 5 standard errors: of the mean, a / sqrt(3 N); of the variance, sqrt(4 / 5 N) relative.
        assert abs(W.mean()) < 5 * limit / np.sqrt(3 * W.size)
        assert W.var() == pytest.approx(limit ** 2 / 3, rel=5 * np.sqrt(0.8 / W.size))
        np.testing.assert_array_equal(b, 0)
    stack = model.init(np.random.default_rng(1), "glorot", np.float64, batch=(2,))
    assert stack.shape == (2, model.size) and not np.array_equal(stack[0], stack[1])
    np.testing.assert_array_equal(model.init(kind="zeros"), 0)


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
