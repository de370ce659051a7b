"""TernGrad: ternary gradients (Wen, Xu, Yan, Wu, Wang, Chen, Li, NeurIPS 2017, arXiv 1705.07878).

Per segment (one parameter tensor with ``scope="tensor"``: the paper's layer-wise ternarizing; the whole
vector with ``scope="global"``) of N entries g_i, entry i is clipped to h_i in [-c sigma, c sigma] (sigma
the segment's standard deviation; the paper's optional clipping at ``clip = c``, 0: off, the paper uses
c = 2.5) and sent as ``m_i = s sign(g_i) b_i`` (+-s or 0): the scale s = max_i |h_i| is sent as one float,
and b_i ~ Bernoulli(|h_i| / s) takes one uniform u_i in [0, 1) from the Generator. The equations bit for bit
(sums, roundings, the constant-segment rule) are those of :mod:`fedsim.kernels.terngrad`.

TernGrad is unbiased: E[m_i] = h_i (= g_i without clipping), so it needs no error feedback. Clipping
trades a small bias for a smaller scale s (the paper's bound on the variance s |h_i| - h_i^2).

Randomness: P uniforms per row (``rng.random``, float64), :func:`fedsim.compress.base.uniform_chunks`.

Wire format (``terngrad``), per segment in order: the scale s (a float; a segment with s = 0, all zero or
empty, sends it alone); then, only if s != 0, the N ternary digits (0 for 0, 1 for +s, 2 for -s) in the
base-3 code of :mod:`fedsim.kernels.terngrad` (five digits per 8-bit field; its length there).

Analytic bits: ``log2(3) N + 32`` per segment, the information content of N ternary digits plus the
32-bit scale (what an ideal entropy-free ternary code needs; the code above is within 0.015 bits per
entry of it). The paper itself counts 2 bits per entry (2 N + 32 per layer, a 16x reduction from 32-bit
floats); fedsim reports the tighter log2(3) figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedsim.compress import bits as analytic
from fedsim.compress.base import (layout_of, Compressor, float_bits, frozen_array, Layout, MessageFormat, read_floats,
                                  register, register_message, require_generator, scope_setting, SegmentedMessage,
                                  uniform_chunks, write_floats)
from fedsim.compress.theory import Theory, relative_to, segment_squares
from fedsim.constraints import Real, setting
from fedsim.kernels import terngrad as kernels


def terngrad_analytic_bits(sizes) -> float:
    """Sum over segments, in order, of log2(3) N + 32 (module docstring)."""
    total = 0.0
    for size in sizes:
        total += math.log2(3.0) * int(size) + analytic.FLOAT_BITS
    return total


@register_message
@dataclass(frozen=True, eq=False)
class TernGradMessage(SegmentedMessage):
    """One scale per segment and a ternary code (-1, 0, +1) per entry."""

    kind: ClassVar[str] = "terngrad"
    codes: np.ndarray                  # (N,) int8 in {-1, 0, +1}; all 0 in a segment whose scale is 0
    scales: np.ndarray                 # (segments,) float32/float64, >= 0

    def __post_init__(self):
        self._set(segment_offsets=Layout(self.segment_offsets).segment_offsets,
                  codes=frozen_array(self.codes, np.int8), scales=frozen_array(self.scales))
        if self.codes.size != self.segment_offsets[-1]:
            raise ValueError(f"{self.codes.size} codes for a vector of {self.segment_offsets[-1]}")
        if np.any(np.abs(self.codes) > 1):
            raise ValueError("ternary codes must be -1, 0 or +1")
        if self.scales.size != len(self.segment_offsets) - 1:
            raise ValueError(f"one scale per segment: {len(self.segment_offsets) - 1} segments, "
                             f"{self.scales.size} scales")
        if not np.all(np.isfinite(self.scales) & (self.scales >= 0)):
            raise ValueError(f"scales must be finite and >= 0, got {self.scales}")
        for j, (start, stop) in enumerate(self.layout.segments()):
            if self.scales[j] == 0 and np.any(self.codes[start:stop]):
                raise ValueError(f"segment {j} has scale 0 but nonzero codes")

    @property
    def format(self) -> MessageFormat:
        return MessageFormat(self.kind, self.segment_offsets, self.scales.dtype.name)

    def to_dense(self) -> np.ndarray:
        return self.codes.astype(self.scales.dtype) * np.repeat(self.scales, self.layout.sizes)

    def symbols(self) -> np.ndarray:
        """The ternary codes (the scales aside)."""
        return self.codes

    def encoded_bits(self) -> int:
        scale_bits = float_bits(self.scales.dtype)
        return int(sum(kernels.segment_bits(size, scale_nonzero=scale != 0, float_bits=scale_bits)
                       for size, scale in zip(self.layout.sizes, self.scales)))

    def _write(self, stream):
        offset = 0
        for j, (start, stop) in enumerate(self.layout.segments()):
            offset = write_floats(stream, offset, self.scales[j:j + 1])
            if self.scales[j] != 0:
                offset = kernels.pack_ternary_into(self.codes[start:stop], stream, offset)
        return offset

    def analytic_bits(self) -> float:
        return terngrad_analytic_bits(self.layout.sizes)

    @classmethod
    def decode(cls, stream: np.ndarray, fmt: MessageFormat) -> "TernGradMessage":
        layout = Layout(fmt.segment_offsets)
        stream = np.asarray(stream, np.uint8)
        codes = np.zeros(layout.size, np.int8)
        scales = np.zeros(layout.n_segments, fmt.dtype)
        offset = 0
        for j, (start, stop) in enumerate(layout.segments()):
            value, offset = read_floats(stream, offset, 1, fmt.dtype)
            scales[j] = value[0]
            if scales[j] != 0:
                offset = kernels.unpack_ternary_from(stream, offset, stop - start, codes[start:stop])
        return cls(fmt.segment_offsets, codes, scales)


@register
@dataclass(frozen=True)
class TernGrad(Compressor):
    """Stochastic ternarization, one scale per segment (module docstring). Message: :class:`TernGradMessage`."""

    name: ClassVar[str] = "terngrad"     # unbiased: no residuals by default (Compressor.error_feedback)

    clip: float = setting(0.0, "c: clip entries to [-c sigma, c sigma] (segment std); 0 = off, paper 2.5",
                          Real(low=0))
    scope: str = scope_setting('"tensor": one scale per parameter tensor (the paper\'s layer-wise); "global": one')

    def _compress_rows(self, rows, layout, rng):
        require_generator(rng, "TernGrad, for its Bernoulli draws,")
        n_rows, size = rows.shape
        decoded = np.empty_like(rows)
        scales = np.empty((n_rows, layout.n_segments), rows.dtype)
        encoded = np.zeros(n_rows, np.int64)
        offsets = layout.offsets_array
        for first, last, uniforms in uniform_chunks(n_rows, size, rng):
            kernels.terngrad_batch(rows[first:last], offsets, uniforms, self.clip, float_bits(rows.dtype),
                                   decoded[first:last], scales[first:last], encoded[first:last])
        estimated = np.full(n_rows, terngrad_analytic_bits(layout.sizes), np.float64)
        return decoded, encoded, estimated, {"scales": scales}

    def theory(self, x, state):
        """Exact, per segment with h the clipped entries (module docstring: E[m] = h, Var m_i = s |h_i| - h_i^2)::

            E||m - x_j||^2 = s ||h||_1 - ||h||^2 + ||h - x_j||^2

        summed over the segments, over ||x||^2; unbiased when nothing is clipped (``clip = 0``)."""
        x = np.asarray(x)
        total, clipped = 0.0, False
        for start, stop in layout_of(state).segments():
            segment = x[start:stop].astype(np.float64)
            if segment.size == 0:
                continue
            limit = float(x.dtype.type(self.clip * segment.std())) if self.clip else 0.0
            held = np.clip(segment, -limit, limit) if limit > 0 else segment
            clipped = clipped or bool(np.any(held != segment))
            scale = float(np.abs(held).max())
            total += scale * float(np.abs(held).sum()) - float(held @ held) + float(np.square(held - segment).sum())
        return Theory(not clipped, relative_to(total, float(segment_squares(x, state).sum())), "=",
                      "Wen et al. 2017 (1705.07878): variance max|x| ||x||_1 - ||x||^2")

    def message(self, compressed, row):
        codes = np.sign(compressed.decoded[row]).astype(np.int8)
        return TernGradMessage(compressed.layout.segment_offsets, codes, compressed.fields["scales"][row])
