"""PowerSGD (arXiv 1905.13727): settings, the power step against hand formulas, the coupled rows, the
wire message, the factors' draws and redraws, the Gram-Schmidt kernel (jitted, .py_func, NumPy twin),
error feedback, checkpoints, the federated methods, and a torch oracle over several rounds."""

import dataclasses

import numpy as np
import pytest

from fedsim.algorithms.federated import FederatedConfig, FederatedRun, Method, methods
from fedsim.compress import (
    ErrorFeedback,
    ErrorFeedbackState,
    Layout,
    decode,
    make_compressor,
)
from fedsim.compress.powersgd import (
    PowerSGD,
    PowerSGDMessage,
    PowerSGDState,
    matrix_shape,
)
from fedsim.kernels.sparsify import NONFINITE_MESSAGE
from fedsim.params import ParamSpec

DTYPES = [np.float32, np.float64]
# W (12 x 5), a bias, a 3-D tensor (compressed as 6 x 6), a scalar, an empty matrix.
SPEC = ParamSpec(("W", "b", "conv", "s", "e"), ((12, 5), (5,), (6, 3, 2), (), (0, 4)))
MATRICES = ((0, 12, 5), (65, 6, 6))       # (start, n, m) of the compressed segments of SPEC
VECTOR_ENTRIES = 5 + 1                    # b and s, sent as they are


def assert_bitwise(got, want, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    if got.tobytes() != want.tobytes():
        where = np.flatnonzero(got.reshape(-1) != want.reshape(-1))[:5]
        raise AssertionError(f"{what}: differ at {where.tolist()}: {got.reshape(-1)[where]} != "
                             f"{want.reshape(-1)[where]}")


# ----------------------------------------------------------------------------------------------------
# settings and init
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rank", [0, -1, 2.5, True, "2", None])
def test_rank_must_be_a_positive_integer(rank):
    with pytest.raises(ValueError, match="rank must be an integer"):
        PowerSGD(rank=rank)


def test_scope_must_be_tensor():
    with pytest.raises(ValueError, match="scope must be 'tensor' for PowerSGD.*ParamSpec"):
        PowerSGD(scope="global")
    with pytest.raises(ValueError, match="scope"):
        FederatedConfig(method="powersgd_up", compression_scope="global")


def test_init_needs_shapes():
    for spec in (100, Layout((0, 60, 70))):
        with pytest.raises(ValueError, match="ParamSpec"):
            PowerSGD().init(spec)
    state = PowerSGD().init(Layout(SPEC.offsets, SPEC.shapes))      # a Layout with shapes will do
    assert state == PowerSGD().init(SPEC) and state.factors is None


def test_rank_above_the_smaller_dimension_is_refused():
    assert PowerSGD(rank=5).init(SPEC).layout.shapes == SPEC.shapes
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, 5\].*got 6"):
        PowerSGD(rank=6).init(SPEC)


def test_class_attributes_and_methods():
    assert PowerSGD.aggregations == ("mean",) and PowerSGD.error_feedback
    assert PowerSGD.directions == ("up", "updown")
    table = methods()
    assert table["powersgd_up"] == Method("powersgd", "identity", "mean", True, False)
    assert table["powersgd_updown"] == Method("powersgd", "powersgd", "mean", True, True)
    assert make_compressor("powersgd", rank=3) == PowerSGD(3)
    with pytest.raises(ValueError, match="aggregation 'weighted' does not fit"):
        FederatedConfig(method="powersgd_up", aggregation="weighted")
    assert FederatedConfig(method="powersgd_up", compressors={"powersgd": PowerSGD(rank=1)}).compressor(
        "up") == PowerSGD(1)


def test_matrix_shapes():
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
def test_messages_round_trip_and_count_bits(dtype, rank):
    compressor = PowerSGD(rank=rank)
    x = np.random.default_rng(rank).standard_normal((3, SPEC.size)).astype(dtype)
    compressed, _ = compressor.compress(x, compressor.init(SPEC), np.random.default_rng(0))
    floats = sum((n + m) * rank for _, n, m in MATRICES) + VECTOR_ENTRIES
    width = 32 if dtype == np.float32 else 64
    assert compressed.encoded_bits.dtype == np.int64 and compressed.analytic_bits.dtype == np.float64
    np.testing.assert_array_equal(compressed.encoded_bits, width * floats)
    np.testing.assert_array_equal(compressed.analytic_bits, 32.0 * floats)
    assert compressed.broadcast_bits == width * (12 + 6) * rank
    for row in range(3):
        message = compressed.message(row)
        assert isinstance(message, PowerSGDMessage)
        assert_bitwise(message.to_dense(), compressed.decoded[row], "to_dense vs decoded")
        stream, n_bits = message.encode_with_bit_count()
        assert n_bits == message.encoded_bits() == compressed.encoded_bits[row]
        assert stream.dtype == np.uint8 and stream.size == (n_bits + 7) // 8
        assert_bitwise(stream, message.encode(), "encode")
        back = decode(stream, message.format)
        assert back == message
        assert_bitwise(back.to_dense(), compressed.decoded[row], "decoded after the round trip")
        assert message.analytic_bits() == compressed.analytic_bits[row]
    with pytest.raises(IndexError):
        compressed.message(3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_on_adversarial_updates(dtype):
    """Zeros, signed zeros, ties, subnormals and large values: messages still round-trip exactly."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    width = 32 if dtype == np.float32 else 64
    values = st.one_of(st.floats(-1e6, 1e6, width=width, allow_subnormal=True),
                       st.sampled_from([0.0, -0.0, 0.25, -0.25, 1.0]))

    @settings(max_examples=30, deadline=None)
    @given(arrays(dtype, (2, SPEC.size), elements=values), st.integers(0, 2 ** 32 - 1))
    def run(x, seed):
        compressor = PowerSGD(rank=2)
        compressed, state = compressor.compress(x, compressor.init(SPEC), np.random.default_rng(seed))
        assert all(np.all(np.isfinite(q)) for q in state.factors)
        for row in range(2):
            message = compressed.message(row)
            assert_bitwise(message.to_dense(), compressed.decoded[row], "to_dense vs decoded")
            assert decode(message.encode(), message.format) == message
            assert message.encoded_bits() == compressed.encoded_bits[row]

    run()


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


def test_message_validates_its_sizes():
    with pytest.raises(ValueError, match="left has 3 floats"):
        PowerSGDMessage((0, 6), ((3, 2),), 2, np.zeros(3, np.float32), np.zeros(4, np.float32),
                        np.zeros(0, np.float32))


# ----------------------------------------------------------------------------------------------------
# randomness: the first draws, zero columns, rng required
# ----------------------------------------------------------------------------------------------------

def test_needs_a_generator():
    with pytest.raises(ValueError, match="rng"):
        PowerSGD().compress(np.zeros(SPEC.size, np.float32), PowerSGD().init(SPEC), None)


def test_nonfinite_updates_are_rejected():
    x = np.zeros(SPEC.size, np.float32)
    x[7] = np.nan
    with pytest.raises(ValueError, match=NONFINITE_MESSAGE):
        PowerSGD().compress(x, PowerSGD().init(SPEC), np.random.default_rng(0))


def test_state_dtype_must_match():
    compressor = PowerSGD()
    _, state = compressor.compress(np.ones(SPEC.size, np.float32), compressor.init(SPEC), np.random.default_rng(0))
    with pytest.raises(ValueError, match="dtype"):
        compressor.compress(np.ones(SPEC.size), state, np.random.default_rng(0))


# ----------------------------------------------------------------------------------------------------
# kernels: jitted, .py_func and NumPy twin bitwise equal
# ----------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------
# error feedback and checkpoints
# ----------------------------------------------------------------------------------------------------

def test_error_feedback_keeps_what_was_not_sent():
    link = ErrorFeedback(PowerSGD(rank=1))
    rng = np.random.default_rng(0)
    state = dataclasses.replace(link.init(SPEC), residual=np.zeros((3, SPEC.size), np.float32))
    for _ in range(4):
        x = rng.standard_normal((3, SPEC.size)).astype(np.float32)
        accumulated = x + state.residual
        compressed, new = link.compress(x, state, rng)
        assert_bitwise(new.residual, accumulated - compressed.decoded, "r = a - decoded")
        assert isinstance(new.inner, PowerSGDState) and new.inner.factors is not None
        state = new


def checkpointed(link, state):
    """The state rebuilt from its checkpoint arrays (through an npz round trip's kind of copy)."""
    arrays = {key: np.array(value) for key, value in link.compressor.state_arrays(state.inner).items()}
    fresh = link.compressor.init(SPEC)
    return ErrorFeedbackState(link.compressor.load_state_arrays(fresh, arrays), state.residual.copy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_checkpoint_continues_bitwise(dtype):
    link = ErrorFeedback(PowerSGD(rank=2))
    data = np.random.default_rng(1).standard_normal((6, 3, SPEC.size)).astype(dtype)
    start = dataclasses.replace(link.init(SPEC, dtype), residual=np.zeros((3, SPEC.size), dtype))

    def run(state, rng, rounds):
        decoded = []
        for x in rounds:
            compressed, state = link.compress(x, state, rng)
            decoded.append(compressed.decoded)
        return decoded, state

    straight, final = run(start, np.random.default_rng(2), data)
    rng = np.random.default_rng(2)
    first, middle = run(start, rng, data[:3])
    assert set(link.compressor.state_arrays(middle.inner)) == {"q_segment_0", "q_segment_2"}
    second, resumed = run(checkpointed(link, middle), rng, data[3:])
    for a, b in zip(straight, first + second):
        assert_bitwise(b, a, "resumed round")
    assert resumed.inner == final.inner
    # before the first call there is nothing to save, and loading nothing gives the fresh state
    fresh = link.compressor.init(SPEC)
    assert link.compressor.state_arrays(fresh) == {}
    assert link.compressor.load_state_arrays(fresh, {}) == fresh
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


def make_run(dataset, **settings):
    settings = {"rounds": 6, "n_clients": len(dataset.client_indices), "batch_size": 16, "lr": 0.05, **settings}
    return FederatedRun(FederatedConfig(**settings), dataset, dataset.client_indices, seed=0)


def without_time(history):
    return [{k: v for k, v in record.items() if k != "time"} for record in history]


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
    assert without_time(resumed.history) == without_time(straight.history)
    np.testing.assert_array_equal(resumed.server.weights, straight.server.weights)
    assert straight.history[-1]["test_loss"] < straight.history[0]["test_loss"]


# ----------------------------------------------------------------------------------------------------
# torch oracle
# ----------------------------------------------------------------------------------------------------


