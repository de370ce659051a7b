"""The model contract, one suite run over every registered model (``fedsim.models.MODELS``) with the rows of
its entry in SETTINGS, as tests/compress/test_contract.py runs over every compressor.

The contract (``fedsim/models/base.py``): the gradient is the loss's (five-point finite differences); zero
weights pad ragged batches; ``evaluate`` is ``loss`` and ``accuracy`` from one pass, ``predict`` the argmax of
the logits, and extreme logits stay finite; glorot init is seeded, bounded, of the right moments, with zero
biases; stacked calls equal one model at a time; ``rows=`` gathers what ``x[rows]`` copies out; the spec's
views write through the flat vector and round-trip.

What is specific to one model (hand-computed cases, its settings and errors, softmax regression's blocks and
threads, the torch oracle on the model's own parameter sets) is in tests/models/test_<model>.py.
"""

from functools import partial
from typing import NamedTuple

import numpy as np
import pytest

from fedsim.models import MLP, MODELS, ModelConfig, SoftmaxRegression
from fedsim.models.base import ModelEntry, multiply_adds_per_sample
from fedsim.models.features import Codes, decoded
from fedsim.params import ParamSpec
from tests.models.conftest import (CLASSES, CLIENTS, FEATURES, SAMPLES, WALKS, five_point_gradient, mlp_problem,
                                   softmax_problem, walk_by)


class Tol(NamedTuple):
    """|got - expected| <= atol + of_max max|expected| + rtol |expected| (of_max: where entries near 0 have
    no relative precision of their own)."""

    rtol: float
    atol: float = 0.0
    of_max: float = 0.0


def scaled(relative: float) -> Tol:
    """Within ``relative`` of each entry plus ``relative`` times the largest entry of the expected array."""
    return Tol(relative, of_max=relative)


EXACT = Tol(0.0)


def assert_close(got, expected, tol: Tol):
    np.testing.assert_allclose(got, expected, rtol=tol.rtol, atol=tol.atol + tol.of_max * np.abs(expected).max())


# -- each model's own cases -------------------------------------------------------------------------------

def softmax_extreme():
    """Logits (1e4, -1e4, 0) and (-1e4, 1e4, 0), both labelled 1: a mean loss of 1e4."""
    model = SoftmaxRegression(2, 3)
    theta = np.zeros(model.size)
    model.spec.view(theta, "W")[...] = [[1e4, -1e4, 0], [0, 0, 0]]
    return model, theta, np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([1, 1]), 1e4


def mlp_extreme():
    """Logits (1e4, -1e4, 0) for x = (1, 0), labelled 1: a loss of 2e4."""
    model = MLP(2, (1,), 3)
    theta = model.spec.flatten({"W1": [[1.0], [0.0]], "b1": [0.0], "W2": [[1e4, -1e4, 0.0]], "b2": np.zeros(3)})
    return model, theta, np.array([[1.0, 0.0]]), np.array([1]), 2e4


def softmax_gathered():
    """Three models, 11 rows each of a float set of 50, and a padding mask."""
    model, theta, _, _ = softmax_problem(np.float32, (3,), features=8, classes=5, seed=6)
    rng = np.random.default_rng(7)
    source = rng.normal(size=(50, 8)).astype(np.float32)
    labels = rng.integers(0, 5, size=50)
    rows = rng.integers(0, 50, size=(3, 11))
    mask = (np.arange(11) < np.array([[11], [7], [3]])).astype(np.float32)
    return model, theta, source, labels, rows, mask


def mlp_gathered():
    """Three models, 9 rows each of a set of 40 stored as 8-bit codes, no mask."""
    model, theta, _, _, _ = mlp_problem(np.float32, (5,))
    rng = np.random.default_rng(4)
    source = Codes(rng.integers(0, 256, size=(40, FEATURES), dtype=np.uint8), 1 / 255, -0.5, np.float32)
    labels = rng.integers(0, CLASSES, size=40)
    rows = rng.integers(0, 40, size=(CLIENTS, SAMPLES))
    return model, theta, source, labels, rows, None


STACKS = ("models and data", "shared model", "shared data")

# Each registered model's entry; a new model adds its own. problem(**kwargs): (model, theta, x, y, padding
# mask or None); layers(model, theta): each layer's (W, b) views; modes: name -> setup(monkeypatch), the ways
# the model computes (softmax regression's walks over the data). The rows of each test:
#   five_point  (problem kwargs, step h, tolerance)
#   ragged      (problem kwargs, samples kept, loss tolerance, gradient tolerance)
#   evaluate    (problem kwargs, tolerance of evaluate's loss against loss)
#   extreme     () -> (model, theta, x, y, expected loss)
#   glorot      (() -> model, init kwargs, dtype of theta, least max|W| / a)
#   stacked     (problem kwargs, stack, loss, gradient and logits tolerances)
#   gathered    (() -> (model, theta, source, labels, rows, mask or None), loss and gradient tolerances)
#   spec        (() -> model, names, shapes, offsets)
SETTINGS = {
    "softmax": dict(
        problem=lambda **kwargs: (*softmax_problem(**kwargs), None),
        layers=lambda model, theta: [(model.spec.view(theta, "W"), model.spec.view(theta, "b"))],
        modes={walk: partial(walk_by, walk) for walk in WALKS},
        five_point=[(dict(dtype=np.float64, l2=l2, seed=3), 1e-3, Tol(1e-8, atol=1e-10)) for l2 in (0.0, 0.3)],
        ragged=[(dict(dtype=np.float64, batch=(2,), n=10), 7, Tol(1e-13), Tol(1e-12, atol=1e-15))],
        evaluate=[(dict(dtype=np.float64, l2=0.02, n=50), Tol(1e-14))],
        extreme=[softmax_extreme],
        glorot=[(lambda: SoftmaxRegression(30, 10), dict(kind="glorot", dtype=np.float64), np.float64, 0.9)],
        stacked=[(dict(dtype=np.float64, batch=(4,), n=29, features=7, classes=3, seed=5, l2=l2), stack,
                  Tol(1e-14), Tol(1e-12, atol=1e-15), Tol(1e-13)) for l2 in (0.0, 0.05) for stack in STACKS],
        gathered=[(softmax_gathered, Tol(1e-6), Tol(1e-5, atol=1e-7))],
        spec=[(lambda: SoftmaxRegression(3, 2), ("W", "b"), ((3, 2), (2,)), [0, 6, 8])],
        multiply_adds=[(lambda: SoftmaxRegression(60, 10), 2 * 60 * 10)],           # x W, x^T delta
    ),
    "mlp": dict(
        problem=mlp_problem,
        layers=MLP.layers,
        modes={"as built": lambda monkeypatch: None},
        five_point=[(dict(dtype=np.float64, hidden=(6, 4), activation=activation, l2=0.05, clients=(), seed=3),
                     1e-4, scaled(1e-8)) for activation in ("tanh", "relu")],
        ragged=[(dict(dtype=np.float64, hidden=(5,)), 6, scaled(1e-13), scaled(1e-13))],
        evaluate=[(dict(dtype=np.float64, hidden=(6, 4), activation="tanh", l2=0.02), scaled(1e-15))],
        extreme=[mlp_extreme],
        glorot=[(lambda dtype=dtype: MLP(300, (200, 100), 10, dtype=dtype), {}, dtype, 0.99)
                for dtype in (np.float32, np.float64)],
        stacked=[(dict(dtype=np.float64, hidden=(6, 4), activation="tanh", l2=0.05), stack,
                  scaled(1e-14), scaled(1e-13), scaled(1e-13)) for stack in STACKS],
        gathered=[(mlp_gathered, EXACT, EXACT)],
        spec=[(lambda: MLP(FEATURES, (6, 4), CLASSES), ("W1", "b1", "W2", "b2", "W3", "b3"),
               ((7, 6), (6,), (6, 4), (4,), (4, 4), (4,)), [0, 42, 48, 72, 76, 92, 96])],
        multiply_adds=[(lambda: MLP(784, (200,), 10), 2 * 784 * 200 + 3 * 200 * 10),   # no dh_0 = dz_1 W_1^T
                       (lambda: MLP(FEATURES, (6, 4), CLASSES), 2 * 7 * 6 + 3 * (6 * 4 + 4 * 4))],
    ),
}
KEYS = ("problem", "layers", "modes", "five_point", "ragged", "evaluate", "extreme", "glorot", "stacked", "gathered",
        "spec", "multiply_adds")


def each_model(key: str, with_modes: bool = False):
    """Parametrize over every registered model and each row of its SETTINGS[name][key] (with ``with_modes``,
    in each of its modes). A model without its entry has no rows: the first test below fails for it."""
    params = []
    for name in MODELS:
        entry = SETTINGS.get(name, {})
        for index, row in enumerate(entry.get(key, ())):
            if with_modes:
                params += [pytest.param(name, row, mode, id=f"{name}-{index}-{mode}") for mode in entry["modes"]]
            else:
                params.append(pytest.param(name, row, id=f"{name}-{index}"))
    return pytest.mark.parametrize("name, row, mode" if with_modes else "name, row", params)


def problem(name: str, kwargs: dict):
    return SETTINGS[name]["problem"](**kwargs)


CALLED = ("size", "logits", "loss", "predict", "accuracy")     # beyond the protocol: what Classifier gives


def gaps_in_the_suite() -> list[str]:
    """What keeps the contract from running on every registered model, each said as what to add."""
    gaps = []
    for name in sorted(set(MODELS) - set(SETTINGS)):
        model = MODELS[name].build(ModelConfig(name=name), FEATURES, CLASSES, 0.0)
        lacking = [method for method in CALLED if not hasattr(model, method)]
        gaps.append(f"registered model {name!r} has no entry in SETTINGS of tests/models/test_contract.py: add one "
                    f"with rows for each of {KEYS} (the comment above SETTINGS says what each holds)"
                    + (f"; the suite also calls its {', '.join(lacking)}: subclass fedsim.models.base.Classifier "
                       "(ARCHITECTURE.md, 'Adding a model')" if lacking else ""))
    gaps += [f"SETTINGS of tests/models/test_contract.py names unregistered model {name!r}"
             for name in sorted(set(SETTINGS) - set(MODELS))]
    return gaps + [f"SETTINGS[{name!r}] needs rows for each of {KEYS}" for name, entry in SETTINGS.items()
                   if set(entry) != set(KEYS) or not all(entry.values())]


def test_every_registered_model_is_in_the_suite():
    assert not gaps_in_the_suite(), "\n".join(gaps_in_the_suite())


def test_a_model_outside_the_suite_is_told_what_to_add(monkeypatch):
    """A model that follows the protocol alone (as a plugin's may: test_registry.py's TinyLinear) is told to add
    its SETTINGS entry and the methods Classifier gives."""
    from tests.models.test_registry import TinyLinear
    monkeypatch.setitem(MODELS, "tiny", ModelEntry("tiny", lambda settings, features, classes, l2: TinyLinear(
        features, classes, l2), "zeros", False, True))
    assert (f"registered model 'tiny' has no entry in SETTINGS of tests/models/test_contract.py: add one with rows "
            f"for each of {KEYS} (the comment above SETTINGS says what each holds); the suite also calls its size, "
            "logits, loss, predict, accuracy: subclass fedsim.models.base.Classifier (ARCHITECTURE.md, 'Adding a "
            "model')") in gaps_in_the_suite()


# -- the contract -----------------------------------------------------------------------------------------

@each_model("five_point")
def test_gradient_equals_five_point_finite_differences(name, row):
    kwargs, h, tol = row
    model, theta, x, y, mask = problem(name, kwargs)
    _, grad = model.loss_and_grad(theta, x, y, mask)
    assert_close(grad, five_point_gradient(lambda point: model.loss(point, x, y, mask), theta, h), tol)


@each_model("ragged")
def test_zero_weights_pad_ragged_batches(name, row):
    kwargs, kept, loss_tol, grad_tol = row
    model, theta, x, y, _ = problem(name, kwargs)
    mask = np.ones(y.shape)
    mask[:, kept:] = 0
    padded = x.copy()
    padded[:, kept:] = 1e3                                # garbage in the padding must not matter
    loss, grad = model.loss_and_grad(theta, padded, y, mask)
    ref_loss, ref_grad = model.loss_and_grad(theta, x[:, :kept], y[:, :kept])
    assert_close(loss, ref_loss, loss_tol)
    assert_close(grad, ref_grad, grad_tol)


@each_model("evaluate")
def test_evaluate_is_loss_and_accuracy_and_predict_the_argmax(name, row):
    kwargs, tol = row
    model, theta, x, y, _ = problem(name, kwargs)
    loss, accuracy = model.evaluate(theta, x, y)
    assert_close(loss, model.loss(theta, x, y), tol)
    np.testing.assert_array_equal(accuracy, model.accuracy(theta, x, y))
    predicted = model.predict(theta, x)
    np.testing.assert_array_equal(predicted, np.argmax(model.logits(theta, x), axis=-1))
    np.testing.assert_array_equal(accuracy, np.mean(predicted == y, axis=-1))


@each_model("extreme")
def test_extreme_logits_give_a_finite_loss_and_gradient(name, row):
    model, theta, x, y, expected = row()
    loss, grad = model.loss_and_grad(theta, x, y)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


@each_model("glorot")
def test_glorot_init_is_seeded_bounded_and_has_zero_biases(name, row):
    build, kwargs, dtype, least = row
    model = build()
    theta = model.init(np.random.default_rng(1), **kwargs)
    np.testing.assert_array_equal(theta, model.init(np.random.default_rng(1), **kwargs))
    assert theta.dtype == dtype and theta.shape == (model.size,)
    for W, b in SETTINGS[name]["layers"](model, theta):
        limit = np.sqrt(6 / (W.shape[0] + W.shape[1]))    # U(-a, a): mean 0, variance a^2 / 3
        assert np.abs(W).max() <= limit and np.abs(W).max() > least * limit
        # Within 5 standard errors: of the mean, a / sqrt(3 N); of the variance, sqrt(4 / 5 N) relative.
        assert abs(W.mean()) < 5 * limit / np.sqrt(3 * W.size)
        assert W.var() == pytest.approx(limit ** 2 / 3, rel=5 * np.sqrt(0.8 / W.size))
        if b is not None:
            np.testing.assert_array_equal(b, 0)
    stack = model.init(np.random.default_rng(1), "glorot", np.float64, batch=(2,))
    assert stack.shape == (2, model.size) and not np.array_equal(stack[0], stack[1])
    np.testing.assert_array_equal(model.init(kind="zeros"), 0)


@each_model("stacked", with_modes=True)
def test_stacked_calls_equal_one_model_at_a_time(name, row, mode, monkeypatch):
    """K models on K batches (a round's clients, with the problem's padding mask), one model over K shards
    (LAQ's call: theta (P,) against x (K, n, F)) and K models on one set (an evaluation): each entry is its
    model's call alone."""
    kwargs, stack, loss_tol, grad_tol, logits_tol = row
    SETTINGS[name]["modes"][mode](monkeypatch)
    model, theta, x, y, mask = problem(name, kwargs)
    stacked, one = {
        "models and data": ((theta, x, y, mask), lambda k: (theta[k], x[k], y[k], None if mask is None else mask[k])),
        "shared model": ((theta[0], x, y), lambda k: (theta[0], x[k], y[k])),
        "shared data": ((theta, x[0], y[0]), lambda k: (theta[k], x[0], y[0])),
    }[stack]
    loss, grad = model.loss_and_grad(*stacked)
    assert grad.shape == (len(y), model.size)
    for k in range(len(y)):
        one_loss, one_grad = model.loss_and_grad(*one(k))
        assert_close(loss[k], one_loss, loss_tol)
        assert_close(grad[k], one_grad, grad_tol)
        assert_close(model.logits(*stacked[:2])[k], model.logits(*one(k)[:2]), logits_tol)


@each_model("gathered", with_modes=True)
def test_gathered_rows_equal_the_gathered_copy(name, row, mode, monkeypatch):
    """``rows=`` gathers (block by block, where the model walks blocks) what ``x[rows]`` would copy out of one
    set of floats or 8-bit codes; weights (a padding mask) too; rows outside the set are refused."""
    draw, loss_tol, grad_tol = row
    SETTINGS[name]["modes"][mode](monkeypatch)
    model, theta, source, labels, rows, mask = draw()
    got = model.loss_and_grad(theta, source, labels[rows], mask, rows=rows)
    expected = model.loss_and_grad(theta, decoded(source)[rows], labels[rows], mask)
    assert_close(got[0], expected[0], loss_tol)
    assert_close(got[1], expected[1], grad_tol)
    with pytest.raises(ValueError, match="rows"):
        model.loss_and_grad(theta, decoded(source)[None], labels[rows], rows=rows)
    n = len(labels)
    for bad in (rows - n, rows + n):                      # no wrap-around of negative rows, no read past the set
        with pytest.raises(ValueError, match=rf"rows must lie in \[0, {n}\)"):
            model.loss_and_grad(theta, source, labels[rows], rows=bad)


@each_model("spec")
def test_spec_views_write_through_the_flat_vector_and_round_trip(name, row):
    build, names, shapes, offsets = row
    model = build()
    spec = model.spec
    assert spec.names == names and spec.shapes == shapes
    assert spec.offsets.tolist() == offsets and spec.size == model.size == offsets[-1]
    theta = np.arange(2 * model.size, dtype=np.float64).reshape(2, model.size)
    layers = SETTINGS[name]["layers"](model, theta)
    for tensor_name, tensor in zip(names, [tensor for layer in layers for tensor in layer], strict=True):
        assert np.shares_memory(tensor, theta)
        np.testing.assert_array_equal(tensor, theta[:, spec.slice(tensor_name)].reshape(tensor.shape))
        np.testing.assert_array_equal(spec.view(theta, tensor_name), tensor)
    for layer, (_, b) in enumerate(layers, start=1):
        b[...] = -layer
    for layer, bias in enumerate(names[1::2], start=1):
        assert np.all(theta[:, spec.slice(bias)] == -layer), bias
    zeros = spec.zeros(np.float64, batch=(4,))
    spec.view(zeros, names[-1])[...] = 7.0
    assert zeros[:, offsets[-2]:].tolist() == [[7.0] * (offsets[-1] - offsets[-2])] * 4
    parts = {tensor_name: np.arange(4 * np.prod(shape, dtype=int), dtype=np.float64).reshape((4,) + shape)
             for tensor_name, shape in zip(names, shapes)}
    flat = spec.flatten(parts)
    for tensor_name, part in parts.items():
        np.testing.assert_array_equal(spec.view(flat, tensor_name), part)
    with pytest.raises(ValueError, match=f"needs {model.size}"):
        spec.view(np.zeros(model.size - 1), names[0])
    with pytest.raises(ValueError, match="unique"):
        ParamSpec((names[0],) * 2, ((1,), (1,)))


@each_model("multiply_adds")
def test_multiply_adds_per_sample_are_the_products_one_sample_computes(name, row, monkeypatch):
    """The simulated clock's local work (fedsim.system) is the multiply-adds of the matrix products that
    ``loss_and_grad`` calls for one sample, counted here as they are called."""
    build, expected = row
    model, counted, matmul = build(), [], np.matmul

    def counting(a, b, *args, **kwargs):
        batch = np.broadcast_shapes(np.shape(a)[:-2], np.shape(b)[:-2])
        counted.append(int(np.prod(batch)) * np.shape(a)[-2] * np.shape(a)[-1] * np.shape(b)[-1])
        return matmul(a, b, *args, **kwargs)
    monkeypatch.setattr(np, "matmul", counting)
    x = np.random.default_rng(0).standard_normal((1, model.spec.shapes[0][0]))
    model.loss_and_grad(model.init(np.random.default_rng(1), "glorot", np.float64), x, np.array([1]))
    assert sum(counted) == model.multiply_adds_per_sample() == multiply_adds_per_sample(model) == expected
