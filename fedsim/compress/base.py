"""The compressor interface, messages and their bit-exact wire formats.

Interface (optax-like: pure functions of explicit state)::

    state = compressor.init(spec_or_size)              # the segment layout (plus a residual, for EF)
    message, state = compressor.compress(x, state, rng)
    dense = compressor.decompress(message)
    compressor.bits(message)            # length of the real encoded bit stream (headers included)
    compressor.analytic_bits(message)   # the paper's estimate (fedsim.compress.bits)
    result = compressor.compress_batch(updates, state, rng, residuals)   # K rows in one jitted call

Segments: a compressor works per parameter tensor (``scope="tensor"``, the STC reference: each tensor of a
:class:`~fedsim.params.ParamSpec` gets its own k, mu and position code) or over the whole flat vector
(``scope="global"``). A :class:`Layout` holds the segment boundaries; a message carries them.

Wire formats
------------
Bit order and the Golomb-Rice code are those of :mod:`fedsim.kernels.golomb`. Floats are written as their
IEEE bit patterns in the message dtype (32 bits for float32, 64 for float64). The receiver knows the
:class:`MessageFormat` (kind, segment boundaries, dtype, whether scales are sent): it follows from the
configuration, so it is not transmitted. Per segment of ``N`` entries, in segment order:

* ``dense`` (no segments): the N values.
* ``sparse`` (top-k): count c (32 bits); Golomb-Rice code of the c positions within the segment with
  b* = rice_parameter(c, N); the c values.
* ``ternary`` (STC): count c (32 bits); positions as above; c sign bits (1 = negative); mu (only if c > 0).
* ``sign``: zero count z (32 bits); Golomb-Rice code of the z positions of zero entries with
  b* = rice_parameter(z, N); N - z sign bits of the nonzero entries in order (1 = negative); the scale
  (only if the format has scales). sign(0) = 0 is therefore sent exactly, at almost no cost when zeros
  are rare (z = 0 costs the 32-bit count only).

The stream is padded with zero bits to a whole byte; ``encoded_bits`` is the length before padding.
``decode(message.encode(), message.format) == message`` holds bitwise for every message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedsim.compress import bits as analytic
from fedsim.kernels import golomb
from fedsim.params import ParamSpec

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Integer views of the float dtypes' bit patterns for the bit writer/reader.
_BIT_PATTERN = {np.dtype(np.float32): np.dtype(np.uint32), np.dtype(np.float64): np.dtype(np.int64)}

SCOPES = ("tensor", "global")


def _float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _frozen_array(values, dtype) -> np.ndarray:
    array = np.ascontiguousarray(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"message arrays must be 1-D, got shape {array.shape}")
    array.setflags(write=False)
    return array


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (so -0.0 != 0.0 and a NaN equals the same NaN)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def ceil_product(fraction: float, count: int) -> int:
    """ceil(fraction * count), forgiving the float product's rounding error in its last bits.

    Example: 0.07 * 100 evaluates to 7.000000000000001, whose ceiling 8 nobody means; this returns 7.
    The product is shrunk by 2^-50 (relative) before the ceiling, far below any intended fraction.
    """
    return int(math.ceil(fraction * count * (1.0 - 2.0 ** -50)))


# ----------------------------------------------------------------------------------------------------
# Layout (the state of a stateless compressor)
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Segment boundaries of the flat vector: segment j is ``x[offsets[j]:offsets[j + 1]]``."""

    segment_offsets: tuple[int, ...]   # starts at 0, non-decreasing, ends at the vector length

    def __post_init__(self):
        offsets = tuple(int(o) for o in self.segment_offsets)
        if len(offsets) < 2 or offsets[0] != 0 or any(b < a for a, b in zip(offsets, offsets[1:])):
            raise ValueError("segment_offsets must start at 0, be non-decreasing and name at least one "
                             f"segment, got {self.segment_offsets}")
        object.__setattr__(self, "segment_offsets", offsets)

    @property
    def size(self) -> int:
        return self.segment_offsets[-1]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.segment_offsets, self.segment_offsets[1:]))

    @property
    def n_segments(self) -> int:
        return len(self.segment_offsets) - 1

    def segments(self):
        """``(start, stop)`` of each segment."""
        return list(zip(self.segment_offsets, self.segment_offsets[1:]))


def make_layout(spec_or_size, scope: str) -> Layout:
    """Segments for a :class:`ParamSpec` (one per tensor, or one over all for ``scope="global"``), an int
    size (one segment), or a :class:`Layout` (kept as is for "tensor", merged for "global")."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if isinstance(spec_or_size, Layout):
        layout = spec_or_size
    elif isinstance(spec_or_size, ParamSpec):
        layout = Layout(tuple(int(o) for o in spec_or_size.offsets))
    elif isinstance(spec_or_size, (int, np.integer)) and not isinstance(spec_or_size, bool):
        if spec_or_size < 0:
            raise ValueError(f"size must be >= 0, got {spec_or_size}")
        layout = Layout((0, int(spec_or_size)))
    else:
        raise ValueError("init needs a ParamSpec, a Layout or an int size, got "
                         f"{type(spec_or_size).__name__}")
    return layout if scope == "tensor" else Layout((0, layout.size))


# ----------------------------------------------------------------------------------------------------
# Messages
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MessageFormat:
    """What a receiver knows in advance about a message (from the configuration)."""

    kind: str                          # "dense", "sparse", "ternary" or "sign"
    segment_offsets: tuple[int, ...]   # segment boundaries (dense: (0, N))
    dtype: str                         # "float32" or "float64"
    scaled: bool = False               # sign only: one scale per segment is sent


def _segment_counts(positions: np.ndarray, offsets: tuple[int, ...]) -> np.ndarray:
    """Kept entries per segment, from sorted global positions."""
    return np.diff(np.searchsorted(positions, np.asarray(offsets, np.int64)))


def _check_positions(positions: np.ndarray, size: int) -> None:
    if positions.size and (positions[0] < 0 or positions[-1] >= size or np.any(np.diff(positions) <= 0)):
        raise ValueError(f"positions must be strictly increasing and within [0, {size})")


def _new_stream(n_bits: int) -> np.ndarray:
    return np.zeros((n_bits + 7) // 8, np.uint8)


class Message:
    """Common behaviour of messages: exact equality, bits, encoding."""

    kind: ClassVar[str]

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        for name in self.__dataclass_fields__:
            a, b = getattr(self, name), getattr(other, name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and _same_array(a, b)):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None

    def encode(self) -> np.ndarray:
        """The message as a byte-padded bit stream (uint8); see the module docstring for the format."""
        return self.encode_with_bit_count()[0]

    def encode_with_bit_count(self) -> tuple[np.ndarray, int]:
        """(stream, number of meaningful bits); the count equals :meth:`encoded_bits`."""
        raise NotImplementedError

    def encoded_bits(self) -> int:
        raise NotImplementedError

    def analytic_bits(self) -> float:
        raise NotImplementedError

    def to_dense(self) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class DenseMessage(Message):
    """Every entry, as is (no compression)."""

    kind: ClassVar[str] = "dense"
    values: np.ndarray   # (N,) float32/float64

    def __post_init__(self):
        dtype = _float_dtype(np.asarray(self.values).dtype)
        object.__setattr__(self, "values", _frozen_array(self.values, dtype))

    @property
    def size(self) -> int:
        return self.values.size

    @property
    def format(self) -> MessageFormat:
        return MessageFormat(self.kind, (0, self.size), self.values.dtype.name)

    def to_dense(self) -> np.ndarray:
        return self.values.copy()

    def encoded_bits(self) -> int:
        return 8 * self.values.itemsize * self.size

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


@dataclass(frozen=True, eq=False)
class _SparseBase(Message):
    segment_offsets: tuple[int, ...]   # segment boundaries; the last is the vector length
    positions: np.ndarray              # (c,) int64, global, strictly increasing

    @property
    def size(self) -> int:
        return self.segment_offsets[-1]

    @property
    def layout(self) -> Layout:
        return Layout(self.segment_offsets)

    @property
    def counts(self) -> np.ndarray:
        """Kept entries per segment."""
        return _segment_counts(self.positions, self.segment_offsets)

    def _local_positions(self):
        """Positions within each segment, one array per segment."""
        bounds = np.searchsorted(self.positions, np.asarray(self.segment_offsets, np.int64))
        return [self.positions[bounds[j]:bounds[j + 1]] - start
                for j, start in enumerate(self.segment_offsets[:-1])]

    def _check_common(self):
        object.__setattr__(self, "segment_offsets", Layout(self.segment_offsets).segment_offsets)
        object.__setattr__(self, "positions", _frozen_array(self.positions, np.int64))
        _check_positions(self.positions, self.size)


@dataclass(frozen=True, eq=False)
class SparseMessage(_SparseBase):
    """Top-k: kept positions and their exact values."""

    kind: ClassVar[str] = "sparse"
    values: np.ndarray   # (c,) float32/float64, x at the positions

    def __post_init__(self):
        self._check_common()
        dtype = _float_dtype(np.asarray(self.values).dtype)
        object.__setattr__(self, "values", _frozen_array(self.values, dtype))
        if self.values.size != self.positions.size:
            raise ValueError(f"{self.positions.size} positions but {self.values.size} values")

    @classmethod
    def from_dense(cls, dense: np.ndarray, segment_offsets=None) -> "SparseMessage":
        """The nonzero entries of ``dense`` as a sparse message (e.g. the sum of a client's missed STC
        messages under caching: positions + values, no longer ternary). One segment unless given."""
        dense = np.asarray(dense)
        offsets = (0, dense.size) if segment_offsets is None else tuple(segment_offsets)
        positions = np.flatnonzero(dense)
        return cls(offsets, positions, dense[positions])

    @property
    def format(self) -> MessageFormat:
        return MessageFormat(self.kind, self.segment_offsets, self.values.dtype.name)

    def to_dense(self) -> np.ndarray:
        dense = np.zeros(self.size, self.values.dtype)
        dense[self.positions] = self.values
        return dense

    def encoded_bits(self) -> int:
        value_bits = 8 * self.values.itemsize
        return int(sum(golomb.sparse_segment_bits(local, size, value_bits, 0)
                       for local, size in zip(self._local_positions(), self.layout.sizes)))

    def encode_with_bit_count(self):
        n_bits = self.encoded_bits()
        stream = _new_stream(n_bits)
        width = 8 * self.values.itemsize
        patterns = self.values.view(_BIT_PATTERN[self.values.dtype])
        offset = 0
        start = 0
        for local, size in zip(self._local_positions(), self.layout.sizes):
            count = local.size
            offset = _encode_positions(stream, offset, local, size)
            offset = golomb.write_uints(stream, offset, patterns[start:start + count], width)
            start += count
        assert offset == n_bits
        return stream, n_bits

    def analytic_bits(self) -> float:
        return float(analytic.top_k_analytic_bits(self.counts, self.layout.sizes))

    @classmethod
    def decode(cls, stream: np.ndarray, fmt: MessageFormat) -> "SparseMessage":
        dtype = np.dtype(fmt.dtype)
        width = 8 * dtype.itemsize
        positions, values = [], []
        offset = 0
        for start, stop in Layout(fmt.segment_offsets).segments():
            count, offset, local = _decode_positions(stream, offset, stop - start)
            patterns = np.empty(count, _BIT_PATTERN[dtype])
            offset = golomb.read_uints(stream, offset, width, patterns)
            positions.append(local + start)
            values.append(patterns.view(dtype))
        return cls(fmt.segment_offsets, np.concatenate(positions), np.concatenate(values).astype(dtype))


def _encode_positions(stream, offset, local, size):
    """Write a segment's 32-bit count and its Golomb-Rice coded positions; the new bit offset."""
    count = local.size
    offset = golomb.write_uint(stream, offset, count, golomb.COUNT_BITS)
    return golomb.golomb_rice_encode_into(local, golomb.rice_parameter(count, size), stream, offset)


def _decode_positions(stream, offset, size):
    """Read a segment's 32-bit count and its Golomb-Rice coded positions."""
    stream = np.asarray(stream, np.uint8)
    count = int(golomb.read_uint(stream, offset, golomb.COUNT_BITS))
    offset += golomb.COUNT_BITS
    if count > size:
        raise ValueError(f"corrupt stream: segment of {size} entries claims {count} positions")
    local = np.empty(count, np.int64)
    offset = golomb.golomb_rice_decode_from(stream, offset, stream.size * 8, count,
                                            golomb.rice_parameter(count, size), local)
    if count and local[-1] >= size:
        raise ValueError(f"corrupt stream: position {local[-1]} outside a segment of {size} entries")
    return count, offset, local


@dataclass(frozen=True, eq=False)
class TernaryMessage(_SparseBase):
    """STC: kept positions, their signs, and one mean magnitude mu per segment."""

    kind: ClassVar[str] = "ternary"
    signs: np.ndarray   # (c,) int8, +1 or -1
    mu: np.ndarray      # (segments,) float32/float64; 0 for an empty segment

    def __post_init__(self):
        self._check_common()
        object.__setattr__(self, "signs", _frozen_array(self.signs, np.int8))
        dtype = _float_dtype(np.asarray(self.mu).dtype)
        object.__setattr__(self, "mu", _frozen_array(self.mu, dtype))
        if self.signs.size != self.positions.size:
            raise ValueError(f"{self.positions.size} positions but {self.signs.size} signs")
        if np.any(np.abs(self.signs) != 1):
            raise ValueError("ternary signs must be +1 or -1")
        if self.mu.size != len(self.segment_offsets) - 1:
            raise ValueError(f"one mu per segment: {len(self.segment_offsets) - 1} segments, "
                             f"{self.mu.size} mu")

    @property
    def format(self) -> MessageFormat:
        return MessageFormat(self.kind, self.segment_offsets, self.mu.dtype.name)

    def to_dense(self) -> np.ndarray:
        dense = np.zeros(self.size, self.mu.dtype)
        dense[self.positions] = self.signs * np.repeat(self.mu, self.counts)
        return dense

    def encoded_bits(self) -> int:
        mu_bits = 8 * self.mu.itemsize
        return int(sum(golomb.sparse_segment_bits(local, size, 1, mu_bits)
                       for local, size in zip(self._local_positions(), self.layout.sizes)))

    def encode_with_bit_count(self):
        n_bits = self.encoded_bits()
        stream = _new_stream(n_bits)
        width = 8 * self.mu.itemsize
        patterns = self.mu.view(_BIT_PATTERN[self.mu.dtype])
        offset = 0
        start = 0
        for j, (local, size) in enumerate(zip(self._local_positions(), self.layout.sizes)):
            count = local.size
            offset = _encode_positions(stream, offset, local, size)
            offset = golomb.pack_signs_into(self.signs[start:start + count], stream, offset)
            if count:
                offset = golomb.write_uints(stream, offset, patterns[j:j + 1], width)
            start += count
        assert offset == n_bits
        return stream, n_bits

    def analytic_bits(self) -> float:
        return float(analytic.stc_analytic_bits(self.counts, self.layout.sizes))

    @classmethod
    def decode(cls, stream: np.ndarray, fmt: MessageFormat) -> "TernaryMessage":
        dtype = np.dtype(fmt.dtype)
        width = 8 * dtype.itemsize
        positions, signs = [], []
        layout = Layout(fmt.segment_offsets)
        mu = np.zeros(layout.n_segments, dtype)
        offset = 0
        for j, (start, stop) in enumerate(layout.segments()):
            count, offset, local = _decode_positions(stream, offset, stop - start)
            segment_signs = np.empty(count, np.int8)
            offset = golomb.unpack_signs_from(stream, offset, count, segment_signs)
            if count:
                pattern = np.empty(1, _BIT_PATTERN[dtype])
                offset = golomb.read_uints(stream, offset, width, pattern)
                mu[j] = pattern.view(dtype)[0]
            positions.append(local + start)
            signs.append(segment_signs)
        return cls(fmt.segment_offsets, np.concatenate(positions), np.concatenate(signs), mu)


@dataclass(frozen=True, eq=False)
class SignMessage(Message):
    """signSGD: the sign of every entry (-1, 0, +1), optionally times one scale per segment."""

    kind: ClassVar[str] = "sign"
    segment_offsets: tuple[int, ...]   # segment boundaries; the last is the vector length
    signs: np.ndarray                  # (N,) int8 in {-1, 0, +1}
    scales: np.ndarray                 # (segments,) float32/float64; all 1 and not sent when unscaled
    scaled: bool = False               # whether the scales are part of the message

    def __post_init__(self):
        object.__setattr__(self, "segment_offsets", Layout(self.segment_offsets).segment_offsets)
        object.__setattr__(self, "signs", _frozen_array(self.signs, np.int8))
        dtype = _float_dtype(np.asarray(self.scales).dtype)
        object.__setattr__(self, "scales", _frozen_array(self.scales, dtype))
        object.__setattr__(self, "scaled", bool(self.scaled))
        if self.signs.size != self.segment_offsets[-1]:
            raise ValueError(f"{self.signs.size} signs for a vector of {self.segment_offsets[-1]}")
        if np.any(np.abs(self.signs) > 1):
            raise ValueError("signs must be -1, 0 or +1")
        if self.scales.size != len(self.segment_offsets) - 1:
            raise ValueError("one scale per segment")
        if not self.scaled and np.any(self.scales != 1):
            raise ValueError("an unscaled sign message has scales 1")

    @property
    def size(self) -> int:
        return self.segment_offsets[-1]

    @property
    def layout(self) -> Layout:
        return Layout(self.segment_offsets)

    @property
    def format(self) -> MessageFormat:
        return MessageFormat(self.kind, self.segment_offsets, self.scales.dtype.name, self.scaled)

    def to_dense(self) -> np.ndarray:
        return self.signs.astype(self.scales.dtype) * np.repeat(self.scales, self.layout.sizes)

    def encoded_bits(self) -> int:
        scale_bits = 8 * self.scales.itemsize if self.scaled else 0
        total = 0
        for start, stop in self.layout.segments():
            zeros = np.flatnonzero(self.signs[start:stop] == 0)
            total += golomb.COUNT_BITS + golomb.golomb_rice_bits(zeros, golomb.rice_parameter(zeros.size,
                                                                                              stop - start))
            total += (stop - start - zeros.size) + scale_bits
        return int(total)

    def encode_with_bit_count(self):
        n_bits = self.encoded_bits()
        stream = _new_stream(n_bits)
        width = 8 * self.scales.itemsize
        patterns = self.scales.view(_BIT_PATTERN[self.scales.dtype])
        offset = 0
        for j, (start, stop) in enumerate(self.layout.segments()):
            segment = self.signs[start:stop]
            zeros = np.flatnonzero(segment == 0)
            offset = golomb.write_uint(stream, offset, zeros.size, golomb.COUNT_BITS)
            offset = golomb.golomb_rice_encode_into(zeros, golomb.rice_parameter(zeros.size, stop - start),
                                                    stream, offset)
            offset = golomb.pack_signs_into(segment[segment != 0], stream, offset)
            if self.scaled:
                offset = golomb.write_uints(stream, offset, patterns[j:j + 1], width)
        assert offset == n_bits
        return stream, n_bits

    def analytic_bits(self) -> float:
        return analytic.sign_analytic_bits(self.size, len(self.segment_offsets) - 1 if self.scaled else 0)

    @classmethod
    def decode(cls, stream: np.ndarray, fmt: MessageFormat) -> "SignMessage":
        dtype = np.dtype(fmt.dtype)
        width = 8 * dtype.itemsize
        layout = Layout(fmt.segment_offsets)
        signs = np.empty(layout.size, np.int8)
        scales = np.ones(layout.n_segments, dtype)
        offset = 0
        for j, (start, stop) in enumerate(layout.segments()):
            n_zeros, offset, zeros = _decode_positions(stream, offset, stop - start)
            nonzero_signs = np.empty(stop - start - n_zeros, np.int8)
            offset = golomb.unpack_signs_from(np.asarray(stream, np.uint8), offset, nonzero_signs.size,
                                              nonzero_signs)
            segment = signs[start:stop]
            segment[:] = 0
            is_nonzero = np.ones(stop - start, bool)
            is_nonzero[zeros] = False
            segment[is_nonzero] = nonzero_signs
            if fmt.scaled:
                pattern = np.empty(1, _BIT_PATTERN[dtype])
                offset = golomb.read_uints(np.asarray(stream, np.uint8), offset, width, pattern)
                scales[j] = pattern.view(dtype)[0]
        return cls(fmt.segment_offsets, signs, scales, fmt.scaled)


MESSAGE_KINDS = {cls.kind: cls for cls in (DenseMessage, SparseMessage, TernaryMessage, SignMessage)}


def decode(stream: np.ndarray, fmt: MessageFormat) -> Message:
    """Rebuild a message from its encoded stream and the format the receiver knows in advance.

    ``decode(m.encode(), m.format) == m`` for every message ``m``.
    """
    if fmt.kind not in MESSAGE_KINDS:
        raise ValueError(f"message kind must be one of {tuple(MESSAGE_KINDS)}, got {fmt.kind!r}")
    _float_dtype(fmt.dtype)
    return MESSAGE_KINDS[fmt.kind].decode(np.asarray(stream, np.uint8), fmt)


# ----------------------------------------------------------------------------------------------------
# Compressor interface
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchResult:
    """The outcome of compressing K updates at once (row r is client r)."""

    sent: np.ndarray                  # (K, P) decompressed messages
    encoded_bits: np.ndarray          # (K,) int64, as Message.encoded_bits
    analytic_bits: np.ndarray         # (K,) float64, as Message.analytic_bits
    residuals: np.ndarray | None      # (K, P) new error-feedback residuals, or None without feedback


def check_update(x: np.ndarray, layout: Layout) -> np.ndarray:
    """``x`` as a contiguous 1-D float32/float64 array of the layout's length (ValueError otherwise)."""
    x = np.asarray(x)
    _float_dtype(x.dtype)
    if x.shape != (layout.size,):
        raise ValueError(f"update must have shape ({layout.size},), got {x.shape}")
    return np.ascontiguousarray(x)


def check_batch(updates: np.ndarray, layout: Layout, residuals: np.ndarray | None) -> np.ndarray:
    """``updates + residuals`` (or the updates) as a contiguous (K, P) float array, validated."""
    updates = np.asarray(updates)
    dtype = _float_dtype(updates.dtype)
    if updates.ndim != 2 or updates.shape[1] != layout.size:
        raise ValueError(f"updates must have shape (K, {layout.size}), got {updates.shape}")
    if residuals is None:
        return np.ascontiguousarray(updates)
    residuals = np.asarray(residuals)
    if residuals.shape != updates.shape or residuals.dtype != dtype:
        raise ValueError(f"residuals must match the updates: shape {updates.shape} and dtype {dtype}, "
                         f"got {residuals.shape} and {residuals.dtype}")
    return np.ascontiguousarray(updates + residuals)


class Compressor:
    """Base class: stateless compressors whose state is their :class:`Layout`.

    Subclasses are frozen dataclasses with a ``scope`` field and implement ``compress`` and
    ``_compress_rows`` (the batched kernel call).
    """

    scope: str = "tensor"

    def init(self, spec_or_size) -> Layout:
        """The state: segment boundaries for a ParamSpec, a Layout or an int size (see ``scope``)."""
        return make_layout(spec_or_size, self.scope)

    def compress(self, x: np.ndarray, state: Layout, rng: np.random.Generator | None = None):
        """``(message, state)`` for one update ``x`` of shape ``(state.size,)``."""
        raise NotImplementedError

    def decompress(self, message: Message) -> np.ndarray:
        """The dense vector the message stands for."""
        return message.to_dense()

    def bits(self, message: Message) -> int:
        """Length in bits of the message's real encoding (headers included)."""
        return message.encoded_bits()

    def analytic_bits(self, message: Message) -> float:
        """The paper's estimate of the message size (:mod:`fedsim.compress.bits`)."""
        return message.analytic_bits()

    def compress_batch(self, updates: np.ndarray, state: Layout, rng: np.random.Generator | None = None,
                       residuals: np.ndarray | None = None) -> BatchResult:
        """Compress K updates (rows of ``updates``) at once, with error feedback if ``residuals`` is given.

        Row r gives exactly (bitwise) what ``compress`` gives for ``updates[r]``, with the same Generator
        consumed in row order; with residuals, exactly what :class:`~fedsim.compress.ErrorFeedback`
        gives: ``a = x + residual; sent = decompress(C(a)); new residual = a - sent``.
        """
        accumulated = check_batch(updates, state, residuals)
        sent, encoded, estimated = self._compress_rows(accumulated, state, rng)
        new_residuals = None if residuals is None else accumulated - sent
        return BatchResult(sent, encoded, estimated, new_residuals)

    def _compress_rows(self, updates, state, rng):
        raise NotImplementedError
