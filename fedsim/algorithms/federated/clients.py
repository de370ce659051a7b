"""What the clients of a federated run keep between rounds, and where a round's batches come from.

:class:`ClientStates` holds, per client, its place in its data (sample order, cursor, epoch), the last round it
synchronized, and its residual and momentum rows; what changes as clients take part is held only for the
clients that have (:class:`ClientRows`, for the rows and the last round; for the place in the data too when
the data is drawn on demand): a population of a million clients costs the state of its participants.
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
    """One row of ``width`` entries (one entry: ``width`` None) per client that has taken part, kept only for
    those clients (a client never written reads as zeros), read and written like a dense (n_clients, width)
    array indexed by an int array of distinct clients (``rows[clients]`` a copy). The rows live in one array
    that doubles when full. Clients map to their rows through two sorted pairs of arrays (16 bytes a client),
    a main map and the recent additions (cheap to insert into), merged once they exceed 256 + 1/16 of the main
    map: a call on K clients costs O(K log held), a new client O(log held) amortized (one sort of all the
    clients held every held/16 new ones), and no call scans the population."""

    def __init__(self, n_clients: int, width: int | None, dtype):
        self.n_clients, self.dtype = int(n_clients), np.dtype(dtype)
        self.shape = () if width is None else (int(width),)
        empty = np.zeros(0, np.int64)
        self.maps = [(empty, empty), (empty, empty)]     # (clients ascending, their rows): main, recent
        self.rows = np.zeros((0,) + self.shape, self.dtype)

    def __len__(self) -> int:
        return len(self.maps[0][0]) + len(self.maps[1][0])

    def _slots(self, clients, create: bool) -> np.ndarray:
        """Each client's row (-1 for a client without one, unless ``create``: then a new zero row)."""
        clients = np.asarray(clients, dtype=np.int64).reshape(-1)
        if len(clients) and (clients.min() < 0 or clients.max() >= self.n_clients):
            raise IndexError(f"clients must lie in [0, {self.n_clients - 1}]")
        slots = np.full(len(clients), -1, np.int64)
        for keys, rows in self.maps:
            at = np.searchsorted(keys, clients)
            found = at < len(keys)
            found[found] = keys[at[found]] == clients[found]
            slots[found] = rows[at[found]]
        new = slots < 0
        if create and new.any():
            first, count = len(self), int(new.sum())
            if first + count > len(self.rows):   # grow by doubling: amortized O(1) per new client
                grown = np.zeros((max(first + count, 2 * len(self.rows), 16),) + self.shape, self.dtype)
                grown[:first] = self.rows[:first]
                self.rows = grown
            slots[new] = np.arange(first, first + count)   # new rows in the order the clients come
            order = np.argsort(clients[new])
            keys, rows = self.maps[1]
            at = np.searchsorted(keys, clients[new][order])
            self.maps[1] = (np.insert(keys, at, clients[new][order]), np.insert(rows, at, slots[new][order]))
            if len(self.maps[1][0]) > 256 + len(self.maps[0][0]) // 16:
                self._merge()
        return slots

    def _merge(self) -> None:
        """The recent additions into the main map (a sort of all the clients held)."""
        if not len(self.maps[1][0]):
            return
        keys, rows = (np.concatenate(arrays) for arrays in zip(*self.maps))
        order = np.argsort(keys)
        self.maps = [(keys[order], rows[order]), (keys[:0], rows[:0])]

    def __getitem__(self, clients) -> np.ndarray:
        slots = self._slots(clients, create=False)
        out = np.zeros((len(slots),) + self.shape, self.dtype)
        held = slots >= 0
        out[held] = self.rows[slots[held]]
        return out

    def __setitem__(self, clients, values) -> None:
        slots = self._slots(clients, create=True)      # first: it may grow self.rows
        self.rows[slots] = values

    def held(self) -> tuple[np.ndarray, np.ndarray]:
        """The clients held (ascending) and their rows (a copy)."""
        self._merge()
        clients, slots = self.maps[0]
        return clients, self.rows[slots]

    def dense(self) -> np.ndarray:
        """Every client's row as one (n_clients, width) array (a copy; for small populations)."""
        clients, rows = self.held()
        out = np.zeros((self.n_clients,) + self.shape, self.dtype)
        out[clients] = rows
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the rows held (the clients that have taken part), not of a dense population array."""
        return len(self) * int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def allocated_bytes(self) -> int:
        """Bytes allocated: the rows (held and spare, up to twice those held) and the map of clients to rows."""
        return self.rows.nbytes + sum(array.nbytes for pair in self.maps for array in pair)


@dataclass
class ClientStates:
    """Everything each client keeps between rounds: a dense entry per client where the run holds its data
    whole (its sample order and place in it), else only for the clients that have taken part (ClientRows)."""

    samples: np.ndarray | None  # all clients' sample indices, client k's at samples[offsets[k]:offsets[k+1]]
    order: np.ndarray | None    # the same, each client's segment in its current epoch's shuffled order
    # (both None for a population drawn on demand: a round makes its participants' own, RoundData)
    offsets: np.ndarray        # (n_clients + 1,) segment boundaries of `order`
    cursor: np.ndarray | ClientRows        # (n_clients,) position in the current epoch's order
    epoch: np.ndarray | ClientRows         # (n_clients,) completed epochs
    order_epoch: np.ndarray | None         # (n_clients,) the epoch `order` is shuffled for; -1: not yet
    last_sync: ClientRows                  # (n_clients,) last round whose downstream message the client holds
    residual: ClientRows | None = None     # (n_clients, P) upstream error accumulation
    momentum: ClientRows | None = None     # (n_clients, P) SGD momentum buffers

    @classmethod
    def start(cls, sizes: np.ndarray, samples: np.ndarray | None, rows: dict) -> ClientStates:
        """Every client at its start: ``sizes`` (n_clients,) samples each; ``samples`` their indices, or None
        for a population drawn on demand (then the counters too are held only for the clients that take part);
        ``rows``: the (n_clients, P) stores (``residual``, ``momentum``)."""
        n = len(sizes)
        counters = (lambda: np.zeros(n, np.int64)) if samples is not None else lambda: ClientRows(n, None, np.int64)
        return cls(samples=samples, order=None if samples is None else samples.copy(),
                   offsets=np.concatenate(([0], np.cumsum(sizes))), cursor=counters(), epoch=counters(),
                   order_epoch=None if samples is None else np.full(n, -1, np.int64),
                   last_sync=ClientRows(n, None, np.int64), **rows)

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        """(n_clients,) samples of each client (computed once: the offsets never change)."""
        return np.diff(self.offsets)

    def oldest_sync(self) -> int:
        """The round of the oldest downstream message some client holds (0 while a client never synchronized)."""
        if len(self.last_sync) < self.last_sync.n_clients:
            return 0
        return int(self.last_sync.held()[1].min())

    def synchronized(self, clients: np.ndarray, t: int) -> None:
        """``clients`` now hold round ``t``'s downstream message."""
        self.last_sync[clients] = t
