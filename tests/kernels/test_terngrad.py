"""TernGrad's kernels: ternarization, clipping, the ternary code and bit counts against hand-computed cases
and their NumPy twins, bitwise."""

import math

import numpy as np
import pytest

from fedsim.compress import TernGrad
from fedsim.kernels import sparsify
from fedsim.kernels import terngrad as kernels
from tests.conftest import DTYPES, SPEC, assert_bitwise, compress_one
from tests.kernels.conftest import agree


LOG2_3 = math.log2(3.0)


def run_kernel(function, updates, offsets, uniforms, clip):
    rows, size = updates.shape
    decoded = np.full((rows, size), np.nan, updates.dtype)      # every entry must be written
    scales = np.full((rows, len(offsets) - 1), np.nan, updates.dtype)
    encoded = np.full(rows, -1, np.int64)
    bits = 32 if updates.dtype == np.float32 else 64
    function(updates, np.asarray(offsets, np.int64), uniforms, clip, bits, decoded, scales, encoded)
    return decoded, scales, encoded


@pytest.mark.parametrize("dtype", DTYPES)
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


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_and_single_entry_segments_are_not_clipped(dtype):
    # sigma = 0: clipping to [0, 0] would erase the segment; it is sent unclipped (scale = |x|, all kept)
    x = np.array([[3.0, 3.0, 3.0, -2.0]], dtype)
    decoded, scales, _ = run_kernel(kernels.terngrad_batch, x, [0, 3, 4], np.full((1, 4), 0.999), 2.5)
    assert_bitwise(decoded, x, "constant segment and single entry unchanged")
    assert_bitwise(scales, np.array([[3.0, 2.0]], dtype), "scales")
    twin, _, _ = run_kernel(kernels.terngrad_batch_numpy, x, [0, 3, 4], np.full((1, 4), 0.999), 2.5)
    assert_bitwise(twin, decoded, "twin")


def test_bit_counts():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(SPEC.size)
    message, _ = compress_one(TernGrad(), x, TernGrad().init(SPEC), rng)
    assert message.encoded_bits() == (64 + 8 * 24) + (64 + 7)        # float64 scales; 120 = 24 groups; 4 -> 7
    assert message.analytic_bits() == (LOG2_3 * 120 + 32) + (LOG2_3 * 4 + 32)
    message, _ = compress_one(TernGrad(scope="global"), x.astype(np.float32), TernGrad(scope="global").init(SPEC),
                              rng)
    assert message.encoded_bits() == 32 + 8 * 24 + 7 and message.analytic_bits() == LOG2_3 * 124 + 32
    for count in range(40):
        remainder = count % 5
        expected = 8 * (count // 5) + (3 ** remainder - 1).bit_length()     # ceil(log2 3^r) bits for r digits
        assert kernels._ternary_code_bits(count) == expected
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
        functions = (kernels.terngrad_batch, kernels.terngrad_batch_numpy, kernels.terngrad_batch.py_func)
        agree(functions[:3 if updates.size <= 5000 else 2],
              lambda function: run_kernel(function, updates, offsets, uniforms, clip),
              f"{name} ({updates.dtype}, clip {clip}): decoded, scales, encoded bits")


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
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_rejects_non_finite(bad, dtype):
    x = np.ones((2, 9), dtype)
    x[1, 7] = bad
    for function in (kernels.terngrad_batch, kernels.terngrad_batch.py_func, kernels.terngrad_batch_numpy):
        for clip in (0.0, 2.5):
            with pytest.raises(ValueError, match=sparsify.NONFINITE_MESSAGE):
                run_kernel(function, x, [0, 4, 9], np.zeros((2, 9)), clip)


def ternary_code_reference(codes) -> str:
    """The base-3 code as a bit string, from its definition (module docstring of fedsim.kernels.terngrad)."""
    digits = [2 if c == -1 else int(c) for c in codes]
    groups = [digits[i:i + 5] for i in range(0, len(digits), 5)]
    return "".join(format(sum(d * 3 ** t for t, d in enumerate(g)), f"0{(8, 2, 4, 5, 7)[len(g) % 5]}b")
                   for g in groups)


def test_ternary_code_against_its_definition():
    rng = np.random.default_rng(23)
    for count in list(range(0, 23)) + [1000, 4097]:
        for codes in (rng.integers(-1, 2, count).astype(np.int8), np.full(count, -1, np.int8),
                      np.zeros(count, np.int8)):
            code = ternary_code_reference(codes)
            assert len(code) == kernels._ternary_code_bits(count)
            for offset in (0, 3):
                stream = np.zeros((offset + len(code) + 7) // 8, np.uint8)
                for pack in (kernels.pack_ternary_into, kernels.pack_ternary_into.py_func):
                    stream[:] = 0
                    assert pack(codes, stream, offset) == offset + len(code)
                    assert "".join(map(str, np.unpackbits(stream)))[offset:offset + len(code)] == code
                for unpack in (kernels.unpack_ternary_from, kernels.unpack_ternary_from.py_func):
                    out = np.empty(count, np.int8)
                    assert unpack(stream, offset, count, out) == offset + len(code)
                    assert_bitwise(out, codes, f"unpack {count} at {offset}")
    with pytest.raises(ValueError, match="ternary codes must be"):
        kernels.pack_ternary_into(np.array([0, 2], np.int8), np.zeros(1, np.uint8), 0)
    for stream, count, match in ((np.array([243], np.uint8), 5, "corrupt stream"),
                                 (np.array([0b11000000], np.uint8), 2, "corrupt stream"),   # 12 >= 9
                                 (np.array([0], np.uint8), 6, "bit stream ends")):
        with pytest.raises(ValueError, match=match):
            kernels.unpack_ternary_from(stream, 0, count, np.empty(count, np.int8))
