"""QSGD (arXiv 1610.02132): settings, hand-computed quantization and codes, the Elias omega coder, the
paper's bit bound, unbiasedness, messages (exact round trip, bit counts), batch == row by row, the kernel
against its NumPy twin, and (oracle) against an independent torch implementation."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsim.algorithms.federated import methods
from fedsim.compress import (
    QSGD,
    Compressed,
    ErrorFeedback,
    ErrorFeedbackState,
    Layout,
    MessageFormat,
    QSGDMessage,
    decode,
    make_compressor,
)
from fedsim.compress import qsgd as qsgd_module
from fedsim.kernels import qsgd as kernels
from fedsim.kernels import sparsify
from fedsim.params import ParamSpec

SETTINGS = settings(max_examples=40, deadline=None)
SPEC = ParamSpec(("W", "b"), ((30, 4), (4,)))                 # 124 entries: segments of 120 and 4
ODD_LAYOUT = Layout((0, 0, 7, 7, 40, 41))                     # empty segments, a single entry
CONFIGS = [QSGD(), QSGD(4, 0), QSGD(2, 16), QSGD(1, 7, scope="global"), QSGD(16, 1), QSGD(40000, 32)]
IDS = [repr(c) for c in CONFIGS]


def assert_bitwise(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    assert a.tobytes() == b.tobytes(), f"{what} differs:\n{a}\n{b}"


def bit_string(stream, n_bits):
    return "".join(str(b) for b in np.unpackbits(np.asarray(stream, np.uint8))[:n_bits])


def omega_reference(value: int) -> str:
    """The Elias omega code as a string, written from its definition (independent of the kernels)."""
    code = "0"
    while value > 1:
        binary = bin(value)[2:]
        code = binary + code
        value = len(binary) - 1
    return code


def float_pattern(value, dtype) -> str:
    width = 8 * np.dtype(dtype).itemsize
    integer = np.array([value], dtype).view(np.uint32 if width == 32 else np.uint64)[0]
    return format(int(integer), f"0{width}b")


def run_kernel(function, updates, offsets, levels, uniforms, dtype=None):
    """(decoded, norms, signed levels, encoded bits) of a kernel (or its twin) on fresh outputs."""
    updates = np.ascontiguousarray(updates)
    rows, size = updates.shape
    decoded = np.full((rows, size), np.nan, updates.dtype)
    norms = np.full((rows, offsets.size - 1), np.nan, updates.dtype)
    signed = np.full((rows, size), 99, qsgd_module.level_dtype(levels))
    bits = np.full(rows, -1, np.int64)
    function(updates, offsets, levels, uniforms, 8 * updates.dtype.itemsize, decoded, norms, signed, bits)
    return decoded, norms, signed, bits


def check_message(message, dtype, size):
    stream, n_bits = message.encode_with_bit_count()
    assert n_bits == message.encoded_bits()
    assert stream.dtype == np.uint8 and stream.size == (n_bits + 7) // 8
    np.testing.assert_array_equal(stream, message.encode())
    back = decode(stream, message.format)
    assert back == message, f"decode(encode(m)) != m:\n{back}\n{message}"
    dense = message.to_dense()
    assert dense.dtype == dtype and dense.shape == (size,)
    assert_bitwise(back.to_dense(), dense, "to_dense after the round trip")


def one(compressor, x, state, rng):
    """Compress one vector: (its message, the Compressed batch of one); checks the message contract."""
    compressed, new_state = compressor.compress(x, state, rng)
    assert new_state == state
    message = compressed.message(0)
    assert_bitwise(message.to_dense(), compressed.decoded[0], "message.to_dense() vs decoded row")
    assert message.encoded_bits() == compressed.encoded_bits[0]
    assert message.analytic_bits() == compressed.analytic_bits[0]
    return message, compressed


# ----------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------

def test_settings_and_attributes():
    c = QSGD()
    assert (c.levels, c.bucket_size, c.scope) == (16, 512, "tensor")
    assert c.settings == {"levels": 16, "bucket_size": 512, "scope": "tensor"}
    assert QSGD.name == "qsgd" and QSGD.aggregations == ("mean", "weighted")
    assert QSGD.error_feedback is False and QSGD.directions == ("up", "updown")
    assert make_compressor("qsgd", levels=4, bucket_size=0) == QSGD(4, 0)
    table = methods()
    assert table["qsgd_up"].up == "qsgd" and table["qsgd_up"].down == "identity"
    assert table["qsgd_updown"].down == "qsgd" and not table["qsgd_updown"].accumulate_up


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4", None, 2 ** 31])
def test_levels_are_validated(bad):
    with pytest.raises((TypeError, ValueError), match="levels must be an integer in"):
        QSGD(levels=bad)


@pytest.mark.parametrize("bad", [-1, 2.0, True, "512", None])
def test_bucket_size_and_scope_are_validated(bad):
    with pytest.raises((TypeError, ValueError), match="bucket_size must be an integer >= 0"):
        QSGD(bucket_size=bad)
    with pytest.raises(ValueError, match="scope must be one of"):
        QSGD(scope="layer")


def test_needs_a_generator_and_finite_updates():
    c = QSGD()
    state = c.init(SPEC)
    x = np.ones(SPEC.size, np.float32)
    for rng in (None, 3, np.random.RandomState(0)):
        with pytest.raises(ValueError, match="rng"):
            c.compress(x, state, rng)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[121] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            c.compress(y, state, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        c.compress(np.ones(5, np.float32), state, np.random.default_rng(0))


@pytest.mark.parametrize("dtype, value", [(np.float32, 3e38), (np.float64, 1e200)])
def test_overflowing_norm_is_rejected(dtype, value):
    """float32: the float64 norm 4.2e38 exceeds the float32 maximum; float64: the sum of squares overflows."""
    x = np.full((1, 2), value, dtype)
    for function in (kernels.qsgd_quantize, kernels.qsgd_quantize_numpy):
        with pytest.raises(ValueError, match="norm overflows"):
            run_kernel(function, x, kernels.bucket_offsets((0, 2), 0), 4, np.zeros((1, 2)))


# ----------------------------------------------------------------------------------------------------
# buckets, Elias omega code, hand-computed quantization
# ----------------------------------------------------------------------------------------------------

def test_bucket_offsets():
    np.testing.assert_array_equal(kernels.bucket_offsets((0, 1500, 1500, 2000), 512),
                                  [0, 512, 1024, 1500, 2000])
    np.testing.assert_array_equal(kernels.bucket_offsets((0, 1500, 1500, 2000), 0), [0, 1500, 2000])
    np.testing.assert_array_equal(kernels.bucket_offsets((0, 5, 10), 5), [0, 5, 10])
    np.testing.assert_array_equal(kernels.bucket_offsets((0, 3), 100), [0, 3])
    np.testing.assert_array_equal(kernels.bucket_offsets((0, 0), 4), [0])
    assert QSGD(4, 50).bucket_offsets(QSGD(4, 50).init(SPEC)).tolist() == [0, 50, 100, 120, 124]
    assert QSGD(4, 50, scope="global").bucket_offsets(QSGD(scope="global").init(SPEC)).tolist() == \
        [0, 50, 100, 124]


def test_elias_omega_hand_codes():
    known = {1: "0", 2: "100", 3: "110", 4: "101000", 7: "101110", 8: "1110000", 16: "10100100000",
             100: "1011011001000", 1000: "11100111111010000"}
    for value, code in known.items():
        assert omega_reference(value) == code
        stream = np.zeros(4, np.uint8)
        end = kernels.write_elias_omega(stream, 3, value)
        assert end == 3 + len(code) and bit_string(stream, end)[3:] == code, value
        assert kernels.elias_omega_bits(value) == len(code)
        assert kernels.read_elias_omega(stream, 3, end) == (value, end)


def test_elias_omega_lengths_and_round_trip():
    rng = np.random.default_rng(0)
    values = np.concatenate([np.arange(1, 5000), 2 ** np.arange(1, 62), 2 ** np.arange(1, 62) - 1,
                             rng.integers(1, 2 ** 62, 200), [2 ** 62 - 1]]).astype(np.int64)
    expected = np.array([len(omega_reference(int(v))) for v in values])
    np.testing.assert_array_equal([kernels.elias_omega_bits(v) for v in values], expected)
    np.testing.assert_array_equal(kernels.elias_omega_bits_numpy(values), expected)
    np.testing.assert_array_equal([kernels.elias_omega_bits.py_func(v) for v in values[:300]], expected[:300])
    stream = np.zeros((int(expected.sum()) + 7) // 8, np.uint8)
    offset = 0
    for v in values:
        offset = kernels.write_elias_omega(stream, offset, v)
    assert offset == expected.sum()
    assert bit_string(stream, offset) == "".join(omega_reference(int(v)) for v in values)
    offset = 0
    for v in values:
        got, offset = kernels.read_elias_omega(stream, offset, stream.size * 8)
        assert got == v
    for bad in (0, -3, 2 ** 62):
        with pytest.raises(ValueError, match="Elias omega codes integers"):
            kernels.elias_omega_bits(bad)
        with pytest.raises(ValueError, match="Elias omega codes integers"):
            kernels.elias_omega_bits_numpy([5, bad])
    with pytest.raises(ValueError, match="past the end"):
        kernels.read_elias_omega(np.array([0b10100100], np.uint8), 0, 8)     # 16 cut after 8 bits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hand_computed_quantization_and_code(dtype):
    """v = (0.5, -0.5, 0.5, -0.5): norm 1, s = 3, r = 1.5 everywhere: level 2 where u < 0.5, else 1."""
    c = QSGD(levels=3, bucket_size=0)
    x = np.array([[0.5, -0.5, 0.5, -0.5]], dtype)
    uniforms = np.array([[0.49, 0.5, 0.51, 0.0]])
    decoded, norms, signed, bits = run_kernel(kernels.qsgd_quantize, x, kernels.bucket_offsets((0, 4), 0), 3,
                                              uniforms)
    assert norms.tolist() == [[1.0]] and signed.tolist() == [[2, -1, 1, -2]]
    expected = np.array([2 / 3, -1 / 3, 1 / 3, -2 / 3]).astype(dtype)       # dtype(1.0 * (level / 3))
    assert_bitwise(decoded[0], expected, "decoded")
    width = 8 * np.dtype(dtype).itemsize
    # per entry: omega(gap 1) = 0, sign, omega(level): 2 -> 100, 1 -> 0; end marker omega(4 - 3) = 0
    code = float_pattern(1.0, dtype) + "0" "0" "100" + "0" "1" "0" + "0" "0" "0" + "0" "1" "100" + "0"
    assert bits[0] == width + 17 == len(code)
    message = QSGDMessage((0, 4), 3, 0, norms[0], signed[0])
    stream, n_bits = message.encode_with_bit_count()
    assert n_bits == len(code) and bit_string(stream, n_bits) == code
    assert_bitwise(message.to_dense(), expected, "to_dense")
    # the compressor draws its own uniforms; its result must be one of the two roundings per entry
    compressed, _ = c.compress(x, c.init(4), np.random.default_rng(0))
    assert set(np.abs(compressed.fields["signed_levels"][0]).tolist()) <= {1, 2}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_levels_zero_buckets_and_end_markers(dtype):
    """Integer ratios round deterministically; an all-zero bucket sends its norm only; a nonzero bucket
    whose levels all round to 0 sends its norm and the end marker omega(n + 1)."""
    offsets = kernels.bucket_offsets((0, 4, 8, 12), 0)
    x = np.array([[3, -4, 0, 0, 0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5]], dtype)
    s = 5     # bucket 0: norm 5, r = (3, 4, 0, 0); bucket 2: norm 1, r = 2.5 -> 2 or 3
    uniforms = np.full((1, 12), 0.999)
    decoded, norms, signed, bits = run_kernel(kernels.qsgd_quantize, x, offsets, s, uniforms)
    assert norms.tolist() == [[5.0, 0.0, 1.0]]
    assert signed.tolist() == [[3, -4, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2]]
    assert decoded[0, 4:8].tobytes() == np.zeros(4, dtype).tobytes()           # +0.0, not -0.0
    F = 8 * np.dtype(dtype).itemsize
    # bucket 0: (omega 1 + sign + omega 3 = 1+1+3) + (1+1+omega 4 = 6) + end omega(4 - 1 = 3) = 3
    # bucket 1: F; bucket 2: 4 x (1 + 1 + 3) + end omega 1
    assert bits[0] == (F + 5 + 8 + 3) + F + (F + 20 + 1)
    # s = 1, r = 0.5 and u >= 0.5 everywhere: all levels 0, but the norm is sent with the marker omega(5)
    x1 = np.full((1, 4), 0.5, dtype)
    decoded, norms, signed, bits = run_kernel(kernels.qsgd_quantize, x1, kernels.bucket_offsets((0, 4), 0), 1,
                                              np.full((1, 4), 0.5))
    assert norms[0, 0] == 1 and not signed.any() and bits[0] == F + len(omega_reference(5)) == F + 6
    message = QSGDMessage((0, 4), 1, 0, norms[0], signed[0])
    check_message(message, dtype, 4)


def test_negative_zero_and_clamp():
    """-0.0 gets level 0 and decodes to +0.0; a single entry has r = s exactly (level s)."""
    x = np.array([[-0.0, 0.0, -2.5]], np.float64)
    decoded, norms, signed, _ = run_kernel(kernels.qsgd_quantize, x, kernels.bucket_offsets((0, 3), 0), 7,
                                           np.zeros((1, 3)))
    assert norms[0, 0] == 2.5 and signed.tolist() == [[0, 0, -7]]
    assert decoded[0].tobytes() == np.array([0.0, 0.0, -2.5]).tobytes()


# ----------------------------------------------------------------------------------------------------
# analytic bits (the paper's bound) and measured bits
# ----------------------------------------------------------------------------------------------------

def test_analytic_bits_hand_computed():
    # n = 16, s = 4: s (s + sqrt n) = 32, 2 (16 + 16) / 32 = 2, log2 2 = 1: (3 + 1.5) 32 + 32 = 176
    assert qsgd_module.bucket_bound_bits(4, 16) == 176.0
    # n = 4, s = 2: 2 (2 + 2) = 8, 2 (4 + 4) / 8 = 2: 4.5 * 8 + 32 = 68
    assert qsgd_module.bucket_bound_bits(2, 4) == 68.0
    # s = sqrt n = 1000: 9 n + 32
    assert qsgd_module.bucket_bound_bits(1000, 10 ** 6) == 9_000_032.0
    # n = 1, s = 1: 1 (1 + 1) = 2, 2 (1 + 1) / 2 = 2: 4.5 * 2 + 32 = 41
    assert qsgd_module.bucket_bound_bits(1, 1) == 41.0
    assert qsgd_module.bucket_bound_bits(16, 0) == 0.0
    # a message sums its buckets: segments (16, 16, 4) with d = 16 and s = 4 -> 176 + 176 + bound(4, 4)
    n4 = 4 * (4 + 2)
    bound4 = (3 + 1.5 * math.log2(2 * (16 + 4) / n4)) * n4 + 32
    c = QSGD(4, 16)
    compressed, _ = c.compress(np.ones(36, np.float32), c.init(Layout((0, 32, 36))), np.random.default_rng(0))
    assert compressed.analytic_bits[0] == 176.0 * 2 + bound4
    assert compressed.message(0).analytic_bits() == compressed.analytic_bits[0]


@pytest.mark.parametrize("levels, bucket", [(316, 0), (16, 512)])
def test_encoded_bits_of_a_normal_vector(levels, bucket):
    """On a 1e5-entry normal vector the real code is well below the bound and below 4 bits per entry."""
    n = 100_000
    x = np.random.default_rng(5).standard_normal(n).astype(np.float32)
    c = QSGD(levels, bucket, scope="global")
    compressed, _ = c.compress(x, c.init(n), np.random.default_rng(2))
    encoded, bound = compressed.encoded_bits[0], compressed.analytic_bits[0]
    assert 1.5 * n < encoded < min(bound, 4 * n), (encoded, bound)


# ----------------------------------------------------------------------------------------------------
# unbiasedness and variance
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("levels, bucket", [(2, 16), (1, 0), (16, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unbiased(levels, bucket, dtype):
    """T = 20000 draws of one fixed vector (rows of one batch). Per entry, Q_i = (norm / s) sign(v_i) L_i
    with L_i - l_i ~ Bernoulli(f_i), f_i = r_i - l_i, so Var(Q_i) = (norm / s)^2 f_i (1 - f_i) and the mean
    of T draws has standard error sqrt(Var / T). Every entry must lie within 5 standard errors (plus the
    float rounding of the decoded values) of v_i: with 64 entries the chance of a false alarm is below
    1e-4, and the seed is fixed, so the test is deterministic. The mean squared error must respect the
    paper's bound min(n / s^2, sqrt(n) / s) ||v||^2 per bucket (lemma 3.1)."""
    T, P = 20_000, 64
    rng = np.random.default_rng(1)
    v = (rng.standard_normal(P) * rng.choice([0.01, 1.0, 30.0], P)).astype(dtype)
    v[5] = 0
    c = QSGD(levels, bucket, scope="global")
    state = c.init(P)
    compressed, _ = c.compress(np.tile(v, (T, 1)), state, np.random.default_rng(7))
    offsets = c.bucket_offsets(state)
    norms = compressed.fields["norms"][0].astype(np.float64)
    per_entry = np.repeat(norms, np.diff(offsets))
    ratio = np.abs(v.astype(np.float64)) / per_entry * levels
    fraction = ratio - np.floor(ratio)
    standard_error = per_entry / levels * np.sqrt(fraction * (1 - fraction) / T)
    mean = np.array([math.fsum(column) / T for column in compressed.decoded.T.astype(np.float64)])
    # the decoded values are rounded to the dtype (bias <= eps/2 of the larger one, norm (l + 1) / s); the
    # mean is an exactly rounded sum (fsum) and one division; in float64 the norm of a one-entry bucket may
    # be 1 ulp off |v_i| (sqrt of a rounded square), which the same eps term covers
    slack = (np.finfo(dtype).eps + 20 * np.finfo(np.float64).eps) * per_entry / levels * (np.floor(ratio) + 1)
    error = np.abs(mean - v)
    assert np.all(error <= 5 * standard_error + slack), np.max((error - slack) / (standard_error + 1e-300))
    assert np.any(standard_error > 0)
    squared = ((compressed.decoded.astype(np.float64) - v) ** 2).mean(axis=0)
    for b in range(offsets.size - 1):
        n = offsets[b + 1] - offsets[b]
        bound = min(n / levels ** 2, math.sqrt(n) / levels) * np.sum(v[offsets[b]:offsets[b + 1]]
                                                                     .astype(np.float64) ** 2)
        assert squared[offsets[b]:offsets[b + 1]].sum() <= 1.05 * bound + 1e-300, b


# ----------------------------------------------------------------------------------------------------
# messages
# ----------------------------------------------------------------------------------------------------

def updates_strategy(size, dtype):
    width = 32 if dtype == np.float32 else 64
    general = st.floats(-1e6, 1e6, width=width, allow_subnormal=True)
    special = st.sampled_from([0.0, -0.0, 0.25, -0.25, 1.0, 1e-30, -3e-38])
    return arrays(dtype, size, elements=st.one_of(general, special))


@pytest.mark.parametrize("compressor", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", [SPEC, ODD_LAYOUT], ids=["spec", "odd"])
def test_round_trip_hypothesis(compressor, dtype, layout):
    size = layout.size

    @SETTINGS
    @given(updates_strategy(size, dtype), st.integers(0, 2 ** 32 - 1))
    def run(x, seed):
        state = compressor.init(layout)
        message, _ = one(compressor, x, state, np.random.default_rng(seed))
        check_message(message, dtype, size)
        assert message.format == MessageFormat("qsgd", state.segment_offsets, np.dtype(dtype).name,
                                               options=(("levels", compressor.levels),
                                                        ("bucket_size", compressor.bucket_size)))

    run()


def test_message_validation_and_corrupt_streams():
    norms = np.array([1.0, 0.0], np.float32)
    levels = np.array([1, -2, 0, 0], np.int32)
    good = QSGDMessage((0, 2, 4), 2, 0, norms, levels)
    with pytest.raises(ValueError, match="one norm per bucket"):
        QSGDMessage((0, 2, 4), 2, 0, norms[:1], levels)
    with pytest.raises(ValueError, match="levels for a vector"):
        QSGDMessage((0, 2, 4), 2, 0, norms, levels[:3])
    with pytest.raises(ValueError, match=r"levels must lie in \[-2, 2\]"):
        QSGDMessage((0, 2, 4), 2, 0, norms, np.array([3, 0, 0, 0]))
    with pytest.raises(ValueError, match="norm is 0 has nonzero levels"):
        QSGDMessage((0, 2, 4), 2, 0, norms, np.array([1, 0, 0, 1]))
    for bad in (-1.0, -0.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="norms must be finite"):
            QSGDMessage((0, 2, 4), 2, 0, np.array([bad, 0.0], np.float32), levels * 0)
    with pytest.raises(ValueError, match="levels must be an integer"):
        QSGDMessage((0, 2, 4), 0, 0, norms, levels)
    with pytest.raises(ValueError, match="float32 or float64"):
        QSGDMessage((0, 2, 4), 2, 0, norms.astype(np.float16), levels)
    stream = good.encode()
    assert decode(stream, good.format) == good
    with pytest.raises(ValueError, match="ends|past the end"):
        decode(stream[:3], good.format)                                 # inside the first norm
    with pytest.raises(ValueError, match="ends|past the end"):
        decode(stream[:5], good.format)                                 # inside the entries
    with pytest.raises(ValueError, match="bytes"):
        decode(np.concatenate([stream, [0]]).astype(np.uint8), good.format)
    with pytest.raises(ValueError, match="options"):
        decode(stream, MessageFormat("qsgd", (0, 2, 4), "float32"))
    with pytest.raises(ValueError, match="beyond s"):
        decode(stream, MessageFormat("qsgd", (0, 2, 4), "float32",
                                     options=(("levels", 1), ("bucket_size", 0))))
    # a gap past the end of a bucket of 2: norm 1.0f, then omega(4) = 101000
    corrupt = np.zeros(5, np.uint8)
    offset = kernels.write_uint(corrupt, 0, int(np.float32(1).view(np.uint32)), 32)
    kernels.write_elias_omega(corrupt, offset, 4)
    with pytest.raises(ValueError, match="jumps past the end"):
        decode(corrupt, MessageFormat("qsgd", (0, 2), "float32", options=(("levels", 2), ("bucket_size", 0))))


def test_message_of_compressed_rows():
    c = QSGD(4, 10)
    x = np.random.default_rng(0).standard_normal((3, SPEC.size)).astype(np.float32)
    compressed, _ = c.compress(x, c.init(SPEC), np.random.default_rng(1))
    assert isinstance(compressed, Compressed) and compressed.rows == 3
    assert compressed.fields["signed_levels"].dtype == np.int16
    assert compressed.fields["norms"].shape == (3, 13)                # buckets: 12 of W (120), 1 of b (4)
    for row in range(3):
        message = compressed.message(row)
        assert_bitwise(message.to_dense(), compressed.decoded[row], f"row {row}")
        assert message.encoded_bits() == compressed.encoded_bits[row]
        check_message(message, np.float32, SPEC.size)
    with pytest.raises(IndexError):
        compressed.message(3)
    assert QSGD(40000).compress(x, QSGD(40000).init(SPEC), np.random.default_rng(1))[0] \
        .fields["signed_levels"].dtype == np.int32


# ----------------------------------------------------------------------------------------------------
# batches, randomness
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compressor", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_residuals", [False, True])
def test_batch_equals_row_by_row(compressor, dtype, with_residuals):
    rng = np.random.default_rng(11)
    updates = rng.standard_normal((5, SPEC.size)).astype(dtype)
    updates[:, ::7] = 0
    updates[2] = 0.0                                               # an all-zero client
    residuals = (rng.standard_normal((5, SPEC.size)) * 0.1).astype(dtype) if with_residuals else None
    state = compressor.init(SPEC)
    if with_residuals:
        result, feedback = ErrorFeedback(compressor).compress(updates, ErrorFeedbackState(state, residuals),
                                                              np.random.default_rng(3))
    else:
        result, _ = compressor.compress(updates, state, np.random.default_rng(3))
    row_rng = np.random.default_rng(3)
    for row in range(5):
        if with_residuals:
            single, new_state = ErrorFeedback(compressor).compress(
                updates[row], ErrorFeedbackState(state, residuals[row]), row_rng)
            assert_bitwise(feedback.residual[row], new_state.residual, f"residual row {row}")
        else:
            single, _ = compressor.compress(updates[row], state, row_rng)
        message = single.message(0)
        assert_bitwise(result.decoded[row], message.to_dense(), f"decoded row {row}")
        assert result.encoded_bits[row] == message.encoded_bits() == single.encoded_bits[0]
        assert result.analytic_bits[row] == message.analytic_bits()
    assert result.encoded_bits.dtype == np.int64 and result.analytic_bits.dtype == np.float64


def test_uniforms_consumed_row_by_row():
    """K rows take exactly K P uniforms, row r the r-th block of P, whatever the values."""
    c = QSGD(3, 8)
    x = np.random.default_rng(0).standard_normal((4, SPEC.size))
    x[1] = 0
    rng = np.random.default_rng(5)
    compressed, _ = c.compress(x, c.init(SPEC), rng)
    reference = np.random.default_rng(5)
    uniforms = reference.random((4, SPEC.size))
    assert rng.random() == reference.random()
    expected = run_kernel(kernels.qsgd_quantize_numpy, x, c.bucket_offsets(c.init(SPEC)), 3, uniforms)
    assert_bitwise(compressed.decoded, expected[0], "decoded")
    assert_bitwise(compressed.fields["signed_levels"], expected[2], "levels")


def test_chunked_uniforms_equal_one_call(monkeypatch):
    c = QSGD(5, 16)
    x = np.random.default_rng(0).standard_normal((7, SPEC.size)).astype(np.float32)
    whole, _ = c.compress(x, c.init(SPEC), np.random.default_rng(9))
    monkeypatch.setattr(qsgd_module, "UNIFORM_BUFFER_BYTES", 8 * SPEC.size * 2)   # two rows per call
    chunked, _ = c.compress(x, c.init(SPEC), np.random.default_rng(9))
    assert_bitwise(chunked.decoded, whole.decoded, "decoded")
    np.testing.assert_array_equal(chunked.encoded_bits, whole.encoded_bits)


# ----------------------------------------------------------------------------------------------------
# kernel == twin
# ----------------------------------------------------------------------------------------------------

def adversarial_rows(dtype):
    """Rows that stress the kernel: zeros, ties, a single spike, tiny, huge and subnormal magnitudes,
    integer ratios (r exactly an integer), mixed signs."""
    finfo = np.finfo(dtype)
    size = 97
    rows = [np.zeros(size), np.ones(size), -np.ones(size), np.r_[np.zeros(size - 1), -3.0],
            np.full(size, finfo.tiny), np.full(size, finfo.smallest_subnormal),
            np.r_[np.full(size // 2, 1e-30), np.full(size - size // 2, 1e30)] if dtype == np.float32
            else np.r_[np.full(size // 2, 1e-150), np.full(size - size // 2, 1e150)],
            np.tile([3.0, -4.0, 0.0, 0.5, -0.5], 20)[:size], np.tile([0.0, -0.0], 49)[:size],
            np.random.default_rng(1).standard_normal(size) * 1e-3]
    return np.array(rows).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("levels", [1, 2, 16, 255, 256, 40000])
@pytest.mark.parametrize("segments, bucket", [((0, 97), 0), ((0, 10, 10, 97), 4), ((0, 97), 1),
                                              ((0, 50, 97), 300)])
def test_kernel_equals_twin(dtype, levels, segments, bucket):
    rng = np.random.default_rng(levels)
    offsets = kernels.bucket_offsets(segments, bucket)
    random_rows = (rng.standard_normal((6, 97)) * rng.choice([1e-3, 1.0, 1e3], (6, 1))).astype(dtype)
    random_rows[:, ::5] = 0
    rows = np.concatenate([random_rows, adversarial_rows(dtype)])
    uniforms = rng.random(rows.shape)
    uniforms[:, ::3] = 0.0                                        # the smallest uniform
    jitted = run_kernel(kernels.qsgd_quantize, rows, offsets, levels, uniforms)
    twin = run_kernel(kernels.qsgd_quantize_numpy, rows, offsets, levels, uniforms)
    for name, a, b in zip(("decoded", "norms", "levels", "bits"), jitted, twin):
        assert_bitwise(a, b, name)
    for row in range(rows.shape[0]):
        assert kernels.qsgd_bits(jitted[2][row], offsets, jitted[1][row], 8 * np.dtype(dtype).itemsize) \
            == jitted[3][row]
    if levels == 16:
        python = run_kernel(kernels.qsgd_quantize.py_func, rows[:3], offsets, levels, uniforms[:3])
        for name, a, b in zip(("decoded", "norms", "levels", "bits"), python, jitted):
            assert_bitwise(a, b[:3], f"py_func {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_on_empty_and_tiny_batches(dtype):
    for rows, size in ((0, 10), (3, 0), (1, 1)):
        x = np.ones((rows, size), dtype)
        offsets = kernels.bucket_offsets((0, size), 4)
        uniforms = np.full((rows, size), 0.5)
        jitted = run_kernel(kernels.qsgd_quantize, x, offsets, 3, uniforms)
        twin = run_kernel(kernels.qsgd_quantize_numpy, x, offsets, 3, uniforms)
        for a, b in zip(jitted, twin):
            assert_bitwise(a, b, f"{rows}x{size}")
    c = QSGD()
    compressed, _ = c.compress(np.zeros(0, dtype), c.init(0), np.random.default_rng(0))
    assert compressed.encoded_bits.tolist() == [0] and compressed.analytic_bits.tolist() == [0.0]
    check_message(compressed.message(0), dtype, 0)


@pytest.mark.parametrize("bad", [np.nan, -np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_rejects_non_finite(bad, dtype):
    x = np.ones((2, 9), dtype)
    x[1, 6] = bad
    offsets = kernels.bucket_offsets((0, 9), 4)
    for function in (kernels.qsgd_quantize, kernels.qsgd_quantize_numpy):
        with pytest.raises(ValueError, match=sparsify.NONFINITE_MESSAGE.replace(" ", ".")):
            run_kernel(function, x, offsets, 4, np.zeros((2, 9)))


def test_kernel_rejects_bad_offsets_and_levels():
    x = np.ones((1, 8))
    for function in (kernels.qsgd_quantize, kernels.qsgd_quantize_numpy):
        with pytest.raises(ValueError, match="bucket_offsets"):
            run_kernel(function, x, np.array([0, 4], np.int64), 4, np.zeros((1, 8)))
        with pytest.raises(ValueError, match="levels"):
            run_kernel(function, x, np.array([0, 8], np.int64), 0, np.zeros((1, 8)))


def test_bit_counter_equals_twin():
    """Random signed levels with long gaps (> 256) and large levels (> 256), zero-norm buckets."""
    rng = np.random.default_rng(3)
    offsets = kernels.bucket_offsets((0, 3000, 3001, 9000), 1000)
    for density in (0.0, 0.001, 0.3, 1.0):
        levels = np.where(rng.random(9000) < density, rng.integers(-70000, 70000, 9000), 0).astype(np.int32)
        norms = rng.random(offsets.size - 1).astype(np.float32)
        norms[1] = 0
        levels[offsets[1]:offsets[2]] = 0
        for width in (32, 64):
            expected = kernels.qsgd_bits_numpy(levels, offsets, norms, width)
            assert kernels.qsgd_bits(levels, offsets, norms, width) == expected
            assert kernels.qsgd_bits.py_func(levels, offsets, norms, width) == expected
        for dtype in (np.float32, np.float64):
            message = QSGDMessage((0, 3000, 3001, 9000), 70000, 1000, norms.astype(dtype), levels)
            assert message.encoded_bits() == kernels.qsgd_bits_numpy(levels, offsets, norms,
                                                                     8 * np.dtype(dtype).itemsize)
            check_message(message, dtype, 9000)
    batch = np.stack([levels, levels * 0])
    np.testing.assert_array_equal(kernels.qsgd_bits_numpy(batch, offsets, np.stack([norms, norms]), 32),
                                  [kernels.qsgd_bits(levels, offsets, norms, 32),
                                   32 * (offsets.size - 1) + sum(kernels.elias_omega_bits(int(n) + 1)
                                                                 for j, n in enumerate(np.diff(offsets))
                                                                 if norms[j] != 0)])


# ----------------------------------------------------------------------------------------------------
# oracle: an independent torch implementation fed the same uniforms
# ----------------------------------------------------------------------------------------------------

@pytest.mark.oracle
@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("levels, bucket", [(16, 512), (4, 0), (1000, 0), (2, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch(torch, scope, levels, bucket, dtype):
    """The torch reference (benchmarks.torch_reference.qsgd) on the uniforms fedsim drew: signed levels
    and encoded bits exactly; norms to 1 ulp and decoded values to 2 ulp of the dtype. torch's float64
    sqrt is not always correctly rounded (about 1% of float64 norms are 1 ulp off on an AVX-512 build), so
    norms, and the decoded values they scale, may differ in the last bit; a level could only differ where
    r lies within ~2^-52 (relative) of an integer or of floor(r) + u, which these random inputs (fixed
    seeds: the test is deterministic) do not produce."""
    from benchmarks import torch_reference as reference

    spec = ParamSpec(("W", "b", "V"), ((40, 50), (50,), (3, 700)))
    c = QSGD(levels, bucket, scope=scope)
    state = c.init(spec)
    rng = np.random.default_rng(21)
    x = (rng.standard_normal((4, spec.size)) * rng.choice([1e-4, 1.0, 50.0], (4, 1))).astype(dtype)
    x[:, ::9] = 0
    x[1, :2000] = 0                                              # zero buckets
    compressed, _ = c.compress(x, state, np.random.default_rng(5))
    uniforms = np.random.default_rng(5).random(x.shape)          # the same draws
    decoded, norms, signed, bits = reference.qsgd(torch.from_numpy(x), state.segment_offsets, bucket,
                                                  levels, torch.from_numpy(uniforms), 8 * x.itemsize)
    np.testing.assert_array_equal(signed.numpy(), compressed.fields["signed_levels"].astype(np.int64))
    np.testing.assert_array_equal(bits.numpy(), compressed.encoded_bits)
    np.testing.assert_array_max_ulp(norms.numpy(), compressed.fields["norms"], maxulp=1)
    np.testing.assert_array_max_ulp(decoded.numpy(), compressed.decoded, maxulp=2)
    zero = compressed.decoded == 0
    assert_bitwise(decoded.numpy()[zero], compressed.decoded[zero], "zeros (+0.0)")


@pytest.mark.oracle
def test_benchmark_case_validates_and_catches_a_wrong_one(torch):
    """The benchmark case (benchmarks.kernels, "qsgd") validates, and a torch reference run with the wrong
    number of levels is caught before anything is timed."""
    from benchmarks import kernels as benchmark
    from benchmarks import torch_reference as reference
    from benchmarks.common import ValidationError

    case = benchmark.make_case("qsgd", 20_000, "float32", None)
    case.validate()
    inputs = case.inputs
    case.implementations["torch"] = lambda: reference.qsgd(inputs["updates_torch"], (0, 20_000), 512, 15,
                                                           inputs["uniforms_torch"], 32)
    with pytest.raises(ValidationError):
        case.validate()
