"""Sparsifying kernels: exact hand-computed cases, jitted vs NumPy twin vs .py_func on random and
adversarial inputs, and the long-vector paths (pivot guess, re-collection, compaction)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsim.errors import UpdateOverflowError
from fedsim.kernels import selection, sparsify, ternary
from tests.conftest import DTYPES
from tests.kernels.conftest import agree, called, implementations, select, ternarized

SETTINGS = settings(max_examples=60, deadline=None)


# ----------------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------------

def vectors(dtype, max_size=120):
    # float64 magnitudes stay below 1e300 so that sums of up to 120 of them stay finite (the documented
    # overflow of mu for diverged float64 updates is tested on its own)
    limit = None if dtype == np.float32 else 1e300
    general = st.floats(-limit if limit else None, limit, width=32 if dtype == np.float32 else 64,
                        allow_nan=False, allow_infinity=False, allow_subnormal=True)
    ties = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5])
    return arrays(dtype, st.integers(0, max_size), elements=st.one_of(general, ties))


@st.composite
def vector_and_budget(draw):
    dtype = draw(st.sampled_from(DTYPES))
    x = draw(vectors(dtype))
    k = draw(st.integers(0, x.size + 2))
    return x, k


# ----------------------------------------------------------------------------------------------------
# hand-computed cases
# ----------------------------------------------------------------------------------------------------

# x, k, the kept positions, mu (a float64 sum in index order, rounded once to x's dtype)
HAND_COMPUTED = [
    ([3.0, -1.0, 2.0, -3.0, 0.0], 2, [0, 3], 3.0),
    ([1.0, -1.0, 1.0, 1.0, 0.5], 2, [0, 1], 1.0),                     # ties: exactly k, lowest indices first
    ([0.5, 2.0, 1.0, 1.0, 1.0], 3, [1, 2, 3], 4.0 / 3),
    ([0.0, -0.0, 2.0, 0.0, -4.0], 4, [2, 4], 3.0),                    # fewer nonzeros than k: only those
    ([-2.5], 1, [0], 2.5),
    ([1.0, -3.0, 2.0], 10, [0, 1, 2], 2.0),                           # k above N
    ([0.0] * 7, 7, [], 0.0),                                          # nothing to send
    ([-0.0, 0.0], 2, [], 0.0),
    ([], 1, [], 0.0),
    # a float32 running sum would lose the small terms
    ([1.0, 2.0 ** -30, 2.0 ** -30, 2.0 ** -30, 3.0], 5, [0, 1, 2, 3, 4], (1.0 + 3 * 2.0 ** -30 + 3.0) / 5),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x, k, kept, mu", HAND_COMPUTED)
def test_hand_computed(x, k, kept, mu, dtype):
    x = np.array(x, dtype)
    np.testing.assert_array_equal(select(selection._top_k_select, x, k)[1], kept)
    count, got_mu, positions, signs = ternarized(ternary._ternarize, x, k)
    assert count == len(kept) and got_mu == dtype(mu), (count, got_mu, dtype(mu))
    np.testing.assert_array_equal(positions, kept)
    np.testing.assert_array_equal(signs, np.sign(x[kept]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_top_k_threshold_hand_computed(dtype):
    threshold, mu, count = selection._top_k_threshold(np.array([3.0, -1.0, 2.0, -3.0, 0.0], dtype), 3)
    assert (threshold, count) == (2.0, 3) and mu == dtype((3.0 + 2.0 + 3.0) / 3)
    assert selection._top_k_threshold(np.array([0.0, -0.0, 2.0, 0.0, -4.0], dtype), 4)[0] == 0.0


def test_float64_mu_overflow_raises():
    """float64 entries whose float64 sum overflows: mu (STC's, also sampled) and the scaled sign's mean magnitude
    are refused in one line saying the update is finite, by each kernel and its twin."""
    x = np.array([1.5e308, -1.6e308, 1.0], np.float64)
    positions, signs, sample = np.empty(3, np.int64), np.empty(3, np.int8), np.arange(3, dtype=np.int64)
    for kernel, twin, args in [(ternary._ternarize, ternary._ternarize_numpy, (x, 2, positions, signs)),
                               (selection._top_k_threshold, selection._top_k_threshold_numpy, (x, 2)),
                               (ternary._mean_magnitude, ternary._mean_magnitude_numpy, (x,)),
                               (ternary._sampled_ternarize, ternary._sampled_ternarize_numpy,
                                (x, sample, 2, 2, positions, signs))]:
        for call in (kernel, kernel.py_func, twin):
            with pytest.raises(UpdateOverflowError, match="the update is finite, but a segment's mean magnitude"), \
                    np.errstate(over="ignore"):                 # (py_func's scalar sum warns as it overflows)
                call(*args)
    # float32 input never overflows: its sum is taken in float64
    x32 = np.full(1000, np.finfo(np.float32).max, np.float32)
    assert selection._top_k_threshold(x32, 1000)[1] == np.finfo(np.float32).max


# ----------------------------------------------------------------------------------------------------
# jitted vs twin vs py_func
# ----------------------------------------------------------------------------------------------------

@SETTINGS
@given(vector_and_budget())
def test_top_k_select_matches_twin(case):
    x, k = case
    count, _ = agree(implementations(selection._top_k_select, selection._top_k_select_numpy),
                     lambda kernel: select(kernel, x, k))
    assert count == (min(k, np.count_nonzero(x)) if k > 0 else 0)


@SETTINGS
@given(vector_and_budget())
def test_threshold_ternarize_sparsify_match_twins(case):
    x, k = case
    threshold, mu, count, _ = agree((selection._top_k_threshold, selection._top_k_threshold_numpy), called(x, k),
                                    "threshold, mu, count")
    assert x.dtype.type(mu) == mu, "mu must be a value of x's dtype"
    if count == k and k > 0:
        assert threshold == np.sort(np.abs(x))[::-1][k - 1], "v is the k-th largest magnitude"

    def sparsify(kernel):
        positions, values = np.empty(min(k, x.size), np.int64), np.empty(min(k, x.size), x.dtype)
        count = kernel(x, k, positions, values)
        return positions[:count], values[:count]

    _, _, positions, signs = agree(implementations(ternary._ternarize, ternary._ternarize_numpy),
                                   lambda kernel: ternarized(kernel, x, k))
    np.testing.assert_array_equal(signs, np.sign(x[positions]))
    positions, values = agree((selection._top_k_sparsify, selection._top_k_sparsify_numpy), sparsify)
    assert values.tobytes() == x[positions].tobytes()


@SETTINGS
@given(st.sampled_from(DTYPES), st.data())
def test_sampled_kernels_match_twins(dtype, data):
    x = data.draw(vectors(dtype, max_size=80).filter(lambda v: v.size > 0))
    n_sample = data.draw(st.integers(1, x.size))
    sample = np.array(data.draw(st.permutations(range(x.size)))[:n_sample], np.int64)
    k_sample = data.draw(st.integers(1, n_sample))
    k = data.draw(st.integers(1, x.size))
    threshold, *_ = agree((selection._sampled_top_k_threshold, selection._sampled_top_k_threshold_numpy),
                          called(x, sample, k_sample), "sampled threshold, mu")

    def sampled_ternarize(kernel):
        positions, signs = np.empty(x.size, np.int64), np.empty(x.size, np.int8)
        count, mu, exact = kernel(x, sample, k_sample, k, positions, signs)
        return count, mu, exact, positions[:count], signs[:count]

    _, _, exact, positions, _ = agree((ternary._sampled_ternarize, ternary._sampled_ternarize_numpy),
                                      sampled_ternarize)
    if not exact:
        np.testing.assert_array_equal(positions, np.flatnonzero(np.abs(x) >= threshold))


@SETTINGS
@given(st.sampled_from(DTYPES), st.data())
def test_select_at_least_sign_mean_match_twins(dtype, data):
    x = data.draw(vectors(dtype))
    threshold = data.draw(st.sampled_from([0.5, 1.0, 2.0, 1e-30, 1e30]))
    agree((selection._select_at_least, selection._select_at_least_numpy),
          called(x, threshold, np.full(x.size, -1, np.int64)), "count, largest, positions")
    agree((ternary._sign, ternary._sign_numpy), called(x, np.full(x.size, 7, np.int8)), "zeros, signs")
    agree(implementations(ternary._mean_magnitude, ternary._mean_magnitude_numpy), called(x), "mean magnitude")
    assert sparsify.all_finite(x) and sparsify.all_finite_numpy(x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_dynamic_range_and_subnormals(dtype):
    info = np.finfo(dtype)
    rng = np.random.default_rng(3)
    # (max / 8: five of them still sum below the float64 max; see the overflow note in sparsify)
    x = np.concatenate([info.max / 8 * rng.uniform(0.1, 1, 5), info.smallest_subnormal * rng.integers(1, 9, 5),
                        info.tiny * rng.uniform(1, 2, 5), [-0.0, 0.0], rng.standard_normal(5)]).astype(dtype)
    x *= rng.choice([-1, 1], x.size)
    rng.shuffle(x)
    for k in range(0, x.size + 2):
        agree((selection._top_k_select, selection._top_k_select_numpy), lambda kernel: select(kernel, x, k), f"k={k}")
        agree((selection._top_k_threshold, selection._top_k_threshold_numpy), called(x, k),
              f"threshold, mu, count; k={k}")


# ----------------------------------------------------------------------------------------------------
# long vectors (the pivot-sample path, its fallback and compaction against the twins: test_kernels_fast_paths)
# ----------------------------------------------------------------------------------------------------

def test_long_mostly_zero_vector():
    x = np.zeros(100_000, np.float32)
    x[[5, 70_000, 99_999]] = [1.0, -2.0, 3.0]
    count, positions = select(selection._top_k_select, x, 100)
    assert count == 3
    np.testing.assert_array_equal(positions, [5, 70_000, 99_999])


def test_kth_largest_and_compact_helpers():
    rng = np.random.default_rng(4)
    for values in (rng.standard_normal(1000), rng.integers(0, 3, 1000).astype(np.float64), np.ones(50),
                   np.arange(500, dtype=np.float64)):
        for k in (1, 2, values.size // 2, values.size):
            expected = np.sort(values)[::-1][k - 1]
            for spare_rounds in (8, 1, -10 ** 6):       # -10**6: straight to the sorting fallback
                scratch = values.copy()
                got = selection._kth_largest(scratch, values.size, k, spare_rounds)
                assert got == expected, (got, expected, spare_rounds)
                np.testing.assert_array_equal(np.sort(scratch), np.sort(values))
    positions = np.arange(6, dtype=np.int64)
    magnitudes = np.array([1.0, 3.0, 2.0, 2.0, 2.0, 0.5])
    kept = selection._compact(positions, magnitudes, 6, 3, 2.0)
    assert kept == 3
    np.testing.assert_array_equal(positions[:3], [1, 2, 3])


# ----------------------------------------------------------------------------------------------------
# non-finite input
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("size", [5, 100_000])
def test_non_finite_raises(bad, size):
    x = np.ones(size, np.float32)
    x[size // 2 + 1] = bad           # not a strided sample position of the long vector
    positions = np.empty(size, np.int64)
    signs = np.empty(size, np.int8)
    calls = [
        lambda: selection._top_k_select(x, 2, positions),
        lambda: selection._top_k_select(x, 0, positions),
        lambda: ternary._ternarize(x, 2, positions, signs),
        lambda: selection._top_k_sparsify(x, 2, positions, np.empty(size, np.float32)),
        lambda: ternary._sign(x, signs),
        lambda: ternary._mean_magnitude(x),
        lambda: selection._select_at_least(x, 0.5, positions),
        lambda: ternary._sampled_ternarize(x, np.arange(3, dtype=np.int64), 1, 2, positions, signs),
        lambda: selection._top_k_select_numpy(x, 2, positions),
        lambda: ternary._sign_numpy(x, signs),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="update contains NaN or inf"):
            call()
    assert not sparsify.all_finite(x) and not sparsify.all_finite_numpy(x)


@pytest.mark.parametrize("seed", range(40))
def test_batch_kernels_match_their_twins(seed):
    """sparse_compress_batch (top-k, STC exact and sampled) and sign_compress_batch against their NumPy twins,
    bitwise: random rows of 1 to 3 segments (empty ones too), budgets up to past the segment's size."""
    rng = np.random.default_rng(seed)
    dtype = DTYPES[seed % len(DTYPES)]
    sizes = rng.integers(0, 40, rng.integers(1, 4))
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    rows = rng.standard_normal((3, offsets[-1])).astype(dtype)
    rows[rng.random(rows.shape) < 0.3] = 0
    budgets = np.array([rng.integers(0, n + 3) for n in sizes], np.int64)
    samples = [rng.permutation(n)[:rng.integers(0, n + 1)].astype(np.int64) for _ in range(3) for n in sizes]
    starts = np.concatenate(([0], np.cumsum([s.size for s in samples]))).astype(np.int64)
    positions = np.concatenate(samples + [np.zeros(0, np.int64)])
    sample_budgets = np.array([rng.integers(0, n + 3) for n in sizes], np.int64)
    for is_stc, sampled in ((False, False), (True, False), (True, True)):
        agree((sparsify.sparse_compress_batch, sparsify.sparse_compress_batch_numpy),
              called(rows, offsets, budgets, is_stc, 32, sampled, positions, starts, sample_budgets,
                     np.zeros_like(rows), np.zeros((3, len(sizes)), np.int64), np.zeros(3, np.int64)),
              f"ternary {is_stc}, sampled {sampled}")
    for scaled in (False, True):
        agree((sparsify.sign_compress_batch, sparsify.sign_compress_batch_numpy),
              called(rows, offsets, scaled, 32, np.zeros_like(rows), np.zeros((3, len(sizes)), dtype),
                     np.zeros(3, np.int64)), f"scaled {scaled}")
