"""fedsim_int8: a plugin adding an 8-bit uniform quantizer (methods ``int8_up``, ``int8_updown``) and a
round-robin partitioner (``data.partition = "round_robin"``) to fedsim.

Importing this package registers both. fedsim imports it when a config names it (``plugins =
["fedsim_int8"]``) or, once installed (``pip install examples/plugins``), through its entry point in the
group ``fedsim.plugins``. It follows ARCHITECTURE.md's compressor recipe: a frozen dataclass ``Compressor``
with its settings and ``_compress_rows``, and its wire message.

The quantizer, per segment j (a parameter tensor, or the whole vector with ``scope = "global"``)::

    s_j = max_i |x_i|                        the segment's scale
    q_i = round(127 x_i / s_j)               an integer in [-127, 127]; with ``[int8] rounding =
                                             "stochastic"``: floor(127 x_i / s_j + u_i), u_i ~ U[0, 1),
                                             so that E[q_i] = 127 x_i / s_j (unbiased)
    x_hat_i = q_i (s_j / 127)                what the receiver reconstructs (0 where s_j = 0)

Wire format (``int8``), per segment: s_j as a float of the message dtype (32 bits, 64 in float64), then
the segment's codes q_i, 8 bits each (two's complement), in order. Bits: 8 N + 32 per segment (float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedsim.compress.base import (Compressor, Layout, MessageFormat, SegmentedMessage, float_bits, float_dtype,
                                  frozen_array, new_stream, read_floats, register, register_message,
                                  require_generator, scope_setting, write_floats)
from fedsim.compress.bits import FLOAT_BITS
from fedsim.constraints import OneOf, setting
from fedsim.data.partition import register_partitioner
from fedsim.kernels.selection import NONFINITE_MESSAGE

LEVELS = 127       # codes in [-127, 127]: symmetric, so -s_j and +s_j are both exact
CODE_BITS = 8


def dequantize(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """x_hat = q (s / 127), in the scales' dtype (the one expression both the compressor and the message use)."""
    return codes.astype(scales.dtype) * (scales / scales.dtype.type(LEVELS))


@register_message
@dataclass(frozen=True, eq=False)
class Int8Message(SegmentedMessage):
    """One scale per segment and an 8-bit code per entry."""

    kind: ClassVar[str] = "int8"
    codes: np.ndarray                  # (N,) int8 in [-127, 127]
    scales: np.ndarray                 # (segments,) float32/float64, s_j >= 0

    def __post_init__(self):
        object.__setattr__(self, "segment_offsets", Layout(self.segment_offsets).segment_offsets)
        object.__setattr__(self, "codes", frozen_array(self.codes, np.int8))
        object.__setattr__(self, "scales", frozen_array(self.scales, float_dtype(np.asarray(self.scales).dtype)))
        if self.codes.size != self.size or self.scales.size != self.layout.n_segments:
            raise ValueError(f"an int8 message of {self.size} entries in {self.layout.n_segments} segments needs "
                             f"as many codes and scales, got {self.codes.size} and {self.scales.size}")
        if np.any(self.codes == -128):
            raise ValueError(f"codes must lie in [-{LEVELS}, {LEVELS}]")

    @property
    def format(self) -> MessageFormat:
        return MessageFormat(self.kind, self.segment_offsets, self.scales.dtype.name)

    def to_dense(self) -> np.ndarray:
        return dequantize(self.codes, np.repeat(self.scales, self.layout.sizes))

    def encoded_bits(self) -> int:
        return float_bits(self.scales.dtype) * self.layout.n_segments + CODE_BITS * self.size

    def analytic_bits(self) -> float:
        return float(FLOAT_BITS * self.layout.n_segments + CODE_BITS * self.size)

    def encode_with_bit_count(self):
        n_bits = self.encoded_bits()
        stream, offset = new_stream(n_bits), 0
        for j, (start, stop) in enumerate(self.layout.segments()):
            offset = write_floats(stream, offset, self.scales[j:j + 1])
            stream[offset // 8:offset // 8 + stop - start] = self.codes[start:stop].view(np.uint8)
            offset += CODE_BITS * (stop - start)      # every field is whole bytes: offset stays a multiple of 8
        return stream, n_bits

    @classmethod
    def decode(cls, stream: np.ndarray, fmt: MessageFormat) -> "Int8Message":
        layout, dtype = Layout(fmt.segment_offsets), np.dtype(fmt.dtype)
        needed = (float_bits(dtype) * layout.n_segments + CODE_BITS * layout.size + 7) // 8
        if stream.size < needed:
            raise ValueError(f"int8 stream has {stream.size} bytes, needs {needed}")
        codes, scales, offset = np.empty(layout.size, np.int8), np.empty(layout.n_segments, dtype), 0
        for j, (start, stop) in enumerate(layout.segments()):
            value, offset = read_floats(stream, offset, 1, dtype)
            scales[j] = value[0]
            codes[start:stop] = stream[offset // 8:offset // 8 + stop - start].view(np.int8)
            offset += CODE_BITS * (stop - start)
        return cls(fmt.segment_offsets, codes, scales)


@register
@dataclass(frozen=True)
class Int8(Compressor):
    """8-bit uniform quantizer: each entry as round(127 x / max |x|) of its segment. Message:
    :class:`Int8Message`."""

    name: ClassVar[str] = "int8"

    scope: str = scope_setting("the segments that share one scale")
    rounding: str = setting("nearest", "nearest | stochastic (up with probability the fraction: unbiased)",
                            OneOf("nearest", "stochastic"))

    def _compress_rows(self, rows, layout, rng):
        if not np.all(np.isfinite(rows)):
            raise ValueError(NONFINITE_MESSAGE)
        if self.rounding == "stochastic":
            require_generator(rng, "int8's stochastic rounding")
        codes = np.empty(rows.shape, np.int8)
        scales = np.empty((rows.shape[0], layout.n_segments), rows.dtype)
        for j, (start, stop) in enumerate(layout.segments()):
            block = rows[:, start:stop]
            scales[:, j] = np.abs(block).max(axis=1, initial=0)
            step = scales[:, j:j + 1] / rows.dtype.type(LEVELS)
            divisor = np.where(step > 0, step, 1)          # an all-zero segment: codes 0
            scaled = block / divisor
            rounded = (np.rint(scaled) if self.rounding == "nearest" else
                       np.floor(scaled + rng.random(scaled.shape).astype(rows.dtype)))
            codes[:, start:stop] = np.clip(rounded, -LEVELS, LEVELS)
        decoded = dequantize(codes, np.repeat(scales, layout.sizes, axis=1))
        encoded = np.full(rows.shape[0], float_bits(rows.dtype) * layout.n_segments + CODE_BITS * layout.size,
                          np.int64)
        estimated = np.full(rows.shape[0], FLOAT_BITS * layout.n_segments + CODE_BITS * layout.size, np.float64)
        return decoded, encoded, estimated, {"codes": codes, "scales": scales}

    def message(self, compressed, row):
        return Int8Message(compressed.layout.segment_offsets, compressed.fields["codes"][row],
                           compressed.fields["scales"][row])


@register_partitioner("round_robin")
def round_robin(labels: np.ndarray, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Client m gets the samples m, m + M, m + 2M, ... of a random permutation (M = n_clients)."""
    order = rng.permutation(len(labels))
    return [np.sort(order[m::n_clients]) for m in range(n_clients)]
