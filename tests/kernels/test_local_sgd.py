"""A federated round's local-training kernels (fedsim.kernels.local_sgd) against their NumPy twins and their
plain-Python ``.py_func``, bitwise: the batch plan of ragged clients across epoch ends, and the SGD update with
and without L2 and momentum, float32 and float64, including a loss out of range (nothing moves)."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.kernels import local_sgd
from tests.conftest import DTYPES
from tests.kernels.conftest import agree, implementations


def clients(rng, n_clients: int, low: int, high: int):
    sizes = rng.integers(low, high, n_clients)
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    order = rng.permutation(offsets[-1]).astype(np.int64)
    cursor = np.array([rng.integers(0, size) for size in sizes], np.int64)
    return order, offsets, cursor, rng.integers(0, 3, n_clients).astype(np.int64)


@pytest.mark.parametrize("batch, steps", [(1, 5), (4, 9), (7, 12), (20, 3)])
def test_plan_batches_matches_its_twin_across_epoch_ends(batch, steps):
    rng = np.random.default_rng(batch * 100 + steps)
    order, offsets, cursor, epoch = clients(rng, 9, batch, 3 * batch + 5)
    participants = np.sort(rng.choice(9, 5, replace=False)).astype(np.int64)

    def plan_all(plan):
        state = [cursor.copy(), epoch.copy()]
        samples = np.full((steps, 5, batch), -1, np.int64)
        counts = np.full((steps, 5), -1, np.int64)
        ends, first = [], 0
        while first < steps:
            first = plan(order, offsets, *state, participants, first, samples, counts)
            ends.append(first)
        return samples, counts, *state, ends

    samples, counts, cursor_after, epoch_after, ends = agree(
        implementations(local_sgd.plan_batches, local_sgd.plan_batches_numpy), plan_all)
    # Each batch holds `count` real rows of its client's segment, then repeats the last one.
    for s in range(steps):
        for k, client in enumerate(participants):
            rows = samples[s, k]
            assert 1 <= counts[s, k] <= batch
            assert np.all(rows[counts[s, k]:] == rows[counts[s, k] - 1])
            segment = order[offsets[client]:offsets[client + 1]]
            assert np.isin(rows, segment).all()
    # A run of steps ends exactly where some participant's epoch ended; the others kept their epoch.
    assert ends[-1] == steps and all(e > s for s, e in zip([0] + ends, ends))
    moved = epoch_after - epoch
    assert np.all(moved[np.setdiff1d(np.arange(9), participants)] == 0)
    assert np.all(cursor_after[np.setdiff1d(np.arange(9), participants)] ==
                  cursor[np.setdiff1d(np.arange(9), participants)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("l2, momentum", [(0.0, 0.0), (0.01, 0.0), (0.0, 0.9), (1e-3, 0.5)])
def test_sgd_update_matches_its_twin_bitwise(dtype, l2, momentum):
    rng = np.random.default_rng(int(l2 * 1e4) + int(momentum * 10))
    K, P = 4, 37
    weights = rng.standard_normal((K, P)).astype(dtype)
    grad = rng.standard_normal((K, P)).astype(dtype)
    velocity = rng.standard_normal((K, P)).astype(dtype) if momentum else np.empty((0, 0), dtype)
    lr = rng.uniform(0.01, 0.5, K).astype(dtype)
    loss = rng.uniform(0, 3, K).astype(dtype)

    def step(update):
        w, v = weights.copy(), velocity.copy()
        assert update(w, grad.copy(), v, lr, dtype(l2), dtype(momentum), loss, 1e6)
        return w, v

    updated, _ = agree(implementations(local_sgd.sgd_update, local_sgd.sgd_update_numpy), step)
    # The definition, in the dtype: g = grad + l2 w; v = momentum v + g; w = w - lr v.
    g = grad + dtype(l2) * weights
    if momentum:
        g = velocity * dtype(momentum) + g
    assert updated.tobytes() == (weights - lr[:, None] * g).tobytes()


@pytest.mark.parametrize("bad", [np.nan, np.inf, 2e6])
def test_sgd_update_refuses_a_loss_out_of_range_and_moves_nothing(bad):
    weights = np.ones((3, 5), np.float32)
    for update in (local_sgd.sgd_update, local_sgd.sgd_update_numpy):
        w, v = weights.copy(), np.zeros((3, 5), np.float32)
        loss = np.array([0.5, bad, 0.7], np.float32)
        assert not update(w, np.ones((3, 5), np.float32), v, np.full(3, 0.1, np.float32), np.float32(0.1),
                          np.float32(0.9), loss, 1e6)
        assert np.array_equal(w, weights) and not v.any()
