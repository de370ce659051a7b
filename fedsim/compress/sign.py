"""signSGD's compressor (Bernstein et al., arXiv 1802.04434): sign(x_i) in {-1, 0, +1}.

``scale="none"``: the message is the signs alone (the signSGD method scales by the server's learning rate,
majority vote: :mod:`fedsim.compress.aggregation`). ``scale="mean"``: each segment's signs are multiplied
by its mean magnitude, which is sent too. Zero entries are sent exactly.

Wire format (``sign``), per segment: zero count z (32 bits); Golomb-Rice code of the z positions of zero
entries with b* = rice_parameter(z, N); N - z sign bits of the nonzero entries in order (1 = negative);
the scale (only if scaled). sign(0) = 0 therefore costs almost nothing when zeros are rare (z = 0 costs
the 32-bit count only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedsim.compress import bits as analytic
from fedsim.compress.base import (layout_of, SegmentedMessage, Compressor, Layout, MessageFormat, scope_setting,
                                  decode_positions, encode_positions, float_bits, frozen_array, read_floats, register,
                                  register_message, write_floats)
from fedsim.compress.theory import Theory, relative_to, segment_squares
from fedsim.constraints import OneOf, setting
from fedsim.kernels import bitstream, golomb, sparsify


@register_message
@dataclass(frozen=True, eq=False)
class SignMessage(SegmentedMessage):
    """The sign of every entry (-1, 0, +1), optionally times one scale per segment."""

    kind: ClassVar[str] = "sign"
    signs: np.ndarray                  # (N,) int8 in {-1, 0, +1}
    scales: np.ndarray                 # (segments,) float32/float64; all 1 and not sent when unscaled
    scaled: bool = False               # whether the scales are part of the message

    def __post_init__(self):
        self._set(segment_offsets=Layout(self.segment_offsets).segment_offsets, scaled=bool(self.scaled),
                  signs=frozen_array(self.signs, np.int8), scales=frozen_array(self.scales))
        if self.signs.size != self.segment_offsets[-1]:
            raise ValueError(f"{self.signs.size} signs for a vector of {self.segment_offsets[-1]}")
        if np.any(np.abs(self.signs) > 1):
            raise ValueError("signs must be -1, 0 or +1")
        if self.scales.size != len(self.segment_offsets) - 1:
            raise ValueError("one scale per segment")
        if not self.scaled and np.any(self.scales != 1):
            raise ValueError("an unscaled sign message has scales 1")

    @property
    def format(self) -> MessageFormat:
        return MessageFormat(self.kind, self.segment_offsets, self.scales.dtype.name, self.scaled)

    def to_dense(self) -> np.ndarray:
        return self.signs.astype(self.scales.dtype) * np.repeat(self.scales, self.layout.sizes)

    def symbols(self) -> np.ndarray:
        """The signs (-1, 0, +1; the scales aside)."""
        return self.signs

    def encoded_bits(self) -> int:
        scale_bits = float_bits(self.scales.dtype) if self.scaled else 0
        total = 0
        for start, stop in self.layout.segments():
            zeros = np.flatnonzero(self.signs[start:stop] == 0)
            total += golomb.COUNT_BITS + golomb.golomb_rice_bits(zeros, golomb.rice_parameter(zeros.size,
                                                                                              stop - start))
            total += (stop - start - zeros.size) + scale_bits
        return int(total)

    def _write(self, stream):
        offset = 0
        for j, (start, stop) in enumerate(self.layout.segments()):
            segment = self.signs[start:stop]
            offset = encode_positions(stream, offset, np.flatnonzero(segment == 0), stop - start)
            offset = bitstream.pack_signs_into(segment[segment != 0], stream, offset)
            if self.scaled:
                offset = write_floats(stream, offset, self.scales[j:j + 1])
        return offset

    def analytic_bits(self) -> float:
        return analytic.sign_analytic_bits(self.size, len(self.segment_offsets) - 1 if self.scaled else 0)

    @classmethod
    def decode(cls, stream: np.ndarray, fmt: MessageFormat) -> "SignMessage":
        layout = Layout(fmt.segment_offsets)
        signs = np.zeros(layout.size, np.int8)
        scales = np.ones(layout.n_segments, fmt.dtype)
        offset = 0
        for j, (start, stop) in enumerate(layout.segments()):
            n_zeros, offset, zeros = decode_positions(stream, offset, stop - start)
            nonzero_signs = np.empty(stop - start - n_zeros, np.int8)
            offset = bitstream.unpack_signs_from(np.asarray(stream, np.uint8), offset, nonzero_signs.size,
                                              nonzero_signs)
            is_nonzero = np.ones(stop - start, bool)
            is_nonzero[zeros] = False
            signs[start:stop][is_nonzero] = nonzero_signs
            if fmt.scaled:
                value, offset = read_floats(stream, offset, 1, fmt.dtype)
                scales[j] = value[0]
        return cls(fmt.segment_offsets, signs, scales, fmt.scaled)


@register
@dataclass(frozen=True)
class Sign(Compressor):
    """sign(x_i), times the segment's mean magnitude if ``scale="mean"``. Message: :class:`SignMessage`."""

    name: ClassVar[str] = "sign"
    aggregations: ClassVar[tuple[str, ...]] = ("majority", "mean", "weighted")
    directions: ClassVar[tuple[str, ...]] = ()   # used by the named method signsgd

    scale: str = setting("none", "none | mean (mean |x_i| per segment, sent as one float)",
                         OneOf("none", "mean"))
    scope: str = scope_setting("the segments the scales (and the zero codes) refer to")

    def _compress_rows(self, rows, layout, rng):
        n_rows = rows.shape[0]
        decoded = np.empty_like(rows)
        scales = np.empty((n_rows, layout.n_segments), rows.dtype)
        encoded = np.zeros(n_rows, np.int64)
        scaled = self.scale == "mean"
        sparsify.sign_compress_batch(rows, layout.offsets_array, scaled=scaled, float_bits=float_bits(rows.dtype),
                                     sent_out=decoded, scales_out=scales, encoded_bits_out=encoded)
        estimated = np.full(n_rows, analytic.sign_analytic_bits(layout.size, layout.n_segments if scaled else 0))
        return decoded, encoded, estimated, {"scales": scales}

    def theory(self, x, state):
        """``scale="mean"``: the scaled sign of Karimireddy, Rebjock, Stich, Jaggi (arXiv 1901.09847, its
        scaled sign compressor), per segment with a = ||x_j||_1 / N_j and z_j zero entries::

            ||C(x_j) - x_j||^2 = ||x_j||^2 - 2 a ||x_j||_1 + a^2 (N_j - z_j)
                               = (1 - ||x_j||_1^2 / (N_j ||x_j||^2)) ||x_j||^2   when no entry is zero

        exact (deterministic), summed over the segments and divided by ||x||^2. ``scale="none"``: the
        signs alone, not meant to approximate x (Bernstein et al., arXiv 1802.04434): measured only."""
        if self.scale != "mean":
            return Theory(False, None, "=", "Bernstein et al. 2018 (1802.04434): signs only, measured only")
        x = np.asarray(x)
        total = 0.0
        for start, stop in layout_of(state).segments():
            segment = x[start:stop].astype(np.float64)
            if segment.size == 0:
                continue
            l1 = float(np.abs(segment).sum())
            scale = float(x.dtype.type(l1 / segment.size))        # the mean magnitude, in the data's dtype
            total += float(segment @ segment) - 2.0 * scale * l1 + scale ** 2 * np.count_nonzero(segment)
        return Theory(False, relative_to(total, float(segment_squares(x, state).sum())), "=",
                      "Karimireddy et al. 2019 (1901.09847): scaled sign, exact")

    def message(self, compressed, row):
        scales = compressed.fields["scales"][row]
        return SignMessage(compressed.layout.segment_offsets, np.sign(compressed.decoded[row]).astype(np.int8),
                           scales, self.scale == "mean")
