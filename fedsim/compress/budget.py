"""A compressor's knob solved for a bit budget: equal-bits comparisons of methods.

A compressor that has a knob names it in ``budget_knob`` (top-k, STC and random-k: the fraction ``p``;
QSGD: ``levels``; PowerSGD: ``rank``); its encoded bits grow with it. :func:`solve_knob` finds the largest
knob whose mean encoded bits per row on given rows (a federated run's first-round updates) are at most the
budget: a fraction by bisection on log p over (0, 1] (to one entry of k = ceil(p N)), an integer by
doubling from 1 and then bisection. Every trial compresses the same rows with a Generator from
``make_rng()`` (a fresh one, the same numbers each time), so a stochastic compressor's trials differ by the
knob alone.
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

    search = _fraction_search if isinstance(getattr(compressor, knob), float) else _integer_search
    best, tried = search(bits, budget)
    if best is None or (best == max(tried) and tried[best] < 0.95 * budget):
        end, value = ("starts", min(tried)) if best is None else ("ends", best)
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        raise BudgetError(f"{setting} = {budget:g} is out of reach of {compressor.name}: its reachable range "
                          f"{end} at {tried[value]:.6g} bits per client ({knob} = {shown})")
    return dataclasses.replace(compressor, **{knob: best}), best, tried[best]


def _fraction_search(bits, budget):
    """Bisection on log p over [SMALLEST_FRACTION, 1]: ``(the largest p found to fit or None, {p: bits})``."""
    tried = {SMALLEST_FRACTION: bits(SMALLEST_FRACTION), 1.0: bits(1.0)}
    if tried[SMALLEST_FRACTION] > budget:
        return None, tried
    if tried[1.0] <= budget:
        return 1.0, tried
    low, high = math.log(SMALLEST_FRACTION), 0.0          # bits(e^low) <= budget < bits(e^high)
    for _ in range(FRACTION_STEPS):
        middle = 0.5 * (low + high)
        value = math.exp(middle)
        tried[value] = bits(value)
        low, high = (middle, high) if tried[value] <= budget else (low, middle)
    return math.exp(low), tried


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

