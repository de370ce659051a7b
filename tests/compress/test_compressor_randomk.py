"""Random-k sparsification: settings, the seeded position generator (against an independent pure-Python
derivation and SplitMix64's published outputs), kernels vs their NumPy twins, the wire message (round
trip, bit counts, decoding from the stream alone), batch == row by row, unbiasedness and uniformity
(statistical, fixed seeds), error feedback, and a torch oracle."""

import math
from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsim.algorithms.federated import FederatedConfig, methods
from fedsim.compress import (
    ErrorFeedback,
    ErrorFeedbackState,
    Layout,
    MessageFormat,
    RandomK,
    RandomKMessage,
    decode,
    make_compressor,
)
from fedsim.compress.base import ceil_product
from fedsim.compress.randomk import SEED_BITS, segment_scales
from fedsim.constraints import descriptions
from fedsim.kernels import randomk as kernels
from fedsim.kernels.sparsify import NONFINITE_MESSAGE
from fedsim.params import ParamSpec

SPEC = ParamSpec(("W", "b"), ((30, 4), (4,)))          # 124 entries: segments of 120 and 4
CONFIGS = [RandomK(0.1), RandomK(0.1, scaling="none"), RandomK(0.05, scope="global"), RandomK(1.0),
           RandomK(0.5, scaling="none", scope="global"), RandomK(0.001)]
IDS = [repr(c) for c in CONFIGS]
DTYPES = [np.float32, np.float64]


def assert_bitwise(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    assert a.tobytes() == b.tobytes(), f"{what} differs:\n{a}\n{b}"


def random_updates(rng, rows, size, dtype=np.float32):
    x = rng.standard_normal((rows, size)).astype(dtype)
    x[:, ::7] = 0.0                        # zeros (random-k sends a chosen zero as a zero value)
    x[:, 3::11] = x[:, 3:4]                # ties (irrelevant to random-k, harmless)
    return x


# ----------------------------------------------------------------------------------------------------
# An independent derivation of the positions, in Python integers (the definition in the docstring of
# fedsim.kernels.randomk, written again: no NumPy, no 32-bit halves, a Python set)
# ----------------------------------------------------------------------------------------------------

MASK = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def python_mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def python_positions(seed, segment, size, k):
    """Floyd's algorithm on SplitMix64 draws; positions in the order chosen."""
    key = python_mix((seed + (segment + 1) * GAMMA) & MASK)
    chosen, order = set(), []
    for t in range(k):
        j = size - k + t
        i = (python_mix((key + (t + 1) * GAMMA) & MASK) * (j + 1)) >> 64
        if i in chosen:
            i = j
        chosen.add(i)
        order.append(i)
    return order


def python_row_positions(seed, layout, p):
    """Global positions of a row (segment after segment, each in Floyd's order)."""
    result = []
    for j, (start, stop) in enumerate(layout.segments()):
        result += [start + i for i in python_positions(seed, j, stop - start, ceil_product(p, stop - start))]
    return result


# ----------------------------------------------------------------------------------------------------
# settings and class attributes
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), float("inf"), "0.1", True])
def test_p_outside_range_is_rejected(bad):
    with pytest.raises((TypeError, ValueError), match=r"p must be a finite number in \(0, 1\]"):
        RandomK(bad)


def test_settings_are_validated_and_described():
    with pytest.raises(ValueError, match=r"scaling must be one of 'unbiased', 'none', got 'biased'"):
        RandomK(0.1, scaling="biased")
    with pytest.raises(ValueError, match=r"scope must be one of 'tensor', 'global'"):
        RandomK(0.1, scope="layer")
    assert make_compressor("randomk", p=0.2, scaling="none") == RandomK(0.2, scaling="none")
    assert RandomK().settings == {"p": 0.01, "scaling": "unbiased", "scope": "tensor"}
    comments = descriptions(RandomK)
    assert set(comments) == {"p", "scaling", "scope"} and "unbiased" in comments["scaling"]


def test_class_attributes_and_methods():
    assert RandomK.name == "randomk" and RandomK.aggregations == ("mean", "weighted")
    assert RandomK.error_feedback is False and RandomK.directions == ("up", "updown")
    table = methods()
    assert table["randomk_up"].up == "randomk" and table["randomk_up"].down == "identity"
    assert table["randomk_updown"].down == "randomk"
    assert not table["randomk_up"].accumulate_up and not table["randomk_updown"].accumulate_down
    config = FederatedConfig(method="randomk_updown", p_up=0.05, p_down=0.2, compression_scope="global",
                             accumulate_up=True, compressors={"randomk": RandomK(scaling="none")})
    assert config.compressor("up") == RandomK(0.05, scaling="none", scope="global")
    assert config.compressor("down") == RandomK(0.2, scaling="none", scope="global")
    assert config.resolved_method.accumulate_up and not config.resolved_method.accumulate_down


def test_generator_is_required_and_updates_are_checked():
    compressor = RandomK(0.1)
    state = compressor.init(SPEC)
    for rng in (None, 7, np.random.RandomState(0)):
        with pytest.raises(ValueError, match=r"numpy.random.Generator \(rng\)"):
            compressor.compress(np.ones(SPEC.size, np.float32), state, rng)
    with pytest.raises(ValueError, match="float32 or float64"):
        compressor.compress(np.zeros(SPEC.size, np.int32), state, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        compressor.compress(np.zeros(SPEC.size + 1, np.float32), state, np.random.default_rng(0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_update_is_rejected_even_where_nothing_is_sent(bad):
    compressor = RandomK(0.001)             # k = 1 of 120 and 1 of 4: the bad entry is almost never chosen
    state = compressor.init(SPEC)
    for position in (0, 60, SPEC.size - 1):
        x = np.ones(SPEC.size, np.float32)
        x[position] = bad
        with pytest.raises(ValueError, match=NONFINITE_MESSAGE):
            compressor.compress(x, state, np.random.default_rng(0))
        with pytest.raises(ValueError, match=NONFINITE_MESSAGE):
            compressor.compress(np.stack([np.ones_like(x), x]), state, np.random.default_rng(0))
        wrapper = ErrorFeedback(compressor)
        with pytest.raises(ValueError, match=NONFINITE_MESSAGE):
            wrapper.compress(x, wrapper.init(SPEC), np.random.default_rng(0))


# ----------------------------------------------------------------------------------------------------
# the position generator
# ----------------------------------------------------------------------------------------------------

def test_splitmix64_published_outputs():
    # SplitMix64 started at state 0: its published first outputs (Vigna's splitmix64.c).
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
    for function in (kernels.splitmix64, kernels.splitmix64.py_func, kernels.splitmix64_numpy):
        out = np.zeros(4, np.uint64)
        function(np.uint64(0), 4, out)
        assert out.tolist() == expected, function
    assert [python_mix((n * GAMMA) & MASK) for n in range(1, 5)] == expected


SEEDS = [0, 1, 12345, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 0xDEADBEEFCAFEF00D]
SHAPES = [(0, 0), (1, 0), (1, 1), (2, 1), (5, 2), (10, 10), (17, 16), (1000, 10), (1000, 999),
          (100_003, 1001)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size, k", SHAPES)
def test_positions_match_the_independent_derivation(seed, size, k):
    expected = python_positions(seed, 3, size, k)
    for function in (kernels.random_positions, kernels.random_positions.py_func, kernels.random_positions_numpy):
        out = np.full(k, -1, np.int64)
        function(np.uint64(seed), 3, size, k, out)
        assert out.tolist() == expected, function
    assert len(set(expected)) == k and all(0 <= i < size for i in expected)


def test_positions_depend_on_seed_and_segment_only():
    def positions(seed, segment, size=1000, k=20):
        out = np.empty(k, np.int64)
        kernels.random_positions(np.uint64(seed), segment, size, k, out)
        return out.tolist()
    assert positions(5, 0) == positions(5, 0)
    assert positions(5, 0) != positions(6, 0) and positions(5, 0) != positions(5, 1)
    # the first draws of Floyd's loop range over [0, N - k]: k = N is a permutation of all positions
    full = np.empty(50, np.int64)
    kernels.random_positions(np.uint64(9), 0, 50, 50, full)
    assert sorted(full.tolist()) == list(range(50))


def test_bounded_map_is_multiply_high():
    rng = np.random.default_rng(4)
    words = rng.integers(0, 2 ** 64 - 1, size=2000, dtype=np.uint64, endpoint=True)
    words[:4] = [0, 1, 2 ** 64 - 1, 2 ** 63]
    bounds = rng.integers(1, 2 ** 32, size=2000, dtype=np.uint64, endpoint=True)
    bounds[:4] = [1, 2 ** 32, 2 ** 32, 3]
    expected = [(int(z) * int(r)) >> 64 for z, r in zip(words, bounds)]
    assert kernels._below_numpy(words, bounds).tolist() == expected
    assert [int(kernels._below(z, r)) for z, r in zip(words, bounds)] == expected


def test_position_arguments_are_checked():
    out = np.empty(10, np.int64)
    for size, k in [(5, 6), (5, -1), (2 ** 32 + 1, 1)]:
        with pytest.raises(ValueError, match="0 <= k <= size <= 2"):
            kernels.random_positions(np.uint64(0), 0, size, k, out)
        with pytest.raises(ValueError, match="0 <= k <= size <= 2"):
            kernels.random_positions_numpy(np.uint64(0), 0, size, k, out)


def test_subsets_are_uniform():
    """All C(5, 2) = 10 subsets of a segment of 5 with k = 2 over 20,000 seeds: Pearson's chi-square
    against the uniform law, 9 degrees of freedom. 27.88 is its 0.999 quantile; the seeds are fixed, so
    the test is deterministic (it would fail by chance for one seed set in a thousand)."""
    seeds = np.random.default_rng(21).integers(0, 2 ** 64 - 1, size=20_000, dtype=np.uint64, endpoint=True)
    counts = dict.fromkeys(combinations(range(5), 2), 0)
    out = np.empty(2, np.int64)
    for seed in seeds:
        kernels.random_positions(seed, 0, 5, 2, out)
        counts[tuple(sorted(out.tolist()))] += 1
    expected = seeds.size / len(counts)
    chi_square = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi_square < 27.88, counts


# ----------------------------------------------------------------------------------------------------
# kernels == NumPy twins
# ----------------------------------------------------------------------------------------------------

def run_batch(function, updates, offsets, ks, scales, seeds):
    decoded = np.full(updates.shape, 7, updates.dtype)          # garbage: the kernel overwrites it
    values = np.full((updates.shape[0], int(ks.sum())), 7, updates.dtype)
    function(updates, offsets, ks, scales, seeds, decoded, values)
    return decoded, values


BATCH_FUNCTIONS = [kernels.randomk_compress_batch, kernels.randomk_compress_batch.py_func,
                   kernels.randomk_compress_batch_numpy]


def check_batch(updates, offsets, ks, scales, seeds):
    with np.errstate(over="ignore"):            # huge values times N / k overflow to inf in all three
        return _check_batch(updates, offsets, ks, scales, seeds)


def _check_batch(updates, offsets, ks, scales, seeds):
    reference = run_batch(BATCH_FUNCTIONS[0], updates, offsets, ks, scales, seeds)
    for function in BATCH_FUNCTIONS[1:]:
        other = run_batch(function, updates, offsets, ks, scales, seeds)
        assert_bitwise(other[0], reference[0], f"decoded, {function}")
        assert_bitwise(other[1], reference[1], f"values, {function}")
    # and the definition: decoded = x * scale at the python positions, values = x there
    decoded, values = reference
    for row, seed in enumerate(seeds.tolist()):
        expected = np.zeros(updates.shape[1], updates.dtype)
        gathered = []
        for j, k in enumerate(ks.tolist()):
            local = python_positions(seed, j, int(offsets[j + 1] - offsets[j]), k)
            where = np.array(local, np.int64) + offsets[j]
            expected[where] = updates[row, where] * scales[j]
            gathered.append(updates[row, where])
        assert_bitwise(decoded[row], expected, f"decoded row {row} vs definition")
        assert_bitwise(values[row], np.concatenate(gathered + [np.zeros(0, updates.dtype)]), "values")
    return reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes, p", [((0,), 0.5), ((1,), 1.0), ((3, 0, 4), 0.5), ((120, 4), 0.1),
                                      ((7, 1, 1000), 0.03), ((100_003,), 0.01), ((2, 2), 1.0)])
def test_batch_kernel_equals_twins(dtype, sizes, p):
    rng = np.random.default_rng(sum(sizes))
    layout = Layout(tuple(np.concatenate(([0], np.cumsum(sizes))).tolist()))
    ks = np.array([ceil_product(p, n) for n in sizes], np.int64)
    scales = segment_scales(p, "unbiased", layout, dtype)
    seeds = rng.integers(0, 2 ** 64 - 1, size=3, dtype=np.uint64, endpoint=True)
    updates = rng.standard_normal((3, layout.size)).astype(dtype)
    check_batch(updates, layout.offsets_array, ks, scales, seeds)
    # adversarial values: all zero, signed zeros, subnormals, huge, all equal
    tiny = np.finfo(dtype).smallest_subnormal
    huge = np.finfo(dtype).max
    special = np.resize(np.array([0.0, -0.0, tiny, -tiny, huge, -huge, 1.0, 1.0], dtype), (3, layout.size))
    check_batch(np.zeros((3, layout.size), dtype), layout.offsets_array, ks, scales, seeds)
    check_batch(np.ascontiguousarray(special), layout.offsets_array, ks, scales, seeds)
    check_batch(special, layout.offsets_array, ks, np.ones(len(sizes), dtype), seeds)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_kernel_hypothesis(dtype):
    width = 32 if dtype == np.float32 else 64
    elements = st.one_of(st.floats(width=width, allow_nan=False, allow_infinity=False, allow_subnormal=True),
                         st.sampled_from([0.0, -0.0, 1.0]))

    @settings(max_examples=40, deadline=None)
    @given(arrays(dtype, (2, 37), elements=elements), st.integers(0, 2 ** 64 - 1),
           st.sampled_from([0.01, 0.3, 1.0]))
    def run(updates, seed, p):
        layout = Layout((0, 30, 37))
        ks = np.array([ceil_product(p, n) for n in layout.sizes], np.int64)
        seeds = np.array([seed, seed ^ 1], np.uint64)
        check_batch(updates, layout.offsets_array, ks, segment_scales(p, "unbiased", layout, dtype), seeds)

    run()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_batch_kernels_reject_non_finite_and_bad_budgets(bad):
    updates = np.ones((2, 10), np.float32)
    updates[1, 9] = bad
    args = (np.array([0, 10]), np.array([1]), np.ones(1, np.float32), np.zeros(2, np.uint64))
    for function in BATCH_FUNCTIONS:
        with pytest.raises(ValueError, match=NONFINITE_MESSAGE), np.errstate(invalid="ignore"):
            run_batch(function, updates, *args)            # (.py_func computes inf - inf in NumPy scalars)
        with pytest.raises(ValueError, match="budgets must be in"):
            run_batch(function, np.ones((1, 10), np.float32), np.array([0, 10]), np.array([11]),
                      np.ones(1, np.float32), np.zeros(1, np.uint64))


# ----------------------------------------------------------------------------------------------------
# messages
# ----------------------------------------------------------------------------------------------------

def check_row(compressed, row, x):
    message = compressed.message(row)
    assert isinstance(message, RandomKMessage)
    assert_bitwise(message.to_dense(), compressed.decoded[row], "message.to_dense() vs decoded row")
    assert message.encoded_bits() == compressed.encoded_bits[row]
    assert message.analytic_bits() == compressed.analytic_bits[row]
    stream, n_bits = message.encode_with_bit_count()
    assert n_bits == message.encoded_bits() and stream.dtype == np.uint8 and stream.size == (n_bits + 7) // 8
    np.testing.assert_array_equal(stream, message.encode())
    back = decode(stream, message.format)
    assert back == message, f"decode(encode(m)) != m:\n{back}\n{message}"
    assert_bitwise(back.to_dense(), compressed.decoded[row], "receiver's reconstruction")
    # the message's values are x at the positions, in increasing position order
    assert np.all(np.diff(message.positions) > 0)
    assert_bitwise(message.values, x[message.positions], "sent values")
    return message


@pytest.mark.parametrize("compressor", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_message_contract(compressor, dtype):
    rng = np.random.default_rng(3)
    updates = random_updates(rng, 4, SPEC.size, dtype)
    updates[1] = 0.0
    state = compressor.init(SPEC)
    compressed, new_state = compressor.compress(updates, state, np.random.default_rng(8))
    assert new_state == state and compressed.decoded.dtype == dtype
    assert compressed.encoded_bits.dtype == np.int64 and compressed.analytic_bits.dtype == np.float64
    layout = state
    ks = np.array([ceil_product(compressor.p, n) for n in layout.sizes])
    for row in range(4):
        message = check_row(compressed, row, updates[row])
        assert message.positions.size == ks.sum()
        for j, (start, stop) in enumerate(layout.segments()):     # exactly k per segment
            inside = (message.positions >= start) & (message.positions < stop)
            assert inside.sum() == ks[j]
        expected = np.sort(python_row_positions(int(compressed.fields["seeds"][row]), layout, compressor.p))
        np.testing.assert_array_equal(message.positions, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bit_counts_and_stream_layout(dtype):
    compressor = RandomK(0.1)                                   # k = 12 of 120, 1 of 4
    x = np.arange(SPEC.size, dtype=dtype) - 60
    compressed, _ = compressor.compress(x, compressor.init(SPEC), np.random.default_rng(0))
    bits = 32 if dtype == np.float32 else 64
    assert compressed.encoded_bits[0] == 64 + 13 * bits              # the seed, then 13 values
    assert compressed.analytic_bits[0] == 13 * 32.0                  # the paper's estimate: 32 per value
    message = compressed.message(0)
    stream = message.encode()
    seed = int(compressed.fields["seeds"][0])
    assert int.from_bytes(stream[:8].tobytes(), "big") == seed == message.seed
    values = np.frombuffer(stream[8:].tobytes(), np.dtype(dtype).newbyteorder(">"))
    assert_bitwise(values.astype(dtype), message.values, "values after the seed, big-endian")
    assert SEED_BITS == 64
    # the decoded row: dtype(N / k) * x_i, one multiply, at the 13 positions
    scales = np.repeat(np.array([120 / 12, 4 / 1]).astype(dtype), [12, 1])
    expected = np.zeros(SPEC.size, dtype)
    expected[message.positions] = x[message.positions] * scales
    assert_bitwise(compressed.decoded[0], expected, "decoded")


def test_receiver_rebuilds_positions_from_the_stream_alone():
    """Encode on the sender, then decode with only the stream and what the configuration tells the
    receiver (kind, segments, dtype, p, scaling): the same positions and the same dense row."""
    compressor = RandomK(0.05)
    x = np.random.default_rng(6).standard_normal(SPEC.size).astype(np.float32)
    compressed, _ = compressor.compress(x, compressor.init(SPEC), np.random.default_rng(12))
    stream = compressed.message(0).encode().copy()
    fmt = MessageFormat("randomk", (0, 120, 124), "float32", options=(("p", 0.05), ("scaling", "unbiased")))
    received = decode(stream, fmt)
    assert_bitwise(received.to_dense(), compressed.decoded[0], "receiver's row")
    seed = int.from_bytes(stream[:8].tobytes(), "big")
    np.testing.assert_array_equal(received.positions,
                                  np.sort(python_row_positions(seed, Layout((0, 120, 124)), 0.05)))
    # a receiver configured with another p or scaling reads another message (no count is sent)
    other = decode(stream, MessageFormat("randomk", (0, 120, 124), "float32",
                                         options=(("p", 0.05), ("scaling", "none"))))
    assert not np.array_equal(other.to_dense(), compressed.decoded[0])
    with pytest.raises(ValueError, match="too few"):
        decode(stream[:-1], fmt)
    with pytest.raises(ValueError, match="options p and scaling"):
        decode(stream, MessageFormat("randomk", (0, 120, 124), "float32"))


def test_message_validation():
    with pytest.raises(ValueError, match="sends 2 values, got 3"):
        RandomKMessage((0, 10), 0.2, 5, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\^64 - 1\]"):
        RandomKMessage((0, 10), 0.2, 2 ** 64, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"seed must be an integer"):
        RandomKMessage((0, 10), 0.2, -1, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="scaling must be one of"):
        RandomKMessage((0, 10), 0.2, 5, np.zeros(2, np.float32), "biased")
    message = RandomKMessage((0, 10), 0.2, 2 ** 64 - 1, np.array([1.0, -2.0], np.float32))
    assert message.values.flags.writeable is False
    assert decode(message.encode(), message.format) == message
    assert message.encoded_bits() == 64 + 64 and message.analytic_bits() == 64.0


def test_full_budget_sends_everything():
    for scaling in ("unbiased", "none"):
        compressor = RandomK(1.0, scaling=scaling)
        x = random_updates(np.random.default_rng(1), 3, SPEC.size)
        compressed, _ = compressor.compress(x, compressor.init(SPEC), np.random.default_rng(0))
        assert_bitwise(compressed.decoded, x, "p = 1: decoded == x (scale 1)")


def test_empty_layout():
    compressor = RandomK(0.5)
    compressed, _ = compressor.compress(np.zeros((2, 0), np.float32), compressor.init(0),
                                        np.random.default_rng(0))
    assert compressed.decoded.shape == (2, 0) and list(compressed.encoded_bits) == [64, 64]
    check_row(compressed, 1, np.zeros(0, np.float32))


# ----------------------------------------------------------------------------------------------------
# batch == row by row, the Generator consumed in row order
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compressor", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residuals", [False, True])
def test_batch_equals_row_by_row(compressor, dtype, with_residuals):
    rng = np.random.default_rng(11)
    updates = random_updates(rng, 5, SPEC.size, dtype)
    updates[2] = 0.0
    residuals = random_updates(rng, 5, SPEC.size, dtype) * dtype(0.1) if with_residuals else None
    state = compressor.init(SPEC)
    batch_rng = np.random.default_rng(3)
    if with_residuals:
        result, feedback = ErrorFeedback(compressor).compress(updates, ErrorFeedbackState(state, residuals),
                                                              batch_rng)
    else:
        result, _ = compressor.compress(updates, state, batch_rng)
    row_rng = np.random.default_rng(3)
    for row in range(5):
        if with_residuals:
            single, single_state = ErrorFeedback(compressor).compress(
                updates[row], ErrorFeedbackState(state, residuals[row]), row_rng)
            assert_bitwise(feedback.residual[row], single_state.residual, f"residual row {row}")
        else:
            single, _ = compressor.compress(updates[row], state, row_rng)
        assert_bitwise(result.decoded[row], single.decoded[0], f"decoded row {row}")
        assert result.fields["seeds"][row] == single.fields["seeds"][0]
        assert result.encoded_bits[row] == single.encoded_bits[0]
        assert result.analytic_bits[row] == single.analytic_bits[0]
        assert result.message(row) == single.message(0)
    # one 64-bit output per row: the two Generators are in the same state afterwards
    assert batch_rng.bit_generator.state == row_rng.bit_generator.state
    expected_seeds = np.random.default_rng(3).integers(0, 2 ** 64 - 1, size=5, dtype=np.uint64, endpoint=True)
    np.testing.assert_array_equal(result.fields["seeds"], expected_seeds)


# ----------------------------------------------------------------------------------------------------
# statistics: unbiasedness
# ----------------------------------------------------------------------------------------------------

def test_unbiased_scaling_is_unbiased():
    """Mean of 20,000 decoded rows of one fixed x (float64, so dtype(N / k) = N / k exactly here).

    Entry i of a decoded row is (N / k) x_i with probability k / N, else 0: mean x_i, variance
    x_i^2 (N / k - 1). The mean of T rows has standard error |x_i| sqrt((N / k - 1) / T); every entry
    must be within 5 standard errors (Gaussian two-sided tail 6e-7 per entry, ~1e-4 over the 124
    entries; the seed is fixed, so the outcome is deterministic). The selection frequency of each
    position is checked likewise against k / N, and the unscaled form's mean against (k / N) x.
    """
    trials = 20_000
    x = np.random.default_rng(0).standard_normal(SPEC.size) + 0.5
    rows = np.repeat(x[None, :], trials, axis=0)
    layout = Layout((0, 120, 124))
    density = np.repeat([12 / 120, 1 / 4], [120, 4])
    unbiased, _ = RandomK(0.1).compress(rows, RandomK(0.1).init(SPEC), np.random.default_rng(99))
    error = np.abs(x) * np.sqrt((1 / density - 1) / trials)
    deviation = np.abs(unbiased.decoded.mean(axis=0) - x)
    assert np.all(deviation <= 5 * error), (deviation / error).max()
    assert 0.3 < (deviation / error).mean() < 1.3          # about sqrt(2 / pi) = 0.8 if the errors are right
    chosen = (unbiased.decoded != 0).mean(axis=0)
    assert np.all(np.abs(chosen - density) <= 5 * np.sqrt(density * (1 - density) / trials))
    assert np.all((unbiased.decoded != 0)[:, :120].sum(axis=1) == 12)
    plain, _ = RandomK(0.1, scaling="none").compress(rows, layout, np.random.default_rng(99))
    assert_bitwise(plain.decoded != 0, unbiased.decoded != 0, "same seeds, same positions")
    deviation = np.abs(plain.decoded.mean(axis=0) - density * x)
    assert np.all(deviation <= 5 * np.abs(x) * np.sqrt(density * (1 - density) / trials))


# ----------------------------------------------------------------------------------------------------
# error feedback (scaling "none": Stich et al.'s memory)
# ----------------------------------------------------------------------------------------------------

def test_error_feedback_invariant_without_scaling():
    rng = np.random.default_rng(9)
    wrapper = ErrorFeedback(RandomK(0.1, scaling="none"))
    state = wrapper.init(SPEC, np.float32)
    for _ in range(5):
        x = random_updates(rng, 1, SPEC.size)[0]
        accumulated = x + state.residual
        compressed, state = wrapper.compress(x, state, rng)
        sent = compressed.decoded[0]
        message = compressed.message(0)
        # the values are sent as they are: a == sent + residual bitwise, the residual 0 where sent
        assert_bitwise(sent + state.residual, accumulated, "a == sent + residual")
        assert np.all(state.residual[message.positions] == 0)
        untouched = np.ones(SPEC.size, bool)
        untouched[message.positions] = False
        assert_bitwise(state.residual[untouched], accumulated[untouched], "residual where nothing was sent")


# ----------------------------------------------------------------------------------------------------
# torch oracle
# ----------------------------------------------------------------------------------------------------

@pytest.mark.oracle
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scaling", ["unbiased", "none"])
@pytest.mark.parametrize("scope, p", [("tensor", 0.01), ("tensor", 0.2), ("global", 0.05), ("tensor", 1.0)])
def test_matches_torch(torch, dtype, scaling, scope, p):
    """torch gathers, scales and scatters at positions derived again from the seeds in plain Python
    (python_positions); the scale is N / k rounded once to the dtype, one multiply per value. Tolerance:
    none: every operation is one correctly rounded IEEE multiply (or a copy), so the rows agree bitwise."""
    from benchmarks import torch_reference as reference

    spec = ParamSpec(("W", "b"), ((1024, 10), (10,)))           # the STC pipeline's softmax regression
    compressor = RandomK(p, scaling=scaling, scope=scope)
    state = compressor.init(spec)
    layout = state
    updates = np.random.default_rng(1).standard_normal((4, spec.size)).astype(dtype)
    compressed, _ = compressor.compress(updates, state, np.random.default_rng(2))

    positions, scales = [], []
    for seed in compressed.fields["seeds"].tolist():
        positions.append(python_row_positions(seed, layout, p))
    for start, stop in layout.segments():
        size, k = stop - start, math.ceil(p * (stop - start) * (1 - 2 ** -50))
        scales += [size / k if scaling == "unbiased" else 1.0] * k
    torch_dtype = torch.float32 if dtype == np.float32 else torch.float64
    decoded, values = reference.randomk_rows(torch.from_numpy(updates), torch.tensor(positions, dtype=torch.int64),
                                             torch.tensor(scales, dtype=torch.float64).to(torch_dtype))
    assert_bitwise(decoded.numpy(), compressed.decoded, "fedsim vs torch, decoded rows")
    assert_bitwise(values.numpy(), compressed.fields["values"], "fedsim vs torch, sent values (Floyd order)")
    for row in range(4):
        message = compressed.message(row)
        assert_bitwise(message.to_dense(), decoded[row].numpy(), f"message {row} vs torch")
