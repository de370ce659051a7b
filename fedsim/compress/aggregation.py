"""How the server combines what it decoded from K senders into one update.

::

    mean        (1 / K) sum_k m_k
    weighted    sum_k n_k m_k / sum_k n_k            (FedAvg: n_k samples of sender k)
    majority    lr * sign(sum_k sign(m_k))           (signSGD with majority vote: each coordinate moves by lr
                                                      in the direction most senders voted for, one vote each
                                                      whatever a message's scale; ties give 0)

A compressor lists the ones that make sense for its messages (``Compressor.aggregations``; majority only for
sign messages). Each takes the decoded rows (K, P), the senders' sample counts (K,) and the server step lr.
"""

from __future__ import annotations

import numpy as np


def mean(decoded: np.ndarray, sizes: np.ndarray, lr: float) -> np.ndarray:
    """(1 / K) sum_k m_k."""
    return decoded.mean(axis=0)


def weighted_mean(decoded: np.ndarray, sizes: np.ndarray, lr: float) -> np.ndarray:
    """sum_k n_k m_k / sum_k n_k."""
    n = np.asarray(sizes).astype(decoded.dtype)
    return (n / n.sum()) @ decoded


def majority_vote(decoded: np.ndarray, sizes: np.ndarray, lr: float) -> np.ndarray:
    """lr * sign(sum_k sign(m_k)): a scaled sign message (``sign.scale = "mean"``) still casts one vote."""
    votes = np.sign(decoded).sum(axis=0)
    return (lr * np.sign(votes)).astype(decoded.dtype)


AGGREGATIONS = {"mean": mean, "weighted": weighted_mean, "majority": majority_vote}
