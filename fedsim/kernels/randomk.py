"""Kernels of random-k sparsification: seeded positions, and the gather / scale / scatter of a batch.

Positions from a seed
---------------------
The k positions of a segment of N entries are a pure function of ``(seed, segment, N, k)`` (the seed is a
64-bit integer, the segment its index in the layout), so that a receiver holding the seed rebuilds them
without their being sent. Their definition, bit for bit (all arithmetic on unsigned 64-bit integers,
modulo 2^64)::

    mix(z)         = z3 where  z1 = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
                               z2 = (z1 ^ (z1 >> 27)) * 0x94D049BB133111EB
                               z3 = z2 ^ (z2 >> 31)
    output(s, n)   = mix(s + n * 0x9E3779B97F4A7C15)           the n-th output (n >= 1) of SplitMix64
                                                                started at state s
    key            = output(seed, segment + 1)                  one stream per segment
    draw(t)        = output(key, t + 1)                         t = 0, 1, ..., k - 1
    below(z, r)    = floor(z r / 2^64)                          in [0, r), for 1 <= r <= 2^32

SplitMix64 is Steele, Lea and Flood's generator (OOPSLA 2014; ``mix`` is Stafford's "variant 13"
finalizer), a counter-based function of the state. Floyd's algorithm (Bentley and Floyd, "A sample of
brilliance", CACM 1987) then draws k distinct values of [0, N) uniformly without replacement::

    S = {}
    for t in 0 .. k - 1:
        j = N - k + t
        i = below(draw(t), j + 1)                               uniform on [0, j]
        if i in S: i = j                                        j is never in S yet
        S = S + {i};  position[t] = i

``position`` lists the positions in the order chosen (not sorted). Every k-subset has probability
1 / C(N, k) up to the multiply-high map's bias (each value of [0, j] within 2^-64 of 1 / (j + 1): below
2^-32 for segments of up to 2^32 entries, the largest allowed). ``below`` is computed on 32-bit halves so
that no product exceeds 64 bits::

    below(z, r) = ( (z >> 32) r + (((z & 0xFFFFFFFF) r) >> 32) ) >> 32

which equals floor(z r / 2^64) exactly for r <= 2^32 (both terms and their sum stay below 2^64).

Batch
-----
:func:`randomk_compress_batch` takes K rows (each with its own seed) and writes, for row r and segment j
(``x = updates[r, offsets[j]:offsets[j + 1]]``, positions ``i_t`` of ``(seeds[r], j)``)::

    decoded[r, offsets[j] + i_t] = x[i_t] * scales[j]           one multiply in the data's dtype
    decoded[r, elsewhere]        = 0
    values[r, start_j + t]       = x[i_t]                       start_j = k_0 + ... + k_(j-1)

``scales[j]`` is ``dtype(N / k)`` for unbiased random-k and 1 (an exact multiply) for the unscaled form.
A value beyond ``max / scale`` (a diverged update) overflows to inf in ``decoded``, silently as in IEEE
arithmetic; the simulation rejects the next update that carries the inf. A NaN or an infinite entry
anywhere in a row raises ``ValueError(NONFINITE_MESSAGE)``. Work per row: one pass over the row (the
finiteness check fused with zeroing ``decoded``) and O(k) for the positions. The twins draw in NumPy
uint64 arithmetic and run Floyd's loop with a Python set.
"""

from __future__ import annotations

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS, checks
from fedsim.kernels.checks import Array, Count, checked
from fedsim.kernels.selection import NONFINITE_MESSAGE
from fedsim.kernels.sparsify import _longest_segment

_jit = numba.njit(**JIT_OPTIONS)

# Segments may have up to this many entries (``below`` needs bounds r <= 2^32).
MAX_SEGMENT = 1 << 32
BUDGETS_MESSAGE = "budgets must be in [0, segment size]"
SEGMENTS_MESSAGE = "random positions need segments of at most 2^32 entries"

# SplitMix64's increment (2^64 / phi, odd) and the two multipliers of its output finalizer.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_LOW_HALF = np.uint64(0xFFFFFFFF)
_S27 = np.uint64(27)
_S30 = np.uint64(30)
_S31 = np.uint64(31)
_S32 = np.uint64(32)


class _UInt64(Count):
    """An integer in [0, 2^64), passed on as numpy.uint64."""

    def __init__(self):
        super().__init__(0, (1 << 64) - 1)

    def check(self, name, value, values):
        return np.uint64(super().check(name, value, values))


def _segment_fits(size, k):
    if not (0 <= k <= size <= MAX_SEGMENT):
        raise ValueError(f"random positions need 0 <= k <= size <= 2^32, got k={k}, size={size}")


def _budgets_fit(segment_offsets, budgets):
    """0 <= k_j <= N_j <= 2^32 for every segment."""
    n_segments = budgets.shape[0]
    if n_segments <= checks.SHORT_ARRAY:          # (lists: cheaper than NumPy calls for a few segments)
        offsets = segment_offsets.tolist()
        sizes = [stop - start for start, stop in zip(offsets[:-1], offsets[1:])]
        ks = budgets.tolist()
        within = all(0 <= k <= n for k, n in zip(ks, sizes))
        longest = max(sizes, default=0)
    else:
        sizes = np.diff(segment_offsets)
        within = budgets.min() >= 0 and not np.any(budgets > sizes)
        longest = int(sizes.max())
    if not within:
        raise ValueError(f"{BUDGETS_MESSAGE}, got budgets {budgets[:8].tolist()} for segments of "
                         f"{list(sizes[:8])} entries")
    if longest > MAX_SEGMENT:
        raise ValueError(SEGMENTS_MESSAGE)


def _sent_values_shape(updates, budgets):
    """(K, sum of the budgets)."""
    total = sum(budgets.tolist()) if budgets.shape[0] <= checks.SHORT_ARRAY else int(budgets.sum())
    return (updates.shape[0], total)


# --- SplitMix64 and the bounded map (jitted) ------------------------------------------------------

def _mix_numpy(z):
    """``mix`` of uint64 values (NumPy arrays wrap modulo 2^64 without warnings); jitted as ``_mix``."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _below_numpy(z, bound):
    """floor(z bound / 2^64) for 1 <= bound <= 2^32 (uint64 in, uint64 out); jitted as ``_below``."""
    high = (z >> _S32) * bound
    low = ((z & _LOW_HALF) * bound) >> _S32
    return (high + low) >> _S32


_mix = _jit(_mix_numpy)
_below = _jit(_below_numpy)


@_jit
def _output(state, n):
    """The n-th output (n >= 1, uint64) of SplitMix64 started at ``state``."""
    return _mix(state + n * _GAMMA)


# --- Positions of one segment ---------------------------------------------------------------------

@_jit
def _floyd_into(seed, segment, size, k, positions_out, marks):
    """Floyd's algorithm (module docstring) into ``positions_out[:k]``; ``marks`` (uint8, >= size long)
    must be all zero on entry and is all zero again on return."""
    key = _output(np.uint64(seed), np.uint64(segment + 1))
    first = size - k
    for t in range(k):
        j = first + t
        i = np.int64(_below(_output(key, np.uint64(t + 1)), np.uint64(j + 1)))
        if marks[i]:
            i = j
        marks[i] = 1
        positions_out[t] = i
    for t in range(k):
        marks[positions_out[t]] = 0


@_jit
def _random_positions_core(seed, segment, size, k, positions_out):
    if k < 0 or k > size or size > MAX_SEGMENT:
        raise ValueError("random positions need 0 <= k <= size <= 2^32")
    marks = np.zeros(size, np.uint8)
    _floyd_into(seed, segment, size, k, positions_out, marks)


@checked(_random_positions_core, seed=_UInt64(), segment=Count(0, checks.INT64_MAX - 1),
         size=Count(-checks.INT64_MAX, checks.INT64_MAX),
         k=Count(-checks.INT64_MAX, checks.INT64_MAX, then=_segment_fits),
         positions_out=Array(checks.INT64, output=True, at_least=lambda k: k))
def random_positions(seed, segment, size, k, positions_out):
    """The k positions of segment ``segment`` (of ``size`` entries) for ``seed``, in the order Floyd's
    algorithm picks them, into ``positions_out[:k]`` (int64, at least k entries). Requires
    0 <= k <= size <= 2^32, a seed in [0, 2^64) and a segment index in [0, 2^63 - 1)."""


def random_positions_numpy(seed, segment, size, k, positions_out):
    seed, segment, size, k, positions_out = random_positions.check(seed, segment, size, k, positions_out)
    if k == 0:
        return
    key = _mix_numpy(np.array([seed], np.uint64) + np.array([segment + 1], np.uint64) * _GAMMA)
    draws = _mix_numpy(key + np.arange(1, k + 1, dtype=np.uint64) * _GAMMA)
    bounds = np.arange(size - k + 1, size + 1, dtype=np.uint64)
    picks = _below_numpy(draws, bounds).astype(np.int64)
    chosen = set()
    for t, (i, j) in enumerate(zip(picks.tolist(), range(size - k, size))):
        if i in chosen:
            i = j
        chosen.add(i)
        positions_out[t] = i


# --- The batch: K rows, segment by segment --------------------------------------------------------

@_jit
def _randomk_compress_batch_core(updates, segment_offsets, budgets, scales, seeds, decoded_out, values_out):
    n_rows = updates.shape[0]
    n_segments = segment_offsets.shape[0] - 1
    longest = _longest_segment(segment_offsets)
    for j in range(n_segments):
        if budgets[j] < 0 or budgets[j] > segment_offsets[j + 1] - segment_offsets[j]:
            raise ValueError(BUDGETS_MESSAGE)
    if longest > MAX_SEGMENT:
        raise ValueError(SEGMENTS_MESSAGE)
    marks = np.zeros(longest, np.uint8)
    positions = np.empty(longest, np.int64)
    for row in range(n_rows):
        finite = True
        for i in range(updates.shape[1]):
            value = updates[row, i]
            finite &= value - value == 0
            decoded_out[row, i] = 0
        if not finite:
            raise ValueError(NONFINITE_MESSAGE)
        written = 0
        for j in range(n_segments):
            start = segment_offsets[j]
            k = budgets[j]
            _floyd_into(seeds[row], j, segment_offsets[j + 1] - start, k, positions, marks)
            scale = scales[j]
            for t in range(k):
                value = updates[row, start + positions[t]]
                decoded_out[row, start + positions[t]] = value * scale
                values_out[row, written + t] = value
            written += k


@checked(_randomk_compress_batch_core, updates=checks.UPDATES, segment_offsets=checks.SEGMENT_OFFSETS,
         budgets=Array(checks.INT64, shape=checks.segments, then=_budgets_fit),
         scales=Array(checks.FLOAT, shape=checks.segments, like="updates"),
         seeds=Array(checks.UINT64, shape=checks.rows), decoded_out=checks.PER_ENTRY_OUT,
         values_out=Array(checks.FLOAT, output=True, shape=_sent_values_shape, like="updates"))
def randomk_compress_batch(updates, segment_offsets, budgets, scales, seeds, decoded_out, values_out):
    """Random-k of every row of ``updates`` (module docstring, "Batch"), in one call, with the budgets k_j
    (0 <= k_j <= N_j <= 2^32), the scales and one seed per row; ``values_out`` gets the sent values ``x[i_t]``
    (unscaled), segment after segment, each in Floyd's order."""


def randomk_compress_batch_numpy(updates, segment_offsets, budgets, scales, seeds, decoded_out, values_out):
    updates, segment_offsets, budgets, scales, seeds, decoded_out, values_out = randomk_compress_batch.check(
        updates, segment_offsets, budgets, scales, seeds, decoded_out, values_out)
    sizes = np.diff(segment_offsets)
    if not np.all(np.isfinite(updates)):
        raise ValueError(NONFINITE_MESSAGE)
    decoded_out[...] = 0
    positions = np.empty(int(sizes.max(initial=0)), np.int64)
    for row in range(updates.shape[0]):
        written = 0
        for j, (start, k) in enumerate(zip(segment_offsets[:-1].tolist(), budgets.tolist())):
            random_positions_numpy(seeds[row], j, int(sizes[j]), k, positions)
            chosen = updates[row, start + positions[:k]]
            with np.errstate(over="ignore"):                   # as the kernel: overflow gives inf
                decoded_out[row, start + positions[:k]] = chosen * scales[j]
            values_out[row, written:written + k] = chosen
            written += k
