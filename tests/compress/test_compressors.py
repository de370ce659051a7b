"""Identity, top-k, STC and sign: what is specific to each (hand-computed messages and bit counts, STC's
message against its kernels' twin, sampled STC, message validation), ``ceil_product``, and the
error-feedback wrapper's state."""

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from fedsim.compress import (
    COMPRESSORS,
    STC,
    ErrorFeedback,
    Identity,
    Layout,
    Sign,
    SparseMessage,
    TernaryMessage,
    TopK,
    ceil_product,
    decode,
    expected_position_bits,
)
from fedsim.compress.base import register
from fedsim.kernels import ternary
from tests.conftest import DTYPES, SPEC, assert_bitwise, check_message, message_of, random_updates
from tests.conftest import compress_one as one          # (message, new state) of one compressed vector


# ----------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------

def test_ceil_product_forgives_float_rounding():
    assert 0.07 * 100 > 7 and ceil_product(0.07, 100) == 7 and ceil_product(0.1, 30) == 3
    assert ceil_product(0.001, 10250) == 11 and ceil_product(0.01, 10) == 1 and ceil_product(1.0, 7) == 7
    assert ceil_product(0.5, 0) == 0


# ----------------------------------------------------------------------------------------------------
# messages: content, bits
# ----------------------------------------------------------------------------------------------------

def test_stc_all_zero_and_sparse_updates():
    compressor = STC(0.5)
    state = compressor.init(SPEC)
    message, _ = one(compressor, np.zeros(SPEC.size, np.float32), state)
    assert message.positions.size == 0
    assert message.encoded_bits() == 64                 # two 32-bit zero counts
    assert message.analytic_bits() == 0.0
    check_message(message, np.float32, SPEC.size)
    x = np.zeros(SPEC.size, np.float32)
    x[[5, 121]] = [2.0, -3.0]
    message, _ = one(compressor, x, state)               # budget 60 and 2, only 2 nonzeros
    np.testing.assert_array_equal(message.positions, [5, 121])
    assert_bitwise(message.to_dense(), x, "no densification")


@pytest.mark.parametrize("dtype", DTYPES)
def test_stc_message_content(dtype):
    """Each segment's message against the ternarize kernels' NumPy twin (fedsim.kernels.ternary)."""
    rng = np.random.default_rng(0)
    x = random_updates(rng, 1, SPEC.size, dtype)[0]
    compressor = STC(0.1)
    message, _ = one(compressor, x, compressor.init(SPEC))
    dense = check_message(message, dtype, SPEC.size)
    for j, (start, stop) in enumerate([(0, 120), (120, 124)]):
        k = ceil_product(0.1, stop - start)
        positions = np.empty(k, np.int64)
        signs = np.empty(k, np.int8)
        count, mu = ternary._ternarize_numpy(x[start:stop], k, positions, signs)
        expected = np.zeros(stop - start, dtype)
        expected[positions[:count]] = signs[:count] * dtype(mu)
        assert_bitwise(dense[start:stop], expected, f"segment {j}")
        assert message.mu[j] == mu
    np.testing.assert_array_equal(message.counts, [12, 1])
    analytic = sum(c * (expected_position_bits(c / n) + 1) + 32 for c, n in zip([12, 1], [120, 124 - 120]))
    assert message.analytic_bits() == pytest.approx(float(analytic), rel=1e-14)


def test_top_k_and_identity_keep_exact_values_and_sign_codes_zeros():
    rng = np.random.default_rng(1)
    x = random_updates(rng, 1, SPEC.size)[0]
    compressor = TopK(0.25)
    message, _ = one(compressor, x, compressor.init(SPEC))
    dense = check_message(message, x.dtype, x.size)
    assert_bitwise(dense[message.positions], x[message.positions], "kept values")
    assert np.count_nonzero(dense) == ceil_product(0.25, 120) + ceil_product(0.25, 4)

    x = np.array([0.0, -0.0, 1.5, -2.0, 0.0, 3.0], np.float32)
    for compressor in (Sign(), Sign(scale="mean")):
        message, _ = one(compressor, x, compressor.init(6))
        dense = check_message(message, x.dtype, x.size)
        np.testing.assert_array_equal(message.signs, [0, 0, 1, -1, 0, 1])
        scale = np.float32(6.5 / 6) if compressor.scale == "mean" else np.float32(1)
        assert_bitwise(dense, np.array([0, 0, 1, -1, 0, 1], np.float32) * scale, "sign dense")
    # 3 zeros among 6: count 32 + Golomb bits of [0, 1, 4] at b*(3, 6) = 0 -> 1 + 1 + 3 = 5; 3 sign bits
    message, _ = one(Sign(), x, Sign().init(6))
    assert message.encoded_bits() == 32 + 5 + 3 and message.analytic_bits() == 6.0
    x = np.arange(10, dtype=np.float64)                   # identity: 64 bits a value, 32 in the analytic count
    message, _ = one(Identity(), x, Identity().init(10))
    assert message.encoded_bits() == 640 and message.analytic_bits() == 320
    check_message(message, x.dtype, x.size)


@pytest.mark.parametrize("tiny", [-1e-45, 1e-45])
def test_sign_mean_scale_underflow(tiny):
    """A segment whose only nonzero entry is the smallest subnormal: mean |x| over 120 entries is 0 in
    float32, so the segment is sent as zeros: the message matches the batch (decoded row and bit count)."""
    x = np.zeros(SPEC.size, np.float32)
    x[0] = tiny
    compressed, _ = Sign(scale="mean").compress(x, Sign(scale="mean").init(SPEC))
    assert compressed.fields["scales"][0, 0] == 0
    message = message_of(compressed, 0)
    assert not message.to_dense().any() and not message.signs.any()


def test_sparse_message_from_dense():
    dense = np.zeros(124, np.float32)
    dense[[0, 7, 121]] = [0.5, -1.25, 3.0]
    message = SparseMessage.from_dense(dense, (0, 120, 124))
    np.testing.assert_array_equal(message.counts, [2, 1])
    assert_bitwise(message.to_dense(), dense, "from_dense round trip")
    assert decode(message.encode(), message.format) == message
    assert message.analytic_bits() == pytest.approx(
        2 * (float(expected_position_bits(2 / 120)) + 32) + float(expected_position_bits(1 / 4)) + 32)


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
    check_message(first, x.dtype, x.size)
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
# the error-feedback wrapper
# ----------------------------------------------------------------------------------------------------

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
    assert message == bare and message.encoded_bits() == bare.encoded_bits()
    assert math.isclose(message.analytic_bits(), bare.analytic_bits())
    assert wrapper.name == "topk" and wrapper.aggregations == TopK.aggregations


@pytest.mark.parametrize("decoded, sizes, how, message", [
    (np.ones((3, 4)), np.zeros(3), "weighted", "positive sum"),
    (np.ones((3, 4)), np.array([1, -1, 0]), "weighted", ">= 0"),
    (np.ones((3, 4)), np.array([1, np.inf, 2]), "weighted", "finite"),
    (np.ones((3, 4)), np.array([2e38, 2e38, 1]), "weighted", r"positive sum finite in the rows' dtype \(float32\)"),
    (np.ones((3, 4)), np.array([10**40, 1, 1]), "weighted", "finite"),        # beyond int64: an object array
    (np.ones((3, 4)), np.array([1, 2]), "weighted", "the 3 senders' sample counts"),
    (np.ones((3, 4)), np.array([1, 2]), "mean", "the 3 senders' sample counts"),
    (np.zeros((0, 4)), np.zeros(0), "mean", r"K >= 1, got shape \(0, 4\)"),
    (np.ones(4), np.ones(1), "mean", r"\(K, P\)"),
], ids=["zero-sum", "negative", "inf", "sum-overflows", "beyond-int64", "too-few", "too-few-mean", "no-rows", "1-D"])
def test_aggregate_refuses_bad_rows_and_sizes(decoded, sizes, how, message):
    with pytest.raises(ValueError, match=message):
        TopK().aggregate(decoded.astype(np.float32), sizes, how)


def test_a_plugin_with_an_unknown_aggregation_is_refused_at_registration():
    @dataclass(frozen=True)
    class MedianSign(Sign):
        name: ClassVar[str] = "test_median_sign"
        aggregations: ClassVar[tuple[str, ...]] = ("median",)

    with pytest.raises(ValueError, match=r"compressor 'test_median_sign': aggregations must be among "
                                         r"\('mean', 'weighted', 'majority'\), got \['median'\]"):
        register(MedianSign)
    assert "test_median_sign" not in COMPRESSORS
