"""Random-k sparsification: its settings in a federated config, the wire message (positions and values,
bit counts, decoding from the stream alone), the seeds, unbiasedness and selection frequencies (fixed
seeds) and a torch oracle. The seeded position generator and the kernels are tests/kernels/test_randomk.py."""

import math

import numpy as np
import pytest

from fedsim.algorithms.federated import FederatedConfig
from fedsim.compress import Layout, MessageFormat, RandomK, RandomKMessage, decode
from fedsim.compress.base import ceil_product
from fedsim.compress.randomk import SEED_BITS
from fedsim.constraints import descriptions
from tests.compress.test_contract import SETTINGS, cases
from tests.conftest import DTYPES, ORACLE_SPEC, SPEC, assert_bitwise, check_message, message_of, random_updates
from tests.kernels.test_randomk import python_positions


# ----------------------------------------------------------------------------------------------------
# An independent derivation of the positions, in Python integers (the definition in the docstring of
# fedsim.kernels.randomk, written again: no NumPy, no 32-bit halves, a Python set)
# ----------------------------------------------------------------------------------------------------

def python_row_positions(seed, layout, p):
    """Global positions of a row (segment after segment, each in Floyd's order)."""
    result = []
    for j, (start, stop) in enumerate(layout.segments()):
        result += [start + i for i in python_positions(seed, j, stop - start, ceil_product(p, stop - start))]
    return result


# ----------------------------------------------------------------------------------------------------
# settings and class attributes
# ----------------------------------------------------------------------------------------------------

def test_scaling_described_and_the_methods():
    assert "unbiased" in descriptions(RandomK)["scaling"]
    config = FederatedConfig(method="randomk_updown", p_up=0.05, p_down=0.2, compression_scope="global",
                             accumulate_up=True, compressors={"randomk": RandomK(scaling="none")})
    assert config.compressor("up") == RandomK(0.05, scaling="none", scope="global")
    assert config.compressor("down") == RandomK(0.2, scaling="none", scope="global")
    assert config.resolved_method.accumulate_up and not config.resolved_method.accumulate_down


# ----------------------------------------------------------------------------------------------------
# messages
# ----------------------------------------------------------------------------------------------------

@cases(SETTINGS["randomk"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_positions_and_values(compressor, dtype):
    """Each row sends exactly k positions per segment, those of the independent derivation from its seed,
    in increasing order, with the values of x there."""
    rng = np.random.default_rng(3)
    updates = random_updates(rng, 4, SPEC.size, dtype)
    updates[1] = 0.0
    state = compressor.init(SPEC)
    compressed, _ = compressor.compress(updates, state, np.random.default_rng(8))
    layout = state
    ks = np.array([ceil_product(compressor.p, n) for n in layout.sizes])
    for row in range(4):
        message = compressed.message(row)
        assert isinstance(message, RandomKMessage)
        assert message.positions.size == ks.sum() and np.all(np.diff(message.positions) > 0)
        for j, (start, stop) in enumerate(layout.segments()):     # exactly k per segment
            inside = (message.positions >= start) & (message.positions < stop)
            assert inside.sum() == ks[j]
        expected = np.sort(python_row_positions(int(compressed.fields["seeds"][row]), layout, compressor.p))
        np.testing.assert_array_equal(message.positions, expected)
        assert_bitwise(message.values, updates[row][message.positions], "sent values")


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
    for seed, values, scaling, message in [(5, 3, "unbiased", "sends 2 values, got 3"),
                                           (2 ** 64, 2, "unbiased", r"seed must be an integer in \[0, 2\^64 - 1\]"),
                                           (-1, 2, "unbiased", r"seed must be an integer"),
                                           (5, 2, "biased", "scaling must be one of")]:
        with pytest.raises(ValueError, match=message):
            RandomKMessage((0, 10), 0.2, seed, np.zeros(values, np.float32), scaling)
    message = RandomKMessage((0, 10), 0.2, 2 ** 64 - 1, np.array([1.0, -2.0], np.float32))
    assert message.values.flags.writeable is False
    assert decode(message.encode(), message.format) == message
    assert message.encoded_bits() == 64 + 64 and message.analytic_bits() == 64.0


def test_full_budget_sends_everything_and_an_empty_layout_the_seed():
    for scaling in ("unbiased", "none"):
        compressor = RandomK(1.0, scaling=scaling)
        x = random_updates(np.random.default_rng(1), 3, SPEC.size)
        compressed, _ = compressor.compress(x, compressor.init(SPEC), np.random.default_rng(0))
        assert_bitwise(compressed.decoded, x, "p = 1: decoded == x (scale 1)")
    compressor = RandomK(0.5)                                   # an empty layout
    compressed, _ = compressor.compress(np.zeros((2, 0), np.float32), compressor.init(0),
                                        np.random.default_rng(0))
    assert compressed.decoded.shape == (2, 0) and list(compressed.encoded_bits) == [64, 64]
    check_message(message_of(compressed, 1), np.float32, 0)


# ----------------------------------------------------------------------------------------------------
# the Generator: one seed per row, in row order
# ----------------------------------------------------------------------------------------------------

@cases(SETTINGS["randomk"])
def test_one_seed_per_row(compressor):
    """Row r's seed is the Generator's r-th uint64 draw (and a row's seed alone: the message equality of
    test_contract.py's test_batch_equals_row_by_row, on these updates and Generator)."""
    updates = random_updates(np.random.default_rng(11), 5, SPEC.size)
    batch, _ = compressor.compress(updates, compressor.init(SPEC), np.random.default_rng(3))
    expected_seeds = np.random.default_rng(3).integers(0, 2 ** 64 - 1, size=5, dtype=np.uint64, endpoint=True)
    np.testing.assert_array_equal(batch.fields["seeds"], expected_seeds)


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

    compressor = RandomK(p, scaling=scaling, scope=scope)
    state = compressor.init(ORACLE_SPEC)
    layout = state
    updates = np.random.default_rng(1).standard_normal((4, ORACLE_SPEC.size)).astype(dtype)
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
