"""Compressor objects: validation, messages (exact encode/decode round trip, bit counts), batched
compression equal to row-by-row compression, and the error-feedback invariant."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsim.compress import (
    STC,
    ErrorFeedback,
    ErrorFeedbackState,
    Identity,
    Layout,
    Sign,
    SparseMessage,
    TernaryMessage,
    TopK,
    ceil_product,
    decode,
    expected_position_bits,
    make_compressor,
)
from fedsim.kernels import sparsify
from fedsim.params import ParamSpec

SETTINGS = settings(max_examples=40, deadline=None)
SPEC = ParamSpec(("W", "b"), ((30, 4), (4,)))          # 124 entries: two segments

CONFIGS = [
    Identity(),
    TopK(0.1), TopK(0.05, scope="global"), TopK(1.0),
    STC(0.1), STC(0.02, scope="global"), STC(1.0),
    STC(0.1, threshold="sampled"), STC(0.01, threshold="sampled", sample_mode="window"),
    STC(0.3, threshold="sampled", sample_fraction=0.5, scope="global"),
    Sign(), Sign(scale="mean"), Sign(scope="global"),
]
IDS = [repr(c) for c in CONFIGS]


def updates_strategy(size, dtype):
    width = 32 if dtype == np.float32 else 64
    general = st.floats(-1e6, 1e6, width=width, allow_subnormal=True)
    ties = st.sampled_from([0.0, -0.0, 0.25, -0.25, 1.0])
    return arrays(dtype, size, elements=st.one_of(general, ties))


def random_updates(rng, rows, size, dtype=np.float32):
    x = rng.standard_normal((rows, size)).astype(dtype)
    x[:, ::7] = 0.0                        # zeros (sign codes them, sparsifiers skip them)
    x[:, 3::11] = x[:, 3:4]                # ties
    return x


def one(compressor, x, state, rng=None):
    """Compress one vector (a batch of one): (its wire message, the new state)."""
    compressed, new_state = compressor.compress(x, state, rng)
    message = compressed.message(0)
    assert_bitwise(message.to_dense(), compressed.decoded[0], "message.to_dense() vs decoded row")
    assert message.encoded_bits() == compressed.encoded_bits[0]
    assert message.analytic_bits() == compressed.analytic_bits[0]
    return message, new_state


def decoded_of(message):
    return message.to_dense()


def bits_of(message):
    return message.encoded_bits()


def analytic_of(message):
    return message.analytic_bits()


def assert_bitwise(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    assert a.tobytes() == b.tobytes(), f"{what} differs:\n{a}\n{b}"


# ----------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), float("inf"), "0.1", True])
def test_p_outside_range_is_rejected(bad):
    for make in (TopK, STC):
        with pytest.raises((TypeError, ValueError), match=r"p must be a finite number in \(0, 1\]"):
            make(bad)


def test_other_settings_are_validated():
    with pytest.raises(ValueError, match=r"sample_fraction must be a finite number in \(0, 1\]"):
        STC(0.1, threshold="sampled", sample_fraction=0)
    with pytest.raises(ValueError, match=r"threshold must be one of 'exact', 'sampled'"):
        STC(0.1, threshold="approx")
    with pytest.raises(ValueError, match=r"sample_mode must be one of 'uniform', 'window'"):
        STC(0.1, sample_mode="random")
    with pytest.raises(ValueError, match=r"scope must be one of 'tensor', 'global'"):
        TopK(0.1, scope="layer")
    with pytest.raises(ValueError, match=r"scale must be one of 'none', 'mean'"):
        Sign(scale="max")
    with pytest.raises(ValueError, match="compressor must be one of"):
        make_compressor("no-such-compressor")
    assert make_compressor("stc", p=0.01) == STC(0.01)
    assert make_compressor("identity") == Identity()


def test_bad_updates_are_rejected():
    compressor = STC(0.1)
    state = compressor.init(SPEC)
    with pytest.raises(ValueError, match="float32 or float64"):
        one(compressor, np.zeros(SPEC.size, np.int32), state)
    with pytest.raises(ValueError, match="shape"):
        one(compressor, np.zeros(SPEC.size + 1, np.float32), state)
    with pytest.raises(ValueError, match="needs a numpy.random.Generator"):
        STC(0.1, threshold="sampled").compress(np.ones(SPEC.size, np.float32), state, None)


@pytest.mark.parametrize("compressor", CONFIGS, ids=IDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_update_is_rejected(compressor, bad):
    state = compressor.init(SPEC)
    x = np.ones(SPEC.size, np.float32)
    x[SPEC.size - 2] = bad
    with pytest.raises(ValueError, match="update contains NaN or inf"):
        one(compressor, x, state, np.random.default_rng(0))
    with pytest.raises(ValueError, match="update contains NaN or inf"):
        compressor.compress(np.stack([np.ones_like(x), x]), state, np.random.default_rng(0))
    with pytest.raises(ValueError, match="update contains NaN or inf"):
        ErrorFeedback(compressor).compress(x, ErrorFeedback(compressor).init(SPEC), np.random.default_rng(0))


def test_ceil_product_forgives_float_rounding():
    assert 0.07 * 100 > 7 and ceil_product(0.07, 100) == 7 and ceil_product(0.1, 30) == 3
    assert ceil_product(0.001, 10250) == 11 and ceil_product(0.01, 10) == 1 and ceil_product(1.0, 7) == 7
    assert ceil_product(0.5, 0) == 0


def test_layouts():
    assert TopK(0.1).init(SPEC) == Layout((0, 120, 124))
    assert TopK(0.1, scope="global").init(SPEC) == Layout((0, 124))
    assert TopK(0.1).init(50) == Layout((0, 50))
    with pytest.raises(ValueError, match="ParamSpec, a Layout or an int"):
        TopK(0.1).init("W")


# ----------------------------------------------------------------------------------------------------
# messages: content, round trip, bits
# ----------------------------------------------------------------------------------------------------

def check_message(compressor, message, x):
    stream, n_bits = message.encode_with_bit_count()
    assert n_bits == bits_of(message), (n_bits, bits_of(message))
    assert stream.dtype == np.uint8 and stream.size == (n_bits + 7) // 8
    np.testing.assert_array_equal(stream, message.encode())
    back = decode(stream, message.format)
    assert back == message, f"decode(encode(m)) != m:\n{back}\n{message}"
    dense = decoded_of(message)
    assert dense.dtype == x.dtype and dense.shape == x.shape
    assert_bitwise(decoded_of(back), dense, "decompress after round trip")
    return dense


@pytest.mark.parametrize("compressor", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_hypothesis(compressor, dtype):
    @SETTINGS
    @given(updates_strategy(SPEC.size, dtype), st.integers(0, 2 ** 32 - 1))
    def run(x, seed):
        state = compressor.init(SPEC)
        message, new_state = one(compressor, x, state, np.random.default_rng(seed))
        assert new_state == state
        check_message(compressor, message, x)

    run()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stc_message_content(dtype):
    rng = np.random.default_rng(0)
    x = random_updates(rng, 1, SPEC.size, dtype)[0]
    compressor = STC(0.1)
    message, _ = one(compressor, x, compressor.init(SPEC))
    dense = check_message(compressor, message, x)
    for j, (start, stop) in enumerate([(0, 120), (120, 124)]):
        k = ceil_product(0.1, stop - start)
        positions = np.empty(k, np.int64)
        signs = np.empty(k, np.int8)
        count, mu = sparsify.ternarize_numpy(x[start:stop], k, positions, signs)
        expected = np.zeros(stop - start, dtype)
        expected[positions[:count]] = signs[:count] * dtype(mu)
        assert_bitwise(dense[start:stop], expected, f"segment {j}")
        assert message.mu[j] == mu
    np.testing.assert_array_equal(message.counts, [12, 1])
    sizes = np.array([120, 4])
    analytic = sum(c * (expected_position_bits(c / n) + 1) + 32 for c, n in zip([12, 1], sizes))
    assert analytic_of(message) == pytest.approx(float(analytic), rel=1e-14)


def test_stc_all_zero_and_sparse_updates():
    compressor = STC(0.5)
    state = compressor.init(SPEC)
    message, _ = one(compressor, np.zeros(SPEC.size, np.float32), state)
    assert message.positions.size == 0
    assert bits_of(message) == 64                   # two 32-bit zero counts
    assert analytic_of(message) == 0.0
    check_message(compressor, message, np.zeros(SPEC.size, np.float32))
    x = np.zeros(SPEC.size, np.float32)
    x[[5, 121]] = [2.0, -3.0]
    message, _ = one(compressor, x, state)               # budget 60 and 2, only 2 nonzeros
    np.testing.assert_array_equal(message.positions, [5, 121])
    assert_bitwise(decoded_of(message), x, "no densification")


def test_top_k_keeps_exact_values_and_sign_codes_zeros():
    rng = np.random.default_rng(1)
    x = random_updates(rng, 1, SPEC.size)[0]
    compressor = TopK(0.25)
    message, _ = one(compressor, x, compressor.init(SPEC))
    dense = check_message(compressor, message, x)
    assert_bitwise(dense[message.positions], x[message.positions], "kept values")
    assert np.count_nonzero(dense) == ceil_product(0.25, 120) + ceil_product(0.25, 4)

    x = np.array([0.0, -0.0, 1.5, -2.0, 0.0, 3.0], np.float32)
    for compressor in (Sign(), Sign(scale="mean")):
        message, _ = one(compressor, x, compressor.init(6))
        dense = check_message(compressor, message, x)
        np.testing.assert_array_equal(message.signs, [0, 0, 1, -1, 0, 1])
        scale = np.float32(6.5 / 6) if compressor.scale == "mean" else np.float32(1)
        assert_bitwise(dense, np.array([0, 0, 1, -1, 0, 1], np.float32) * scale, "sign dense")
    # 3 zeros among 6: count 32 + Golomb bits of [0, 1, 4] at b*(3, 6) = 0 -> 1 + 1 + 3 = 5; 3 sign bits
    assert bits_of(one(Sign(), x, Sign().init(6))[0]) == 32 + 5 + 3
    assert analytic_of(one(Sign(), x, Sign().init(6))[0]) == 6.0


def test_sparse_message_from_dense():
    dense = np.zeros(124, np.float32)
    dense[[0, 7, 121]] = [0.5, -1.25, 3.0]
    message = SparseMessage.from_dense(dense, (0, 120, 124))
    np.testing.assert_array_equal(message.counts, [2, 1])
    assert_bitwise(message.to_dense(), dense, "from_dense round trip")
    assert decode(message.encode(), message.format) == message
    assert message.analytic_bits() == pytest.approx(
        2 * (float(expected_position_bits(2 / 120)) + 32) + float(expected_position_bits(1 / 4)) + 32)


def test_identity_bits():
    x = np.arange(10, dtype=np.float64)
    message, _ = one(Identity(), x, Identity().init(10))
    assert bits_of(message) == 640 and analytic_of(message) == 320
    check_message(Identity(), message, x)


def test_message_validation():
    with pytest.raises(ValueError, match="strictly increasing"):
        TernaryMessage((0, 10), np.array([3, 3]), np.array([1, 1]), np.array([1.0], np.float32))
    with pytest.raises(ValueError, match="one mu per segment"):
        TernaryMessage((0, 5, 10), np.array([3]), np.array([1]), np.array([1.0], np.float32))
    message = TernaryMessage((0, 10), np.array([3]), np.array([-1]), np.array([1.0], np.float32))
    assert message.positions.flags.writeable is False
    with pytest.raises(ValueError, match="message kind"):
        decode(message.encode(), message.format.__class__("bogus", (0, 10), "float32"))


def test_sampled_stc_details():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(50_000).astype(np.float32)
    compressor = STC(0.01, threshold="sampled", sample_fraction=0.2)
    state = compressor.init(x.size)
    assert compressor.sample_sizes(state)[0] == 10_000 and compressor.sample_budgets(state)[0] == 100
    first, _ = one(compressor, x, state, np.random.default_rng(7))
    again, _ = one(compressor, x, state, np.random.default_rng(7))
    other, _ = one(compressor, x, state, np.random.default_rng(8))
    assert first == again and not first == other
    assert abs(first.positions.size - 500) < 150          # about p N entries
    check_message(compressor, first, x)
    # threshold 0 (the sample is all zero) and threshold == max |x| fall back to the exact computation
    sparse = np.zeros(50_000, np.float32)
    sparse[[10, 20]] = [1.0, -1.0]
    message, _ = one(compressor, sparse, state, np.random.default_rng(0))
    exact, _ = one(STC(0.01), sparse, state)
    assert message == exact
    constant = np.full(50_000, 0.5, np.float32)
    message, _ = one(compressor, constant, state, np.random.default_rng(0))
    assert message == one(STC(0.01), constant, state)[0] and message.positions.size == 500
    # the sample floor ceil(100 / p) and the cap N
    small = STC(0.1, threshold="sampled", sample_fraction=0.01)
    assert list(small.sample_sizes(Layout((0, 500, 5000)))) == [500, 1000]


# ----------------------------------------------------------------------------------------------------
# batched compression == row by row
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compressor", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_residuals", [False, True])
def test_batch_equals_row_by_row(compressor, dtype, with_residuals):
    rng = np.random.default_rng(11)
    updates = random_updates(rng, 5, SPEC.size, dtype)
    updates[2] = 0.0                                             # an all-zero client
    residuals = random_updates(rng, 5, SPEC.size, dtype) * dtype(0.1) if with_residuals else None
    state = compressor.init(SPEC)
    if with_residuals:
        result, feedback = ErrorFeedback(compressor).compress(updates, ErrorFeedbackState(state, residuals),
                                                              np.random.default_rng(3))
        new_residuals = feedback.residual
    else:
        result, _ = compressor.compress(updates, state, np.random.default_rng(3))
    row_rng = np.random.default_rng(3)
    for row in range(updates.shape[0]):
        if with_residuals:
            wrapper = ErrorFeedback(compressor)
            message, new_state = one(wrapper, updates[row], ErrorFeedbackState(state, residuals[row]),
                                                  row_rng)
            assert_bitwise(new_residuals[row], new_state.residual, f"residual row {row}")
        else:
            message, _ = one(compressor, updates[row], state, row_rng)
        assert_bitwise(result.decoded[row], decoded_of(message), f"decoded row {row}")
        assert result.encoded_bits[row] == bits_of(message), row
        assert result.analytic_bits[row] == analytic_of(message), row
    assert result.encoded_bits.dtype == np.int64 and result.analytic_bits.dtype == np.float64


def test_batch_error_feedback_over_rounds():
    rng = np.random.default_rng(2)
    compressor = STC(0.05)
    wrapper = ErrorFeedback(compressor)
    layout = compressor.init(SPEC)
    states = [wrapper.init(SPEC) for _ in range(3)]
    residuals = None
    for _ in range(4):
        updates = rng.standard_normal((3, SPEC.size)).astype(np.float32)
        batch_state = ErrorFeedbackState(layout, np.zeros_like(updates) if residuals is None else residuals)
        result, batch_state = wrapper.compress(updates, batch_state)
        residuals = batch_state.residual
        for row in range(3):
            message, states[row] = one(wrapper, updates[row], states[row])
            assert_bitwise(result.decoded[row], decoded_of(message), "sent")
            assert_bitwise(residuals[row], states[row].residual, "residual")


# ----------------------------------------------------------------------------------------------------
# error feedback invariant: x + old residual == sent + new residual
# ----------------------------------------------------------------------------------------------------

def _half_ulp(values):
    return 0.5 * np.spacing(np.abs(values).astype(values.dtype)).astype(np.float64)


@pytest.mark.parametrize("compressor", CONFIGS, ids=IDS)
def test_error_feedback_invariant(compressor):
    rng = np.random.default_rng(9)
    wrapper = ErrorFeedback(compressor)
    state = wrapper.init(SPEC, np.float32)
    for _ in range(5):
        x = random_updates(rng, 1, SPEC.size)[0]
        accumulated = x + state.residual
        message, state = one(wrapper, x, state, rng)
        sent = decoded_of(message)
        residual = state.residual
        rebuilt = sent + residual                               # in float32
        untouched = sent == 0
        assert_bitwise(residual[untouched], accumulated[untouched], "residual where nothing was sent")
        if isinstance(compressor, (TopK, Identity)):
            assert_bitwise(rebuilt, accumulated, "x + old residual == sent + new residual")
            assert np.all(residual[~untouched] == 0)
        else:
            # residual = fl(a - sent): exact where sent/2 <= a <= 2 sent (Sterbenz), else within half an ulp
            error = np.abs(sent.astype(np.float64) + residual.astype(np.float64) - accumulated)
            assert np.all(error <= _half_ulp(residual)), error.max()
            same_sign = (np.sign(sent) == np.sign(accumulated)) & ~untouched
            ratio = accumulated[same_sign] / sent[same_sign]
            sterbenz = (ratio >= 0.5) & (ratio <= 2)
            assert_bitwise(rebuilt[same_sign][sterbenz], accumulated[same_sign][sterbenz], "Sterbenz range")


def test_error_feedback_state_and_dtype():
    wrapper = ErrorFeedback(TopK(0.1))
    state = wrapper.init(SPEC, np.float64)
    assert state.residual.dtype == np.float64 and state.inner == Layout((0, 120, 124))
    with pytest.raises(ValueError, match="differs from the residual"):
        one(wrapper, np.zeros(SPEC.size, np.float32), state)
    with pytest.raises(ValueError, match="float32 or float64"):
        wrapper.init(SPEC, np.int64)
    x = np.ones(SPEC.size, np.float64)
    message, state = one(wrapper, x, state)
    # from a zero residual the wrapper sends what the bare compressor sends, with the same bit counts
    bare, _ = one(TopK(0.1), x, TopK(0.1).init(SPEC))
    assert message == bare and bits_of(message) == bits_of(bare)
    assert math.isclose(analytic_of(message), analytic_of(bare))
    assert wrapper.name == "topk" and wrapper.aggregations == TopK.aggregations
