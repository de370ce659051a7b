"""Kernels of the sparsifying compressors: exact and sampled top-k selection, STC ternarization, sign.

Conventions
-----------
All kernels take one 1-D float32 or float64 array ``x`` (one tensor, or the whole flat vector) and work in
its dtype; outputs go into preallocated arrays where their size is known to the caller. Every kernel raises
``ValueError("update contains NaN or inf")`` when it meets a non-finite entry (the simulator relies on this
to detect divergence). The public kernels check their arguments first (types, shapes, contiguity, buffer
lengths, ranges; :mod:`fedsim.kernels.checks`) and raise ValueError or TypeError naming the argument; the
jitted cores ``_<name>_core`` behind them trust their arguments.

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
for an empty set). The NumPy twins compute the same with ``np.cumsum`` (sequential, unlike ``np.sum``).
For float32 input the float64 sum cannot overflow; for float64 input whose kept magnitudes sum beyond
the float64 maximum (~1.8e308, a diverged update) mu is inf, and the next round's update is rejected.

Speed of the exact selection
----------------------------
A vector is read once. A strided sample of ``m = min(PIVOT_SAMPLE, N / SAMPLE_STRIDE)`` magnitudes (no
randomness; none for a short segment) gives a
lower bound ``L`` = its r-th largest, ``r = e + 4 sqrt(e) + 8`` where ``e = m k / N`` sample entries are
expected above the true threshold, so that about ``r N / m`` (a little more than k) entries pass; one pass
then collects the candidates ``|x_i| >= L`` (in index order) into a buffer, and the exact k-th largest is
selected among those few candidates (quickselect). If the
buffer fills, it is compacted to its own top k and ``L`` rises to the k-th candidate (so adversarial
orderings stay linear time); if fewer than ``k`` entries pass a guessed ``L``, the pass is repeated with
``L = 0+``. The result does not depend on the guess, only the running time does. The candidate pass is a
branch-predictable scan, while a quickselect mispredicts about every other comparison, so the sample keeps
the quickselects small (for the 10,240 weights of the STC seed model it makes the selection about 10 times
faster than a quickselect over all of them; for N = 1e5 about 4 times).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS, checks
from fedsim.kernels.checks import checked
from fedsim.kernels.golomb import (COUNT_BITS, _golomb_rice_bits_core, _rice_parameter_core,
                                   _sparse_segment_bits_core)

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

_jit = numba.njit(**JIT_OPTIONS)


# ----------------------------------------------------------------------------------------------------
# Selection helpers (jitted only; the twins use np.partition)
# ----------------------------------------------------------------------------------------------------

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
        _sift_down(values, start, 0, start + last)


@_jit
def _kth_largest(values, count, k, spare_rounds=8):
    """The k-th largest (1 <= k <= count) of ``values[:count]``; reorders ``values[:count]`` in place.

    Quickselect with a median-of-three pivot and a three-way partition (runs of equal values cost one
    round); after ``3 log2(count) + spare_rounds`` rounds the remaining range is sorted instead
    (introselect: linear on average, never worse than n log n).
    """
    target = count - k  # the answer's index in ascending order
    low = 0
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
    """A lower bound L (as float64) such that about ``k + 4 sqrt(k) + 8`` entries (scaled from a strided
    sample) have ``|x_i| >= L``; ``TINY`` (i.e. "every nonzero") for short segments.

    Sample: ``min(PIVOT_SAMPLE, N // SAMPLE_STRIDE)`` entries, every ``N // sample size``-th (``scratch``
    holds the candidate buffer or PIVOT_SAMPLE entries, whichever is longer: enough)."""
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
    count = 0
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
def _magnitude_sum(x, positions, count):
    """sum over the first ``count`` positions, in order, of float64(|x_i|) (sequential)."""
    total = 0.0
    for j in range(count):
        total += np.float64(abs(x[positions[j]]))
    return total


@_jit
def _round_to_dtype(like, value):
    """``value`` rounded to the dtype of the array ``like`` (returned as that dtype's scalar)."""
    holder = np.empty(1, like.dtype)
    holder[0] = value
    return holder[0]


@_jit
def _mean_of(x, positions, count):
    """mu = dtype(float64 sequential sum of |x_i| over the positions / count); 0 for count 0."""
    if count == 0:
        return _round_to_dtype(x, 0.0)
    return _round_to_dtype(x, _magnitude_sum(x, positions, count) / count)


# ----------------------------------------------------------------------------------------------------
# Public kernels and their NumPy twins
#
# Each public kernel checks its arguments in plain Python (fedsim.kernels.checks) and then calls its
# unchecked jitted core ``_<name>_core``; the twins run the same checks. Jitted callers use the cores.
# ----------------------------------------------------------------------------------------------------

def _budget(name, k, size):
    """``k`` (an integer >= 0) as the kernels receive it: any ``k > size`` is passed as ``size + 1``.

    The kept set has at most ``size`` entries, so ``count < k`` for every such k and the results do not
    change; the kernels' buffer arithmetic (``2 k``) stays far from int64 overflow."""
    return min(checks.integer(name, k), size + 1)


@_jit
def _top_k_select_core(x, k, positions_out):
    """:func:`top_k_select` without the argument checks."""
    capacity = _candidate_capacity(x.shape[0], k)
    candidate_positions = np.empty(capacity, np.int64)
    candidate_magnitudes = np.empty(capacity, x.dtype)
    scratch = np.empty(_scratch_length(x.shape[0], k), x.dtype)
    return _top_k_into(x, k, candidate_positions, candidate_magnitudes, scratch, positions_out)


@checked(_top_k_select_core)
def top_k_select(x, k, positions_out):
    """Write the kept set K(x, k) (module docstring) into ``positions_out``; return its size.

    Parameters
    ----------
    x : (N,) float32 or float64
    k : int
        Budget, ``k >= 0``.
    positions_out : (>= min(k, N),) int64
        Receives the kept positions, increasing, in ``positions_out[:count]``.

    Returns
    -------
    count : int
        ``min(k, number of nonzeros of x)``.
    """
    checks.float_vector("x", x)
    k = _budget("k", k, x.shape[0])
    checks.output("positions_out", positions_out, checks.INT64, min(k, x.shape[0]))
    return x, k, positions_out


def _check_finite_numpy(x):
    if not np.all(np.isfinite(x)):
        raise ValueError(NONFINITE_MESSAGE)


def top_k_select_numpy(x, k, positions_out):
    """NumPy twin of :func:`top_k_select` (np.partition on the nonzero magnitudes)."""
    x, k, positions_out = top_k_select.check(x, k, positions_out)
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
    total = np.cumsum(np.abs(x[positions]).astype(np.float64))[-1]
    return x.dtype.type(total / positions.size)


@_jit
def _top_k_threshold_core(x, k):
    """:func:`top_k_threshold` without the argument checks."""
    positions = np.empty(max(0, min(k, x.shape[0])), np.int64)
    count = _top_k_select_core(x, k, positions)
    threshold, mu = _threshold_and_mean(x, positions, count, k)
    return threshold, mu, count


@checked(_top_k_threshold_core)
def top_k_threshold(x, k):
    """Threshold and mean of the top-k magnitudes (``x``: (N,) float32 or float64, ``k >= 0``).

    Returns
    -------
    threshold : dtype of x
        v = the k-th largest |x_i| (0 when x has fewer than k nonzeros, or k = 0).
    mu : dtype of x
        Mean magnitude of the kept set K(x, k) (module docstring), 0 if it is empty.
    count : int
        |K(x, k)| = min(k, number of nonzeros).
    """
    checks.float_vector("x", x)
    return x, _budget("k", k, x.shape[0])


def top_k_threshold_numpy(x, k):
    """NumPy twin of :func:`top_k_threshold`."""
    x, k = top_k_threshold.check(x, k)
    positions = np.empty(max(0, min(k, x.shape[0])), np.int64)
    count = top_k_select_numpy(x, k, positions)
    positions = positions[:count]
    threshold = x.dtype.type(0)
    if count == k and count > 0:
        threshold = np.abs(x[positions]).min()
    return threshold, _mean_of_numpy(x, positions), count


@_jit
def _signs_at(x, positions, count, signs_out):
    """signs_out[j] = +1 if x[positions[j]] > 0 else -1 (the positions hold nonzero entries)."""
    for j in range(count):
        signs_out[j] = 1 if x[positions[j]] > 0 else -1


@_jit
def _ternarize_into(x, k, candidate_positions, candidate_magnitudes, scratch, positions_out, signs_out):
    """:func:`ternarize` with caller-provided buffers (see :func:`_top_k_into`)."""
    count = _top_k_into(x, k, candidate_positions, candidate_magnitudes, scratch, positions_out)
    _signs_at(x, positions_out, count, signs_out)
    return count, _mean_of(x, positions_out, count)


@_jit
def _ternarize_core(x, k, positions_out, signs_out):
    """:func:`ternarize` without the argument checks."""
    capacity = _candidate_capacity(x.shape[0], k)
    candidate_positions = np.empty(capacity, np.int64)
    candidate_magnitudes = np.empty(capacity, x.dtype)
    scratch = np.empty(_scratch_length(x.shape[0], k), x.dtype)
    return _ternarize_into(x, k, candidate_positions, candidate_magnitudes, scratch, positions_out,
                           signs_out)


@checked(_ternarize_core)
def ternarize(x, k, positions_out, signs_out):
    """Sparse ternary compression of one tensor (STC, arXiv 1903.02891, exact threshold).

    STC(x)_i = mu * sign(x_i) for i in the kept set K(x, k), 0 elsewhere; mu = mean |x_i| over K (module
    docstring: exactly ``min(k, nonzeros)`` entries, ties at the threshold go to the lowest indices).

    Parameters
    ----------
    x : (N,) float32 or float64
    k : int
        ``ceil(p N)`` for sparsity p (any ``k >= 0``).
    positions_out : (>= min(k, N),) int64
        Kept positions, increasing.
    signs_out : (>= min(k, N),) int8
        +1 or -1 for each kept position.

    Returns
    -------
    count : int
    mu : dtype of x
    """
    checks.float_vector("x", x)
    k = _budget("k", k, x.shape[0])
    kept = min(k, x.shape[0])
    checks.output("positions_out", positions_out, checks.INT64, kept)
    checks.output("signs_out", signs_out, checks.INT8, kept)
    return x, k, positions_out, signs_out


def ternarize_numpy(x, k, positions_out, signs_out):
    """NumPy twin of :func:`ternarize`."""
    x, k, positions_out, signs_out = ternarize.check(x, k, positions_out, signs_out)
    count = top_k_select_numpy(x, k, positions_out)
    positions = positions_out[:count]
    signs_out[:count] = np.where(x[positions] > 0, 1, -1)
    return count, _mean_of_numpy(x, positions)


@_jit
def _top_k_sparsify_core(x, k, positions_out, values_out):
    """:func:`top_k_sparsify` without the argument checks."""
    count = _top_k_select_core(x, k, positions_out)
    for j in range(count):
        values_out[j] = x[positions_out[j]]
    return count


@checked(_top_k_sparsify_core)
def top_k_sparsify(x, k, positions_out, values_out):
    """Top-k sparsification: keep x_i (exact copies) on the kept set K(x, k), drop the rest.

    ``x`` is (N,) float32 or float64 and ``k >= 0``; ``positions_out`` (int64) and ``values_out`` (x's
    dtype) each need length >= min(k, N). Returns the count ``min(k, number of nonzeros)``.
    """
    checks.float_vector("x", x)
    k = _budget("k", k, x.shape[0])
    kept = min(k, x.shape[0])
    checks.output("positions_out", positions_out, checks.INT64, kept)
    checks.output("values_out", values_out, checks.FLOAT, kept)
    checks.same_dtype("values_out", values_out, "x", x)
    return x, k, positions_out, values_out


def top_k_sparsify_numpy(x, k, positions_out, values_out):
    """NumPy twin of :func:`top_k_sparsify`."""
    x, k, positions_out, values_out = top_k_sparsify.check(x, k, positions_out, values_out)
    count = top_k_select_numpy(x, k, positions_out)
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
    """:func:`sampled_top_k_threshold` with caller-provided buffers (``sample_buffer`` and
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
    """:func:`sampled_top_k_threshold` without the argument checks."""
    n_sample = sample_positions.shape[0]
    capacity = _candidate_capacity(n_sample, k_sample)
    return _sampled_threshold_into(x, sample_positions, k_sample, np.empty(n_sample, x.dtype),
                                   np.empty(capacity, np.int64), np.empty(capacity, x.dtype),
                                   np.empty(_scratch_length(n_sample, k_sample), x.dtype),
                                   np.empty(n_sample, np.int64))


def _check_sample(x, sample_positions):
    checks.array("sample_positions", sample_positions, checks.INT64)
    checks.within("sample_positions", sample_positions, x.shape[0])


@checked(_sampled_top_k_threshold_core)
def sampled_top_k_threshold(x, sample_positions, k_sample):
    """Threshold and mean estimated from a sample (the reference's approximate threshold).

    The sample is ``x[sample_positions]`` in the given order (``sample_positions``: int64, each in
    [0, N)); its statistics are those of :func:`top_k_threshold` with budget ``k_sample >= 0``:
    threshold = the k_sample-th largest sampled magnitude (0 if the sample has fewer than k_sample
    nonzeros), mu = mean magnitude of the sample's kept set. Returns (threshold, mu) in x's dtype.
    """
    checks.float_vector("x", x)
    _check_sample(x, sample_positions)
    return x, sample_positions, _budget("k_sample", k_sample, sample_positions.shape[0])


def sampled_top_k_threshold_numpy(x, sample_positions, k_sample):
    """NumPy twin of :func:`sampled_top_k_threshold`."""
    x, sample_positions, k_sample = sampled_top_k_threshold.check(x, sample_positions, k_sample)
    threshold, mu, _ = top_k_threshold_numpy(x[sample_positions], k_sample)
    return threshold, mu


@_jit
def _select_at_least_core(x, threshold, positions_out):
    """:func:`select_at_least` without the argument checks."""
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


@checked(_select_at_least_core)
def select_at_least(x, threshold, positions_out):
    """Positions with ``|x_i| >= threshold`` (a finite threshold > 0), increasing, into ``positions_out``
    (int64, at least N entries: the count is not known in advance). Returns (count, largest magnitude
    among them, 0 if none)."""
    checks.float_vector("x", x)
    threshold = checks.real("threshold", threshold, 0.0, low_open=True)
    checks.output("positions_out", positions_out, checks.INT64, x.shape[0])
    return x, threshold, positions_out


def select_at_least_numpy(x, threshold, positions_out):
    """NumPy twin of :func:`select_at_least`."""
    x, threshold, positions_out = select_at_least.check(x, threshold, positions_out)
    _check_finite_numpy(x)
    magnitudes = np.abs(x)
    kept = np.flatnonzero(magnitudes >= threshold)
    positions_out[: kept.size] = kept
    largest = magnitudes[kept].max() if kept.size else x.dtype.type(0)
    return int(kept.size), largest


@_jit
def _sampled_ternarize_into(x, sample_positions, k_sample, k, sample_buffer, candidate_positions,
                            candidate_magnitudes, scratch, positions_out, signs_out):
    """:func:`sampled_ternarize` with caller-provided buffers (all of length N suffice)."""
    threshold, mu = _sampled_threshold_into(x, sample_positions, k_sample, sample_buffer,
                                            candidate_positions, candidate_magnitudes, scratch,
                                            positions_out)
    if threshold > 0:
        count, largest = _select_at_least_core(x, threshold, positions_out)
        if largest != threshold:
            _signs_at(x, positions_out, count, signs_out)
            return count, mu, False
    count, mu = _ternarize_into(x, k, candidate_positions, candidate_magnitudes, scratch, positions_out,
                                signs_out)
    return count, mu, True


@_jit
def _sampled_ternarize_core(x, sample_positions, k_sample, k, positions_out, signs_out):
    """:func:`sampled_ternarize` without the argument checks."""
    size = x.shape[0]
    capacity = max(_candidate_capacity(size, k), _candidate_capacity(sample_positions.shape[0], k_sample))
    scratch_length = max(_scratch_length(size, k), _scratch_length(sample_positions.shape[0], k_sample))
    return _sampled_ternarize_into(x, sample_positions, k_sample, k,
                                   np.empty(sample_positions.shape[0], x.dtype),
                                   np.empty(capacity, np.int64), np.empty(capacity, x.dtype),
                                   np.empty(scratch_length, x.dtype), positions_out, signs_out)


@checked(_sampled_ternarize_core)
def sampled_ternarize(x, sample_positions, k_sample, k, positions_out, signs_out):
    """STC with the sampled threshold (DESIGN "Approximate threshold"), with its exact fallback.

    threshold, mu = :func:`sampled_top_k_threshold` of the sample; output mu * sign(x_i) wherever
    ``|x_i| >= threshold`` (every such entry, ties included; the count is not fixed, and mu is the
    sample's estimate, as in the reference). If the threshold is 0 or equals max |x_i|, the exact
    :func:`ternarize` with budget ``k`` is used instead.

    Parameters
    ----------
    x : (N,) float32 or float64
    sample_positions : (n_s,) int64
        Positions of the sample (drawn by the caller), each in [0, N), at most N of them.
    k_sample : int
        ``ceil(n_s p)`` (any integer >= 0).
    k : int
        ``ceil(N p)``, for the fallback (any integer >= 0).
    positions_out, signs_out : (>= N,) int64 and int8
        Outputs (length N suffices whatever the threshold, and is required).

    Returns
    -------
    count : int
    mu : dtype of x
    exact : bool
        True if the exact fallback was used.
    """
    checks.float_vector("x", x)
    _check_sample(x, sample_positions)
    if sample_positions.shape[0] > x.shape[0]:     # (the sample's kept positions go to positions_out)
        raise ValueError(f"sample_positions holds {sample_positions.shape[0]} positions, more than the "
                         f"{x.shape[0]} entries of x")
    k_sample = _budget("k_sample", k_sample, sample_positions.shape[0])
    k = _budget("k", k, x.shape[0])
    checks.output("positions_out", positions_out, checks.INT64, x.shape[0])
    checks.output("signs_out", signs_out, checks.INT8, x.shape[0])
    return x, sample_positions, k_sample, k, positions_out, signs_out


def sampled_ternarize_numpy(x, sample_positions, k_sample, k, positions_out, signs_out):
    """NumPy twin of :func:`sampled_ternarize`."""
    x, sample_positions, k_sample, k, positions_out, signs_out = sampled_ternarize.check(
        x, sample_positions, k_sample, k, positions_out, signs_out)
    threshold, mu = sampled_top_k_threshold_numpy(x, sample_positions, k_sample)
    if threshold > 0:
        count, largest = select_at_least_numpy(x, threshold, positions_out)
        if largest != threshold:
            signs_out[:count] = np.where(x[positions_out[:count]] > 0, 1, -1)
            return count, mu, False
    count, mu = ternarize_numpy(x, k, positions_out, signs_out)
    return count, mu, True


@_jit
def _sign_core(x, signs_out):
    """:func:`sign` without the argument checks."""
    zeros = 0
    finite = True
    for i in range(x.shape[0]):
        value = x[i]
        positive = value > 0
        negative = value < 0
        signs_out[i] = np.int8(positive) - np.int8(negative)
        zeros += np.int64(not (positive or negative))
        finite &= value - value == 0
    if not finite:
        raise ValueError(NONFINITE_MESSAGE)
    return zeros


@checked(_sign_core)
def sign(x, signs_out):
    """signs_out[i] = sign(x_i) in {-1, 0, +1} (int8, at least N entries; sign(0) = sign(-0) = 0).
    Returns the zero count.

    One branch-free pass that the compiler vectorizes (random signs would mispredict a branch on every
    other entry): sign = [x > 0] - [x < 0]; the finiteness check ``x - x == 0`` (false for NaN and +-inf)
    is accumulated and raised after the pass.
    """
    checks.float_vector("x", x)
    checks.output("signs_out", signs_out, checks.INT8, x.shape[0])
    return x, signs_out


def sign_numpy(x, signs_out):
    """NumPy twin of :func:`sign`."""
    x, signs_out = sign.check(x, signs_out)
    _check_finite_numpy(x)
    signs_out[:x.shape[0]] = np.sign(x).astype(np.int8)
    return int(np.count_nonzero(x == 0))


@_jit
def _mean_magnitude_core(x):
    """:func:`mean_magnitude` without the argument checks."""
    total = 0.0
    for i in range(x.shape[0]):
        value = x[i]
        if not np.isfinite(value):
            raise ValueError(NONFINITE_MESSAGE)
        total += np.float64(abs(value))
    if x.shape[0] == 0:
        return _round_to_dtype(x, 0.0)
    return _round_to_dtype(x, total / x.shape[0])


@checked(_mean_magnitude_core)
def mean_magnitude(x):
    """dtype( (sequential float64 sum of |x_i|) / N ), 0 for an empty x (the scale of scaled sign);
    ``x``: (N,) float32 or float64."""
    return (checks.float_vector("x", x),)


def mean_magnitude_numpy(x):
    """NumPy twin of :func:`mean_magnitude`."""
    (x,) = mean_magnitude.check(x)
    _check_finite_numpy(x)
    if x.size == 0:
        return x.dtype.type(0)
    return x.dtype.type(np.cumsum(np.abs(x).astype(np.float64))[-1] / x.size)


@_jit
def _all_finite_core(x):
    """:func:`all_finite` without the argument checks."""
    flat = x.reshape(-1)
    for i in range(flat.shape[0]):
        if not np.isfinite(flat[i]):
            return False
    return True


@checked(_all_finite_core)
def all_finite(x):
    """True if every entry of ``x`` (a C-contiguous float32 or float64 array of any shape, at least 1-D)
    is finite."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array of dtype float32 or float64, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError("x must be an array of at least one dimension, got a 0-D array")
    return (checks.array("x", x, checks.FLOAT, x.ndim),)


def all_finite_numpy(x):
    """NumPy twin of :func:`all_finite`."""
    (x,) = all_finite.check(x)
    return bool(np.all(np.isfinite(x)))


# ----------------------------------------------------------------------------------------------------
# Batched kernels: K updates (rows) in one call, each row exactly as the single-update kernels give it
# ----------------------------------------------------------------------------------------------------

@_jit
def _longest_segment(segment_offsets):
    longest = 0
    for j in range(segment_offsets.shape[0] - 1):
        longest = max(longest, segment_offsets[j + 1] - segment_offsets[j])
    return longest


@_jit
def _batch_buffers(segment_offsets, dtype_like):
    """The work buffers of a batch, sized for its longest segment."""
    longest = _longest_segment(segment_offsets)
    scratch_length = longest if longest <= SMALL_SEGMENT else max(longest, PIVOT_SAMPLE)
    return (np.empty(longest, np.int64), np.empty(longest, dtype_like.dtype), np.empty(scratch_length, dtype_like.dtype),
            np.empty(longest, dtype_like.dtype), np.empty(longest, np.int64), np.empty(longest, np.int8))


@_jit
def _write_ternary(sent_out, row, start, stop, positions, signs, count, mu, float_bits):
    """Row ``row``'s segment [start, stop) of ``sent_out`` = signs * mu at the kept positions; its bits."""
    for t in range(count):
        sent_out[row, start + positions[t]] = signs[t] * mu
    # (np.int64: one compiled bit counter for every caller, not one per literal argument)
    return _sparse_segment_bits_core(positions[:count], stop - start, np.int64(1), float_bits)


@_jit
def _stc_batch_core(updates, segment_offsets, budgets, float_bits, sent_out, counts_out, encoded_bits_out):
    """Exact STC of every row (see :func:`sparse_compress_batch`)."""
    n_segments = segment_offsets.shape[0] - 1
    candidate_positions, candidate_magnitudes, scratch, _, positions, signs = _batch_buffers(segment_offsets,
                                                                                            updates)
    for row in range(updates.shape[0]):
        total_bits = 0
        for j in range(n_segments):
            start = segment_offsets[j]
            stop = segment_offsets[j + 1]
            count, mu = _ternarize_into(updates[row, start:stop], budgets[j], candidate_positions,
                                        candidate_magnitudes, scratch, positions, signs)
            total_bits += _write_ternary(sent_out, row, start, stop, positions, signs, count, mu, float_bits)
            counts_out[row, j] = count
        encoded_bits_out[row] = total_bits


@_jit
def _top_k_batch_core(updates, segment_offsets, budgets, float_bits, sent_out, counts_out, encoded_bits_out):
    """Top-k (with values) of every row (see :func:`sparse_compress_batch`)."""
    n_segments = segment_offsets.shape[0] - 1
    candidate_positions, candidate_magnitudes, scratch, _, positions, _ = _batch_buffers(segment_offsets,
                                                                                        updates)
    for row in range(updates.shape[0]):
        total_bits = 0
        for j in range(n_segments):
            start = segment_offsets[j]
            stop = segment_offsets[j + 1]
            x = updates[row, start:stop]
            count = _top_k_into(x, budgets[j], candidate_positions, candidate_magnitudes, scratch, positions)
            for t in range(count):
                sent_out[row, start + positions[t]] = x[positions[t]]
            total_bits += _sparse_segment_bits_core(positions[:count], stop - start, float_bits, np.int64(0))
            counts_out[row, j] = count
        encoded_bits_out[row] = total_bits


@_jit
def _sampled_batch_core(updates, segment_offsets, budgets, float_bits, sample_positions, sample_starts,
                        sample_budgets, sent_out, counts_out, encoded_bits_out):
    """STC with the sampled threshold of every row (see :func:`sparse_compress_batch`)."""
    n_segments = segment_offsets.shape[0] - 1
    candidate_positions, candidate_magnitudes, scratch, sample_buffer, positions, signs = _batch_buffers(
        segment_offsets, updates)
    for row in range(updates.shape[0]):
        total_bits = 0
        for j in range(n_segments):
            start = segment_offsets[j]
            stop = segment_offsets[j + 1]
            first = sample_starts[row * n_segments + j]
            last = sample_starts[row * n_segments + j + 1]
            count, mu, _ = _sampled_ternarize_into(
                updates[row, start:stop], sample_positions[first:last], sample_budgets[j], budgets[j],
                sample_buffer, candidate_positions, candidate_magnitudes, scratch, positions, signs)
            total_bits += _write_ternary(sent_out, row, start, stop, positions, signs, count, mu, float_bits)
            counts_out[row, j] = count
        encoded_bits_out[row] = total_bits


def _sparse_compress_batch_core(updates, segment_offsets, budgets, ternary, float_bits, sampled,
                                sample_positions, sample_starts, sample_budgets,
                                sent_out, counts_out, encoded_bits_out):
    """:func:`sparse_compress_batch` without the argument checks: one jitted kernel for each of top-k,
    exact STC and sampled STC, so that a run compiles only the one it uses."""
    if ternary and sampled:
        return _sampled_batch_core(updates, segment_offsets, budgets, float_bits, sample_positions,
                                   sample_starts, sample_budgets, sent_out, counts_out, encoded_bits_out)
    exact = _stc_batch_core if ternary else _top_k_batch_core
    return exact(updates, segment_offsets, budgets, float_bits, sent_out, counts_out, encoded_bits_out)


def _sparse_compress_batch_py(updates, segment_offsets, budgets, ternary, float_bits, sampled,
                              sample_positions, sample_starts, sample_budgets,
                              sent_out, counts_out, encoded_bits_out):
    """The same in pure Python (the kernels' ``py_func``), for the tests."""
    if ternary and sampled:
        return _sampled_batch_core.py_func(updates, segment_offsets, budgets, float_bits, sample_positions,
                                           sample_starts, sample_budgets, sent_out, counts_out,
                                           encoded_bits_out)
    exact = _stc_batch_core if ternary else _top_k_batch_core
    return exact.py_func(updates, segment_offsets, budgets, float_bits, sent_out, counts_out, encoded_bits_out)


_sparse_compress_batch_core.py_func = _sparse_compress_batch_py


def _check_batch_rows(updates, segment_offsets):
    """(n_rows, n_segments) of a batch: ``updates`` (K, P) float, offsets cutting [0, P)."""
    checks.array("updates", updates, checks.FLOAT, 2)
    return updates.shape[0], checks.segment_count("segment_offsets", segment_offsets, updates.shape[1])


def _check_batch_samples(segment_offsets, n_rows, sample_positions, sample_starts, sample_budgets):
    """The samples of a sampled STC batch: one per (row, segment), row-major, each position within its
    segment and no more positions than the segment has entries (a pass over the sample positions)."""
    sizes = np.diff(segment_offsets)
    n_segments = sizes.shape[0]
    checks.shaped("sample_budgets", sample_budgets, checks.INT64, (n_segments,))
    checks.nonnegative("sample_budgets", sample_budgets)
    n_samples = n_rows * n_segments
    checks.shaped("sample_starts", sample_starts, checks.INT64, (n_samples + 1,))
    counts = np.diff(sample_starts)
    if sample_starts[0] != 0 or sample_starts[-1] != sample_positions.shape[0] \
            or (n_samples and counts.min() < 0):
        raise ValueError(f"sample_starts must run from 0 to len(sample_positions) = "
                         f"{sample_positions.shape[0]} without decreasing")
    limits = np.tile(sizes, n_rows)
    if n_samples and np.any(counts > limits):
        where = int(np.flatnonzero(counts > limits)[0])
        raise ValueError(f"sample_starts gives row {where // n_segments}, segment {where % n_segments} "
                         f"{int(counts[where])} sample positions, more than its {int(limits[where])} "
                         f"entries")
    if sample_positions.shape[0]:
        bounds = np.repeat(limits, counts)
        outside = (sample_positions < 0) | (sample_positions >= bounds)
        if outside.any():
            where = int(np.flatnonzero(outside)[0])
            raise ValueError(f"sample_positions must lie within their segment: entry {where} is "
                             f"{int(sample_positions[where])}, its segment has {int(bounds[where])} entries")


@checked(_sparse_compress_batch_core)
def sparse_compress_batch(updates, segment_offsets, budgets, ternary, float_bits, sampled,
                          sample_positions, sample_starts, sample_budgets,
                          sent_out, counts_out, encoded_bits_out):
    """Top-k or STC of every row of ``updates``, segment by segment, in one call.

    Row r, segment j (``updates[r, offsets[j]:offsets[j + 1]]``) gets exactly what
    :func:`top_k_sparsify` (``ternary`` False), :func:`ternarize` (``ternary`` True) or
    :func:`sampled_ternarize` (``ternary`` and ``sampled``) give it with budget ``budgets[j]``.

    Parameters
    ----------
    updates : (K, P) float32 or float64, C-contiguous
    segment_offsets : (S + 1,) int64
        From 0 to P, non-decreasing.
    budgets : (S,) int64
        k of each segment (>= 0).
    ternary : bool
        STC (True) or top-k with values (False).
    float_bits : int
        Bits of one encoded float (32 or 64): the values of top-k, the mu of STC.
    sampled : bool
        Sampled threshold (STC only).
    sample_positions : (total,) int64
        All samples, row-major over (row, segment), positions within the segment.
    sample_starts : (K S + 1,) int64
        Sample of row r, segment j: ``sample_positions[sample_starts[r S + j]:sample_starts[r S + j + 1]]``
        (at most as many positions as the segment has entries).
    sample_budgets : (S,) int64
        k_s of each segment (>= 0).
    sent_out : (K, P), the dtype of ``updates``, zero-filled
        Receives the decompressed messages.
    counts_out : (K, S) int64
        Kept entries per row and segment.
    encoded_bits_out : (K,) int64
        Encoded message length per row (the message formats of :mod:`fedsim.compress.base`).

    The three sample arrays must be int64 vectors in any case; their lengths and contents are checked
    (and used) only for sampled STC.
    """
    n_rows, n_segments = _check_batch_rows(updates, segment_offsets)
    checks.shaped("budgets", budgets, checks.INT64, (n_segments,))
    checks.nonnegative("budgets", budgets)
    ternary = checks.flag("ternary", ternary)
    float_bits = checks.float_bits("float_bits", float_bits)
    sampled = checks.flag("sampled", sampled)
    checks.array("sample_positions", sample_positions, checks.INT64)
    checks.array("sample_starts", sample_starts, checks.INT64)
    checks.array("sample_budgets", sample_budgets, checks.INT64)
    if ternary and sampled:
        _check_batch_samples(segment_offsets, n_rows, sample_positions, sample_starts, sample_budgets)
    checks.shaped("sent_out", sent_out, checks.FLOAT, updates.shape, True)
    checks.same_dtype("sent_out", sent_out, "updates", updates)
    checks.shaped("counts_out", counts_out, checks.INT64, (n_rows, n_segments), True)
    checks.shaped("encoded_bits_out", encoded_bits_out, checks.INT64, (n_rows,), True)
    return (updates, segment_offsets, budgets, ternary, float_bits, sampled, sample_positions, sample_starts,
            sample_budgets, sent_out, counts_out, encoded_bits_out)


@_jit
def _sign_compress_batch_core(updates, segment_offsets, scaled, float_bits, sent_out, scales_out,
                              encoded_bits_out):
    """:func:`sign_compress_batch` without the argument checks."""
    n_rows = updates.shape[0]
    n_segments = segment_offsets.shape[0] - 1
    longest = _longest_segment(segment_offsets)
    signs = np.empty(longest, np.int8)
    zero_positions = np.empty(longest, np.int64)
    for row in range(n_rows):
        total_bits = 0
        for j in range(n_segments):
            start = segment_offsets[j]
            stop = segment_offsets[j + 1]
            x = updates[row, start:stop]
            n_zeros = _sign_core(x, signs)
            scale = _mean_magnitude_core(x) if scaled else _round_to_dtype(x, 1.0)
            scales_out[row, j] = scale
            found = 0
            for i in range(stop - start):
                if signs[i] == 0:
                    zero_positions[found] = i
                    found += 1
                sent_out[row, start + i] = signs[i] * scale
            total_bits += COUNT_BITS + _golomb_rice_bits_core(zero_positions[:n_zeros],
                                                              _rice_parameter_core(n_zeros, stop - start))
            total_bits += stop - start - n_zeros
            if scaled:
                total_bits += float_bits
        encoded_bits_out[row] = total_bits


@checked(_sign_compress_batch_core)
def sign_compress_batch(updates, segment_offsets, scaled, float_bits, sent_out, scales_out,
                        encoded_bits_out):
    """sign (times the segment's mean magnitude if ``scaled``) of every row, in one call.

    ``updates`` (K, P) float32 or float64 and ``segment_offsets`` (S + 1,) int64 as in
    :func:`sparse_compress_batch`; ``sent_out[r, i] = sign(x_ri) * scale_rj`` (scale 1 when unscaled;
    (K, P) in the dtype of ``updates``), ``scales_out[r, j]`` the scale ((K, S), same dtype),
    ``encoded_bits_out[r]`` ((K,) int64) the sign message length: per segment 32 + Golomb-Rice bits of
    the zero positions + one bit per nonzero entry (+ ``float_bits``, 32 or 64, for the scale when
    scaled).
    """
    n_rows, n_segments = _check_batch_rows(updates, segment_offsets)
    scaled = checks.flag("scaled", scaled)
    float_bits = checks.float_bits("float_bits", float_bits)
    checks.shaped("sent_out", sent_out, checks.FLOAT, updates.shape, True)
    checks.same_dtype("sent_out", sent_out, "updates", updates)
    checks.shaped("scales_out", scales_out, checks.FLOAT, (n_rows, n_segments), True)
    checks.same_dtype("scales_out", scales_out, "updates", updates)
    checks.shaped("encoded_bits_out", encoded_bits_out, checks.INT64, (n_rows,), True)
    return updates, segment_offsets, scaled, float_bits, sent_out, scales_out, encoded_bits_out
