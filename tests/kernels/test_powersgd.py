"""PowerSGD's kernels: orthogonalization, the low-rank product and the power step against the paper's
formulas, their NumPy twins (bitwise) and torch."""

import dataclasses

import numpy as np
import pytest

from fedsim.compress import ErrorFeedback
from fedsim.compress.powersgd import PowerSGD
from fedsim.kernels import powersgd as kernels
from fedsim.kernels.sparsify import NONFINITE_MESSAGE
from fedsim.params import ParamSpec
from tests.conftest import DTYPES, MATRICES, assert_bitwise
from tests.conftest import SHAPED_SPEC as SPEC       # W (12 x 5), b, conv (6 x 3 x 2), s, e
from tests.kernels.conftest import agree, called, implementations


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


def by_hand(x, q, n, m, dtype):
    """The decoded (K, n * m) rows of one power step of the (K, n * m) rows ``x`` from the factor ``q``."""
    out = np.empty((x.shape[0], n, m), dtype)
    kernels.power_step(x.reshape(-1, n, m), q, kernels.drop_tolerance(dtype), out)
    return out.reshape(x.shape[0], -1)


def first_draws(seed, rank, dtype):
    """The initial Q of each matrix, as the compressor draws them: standard_normal((r, m)).T per matrix."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((rank, m)).T.astype(dtype) for _, _, m in MATRICES]


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


def test_first_call_draws_q_and_warm_start_carries_it():
    compressor = PowerSGD(rank=2)
    x = np.random.default_rng(8).standard_normal((2, SPEC.size)).astype(np.float32)
    rng = np.random.default_rng(21)
    compressed, state = compressor.compress(x, compressor.init(SPEC), rng)
    # the step with the same draws by hand (kernels.power_step, the same jitted pieces)
    for (start, n, m), q in zip(MATRICES, first_draws(21, 2, np.float32)):
        segment = slice(start, start + n * m)
        assert_bitwise(compressed.decoded[:, segment], by_hand(x[:, segment], q, n, m, np.float32), "first round")
    # the warm start: the second round draws nothing and starts from the state's Q
    before = rng.bit_generator.state
    second, _ = compressor.compress(x, state, rng)
    assert rng.bit_generator.state == before
    for (start, n, m), q in zip(MATRICES, state.factors):
        segment = slice(start, start + n * m)
        assert_bitwise(second.decoded[:, segment], by_hand(x[:, segment], q, n, m, np.float32), "warm start")


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
    assert_bitwise(again.decoded, by_hand(x[None], draws, 7, 4, np.float32), "redrawn factors")


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
    assert_bitwise(again.decoded, by_hand(x[None], redrawn, 8, 6, dtype), "only the zero column is redrawn")


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
        kept, _, q = agree(implementations(kernels._orthogonalize, kernels._orthogonalize_numpy),
                           called(p, tolerance, np.full(p.shape, np.nan, dtype)), f"shape {p.shape}")
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
        kept = kernels._orthogonalize(p, tolerance, out)
        assert kept == sum(want_kept)
        np.testing.assert_array_equal(np.any(out != 0, axis=0), want_kept)
    # extreme scales still give unit columns (the norms are scaled: no square under- or overflows)
    for p in cases[-2:]:
        out = np.empty_like(p)
        assert kernels._orthogonalize(p, tolerance, out) == 2
        np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=0), 1, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_orthogonalize_rejects_nonfinite(dtype, bad):
    p = np.ones((4, 2), dtype)
    p[2, 1] = bad
    for function in (kernels._orthogonalize, kernels._orthogonalize.py_func, kernels._orthogonalize_numpy):
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
        *_, out = agree(implementations(kernels.low_rank_product, kernels.low_rank_product_numpy),
                        called(left, right, np.full((n, m), np.nan, dtype)), str((n, m, r)))
        np.testing.assert_allclose(out, left.astype(np.float64) @ right.T.astype(np.float64), rtol=0,
                                   atol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_power_step_twin_agrees_bitwise(dtype):
    rng = np.random.default_rng(9)
    for K, n, m, r in [(1, 30, 20, 2), (4, 8, 9, 3), (3, 5, 5, 5), (2, 1, 1, 1)]:
        matrices = rng.standard_normal((K, n, m)).astype(dtype)
        q = rng.standard_normal((m, r)).astype(dtype)
        agree((kernels.power_step, kernels.power_step_numpy),
              called(matrices, q, kernels.drop_tolerance(dtype), np.empty((K, n, m), dtype)), "power step")


@pytest.mark.parametrize("dtype", DTYPES)
def test_power_step_refuses_finite_matrices_whose_products_overflow(dtype):
    """Entries near the float maximum: P = M Q overflows (the first case), or only P_hat Q_k^T does (the
    second: each Q_k entry finite); one line saying the update is finite, not "NaN or inf", which a NaN keeps."""
    top = np.finfo(dtype).max
    near_max = (np.array([[[-0.89, -0.17, 0.36], [0.79, 0.88, -0.23], [0.15, 0.85, -0.89]]]) * top).astype(dtype)
    q = np.array([[-7, 15], [2, -10], [-5, -6]], dtype) / dtype(10000)
    with_nan = near_max.copy()
    with_nan[0, 1, 1] = np.nan
    for matrices, factor, message in [(np.full((1, 3, 3), top / 2, dtype), np.ones((3, 2), dtype), "products"),
                                      (near_max, q, "the update is finite, but its products"),
                                      (with_nan, q, NONFINITE_MESSAGE)]:
        for step in (kernels.power_step, kernels.power_step_numpy):
            with pytest.raises(ValueError, match=message):
                step(matrices, factor, kernels.drop_tolerance(dtype), np.empty_like(matrices))


# Tolerance, relative to the largest magnitude compared: fedsim and the oracle take different floating-point
# paths (BLAS vs torch matmuls, Gram-Schmidt twice vs Householder QR), a few ulp per step that the rounds
# carry without amplifying much. Observed up to 2e-6 (float32) and 5e-15 (float64) over 6 rounds: a margin
# of 50 and 200 for other seeds and BLAS builds, far below any algorithmic difference (O(1) of the scale).
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

