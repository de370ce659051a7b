"""A compressor's knob solved for a bit budget: equal-bits comparisons of methods.

A compressor that has a knob names it in ``budget_knob`` (top-k, STC and random-k: the fraction ``p``;
QSGD: ``levels``; PowerSGD: ``rank``). :func:`solve_knob` finds the largest knob whose mean encoded bits per
row on given rows (a federated run's first-round updates) are at most the budget. A fraction: bisection on
log p over (0, 1] (to one entry of k = ceil(p N)) finds a p that fits while the next k does not; where the
bits fall as p grows (``Compressor.knob_stretches``: top-k's and exact STC's Golomb-Rice parameter drops,
so k + 1 entries can cost fewer bits than k), each stretch above that p over which they grow again is tried
from the highest down, from its start, and bisected in the first that fits. So p is the largest that fits
where the compressor states its stretches (random-k's bits grow throughout); for STC's sampled threshold,
whose count kept depends on the sample each p draws (None), it is the bisection's p. An integer: doubling
from 1 and then bisection, the largest where the bits grow with the knob: PowerSGD's rank (32 r (n + m) bits
per matrix); QSGD's levels, as each entry's level grows with s under the trials' shared draws, though its
Elias code could in principle lose a bit where a new nonzero level splits a gap (then: a value that fits
while the next does not).
Every trial compresses the same rows with a Generator from ``make_rng()`` (a fresh one, the same numbers
each time), so a stochastic compressor's trials differ by the knob alone.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

#: The smallest fraction tried: every segment then keeps k = ceil(p N) = 1 entry.
SMALLEST_FRACTION = 1e-12
#: Bisection steps on log p: (1 / 2^60) of the log-range, far below one entry of any segment.
FRACTION_STEPS = 60


class BudgetError(ValueError):
    """A budget the compressor cannot meet: the message names the setting and the reachable range."""


def solve_knob(compressor, rows: np.ndarray, spec, budget: float, make_rng, setting: str = "bits budget"):
    """``(compressor with its knob set, knob value, mean encoded bits per row)``: the largest knob value
    whose mean bits on ``rows`` are at most ``budget`` (module docstring).

    A :class:`BudgetError` naming ``setting`` and the reachable range when even the smallest knob sends
    more than the budget, or the largest less than 95% of it; a ValueError when the compressor has no knob.
    """
    knob = getattr(compressor, "budget_knob", None)
    if knob is None:
        raise ValueError(f"{setting} needs a compressor with a knob (budget_knob); {compressor.name} has none")

    def bits(value):
        """Mean encoded bits per row of ``rows`` compressed with the knob at ``value`` from a fresh state."""
        trial = dataclasses.replace(compressor, **{knob: value})
        return float(np.mean(trial.compress(rows, trial.init(spec), make_rng())[0].encoded_bits))

    if isinstance(getattr(compressor, knob), float):
        best, tried = _fraction_search(bits, budget, compressor.knob_stretches(compressor.init(spec)))
    else:
        best, tried = _integer_search(bits, budget)
    if best is None or (best == max(tried) and tried[best] < 0.95 * budget):
        end, value = ("starts", min(tried)) if best is None else ("ends", best)
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        raise BudgetError(f"{setting} = {budget:g} is out of reach of {compressor.name}: its reachable range "
                          f"{end} at {tried[value]:.6g} bits per client ({knob} = {shown})")
    return dataclasses.replace(compressor, **{knob: best}), best, tried[best]


def _fraction_search(bits, budget, stretches):
    """Bisection on log p over [SMALLEST_FRACTION, 1], then the stretches of growing bits above the p found,
    from the highest down (module docstring): ``(the largest p found to fit or None, {p: bits})``."""
    tried = {SMALLEST_FRACTION: bits(SMALLEST_FRACTION), 1.0: bits(1.0)}
    if tried[SMALLEST_FRACTION] > budget:
        return None, tried
    if tried[1.0] <= budget:
        return 1.0, tried
    found = _bisect(bits, budget, SMALLEST_FRACTION, 1.0, tried)
    above = min(value for value in tried if value > found)        # the bisection's smallest p that does not fit
    starts = sorted(float(start) for start in stretches or () if start > above)
    for start, end in reversed(list(zip(starts, starts[1:] + [1.0]))):
        tried[start] = bits(start)
        if tried[start] <= budget:        # bits grow from start until the stretch at end, which does not fit
            return _bisect(bits, budget, start, end, tried), tried
    return found, tried


def _bisect(bits, budget, low: float, high: float, tried) -> float:
    """The largest p found by bisection on log p between ``low``, which fits, and ``high``, which does not."""
    found, low, high = low, math.log(low), math.log(high)     # bits(e^low) <= budget < bits(e^high)
    for _ in range(FRACTION_STEPS):
        middle = 0.5 * (low + high)
        value = math.exp(middle)
        tried[value] = bits(value)
        if tried[value] <= budget:
            found, low = value, middle
        else:
            high = middle
    return found


def _integer_search(bits, budget):
    """Doubling from 1 while the compressor accepts the value and it fits, then bisection between the last
    value that fits and the first that does not: ``(the largest integer found to fit or None, {value:
    bits})``."""
    tried = {1: bits(1)}

    def fits(value) -> bool:
        try:
            tried[value] = bits(value)
        except (ValueError, TypeError):       # beyond the knob's range (PowerSGD: rank > min(n, m))
            return False
        return tried[value] <= budget

    if tried[1] > budget:
        return None, tried
    low = 1
    while fits(2 * low):                      # bits(low) <= budget
        low = 2 * low
    high = 2 * low
    while high - low > 1:                     # bits(low) <= budget < bits(high), or high out of range
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low, tried

