"""The client state store (ClientRows): rows only for clients that have taken part, read as a dense array."""

import numpy as np
import pytest

from fedsim.algorithms.federated.clients import ClientRows


def test_rows_read_as_a_dense_array_and_hold_only_written_clients():
    rows = ClientRows(1_000_000, 4, np.float32)
    dense = {}
    rng = np.random.default_rng(0)
    for _ in range(400):          # 2,800 writes: the recent additions are merged into the main map several times
        clients = rng.choice(5_000, 7, replace=False)          # of 1e6: many clients come back
        values = rng.standard_normal((7, 4)).astype(np.float32)
        expected = np.array([dense.get(int(k), np.zeros(4, np.float32)) for k in clients])
        np.testing.assert_array_equal(rows[clients], expected)        # unseen clients read as zeros
        rows[clients] = values
        dense.update({int(k): v for k, v in zip(clients, values)})
    assert len(rows) == len(dense) and rows.nbytes == len(dense) * 4 * 4 and len(rows.maps[0][0]) > 256
    assert rows.held()[0].tolist() == sorted(dense)
    assert rows.rows.nbytes <= 2 * rows.nbytes + 16 * 4 * 4                  # memory follows the participants
    clients = np.array(sorted(dense))
    np.testing.assert_array_equal(rows.dense()[clients], np.array([dense[int(k)] for k in clients]))


def test_counters_are_rows_of_one_entry():
    """One entry a client (width None): the last round each client synchronized, read back as a dense array."""
    last_sync = ClientRows(100, None, np.int64)
    last_sync[np.array([7, 3])] = 1
    last_sync[np.array([3, 50])] = 2
    np.testing.assert_array_equal(last_sync[np.array([50, 3, 7, 8])], [2, 2, 1, 0])
    clients, rounds = last_sync.held()
    assert clients.tolist() == [3, 7, 50] and rounds.tolist() == [2, 1, 2] and last_sync.nbytes == 3 * 8
    expected = np.zeros(100, np.int64)
    expected[[3, 7, 50]] = [2, 1, 2]
    np.testing.assert_array_equal(last_sync.dense(), expected)


def test_a_client_outside_the_population_is_refused():
    with pytest.raises(IndexError, match=r"clients must lie in \[0, 9\]"):
        ClientRows(10, 3, np.float64)[np.array([10])]
