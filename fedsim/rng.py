"""Seeding: one :class:`numpy.random.SeedSequence` per run, spawned into independent named streams.

fedsim never touches global random state. A run derives every stream it needs from its seed and a
purpose name, so adding a new consumer of randomness does not shift the numbers any other part sees::

    streams = RunStreams(seed=0)
    partition_rng = streams.generator("partition")
    batch_rng = streams.generator("batches", client, epoch)    # one independent stream per key
"""

from __future__ import annotations

import zlib

import numpy as np


class RunStreams:
    """Independent, reproducible random streams of one run, addressed by purpose."""

    def __init__(self, seed: int):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)

    def generator(self, purpose: str, *keys: int) -> np.random.Generator:
        """A fresh Generator for ``purpose`` and optional integer keys (client, epoch): the same purpose and
        keys always give the same stream."""
        # crc32: an integer for the purpose name that is stable across processes and Python versions
        sequence = np.random.SeedSequence([self.seed, zlib.crc32(purpose.encode("utf-8")), *map(int, keys)])
        return np.random.Generator(np.random.PCG64(sequence))
