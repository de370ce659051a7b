"""TernGrad (arXiv 1705.07878): settings, exact hand-computed cases, clipping, unbiasedness, the wire
message (round trip, bit counts, corrupt streams), batch == row by row, the kernels against their NumPy
twins and ``.py_func``, and the torch oracle (same uniforms: codes, scales and decoded values exact)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsim.compress import (
    ErrorFeedback,
    ErrorFeedbackState,
    Layout,
    TernGrad,
    TernGradMessage,
    decode,
    make_compressor,
)
from fedsim.compress import terngrad as terngrad_module
from fedsim.kernels import sparsify
from fedsim.kernels import terngrad as kernels
from fedsim.params import ParamSpec

SETTINGS = settings(max_examples=40, deadline=None)
SPEC = ParamSpec(("W", "b"), ((30, 4), (4,)))          # 124 entries: segments of 120 and 4
# Segment sizes 0, 1, 2, 3, 4, 5 and 12: every remainder of the base-3 groups, and an empty segment.
ODD_LAYOUT = Layout((0, 0, 1, 3, 6, 10, 15, 27))
LOG2_3 = math.log2(3.0)

CONFIGS = [TernGrad(), TernGrad(scope="global"), TernGrad(clip=2.5), TernGrad(clip=0.5, scope="global")]
IDS = [repr(c) for c in CONFIGS]


def assert_bitwise(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    assert a.tobytes() == b.tobytes(), f"{what} differs:\n{a}\n{b}"


def one(compressor, x, state, rng):
    """Compress one vector; check the message against the batch result; return (compressed, message)."""
    compressed, new_state = compressor.compress(x, state, rng)
    assert new_state == state
    message = compressed.message(0)
    assert_bitwise(message.to_dense(), compressed.decoded[0], "message.to_dense() vs decoded row")
    assert message.encoded_bits() == compressed.encoded_bits[0]
    assert message.analytic_bits() == compressed.analytic_bits[0]
    return compressed, message


def check_message(message, x):
    stream, n_bits = message.encode_with_bit_count()
    assert n_bits == message.encoded_bits()
    assert stream.dtype == np.uint8 and stream.size == (n_bits + 7) // 8
    np.testing.assert_array_equal(stream, message.encode())
    back = decode(stream, message.format)
    assert back == message, f"decode(encode(m)) != m:\n{back}\n{message}"
    dense = message.to_dense()
    assert dense.dtype == x.dtype and dense.shape == x.shape
    assert_bitwise(back.to_dense(), dense, "to_dense after round trip")
    return dense


def run_kernel(function, updates, offsets, uniforms, clip):
    rows, size = updates.shape
    decoded = np.full((rows, size), np.nan, updates.dtype)      # every entry must be written
    scales = np.full((rows, len(offsets) - 1), np.nan, updates.dtype)
    encoded = np.full(rows, -1, np.int64)
    bits = 32 if updates.dtype == np.float32 else 64
    function(updates, np.asarray(offsets, np.int64), uniforms, clip, bits, decoded, scales, encoded)
    return decoded, scales, encoded


def clipped_magnitudes(x, clip):
    """min(|x|, b) with b from a plain float64 std (np.std: another summation order; for the statistics)."""
    if clip == 0 or x.size == 0:
        return np.abs(x).astype(np.float64)
    bound = clip * float(np.std(x.astype(np.float64)))
    return np.minimum(np.abs(x).astype(np.float64), bound) if bound > 0 else np.abs(x).astype(np.float64)


# ----------------------------------------------------------------------------------------------------
# settings and class attributes
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "2.5", True, None])
def test_clip_is_validated(bad):
    with pytest.raises((TypeError, ValueError), match=r"clip must be a finite number >= 0"):
        TernGrad(clip=bad)


def test_settings_and_attributes():
    with pytest.raises(ValueError, match=r"scope must be one of 'tensor', 'global'"):
        TernGrad(scope="layer")
    assert TernGrad(clip=2).clip == 2.0 and isinstance(TernGrad(clip=2).clip, float)
    assert make_compressor("terngrad", clip=2.5) == TernGrad(clip=2.5)
    assert TernGrad.name == "terngrad" and TernGrad.aggregations == ("mean", "weighted")
    assert TernGrad.error_feedback is False and TernGrad.directions == ("up", "updown")
    assert TernGrad().settings == {"clip": 0.0, "scope": "tensor"}
    from fedsim.algorithms.federated import methods
    from fedsim.config import COMPRESSOR_TABLES
    from fedsim.constraints import descriptions
    assert methods()["terngrad_up"].up == "terngrad" and methods()["terngrad_updown"].down == "terngrad"
    assert not methods()["terngrad_up"].accumulate_up
    assert COMPRESSOR_TABLES["terngrad"] is TernGrad and "clip" in descriptions(TernGrad)


def test_needs_a_generator_and_finite_updates():
    compressor = TernGrad()
    state = compressor.init(SPEC)
    with pytest.raises(ValueError, match="rng"):
        compressor.compress(np.ones(SPEC.size, np.float32), state, None)
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((2, SPEC.size), np.float32)
        x[1, 121] = bad
        with pytest.raises(ValueError, match="update contains NaN or inf"):
            compressor.compress(x, state, np.random.default_rng(0))
        with pytest.raises(ValueError, match="update contains NaN or inf"):
            TernGrad(clip=2.5).compress(x, state, np.random.default_rng(0))


# ----------------------------------------------------------------------------------------------------
# exact cases
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hand_computed_ternarization(dtype):
    x = np.array([[0.5, -1.0, 0.25, 0.0, -0.0, -0.5]], dtype)
    # ratios |x| / s with s = 1: 0.5, 1, 0.25, 0, 0, 0.5; keep iff u < ratio (strictly)
    u = np.array([[0.49, 0.999999, 0.25, 0.0, 0.0, 0.75]])
    for function in (kernels.terngrad_batch, kernels.terngrad_batch.py_func, kernels.terngrad_batch_numpy):
        decoded, scales, encoded = run_kernel(function, x, [0, 6], u, 0.0)
        assert_bitwise(decoded, np.array([[1.0, -1.0, 0.0, 0.0, 0.0, 0.0]], dtype), function.__name__)
        assert scales[0, 0] == 1.0
        assert encoded[0] == (32 if dtype == np.float32 else 64) + 8 + 2    # one group of 5, a remainder of 1
    # decoded zeros are +0.0, also where x is negative
    decoded, _, _ = run_kernel(kernels.terngrad_batch, x, [0, 6], u, 0.0)
    assert not np.any(np.signbit(decoded[decoded == 0]))


def test_hand_computed_clipping():
    x = np.array([[1.0, -1.0, 1.0, -1.0, 10.0]])
    # mean 2; squared deviations 1, 9, 1, 9, 64 (sum 84, exact); sigma = sqrt(84 / 5)
    sigma = math.sqrt(84 / 5)
    assert kernels.clip_bound_numpy(x[0], 1.0) == sigma
    u = np.array([[0.0, 0.5, 0.9, 0.2, 0.999]])
    for function in (kernels.terngrad_batch, kernels.terngrad_batch_numpy):
        decoded, scales, _ = run_kernel(function, x, [0, 5], u, 1.0)
        assert scales[0, 0] == sigma                            # 10 clipped to c sigma = the scale
        ratio = 1.0 / sigma                                     # ~0.244: kept iff u < 0.244
        assert_bitwise(decoded, np.array([[sigma, 0.0, 0.0, -sigma, sigma]]), "clipped")
        assert u[0, 3] < ratio < u[0, 1]
        # c sigma above max |x|: no effect; c = 0: off
        for clip in (3.0, 0.0):
            _, scales, _ = run_kernel(function, x, [0, 5], u, clip)
            assert scales[0, 0] == 10.0
    # float32: the bound is c sigma rounded to float32
    x32 = x.astype(np.float32)
    _, scales, _ = run_kernel(kernels.terngrad_batch, x32, [0, 5], u, 1.0)
    assert scales[0, 0] == np.float32(sigma)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_and_single_entry_segments_are_not_clipped(dtype):
    # sigma = 0: clipping to [0, 0] would erase the segment; it is sent unclipped (scale = |x|, all kept)
    x = np.array([[3.0, 3.0, 3.0, -2.0]], dtype)
    decoded, scales, _ = run_kernel(kernels.terngrad_batch, x, [0, 3, 4], np.full((1, 4), 0.999), 2.5)
    assert_bitwise(decoded, x, "constant segment and single entry unchanged")
    assert_bitwise(scales, np.array([[3.0, 2.0]], dtype), "scales")
    twin, _, _ = run_kernel(kernels.terngrad_batch_numpy, x, [0, 3, 4], np.full((1, 4), 0.999), 2.5)
    assert_bitwise(twin, decoded, "twin")


def test_all_zero_and_empty_segments_send_the_scale_only():
    compressor = TernGrad()
    state = compressor.init(ODD_LAYOUT)
    x = np.zeros(ODD_LAYOUT.size, np.float32)
    compressed, message = one(compressor, x, state, np.random.default_rng(0))
    assert message.encoded_bits() == 32 * ODD_LAYOUT.n_segments
    assert np.all(message.scales == 0) and not np.any(message.codes)
    check_message(message, x)
    x[13] = -2.0                                  # one nonzero in the segment of 5 (entries 10..14)
    compressed, message = one(compressor, x, state, np.random.default_rng(0))
    assert message.scales[5] == 2.0 and message.codes[13] == -1 and np.count_nonzero(message.codes) == 1
    assert message.encoded_bits() == 32 * ODD_LAYOUT.n_segments + 8
    check_message(message, x)


def test_bit_counts():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(SPEC.size)
    compressed, message = one(TernGrad(), x, TernGrad().init(SPEC), rng)
    assert message.encoded_bits() == (64 + 8 * 24) + (64 + 7)        # float64 scales; 120 = 24 groups; 4 -> 7
    assert message.analytic_bits() == (LOG2_3 * 120 + 32) + (LOG2_3 * 4 + 32)
    compressed, message = one(TernGrad(scope="global"), x.astype(np.float32), TernGrad(scope="global").init(SPEC),
                              rng)
    assert message.encoded_bits() == 32 + 8 * 24 + 7 and message.analytic_bits() == LOG2_3 * 124 + 32
    for count in range(40):
        remainder = count % 5
        expected = 8 * (count // 5) + (3 ** remainder - 1).bit_length()     # ceil(log2 3^r) bits for r digits
        assert kernels.ternary_code_bits(count) == kernels.ternary_code_bits_numpy(count) == expected
    assert kernels.REMAINDER_BITS == (0, 2, 4, 5, 7)


def test_uniforms_consumed_row_by_row():
    """Each row consumes exactly P uniforms (rng.random), whatever its values, and compressing uses them."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, SPEC.size)).astype(np.float32)
    x[1] = 0.0
    compressor = TernGrad(clip=2.5)
    generator = np.random.default_rng(9)
    compressed, _ = compressor.compress(x, compressor.init(SPEC), generator)
    reference = np.random.default_rng(9)
    uniforms = reference.random((3, SPEC.size))
    assert generator.bit_generator.state == reference.bit_generator.state
    decoded, scales, encoded = run_kernel(kernels.terngrad_batch_numpy, x, SPEC.offsets, uniforms, 2.5)
    assert_bitwise(compressed.decoded, decoded, "decoded from the same uniforms")
    assert_bitwise(compressed.fields["scales"], scales, "scales")
    np.testing.assert_array_equal(compressed.encoded_bits, encoded)


# ----------------------------------------------------------------------------------------------------
# unbiasedness
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compressor", CONFIGS, ids=IDS)
def test_unbiased(compressor):
    """E[m_i] = sign(x_i) min(|x_i|, b) (= x_i without clipping), checked over T independent draws.

    Each m_i is s Bernoulli(r_i) with sign, so its variance is exactly s |h_i| - h_i^2. Per entry the
    sample mean must lie within 5 standard errors (a two-sided normal tail of 6e-7; 124 entries), and the
    sum of squared z-scores, about chi-square with d degrees of freedom, below d + 5 sqrt(2 d). Entries of
    zero variance (the largest magnitude, zeros) must be exact. The seed is fixed, so this is deterministic.
    """
    trials = 20_000
    rng = np.random.default_rng(12)
    x = rng.standard_normal(SPEC.size) * np.exp(rng.uniform(-2, 2, SPEC.size))
    x[[5, 50]] = 0.0
    x[121] = x[122]
    state = compressor.init(SPEC)
    compressed, _ = compressor.compress(np.tile(x, (trials, 1)), state, np.random.default_rng(13))
    mean = compressed.decoded.mean(axis=0)
    expected = np.empty_like(x)
    variance = np.empty_like(x)
    for j, (start, stop) in enumerate(state.segments()):
        magnitudes = clipped_magnitudes(x[start:stop], compressor.clip)
        scale = compressed.fields["scales"][0, j]
        assert np.isclose(scale, magnitudes.max(), rtol=1e-12)
        expected[start:stop] = np.sign(x[start:stop]) * magnitudes
        variance[start:stop] = scale * magnitudes - magnitudes ** 2
    random = variance > 1e-12 * variance.max()
    error = mean - expected
    np.testing.assert_allclose(mean[~random], expected[~random], rtol=1e-12, atol=0)
    z = error[random] / np.sqrt(variance[random] / trials)
    assert np.all(np.abs(z) < 5), (np.abs(z).max(), np.argmax(np.abs(z)))
    degrees = int(random.sum())
    assert np.sum(z ** 2) < degrees + 5 * math.sqrt(2 * degrees), (np.sum(z ** 2), degrees)
    if compressor.clip == 0:
        assert_bitwise(expected, x, "without clipping the expectation is x itself")


# ----------------------------------------------------------------------------------------------------
# messages
# ----------------------------------------------------------------------------------------------------

def updates_strategy(size, dtype):
    width = 32 if dtype == np.float32 else 64
    general = st.floats(-1e6, 1e6, width=width, allow_subnormal=True)
    ties = st.sampled_from([0.0, -0.0, 0.25, -0.25, 1.0])
    return arrays(dtype, size, elements=st.one_of(general, ties))


@pytest.mark.parametrize("compressor", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", [SPEC, ODD_LAYOUT], ids=["spec", "odd"])
def test_round_trip_hypothesis(compressor, dtype, layout):
    size = layout.size

    @SETTINGS
    @given(updates_strategy(size, dtype), st.integers(0, 2 ** 32 - 1))
    def run(x, seed):
        state = compressor.init(layout)
        compressed, message = one(compressor, x, state, np.random.default_rng(seed))
        dense = check_message(message, x)
        # decoded values are +-s_j or +0.0, with the sign of x where nonzero
        scales = np.repeat(message.scales, state.sizes)
        assert np.all((dense == 0) | (np.abs(dense) == scales))
        assert np.all(np.sign(dense[dense != 0]) == np.sign(x[dense != 0]))
        assert not np.any(np.signbit(dense[dense == 0]))
        # the largest clipped magnitude of each segment is always sent
        for j, (start, stop) in enumerate(state.segments()):
            if stop > start and message.scales[j] > 0:
                assert np.any(np.abs(dense[start:stop]) == message.scales[j])
        if compressor.clip == 0:
            for j, (start, stop) in enumerate(state.segments()):
                assert message.scales[j] == (np.abs(x[start:stop]).max() if stop > start else 0)

    run()


def test_message_validation_and_corrupt_streams():
    with pytest.raises(ValueError, match="ternary codes must be -1, 0 or \\+1"):
        TernGradMessage((0, 3), np.array([0, 2, 0]), np.array([1.0], np.float32))
    with pytest.raises(ValueError, match="one scale per segment"):
        TernGradMessage((0, 2, 3), np.array([0, 1, 0]), np.array([1.0], np.float32))
    with pytest.raises(ValueError, match="scale 0 but nonzero codes"):
        TernGradMessage((0, 2, 3), np.array([0, 1, 0]), np.array([0.0, 1.0], np.float32))
    with pytest.raises(ValueError, match="finite and >= 0"):
        TernGradMessage((0, 3), np.array([0, 1, 0]), np.array([-1.0], np.float32))
    with pytest.raises(ValueError, match="3 codes for a vector of 4"):
        TernGradMessage((0, 4), np.array([0, 1, 0]), np.array([1.0], np.float32))
    message = TernGradMessage((0, 5, 7), np.array([1, -1, 0, 0, 1, -1, -1]), np.array([0.5, 2.0], np.float32))
    assert message.codes.flags.writeable is False
    np.testing.assert_array_equal(message.to_dense(), [0.5, -0.5, 0, 0, 0.5, -2, -2])
    stream, n_bits = message.encode_with_bit_count()
    assert n_bits == 32 + 8 + 32 + 4
    # digits 1, 2, 0, 0, 1 -> 1 + 3 * 2 + 81 = 88 in the byte after the first scale
    assert stream[4] == 88
    corrupt = stream.copy()
    corrupt[4] = 250                                   # >= 243: no group of five digits has this value
    with pytest.raises(ValueError, match="corrupt stream"):
        decode(corrupt, message.format)
    with pytest.raises(ValueError, match="bit stream ends"):
        decode(stream[:9], message.format)
    assert decode(stream, message.format) == message


# ----------------------------------------------------------------------------------------------------
# batch == row by row
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compressor", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_residuals", [False, True])
def test_batch_equals_row_by_row(compressor, dtype, with_residuals):
    rng = np.random.default_rng(11)
    updates = rng.standard_normal((5, SPEC.size)).astype(dtype)
    updates[2] = 0.0
    updates[3, ::3] = updates[3, 1]                                # ties
    residuals = rng.standard_normal((5, SPEC.size)).astype(dtype) * dtype(0.1) if with_residuals else None
    state = compressor.init(SPEC)
    if with_residuals:
        result, feedback = ErrorFeedback(compressor).compress(updates, ErrorFeedbackState(state, residuals),
                                                              np.random.default_rng(3))
    else:
        result, _ = compressor.compress(updates, state, np.random.default_rng(3))
    row_rng = np.random.default_rng(3)
    for row in range(updates.shape[0]):
        if with_residuals:
            wrapper = ErrorFeedback(compressor)
            single, new_state = wrapper.compress(updates[row], ErrorFeedbackState(state, residuals[row]), row_rng)
            assert_bitwise(feedback.residual[row], new_state.residual, f"residual row {row}")
        else:
            single, _ = compressor.compress(updates[row], state, row_rng)
        message = single.message(0)
        assert_bitwise(result.decoded[row], message.to_dense(), f"decoded row {row}")
        assert result.message(row) == message
        assert result.encoded_bits[row] == message.encoded_bits() == single.encoded_bits[0]
        assert result.analytic_bits[row] == message.analytic_bits()
    assert result.encoded_bits.dtype == np.int64 and result.analytic_bits.dtype == np.float64


def test_chunked_uniforms_equal_one_call(monkeypatch):
    rng = np.random.default_rng(5)
    updates = rng.standard_normal((7, SPEC.size)).astype(np.float32)
    compressor = TernGrad(clip=2.5)
    whole, _ = compressor.compress(updates, compressor.init(SPEC), np.random.default_rng(1))
    monkeypatch.setattr(terngrad_module, "UNIFORM_BUFFER_BYTES", 8 * SPEC.size * 2)     # 2 rows per call
    chunked, _ = compressor.compress(updates, compressor.init(SPEC), np.random.default_rng(1))
    assert_bitwise(chunked.decoded, whole.decoded, "chunked")
    assert_bitwise(chunked.fields["scales"], whole.fields["scales"], "scales")


# ----------------------------------------------------------------------------------------------------
# kernels: jitted == py_func == NumPy twin, bitwise
# ----------------------------------------------------------------------------------------------------

def adversarial_batches():
    rng = np.random.default_rng(21)
    for dtype in (np.float32, np.float64):
        tiny = np.finfo(dtype).smallest_subnormal
        huge = np.finfo(dtype).max
        yield "empty", np.zeros((2, 0), dtype), [0, 0]
        yield "no rows", np.zeros((0, 7), dtype), [0, 3, 7]
        yield "single", np.array([[-3.0], [0.0]], dtype), [0, 1]
        yield "all zero", np.zeros((2, 11), dtype), [0, 4, 4, 11]
        yield "signed zeros", np.array([[0.0, -0.0, -0.0, 0.0, 1.0, -0.0]], dtype), [0, 4, 6]
        yield "ties", np.tile(np.array([0.5, -0.5], dtype), (3, 9)), [0, 5, 18]
        yield "subnormal", (rng.integers(-3, 4, (2, 13)) * tiny).astype(dtype), [0, 13]
        yield "huge", (rng.choice([-1.0, 1.0], (2, 10)) * huge * rng.uniform(0.5, 1, (2, 10))).astype(dtype), \
            [0, 6, 10]
        mixed = rng.standard_normal((3, 40)) * np.exp(rng.uniform(-30, 30, (3, 40)))
        yield "mixed scales", mixed.astype(dtype), [0, 1, 2, 17, 40]
        for size in (1, 2, 5, 9, 100, 4099, 100_003):
            yield f"random {size}", rng.standard_normal((2, size)).astype(dtype), [0, size // 3, size]


@pytest.mark.parametrize("clip", [0.0, 0.3, 2.5, 1e300])
def test_kernel_equals_twin(clip):
    rng = np.random.default_rng(22)
    for name, updates, offsets in adversarial_batches():
        uniforms = rng.random(updates.shape)
        if updates.size:
            uniforms.flat[::7] = 0.0                              # u = 0 keeps every nonzero entry
        results = [run_kernel(function, updates, offsets, uniforms, clip)
                   for function in (kernels.terngrad_batch, kernels.terngrad_batch_numpy)]
        if updates.size <= 5000:
            results.append(run_kernel(kernels.terngrad_batch.py_func, updates, offsets, uniforms, clip))
        for other in results[1:]:
            for key, a, b in zip(("decoded", "scales", "encoded bits"), results[0], other):
                assert_bitwise(a, b, f"{name} ({updates.dtype}, clip {clip}): {key}")


def test_kernel_at_the_keep_boundary():
    """keep iff u < r with r = float64(m) / float64(s): u exactly r is not kept, the float below is."""
    x = np.array([[0.3, 0.7, -1.0, 0.1]], np.float32)
    ratios = np.abs(x[0]).astype(np.float64) / np.float64(1.0)
    below = np.nextafter(ratios, -np.inf)
    for function in (kernels.terngrad_batch, kernels.terngrad_batch_numpy):
        at, _, _ = run_kernel(function, x, [0, 4], ratios[None, :].copy(), 0.0)
        under, _, _ = run_kernel(function, x, [0, 4], below[None, :], 0.0)
        assert_bitwise(at, np.array([[0, 0, 0, 0]], np.float32), "u == r")
        assert_bitwise(under, np.array([[1, 1, -1, 1]], np.float32), "u just below r")


@pytest.mark.parametrize("bad", [np.nan, -np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_rejects_non_finite(bad, dtype):
    x = np.ones((2, 9), dtype)
    x[1, 7] = bad
    for function in (kernels.terngrad_batch, kernels.terngrad_batch.py_func, kernels.terngrad_batch_numpy):
        for clip in (0.0, 2.5):
            with pytest.raises(ValueError, match=sparsify.NONFINITE_MESSAGE):
                run_kernel(function, x, [0, 4, 9], np.zeros((2, 9)), clip)


def test_ternary_code_kernels_equal_twins():
    rng = np.random.default_rng(23)
    for count in list(range(0, 23)) + [1000, 4097]:
        for codes in (rng.integers(-1, 2, count).astype(np.int8), np.full(count, -1, np.int8),
                      np.zeros(count, np.int8)):
            packed = [kernels.pack_ternary(codes), kernels.pack_ternary.py_func(codes),
                      kernels.pack_ternary_numpy(codes)]
            for stream, n_bits in packed:
                assert n_bits == kernels.ternary_code_bits(count)
                assert_bitwise(stream, packed[0][0], f"pack {count}")
            stream = packed[0][0]
            for unpack in (kernels.unpack_ternary, kernels.unpack_ternary.py_func, kernels.unpack_ternary_numpy):
                assert_bitwise(unpack(stream, count), codes, f"unpack {count}")
    # at a bit offset inside a byte
    codes = rng.integers(-1, 2, 13).astype(np.int8)
    stream = np.zeros(8, np.uint8)
    end = kernels.pack_ternary_into(codes, stream, 3)
    assert end == 3 + kernels.ternary_code_bits(13)
    out = np.empty(13, np.int8)
    assert kernels.unpack_ternary_from(stream, 3, 13, out) == end
    assert_bitwise(out, codes, "offset round trip")
    for pack in (kernels.pack_ternary, kernels.pack_ternary_numpy):
        with pytest.raises(ValueError, match="ternary codes must be"):
            pack(np.array([0, 2], np.int8))
    for unpack in (kernels.unpack_ternary, kernels.unpack_ternary_numpy):
        with pytest.raises(ValueError, match="corrupt stream"):
            unpack(np.array([243], np.uint8), 5)
        with pytest.raises(ValueError, match="corrupt stream"):
            unpack(np.array([0b11000000], np.uint8), 2)            # remainder of 2 digits: value 12 >= 9
        with pytest.raises(ValueError, match="bit stream ends"):
            unpack(np.array([0], np.uint8), 6)


# ----------------------------------------------------------------------------------------------------
# torch oracle
# ----------------------------------------------------------------------------------------------------

ORACLE_SPEC = ParamSpec(("W", "b"), ((1024, 10), (10,)))      # the STC pipeline's softmax regression


@pytest.mark.oracle
@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("clip", [0.0, 2.5, 0.5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch(torch, scope, clip, dtype):
    """The torch reference fed the same uniforms gives the same codes, scales and decoded values, exactly.

    Exact equality is the right tolerance: the decoded values are +-s or 0 with s a maximum of clipped
    magnitudes (exact in any order), the keep test compares the same uniforms with the same correctly
    rounded float64 division, and sigma comes from float64 sums in index order on both sides (torch's CPU
    cumsum is a sequential scan). The clipping bound is also checked against ``torch.std`` (its own
    summation order) within 1e-12 relative, independently of that shared definition.
    """
    from benchmarks import torch_reference as reference

    rng = np.random.default_rng(31)
    updates = (rng.standard_normal((4, ORACLE_SPEC.size)) * 0.01).astype(dtype)
    updates[:, :200] *= 30                                            # heavy entries that clipping cuts
    updates[1, 5000:6000] = 0.0
    updates[3] = 0.0
    compressor = TernGrad(clip=clip, scope=scope)
    state = compressor.init(ORACLE_SPEC)
    compressed, _ = compressor.compress(updates, state, np.random.default_rng(32))
    uniforms = np.random.default_rng(32).random(updates.shape)
    decoded, scales = reference.terngrad(torch.from_numpy(updates), state.segment_offsets,
                                         torch.from_numpy(uniforms), clip)
    assert_bitwise(compressed.decoded, decoded.numpy(), "decoded vs torch")
    assert_bitwise(compressed.fields["scales"], scales.numpy(), "scales vs torch")
    for row in range(updates.shape[0]):
        codes = torch.sign(decoded[row]).to(torch.int8).numpy()
        assert_bitwise(compressed.message(row).codes, codes, f"codes row {row}")
    # clipping, independently: s = min(max |x|, c sigma) with sigma = torch.std (population)
    tensor = torch.from_numpy(updates).double()
    clipped = 0
    for j, (start, stop) in enumerate(state.segments()):
        largest = tensor[:, start:stop].abs().amax(dim=1)
        if clip > 0:
            sigma = tensor[:, start:stop].std(dim=1, unbiased=False)
            bound = torch.where(sigma > 0, clip * sigma, torch.full_like(sigma, math.inf))
            expected = torch.minimum(largest, bound)
            clipped += int((bound < largest).sum())
        else:
            expected = largest
        np.testing.assert_allclose(compressed.fields["scales"][:, j].astype(np.float64), expected.numpy(),
                                   rtol=1e-12 if dtype == np.float64 else 2 ** -23, atol=0)
    if clip == 0.5:
        assert clipped > 0                                            # the case exercised clipping
