"""TernGrad (arXiv 1705.07878): exact cases, unbiasedness, the decoded values' form, the wire message's
validation and corrupt streams, and the torch oracle (same uniforms: codes, scales and decoded values
exact). The kernels are tests/kernels/test_terngrad.py."""

import math

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from fedsim.compress import TernGrad, TernGradMessage, decode
from tests.compress.test_contract import ODD_LAYOUT, SETTINGS, cases
from tests.conftest import DTYPES, ORACLE_SPEC, SPEC, assert_bitwise, check_message, compress_one, updates_strategy

CONFIGS = SETTINGS["terngrad"]


def clipped_magnitudes(x, clip):
    """min(|x|, b) with b from a plain float64 std (np.std: another summation order; for the statistics)."""
    if clip == 0 or x.size == 0:
        return np.abs(x).astype(np.float64)
    bound = clip * float(np.std(x.astype(np.float64)))
    return np.minimum(np.abs(x).astype(np.float64), bound) if bound > 0 else np.abs(x).astype(np.float64)


def test_clip_is_kept_as_a_float():
    assert TernGrad(clip=2).clip == 2.0 and isinstance(TernGrad(clip=2).clip, float)


# ----------------------------------------------------------------------------------------------------
# exact cases
# ----------------------------------------------------------------------------------------------------

def test_all_zero_and_empty_segments_send_the_scale_only():
    compressor = TernGrad()
    state = compressor.init(ODD_LAYOUT)
    x = np.zeros(ODD_LAYOUT.size, np.float32)
    message, _ = compress_one(compressor, x, state, np.random.default_rng(0))
    assert message.encoded_bits() == 32 * ODD_LAYOUT.n_segments
    assert np.all(message.scales == 0) and not np.any(message.codes)
    x[13] = -2.0                                  # one nonzero in the segment of 5 (entries 10..14)
    message, _ = compress_one(compressor, x, state, np.random.default_rng(0))
    assert message.scales[5] == 2.0 and message.codes[13] == -1 and np.count_nonzero(message.codes) == 1
    assert message.encoded_bits() == 32 * ODD_LAYOUT.n_segments + 8
    check_message(message, np.float32, ODD_LAYOUT.size)


# ----------------------------------------------------------------------------------------------------
# unbiasedness
# ----------------------------------------------------------------------------------------------------

@cases(CONFIGS)
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

@pytest.mark.parametrize("dtype", DTYPES)
def test_decoded_values_hypothesis(dtype):
    """Decoded values are +-s_j or +0.0, with the sign of x; each segment's largest clipped magnitude is
    sent; without clipping s_j = max |x| over the segment. (Each example goes through every setting.)"""

    @settings(max_examples=40, deadline=None)
    @given(st.sampled_from([SPEC, ODD_LAYOUT]), updates_strategy(SPEC.size, dtype), st.integers(0, 2 ** 32 - 1))
    def run(layout, updates, seed):
        x = np.ascontiguousarray(updates[:layout.size])
        for compressor in CONFIGS:
            note(f"compressor {compressor!r}")
            state = compressor.init(layout)
            message = compressor.compress(x, state, np.random.default_rng(seed))[0].message(0)
            dense = message.to_dense()
            scales = np.repeat(message.scales, state.sizes)
            assert np.all((dense == 0) | (np.abs(dense) == scales))
            assert np.all(np.sign(dense[dense != 0]) == np.sign(x[dense != 0]))
            assert not np.any(np.signbit(dense[dense == 0]))
            for j, (start, stop) in enumerate(state.segments()):
                if stop > start and message.scales[j] > 0:
                    assert np.any(np.abs(dense[start:stop]) == message.scales[j])
            if compressor.clip == 0:
                for j, (start, stop) in enumerate(state.segments()):
                    assert message.scales[j] == (np.abs(x[start:stop]).max() if stop > start else 0)

    run()


def test_message_validation_and_corrupt_streams():
    for segments, codes, scales, message in [((0, 3), [0, 2, 0], [1.0], "ternary codes must be -1, 0 or \\+1"),
                                             ((0, 2, 3), [0, 1, 0], [1.0], "one scale per segment"),
                                             ((0, 2, 3), [0, 1, 0], [0.0, 1.0], "scale 0 but nonzero codes"),
                                             ((0, 3), [0, 1, 0], [-1.0], "finite and >= 0"),
                                             ((0, 4), [0, 1, 0], [1.0], "3 codes for a vector of 4")]:
        with pytest.raises(ValueError, match=message):
            TernGradMessage(segments, np.array(codes), np.array(scales, np.float32))
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
# torch oracle
# ----------------------------------------------------------------------------------------------------

@pytest.mark.oracle
@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("clip", [0.0, 2.5, 0.5])
@pytest.mark.parametrize("dtype", DTYPES)
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
