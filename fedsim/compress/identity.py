"""No compression: every entry as is (FedAvg's and GD's upload).

Wire format (``dense``, no segments): the N values, floats as every format writes them (big-endian).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedsim.compress import bits as analytic
from fedsim.compress.base import (Compressor, Message, MessageFormat, float_bits, frozen_array, register,
                                  register_message, scope_setting)
from fedsim.compress.theory import Theory
from fedsim.kernels import sparsify


@register_message
@dataclass(frozen=True, eq=False)
class DenseMessage(Message):
    """Every entry, as is."""

    kind: ClassVar[str] = "dense"
    values: np.ndarray   # (N,) float32/float64

    def __post_init__(self):
        self._set(values=frozen_array(self.values))

    @property
    def size(self) -> int:
        return self.values.size

    @property
    def format(self) -> MessageFormat:
        return MessageFormat(self.kind, (0, self.size), self.values.dtype.name)

    def to_dense(self) -> np.ndarray:
        return self.values.copy()

    def encoded_bits(self) -> int:
        return float_bits(self.values.dtype) * self.size

    def encode_with_bit_count(self):
        big_endian = self.values.astype(self.values.dtype.newbyteorder(">"))
        return np.frombuffer(big_endian.tobytes(), np.uint8).copy(), self.encoded_bits()

    def analytic_bits(self) -> float:
        return analytic.dense_analytic_bits(self.size)

    @classmethod
    def decode(cls, stream: np.ndarray, fmt: MessageFormat) -> "DenseMessage":
        dtype = np.dtype(fmt.dtype)
        size = fmt.segment_offsets[-1]
        data = np.asarray(stream, np.uint8)
        if data.size < size * dtype.itemsize:
            raise ValueError(f"dense stream has {data.size} bytes, needs {size * dtype.itemsize}")
        values = np.frombuffer(data[: size * dtype.itemsize].tobytes(), dtype.newbyteorder(">"))
        return cls(values.astype(dtype))


@register
@dataclass(frozen=True)
class Identity(Compressor):
    """No compression (module docstring). Message: :class:`DenseMessage`."""

    name: ClassVar[str] = "identity"
    directions: ClassVar[tuple[str, ...]] = ()   # used by the named methods none, fedavg and GD

    scope: str = scope_setting("irrelevant for a dense message; accepted for a uniform interface")

    def _compress_rows(self, rows, layout, rng):
        if not sparsify.all_finite(rows):
            raise ValueError(sparsify.NONFINITE_MESSAGE)
        n_rows, size = rows.shape
        encoded = np.full(n_rows, float_bits(rows.dtype) * size, np.int64)
        estimated = np.full(n_rows, analytic.dense_analytic_bits(size), np.float64)
        return rows.copy(), encoded, estimated, {}

    def theory(self, x, state):
        """Exact: C(x) = x, no bias and no error."""
        return Theory(True, 0.0, "=", "the identity: C(x) = x")

    def message(self, compressed, row):
        return DenseMessage(compressed.decoded[row])
