"""What each compressor is, measured against what its paper says: bias, error and bits over many draws.

For a vector x and a compressor C, over n independent draws C_1(x), ..., C_n(x) with errors D_j = C_j(x) - x::

    bias      ||mean_j D_j|| / ||x||                   0 for an unbiased compressor, up to sampling noise
    bias_se   sqrt(sum_i s_i^2) / ||x||                what the bias is from sampling alone: s_i^2 is the
                                                       variance of the mean of D_ji over the draws
    bias_z    (||mean_j D_j||^2 - sum_i s_i^2) / sqrt(2 sum_i s_i^4)
                                                       about standard normal when C is unbiased and its entries
                                                       are independent (QSGD, TernGrad; random-k nearly)
    error     mean_j ||D_j||^2 / ||x||^2, with its standard error over the draws

and bits per entry three ways: the real encoder (``Compressed.encoded_bits``), the empirical entropy of the
message's symbols (``Message.symbols``: QSGD's signed levels, TernGrad's, STC's and the sign's ternary or sign
symbols, without the scales or norms sent beside them; the values of the others, one float per entry for the
identity and top-k (0 where none is sent), the k values of random-k, PowerSGD's factor entries): n H / N for
n symbols with the plug-in entropy H = -sum_v f_v log2 f_v of their values v with frequencies f_v, the cost
of an ideal code of the symbols without the cost of naming the values themselves (so n distinct floats cost
log2 n bits each, not 32), and the formula (``Compressed.analytic_bits``: the paper's count, except
TernGrad's log2(3) N + 32 per segment where its paper counts 2 bits per entry).

A compressor states its theory through :meth:`fedsim.compress.base.Compressor.theory`, which returns a
:class:`Theory` for x (None: nothing published). :func:`meets` checks a measurement against it; the report
card (``fedsim compressors report``) and the theory tests (tests/compress/test_theory.py) both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedsim.compress.base import Compressor, layout_of

#: Rows compressed per call are limited so that a chunk of draws stays below this many bytes.
CHUNK_BYTES = 32 << 20
#: How many standard errors a measured mean may lie beyond its theoretical value, and the largest |bias_z|
#: of an unbiased compressor: 4 standard normal deviations (a false alarm once in 16,000 checks).
SIGMAS = 4.0


@dataclass(frozen=True)
class Theory:
    """What a compressor's paper says of C(x) for one vector x."""

    unbiased: bool | None     # E[C(x)] = x (True), E[C(x)] != x in general (False), not stated (None)
    error: float | None       # E||C(x) - x||^2 / ||x||^2: a bound, an exact value or a floor; None: none
    relation: str             # "<=" (error is a bound), "=" (exact), ">=" (a floor no compressor beats)
    source: str               # the paper and the statement, e.g. "Alistarh et al. 2017, Lemma 3.1"


ZERO_VECTOR_MESSAGE = "the vector x is zero: bias and error relative to ||x|| are undefined"


def relative_to(total: float, squared_norm: float) -> float:
    """``total / ||x||^2`` (``squared_norm``): a theory's error relative to x, a ValueError for a zero x."""
    if squared_norm == 0:
        raise ValueError(ZERO_VECTOR_MESSAGE)
    return total / squared_norm


def segment_squares(x: np.ndarray, state) -> np.ndarray:
    """||x_j||^2 of each segment j of the state's layout, in float64."""
    x = np.asarray(x, np.float64)
    return np.array([np.dot(x[a:b], x[a:b]) for a, b in layout_of(state).segments()], np.float64)


def relative_error(factors, x: np.ndarray, state) -> float:
    """sum_j factors_j ||x_j||^2 / ||x||^2 over the segments j of the state's layout: an error stated per
    segment as a multiple of ||x_j||^2."""
    squares = segment_squares(x, state)
    return float(relative_to(np.asarray(factors, np.float64) @ squares, squares.sum()))


@dataclass(frozen=True)
class Measurement:
    """A compressor measured over ``draws`` draws on one vector (or averaged over several)."""

    draws: int
    bias: float               # ||mean_j D_j|| / ||x||
    bias_se: float            # sqrt(sum_i s_i^2) / ||x||
    bias_z: float             # (||mean D||^2 - sum s_i^2) / sqrt(2 sum s_i^4); 0 when exact and unbiased
    error: float              # mean_j ||D_j||^2 / ||x||^2
    error_se: float           # its standard error over the draws
    bits_encoder: float       # encoded bits per entry
    bits_entropy: float       # empirical entropy of the message's symbols, bits per entry
    bits_formula: float       # the paper's bits per entry
    theory: Theory | None     # what the paper says (None: nothing)


def entropy_bits(symbols: np.ndarray, size: int) -> float:
    """n H / size for the n ``symbols`` with the plug-in entropy H = -sum_v f_v log2 f_v of their values:
    bits per entry of a vector of ``size`` entries."""
    if symbols.size == 0:
        return 0.0
    _, counts = np.unique(symbols, return_counts=True)
    frequencies = counts / symbols.size
    return float(-np.sum(frequencies * np.log2(frequencies))) * symbols.size / size


def _draw_chunks(compressor: Compressor, x: np.ndarray, spec, draws: int, rng: np.random.Generator):
    """The ``Compressed`` of the draws, a chunk of rows at a time: K copies of x in one call when the
    compressor keeps the base class's batched path (row r equals compressing x alone), else one call per
    draw, each from a fresh state (PowerSGD: a new random warm start)."""
    if type(compressor).compress is Compressor.compress:
        chunk = max(1, CHUNK_BYTES // max(1, 8 * x.size))
        state = compressor.init(spec)
        for first in range(0, draws, chunk):
            rows = np.broadcast_to(x, (min(chunk, draws - first), x.size))
            yield compressor.compress(rows, state, rng)[0]
    else:
        for _ in range(draws):
            yield compressor.compress(x, compressor.init(spec), rng)[0]


def measure(compressor: Compressor, x, spec, draws: int, rng: np.random.Generator) -> Measurement:
    """Measure ``compressor`` on the vector ``x`` (float32 or float64, laid out by ``spec``: a ParamSpec,
    a Layout or an int size) over ``draws`` draws from ``rng`` (module docstring)."""
    x = np.asarray(x)
    if draws < 2:
        raise ValueError(f"draws must be an integer >= 2 (a standard error needs two), got {draws}")
    x64 = x.astype(np.float64)
    squared_norm = float(np.dot(x64, x64))
    if squared_norm == 0:
        raise ValueError(ZERO_VECTOR_MESSAGE)
    error_sum = np.zeros(x.size)                 # sum_j D_j
    error_squares = np.zeros(x.size)             # sum_j D_j^2, entrywise
    errors, encoded, analytic, entropies = [], [], [], []
    for compressed in _draw_chunks(compressor, x, spec, draws, rng):
        differences = compressed.decoded.astype(np.float64) - x64
        error_sum += differences.sum(axis=0)
        error_squares += np.square(differences).sum(axis=0)
        errors.append(np.einsum("ij,ij->i", differences, differences) / squared_norm)
        encoded.append(compressed.encoded_bits)
        analytic.append(compressed.analytic_bits)
        entropies.extend(entropy_bits(compressed.message(row).symbols(), x.size) for row in range(compressed.rows))
    mean_error = error_sum / draws
    # s_i^2 = unbiased variance of D_ji over the draws, divided by the draws (the variance of its mean)
    variance_of_mean = np.maximum(error_squares / draws - mean_error ** 2, 0.0) / (draws - 1)
    noise = float(variance_of_mean.sum())
    spread = math.sqrt(2.0 * float(np.square(variance_of_mean).sum()))
    squared_bias = float(np.dot(mean_error, mean_error))
    if spread > 0:
        bias_z = (squared_bias - noise) / spread
    else:
        bias_z = 0.0 if squared_bias <= 1e-12 * squared_norm else math.inf
    errors = np.concatenate(errors)
    size = max(1, x.size)
    return Measurement(
        draws=draws, bias=math.sqrt(squared_bias / squared_norm), bias_se=math.sqrt(noise / squared_norm),
        bias_z=bias_z, error=float(errors.mean()), error_se=float(errors.std(ddof=1) / math.sqrt(draws)),
        bits_encoder=float(np.concatenate(encoded).mean()) / size,
        bits_entropy=float(np.mean(entropies)), bits_formula=float(np.concatenate(analytic).mean()) / size,
        theory=compressor.theory(x, compressor.init(spec)))


def combine(measurements: list[Measurement]) -> Measurement:
    """The mean of measurements on several vectors: means of the normalized numbers, their standard
    errors combined as independent (sqrt of the sum of squares over the count), the theoretical errors
    averaged (a mean of bounds bounds the mean), the z scores summed over sqrt(count)."""
    count = len(measurements)
    if count == 1:
        return measurements[0]

    def mean(name):
        return float(np.mean([getattr(m, name) for m in measurements]))

    def pooled(name):
        return math.sqrt(sum(getattr(m, name) ** 2 for m in measurements)) / count

    theories = [m.theory for m in measurements]
    theory = theories[0]
    if theory is not None and all(t is not None for t in theories):
        errors = [t.error for t in theories]
        unbiased = theory.unbiased if all(t.unbiased == theory.unbiased for t in theories) else False
        theory = Theory(unbiased, None if None in errors else float(np.mean(errors)), theory.relation,
                        theory.source)
    return Measurement(
        draws=sum(m.draws for m in measurements), bias=mean("bias"), bias_se=pooled("bias_se"),
        bias_z=sum(m.bias_z for m in measurements) / math.sqrt(count), error=mean("error"),
        error_se=pooled("error_se"), bits_encoder=mean("bits_encoder"), bits_entropy=mean("bits_entropy"),
        bits_formula=mean("bits_formula"), theory=theory)


def meets(measurement: Measurement, dtype=np.float64) -> bool | None:
    """Whether the measurement agrees with its theory: the error within ``SIGMAS`` standard errors of its
    relation to the theoretical value (plus a relative slack for the roundings of the decoded values: 1e-4
    in float32, 1e-9 in float64), and |bias_z| <= ``SIGMAS`` where the theory says unbiased; None when the
    theory states neither."""
    theory = measurement.theory
    if theory is None or (theory.error is None and theory.unbiased is not True):
        return None
    ok = True
    if theory.error is not None:
        rounding = 1e-4 if np.dtype(dtype) == np.float32 else 1e-9
        slack = SIGMAS * measurement.error_se + rounding * max(theory.error, measurement.error, 1e-3)
        if theory.relation == "<=":
            ok = measurement.error <= theory.error + slack
        elif theory.relation == "=":
            ok = abs(measurement.error - theory.error) <= slack
        else:
            ok = measurement.error >= theory.error - slack
    if theory.unbiased is True:
        ok = ok and abs(measurement.bias_z) <= SIGMAS
    return bool(ok)

