"""PowerSGD (arXiv 1905.13727): its own settings, full rank and the coupled rows, the message's bits and
wire order, the state's dtype, its checkpoint arrays and the federated methods. The power step against the
paper's formulas, the factors' draws and redraws, the kernels and the torch oracle over several rounds are
tests/kernels/test_powersgd.py."""

import dataclasses

import numpy as np
import pytest

from fedsim.algorithms.federated import FederatedConfig
from fedsim.compress import ErrorFeedback, Layout, decode
from fedsim.compress.base import MessageFormat
from fedsim.compress.powersgd import (
    PowerSGD,
    PowerSGDMessage,
    PowerSGDState,
    matrix_shape,
)
from fedsim.params import ParamSpec
from fedsim.runs import strip_wall_time
from tests.algorithms.test_federated import make_run
from tests.conftest import DTYPES, MATRICES, assert_bitwise
from tests.conftest import SHAPED_SPEC as SPEC       # W (12 x 5), b, conv (6 x 3 x 2), s, e

VECTOR_ENTRIES = 5 + 1                    # b and s, sent as they are


# ----------------------------------------------------------------------------------------------------
# settings and init
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("refused, message", [
    (lambda: PowerSGD(scope="global"), "scope must be one of 'tensor', got 'global'"),
    (lambda: FederatedConfig(method="powersgd_up", compression_scope="global"), "scope"),
    (lambda: FederatedConfig(method="powersgd_up", aggregation="weighted"), "aggregation 'weighted' does not fit"),
    (lambda: PowerSGD().init(100), "ParamSpec"),                        # init needs shapes
    (lambda: PowerSGD().init(Layout((0, 60, 70))), "ParamSpec"),
    (lambda: PowerSGD(rank=6).init(SPEC), r"^powersgd.rank must be an integer in \[1, 5\].*got 6"),   # above min(n, m)
    (lambda: PowerSGDMessage((0, 6), ((3, 2),), 2, np.zeros(3, np.float32), np.zeros(4, np.float32),
                             np.zeros(0, np.float32)), "left has 3 floats"),
    (lambda: decode(np.zeros(10, np.uint8), MessageFormat("powersgd", (0, 120, 124), "float32")),
     r"a powersgd format needs the options shapes and rank, got \(\)"),
], ids=["scope", "config-scope", "aggregation", "int", "layout", "rank", "message-sizes", "format-options"])
def test_refused(refused, message):
    with pytest.raises(ValueError, match=message):
        refused()


def test_init_rank_and_matrix_shapes():
    state = PowerSGD().init(Layout(SPEC.offsets, SPEC.shapes))      # a Layout with shapes will do
    assert state == PowerSGD().init(SPEC) and state.factors is None
    assert PowerSGD(rank=5).init(SPEC).layout.shapes == SPEC.shapes
    assert FederatedConfig(method="powersgd_up", compressors={"powersgd": PowerSGD(rank=1)}).compressor(
        "up") == PowerSGD(1)                                         # the rank from the [powersgd] table
    assert matrix_shape((12, 5)) == (12, 5) and matrix_shape((6, 3, 2)) == (6, 6)
    assert matrix_shape((5,)) is None and matrix_shape(()) is None and matrix_shape((0, 4)) is None


# ----------------------------------------------------------------------------------------------------
# the power step
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_full_rank_reproduces_the_matrix(dtype):
    spec = ParamSpec(("W",), ((9, 4),))
    x = np.random.default_rng(0).standard_normal((2, 36)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    compressor = PowerSGD(rank=4)
    alone, _ = compressor.compress(x[0], compressor.init(spec), np.random.default_rng(1))
    np.testing.assert_allclose(alone.decoded[0], x[0], rtol=0, atol=tol)      # P_hat spans M's columns
    # two senders: P_hat spans the mean's columns, so the mean (not each row) is reproduced
    both, _ = compressor.compress(x, compressor.init(spec), np.random.default_rng(1))
    np.testing.assert_allclose(both.decoded.mean(axis=0), x.mean(axis=0), rtol=0, atol=tol)
    assert not np.allclose(both.decoded, x, rtol=0, atol=1e-2)


def test_rows_are_coupled_through_p_hat():
    compressor = PowerSGD(rank=2)
    state = compressor.init(SPEC)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, SPEC.size)).astype(np.float32)
    alone, _ = compressor.compress(x[0], state, np.random.default_rng(5))
    batch, _ = compressor.compress(x, state, np.random.default_rng(5))
    assert not np.array_equal(batch.decoded[0], alone.decoded[0])      # P_hat depends on both rows
    # identical senders: (P_0 + P_0) / 2 = P_0 exactly, so each row is what one sender alone gets
    twins, twin_state = compressor.compress(np.stack([x[0], x[0]]), state, np.random.default_rng(5))
    _, alone_state = compressor.compress(x[0], state, np.random.default_rng(5))
    for row in range(2):
        assert_bitwise(twins.decoded[row], alone.decoded[0], "identical senders")
    assert twin_state == alone_state
    assert twins.broadcast_bits == 32 * (12 + 6) * 2 and alone.broadcast_bits == 0


# ----------------------------------------------------------------------------------------------------
# messages and bits
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank", [1, 2, 5])
def test_bit_counts(dtype, rank):
    """Each sender sends (n + m) r floats per matrix and its vectors as they are; P_hat is broadcast."""
    compressor = PowerSGD(rank=rank)
    x = np.random.default_rng(rank).standard_normal((3, SPEC.size)).astype(dtype)
    compressed, _ = compressor.compress(x, compressor.init(SPEC), np.random.default_rng(0))
    floats = sum((n + m) * rank for _, n, m in MATRICES) + VECTOR_ENTRIES
    width = 32 if dtype == np.float32 else 64
    np.testing.assert_array_equal(compressed.encoded_bits, width * floats)
    np.testing.assert_array_equal(compressed.analytic_bits, 32.0 * floats)
    assert compressed.broadcast_bits == width * (12 + 6) * rank
    assert all(isinstance(compressed.message(row), PowerSGDMessage) for row in range(3))


def test_message_layout_on_the_wire():
    """The stream is P_hat then Q_k of W, then b, then P_hat and Q_k of conv, then s (float32 patterns)."""
    compressor = PowerSGD(rank=1)
    x = np.random.default_rng(3).standard_normal(SPEC.size).astype(np.float32)
    compressed, _ = compressor.compress(x, compressor.init(SPEC), np.random.default_rng(0))
    message = compressed.message(0)
    words = np.frombuffer(message.encode().tobytes(), ">u4").view(">f4").astype(np.float32)
    want = np.concatenate([message.left[:12], message.right[:5], x[60:65], message.left[12:],
                           message.right[5:], x[101:102]])
    assert_bitwise(words, want, "wire order")


# ----------------------------------------------------------------------------------------------------
# the state: its dtype, its checkpoint arrays
# ----------------------------------------------------------------------------------------------------

def test_state_dtype_must_match():
    compressor = PowerSGD()
    _, state = compressor.compress(np.ones(SPEC.size, np.float32), compressor.init(SPEC), np.random.default_rng(0))
    with pytest.raises(ValueError, match="dtype"):
        compressor.compress(np.ones(SPEC.size), state, np.random.default_rng(0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_checkpoint_arrays(dtype):
    """One Q per matrix segment after the first round; nothing before it; a missing or misshapen Q is
    refused naming it."""
    link = ErrorFeedback(PowerSGD(rank=2))
    state = dataclasses.replace(link.init(SPEC, dtype), residual=np.zeros((3, SPEC.size), dtype))
    x = np.random.default_rng(1).standard_normal((3, SPEC.size)).astype(dtype)
    _, state = link.compress(x, state, np.random.default_rng(2))
    assert isinstance(state.inner, PowerSGDState) and state.inner.factors is not None
    assert set(link.compressor.state_arrays(state.inner)) == {"q_segment_0", "q_segment_2"}
    fresh = link.compressor.init(SPEC)
    with pytest.raises(ValueError, match="q_segment_2"):
        link.compressor.load_state_arrays(fresh, {"q_segment_0": np.zeros((5, 2), dtype)})
    with pytest.raises(ValueError, match="shape"):
        link.compressor.load_state_arrays(fresh, {"q_segment_0": np.zeros((5, 3), dtype),
                                                  "q_segment_2": np.zeros((6, 2), dtype)})


# ----------------------------------------------------------------------------------------------------
# the federated methods
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic():
    from fedsim.data.load import load_dataset
    return load_dataset("synthetic", synthetic_devices=8, seed=3)


def test_federated_bits_include_the_broadcast(synthetic):
    run = make_run(synthetic, method="powersgd_updown", participation_rate=0.5)
    (n, m), (classes,) = run.model.spec.shapes
    record = run.step()
    K = record["participants"]
    per_sender = 32 * ((n + m) * 2 + classes)
    assert record["bits_up"] == K * per_sender and record["bits_up_analytic"] == K * per_sender
    # downstream: the server's own PowerSGD message to each participant, plus P_hat mid-protocol
    assert record["bits_down"] == K * per_sender + K * 32 * n * 2 + record["bits_down_catch_up"]
    assert isinstance(run.up_state, PowerSGDState) and run.up_state.factors is not None
    assert run.down_state.factors is not None and run.up_state.factors[0] is not run.down_state.factors[0]


def test_federated_checkpoint_continues_bitwise(synthetic, tmp_path):
    settings = {"method": "powersgd_updown", "participation_rate": 0.5, "rounds": 8}
    straight = make_run(synthetic, **settings)
    straight.run()
    first = make_run(synthetic, **settings)
    first.run(rounds=3)
    arrays, meta = first.state_dict()
    assert {"up_q_segment_0", "down_q_segment_0"} <= set(arrays)
    np.savez(tmp_path / "state.npz", **arrays)
    with np.load(tmp_path / "state.npz") as saved:
        arrays = {key: saved[key] for key in saved.files}
    resumed = make_run(synthetic, **settings)
    resumed.load_state_dict(arrays, meta)
    resumed.run()
    assert strip_wall_time(resumed.history) == strip_wall_time(straight.history)
    np.testing.assert_array_equal(resumed.server.weights, straight.server.weights)
    assert straight.history[-1]["test_loss"] < straight.history[0]["test_loss"]

