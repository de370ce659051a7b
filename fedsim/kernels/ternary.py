"""STC ternarization (exact and with the sampled threshold), sign and mean magnitude of one vector.

Private helpers of the batched kernels of :mod:`fedsim.kernels.sparsify`; the kept set K(x, k), its mean
magnitude mu and the sampled threshold are defined in :mod:`fedsim.kernels.selection`.
"""

from __future__ import annotations

import numba
import numpy as np

from fedsim.errors import UpdateOverflowError
from fedsim.kernels import JIT_OPTIONS
from fedsim.kernels.checks import FLOAT_VECTOR, INT8, INT64, Array, Budget, checked
from fedsim.kernels.selection import (_BUDGET, _POSITIONS_OUT, _SAMPLE_POSITIONS, NONFINITE_MESSAGE,
                                      SCALE_OVERFLOW_MESSAGE, _candidate_capacity, _check_finite_numpy, _kept,
                                      _mean_of, _mean_of_numpy, _round_to_dtype, _sampled_threshold_into,
                                      _sampled_top_k_threshold_numpy, _scratch_length, _select_at_least_core,
                                      _select_at_least_numpy, _top_k_into, _top_k_select_numpy, _work_buffers)

_jit = numba.njit(**JIT_OPTIONS)


@_jit
def _signs_at(x, positions, count, signs_out):
    """signs_out[j] = +1 if x[positions[j]] > 0 else -1 (the positions hold nonzero entries)."""
    for j in range(count):
        signs_out[j] = 1 if x[positions[j]] > 0 else -1


@_jit
def _ternarize_into(x, k, candidate_positions, candidate_magnitudes, scratch, positions_out, signs_out):
    """:func:`_ternarize` with caller-provided buffers (see :func:`_top_k_into`)."""
    count = _top_k_into(x, k, candidate_positions, candidate_magnitudes, scratch, positions_out)
    _signs_at(x, positions_out, count, signs_out)
    return count, _mean_of(x, positions_out, count)


@_jit
def _ternarize_core(x, k, positions_out, signs_out):
    candidate_positions, candidate_magnitudes, scratch = _work_buffers(x, x.shape[0], k)
    return _ternarize_into(x, k, candidate_positions, candidate_magnitudes, scratch, positions_out,
                           signs_out)


@checked(_ternarize_core, x=FLOAT_VECTOR, k=_BUDGET, positions_out=_POSITIONS_OUT,
         signs_out=Array(INT8, output=True, at_least=_kept))
def _ternarize(x, k, positions_out, signs_out):
    """Sparse ternary compression of one tensor (STC, arXiv 1903.02891, exact threshold).

    STC(x)_i = mu * sign(x_i) for i in the kept set K(x, k), 0 elsewhere; mu = mean |x_i| over K (both
    defined in :mod:`fedsim.kernels.selection`). Writes K (increasing) and the signs (+-1); returns
    (|K|, mu), mu in x's dtype.
    """


def _ternarize_numpy(x, k, positions_out, signs_out):
    x, k, positions_out, signs_out = _ternarize.check(x, k, positions_out, signs_out)
    count = _top_k_select_numpy(x, k, positions_out)
    positions = positions_out[:count]
    signs_out[:count] = np.where(x[positions] > 0, 1, -1)
    return count, _mean_of_numpy(x, positions)


@_jit
def _sampled_ternarize_into(x, sample_positions, k_sample, k, sample_buffer, candidate_positions,
                            candidate_magnitudes, scratch, positions_out, signs_out):
    """:func:`_sampled_ternarize` with caller-provided buffers (all of length N suffice)."""
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
    size = x.shape[0]
    capacity = max(_candidate_capacity(size, k), _candidate_capacity(sample_positions.shape[0], k_sample))
    scratch_length = max(_scratch_length(size, k), _scratch_length(sample_positions.shape[0], k_sample))
    return _sampled_ternarize_into(x, sample_positions, k_sample, k,
                                   np.empty(sample_positions.shape[0], x.dtype),
                                   np.empty(capacity, np.int64), np.empty(capacity, x.dtype),
                                   np.empty(scratch_length, x.dtype), positions_out, signs_out)


_SIGNS_OUT = Array(INT8, output=True, at_least="x")


def _sample_fits(x, sample_positions):
    """At most N sample positions (the sample's kept positions go to positions_out)."""
    if sample_positions.shape[0] > x.shape[0]:
        raise ValueError(f"sample_positions holds {sample_positions.shape[0]} positions, more than the "
                         f"{x.shape[0]} entries of x")


@checked(_sampled_ternarize_core, extra=_sample_fits, x=FLOAT_VECTOR, sample_positions=_SAMPLE_POSITIONS,
         k_sample=Budget(size="sample_positions"), k=_BUDGET,
         positions_out=Array(INT64, output=True, at_least="x"), signs_out=_SIGNS_OUT)
def _sampled_ternarize(x, sample_positions, k_sample, k, positions_out, signs_out):
    """STC with the sampled threshold (the sample and its budget: :mod:`fedsim.compress.stc`), with its
    exact fallback.

    threshold, mu = :func:`_sampled_top_k_threshold` of the sample (at most N positions); output
    mu * sign(x_i) wherever ``|x_i| >= threshold`` (ties included: the count is not fixed, and mu is the
    sample's estimate, as in the reference). If the threshold is 0 or equals max |x_i|, the exact
    :func:`_ternarize` with budget ``k`` is used instead. The outputs need N entries whatever the
    threshold. Returns (count, mu, whether the exact fallback was used).
    """


def _sampled_ternarize_numpy(x, sample_positions, k_sample, k, positions_out, signs_out):
    x, sample_positions, k_sample, k, positions_out, signs_out = _sampled_ternarize.check(
        x, sample_positions, k_sample, k, positions_out, signs_out)
    threshold, mu = _sampled_top_k_threshold_numpy(x, sample_positions, k_sample)
    if threshold > 0:
        count, largest = _select_at_least_numpy(x, threshold, positions_out)
        if largest != threshold:
            signs_out[:count] = np.where(x[positions_out[:count]] > 0, 1, -1)
            return count, mu, False
    count, mu = _ternarize_numpy(x, k, positions_out, signs_out)
    return count, mu, True


@_jit
def _sign_core(x, signs_out):
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


@checked(_sign_core, x=FLOAT_VECTOR, signs_out=_SIGNS_OUT)
def _sign(x, signs_out):
    """signs_out[i] = sign(x_i) in {-1, 0, +1} (sign(0) = sign(-0) = 0); returns the zero count.

    One branch-free pass that the compiler vectorizes (random signs would mispredict a branch on every
    other entry): sign = [x > 0] - [x < 0]; the finiteness check ``x - x == 0`` (false for NaN and +-inf)
    is accumulated and raised after the pass.
    """


def _sign_numpy(x, signs_out):
    x, signs_out = _sign.check(x, signs_out)
    _check_finite_numpy(x)
    signs_out[:x.shape[0]] = np.sign(x).astype(np.int8)
    return int(np.count_nonzero(x == 0))


@_jit
def _mean_magnitude_core(x):
    total = 0.0
    for i in range(x.shape[0]):
        value = x[i]
        if not np.isfinite(value):
            raise ValueError(NONFINITE_MESSAGE)
        total += np.float64(abs(value))
    if not np.isfinite(total):
        raise UpdateOverflowError(SCALE_OVERFLOW_MESSAGE)
    if x.shape[0] == 0:
        return _round_to_dtype(x, 0.0)
    return _round_to_dtype(x, total / x.shape[0])


@checked(_mean_magnitude_core, x=FLOAT_VECTOR)
def _mean_magnitude(x):
    """dtype( (sequential float64 sum of |x_i|) / N ), 0 for an empty x (the scale of scaled sign); a sum beyond
    the float64 maximum raises ``UpdateOverflowError(SCALE_OVERFLOW_MESSAGE)`` (a ValueError)."""


def _mean_magnitude_numpy(x):
    (x,) = _mean_magnitude.check(x)
    _check_finite_numpy(x)
    if x.size == 0:
        return x.dtype.type(0)
    with np.errstate(over="ignore"):
        total = np.cumsum(np.abs(x).astype(np.float64))[-1]
    if not np.isfinite(total):
        raise UpdateOverflowError(SCALE_OVERFLOW_MESSAGE)
    return x.dtype.type(total / x.size)
