"""Lazy aggregation: GD, QGD, LAG-WK, LAG-PS, LAQ and SLAQ on softmax regression.

LAG: Chen, Giannakis, Sun, Yin, "LAG: Lazily Aggregated Gradient for Communication-Efficient Distributed
Learning", NeurIPS 2018, arXiv 1805.09965. LAQ/SLAQ: Sun, Chen, Giannakis, Yang, "Communication-Efficient
Distributed Learning via Lazily Aggregated Quantized Gradients", NeurIPS 2019, arXiv 1909.07588.

Setting
-------
M workers; worker m holds ``f_m(theta)`` = mean cross-entropy on its shard + ``(l2 / 2) ||theta||^2``, and
the objective is ``f = sum_m f_m``. The server keeps each worker's last upload ``Q_m`` and their running sum;
an upload adds only its innovation ``Q_m^new - Q_m`` to that sum. Iteration k (``theta^0`` is the
initialization)::

    every worker computes g_m = grad f_m(theta^k)               (one batched call for all M workers)
    some workers upload (rule below); their Q_m is replaced
    theta^{k+1} = theta^k - alpha * sum_m Q_m

Upload rules (``||.||`` Euclidean; ``Delta_d = ||theta^{k+1-d} - theta^{k-d}||^2``, the last D squared
steps, kept as a ring of D scalars)::

    history threshold  H^k = (1 / (alpha^2 M^2)) * sum_{d=1..min(k,D)} xi_d Delta_d,
                       xi_d = xi / min(k, D)     (xi / D once k >= D; before that the reference divides by
                                                  the number of differences that exist; H^0 = 0)
    GD      upload g_m, always                                               32 P bits per upload
    QGD     upload Q_m = quantize(g_m | Q_m), always                         b P + 32 bits per upload
    LAG-WK  upload g_m  if ||g_m - Q_m||^2 >= H^k                            32 P bits per upload
    LAQ     upload Q    if ||Q - Q_m||^2 >= H^k + 3 (e_m + e_hat_m)          b P + 32 bits per upload
    SLAQ    as LAQ on a minibatch gradient, with threshold
                           H^k + ec * 3 (e_m + e_hat_m) + offset  (reference: ec = 0.5, offset = 0.2)
    LAG-PS  the server asks worker m (which then uploads g_m) if
                           L_m^2 ||theta_hat_m - theta^k||^2 > H^k
            theta_hat_m: the point of worker m's last gradient; L_m: its smoothness bound
            (:func:`smoothness_bounds`); every worker is asked at k = 0.

``Q = quantize(g | Q_m)`` is the LAQ quantizer of :mod:`fedsim.kernels.laq` (b bits relative to the last
upload), ``e_m = ||Q - g_m||^2`` its error now and ``e_hat_m`` its error at worker m's last upload. On a
skip the new Q is discarded. Every lazy rule (LAG-WK, LAG-PS, LAQ, SLAQ) also forces an upload after C
consecutive skips (the staleness clock; it resets on every upload). QGD and LAQ send the b-bit codes and R
as one 32-bit float: ``b P + 32`` bits (the reference counted ``b P``).

Metrics and f*
--------------
:class:`LazyHistory` records, for k = 0..K-1, ``f(theta^k)``, ``||grad f(theta^k)||^2`` (the full gradient,
whatever the method uploads), ``||sum_m Q_m||^2`` (the aggregate the step used), the upload raster
(K x M bools) and the cumulative communications (uploads) and bits; test accuracy on ``theta^k`` every
``eval_every`` iterations and on the final ``theta^K``. The residual ``f - f*`` needs ``f*``: pass it to
:func:`run_lazy` if known, or take :func:`estimate_f_star` = the smallest objective seen in the compared
runs (the reference's choice; the best run then reaches residual 0 by construction, so it is a fair
yardstick only if that run has converged well below the tolerance of interest).

Divergence: a NaN or inf in the objective, a gradient or theta stops the run with :class:`DivergenceError`,
which carries the history of the iterations completed before it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np
from tqdm.auto import tqdm

from fedsim.algorithms.family import Family, cell, register_family, run_seconds
from fedsim.compress.bits import dense_bits, quantized_bits
from fedsim.data.dataset import Dataset
from fedsim.errors import DivergenceError
from fedsim.data.partition import contiguous
from fedsim.kernels import LAQ_MAX_BITS as MAX_BITS, LAQ_MIN_BITS as MIN_BITS, laq
from fedsim.models.features import Codes, as_dtype, decoded
from fedsim.models.softmax import SoftmaxRegression
from fedsim.rng import RunStreams



class LazyRule(NamedTuple):
    """What a lazy method uploads and when a worker skips: one row of :data:`RULES`."""

    upload: str      # "gradient": g_m itself (32 P bits); "quantized": Q = quantize(g_m | Q_m) (b P + 32)
    gradient: str    # "full": the shard's gradient; "minibatch": a minibatch gradient (SLAQ)
    skip: str        # "never"; "worker": ||new - Q_m||^2 < H^k + error terms; "server": L_m^2 ||.||^2 <= H^k
    slaq_terms: bool = False   # the worker rule with SLAQ's constants (ec * 3 (e + e_hat) + offset)


#: The lazy methods as a table: every difference between them is in these columns.
RULES = {
    "gd": LazyRule("gradient", "full", "never"),
    "qgd": LazyRule("quantized", "full", "never"),
    "lag-wk": LazyRule("gradient", "full", "worker"),
    "lag-ps": LazyRule("gradient", "full", "server"),
    "laq": LazyRule("quantized", "full", "worker"),
    "slaq": LazyRule("quantized", "minibatch", "worker", slaq_terms=True),
}
METHODS = tuple(RULES)
INIT_KINDS = ("zeros", "glorot")
DTYPES = ("float64", "float32")
LAQ_ERROR_FACTOR = 3.0       # the 3 in 3 (e + e_hat) of the LAQ rule (arXiv 1909.07588)


@dataclass(frozen=True)
class LazyConfig:
    """Settings of one lazy-aggregation run; validated on construction.

    Defaults are the LAQ reference's MNIST experiment; :meth:`reference` gives each method's reference
    settings (SLAQ: alpha 0.008, b 3).
    """

    method: str = "laq"                  # a row of RULES
    n_workers: int = 10                  # M, number of workers (<= number of training samples)
    step_size: float = 0.02              # alpha, the server's step: theta <- theta - alpha sum_m Q_m
    bits: int = 4                        # b, bits per quantized entry (qgd, laq, slaq), in [1, 16]
    history_length: int = 10             # D, how many past squared steps the upload threshold uses
    history_weight: float = 0.8          # xi, total weight of those D steps: xi_d = xi / min(k, D)
    max_skips: int = 100                 # C, a worker that skipped C times in a row must upload
    l2: float = 0.01                     # L2 coefficient of each f_m: (l2 / 2) ||theta||^2
    iterations: int = 4000               # K, number of server steps
    minibatch_size: int = 500            # SLAQ: samples per worker per iteration (without replacement)
    slaq_error_scale: float = 0.5        # SLAQ: ec, the factor on the error term 3 (e + e_hat)
    slaq_threshold_offset: float = 0.2   # SLAQ: constant added to the upload threshold
    init: str = "zeros"                  # theta^0: "zeros" or seeded "glorot" (uniform)
    seed: int = 0                        # seeds the glorot init and SLAQ's minibatches
    dtype: str = "float64"               # float type of data, parameters and gradients
    eval_every: int = 100                # test accuracy every this many iterations (and at the end)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        _check_int("n_workers (M)", self.n_workers, 1)
        _check_positive("step_size (alpha)", self.step_size)
        _check_int("bits (b)", self.bits, MIN_BITS, MAX_BITS)
        _check_int("history_length (D)", self.history_length, 1)
        _check_nonnegative("history_weight (xi)", self.history_weight)
        _check_int("max_skips (C)", self.max_skips, 1)
        _check_nonnegative("l2", self.l2)
        _check_int("iterations", self.iterations, 1)
        _check_int("minibatch_size", self.minibatch_size, 1)
        _check_nonnegative("slaq_error_scale (ec)", self.slaq_error_scale)
        _check_nonnegative("slaq_threshold_offset", self.slaq_threshold_offset)
        if self.init not in INIT_KINDS:
            raise ValueError(f"init must be one of {list(INIT_KINDS)}, got {self.init!r}")
        _check_int("seed", self.seed, 0)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        _check_int("eval_every", self.eval_every, 1)

    @classmethod
    def reference(cls, method: str, **overrides) -> "LazyConfig":
        """The reference code's settings for ``method`` (SLAQ: alpha 0.008, b 3), then ``overrides``."""
        settings = dict(step_size=0.008, bits=3) if method == "slaq" else {}
        settings.update(overrides)
        return cls(method=method, **settings)

    @property
    def quantized(self) -> bool:
        """Whether uploads are LAQ-quantized innovations (qgd, laq, slaq)."""
        return RULES[self.method].upload == "quantized"


def _check_int(name, value, low, high=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < low or (high is not None and value > high):
        allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")


def _check_positive(name, value):
    if not isinstance(value, (int, float, np.integer, np.floating)) or not (math.isfinite(value)
                                                                          and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_nonnegative(name, value):
    if not isinstance(value, (int, float, np.integer, np.floating)) or not (math.isfinite(value)
                                                                          and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def bits_per_upload(method: str, n_params: int, bits: int) -> int:
    """Bits of one upload: ``32 P`` (gd, lag-wk, lag-ps) or ``b P + 32`` (qgd, laq, slaq: codes + R)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if RULES[method].upload == "quantized":
        return quantized_bits(n_params, bits)
    return dense_bits(n_params)


# ---------------------------------------------------------------------------------------------------------
# the upload rules, as pure functions of per-worker scalars


def history_threshold(step_history: np.ndarray, n_steps: int, history_weight: float, step_size: float,
                      n_workers: int) -> float:
    """``H^k = (1 / (alpha^2 M^2)) sum_{d=1..min(k,D)} xi_d ||theta^{k+1-d} - theta^{k-d}||^2``.

    Parameters
    ----------
    step_history : ndarray, shape (D,)
        Ring of the last D squared steps ``||theta^{j+1} - theta^j||^2`` (entries not yet written are 0).
    n_steps : int
        k, the number of steps taken so far; ``min(k, D)`` of the ring's entries are real.
    history_weight : float
        xi; each of the ``min(k, D)`` entries gets ``xi_d = xi / min(k, D)`` (the reference's weighting:
        ``xi / D`` once k >= D, normalised by the number of existing differences before). ``H^0 = 0``.
    """
    available = min(int(n_steps), len(step_history))
    if available == 0:
        return 0.0
    weighted = history_weight / available * float(np.sum(step_history))
    return weighted / (step_size ** 2 * n_workers ** 2)


def laq_upload_decision(innovation: np.ndarray, threshold: float, error: np.ndarray,
                        error_at_last_upload: np.ndarray, skips: np.ndarray, max_skips: int,
                        error_scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """Which workers upload under the LAQ / LAG-WK / SLAQ rule (bool, shape (M,)).

    ``||Q_m - Q_m_prev||^2 >= H^k + error_scale * 3 (e_m + e_hat_m) + offset``, or ``skips_m >= C``.
    LAG-WK is ``e = e_hat = 0``; SLAQ uses ``error_scale = ec`` and its ``offset``.
    """
    bound = threshold + error_scale * LAQ_ERROR_FACTOR * (error + error_at_last_upload) + offset
    return (innovation >= bound) | (skips >= max_skips)


def lag_ps_request_decision(smoothness: np.ndarray, distance_sq: np.ndarray, threshold: float,
                            skips: np.ndarray, max_skips: int) -> np.ndarray:
    """Which workers the LAG-PS server asks for a gradient (bool, shape (M,)).

    ``L_m^2 ||theta_hat_m - theta^k||^2 > H^k``, or ``skips_m >= C``; ``distance_sq`` is
    ``||theta_hat_m - theta^k||^2``.
    """
    return (smoothness ** 2 * distance_sq > threshold) | (skips >= max_skips)


# ---------------------------------------------------------------------------------------------------------
# data: shards stacked into one (M, n, F) array


class Shards(NamedTuple):
    """The workers' training data stacked for one batched gradient call."""

    x: np.ndarray                 # (M, n_max, F); rows past a shard's end are zeros
    y: np.ndarray                 # (M, n_max) int64; 0 in padded rows
    weights: np.ndarray | None    # (M, n_max) 0/1 mask of real rows, None when all shards are full
    sizes: np.ndarray             # (M,) samples per shard


def stack_shards(x: np.ndarray, y: np.ndarray, partition: Sequence[np.ndarray], dtype=np.float64) -> Shards:
    """Stack ``x[partition[m]]`` into ``(M, n_max, F)``, padding ragged shards (with a weight mask).

    Contiguous equal blocks in file order (the LAQ reference's split) become a reshaped view: no copy.
    """
    n_samples = len(x)
    parts = [np.asarray(part) for part in partition]
    for m, part in enumerate(parts):
        if part.ndim != 1 or part.size == 0 or part.dtype.kind not in "iu":
            raise ValueError(f"partition[{m}] must be a non-empty 1-D integer index array, got shape "
                             f"{part.shape} and dtype {part.dtype}")
        if part.min() < 0 or part.max() >= n_samples:
            raise ValueError(f"partition[{m}] indexes [{part.min()}, {part.max()}], outside the "
                             f"{n_samples} training samples")
    sizes = np.array([part.size for part in parts], dtype=np.int64)
    n_workers, n_max = len(parts), int(sizes.max())
    codes = x if isinstance(x, Codes) else None            # 8-bit features: stack the codes
    x = codes.codes if codes is not None else np.asarray(x).astype(dtype, copy=False)
    wrap = (lambda a: a) if codes is None else (lambda a: Codes(a, codes.scale, codes.offset, dtype))
    y = np.asarray(y).astype(np.int64, copy=False)
    block = int(sizes[0])
    if np.all(sizes == block) and all(np.array_equal(part, np.arange(m * block, (m + 1) * block))
                                      for m, part in enumerate(parts)):
        used = n_workers * block
        return Shards(wrap(x[:used].reshape(n_workers, block, -1)), y[:used].reshape(n_workers, block), None,
                      sizes)
    x_shards = np.zeros((n_workers, n_max, x.shape[1]), dtype=x.dtype)
    y_shards = np.zeros((n_workers, n_max), dtype=np.int64)
    weights = np.zeros((n_workers, n_max), dtype=dtype)
    for m, part in enumerate(parts):           # O(M) copies, once per run
        x_shards[m, : part.size] = x[part]
        y_shards[m, : part.size] = y[part]
        weights[m, : part.size] = 1
    return Shards(wrap(x_shards), y_shards, None if np.all(sizes == n_max) else weights, sizes)


def smoothness_bounds(shards: Shards, l2: float) -> tuple[np.ndarray, float]:
    """Upper bounds on the smoothness constants of each ``f_m`` and of ``f = sum_m f_m``.

    For softmax regression the Hessian of the mean cross-entropy is
    ``(1/n) sum_i (diag(p_i) - p_i p_i^T) (x) x~_i x~_i^T`` with ``x~_i = [x_i, 1]`` (the 1 is the bias),
    and ``diag(p) - p p^T <= I / 2`` (Boehning's bound), so::

        L_m = 0.5 * lambda_max(X~_m^T X~_m) / n_m + l2               (used by LAG-PS)
        L_f = 0.5 * lambda_max(sum_m X~_m^T X~_m / n_m) + M * l2     (<= sum_m L_m; for the 2 / L check)

    Both are bounds, not the curvature along the actual path, which can be several times smaller.
    The bias column makes them valid for the parameters [W, b] (``0.5 lambda_max(X^T X) / n`` alone,
    without it, bounds only the W block). Computed exactly: one (F+1)^2 Gram matrix per worker
    (a batched matmul) and ``scipy.linalg.eigvalsh`` for its largest eigenvalue.
    """
    x, sizes = decoded(shards.x), shards.sizes
    n_workers, _, n_features = x.shape
    gram = np.empty((n_workers, n_features + 1, n_features + 1), dtype=np.float64)
    gram[:, :n_features, :n_features] = np.matmul(np.swapaxes(x, 1, 2), x)       # X^T X (padding is 0)
    column_sums = x.sum(axis=1)                                                   # X^T 1 over real rows
    gram[:, :n_features, n_features] = column_sums
    gram[:, n_features, :n_features] = column_sums
    gram[:, n_features, n_features] = sizes                                       # 1^T 1 = n_m
    gram /= sizes[:, None, None]
    top = [_largest_eigenvalue(gram[m]) for m in range(n_workers)]
    per_worker = 0.5 * np.array(top) + l2
    total = 0.5 * _largest_eigenvalue(gram.sum(axis=0)) + n_workers * l2
    return per_worker, float(total)


def _largest_eigenvalue(symmetric: np.ndarray) -> float:
    import scipy.linalg   # here, not at the top: a federated run, or a config, needs no SciPy
    size = symmetric.shape[0]
    return float(scipy.linalg.eigvalsh(symmetric, subset_by_index=[size - 1, size - 1])[0])


# ---------------------------------------------------------------------------------------------------------
# history


class ReachPoint(NamedTuple):
    """Cost of the first iterate whose residual is within a tolerance."""

    iterations: int          # k: theta^k is the first iterate with f(theta^k) - f* <= tolerance
    communications: int      # uploads spent to get there (iterations 0..k-1)
    bits: int                # bits spent to get there


def spent_before(cumulative: np.ndarray) -> np.ndarray:
    """What was spent to reach ``theta^k`` from the totals through each iteration: those of 0..k-1."""
    return np.concatenate(([0], np.asarray(cumulative)[:-1])).astype(np.int64)


def first_within(objective: np.ndarray, f_star: float | None, tolerance: float) -> int | None:
    """The first k with ``f(theta^k) - f* <= tolerance``, or None."""
    if f_star is None:
        raise ValueError("the residual needs f_star: pass it, or set it from estimate_f_star(histories)")
    hits = np.flatnonzero(np.asarray(objective) - f_star <= tolerance)
    return int(hits[0]) if hits.size else None


@dataclass
class LazyHistory:
    """Per-iteration record of one run (arrays of length K = completed iterations, k = 0..K-1).

    ``objective[k]``, ``grad_norm_sq[k]``: f and ``||grad f||^2`` at ``theta^k``. ``aggregate_norm_sq[k]``:
    ``||sum_m Q_m||^2`` of the aggregate used for step k. ``uploads[k, m]``: worker m uploaded at
    iteration k. ``communications`` and ``bits`` are cumulative through iteration k;
    ``communications_before`` and ``bits_before`` are what was spent to reach ``theta^k`` (the x-axis of
    residual-vs-cost plots). ``test_accuracy[j]`` is measured at ``theta^{eval_iterations[j]}``; the last
    entry is the final ``theta^K``.
    """

    config: LazyConfig
    n_params: int
    bits_per_upload: int
    objective: np.ndarray
    grad_norm_sq: np.ndarray
    aggregate_norm_sq: np.ndarray
    uploads: np.ndarray
    eval_iterations: np.ndarray
    test_accuracy: np.ndarray
    theta: np.ndarray                        # theta^K (the last finite iterate if the run diverged)
    f_star: float | None = None
    seconds: float = 0.0                     # wall-clock time of the iterations
    smoothness: np.ndarray | None = None     # LAG-PS: the L_m used
    diverged: bool = False

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def n_iterations(self) -> int:
        return len(self.objective)

    @property
    def communications(self) -> np.ndarray:
        """Cumulative uploads through iteration k."""
        return np.cumsum(self.uploads.sum(axis=1, dtype=np.int64))

    @property
    def bits(self) -> np.ndarray:
        """Cumulative bits through iteration k."""
        return self.communications * np.int64(self.bits_per_upload)

    @property
    def communications_before(self) -> np.ndarray:
        """Uploads spent to reach ``theta^k``: those of iterations 0..k-1."""
        return spent_before(self.communications)

    @property
    def bits_before(self) -> np.ndarray:
        return spent_before(self.bits)

    @property
    def final_accuracy(self) -> float:
        return float(self.test_accuracy[-1]) if len(self.test_accuracy) else float("nan")

    def residual(self, f_star: float | None = None) -> np.ndarray:
        """``f(theta^k) - f*``; ``f_star`` defaults to the one stored with the run."""
        f_star = self.f_star if f_star is None else f_star
        if f_star is None:
            raise ValueError("residual needs f_star: pass it, or set it from estimate_f_star(histories)")
        return self.objective - f_star

    def reach(self, tolerance: float = 1e-6, f_star: float | None = None) -> ReachPoint | None:
        """Iterations, communications and bits to the first ``theta^k`` with residual <= tolerance."""
        k = first_within(self.objective, self.f_star if f_star is None else f_star, tolerance)
        if k is None:
            return None
        return ReachPoint(k, int(self.communications_before[k]), int(self.bits_before[k]))

    def to_dict(self) -> dict:
        """Plain lists and numbers (JSON-ready)."""
        return {
            "config": asdict(self.config), "n_params": self.n_params,
            "bits_per_upload": self.bits_per_upload, "f_star": self.f_star, "seconds": self.seconds,
            "diverged": self.diverged,
            "objective": self.objective.tolist(), "grad_norm_sq": self.grad_norm_sq.tolist(),
            "aggregate_norm_sq": self.aggregate_norm_sq.tolist(),
            "uploads": self.uploads.astype(int).tolist(),
            "communications": self.communications.tolist(), "bits": self.bits.tolist(),
            "eval_iterations": self.eval_iterations.tolist(), "test_accuracy": self.test_accuracy.tolist(),
            "smoothness": None if self.smoothness is None else self.smoothness.tolist(),
        }


def estimate_f_star(histories: Sequence[LazyHistory]) -> float:
    """The smallest objective value seen in any of ``histories`` (the reference's estimate of f*)."""
    values = [np.min(h.objective) for h in histories if h.n_iterations]
    if not values:
        raise ValueError("estimate_f_star needs at least one history with at least one iteration")
    return float(min(values))


# ---------------------------------------------------------------------------------------------------------
# the run


@dataclass
class _Recorder:
    """Preallocated per-iteration arrays, cut to the completed length at the end."""

    n_iterations: int
    n_workers: int
    objective: np.ndarray = field(init=False)
    grad_norm_sq: np.ndarray = field(init=False)
    aggregate_norm_sq: np.ndarray = field(init=False)
    uploads: np.ndarray = field(init=False)
    eval_iterations: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)

    def __post_init__(self):
        self.objective = np.full(self.n_iterations, np.nan)
        self.grad_norm_sq = np.full(self.n_iterations, np.nan)
        self.aggregate_norm_sq = np.full(self.n_iterations, np.nan)
        self.uploads = np.zeros((self.n_iterations, self.n_workers), dtype=bool)


class LazyRun:
    """One lazy-aggregation run, an iteration per :meth:`step` (module docstring: the equations).

    Parameters
    ----------
    config : LazyConfig
        Method and settings.
    data : Dataset
        Training data (split among the workers) and test data (for accuracy; may be empty).
    partition : sequence of int arrays, optional
        One index array into ``data.x_train`` per worker (``config.n_workers`` of them). Default:
        contiguous blocks in file order, worker m gets ``[m N // M, (m + 1) N // M)``.
    f_star : float, optional
        The optimal value, stored with the history for its residuals (see :func:`estimate_f_star`).
    smoothness : ndarray, shape (M,), optional
        LAG-PS: the ``L_m`` to use; computed by :func:`smoothness_bounds` when omitted.

    ``history`` holds one JSON-able record per completed iteration k: ``objective`` f(theta^k),
    ``grad_norm_sq``, ``aggregate_norm_sq``, ``uploads`` (the workers that uploaded), cumulative
    ``communications`` and ``bits``, ``test_accuracy`` where measured at theta^k, ``time``; the last
    iteration's record also has ``final_test_accuracy`` at theta^K. :meth:`state_dict` and
    :meth:`load_state_dict` checkpoint and restore the run bitwise.
    """

    def __init__(self, config: LazyConfig, data: Dataset, partition: Sequence[np.ndarray] | None = None, *,
                 f_star: float | None = None, smoothness: np.ndarray | None = None):
        n_samples = len(data.x_train)
        n_workers = config.n_workers
        if n_workers > n_samples:
            raise ValueError(f"n_workers (M) must be in [1, {n_samples}] (the number of training samples), "
                             f"got {n_workers}")
        if partition is None:
            partition = contiguous(n_samples, n_workers)
        if len(partition) != n_workers:
            raise ValueError(f"partition has {len(partition)} index arrays but n_workers (M) is {n_workers}")
        dtype = np.dtype(config.dtype)
        self.config, self.f_star = config, f_star
        self.shards = stack_shards(data.x_train, data.y_train, partition, dtype)
        if RULES[config.method].gradient == "minibatch" and config.minibatch_size > self.shards.sizes.min():
            raise ValueError(f"minibatch_size must be in [1, {self.shards.sizes.min()}] (the smallest "
                             f"shard), got {config.minibatch_size}")
        self.model = SoftmaxRegression(data.n_features, data.n_classes, config.l2)
        self.x_test = as_dtype(data.x_test, dtype)
        self.y_test = data.y_test
        streams = RunStreams(config.seed)
        self.theta = self.model.init(streams.generator("init"), kind=config.init, dtype=dtype)
        self.minibatch_rng = streams.generator("minibatch")
        n_params = self.model.size
        if RULES[config.method].skip == "server":
            if smoothness is None:
                smoothness, _ = smoothness_bounds(self.shards, config.l2)
            smoothness = np.asarray(smoothness, dtype=np.float64)
            if smoothness.shape != (n_workers,) or not np.all(np.isfinite(smoothness) & (smoothness > 0)):
                raise ValueError(f"smoothness must hold {n_workers} finite positive numbers, "
                                 f"got {smoothness!r}")
        else:
            smoothness = None
        self.smoothness = smoothness
        self.bits_per_upload = bits_per_upload(config.method, n_params, config.bits)

        # Server and worker state.
        self.uploaded = np.zeros((n_workers, n_params), dtype=dtype)     # Q_m, each worker's last upload
        self.aggregate = np.zeros(n_params, dtype=dtype)                 # sum_m Q_m, updated by innovations
        self.error_at_upload = np.zeros(n_workers)                       # e_hat_m
        self.skips = np.zeros(n_workers, dtype=np.int64)                 # consecutive skips (the clock)
        self.step_history = np.zeros(config.history_length)              # ring of ||theta^{j+1} - theta^j||^2
        self.theta_at_gradient = np.zeros((n_workers, n_params), dtype=dtype)   # LAG-PS: theta_hat_m
        if config.quantized:
            self._codes = np.empty((n_workers, n_params), dtype=laq.code_dtype(config.bits))
            self._quantized = np.empty((n_workers, n_params), dtype=dtype)
            self._radius, self._error, self._innovation = (np.empty(n_workers) for _ in range(3))
        self._rows = np.arange(n_workers)[:, None]
        self.record = _Recorder(config.iterations, n_workers)
        self.history: list[dict] = []
        self.completed = 0
        self.seconds = 0.0

    # -- one iteration ------------------------------------------------------------------------------
    def step(self) -> dict:
        """Iteration k = ``completed``: gradients at theta^k, uploads, theta^{k+1}; returns its record."""
        config, shards, model, record = self.config, self.shards, self.model, self.record
        rule, alpha, n_workers = RULES[config.method], config.step_size, config.n_workers
        k = self.completed
        if k >= config.iterations:
            raise RuntimeError(f"the run is complete ({config.iterations} iterations)")
        started = time.perf_counter()
        theta, uploaded, skips = self.theta, self.uploaded, self.skips
        # All M gradients at theta^k in one batched call (theta (P,) broadcasts against x (M, n, F)).
        loss, gradients = model.loss_and_grad(theta, shards.x, shards.y, shards.weights)
        full_gradient = gradients.sum(axis=0)                     # grad f = sum_m grad f_m
        objective = float(loss.sum())                             # f = sum_m f_m
        grad_norm_sq = float(full_gradient @ full_gradient)
        if not (math.isfinite(objective) and math.isfinite(grad_norm_sq)):
            self._diverge(k, "the objective or a gradient")
        if rule.gradient == "minibatch":
            # Each worker's gradient on its own minibatch, drawn without replacement.
            batch = _minibatch_indices(self.minibatch_rng, shards.sizes, config.minibatch_size)
            _, gradients = model.loss_and_grad(theta, shards.x[self._rows, batch], shards.y[self._rows, batch])
            if not np.all(np.isfinite(gradients)):
                self._diverge(k, "a minibatch gradient")
        record.objective[k] = objective
        record.grad_norm_sq[k] = grad_norm_sq
        accuracy = self._evaluate(k, theta) if k % config.eval_every == 0 else None

        threshold = history_threshold(self.step_history, k, config.history_weight, alpha, n_workers)
        # What would be uploaded: Q = quantize(g_m | Q_m) with its error e_m and ||Q - Q_m||^2, or g_m.
        if rule.upload == "quantized":
            laq.laq_quantize(gradients, uploaded, config.bits, self._codes, self._quantized, self._radius,
                         self._error, self._innovation)
            candidates, error, innovation = self._quantized, self._error, self._innovation
        else:
            candidates, error, innovation = gradients, np.zeros(n_workers), None
        # Who uploads.
        if rule.skip == "never":
            upload = np.ones(n_workers, dtype=bool)
        elif rule.skip == "worker":
            if innovation is None:                               # ||g_m - Q_m||^2, exact
                difference = gradients - uploaded
                innovation = np.einsum("mp,mp->m", difference, difference)
            constants = (config.slaq_error_scale, config.slaq_threshold_offset) if rule.slaq_terms else ()
            upload = laq_upload_decision(innovation, threshold, error, self.error_at_upload, skips,
                                         config.max_skips, *constants)
        else:  # "server" (LAG-PS): the server decides from theta_hat_m alone; everyone is asked at k = 0
            offset = self.theta_at_gradient - theta
            distance_sq = np.einsum("mp,mp->m", offset, offset)
            upload = lag_ps_request_decision(self.smoothness, distance_sq, threshold, skips, config.max_skips)
            if k == 0:
                upload[:] = True
            self.theta_at_gradient[upload] = theta

        # The server adds only the uploaders' innovations to its running sum of the last uploads.
        if upload.all():
            self.aggregate += (candidates - uploaded).sum(axis=0)
            uploaded[...] = candidates
        elif upload.any():
            self.aggregate += (candidates[upload] - uploaded[upload]).sum(axis=0)
            uploaded[upload] = candidates[upload]
        if rule.upload == "quantized":
            self.error_at_upload[upload] = self._error[upload]
        skips[upload] = 0
        skips[~upload] += 1
        record.uploads[k] = upload
        record.aggregate_norm_sq[k] = float(self.aggregate @ self.aggregate)

        with np.errstate(over="ignore", invalid="ignore"):       # checked just below
            new_theta = theta - alpha * self.aggregate            # theta^{k+1} = theta^k - alpha sum_m Q_m
            step = new_theta - theta
            step_sq = float(step @ step)
        if not math.isfinite(step_sq):
            self._diverge(k, "theta")
        self.step_history[k % config.history_length] = step_sq
        self.theta = new_theta
        self.completed = k + 1

        uploads_so_far = (self.history[-1]["communications"] if self.history else 0) + int(upload.sum())
        entry = {"iteration": k, "objective": objective, "grad_norm_sq": grad_norm_sq,
                 "aggregate_norm_sq": float(record.aggregate_norm_sq[k]),
                 "uploads": np.flatnonzero(upload).tolist(), "communications": uploads_so_far,
                 "bits": uploads_so_far * self.bits_per_upload}
        if accuracy is not None:
            entry["test_accuracy"] = accuracy
        if self.completed == config.iterations:
            final = self._evaluate(self.completed, self.theta)
            if final is not None:
                entry["final_test_accuracy"] = final
        entry["time"] = time.perf_counter() - started
        self.seconds += entry["time"]
        self.history.append(entry)
        return entry

    def run(self, callback: Callable[[int, np.ndarray], None] | None = None,
            progress: bool = False) -> LazyHistory:
        """Step to ``config.iterations``; ``callback(k + 1, theta^{k+1})`` after each step."""
        remaining = range(self.completed, self.config.iterations)
        for _ in tqdm(remaining, desc=self.config.method, disable=not progress):
            self.step()
            if callback is not None:
                callback(self.completed, self.theta.copy())
        return self.to_history()

    # -- results and checkpoints ---------------------------------------------------------------------
    def to_history(self, diverged: bool = False) -> LazyHistory:
        """The completed iterations as a :class:`LazyHistory` of arrays."""
        record, completed = self.record, self.completed
        return LazyHistory(
            config=self.config, n_params=self.model.size, bits_per_upload=self.bits_per_upload,
            objective=record.objective[:completed].copy(), grad_norm_sq=record.grad_norm_sq[:completed].copy(),
            aggregate_norm_sq=record.aggregate_norm_sq[:completed].copy(),
            uploads=record.uploads[:completed].copy(),
            eval_iterations=np.array(record.eval_iterations, dtype=np.int64),
            test_accuracy=np.array(record.test_accuracy, dtype=np.float64),
            theta=self.theta.copy(), f_star=self.f_star, seconds=self.seconds,
            smoothness=self.smoothness, diverged=diverged)

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """Everything needed to continue bitwise identically: (arrays, JSON-able metadata)."""
        record = self.record
        arrays = {"theta": self.theta, "uploaded": self.uploaded, "aggregate": self.aggregate,
                  "error_at_upload": self.error_at_upload, "skips": self.skips,
                  "step_history": self.step_history, "theta_at_gradient": self.theta_at_gradient,
                  "objective": record.objective, "grad_norm_sq": record.grad_norm_sq,
                  "aggregate_norm_sq": record.aggregate_norm_sq, "uploads": record.uploads,
                  "eval_iterations": np.array(record.eval_iterations, np.int64),
                  "test_accuracy": np.array(record.test_accuracy, np.float64)}
        if self.smoothness is not None:
            arrays["smoothness"] = self.smoothness
        meta = {"completed": self.completed, "history": self.history, "seconds": self.seconds,
                "minibatch_rng": self.minibatch_rng.bit_generator.state}
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Restore a :meth:`state_dict` into a run built with the same config and data (or with more
        iterations: a run extended after its checkpoint)."""
        completed = int(meta["completed"])
        if arrays["theta"].shape != self.theta.shape or arrays["uploads"].shape[1:] != (self.config.n_workers,) \
                or completed > self.config.iterations:
            raise ValueError("the checkpoint belongs to another config or dataset (its shapes differ)")
        for name in ("theta", "aggregate"):
            setattr(self, name, np.array(arrays[name], dtype=self.theta.dtype))
        for name in ("uploaded", "error_at_upload", "skips", "step_history", "theta_at_gradient"):
            getattr(self, name)[...] = arrays[name]
        for name in ("objective", "grad_norm_sq", "aggregate_norm_sq", "uploads"):
            getattr(self.record, name)[:completed] = arrays[name][:completed]
        self.record.eval_iterations = arrays["eval_iterations"].tolist()
        self.record.test_accuracy = arrays["test_accuracy"].tolist()
        if "smoothness" in arrays:
            self.smoothness = np.array(arrays["smoothness"])
        self.completed = completed
        self.history = list(meta["history"])
        self.seconds = float(meta.get("seconds", 0.0))
        self.minibatch_rng.bit_generator.state = meta["minibatch_rng"]

    # -- pieces --------------------------------------------------------------------------------------
    def _evaluate(self, k: int, point: np.ndarray) -> float | None:
        if not len(self.y_test):
            return None
        accuracy = float(self.model.accuracy(point, self.x_test, self.y_test))
        self.record.eval_iterations.append(k)
        self.record.test_accuracy.append(accuracy)
        return accuracy

    def _diverge(self, k: int, what: str) -> None:
        last = (f"; last finite objective {self.history[-1]['objective']:.10g} at iteration "
                f"{self.history[-1]['iteration']}") if self.history else ""
        raise DivergenceError(
            f"{self.config.method}: {what} is not finite at iteration {k} (step_size alpha = "
            f"{self.config.step_size}); the run diverged - try a smaller step_size{last}",
            self.to_history(diverged=True))


def run_lazy(config: LazyConfig, data: Dataset, partition: Sequence[np.ndarray] | None = None, *,
             f_star: float | None = None, smoothness: np.ndarray | None = None,
             callback: Callable[[int, np.ndarray], None] | None = None,
             progress: bool = True) -> LazyHistory:
    """Run one lazy-aggregation method to the end: ``LazyRun(...).run(...)``.

    ``callback(k + 1, theta)`` is called with each new iterate ``theta^{k+1}`` (a fresh copy). Raises
    :class:`DivergenceError` (carrying the :class:`LazyHistory` so far) on NaN or inf.
    """
    run = LazyRun(config, data, partition, f_star=f_star, smoothness=smoothness)
    return run.run(callback=callback, progress=progress)


def _minibatch_indices(rng: np.random.Generator, sizes: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` distinct indices per worker, uniform within its shard, shape (M, batch).

    One uniform key per (worker, sample); padded rows get keys above 1 and are never among the
    ``batch`` smallest.
    """
    n_workers, n_max = len(sizes), int(sizes.max())
    keys = rng.random((n_workers, n_max))
    keys[np.arange(n_max)[None, :] >= sizes[:, None]] = 2.0
    return np.argpartition(keys, batch - 1, axis=1)[:, :batch]


# ---------------------------------------------------------------------------------------------------------
# the family's metrics (over the JSON records of history.jsonl) and its registration


def records_spent_before(history: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Uploads and bits spent to reach theta^k, for each record k (those of iterations 0..k-1)."""
    return (spent_before([r["communications"] for r in history]), spent_before([r["bits"] for r in history]))


def records_reach(history: list[dict], f_star: float, tolerance: float) -> dict | None:
    """Iterations, communications and bits to the first theta^k with f(theta^k) - f* <= tolerance."""
    if not history:
        return None
    k = first_within([r["objective"] for r in history], f_star, tolerance)
    if k is None:
        return None
    communications, bits = records_spent_before(history)
    return {"iteration": k, "communications": int(communications[k]), "bits": int(bits[k])}


def f_star_of(runs) -> float:
    """``f*`` for lazy runs read back together: the one in their configs if they all agree on one, else
    the smallest objective any of them reached (:func:`estimate_f_star`'s rule)."""
    configured = {run.config.get("run", {}).get("f_star") for run in runs}
    if len(configured) == 1 and None not in configured:
        return float(configured.pop())
    values = [min(r["objective"] for r in run.history) for run in runs if run.history]
    if not values:
        raise ValueError("no lazy run with at least one iteration to estimate f* from")
    return float(min(values))


def summarize(history: list[dict]) -> dict:
    """The last objective, gradient norm, uploads and bits; the smallest objective; test accuracies."""
    if not history:
        return {}
    last = history[-1]
    summary = {"final_objective": last["objective"], "final_grad_norm_sq": last["grad_norm_sq"],
               "communications": last["communications"], "bits": last["bits"],
               "min_objective": float(min(r["objective"] for r in history))}
    accuracies = [r["test_accuracy"] for r in history if "test_accuracy" in r]
    final = last.get("final_test_accuracy", accuracies[-1] if accuracies else None)
    if final is not None:
        summary["final_test_accuracy"] = final
        summary["best_test_accuracy"] = max(accuracies + [final])
    return summary


def progress_text(record: dict, state: dict) -> str:
    if "test_accuracy" in record:
        state["accuracy"] = record["test_accuracy"]
    accuracy = f"  acc {state['accuracy']:.4f}" if "accuracy" in state else ""
    return (f"f {record['objective']:.6g}  |grad|^2 {record['grad_norm_sq']:.3g}  "
            f"bits {record['bits']:.3g}{accuracy}")


def report(summary: dict) -> list[str]:
    if "final_objective" not in summary:
        return []
    return [f"f {summary['final_objective']:.8g}, uploads {summary['communications']}, "
            f"bits {summary['bits']:.4g}"]


def compare(runs, targets: dict) -> tuple[str, list[str], list[list[str]]]:
    """The `fedsim compare` table of lazy runs: iterations, uploads and bits to the target residual."""
    target = targets["residual"]
    usable = [run for run in runs if run.history]
    f_star = f_star_of(usable) if usable else math.nan
    rows = []
    for run in runs:
        history = run.history
        reached = records_reach(history, f_star, target) if history else None
        final = (run.summary or {}).get("final_test_accuracy")
        if final is None:
            measured = [r["test_accuracy"] for r in history if "test_accuracy" in r]
            final = measured[-1] if measured else None
        rows.append([run.label, run.method, str(len(history)), cell(final, ".4f"),
                     cell(history[-1]["objective"] - f_star if history else None, ".3e"),
                     cell(reached and reached["iteration"], "d"),
                     cell(reached and reached["communications"], "d"),
                     cell(reached and reached["bits"], ".4g"),
                     cell(history[-1]["bits"] if history else None, ".4g"), run_seconds(run), run.status])
    headers = ["run", "method", "iterations", "final acc", "final f - f*", "its to target",
               "uploads to target", "bits to target", "bits total", "seconds", "status"]
    return f"lazy runs (target: f - f* <= {target:g}; f* = {f_star:.12g})", headers, rows


def _make_run(config, dataset, clients):
    return LazyRun(config.lazy, dataset, clients, f_star=config.run.f_star)


FAMILY = register_family(Family(
    name="lazy", description="lazy aggregation: GD, QGD, LAG-WK, LAG-PS, LAQ, SLAQ",
    config_class=LazyConfig, make_run=_make_run, pipeline="laq", unit="iteration", clients_word="workers",
    clients_setting="n_workers", steps_setting="iterations", summarize=summarize, progress=progress_text,
    report=report, compare=compare, figures="lazy_figures", method_names=lambda: list(RULES),
    metrics=("final_objective", "min_objective", "communications", "bits", "final_test_accuracy"),
    curve=("iteration", "objective", "f - (smallest f of the sweep)", "residual"),
    derived={"seed": "the top-level `seed`"}))
