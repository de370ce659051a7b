"""QSGD (arXiv 1610.02132): the paper's bit bound and measured bits, unbiasedness, its message format,
batch fields, validation and corrupt streams, and (oracle) an independent torch implementation. The
quantization kernel and its code are tests/kernels/test_qsgd.py."""

import math

import numpy as np
import pytest

from fedsim.compress import (
    QSGD,
    Compressed,
    Layout,
    MessageFormat,
    QSGDMessage,
    decode,
)
from fedsim.compress import qsgd as qsgd_module
from fedsim.kernels import bitstream, omega
from fedsim.params import ParamSpec
from tests.compress.test_contract import ODD_LAYOUT, SETTINGS
from tests.conftest import DTYPES, SPEC, assert_bitwise


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
@pytest.mark.parametrize("dtype", DTYPES)
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

@pytest.mark.parametrize("dtype", DTYPES)
def test_message_format(dtype):
    """The receiver's format: the segments, the dtype, and the levels and bucket size as options."""
    for compressor in SETTINGS["qsgd"]:
        for layout in (SPEC, ODD_LAYOUT):
            state = compressor.init(layout)
            x = np.random.default_rng(0).standard_normal(layout.size).astype(dtype)
            message = compressor.compress(x, state, np.random.default_rng(1))[0].message(0)
            assert message.format == MessageFormat("qsgd", state.segment_offsets, np.dtype(dtype).name,
                                                   options=(("levels", compressor.levels),
                                                            ("bucket_size", compressor.bucket_size)))


def test_fields_of_compressed_rows():
    c = QSGD(4, 10)
    x = np.random.default_rng(0).standard_normal((3, SPEC.size)).astype(np.float32)
    compressed, _ = c.compress(x, c.init(SPEC), np.random.default_rng(1))
    assert isinstance(compressed, Compressed) and compressed.rows == 3
    assert compressed.fields["signed_levels"].dtype == np.int16
    assert compressed.fields["norms"].shape == (3, 13)                # buckets: 12 of W (120), 1 of b (4)
    assert QSGD(40000).compress(x, QSGD(40000).init(SPEC), np.random.default_rng(1))[0] \
        .fields["signed_levels"].dtype == np.int32


def test_message_validation_and_corrupt_streams():
    norms = np.array([1.0, 0.0], np.float32)
    levels = np.array([1, -2, 0, 0], np.int32)
    good = QSGDMessage((0, 2, 4), 2, 0, norms, levels)
    for (s, norms_sent, levels_sent), message in [
        ((2, norms[:1], levels), "one norm per bucket"),
        ((2, norms, levels[:3]), "levels for a vector"),
        ((2, norms, np.array([3, 0, 0, 0])), r"levels must lie in \[-2, 2\]"),
        ((2, norms, np.array([1, 0, 0, 1])), "norm is 0 has nonzero levels"),
        *(((2, np.array([bad, 0.0], np.float32), levels * 0), "norms must be finite")
          for bad in (-1.0, -0.0, np.inf, np.nan)),
        ((0, norms, levels), "levels must be an integer"),
        ((2, norms.astype(np.float16), levels), "float32 or float64"),
    ]:
        with pytest.raises(ValueError, match=message):
            QSGDMessage((0, 2, 4), s, 0, norms_sent, levels_sent)
    stream = good.encode()
    assert decode(stream, good.format) == good
    for sent, format_, message in [
        (stream[:3], good.format, "ends|past the end"),                 # inside the first norm
        (stream[:5], good.format, "ends|past the end"),                 # inside the entries
        (np.concatenate([stream, [0]]).astype(np.uint8), good.format, "bytes"),
        (stream, MessageFormat("qsgd", (0, 2, 4), "float32"), "options"),
        (stream, MessageFormat("qsgd", (0, 2, 4), "float32", options=(("levels", 1), ("bucket_size", 0))),
         "beyond s"),
    ]:
        with pytest.raises(ValueError, match=message):
            decode(sent, format_)
    # a gap past the end of a bucket of 2: norm 1.0f, then omega(4) = 101000
    corrupt = np.zeros(5, np.uint8)
    offset = bitstream.write_uint(corrupt, 0, int(np.float32(1).view(np.uint32)), 32)
    omega._write_elias_omega(corrupt, offset, 4)
    with pytest.raises(ValueError, match="jumps past the end"):
        decode(corrupt, MessageFormat("qsgd", (0, 2), "float32", options=(("levels", 2), ("bucket_size", 0))))


# ----------------------------------------------------------------------------------------------------
# oracle: an independent torch implementation fed the same uniforms
# ----------------------------------------------------------------------------------------------------

@pytest.mark.oracle
@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("levels, bucket", [(16, 512), (4, 0), (1000, 0), (2, 7)])
@pytest.mark.parametrize("dtype", DTYPES)
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
