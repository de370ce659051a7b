"""What the clients of a federated run keep between rounds, and where a round's batches come from.

:class:`ClientStates` holds, per client, its place in its data (sample order, cursor, epoch), the last round it
synchronized and, only for clients that have taken part, its residual and momentum rows (:class:`ClientRows`):
a population of a million clients costs a few counters each, and rows for its participants.
:class:`RoundData` is one round's view of the training data: the run's own arrays, or the participants' data
drawn on demand (``data.synthetic_on_demand``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class RoundData(NamedTuple):
    """Where a round's batches come from: the training rows, and each participant's sample order and place in
    it (``samples`` ... ``order_epoch``: as :class:`ClientStates`, one entry each). For data held whole these
    are the run's own arrays (``rows`` = ``clients`` = the participants); for a population drawn on demand,
    the round's participants only (``rows`` = 0 .. K-1)."""

    x: np.ndarray              # training features (floats, or 8-bit Codes)
    y: np.ndarray              # their labels
    samples: np.ndarray
    order: np.ndarray
    offsets: np.ndarray
    cursor: np.ndarray
    epoch: np.ndarray
    order_epoch: np.ndarray
    rows: np.ndarray           # (K,) the participants' entries
    clients: np.ndarray        # (K,) the participants (the keys of their batch streams)


class ClientRows:
    """One row of ``width`` entries per client that has taken part, kept only for those clients (a client never
    written reads as zeros), read and written like a dense (n_clients, width) array indexed by an int array of
    distinct clients (``rows[clients]`` a copy). The rows live in one array that doubles when full; ``slots``
    maps a client to its row."""

    def __init__(self, n_clients: int, width: int, dtype):
        self.n_clients, self.width, self.dtype = int(n_clients), int(width), np.dtype(dtype)
        self.slots: dict[int, int] = {}
        self.rows = np.zeros((0, self.width), self.dtype)

    def _slots(self, clients, create: bool) -> np.ndarray:
        """Each client's row (-1 for a client without one, unless ``create``: then a new zero row)."""
        clients = np.asarray(clients, dtype=np.int64).reshape(-1)
        if len(clients) and (clients.min() < 0 or clients.max() >= self.n_clients):
            raise IndexError(f"clients must lie in [0, {self.n_clients - 1}]")
        slots = np.array([self.slots.get(int(k), -1) for k in clients], dtype=np.int64)
        if create and np.any(slots < 0):
            new = np.flatnonzero(slots < 0)
            needed = len(self.slots) + len(new)
            if needed > len(self.rows):          # grow by doubling: amortized O(1) per new client
                grown = np.zeros((max(needed, 2 * len(self.rows), 16), self.width), self.dtype)
                grown[:len(self.rows)] = self.rows
                self.rows = grown
            for i in new:
                slots[i] = self.slots[int(clients[i])] = len(self.slots)
        return slots

    def __getitem__(self, clients) -> np.ndarray:
        slots = self._slots(clients, create=False)
        out = np.zeros((len(slots), self.width), self.dtype)
        held = slots >= 0
        out[held] = self.rows[slots[held]]
        return out

    def __setitem__(self, clients, values) -> None:
        slots = self._slots(clients, create=True)      # first: it may grow self.rows
        self.rows[slots] = values

    def dense(self) -> np.ndarray:
        """Every client's row as one (n_clients, width) array (a copy; for small populations)."""
        out = np.zeros((self.n_clients, self.width), self.dtype)
        clients = np.fromiter(self.slots.keys(), dtype=np.int64, count=len(self.slots))
        slots = np.fromiter(self.slots.values(), dtype=np.int64, count=len(self.slots))
        out[clients] = self.rows[slots]
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the rows held (the clients that have taken part), not of a dense population array."""
        return len(self.slots) * self.width * self.dtype.itemsize


@dataclass
class ClientStates:
    """Everything each client keeps between rounds, one row or entry per client."""

    samples: np.ndarray | None  # all clients' sample indices, client k's at samples[offsets[k]:offsets[k+1]]
    order: np.ndarray | None    # the same, each client's segment in its current epoch's shuffled order
    # (both None for a population drawn on demand: a round makes its participants' own, RoundData)
    offsets: np.ndarray        # (n_clients + 1,) segment boundaries of `order`
    cursor: np.ndarray         # (n_clients,) position in the current epoch's order
    epoch: np.ndarray          # (n_clients,) completed epochs
    order_epoch: np.ndarray    # (n_clients,) the epoch `order` is shuffled for; -1: not yet shuffled
    last_sync: np.ndarray      # (n_clients,) last round whose downstream message the client holds
    residual: ClientRows | None = None   # (n_clients, P) upstream error accumulation, held for participants
    momentum: ClientRows | None = None   # (n_clients, P) SGD momentum buffers, held for participants

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        """(n_clients,) samples of each client (computed once: the offsets never change)."""
        return np.diff(self.offsets)

    def __post_init__(self):
        # Clients that never synchronized (last_sync 0), kept as a count so that a round with a million
        # clients does not scan them all (FederatedRun._prune_cache).
        self.never_synced = int(np.count_nonzero(self.last_sync == 0))

    def synchronized(self, clients: np.ndarray, t: int) -> None:
        """``clients`` now hold round ``t``'s downstream message."""
        self.never_synced -= int(np.count_nonzero(self.last_sync[clients] == 0))
        self.last_sync[clients] = t
