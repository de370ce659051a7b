"""Kernels of a federated round's local training: the batches of many steps at once, and the SGD update.

A round's local SGD (:meth:`fedsim.algorithms.federated.run.FederatedRun._local_round`) takes
``local_iterations`` steps for each of its K participants. Between two gradients, a step used to spend more
time in about twenty small NumPy calls (the batch rows from each client's cursor, the L2 term, momentum,
the learning rate, the divergence check) than in the products; these two kernels do that work in one
call each:

* :func:`plan_batches` writes the batch rows of a run of steps, ``samples[s, k]``, from each participant's
  shuffled order, moving the clients' cursors and epochs on as the steps would. It stops after a step in
  which a participant completed an epoch: that client's next batch needs a new order (a permutation drawn
  by the run from its (seed, client, epoch) stream) and its learning rate may change.
* :func:`sgd_update` checks the step's losses, then updates every participant in one pass::

      g = grad + l2 * w                     (when l2 != 0)
      v = momentum * v + g; g = v           (when there is a momentum buffer)
      w = w - lr_k * g

  in the dtype of ``w``, the operations in the order written (fastmath off), so the results are bitwise
  those of the NumPy lines the round ran before (the twin :func:`sgd_update_numpy`).

The batches (as the run's ``_next_batches`` draws them; ``sizes[c] = offsets[c + 1] - offsets[c]``)::

    count = min(B, sizes[c] - cursor[c])                 a batch never crosses the epoch's end (the last is smaller)
    samples[s, k, j] = order[offsets[c] + cursor[c] + min(j, count - 1)]    (padding repeats the last row)
    cursor[c] += count; at sizes[c]: cursor[c] = 0, epoch[c] += 1

Both are called only by the run, with arguments it built itself (so, unlike the compressors' kernels,
they carry no argument checks).
"""

from __future__ import annotations

import numba
import numpy as np

from fedsim.kernels import JIT_OPTIONS


@numba.njit(**JIT_OPTIONS)
def plan_batches(order, offsets, cursor, epoch, participants, first, samples, counts):
    """Fill ``samples[s]`` (K, B) and ``counts[s]`` (K,) for steps ``s = first, ...`` up to the first step
    after which a participant needs a new epoch's order (or ``samples.shape[0]``); return the step after
    the last one filled. ``cursor`` and ``epoch`` (one entry per client, int64) are moved on in place."""
    steps, K, B = samples.shape
    for s in range(first, steps):
        finished = False
        for k in range(K):
            client = participants[k]
            start = offsets[client]
            size = offsets[client + 1] - start
            position = cursor[client]
            count = min(B, size - position)
            for j in range(B):
                samples[s, k, j] = order[start + position + min(j, count - 1)]
            counts[s, k] = count
            position += count
            if position == size:
                cursor[client] = 0
                epoch[client] += 1
                finished = True
            else:
                cursor[client] = position
        if finished:
            return s + 1
    return steps


def plan_batches_numpy(order, offsets, cursor, epoch, participants, first, samples, counts):
    """NumPy twin of :func:`plan_batches` (the run's former ``_next_batches`` arithmetic, step by step)."""
    steps, _, B = samples.shape
    sizes = offsets[participants + 1] - offsets[participants]
    slot = np.arange(B)
    for s in range(first, steps):
        position = cursor[participants]
        count = np.minimum(B, sizes - position)
        samples[s] = order[(offsets[participants] + position)[:, None] + np.minimum(slot, count[:, None] - 1)]
        counts[s] = count
        position = position + count
        cursor[participants] = position
        finished = participants[position == sizes]
        cursor[finished] = 0
        epoch[finished] += 1
        if len(finished):
            return s + 1
    return steps


@numba.njit(**JIT_OPTIONS)
def sgd_update(weights, grad, momentum, lr, l2, momentum_factor, loss, loss_limit):
    """One SGD step of K models in place (module docstring), unless a loss is NaN, inf or beyond
    ``loss_limit``: then nothing changes and the result is False.

    ``weights``, ``grad`` (K, P); ``momentum`` (K, P), or (0, 0) for none; ``lr`` (K,); ``l2`` and
    ``momentum_factor`` scalars of the weights' dtype; ``loss`` (K,)."""
    K, P = weights.shape
    for k in range(K):
        if not abs(loss[k]) <= loss_limit:                 # NaN included
            return False
    with_l2 = l2 != 0
    with_momentum = momentum.shape[0] > 0
    for k in range(K):
        rate = lr[k]
        for i in range(P):
            g = grad[k, i]
            if with_l2:
                g = g + l2 * weights[k, i]                 # g + l2 w
            if with_momentum:
                v = momentum[k, i] * momentum_factor       # v <- momentum * v + g
                v = v + g
                momentum[k, i] = v
                g = v
            weights[k, i] = weights[k, i] - rate * g       # w <- w - lr * g
    return True


def sgd_update_numpy(weights, grad, momentum, lr, l2, momentum_factor, loss, loss_limit):
    """NumPy twin of :func:`sgd_update` (``grad`` is overwritten)."""
    if not np.all(np.abs(loss) <= loss_limit):
        return False
    if l2 != 0:
        grad += l2 * weights
    if momentum.shape[0] > 0:
        momentum *= momentum_factor
        momentum += grad
        grad = momentum
    weights -= lr[:, None] * grad
    return True
