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
from fedsim.kernels import powersgd as kernels
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


def gram_schmidt(p, tolerance):
    """Textbook classical Gram-Schmidt in float64 with the drop rule (an independent reference)."""
    p = np.asarray(p, np.float64)
    out = np.zeros_like(p)
    for j in range(p.shape[1]):
        v = p[:, j].copy()
        for _ in range(2):
            v -= out[:, :j] @ (out[:, :j].T @ v)
        if np.linalg.norm(v) > tolerance * np.linalg.norm(p[:, j]):
            out[:, j] = v / np.linalg.norm(v)
    return out


def reference_round(rows, q, rank, tolerance):
    """One PowerSGD round in float64 NumPy by the paper's formulas: (decoded (K, P), new Q per matrix)."""
    rows = np.asarray(rows, np.float64)
    decoded = rows.copy()
    new_q = []
    for (start, n, m), factor in zip(MATRICES, q):
        matrices = rows[:, start:start + n * m].reshape(-1, n, m)
        p_hat = gram_schmidt(np.mean(matrices @ factor, axis=0), tolerance)
        q_each = np.transpose(matrices, (0, 2, 1)) @ p_hat
        decoded[:, start:start + n * m] = (p_hat @ np.transpose(q_each, (0, 2, 1))).reshape(len(rows), -1)
        new_q.append(q_each.mean(axis=0))
    return decoded, new_q


def first_draws(seed, rank, dtype):
    """The initial Q of each matrix, as the compressor draws them: standard_normal((r, m)).T per matrix."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((rank, m)).T.astype(dtype) for _, _, m in MATRICES]


# ----------------------------------------------------------------------------------------------------
# settings and init
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rank", [0, -1, 2.5, True, "2", None])
def test_rank_must_be_a_positive_integer(rank):
    with pytest.raises((TypeError, ValueError), match="rank must be an integer"):
        PowerSGD(rank=rank)


def test_scope_must_be_tensor():
    with pytest.raises(ValueError, match="scope must be one of 'tensor', got 'global'"):
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
@pytest.mark.parametrize("rows", [1, 3])
def test_round_matches_the_paper_formulas(dtype, rows):
    compressor = PowerSGD(rank=2)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((rows, SPEC.size)).astype(dtype)
    state = compressor.init(SPEC)
    compressed, new_state = compressor.compress(x, state, np.random.default_rng(11))
    assert state.factors is None                          # the input state is not changed
    q0 = first_draws(11, 2, dtype)
    want, want_q = reference_round(x, q0, 2, kernels.drop_tolerance(dtype))
    # float32: products of <= 12 terms and the orthogonalization, each ~eps32 relative
    tol = 2e-5 if dtype == np.float32 else 1e-12
    scale = np.abs(want).max()
    np.testing.assert_allclose(compressed.decoded, want, rtol=0, atol=tol * scale)
    for got, expected in zip(new_state.factors, want_q):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=0, atol=tol * np.abs(expected).max())
    vectors = np.r_[60:65, 101:102]                       # b and s: sent as they are
    assert_bitwise(compressed.decoded[:, vectors], x[:, vectors], "uncompressed segments")
    # the mean of the decoded rows is the paper's aggregate P_hat Q^T
    left = compressed.fields["left"]
    p_hat = left[:24].reshape(12, 2)
    np.testing.assert_allclose(compressed.decoded[:, :60].mean(axis=0),
                               (p_hat.astype(np.float64) @ new_state.factors[0].T.astype(np.float64)).ravel(),
                               rtol=0, atol=tol * scale)
    np.testing.assert_allclose(p_hat.T.astype(np.float64) @ p_hat, np.eye(2), rtol=0,
                               atol=1e-6 if dtype == np.float32 else 1e-14)


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


def test_first_call_draws_q_and_warm_start_carries_it():
    compressor = PowerSGD(rank=2)
    x = np.random.default_rng(8).standard_normal((2, SPEC.size)).astype(np.float32)
    rng = np.random.default_rng(21)
    compressed, state = compressor.compress(x, compressor.init(SPEC), rng)
    # the step with the same draws by hand (kernels.power_step, the same jitted pieces)
    for (start, n, m), q in zip(MATRICES, first_draws(21, 2, np.float32)):
        out = np.empty((2, n, m), np.float32)
        kernels.power_step(x[:, start:start + n * m].reshape(2, n, m), q, kernels.drop_tolerance(np.float32), out)
        assert_bitwise(compressed.decoded[:, start:start + n * m], out.reshape(2, -1), "first round")
    # the warm start: the second round draws nothing and starts from the state's Q
    before = rng.bit_generator.state
    second, _ = compressor.compress(x, state, rng)
    assert rng.bit_generator.state == before
    for (start, n, m), q in zip(MATRICES, state.factors):
        out = np.empty((2, n, m), np.float32)
        kernels.power_step(x[:, start:start + n * m].reshape(2, n, m), q, kernels.drop_tolerance(np.float32), out)
        assert_bitwise(second.decoded[:, start:start + n * m], out.reshape(2, -1), "warm start")


def test_all_zero_matrix_sends_zero_and_redraws_next_round():
    spec = ParamSpec(("W",), ((7, 4),))
    compressor = PowerSGD(rank=2)
    rng = np.random.default_rng(0)
    compressed, state = compressor.compress(np.zeros(28, np.float32), compressor.init(spec), rng)
    assert_bitwise(compressed.decoded[0], np.zeros(28, np.float32), "zero matrix")
    assert not np.any(state.factors[0])
    assert compressed.message(0).to_dense().tobytes() == compressed.decoded[0].tobytes()
    expected = rng.bit_generator.state
    replay = np.random.default_rng()
    replay.bit_generator.state = expected
    draws = replay.standard_normal((2, 4)).T.astype(np.float32)       # both columns again
    x = np.random.default_rng(1).standard_normal(28).astype(np.float32)
    again, _ = compressor.compress(x, state, rng)
    out = np.empty((1, 7, 4), np.float32)
    kernels.power_step(x.reshape(1, 7, 4), draws, kernels.drop_tolerance(np.float32), out)
    assert_bitwise(again.decoded[0], out.reshape(-1), "redrawn factors")


@pytest.mark.parametrize("dtype", DTYPES)
def test_rank_one_matrix_drops_the_dependent_column_and_redraws_only_it(dtype):
    spec = ParamSpec(("W",), ((8, 6),))
    rng = np.random.default_rng(3)
    u, v = rng.standard_normal(8), rng.standard_normal(6)
    x = np.outer(u, v).reshape(-1).astype(dtype)
    compressor = PowerSGD(rank=2)
    compressed, state = compressor.compress(x, compressor.init(spec), rng)
    p_hat = compressed.fields["left"].reshape(8, 2)
    assert np.any(p_hat[:, 0]) and not np.any(p_hat[:, 1])          # the second column is dependent
    np.testing.assert_allclose(compressed.decoded[0], x, rtol=0, atol=(1e-5 if dtype == np.float32 else 1e-13)
                               * np.abs(x).max())                  # rank 1 is enough
    assert np.any(state.factors[0][:, 0]) and not np.any(state.factors[0][:, 1])
    replay = np.random.default_rng()
    replay.bit_generator.state = rng.bit_generator.state
    redrawn = state.factors[0].copy()
    redrawn[:, 1] = replay.standard_normal((1, 6)).T[:, 0].astype(dtype)
    again, _ = compressor.compress(x, state, rng)
    out = np.empty((1, 8, 6), dtype)
    kernels.power_step(x.reshape(1, 8, 6), redrawn, kernels.drop_tolerance(dtype), out)
    assert_bitwise(again.decoded[0], out.reshape(-1), "only the zero column is redrawn")


def test_state_dtype_must_match():
    compressor = PowerSGD()
    _, state = compressor.compress(np.ones(SPEC.size, np.float32), compressor.init(SPEC), np.random.default_rng(0))
    with pytest.raises(ValueError, match="dtype"):
        compressor.compress(np.ones(SPEC.size), state, np.random.default_rng(0))


# ----------------------------------------------------------------------------------------------------
# kernels: jitted, .py_func and NumPy twin bitwise equal
# ----------------------------------------------------------------------------------------------------

def orthogonalize_inputs(dtype):
    rng = np.random.default_rng(7)
    cases = [rng.standard_normal((50, 3)), rng.standard_normal((1, 1)), np.zeros((6, 2)), np.zeros((0, 2)),
             rng.standard_normal((3, 3)), rng.standard_normal((2000, 4)), rng.standard_normal((5, 1))]
    base = rng.standard_normal((20, 1))
    cases.append(np.hstack([base, 2 * base, rng.standard_normal((20, 1))]))      # dependent middle column
    cases.append(np.hstack([rng.standard_normal((10, 1)), np.zeros((10, 1)), rng.standard_normal((10, 1))]))
    cases.append(np.hstack([base, base + 1e-9 * rng.standard_normal((20, 1))]))  # nearly dependent
    cases.append(np.ones((9, 3)))                                                # ties: all equal
    tiny = 1e-300 if dtype == np.float64 else 1e-42                              # subnormal float32
    huge = 1e300 if dtype == np.float64 else 1e37
    cases += [tiny * rng.standard_normal((8, 2)), huge * rng.standard_normal((8, 2))]
    return [np.ascontiguousarray(c, dtype) for c in cases]


@pytest.mark.parametrize("dtype", DTYPES)
def test_orthogonalize_twins_agree_bitwise(dtype):
    tolerance = kernels.drop_tolerance(dtype)
    for p in orthogonalize_inputs(dtype):
        outs = {}
        for name, function in (("jit", kernels.orthogonalize), ("py_func", kernels.orthogonalize.py_func),
                               ("numpy", kernels.orthogonalize_numpy)):
            out = np.full(p.shape, np.nan, dtype)
            outs[name] = (function(p, tolerance, out), out)
        for name in ("py_func", "numpy"):
            assert outs[name][0] == outs["jit"][0], (name, p.shape)
            assert_bitwise(outs[name][1], outs["jit"][1], f"{name} vs jit, shape {p.shape}")
        kept, q = outs["jit"]
        nonzero = np.any(q != 0, axis=0)
        assert kept == nonzero.sum()
        wide = q[:, nonzero].astype(np.float64)
        np.testing.assert_allclose(wide.T @ wide, np.eye(kept), rtol=0,
                                   atol=1e-6 if dtype == np.float32 else 1e-14)
        # the result spans the kept columns in order: agrees with textbook Gram-Schmidt
        # (the textbook version's unscaled norms under- or overflow at the extreme scales: skipped there)
        if 1e-30 < np.abs(p).max(initial=0) < 1e30:
            np.testing.assert_allclose(q, gram_schmidt(p, tolerance), rtol=0,
                                       atol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_orthogonalize_drop_rule(dtype):
    tolerance = kernels.drop_tolerance(dtype)
    cases = orthogonalize_inputs(dtype)
    zero_middle, dependent, nearly = cases[8], cases[7], cases[9]
    for p, want_kept in ((dependent, [True, False, True]), (zero_middle, [True, False, True]),
                         (nearly, [True, False]), (np.zeros((4, 2), dtype), [False, False])):
        out = np.empty_like(p)
        kept = kernels.orthogonalize(p, tolerance, out)
        assert kept == sum(want_kept)
        np.testing.assert_array_equal(np.any(out != 0, axis=0), want_kept)
    # extreme scales still give unit columns (the norms are scaled: no square under- or overflows)
    for p in cases[-2:]:
        out = np.empty_like(p)
        assert kernels.orthogonalize(p, tolerance, out) == 2
        np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=0), 1, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_orthogonalize_rejects_nonfinite(dtype, bad):
    p = np.ones((4, 2), dtype)
    p[2, 1] = bad
    for function in (kernels.orthogonalize, kernels.orthogonalize.py_func, kernels.orthogonalize_numpy):
        with pytest.raises(ValueError, match=NONFINITE_MESSAGE):
            function(p, 1e-4, np.empty_like(p))


@pytest.mark.parametrize("dtype", DTYPES)
def test_low_rank_product_twins_agree_bitwise(dtype):
    rng = np.random.default_rng(5)
    shapes = [(7, 5, 2), (1, 1, 1), (0, 3, 2), (3, 0, 2), (300, 257, 4), (4, 4, 1)]
    for n, m, r in shapes:
        left = rng.standard_normal((n, r)).astype(dtype)
        right = rng.standard_normal((m, r)).astype(dtype)
        if n and m:
            right[0] = -right[0]
            left[-1] = 0.0
        outs = {}
        for name, function in (("jit", kernels.low_rank_product), ("py_func", kernels.low_rank_product.py_func),
                               ("numpy", kernels.low_rank_product_numpy)):
            outs[name] = np.full((n, m), np.nan, dtype)
            function(left, right, outs[name])
        for name in ("py_func", "numpy"):
            assert_bitwise(outs[name], outs["jit"], f"{name} vs jit, {(n, m, r)}")
        np.testing.assert_allclose(outs["jit"], left.astype(np.float64) @ right.T.astype(np.float64), rtol=0,
                                   atol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_power_step_twin_agrees_bitwise(dtype):
    rng = np.random.default_rng(9)
    for K, n, m, r in [(1, 30, 20, 2), (4, 8, 9, 3), (3, 5, 5, 5), (2, 1, 1, 1)]:
        matrices = rng.standard_normal((K, n, m)).astype(dtype)
        q = rng.standard_normal((m, r)).astype(dtype)
        outs = [np.empty((K, n, m), dtype), np.empty((K, n, m), dtype)]
        results = [step(matrices, q, kernels.drop_tolerance(dtype), out)
                   for step, out in zip((kernels.power_step, kernels.power_step_numpy), outs)]
        for a, b in zip(*results):
            assert_bitwise(b, a, "power step outputs")
        assert_bitwise(outs[1], outs[0], "power step decoded")


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
    from fedsim.data.datasets import load_dataset
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

# Tolerance, relative to the largest magnitude of the compared array. fedsim and the oracle compute the
# same rounds with different floating-point paths (BLAS vs torch matmuls, modified Gram-Schmidt twice vs
# Householder QR, sum / K vs torch.mean), each step correct to a few ulp of the data dtype times the
# number of terms summed (<= 12 here); the power iteration and error feedback carry those differences
# over the rounds without amplifying them much (the P columns are well conditioned). Observed: ~1e-6
# up to 2e-6 (float32) and 5e-15 (float64) over 6 rounds; the bounds leave a factor of about 50 (float32)
# and 200 (float64) for other seeds and BLAS builds, still far below any algorithmic difference (a wrong
# sign, a missed column or a skipped residual changes values by O(1) of the scale).
ORACLE_TOLERANCE = {np.float32: 1e-4, np.float64: 1e-12}


@pytest.mark.oracle
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank, rank_one_w", [(1, False), (2, False), (3, False), (2, True)])
def test_torch_oracle_over_rounds(torch, dtype, rank, rank_one_w):
    """Several rounds of K = 4 senders with error feedback, fed the same draws. With ``rank_one_w`` every
    sender's W is u v_k^T (one u for all): the mean P has rank 1, the second column is dropped every
    round and its Q column redrawn (the oracle's QR must find the same drop and take the same draws)."""
    from benchmarks.torch_reference import TorchPowerSGD

    K, rounds, seed = 4, 6, 17
    link = ErrorFeedback(PowerSGD(rank=rank))
    state = dataclasses.replace(link.init(SPEC, dtype), residual=np.zeros((K, SPEC.size), dtype))
    oracle_rng = np.random.default_rng(seed)
    oracle = TorchPowerSGD(SPEC.shapes, rank, kernels.drop_tolerance(dtype),
                           lambda count, m: oracle_rng.standard_normal((count, m)))
    rng = np.random.default_rng(seed)
    data_rng = np.random.default_rng(23)
    data = data_rng.standard_normal((rounds, K, SPEC.size)).astype(dtype)
    if rank_one_w:
        u = data_rng.standard_normal(12)
        data[:, :, :60] = (u[:, None] * data_rng.standard_normal((rounds, K, 1, 5))).reshape(rounds, K, 60)
    tol = ORACLE_TOLERANCE[dtype]
    worst = 0.0
    for t in range(rounds):
        compressed, state = link.compress(data[t], state, rng)
        if rank_one_w:
            assert not np.any(compressed.fields["left"][:24].reshape(12, 2)[:, 1])
        want = oracle.step(torch.from_numpy(data[t].copy())).numpy()
        assert want.dtype == dtype
        scale = np.abs(want).max()
        worst = max(worst, np.abs(compressed.decoded - want).max() / scale)
        np.testing.assert_allclose(compressed.decoded, want, rtol=0, atol=tol * scale,
                                   err_msg=f"decoded rows, round {t + 1}")
        for got, expected in zip(state.inner.factors, oracle.factors):
            expected = expected.numpy()
            np.testing.assert_allclose(got, expected, rtol=0, atol=tol * np.abs(expected).max(),
                                       err_msg=f"Q, round {t + 1}")
        np.testing.assert_allclose(state.residual, oracle.residual.numpy(), rtol=0, atol=tol * scale)
    assert worst <= tol
    print(f"worst relative difference {worst:.2e}")
