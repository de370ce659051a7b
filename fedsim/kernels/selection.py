"""Top-k selection of one vector: the kept set, its threshold and mean, and the sampled threshold.

Private helpers of the batched kernels of :mod:`fedsim.kernels.sparsify` (the entry points the library
calls) and of :mod:`fedsim.kernels.ternary`, checked so that the tests and benchmarks can call each alone.
Each takes one 1-D float32 or float64 ``x`` and works in its dtype.

**The kept set** ``K(x, k)`` of top-k selection (top-k sparsification and STC, arXiv 1903.02891) is the
positions of the ``k`` largest magnitudes among the *nonzero* entries of ``x``::

    v = the k-th largest |x_i|                       (0 when x has fewer than k nonzeros)
    K = {i : |x_i| > v}  +  the lowest-index entries with |x_i| = v, as many as fit in k     (v > 0)
    K = {i : x_i != 0}                                                                       (v = 0)

so ``|K| = min(k, number of nonzeros)``: ties at ``v`` never push the count above ``k`` (the lowest indices
win), and an entry that is zero is never sent (the reference turned zeros into ``-mu`` when v = 0: fixed).
Positions are returned in increasing order.

**The mean magnitude** of a kept set is defined bit for bit as::

    mu = dtype( (sum over i in K, in increasing i, of float64(|x_i|)) / |K| )

a sequential float64 sum in index order, one float64 division, one rounding to ``x``'s dtype (``mu = 0``
for an empty set). For float32 input the float64 sum cannot overflow; float64 input whose kept
magnitudes sum beyond the float64 maximum (~1.8e308, a diverged update) raises
``UpdateOverflowError(SCALE_OVERFLOW_MESSAGE)``, a ValueError (as does the scaled sign's mean magnitude,
:mod:`fedsim.kernels.ternary`).

Speed of the exact selection
----------------------------
A vector is read once. A strided sample of ``m = min(PIVOT_SAMPLE, N / SAMPLE_STRIDE)`` magnitudes (no
randomness; none for a short segment) gives a lower bound ``L`` = its r-th largest,
``r = e + 4 sqrt(e) + 8`` where ``e = m k / N`` sample entries are expected above the true threshold, so
that about ``r N / m`` (a little more than k) entries pass; one pass then collects the candidates
``|x_i| >= L`` (in index order) into a buffer, and the exact k-th largest is selected among those few
candidates (quickselect). If the buffer fills, it is compacted to its own top k and ``L`` rises to the
k-th candidate (so adversarial orderings stay linear time); if fewer than ``k`` entries pass a guessed
``L``, the pass is repeated with ``L = 0+``. The result does not depend on the guess, only the running
time does. The candidate pass is a branch-predictable scan, while a quickselect mispredicts about every
other comparison, so the sample keeps the quickselects small (for the 10,240 weights of the STC seed model
it makes the selection about 10 times faster than a quickselect over all of them; for N = 1e5 about 4
times).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from fedsim.errors import UpdateOverflowError
from fedsim.kernels import JIT_OPTIONS, checks
from fedsim.kernels.checks import FLOAT_VECTOR, INT64, Array, Budget, Real, checked

# Segments up to this length skip the pivot sample: every nonzero entry is a candidate.
SHORT_SEGMENT = 1 << 12
# Segments up to this length have a candidate buffer as long as themselves (it never fills).
SMALL_SEGMENT = 1 << 15
# The pivot sample takes every SAMPLE_STRIDE-th entry, at most PIVOT_SAMPLE of them (the stride grows
# beyond SAMPLE_STRIDE on segments longer than SAMPLE_STRIDE * PIVOT_SAMPLE entries).
SAMPLE_STRIDE = 16
PIVOT_SAMPLE = 1 << 15
# Free room in the candidate buffer beyond k (the buffer holds max(2 k, k + CANDIDATE_ROOM) entries).
CANDIDATE_ROOM = 1 << 16
# Smallest positive float64: for float32 and float64 magnitudes, ``m >= TINY`` <=> ``m > 0``.
TINY = 5e-324
NONFINITE_MESSAGE = "update contains NaN or inf"
SCALE_OVERFLOW_MESSAGE = ("the update is finite, but a segment's mean magnitude (STC's mu, the scaled sign's scale) "
                          "overflows its dtype (entries near the float maximum; the update has diverged)")

_jit = numba.njit(**JIT_OPTIONS)


@_jit
def _copy_prefix(source, count, destination):
    """destination[:count] = source[:count], as a loop: a slice assignment would compile NumPy's
    shape-mismatch error message (integer-to-string formatting), seconds of a cold start."""
    for j in range(count):
        destination[j] = source[j]


@_jit
def _sift_down(values, start, root, end):
    """Restore the max-heap of ``values[start:end]`` (children of i at 2i + 1, 2i + 2, relative to start)
    below ``root``."""
    while True:
        child = 2 * root + 1
        if child >= end - start:
            return
        if child + 1 < end - start and values[start + child] < values[start + child + 1]:
            child += 1
        if not values[start + root] < values[start + child]:
            return
        swap = values[start + root]
        values[start + root] = values[start + child]
        values[start + child] = swap
        root = child


@_jit
def _heap_sort(values, start, end):
    """Sort ``values[start:end]`` ascending in place (heapsort: n log n in the worst case). Written out
    rather than ``ndarray.sort()``, whose quicksort takes seconds to compile on a cold start."""
    n = end - start
    for root in range(n // 2 - 1, -1, -1):
        _sift_down(values, start, root, end)
    for last in range(n - 1, 0, -1):
        swap = values[start]
        values[start] = values[start + last]
        values[start + last] = swap
        _sift_down(values, start, np.int64(0), start + last)


@_jit
def _kth_largest(values, count, k, spare_rounds=8):
    """The k-th largest (1 <= k <= count) of ``values[:count]``; reorders ``values[:count]`` in place.

    Quickselect with a median-of-three pivot and a three-way partition (runs of equal values cost one
    round); after ``3 log2(count) + spare_rounds`` rounds the remaining range is sorted instead
    (introselect: linear on average, never worse than n log n).
    """
    target = count - k  # the answer's index in ascending order
    low = np.int64(0)
    high = count - 1
    round_limit = spare_rounds
    span = count
    while span > 0:
        round_limit += 3
        span >>= 1
    rounds = 0
    while low < high:
        rounds += 1
        if rounds > round_limit:
            _heap_sort(values, low, high + 1)
            return values[target]
        middle = low + (high - low) // 2
        a = values[low]
        b = values[middle]
        c = values[high]
        if a < b:
            pivot = b if b < c else (c if a < c else a)
        else:
            pivot = a if a < c else (c if b < c else b)
        below = low      # values[low:below] < pivot
        scan = low       # values[below:scan] == pivot
        above = high     # values[above + 1:high + 1] > pivot
        while scan <= above:
            value = values[scan]
            if value < pivot:
                values[scan] = values[below]
                values[below] = value
                below += 1
                scan += 1
            elif value > pivot:
                values[scan] = values[above]
                values[above] = value
                above -= 1
            else:
                scan += 1
        if target < below:
            high = below - 1
        elif target > above:
            low = above + 1
        else:
            return pivot
    return values[target]


@_jit
def _compact(candidate_positions, candidate_magnitudes, count, k, kth):
    """Keep the top k of ``count`` candidates (in index order): all ``> kth``, then ties ``== kth`` lowest
    index first. Returns the new count (k, or fewer if fewer candidates reach kth)."""
    greater = 0
    for j in range(count):
        if candidate_magnitudes[j] > kth:
            greater += 1
    ties_left = k - greater
    kept = 0
    for j in range(count):
        magnitude = candidate_magnitudes[j]
        keep = magnitude > kth
        if not keep and magnitude == kth and ties_left > 0:
            ties_left -= 1
            keep = True
        if keep:
            candidate_positions[kept] = candidate_positions[j]
            candidate_magnitudes[kept] = magnitude
            kept += 1
    return kept


@_jit
def _lower_bound_guess(x, k, scratch):
    """The lower bound L of the module docstring (as float64), from the sample of every ``N // m``-th entry;
    ``TINY`` (i.e. "every nonzero") for short segments or r >= m. ``scratch`` holds the candidate buffer or
    PIVOT_SAMPLE entries, whichever is longer: enough for the sample."""
    size = x.shape[0]
    if size <= SHORT_SEGMENT:
        return TINY
    sample_size = min(PIVOT_SAMPLE, size // SAMPLE_STRIDE)
    stride = size // sample_size
    for j in range(sample_size):
        magnitude = abs(x[j * stride + stride // 2])
        if not np.isfinite(magnitude):
            raise ValueError(NONFINITE_MESSAGE)
        scratch[j] = magnitude
    expected = sample_size * (k / size)   # sample entries expected above the true threshold
    rank = int(expected + 4.0 * math.sqrt(expected) + 8.0)
    if rank >= sample_size:
        return TINY
    guess = np.float64(_kth_largest(scratch, sample_size, rank))
    return guess if guess > TINY else TINY


@_jit
def _collect_candidates(x, lower, k, candidate_positions, candidate_magnitudes, scratch):
    """One pass over ``x`` collecting ``|x_i| >= lower`` in index order; compacts to the top k when the
    buffer is full and raises ``lower`` past the k-th candidate. Returns (count, compacted)."""
    capacity = candidate_positions.shape[0]
    count = np.int64(0)
    compacted = False
    for i in range(x.shape[0]):
        magnitude = abs(x[i])
        if not (magnitude < lower):          # magnitude >= lower, or NaN
            if not np.isfinite(magnitude):
                raise ValueError(NONFINITE_MESSAGE)
            if count == capacity:
                _copy_prefix(candidate_magnitudes, count, scratch)
                kth = _kth_largest(scratch, count, k)
                count = _compact(candidate_positions, candidate_magnitudes, count, k, kth)
                # A later entry equal to kth loses the tie to an earlier one: admit only |x_i| > kth.
                lower = np.nextafter(np.float64(kth), np.inf)
                compacted = True
                if magnitude < lower:
                    continue
            candidate_positions[count] = i
            candidate_magnitudes[count] = magnitude
            count += 1
    return count, compacted


@_jit
def _candidate_capacity(size, k):
    """Candidate buffer length for a segment of ``size`` entries and a budget ``k``."""
    if size <= SMALL_SEGMENT:
        return size
    return min(size, max(2 * k, k + CANDIDATE_ROOM))


@_jit
def _scratch_length(size, k):
    """Scratch length for a segment: the candidate buffer, or the pivot sample if longer."""
    capacity = _candidate_capacity(size, k)
    if size > SMALL_SEGMENT and PIVOT_SAMPLE > capacity:
        return PIVOT_SAMPLE
    return capacity


@_jit
def _top_k_into(x, k, candidate_positions, candidate_magnitudes, scratch, positions_out):
    """The kept set K(x, k) into ``positions_out[:count]``; returns count = min(k, nonzeros).

    Buffers: ``candidate_*`` of length ``_candidate_capacity(len(x), k)``, ``scratch`` of length
    ``_scratch_length(len(x), k)``, ``positions_out`` of length >= min(k, len(x)).
    """
    size = x.shape[0]
    if k <= 0 or size == 0:
        # Still reject non-finite input: the caller's contract does not depend on k.
        for i in range(size):
            if not np.isfinite(x[i]):
                raise ValueError(NONFINITE_MESSAGE)
        return 0
    lower = _lower_bound_guess(x, k, scratch)
    count, compacted = _collect_candidates(x, lower, k, candidate_positions, candidate_magnitudes,
                                           scratch)
    if not compacted and count < k and lower > TINY:
        # The guessed bound excluded entries that belong to the top k: collect every nonzero instead.
        count, compacted = _collect_candidates(x, TINY, k, candidate_positions, candidate_magnitudes,
                                               scratch)
    if count > k:
        _copy_prefix(candidate_magnitudes, count, scratch)
        kth = _kth_largest(scratch, count, k)
        count = _compact(candidate_positions, candidate_magnitudes, count, k, kth)
    _copy_prefix(candidate_positions, count, positions_out)
    return count


@_jit
def _round_to_dtype(like, value):
    """``value`` rounded to the dtype of the array ``like`` (returned as that dtype's scalar)."""
    holder = np.empty(1, like.dtype)
    holder[0] = value
    return holder[0]


@_jit
def _mean_of(x, positions, count):
    """mu = dtype(float64 sequential sum of |x_i| over the first ``count`` positions / count); 0 for count 0."""
    if count == 0:
        return _round_to_dtype(x, 0.0)
    total = 0.0
    for j in range(count):
        total += np.float64(abs(x[positions[j]]))
    if not np.isfinite(total):
        raise UpdateOverflowError(SCALE_OVERFLOW_MESSAGE)
    return _round_to_dtype(x, total / count)


@_jit
def _work_buffers(x, size, k):
    """(candidate_positions, candidate_magnitudes, scratch) for a segment of ``size`` entries, budget k."""
    capacity = _candidate_capacity(size, k)
    return (np.empty(capacity, np.int64), np.empty(capacity, x.dtype),
            np.empty(_scratch_length(size, k), x.dtype))


@_jit
def _top_k_select_core(x, k, positions_out):
    candidate_positions, candidate_magnitudes, scratch = _work_buffers(x, x.shape[0], k)
    return _top_k_into(x, k, candidate_positions, candidate_magnitudes, scratch, positions_out)


def _kept(x, k):
    """min(k, N): the most entries a kept set of x can have."""
    return min(k, x.shape[0])


_BUDGET = Budget(size="x")
_POSITIONS_OUT = Array(INT64, output=True, at_least=_kept)


@checked(_top_k_select_core, x=FLOAT_VECTOR, k=_BUDGET, positions_out=_POSITIONS_OUT)
def _top_k_select(x, k, positions_out):
    """Write the kept set K(x, k) (module docstring), increasing, into ``positions_out``; return its size
    ``min(k, number of nonzeros of x)``."""


def _check_finite_numpy(x):
    if not np.all(np.isfinite(x)):
        raise ValueError(NONFINITE_MESSAGE)


def _top_k_select_numpy(x, k, positions_out):
    """NumPy twin of :func:`_top_k_select` (np.partition on the nonzero magnitudes)."""
    x, k, positions_out = _top_k_select.check(x, k, positions_out)
    _check_finite_numpy(x)
    magnitudes = np.abs(x)
    nonzero = np.flatnonzero(magnitudes > 0)
    if k <= 0:
        kept = nonzero[:0]
    elif nonzero.size <= k:
        kept = nonzero
    else:
        split = nonzero.size - k
        kth = np.partition(magnitudes[nonzero], split)[split]
        greater = np.flatnonzero(magnitudes > kth)
        ties = np.flatnonzero(magnitudes == kth)[: k - greater.size]
        kept = np.union1d(greater, ties)
    positions_out[: kept.size] = kept
    return int(kept.size)


def _mean_of_numpy(x, positions):
    if positions.size == 0:
        return x.dtype.type(0)
    with np.errstate(over="ignore"):
        total = np.cumsum(np.abs(x[positions]).astype(np.float64))[-1]
    if not np.isfinite(total):
        raise UpdateOverflowError(SCALE_OVERFLOW_MESSAGE)
    return x.dtype.type(total / positions.size)


@_jit
def _top_k_threshold_core(x, k):
    positions = np.empty(max(0, min(k, x.shape[0])), np.int64)
    count = _top_k_select_core(x, k, positions)
    threshold, mu = _threshold_and_mean(x, positions, count, k)
    return threshold, mu, count


@checked(_top_k_threshold_core, x=FLOAT_VECTOR, k=_BUDGET)
def _top_k_threshold(x, k):
    """(v, mu, |K|) of the kept set K(x, k) (module docstring), v and mu in x's dtype: v = the k-th
    largest |x_i| (0 when x has fewer than k nonzeros, or k = 0), mu its mean magnitude (0 if empty)."""


def _top_k_threshold_numpy(x, k):
    x, k = _top_k_threshold.check(x, k)
    positions = np.empty(max(0, min(k, x.shape[0])), np.int64)
    count = _top_k_select_numpy(x, k, positions)
    positions = positions[:count]
    threshold = x.dtype.type(0)
    if count == k and count > 0:
        threshold = np.abs(x[positions]).min()
    return threshold, _mean_of_numpy(x, positions), count


@_jit
def _top_k_sparsify_core(x, k, positions_out, values_out):
    count = _top_k_select_core(x, k, positions_out)
    for j in range(count):
        values_out[j] = x[positions_out[j]]
    return count


@checked(_top_k_sparsify_core, x=FLOAT_VECTOR, k=_BUDGET, positions_out=_POSITIONS_OUT,
         values_out=Array(checks.FLOAT, output=True, at_least=_kept, like="x"))
def _top_k_sparsify(x, k, positions_out, values_out):
    """Top-k sparsification: the kept set K(x, k) and its x_i (exact copies) into the outputs; returns
    its size."""


def _top_k_sparsify_numpy(x, k, positions_out, values_out):
    x, k, positions_out, values_out = _top_k_sparsify.check(x, k, positions_out, values_out)
    count = _top_k_select_numpy(x, k, positions_out)
    values_out[:count] = x[positions_out[:count]]
    return count


@_jit
def _threshold_and_mean(x, positions, count, k):
    """(v, mu) of a kept set: v = its smallest magnitude if it has k entries, else 0; mu its mean."""
    threshold = _round_to_dtype(x, 0.0)
    if count == k and count > 0:
        threshold = abs(x[positions[0]])
        for j in range(1, count):
            magnitude = abs(x[positions[j]])
            if magnitude < threshold:
                threshold = magnitude
    return threshold, _mean_of(x, positions, count)


@_jit
def _sampled_threshold_into(x, sample_positions, k_sample, sample_buffer, candidate_positions,
                            candidate_magnitudes, scratch, positions_buffer):
    """:func:`_sampled_top_k_threshold` with caller-provided buffers (``sample_buffer`` and
    ``positions_buffer`` at least as long as the sample)."""
    n_sample = sample_positions.shape[0]
    sample = sample_buffer[:n_sample]
    for j in range(n_sample):
        sample[j] = x[sample_positions[j]]
    count = _top_k_into(sample, k_sample, candidate_positions, candidate_magnitudes, scratch,
                        positions_buffer)
    return _threshold_and_mean(sample, positions_buffer, count, k_sample)


@_jit
def _sampled_top_k_threshold_core(x, sample_positions, k_sample):
    n_sample = sample_positions.shape[0]
    candidate_positions, candidate_magnitudes, scratch = _work_buffers(x, n_sample, k_sample)
    return _sampled_threshold_into(x, sample_positions, k_sample, np.empty(n_sample, x.dtype), candidate_positions,
                                   candidate_magnitudes, scratch, np.empty(n_sample, np.int64))


_SAMPLE_POSITIONS = Array(INT64, within="x")


@checked(_sampled_top_k_threshold_core, x=FLOAT_VECTOR, sample_positions=_SAMPLE_POSITIONS,
         k_sample=Budget(size="sample_positions"))
def _sampled_top_k_threshold(x, sample_positions, k_sample):
    """(v, mu) of :func:`_top_k_threshold` on the sample ``x[sample_positions]`` (in that order) with budget
    ``k_sample``: the reference's approximate threshold."""


def _sampled_top_k_threshold_numpy(x, sample_positions, k_sample):
    x, sample_positions, k_sample = _sampled_top_k_threshold.check(x, sample_positions, k_sample)
    threshold, mu, _ = _top_k_threshold_numpy(x[sample_positions], k_sample)
    return threshold, mu


@_jit
def _select_at_least_core(x, threshold, positions_out):
    bound = np.float64(threshold)
    count = 0
    largest = _round_to_dtype(x, 0.0)
    for i in range(x.shape[0]):
        magnitude = abs(x[i])
        if not (magnitude < bound):          # magnitude >= threshold, or NaN
            if not np.isfinite(magnitude):
                raise ValueError(NONFINITE_MESSAGE)
            positions_out[count] = i
            count += 1
            if magnitude > largest:
                largest = magnitude
    return count, largest


@checked(_select_at_least_core, x=FLOAT_VECTOR, threshold=Real(0.0, low_open=True),
         positions_out=Array(INT64, output=True, at_least="x"))
def _select_at_least(x, threshold, positions_out):
    """Positions with ``|x_i| >= threshold``, increasing, into ``positions_out`` (N entries: the count is
    not known in advance); returns (count, their largest magnitude, 0 if none)."""


def _select_at_least_numpy(x, threshold, positions_out):
    x, threshold, positions_out = _select_at_least.check(x, threshold, positions_out)
    _check_finite_numpy(x)
    magnitudes = np.abs(x)
    kept = np.flatnonzero(magnitudes >= threshold)
    positions_out[: kept.size] = kept
    largest = magnitudes[kept].max() if kept.size else x.dtype.type(0)
    return int(kept.size), largest
