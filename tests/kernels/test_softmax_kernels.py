"""The softmax gradient's elementwise kernels (fedsim.kernels.softmax) against their NumPy twins: bitwise,
on random blocks of every layout the model hands them (models with their own or a shared bias, labels and
weights; views with strides), float32 and float64, with NaN and infinite logits."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.kernels import softmax as kernels
from tests.conftest import DTYPES
from tests.kernels.conftest import agree, called, implementations


def block(rng, dtype, G, R, C, extreme=False):
    z = (rng.standard_normal((G, R, C)) * 8).astype(dtype)
    if extreme and z.size:
        for value in (np.nan, np.inf, -np.inf, 1e30):
            z.flat[int(rng.integers(0, z.size))] = value
    return z


def identical(a, b):
    """Bitwise equal (signed zeros told apart); NaN where the other has NaN (its sign bit and payload depend
    on which instruction made it)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan = np.isnan(a)
    return np.array_equal(nan, np.isnan(b)) and a[~nan].tobytes() == b[~nan].tobytes()


def assert_identical(a, b, what):
    assert identical(a, b), what


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("G, R, C", [(1, 1, 2), (1, 127, 10), (3, 40, 10), (2, 17, 33), (4, 0, 5), (2, 9, 1)])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("extreme", [False, True])
def test_shift_logits_matches_its_twin_bitwise(dtype, G, R, C, shared, extreme):
    rng = np.random.default_rng(G * 1000 + R * 10 + C)
    z = block(rng, dtype, G, R, C, extreme)
    bias = rng.standard_normal((1 if shared else G, C)).astype(dtype)
    labels = rng.integers(0, C, (1 if shared else G, R))
    for scale in (1.0, 1 / 255):
        shifted, *_ = agree(implementations(kernels.shift_logits, kernels.shift_logits_numpy),
                            called(z, bias, scale, labels, np.full((G, R), -7, dtype)), same=assert_identical)
    if R and not extreme:                    # the maximum is subtracted: every row's largest entry is 0
        assert np.all(shifted.max(axis=-1) == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("G, R, C", [(1, 1, 2), (1, 127, 10), (3, 40, 10), (2, 17, 33), (4, 0, 5)])
@pytest.mark.parametrize("weighting", ["none", "shared", "own"])
@pytest.mark.parametrize("extreme", [False, True])
def test_softmax_residual_matches_its_twin_bitwise(dtype, G, R, C, weighting, extreme):
    rng = np.random.default_rng(G * 1000 + R * 10 + C + 7)
    labels = rng.integers(0, C, (G, R))
    z = block(rng, dtype, G, R, C, extreme)
    z_y = np.empty((G, R), dtype)
    kernels.shift_logits_numpy(z, np.zeros((1, C), dtype), 1.0, labels, z_y)
    with np.errstate(invalid="ignore", over="ignore"):
        np.exp(z, out=z)
        total = np.add.reduce(z, axis=-1)
        log_total = np.log(total)
    mask = (rng.random((1 if weighting == "shared" else G, R)) < 0.8).astype(dtype)
    share = np.empty((0, 0), dtype) if weighting == "none" else mask / np.maximum(mask.sum(axis=-1, keepdims=True), 1)
    grad_b0 = rng.standard_normal((G, C)).astype(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        delta, *_, nll, grad_b = agree(
            implementations(kernels.softmax_residual, kernels.softmax_residual_numpy),
            called(z, total, log_total, z_y, labels, share, max(R, 1), np.full((G, R), -7, dtype), grad_b0),
            same=assert_identical)
    if R and not extreme:                    # rows of p - Y sum to 0; the bias gradient is their sum
        np.testing.assert_allclose(delta.sum(axis=-1), 0, atol=1e-5)
        np.testing.assert_allclose(grad_b - grad_b0, delta.sum(axis=-2), rtol=1e-5, atol=1e-6)
        assert np.all(nll >= 0)


def test_views_with_strides_are_accepted():
    """The model hands the kernels slices of its per-model arrays: nll[k0:k1, s0:s1] and label blocks."""
    rng = np.random.default_rng(3)
    G, R, C = 2, 30, 10
    labels_all = rng.integers(0, C, (G, 3 * R))
    labels = labels_all[:, R:2 * R]
    z = block(rng, np.float64, G, R, C)
    reference = []
    for lab in (labels, np.ascontiguousarray(labels)):
        z_in, z_y = z.copy(), np.empty((G, R))
        kernels.shift_logits(z_in, np.zeros((G, C)), 1.0, lab, z_y)
        np.exp(z_in, out=z_in)
        total = np.add.reduce(z_in, axis=-1)
        nll_all, grad_b = np.zeros((G, 3 * R)), np.zeros((G, C))
        kernels.softmax_residual(z_in, total, np.log(total), z_y, lab, np.empty((0, 0)), 90.0,
                                 nll_all[:, R:2 * R], grad_b)
        reference.append((z_in, nll_all, grad_b))
    assert all(identical(a, b) for a, b in zip(*reference))
    assert not reference[0][1][:, :R].any() and not reference[0][1][:, 2 * R:].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_rows_copies_the_indexed_rows(dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 7)).astype(dtype)
    index_all = rng.integers(0, 40, (3, 30))
    index = index_all[:, 5:20]                          # a view with strides, as the model hands it
    for function in (kernels.gather_rows, kernels.gather_rows.py_func, kernels.gather_rows_numpy):
        out = np.full((3, 15, 7), np.nan, dtype)
        function(x, index, out)
        assert identical(out, x[index])
    with pytest.raises(ValueError, match="index"):
        kernels.gather_rows(x, index + 40, np.empty((3, 15, 7), dtype))


@pytest.mark.parametrize("call, match", [
    (lambda z, b, y, o: kernels.shift_logits(z, b, 1.0, y + 10, o), "labels"),
    (lambda z, b, y, o: kernels.shift_logits(z, b, 1.0, y.astype(np.int32), o), "labels"),
    (lambda z, b, y, o: kernels.shift_logits(z, b[:, :-1], 1.0, y, o), "bias"),
    (lambda z, b, y, o: kernels.shift_logits(z, b.astype(np.float32), 1.0, y, o), "bias"),
    (lambda z, b, y, o: kernels.shift_logits(z, b, float("nan"), y, o), "scale"),
    (lambda z, b, y, o: kernels.shift_logits(z[0], b, 1.0, y, o), "z"),
    (lambda z, b, y, o: kernels.shift_logits(z[..., :0], b[:, :0], 1.0, y, o), "class"),
    (lambda z, b, y, o: kernels.shift_logits(z, b, 1.0, y, o[:, :-1]), "z_y"),
    (lambda z, b, y, o: kernels.softmax_residual(z, o, o, o, y, np.empty((0, 0)), 0.0, o, b), "divisor"),
    (lambda z, b, y, o: kernels.softmax_residual(z, o, o, o, y, np.ones((2, 5)), 1.0, o, b), "share"),
    (lambda z, b, y, o: kernels.softmax_residual(z, o, o, o, y, np.empty((0, 0)), 1.0, o, b[:, :-1]), "grad_b"),
])
def test_bad_arguments_raise_naming_the_argument(call, match):
    G, R, C = 2, 6, 4
    z, b = np.zeros((G, R, C)), np.zeros((G, C))
    y, o = np.zeros((G, R), np.int64), np.zeros((G, R))
    with pytest.raises((ValueError, TypeError), match=match):
        call(z, b, y, o)
