"""The lazy rules as pure functions of per-worker scalars, and the data they read: the workers' shards
stacked into one (M, n, F) array and their smoothness bounds (LAG-PS). Equations:
:mod:`fedsim.algorithms.lazy`."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from fedsim.algorithms.lazy.config import LAQ_ERROR_FACTOR
from fedsim.models.features import Codes, decoded


def history_threshold(step_history: np.ndarray, n_steps: int, history_weight: float, step_size: float,
                      n_workers: int) -> float:
    """``H^k = (1 / (alpha^2 M^2)) sum_{d=1..min(k,D)} xi_d ||theta^{k+1-d} - theta^{k-d}||^2``.

    ``step_history``: ring of the last D squared steps (entries not yet written are 0); ``n_steps`` = k.
    Each of the ``min(k, D)`` real entries gets ``xi_d = xi / min(k, D)`` (the reference's weighting:
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
