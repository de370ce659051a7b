"""STC's message content against the sparsify kernels' NumPy twin (fedsim.kernels.ternary._ternarize_numpy)."""

import numpy as np
import pytest

from fedsim.compress import STC, ceil_product, expected_position_bits
from fedsim.kernels import ternary
from tests.conftest import DTYPES, SPEC, assert_bitwise, check_message, compress_one, random_updates


@pytest.mark.parametrize("dtype", DTYPES)
def test_stc_message_content(dtype):
    rng = np.random.default_rng(0)
    x = random_updates(rng, 1, SPEC.size, dtype)[0]
    compressor = STC(0.1)
    message, _ = compress_one(compressor, x, compressor.init(SPEC))
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
