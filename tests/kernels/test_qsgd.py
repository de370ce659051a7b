"""QSGD's kernels: bucket offsets, the Elias omega code, the quantizer and the bit counter against hand-computed
cases and their NumPy twins, bitwise."""

import numpy as np
import pytest

from fedsim.compress import QSGD, QSGDMessage
from fedsim.compress import qsgd as qsgd_module
from fedsim.kernels import omega, sparsify
from fedsim.kernels import qsgd as kernels
from tests.conftest import DTYPES, SPEC, assert_bitwise, check_message
from tests.kernels.conftest import agree


NONFINITE = sparsify.NONFINITE_MESSAGE.replace(" ", ".")


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


def test_bucket_offsets():
    for segments, bucket, offsets in (((0, 1500, 1500, 2000), 512, [0, 512, 1024, 1500, 2000]),
                                      ((0, 1500, 1500, 2000), 0, [0, 1500, 2000]), ((0, 5, 10), 5, [0, 5, 10]),
                                      ((0, 3), 100, [0, 3]), ((0, 0), 4, [0])):
        np.testing.assert_array_equal(kernels.bucket_offsets(segments, bucket), offsets)
    assert QSGD(4, 50).bucket_offsets(QSGD(4, 50).init(SPEC)).tolist() == [0, 50, 100, 120, 124]
    assert QSGD(4, 50, scope="global").bucket_offsets(QSGD(scope="global").init(SPEC)).tolist() == \
        [0, 50, 100, 124]


def test_elias_omega_hand_codes():
    known = {1: "0", 2: "100", 3: "110", 4: "101000", 7: "101110", 8: "1110000", 16: "10100100000",
             100: "1011011001000", 1000: "11100111111010000"}
    for value, code in known.items():
        assert omega_reference(value) == code
        stream = np.zeros(4, np.uint8)
        end = omega._write_elias_omega(stream, 3, value)
        assert end == 3 + len(code) and bit_string(stream, end)[3:] == code, value
        assert omega._elias_omega_bits(value) == len(code)
        assert omega._read_elias_omega(stream, 3, end) == (value, end)


def test_elias_omega_lengths_and_round_trip():
    rng = np.random.default_rng(0)
    values = np.concatenate([np.arange(1, 5000), 2 ** np.arange(1, 62), 2 ** np.arange(1, 62) - 1,
                             rng.integers(1, 2 ** 62, 200), [2 ** 62 - 1]]).astype(np.int64)
    expected = np.array([len(omega_reference(int(v))) for v in values])
    np.testing.assert_array_equal([omega._elias_omega_bits(v) for v in values], expected)
    np.testing.assert_array_equal(omega._elias_omega_bits_numpy(values), expected)
    np.testing.assert_array_equal([omega._elias_omega_bits.py_func(v) for v in values[:300]], expected[:300])
    stream = np.zeros((int(expected.sum()) + 7) // 8, np.uint8)
    offset = 0
    for v in values:
        offset = omega._write_elias_omega(stream, offset, v)
    assert offset == expected.sum()
    assert bit_string(stream, offset) == "".join(omega_reference(int(v)) for v in values)
    offset = 0
    for v in values:
        got, offset = omega._read_elias_omega(stream, offset, stream.size * 8)
        assert got == v
    for bad in (0, -3, 2 ** 62):
        for call in (lambda: omega._elias_omega_bits(bad), lambda: omega._elias_omega_bits_numpy([5, bad])):
            with pytest.raises(ValueError, match="Elias omega codes integers"):
                call()
    with pytest.raises(ValueError, match="past the end"):
        omega._read_elias_omega(np.array([0b10100100], np.uint8), 0, 8)     # 16 cut after 8 bits


@pytest.mark.parametrize("dtype", DTYPES)
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


@pytest.mark.parametrize("dtype", DTYPES)
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


@pytest.mark.parametrize("dtype", DTYPES)
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
    jitted = agree((kernels.qsgd_quantize, kernels.qsgd_quantize_numpy),
                   lambda function: run_kernel(function, rows, offsets, levels, uniforms),
                   "decoded, norms, levels, bits")
    for row in range(rows.shape[0]):
        assert kernels.qsgd_bits(jitted[2][row], offsets, jitted[1][row], 8 * np.dtype(dtype).itemsize) \
            == jitted[3][row]
    if levels == 16:
        agree((kernels.qsgd_quantize, kernels.qsgd_quantize.py_func),
              lambda function: run_kernel(function, rows[:3], offsets, levels, uniforms[:3]), "py_func")


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_on_empty_and_tiny_batches(dtype):
    for rows, size in ((0, 10), (3, 0), (1, 1)):
        x = np.ones((rows, size), dtype)
        offsets = kernels.bucket_offsets((0, size), 4)
        uniforms = np.full((rows, size), 0.5)
        agree((kernels.qsgd_quantize, kernels.qsgd_quantize_numpy),
              lambda function: run_kernel(function, x, offsets, 3, uniforms), f"{rows}x{size}")
    c = QSGD()
    compressed, _ = c.compress(np.zeros(0, dtype), c.init(0), np.random.default_rng(0))
    assert compressed.encoded_bits.tolist() == [0] and compressed.analytic_bits.tolist() == [0.0]
    check_message(compressed.message(0), dtype, 0)


@pytest.mark.parametrize("bad, match", [(np.nan, NONFINITE), (-np.nan, NONFINITE), (np.inf, NONFINITE),
                                        (-np.inf, NONFINITE), ("huge", "norm overflows")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_rejects_non_finite_and_overflowing_norms(bad, match, dtype):
    """huge: float32's float64 norm 4.2e38 exceeds the float32 maximum; float64's sum of squares overflows."""
    x = np.ones((2, 9), dtype)
    x[1, 6:8] = (3e38 if dtype == np.float32 else 1e200) if bad == "huge" else bad
    for function in (kernels.qsgd_quantize, kernels.qsgd_quantize_numpy):
        with pytest.raises(ValueError, match=match):
            run_kernel(function, x, kernels.bucket_offsets((0, 9), 4), 4, np.zeros((2, 9)))


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
    np.testing.assert_array_equal(kernels._rows_bits_numpy(batch, offsets, np.stack([norms, norms]), 32),
                                  [kernels.qsgd_bits(levels, offsets, norms, 32),
                                   32 * (offsets.size - 1) + sum(omega._elias_omega_bits(int(n) + 1)
                                                                 for j, n in enumerate(np.diff(offsets))
                                                                 if norms[j] != 0)])


def test_kernel_rejects_bad_offsets_and_levels():
    for function in (kernels.qsgd_quantize, kernels.qsgd_quantize_numpy):
        for end, levels, match in ((4, 4, "bucket_offsets"), (8, 0, "levels")):
            with pytest.raises(ValueError, match=match):
                run_kernel(function, np.ones((1, 8)), np.array([0, end], np.int64), levels, np.zeros((1, 8)))
