"""Random-k's kernels: SplitMix64, the positions (against an independent derivation), the batch kernel
against its NumPy twin, bitwise."""

from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsim.compress import Layout
from fedsim.compress.base import ceil_product
from fedsim.compress.randomk import segment_scales
from fedsim.kernels import randomk as kernels
from fedsim.kernels.sparsify import NONFINITE_MESSAGE
from tests.conftest import DTYPES, assert_bitwise
from tests.kernels.conftest import agree


MASK = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def python_mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def python_positions(seed, segment, size, k):
    """Floyd's algorithm on SplitMix64 draws; positions in the order chosen."""
    key = python_mix((seed + (segment + 1) * GAMMA) & MASK)
    chosen, order = set(), []
    for t in range(k):
        j = size - k + t
        i = (python_mix((key + (t + 1) * GAMMA) & MASK) * (j + 1)) >> 64
        if i in chosen:
            i = j
        chosen.add(i)
        order.append(i)
    return order


def test_splitmix64_published_outputs():
    # SplitMix64 started at state 0: its published first outputs (Vigna's _splitmix64.c).
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
    steps = np.arange(1, 5, dtype=np.uint64)
    assert [int(kernels._output(np.uint64(0), n)) for n in steps] == expected
    with np.errstate(over="ignore"):                  # (NumPy scalars warn where uint64 arithmetic wraps)
        assert [int(kernels._output.py_func(np.uint64(0), n)) for n in steps] == expected
    assert kernels._mix_numpy(steps * kernels._GAMMA).tolist() == expected
    assert [python_mix((n * GAMMA) & MASK) for n in range(1, 5)] == expected


SEEDS = [0, 1, 12345, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 0xDEADBEEFCAFEF00D]
SHAPES = [(0, 0), (1, 0), (1, 1), (2, 1), (5, 2), (10, 10), (17, 16), (1000, 10), (1000, 999),
          (100_003, 1001)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size, k", SHAPES)
def test_positions_match_the_independent_derivation(seed, size, k):
    expected = python_positions(seed, 3, size, k)
    for function in (kernels.random_positions, kernels.random_positions.py_func, kernels.random_positions_numpy):
        out = np.full(k, -1, np.int64)
        function(np.uint64(seed), 3, size, k, out)
        assert out.tolist() == expected, function
    assert len(set(expected)) == k and all(0 <= i < size for i in expected)


def test_positions_depend_on_seed_and_segment_only():
    def positions(seed, segment, size=1000, k=20):
        out = np.empty(k, np.int64)
        kernels.random_positions(np.uint64(seed), segment, size, k, out)
        return out.tolist()
    assert positions(5, 0) == positions(5, 0)
    assert positions(5, 0) != positions(6, 0) and positions(5, 0) != positions(5, 1)
    # the first draws of Floyd's loop range over [0, N - k]: k = N is a permutation of all positions
    full = np.empty(50, np.int64)
    kernels.random_positions(np.uint64(9), 0, 50, 50, full)
    assert sorted(full.tolist()) == list(range(50))


def test_bounded_map_is_multiply_high():
    rng = np.random.default_rng(4)
    words = rng.integers(0, 2 ** 64 - 1, size=2000, dtype=np.uint64, endpoint=True)
    words[:4] = [0, 1, 2 ** 64 - 1, 2 ** 63]
    bounds = rng.integers(1, 2 ** 32, size=2000, dtype=np.uint64, endpoint=True)
    bounds[:4] = [1, 2 ** 32, 2 ** 32, 3]
    expected = [(int(z) * int(r)) >> 64 for z, r in zip(words, bounds)]
    assert kernels._below_numpy(words, bounds).tolist() == expected
    assert [int(kernels._below(z, r)) for z, r in zip(words, bounds)] == expected


def test_subsets_are_uniform():
    """All C(5, 2) = 10 subsets of a segment of 5 with k = 2 over 20,000 seeds: Pearson's chi-square
    against the uniform law, 9 degrees of freedom. 27.88 is its 0.999 quantile; the seeds are fixed, so
    the test is deterministic (it would fail by chance for one seed set in a thousand)."""
    seeds = np.random.default_rng(21).integers(0, 2 ** 64 - 1, size=20_000, dtype=np.uint64, endpoint=True)
    counts = dict.fromkeys(combinations(range(5), 2), 0)
    out = np.empty(2, np.int64)
    for seed in seeds:
        kernels.random_positions(seed, 0, 5, 2, out)
        counts[tuple(sorted(out.tolist()))] += 1
    expected = seeds.size / len(counts)
    chi_square = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi_square < 27.88, counts


def run_batch(function, updates, offsets, ks, scales, seeds):
    decoded = np.full(updates.shape, 7, updates.dtype)          # garbage: the kernel overwrites it
    values = np.full((updates.shape[0], int(ks.sum())), 7, updates.dtype)
    function(updates, offsets, ks, scales, seeds, decoded, values)
    return decoded, values


BATCH_FUNCTIONS = [kernels.randomk_compress_batch, kernels.randomk_compress_batch.py_func,
                   kernels.randomk_compress_batch_numpy]


def check_batch(updates, offsets, ks, scales, seeds):
    with np.errstate(over="ignore"):            # huge values times N / k overflow to inf in all three
        reference = agree(BATCH_FUNCTIONS, lambda function: run_batch(function, updates, offsets, ks, scales, seeds),
                          "decoded, values")
    # and the definition: decoded = x * scale at the python positions, values = x there
    decoded, values = reference
    for row, seed in enumerate(seeds.tolist()):
        expected = np.zeros(updates.shape[1], updates.dtype)
        gathered = []
        for j, k in enumerate(ks.tolist()):
            local = python_positions(seed, j, int(offsets[j + 1] - offsets[j]), k)
            where = np.array(local, np.int64) + offsets[j]
            with np.errstate(over="ignore"):
                expected[where] = updates[row, where] * scales[j]
            gathered.append(updates[row, where])
        assert_bitwise(decoded[row], expected, f"decoded row {row} vs definition")
        assert_bitwise(values[row], np.concatenate(gathered + [np.zeros(0, updates.dtype)]), "values")
    return reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes, p", [((0,), 0.5), ((1,), 1.0), ((3, 0, 4), 0.5), ((120, 4), 0.1),
                                      ((7, 1, 1000), 0.03), ((100_003,), 0.01), ((2, 2), 1.0)])
def test_batch_kernel_equals_twins(dtype, sizes, p):
    rng = np.random.default_rng(sum(sizes))
    layout = Layout(tuple(np.concatenate(([0], np.cumsum(sizes))).tolist()))
    ks = np.array([ceil_product(p, n) for n in sizes], np.int64)
    scales = segment_scales(p, "unbiased", layout, dtype)
    seeds = rng.integers(0, 2 ** 64 - 1, size=3, dtype=np.uint64, endpoint=True)
    updates = rng.standard_normal((3, layout.size)).astype(dtype)
    check_batch(updates, layout.offsets_array, ks, scales, seeds)
    # adversarial values: all zero, signed zeros, subnormals, huge, all equal
    tiny = np.finfo(dtype).smallest_subnormal
    huge = np.finfo(dtype).max
    special = np.resize(np.array([0.0, -0.0, tiny, -tiny, huge, -huge, 1.0, 1.0], dtype), (3, layout.size))
    check_batch(np.zeros((3, layout.size), dtype), layout.offsets_array, ks, scales, seeds)
    check_batch(np.ascontiguousarray(special), layout.offsets_array, ks, scales, seeds)
    check_batch(special, layout.offsets_array, ks, np.ones(len(sizes), dtype), seeds)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_kernel_hypothesis(dtype):
    width = 32 if dtype == np.float32 else 64
    elements = st.one_of(st.floats(width=width, allow_nan=False, allow_infinity=False, allow_subnormal=True),
                         st.sampled_from([0.0, -0.0, 1.0]))

    @settings(max_examples=40, deadline=None)
    @given(arrays(dtype, (2, 37), elements=elements), st.integers(0, 2 ** 64 - 1),
           st.sampled_from([0.01, 0.3, 1.0]))
    def run(updates, seed, p):
        layout = Layout((0, 30, 37))
        ks = np.array([ceil_product(p, n) for n in layout.sizes], np.int64)
        seeds = np.array([seed, seed ^ 1], np.uint64)
        check_batch(updates, layout.offsets_array, ks, segment_scales(p, "unbiased", layout, dtype), seeds)

    run()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_batch_kernels_reject_non_finite_and_bad_budgets(bad):
    updates = np.ones((2, 10), np.float32)
    updates[1, 9] = bad
    args = (np.array([0, 10]), np.array([1]), np.ones(1, np.float32), np.zeros(2, np.uint64))
    for function in BATCH_FUNCTIONS:
        with pytest.raises(ValueError, match=NONFINITE_MESSAGE), np.errstate(invalid="ignore"):
            run_batch(function, updates, *args)            # (.py_func computes inf - inf in NumPy scalars)
        with pytest.raises(ValueError, match="budgets must be in"):
            run_batch(function, np.ones((1, 10), np.float32), np.array([0, 10]), np.array([11]),
                      np.ones(1, np.float32), np.zeros(1, np.uint64))


def test_position_arguments_are_checked():
    out = np.empty(10, np.int64)
    for size, k in [(5, 6), (5, -1), (2 ** 32 + 1, 1)]:
        for function in (kernels.random_positions, kernels.random_positions_numpy):
            with pytest.raises(ValueError, match="0 <= k <= size <= 2"):
                function(np.uint64(0), 0, size, k, out)
