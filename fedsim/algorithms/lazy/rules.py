"""The lazy rules as pure functions of per-worker scalars, and the data they read: the workers' shards
stacked into one (M, n, F) array, and LAG-PS's smoothness constants (the model's bounds, or estimates). Equations:
:mod:`fedsim.algorithms.lazy`.

The history threshold's weights: every rule, LAG-PS's too, uses ``H^k`` with ``xi_d = xi / min(k, D)``
(``lazy.history_weight`` = xi spread over the differences that exist). DESIGN.md §6 writes LAG-PS's threshold
with ``xi`` on each of the D differences (``xi_d = xi``), D times larger once k >= D. Both papers write the
threshold with free weights, ``(1 / (alpha^2 M^2)) sum_{d=1..D} xi_d ||theta^{k+1-d} - theta^{k-d}||^2`` (LAG,
arXiv 1805.09965, for LAG-WK and LAG-PS alike; LAQ, arXiv 1909.07588), and the LAQ reference sets
``xi_d = 0.8 / D`` (DESIGN.md §6's own constants for the LAQ rule). fedsim keeps the one weighting for every
rule, so that one ``history_weight`` means one threshold whichever rule reads it and LAG-PS is compared with
LAG-WK and LAQ at the same H^k; DESIGN.md §6's LAG-PS threshold is ``history_weight = D * xi``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from fedsim.algorithms.lazy.config import LAQ_ERROR_FACTOR
from fedsim.models import ModelConfig
from fedsim.models.features import Codes


def history_threshold(step_history: np.ndarray, n_steps: int, history_weight: float, step_size: float,
                      n_workers: int) -> float:
    """The history threshold ``H^k`` (:mod:`fedsim.algorithms.lazy`) from ``step_history``, the ring of the
    last D squared steps (entries not yet written are 0), at ``n_steps`` = k."""
    available = min(int(n_steps), len(step_history))
    if available == 0:
        return 0.0
    weighted = history_weight / available * float(np.sum(step_history))
    return weighted / (step_size ** 2 * n_workers ** 2)


def laq_upload_decision(innovation: np.ndarray, threshold: float, error: np.ndarray,
                        error_at_last_upload: np.ndarray, skips: np.ndarray, max_skips: int,
                        error_scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """Which workers upload under the LAQ / LAG-WK / SLAQ rule (bool, shape (M,)): ``innovation >= threshold +
    error_scale * 3 (error + error_at_last_upload) + offset``, or ``skips >= max_skips`` (LAG-WK: errors 0;
    SLAQ: ``error_scale`` = ec and its ``offset``)."""
    bound = threshold + error_scale * LAQ_ERROR_FACTOR * (error + error_at_last_upload) + offset
    return (innovation >= bound) | (skips >= max_skips)


def lag_ps_request_decision(smoothness: np.ndarray, distance_sq: np.ndarray, threshold: float,
                            skips: np.ndarray, max_skips: int) -> np.ndarray:
    """Which workers the LAG-PS server asks for a gradient (bool, shape (M,)): ``L_m^2 distance_sq > H^k``
    (``distance_sq`` = ``||theta_hat_m - theta^k||^2``), or ``skips_m >= C``. An overflow to inf (a diverging run,
    which the caller then stops) asks the worker, without a NumPy warning."""
    with np.errstate(over="ignore", invalid="ignore"):
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


#: Power-iteration steps of :func:`curvature_estimates`.
CURVATURE_STEPS = 10


class Smoothness(NamedTuple):
    """LAG-PS's ``L_m`` and the step-size check's ``L_f``, and what kind of number they are."""

    per_worker: np.ndarray   # (M,) L_m, of each f_m
    total: float             # L_f, of f = sum_m f_m
    bound: bool              # True: the model's own bounds; False: curvature estimates at one point


def smoothness_bounds(shards: Shards, l2: float, model_config: ModelConfig = ModelConfig(),
                      n_classes: int | None = None) -> tuple[np.ndarray, float]:
    """The bounds ``L_m`` and ``L_f`` of the ``[model]`` table's model with L2 coefficient ``l2`` (its optional
    ``smoothness_bounds`` method, :func:`smoothness_of`); ``n_classes``: default the labels' count. A model
    without a bound (the MLP) raises ValueError."""
    n_classes = n_classes or max(2, int(shards.y.max()) + 1)
    model = model_config.build(shards.x.shape[-1], n_classes, l2)
    if not hasattr(model, "smoothness_bounds"):
        raise ValueError(f"model.name = {model_config.name!r} has no smoothness bound (only models with a "
                         f"smoothness_bounds method have one); curvature_estimates gives an estimate")
    return model.smoothness_bounds(shards.x, shards.sizes)


def smoothness_of(model, shards: Shards, theta: np.ndarray, rng: np.random.Generator) -> Smoothness:
    """``L_m`` of each ``f_m`` and ``L_f`` of ``f = sum_m f_m`` for ``model`` on ``shards``: its own bounds if it
    has them (a method ``smoothness_bounds(x, sizes)``: softmax regression's, Boehning's), else estimates at
    ``theta``. A network has no such bound that holds everywhere (a ReLU network's curvature is not
    even defined at a kink), so for a model without one, the curvature at ``theta`` (the run's theta^0) is
    measured by :func:`curvature_estimates` (``rng`` draws its starting vectors). Why an estimate rather than
    requiring ``L_m`` from the user: LAG-PS then runs from any config, and its rule
    ``L_m^2 ||theta_hat_m - theta^k||^2 > H^k`` needs only the scale of the curvature, which the estimate
    gives where the run starts. It is not a bound, so LAG-PS's convergence guarantee does not hold with it
    (callers warn: ``bound`` is False); the curvature along the path may grow above it.
    """
    if hasattr(model, "smoothness_bounds"):
        per_worker, total = model.smoothness_bounds(shards.x, shards.sizes)
        return Smoothness(np.asarray(per_worker, dtype=np.float64), float(total), True)
    return Smoothness(*curvature_estimates(model, shards, theta, rng), False)


def curvature_estimates(model, shards: Shards, theta: np.ndarray, rng: np.random.Generator,
                        steps: int = CURVATURE_STEPS) -> tuple[np.ndarray, float]:
    """Estimates of the local curvature of each ``f_m`` and of ``f = sum_m f_m`` at ``theta``: the largest
    absolute eigenvalue of their Hessians, by ``steps`` power-iteration steps on Hessian-vector products
    from central differences of the gradient (one batched call for all M workers each way)::

        H v ~= (grad f(theta + h v) - grad f(theta - h v)) / (2 h),     ||v|| = 1
        v <- H v / ||H v||;   the estimate is ||H v|| at the last step

    with ``h = eps^(1/3) max(1, ||theta||)`` (eps of theta's dtype: the step that balances the differences'
    truncation and rounding errors) and the starting vectors ``v ~ N(0, I)`` drawn from ``rng``, normalized:
    one per worker and one for f. A few steps give the order of magnitude, not the exact top eigenvalue.
    Returns ``(L_m (M,), L_f)``.
    """
    n_workers = len(shards.sizes)
    theta = np.asarray(theta)
    h = float(np.cbrt(np.finfo(theta.dtype).eps)) * max(1.0, float(np.linalg.norm(theta)))

    def gradients(points):              # grad f_m at points (M, P), or the M gradients at one point (P,)
        return model.loss_and_grad(points, shards.x, shards.y, shards.weights)[1].astype(np.float64)

    def hessian_times(direction, summed):   # (grad(theta + h v) - grad(theta - h v)) / (2 h)
        shift = (h * direction).astype(theta.dtype)
        plus, minus = gradients(theta + shift), gradients(theta - shift)
        difference = (plus.sum(axis=0) - minus.sum(axis=0)) if summed else plus - minus
        return difference / (2 * h)

    def normalized(vectors):
        norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    per_worker_direction = normalized(rng.standard_normal((n_workers, theta.size)))
    total_direction = normalized(rng.standard_normal(theta.size))
    for _ in range(steps):
        per_worker_product = hessian_times(per_worker_direction, summed=False)
        total_product = hessian_times(total_direction, summed=True)
        per_worker_direction, total_direction = normalized(per_worker_product), normalized(total_product)
    return np.linalg.norm(per_worker_product, axis=1), float(np.linalg.norm(total_product))
