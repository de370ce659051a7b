"""The LAQ innovation quantizer: jitted kernel vs NumPy twin vs ``.py_func``, hand cases and invariants."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsim.kernels.laq import (check_bits, code_dtype, _laq_dequantize, laq_quantize, laq_quantize_numpy,
                                quantize_innovation)
from tests.kernels.conftest import agree, implementations, run_laq

QUANTIZERS = implementations(laq_quantize, laq_quantize_numpy)
OUTPUTS = "codes, quantized, radius, error, innovation"


def _random_problem(seed, n_workers=5, size=300, dtype=np.float64):
    rng = np.random.default_rng(seed)
    gradients = rng.normal(size=(n_workers, size)).astype(dtype)
    previous = (gradients + rng.normal(scale=0.3, size=gradients.shape)).astype(dtype)
    return gradients, previous


# --- validation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [0, 17, -1, 2.5, "4", True, None])
def test_bad_bits_raise_naming_bits(bits):
    with pytest.raises(ValueError, match=r"bits must be an integer in \[1, 16\]"):
        check_bits(bits)
    gradients, previous = _random_problem(0, 2, 4)
    with pytest.raises(ValueError, match="bits"):
        quantize_innovation(gradients, previous, bits)


def test_code_dtype():
    assert [code_dtype(b) for b in (1, 8, 9, 16)] == [np.uint8, np.uint8, np.uint16, np.uint16]


def test_shape_and_dtype_mismatch_raise():
    gradients, previous = _random_problem(0, 2, 4)
    for bad_gradients, bad_previous, match in ((gradients, previous[:, :3], "shape"),
                                               (gradients[0], previous[0], "shape"),
                                               (gradients, previous.astype(np.float32), "dtype")):
        with pytest.raises(ValueError, match=match):
            quantize_innovation(bad_gradients, bad_previous, 4)


# --- exact hand-computed case ----------------------------------------------------------------------------

HAND_CASES = [
    # b = 2: R = 1, tau = 1/3, grid {-1, -1/3, 1/3, 1} around Q_prev = 0; q = floor((g + 1) / (2/3) + 1/2):
    # 3.5 -> 3, 0.5 -> 0, 2.75 -> 2, 2.0 -> 2; e = (1/3 - 1/2)^2 + (1/3)^2, ||Q||^2 = 1 + 1 + 2/9
    (2, [1.0, -1.0, 0.5, 0.0], [3, 0, 2, 2], [1.0, -1.0, 1 / 3, 1 / 3], (1 / 3 - 0.5) ** 2 + (1 / 3) ** 2, 2 + 2 / 9),
    # b = 1: tau = 1, grid {-R, +R}, R = 0.5
    (1, [0.2, -0.5, 0.3], [1, 0, 1], [0.5, -0.5, 0.5], 0.3 ** 2 + 0.2 ** 2, 0.75)]


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("bits, gradient, codes, quantized, error, innovation", HAND_CASES)
def test_hand_computed(jit, bits, gradient, codes, quantized, error, innovation):
    gradients = np.array([gradient])
    out = quantize_innovation(gradients, np.zeros_like(gradients), bits, jit=jit)
    np.testing.assert_array_equal(out.codes, [codes])
    np.testing.assert_allclose(out.quantized, [quantized], rtol=1e-15)
    assert out.radius[0] == np.abs(gradients).max()
    np.testing.assert_allclose(out.error, [error], rtol=1e-14)
    np.testing.assert_allclose(out.innovation, [innovation], rtol=1e-14)


# --- jitted vs twin vs py_func ---------------------------------------------------------------------------

def test_nonfinite_worker_is_all_nan_and_others_unaffected():
    gradients, previous = _random_problem(3)
    gradients[1, 7] = np.nan
    gradients[2, 0] = np.inf
    previous[3, 5] = -np.inf
    clean = run_laq(laq_quantize, gradients[[0, 4]], previous[[0, 4]], 4)
    for kernel in (laq_quantize, laq_quantize_numpy, laq_quantize.py_func):
        codes, quantized, radius, error, innovation = run_laq(kernel, gradients, previous, 4)
        for m in (1, 2, 3):
            assert np.isnan(radius[m]) and np.isnan(error[m]) and np.isnan(innovation[m])
            assert np.all(codes[m] == 0) and np.all(np.isnan(quantized[m]))
        np.testing.assert_array_equal(codes[[0, 4]], clean[0])
        np.testing.assert_array_equal(quantized[[0, 4]], clean[1])


@pytest.mark.parametrize("jit", [True, False])
def test_zero_radius_keeps_previous(jit):
    previous = np.array([[0.5, -2.0, 3.0], [1.0, 1.0, 1.0]])
    out = quantize_innovation(previous.copy(), previous, 5, jit=jit)
    np.testing.assert_array_equal(out.quantized, previous)
    np.testing.assert_array_equal(out.codes, np.full((2, 3), 16))
    np.testing.assert_array_equal(out.radius, [0, 0])
    np.testing.assert_array_equal(out.error, [0, 0])
    np.testing.assert_array_equal(out.innovation, [0, 0])
    np.testing.assert_array_equal(_laq_dequantize(out.codes, previous, out.radius, 5), previous)


@pytest.mark.parametrize("jit", [True, False])
def test_empty_inputs(jit):
    out = quantize_innovation(np.zeros((3, 0)), np.zeros((3, 0)), 4, jit=jit)
    assert out.codes.shape == (3, 0)
    np.testing.assert_array_equal(out.radius, [0, 0, 0])
    out = quantize_innovation(np.zeros((0, 5)), np.zeros((0, 5)), 4, jit=jit)
    assert out.quantized.shape == (0, 5) and out.radius.shape == (0,)


# --- invariants ------------------------------------------------------------------------------------------

def _check_invariants(gradients, previous, bits, out):
    levels = 2 ** bits - 1
    tau = 1.0 / levels
    assert out.codes.dtype == code_dtype(bits)
    assert out.codes.min(initial=0) >= 0 and out.codes.max(initial=0) <= levels
    radius = np.max(np.abs(gradients - previous), axis=1, initial=0.0)
    np.testing.assert_array_equal(out.radius, radius)
    # |Q_i - g_i| <= tau R for every entry (rounding to the nearest of the 2^b grid points)
    # up to rounding: the position (g_i - Q_prev_i) s (or (g_i - Q_prev_i) / R) carries a relative error of
    # a few eps, i.e. a few eps R, and Q_i is rounded to a float (one spacing of the larger of |Q_i|, |g_i|).
    gap = np.abs(out.quantized - gradients)
    eps = np.finfo(np.float64).eps
    bound = (tau + 8 * eps) * radius[:, None] + np.spacing(np.maximum(np.abs(out.quantized),
                                                                      np.abs(gradients)))
    assert np.all(gap <= bound), (gap.max(), bound.max())
    np.testing.assert_allclose(out.error, np.sum((out.quantized - gradients) ** 2, axis=1), rtol=1e-12)
    np.testing.assert_allclose(out.innovation, np.sum((out.quantized - previous) ** 2, axis=1), rtol=1e-12)
    # The server reconstructs exactly what the worker holds, from the codes and R alone.
    np.testing.assert_array_equal(_laq_dequantize(out.codes, previous, out.radius, bits), out.quantized)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_invariants_on_random_inputs(bits):
    gradients, previous = _random_problem(10 + bits, n_workers=7, size=2000)
    for row, scale in ((2, 1e-200), (3, 1e150)):          # tiny and huge scales
        gradients[row] *= scale
        previous[row] *= scale
    _check_invariants(gradients, previous, bits, quantize_innovation(gradients, previous, bits))


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), bits=st.integers(1, 16))
def test_property_twin_and_invariants(data, bits):
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=12))
    gradients = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    # Ties and repeated values: previous often equal to or a shifted copy of the gradient.
    mode = data.draw(st.sampled_from(["random", "equal", "shifted"]))
    if mode == "random":
        previous = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    elif mode == "equal":
        previous = gradients.copy()
    else:
        previous = gradients + 1.0
    jitted = agree((True, False), lambda jit: quantize_innovation(gradients, previous, bits, jit=jit), OUTPUTS)
    _check_invariants(gradients, previous, bits, jitted)


@pytest.mark.parametrize("bits", [1, 4, 16])
def test_extreme_radii_use_the_division_form(bits):
    """R near the ends of the float64 range (a subnormal R, R near the largest float): the grid step or
    the scale would not be a normal number, so those workers take the division form; the kernel, its
    twin and ``.py_func`` agree bitwise, the invariants hold and the server reconstructs Q exactly."""
    from fedsim.kernels.laq import grid_constants
    rng = np.random.default_rng(bits)
    half_levels = 0.5 * (2 ** bits - 1)
    gradients = rng.uniform(-1, 1, size=(4, 500))
    previous = gradients * rng.uniform(0.2, 0.8, size=gradients.shape)
    # subnormal innovations (R ~ 1e-310); R ~ 8e307 (h / R is subnormal for b = 1); ordinary scales (the
    # multiplication form)
    for row, scale in ((0, 1e-310), (1, 1e308), (2, 1e-300)):
        gradients[row] *= scale
        previous[row] *= scale
    radius = agree(QUANTIZERS, lambda kernel: run_laq(kernel, gradients, previous, bits), OUTPUTS)[2]
    with np.errstate(over="ignore", divide="ignore"):
        forms = [grid_constants(r, half_levels)[1] > 0 for r in radius]
    assert forms == [False, half_levels / radius[1] >= np.finfo(np.float64).tiny, True, True]
    with np.errstate(over="ignore"):          # worker 1's squared errors (~R^2) overflow to inf, as they should
        _check_invariants(gradients, previous, bits, quantize_innovation(gradients, previous, bits))


def test_codes_match_the_published_formula_on_ordinary_inputs():
    """The multiplication form gives the published codes floor((g - Q_prev + R) / (2 tau R) + 1/2) except
    where the two roundings straddle an integer; on random inputs that is (almost) never."""
    gradients, previous = _random_problem(3, n_workers=4, size=5000)
    bits = 4
    out = quantize_innovation(gradients, previous, bits)
    tau = 1.0 / (2 ** bits - 1)
    radius = out.radius[:, None]
    published = np.floor((gradients - previous + radius) / (2 * tau * radius) + 0.5)
    assert np.mean(out.codes != published) < 1e-3
    np.testing.assert_allclose(out.quantized, previous + 2 * tau * radius * out.codes - radius, rtol=0,
                               atol=1e-15 * float(radius.max()))
