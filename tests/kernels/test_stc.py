"""STC's message content against the sparsify kernels' NumPy twin (fedsim.kernels.ternary._ternarize_numpy);
moved verbatim from tests/compress/test_compressors.py."""

import numpy as np
import pytest

from fedsim.compress import STC, ceil_product, decode, expected_position_bits
from fedsim.kernels import ternary
from fedsim.params import ParamSpec
from tests.conftest import assert_bitwise, random_updates


SPEC = ParamSpec(("W", "b"), ((30, 4), (4,)))          # 124 entries: two segments


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
        count, mu = ternary._ternarize_numpy(x[start:stop], k, positions, signs)
        expected = np.zeros(stop - start, dtype)
        expected[positions[:count]] = signs[:count] * dtype(mu)
        assert_bitwise(dense[start:stop], expected, f"segment {j}")
        assert message.mu[j] == mu
    np.testing.assert_array_equal(message.counts, [12, 1])
    sizes = np.array([120, 4])
    analytic = sum(c * (expected_position_bits(c / n) + 1) + 32 for c, n in zip([12, 1], sizes))
    assert analytic_of(message) == pytest.approx(float(analytic), rel=1e-14)

