"""The compressor interface: one batched path, the wire messages, and the registry of compressors.

A compressor is one module of this package holding one class (its settings, validated on construction)
and its message type. Interface (optax-like: pure functions of explicit state; GRACE's compressor /
memory / communicator split, with error feedback as the memory, :mod:`fedsim.compress.error_feedback`)::

    state = compressor.init(spec_or_size)                 # the segment layout (PowerSGD: + its factors)
    compressed, state = compressor.compress(updates, state, rng)   # K rows at once; a vector is K = 1
    compressed.decoded          # (K, P): what the receiver reconstructs from each row's message
    compressed.encoded_bits     # (K,) length of each row's real encoded bit stream (headers included)
    compressed.analytic_bits    # (K,) the paper's estimate of the same message
    message = compressed.message(r)       # row r as its wire message: encode(), decode(), to_dense()
    aggregate = compressor.aggregate(compressed.decoded, client_sizes, how, lr)   # what the server does

Row r of a batch is exactly (bitwise) what the same compressor gives for ``updates[r]`` alone, with the
Generator consumed in row order (PowerSGD excepted: its rows share one orthogonalized factor, as its
all-reduce does). ``compressed.message(r).to_dense()`` equals ``decoded[r]`` bitwise, and
``decode(message.encode(), message.format) == message``; ``message.encoded_bits()`` equals
``encoded_bits[r]``.

Segments: a compressor works per parameter tensor (``scope="tensor"``, the STC reference: each tensor of a
:class:`~fedsim.params.ParamSpec` gets its own k, mu and position code) or over the whole flat vector
(``scope="global"``). A :class:`Layout` holds the segment boundaries (and shapes, from a ParamSpec).

Wire formats: each message type documents its own. Common rules: bit order and the Golomb-Rice code are
those of :mod:`fedsim.kernels.golomb`; floats are written as their IEEE bit patterns in the message dtype
(32 bits for float32, 64 for float64); the receiver knows the :class:`MessageFormat` (kind, segments,
dtype, options) from the configuration, so it is not transmitted; the stream is padded with zero bits to
a whole byte, and ``encoded_bits`` is its length before padding.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedsim.compress import aggregation
from fedsim.constraints import OneOf, Real, check_fields, lookup, register_into, setting
from fedsim.kernels import bitstream, golomb
from fedsim.params import ParamSpec

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Integer views of the float dtypes' bit patterns for the bit writer/reader.
BIT_PATTERN = {np.dtype(np.float32): np.dtype(np.uint32), np.dtype(np.float64): np.dtype(np.int64)}

SCOPES = ("tensor", "global")


def float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def float_bits(dtype) -> int:
    """Bits of one encoded float of ``dtype`` (32 or 64)."""
    return 8 * np.dtype(dtype).itemsize


def frozen_array(values, dtype=None) -> np.ndarray:
    """``values`` as a read-only 1-D array of ``dtype`` (by default their own dtype, float32 or float64)."""
    array = np.ascontiguousarray(values, dtype=float_dtype(np.asarray(values).dtype) if dtype is None else dtype)
    if array.ndim != 1:
        raise ValueError(f"message arrays must be 1-D, got shape {array.shape}")
    array.setflags(write=False)
    return array


def same_value(a, b) -> bool:
    """``a == b``, with arrays equal only in dtype, shape and bytes (so -0.0 != 0.0 and a NaN equals the same
    NaN) and tuples compared entry by entry."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and a.tobytes() == b.tobytes())
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(map(same_value, a, b))
    return a == b


def ceil_product(fraction: float, count: int) -> int:
    """ceil(fraction * count), forgiving the float product's rounding error in its last bits.

    Example: 0.07 * 100 evaluates to 7.000000000000001, whose ceiling 8 nobody means; this returns 7.
    The product is shrunk by 2^-50 (relative) before the ceiling, far below any intended fraction.
    """
    return int(math.ceil(fraction * count * (1.0 - 2.0 ** -50)))


# ----------------------------------------------------------------------------------------------------
# settings shared by the compressors (fedsim.constraints: declared once, read by checks and show-config)
# ----------------------------------------------------------------------------------------------------

#: A fraction of entries kept: p in (0, 1].
FRACTION = Real(0, 1, low_open=True)


def scope_setting(description: str):
    """The ``scope`` field of a compressor: "tensor" (per parameter tensor) or "global" (whole vector)."""
    return setting("tensor", description, OneOf(*SCOPES))


def require_generator(rng, needs: str) -> None:
    """ValueError naming ``rng`` unless it is a numpy.random.Generator; ``needs`` says who needs it and
    for what (``"QSGD, for its stochastic rounding"``)."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{needs} needs a numpy.random.Generator (rng), got {type(rng).__name__}")


#: The uniforms of a stochastic quantizer (8 bytes per entry) are drawn at most this many bytes at a time.
UNIFORM_BUFFER_BYTES = 64 << 20


def uniform_chunks(n_rows: int, size: int, rng: np.random.Generator):
    """``(first, last, uniforms)`` over the rows in chunks: ``uniforms`` is ``rng.random((last - first,
    size))``, at most UNIFORM_BUFFER_BYTES of them at once. The Generator gives the same numbers, row after
    row, as one draw of all the rows would: each row consumes exactly ``size`` uniforms, whatever its values,
    so row r of a batch equals ``updates[r]`` compressed alone."""
    chunk = max(1, UNIFORM_BUFFER_BYTES // max(1, 8 * size))
    for first in range(0, n_rows, chunk):
        last = min(n_rows, first + chunk)
        yield first, last, rng.random((last - first, size))


# ----------------------------------------------------------------------------------------------------
# Layout (the state of a stateless compressor)
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Segment boundaries of the flat vector: segment j is ``x[offsets[j]:offsets[j + 1]]``."""

    segment_offsets: tuple[int, ...]   # starts at 0, non-decreasing, ends at the vector length
    shapes: tuple[tuple[int, ...], ...] | None = field(default=None, compare=False)  # per segment, if known

    def __post_init__(self):
        offsets = tuple(int(o) for o in self.segment_offsets)
        if len(offsets) < 2 or offsets[0] != 0 or any(b < a for a, b in zip(offsets, offsets[1:])):
            raise ValueError("segment_offsets must start at 0, be non-decreasing and name at least one "
                             f"segment, got {self.segment_offsets}")
        object.__setattr__(self, "segment_offsets", offsets)
        if self.shapes is not None:
            shapes = tuple(tuple(int(d) for d in shape) for shape in self.shapes)
            if len(shapes) != len(offsets) - 1 or any(math.prod(s) != n for s, n in zip(shapes, self.sizes)):
                raise ValueError(f"shapes {self.shapes} do not match the segments {offsets}")
            object.__setattr__(self, "shapes", shapes)

    @property
    def size(self) -> int:
        return self.segment_offsets[-1]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.segment_offsets, self.segment_offsets[1:]))

    @property
    def n_segments(self) -> int:
        return len(self.segment_offsets) - 1

    @property
    def offsets_array(self) -> np.ndarray:
        """The boundaries as an int64 array (what the batched kernels take)."""
        return np.asarray(self.segment_offsets, np.int64)

    def segments(self):
        """``(start, stop)`` of each segment."""
        return list(zip(self.segment_offsets, self.segment_offsets[1:]))


def layout_of(state) -> Layout:
    """The segments of a compressor's state: the state itself for a stateless compressor, else its
    ``layout`` (PowerSGD's state, error feedback's state)."""
    return state if isinstance(state, Layout) else state.layout


def make_layout(spec_or_size, scope: str) -> Layout:
    """Segments for a :class:`ParamSpec` (one per tensor, or one over all for ``scope="global"``), an int
    size (one segment), or a :class:`Layout` (kept as is for "tensor", merged for "global")."""
    OneOf(*SCOPES).check("scope", scope)
    if isinstance(spec_or_size, Layout):
        layout = spec_or_size
    elif isinstance(spec_or_size, ParamSpec):
        layout = Layout(tuple(int(o) for o in spec_or_size.offsets), spec_or_size.shapes)
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

    kind: str                          # the message type's registered kind ("dense", "sparse", ...)
    segment_offsets: tuple[int, ...]   # segment boundaries (dense: (0, N))
    dtype: str                         # "float32" or "float64"
    scaled: bool = False               # sign only: one scale per segment is sent
    options: tuple = ()                # other settings the decoder needs, as (name, value) pairs


MESSAGE_KINDS: dict[str, type] = {}


def register_message(cls):
    """Class decorator: make ``decode`` know the message type ``cls`` (by its ``kind``)."""
    return register_into(MESSAGE_KINDS, cls.kind, cls, "message kind")


def new_stream(n_bits: int) -> np.ndarray:
    return np.zeros((n_bits + 7) // 8, np.uint8)


def encode_positions(stream, offset, local, size):
    """Write a segment's 32-bit count and its Golomb-Rice coded positions (parameter b*(count, size));
    returns the new bit offset."""
    count = local.size
    offset = bitstream.write_uint(stream, offset, count, golomb.COUNT_BITS)
    return golomb.golomb_rice_encode_into(local, golomb.rice_parameter(count, size), stream, offset)


def decode_positions(stream, offset, size):
    """Read a segment's 32-bit count and its Golomb-Rice coded positions: (count, new offset, positions)."""
    stream = np.asarray(stream, np.uint8)
    count = int(bitstream.read_uint(stream, offset, golomb.COUNT_BITS))
    offset += golomb.COUNT_BITS
    if count > size:
        raise ValueError(f"corrupt stream: segment of {size} entries claims {count} positions")
    local = np.empty(count, np.int64)
    offset = golomb.golomb_rice_decode_from(stream, offset, stream.size * 8, count,
                                            golomb.rice_parameter(count, size), local)
    if count and local[-1] >= size:
        raise ValueError(f"corrupt stream: position {local[-1]} outside a segment of {size} entries")
    return count, offset, local


def write_floats(stream, offset, values: np.ndarray) -> int:
    """Write float32/float64 ``values`` as their bit patterns; returns the new bit offset."""
    values = np.ascontiguousarray(values)
    return bitstream.write_uints(stream, offset, values.view(BIT_PATTERN[values.dtype]), float_bits(values.dtype))


def read_floats(stream, offset, count: int, dtype) -> tuple[np.ndarray, int]:
    """Read ``count`` floats of ``dtype``: (values, new bit offset)."""
    dtype = np.dtype(dtype)
    patterns = np.empty(count, BIT_PATTERN[dtype])
    offset = bitstream.read_uints(np.asarray(stream, np.uint8), offset, float_bits(dtype), patterns)
    return patterns.view(dtype), offset


class Message:
    """Common behaviour of messages: exact equality, bits, encoding."""

    kind: ClassVar[str]

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        return all(same_value(getattr(self, name), getattr(other, name)) for name in self.__dataclass_fields__)

    __hash__ = None

    def _set(self, **fields):
        """Set fields of the frozen message (what its ``__post_init__`` normalized)."""
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def encode(self) -> np.ndarray:
        """The message as a byte-padded bit stream (uint8); see the message type for the format."""
        return self.encode_with_bit_count()[0]

    def encode_with_bit_count(self) -> tuple[np.ndarray, int]:
        """(stream, number of meaningful bits); the count equals :meth:`encoded_bits`. A message type
        writes its fields in :meth:`_write` (or overrides this method)."""
        n_bits = self.encoded_bits()
        stream = new_stream(n_bits)
        end = self._write(stream)
        assert end == n_bits
        return stream, n_bits

    def _write(self, stream: np.ndarray) -> int:
        """Write the message into ``stream`` (zeros, long enough) from bit 0; returns the end offset."""
        raise NotImplementedError

    def encoded_bits(self) -> int:
        raise NotImplementedError

    def analytic_bits(self) -> float:
        raise NotImplementedError

    def to_dense(self) -> np.ndarray:
        raise NotImplementedError

    def symbols(self) -> np.ndarray:
        """The symbols the message codes, one per entry of the vector unless it codes fewer (the report
        card's entropy column): by default the decoded entries, one value each (0: not sent); a message of
        signs or levels overrides it with those, leaving out the scales and norms it also sends."""
        return self.to_dense()


@dataclass(frozen=True, eq=False)
class SegmentedMessage(Message):
    """Common part of the messages of a segmented vector: the segment boundaries, the vector's size."""

    segment_offsets: tuple[int, ...]   # segment boundaries; the last is the vector length

    @property
    def size(self) -> int:
        return self.segment_offsets[-1]

    @property
    def layout(self) -> Layout:
        return Layout(self.segment_offsets)


@dataclass(frozen=True, eq=False)
class PositionsMessage(SegmentedMessage):
    """Common part of the messages that send a set of positions (top-k, STC): segments and positions."""

    positions: np.ndarray              # (c,) int64, global, strictly increasing

    @property
    def counts(self) -> np.ndarray:
        """Kept entries per segment."""
        return np.diff(np.searchsorted(self.positions, np.asarray(self.segment_offsets, np.int64)))

    def local_positions(self):
        """Positions within each segment, one array per segment."""
        bounds = np.searchsorted(self.positions, np.asarray(self.segment_offsets, np.int64))
        return [self.positions[bounds[j]:bounds[j + 1]] - start
                for j, start in enumerate(self.segment_offsets[:-1])]

    def _write(self, stream) -> int:
        """Each segment's count and coded positions (:func:`encode_positions`), then what
        :meth:`_write_segment` writes of it."""
        offset = start = 0
        for j, (local, size) in enumerate(zip(self.local_positions(), self.layout.sizes)):
            offset = encode_positions(stream, offset, local, size)
            offset = self._write_segment(stream, offset, j, start, local.size)
            start += local.size
        return offset

    def _write_segment(self, stream, offset: int, j: int, start: int, count: int) -> int:
        """Write what segment j sends beside its positions (its entries start at ``start`` of the message's
        arrays; ``count`` of them); returns the new offset."""
        raise NotImplementedError

    def _check_positions(self):
        self._set(segment_offsets=Layout(self.segment_offsets).segment_offsets,
                  positions=frozen_array(self.positions, np.int64))
        positions, size = self.positions, self.size
        if positions.size and (positions[0] < 0 or positions[-1] >= size or np.any(np.diff(positions) <= 0)):
            raise ValueError(f"positions must be strictly increasing and within [0, {size})")


def decode(stream: np.ndarray, fmt: MessageFormat) -> Message:
    """Rebuild a message from its encoded stream and the format the receiver knows in advance."""
    kind = lookup(MESSAGE_KINDS, fmt.kind, "message kind")
    float_dtype(fmt.dtype)
    return kind.decode(np.asarray(stream, np.uint8), fmt)


# ----------------------------------------------------------------------------------------------------
# The batched result and the compressor base class
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Compressed:
    """K rows compressed at once (row r is sender r)."""

    decoded: np.ndarray                # (K, P) what the receiver reconstructs from each row's message
    encoded_bits: np.ndarray           # (K,) int64, the length of each row's encoded message
    analytic_bits: np.ndarray          # (K,) float64, the paper's estimate of each message
    layout: Layout                     # the segments the messages refer to
    compressor: Any                    # the compressor that made them (it builds the wire messages)
    fields: dict = field(default_factory=dict)   # per-row outputs the wire message needs beside `decoded`
    broadcast_bits: int = 0            # bits the receiver sends to each sender inside the protocol itself
    #                                    (PowerSGD's orthogonalized factor); 0 for one-shot compressors

    @property
    def rows(self) -> int:
        return self.decoded.shape[0]

    def message(self, row: int = 0) -> Message:
        """Row ``row`` as its wire message (``to_dense()`` equals ``decoded[row]`` bitwise)."""
        if not 0 <= row < self.rows:
            raise IndexError(f"row must be in [0, {self.rows}), got {row}")
        return self.compressor.message(self, row)


def as_rows(updates, layout: Layout) -> np.ndarray:
    """``updates`` as a contiguous (K, P) float32/float64 array; a (P,) vector is a batch of one."""
    updates = np.asarray(updates)
    float_dtype(updates.dtype)
    if updates.ndim == 1:
        updates = updates[None, :]
    if updates.ndim != 2 or updates.shape[1] != layout.size:
        raise ValueError(f"updates must have shape (K, {layout.size}) or ({layout.size},), got "
                         f"{updates.shape}")
    return np.ascontiguousarray(updates)


COMPRESSORS: dict[str, type] = {}


def register(cls):
    """Class decorator: make compressor ``cls`` available by its ``name`` (configs, methods, the CLI)."""
    unknown = [how for how in cls.aggregations if how not in aggregation.AGGREGATIONS]
    if unknown:
        raise ValueError(f"compressor {cls.name!r}: aggregations must be among {tuple(aggregation.AGGREGATIONS)}, "
                         f"got {unknown}")
    return register_into(COMPRESSORS, cls.name, cls, "compressor name")


def compressor_class(name: str) -> type:
    return lookup(COMPRESSORS, name, "compressor")


def make_compressor(name: str, **options) -> "Compressor":
    """A compressor by its registered name ("identity", "topk", "stc", "sign", ...) with its options."""
    return compressor_class(name)(**options)


class Compressor:
    """Base class of the compressors: frozen dataclasses whose fields are their settings.

    A stateless compressor implements :meth:`_compress_rows` (the batched kernel call) and
    :meth:`message`; its state is its :class:`Layout`. A compressor with state of its own (PowerSGD)
    overrides :meth:`init`, :meth:`compress`, :meth:`state_arrays` and :meth:`load_state_arrays`.
    """

    name: ClassVar[str]                                              # the registered name
    aggregations: ClassVar[tuple[str, ...]] = ("mean", "weighted")   # allowed for its rows; first: default
    error_feedback: ClassVar[bool] = False       # do its methods keep residuals by default (biased ones do)
    directions: ClassVar[tuple[str, ...]] = ("up", "updown")   # the methods <name>_up, <name>_updown; () none
    budget_knob: ClassVar[str | None] = None     # the setting its bits grow with (fedsim.compress.budget)
    scope: str = "tensor"

    def __post_init__(self):
        check_fields(self)      # each setting against the constraint its field declares

    @property
    def settings(self) -> dict:
        """The compressor's settings by name (its dataclass fields)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def init(self, spec_or_size) -> Layout:
        """The state: segment boundaries for a ParamSpec, a Layout or an int size (see ``scope``)."""
        return make_layout(spec_or_size, self.scope)

    def compress(self, updates: np.ndarray, state, rng: np.random.Generator | None = None):
        """``(Compressed, state)`` for the K rows of ``updates`` (a (P,) vector is K = 1)."""
        layout = layout_of(state)
        rows = as_rows(updates, layout)
        decoded, encoded, analytic, fields = self._compress_rows(rows, layout, rng)
        return Compressed(decoded, encoded, analytic, layout, self, fields), state

    def _compress_rows(self, rows, layout, rng):
        """``(decoded (K, P), encoded bits (K,) int64, analytic bits (K,) float64, fields)``."""
        raise NotImplementedError

    def message(self, compressed: Compressed, row: int) -> Message:
        """Row ``row`` of ``compressed`` as the compressor's wire message."""
        raise NotImplementedError

    def aggregate(self, decoded: np.ndarray, sizes: np.ndarray, how: str | None = None,
                  lr: float = 1.0) -> np.ndarray:
        """The server's combination of the decoded rows (K, P), K >= 1, with the senders' sample counts
        ``sizes`` (K,), finite, >= 0 and of a positive sum finite in the rows' dtype
        (:mod:`fedsim.compress.aggregation`); ``how`` defaults to the first of ``aggregations``."""
        how = self.aggregations[0] if how is None else how
        if how not in self.aggregations:
            raise ValueError(f"aggregation {how!r} does not fit {self.name} messages; allowed: "
                             f"{self.aggregations}")
        sizes = np.asarray(sizes)
        if np.ndim(decoded) != 2 or len(decoded) == 0:
            raise ValueError(f"aggregate needs decoded rows (K, P) with K >= 1, got shape {np.shape(decoded)}")
        with np.errstate(over="ignore"):        # the weights are sizes / sum in the rows' dtype: that sum must fit
            total = sizes.astype(decoded.dtype).sum() if sizes.dtype.kind in "biuf" else np.nan
        if sizes.shape != (len(decoded),) or not (np.isfinite(total) and (sizes >= 0).all() and total > 0):
            raise ValueError(f"sizes must be the {len(decoded)} senders' sample counts, finite, >= 0 and of a "
                             f"positive sum finite in the rows' dtype ({decoded.dtype}), got {sizes}")
        return aggregation.AGGREGATIONS[how](decoded, sizes, lr)

    def theory(self, x: np.ndarray, state):
        """What the compressor's paper says of C(x) for the vector ``x`` laid out by ``state``: a
        :class:`fedsim.compress.theory.Theory`, or None where nothing is published (the default). An error
        relative to ||x||^2 refuses a zero x (``theory.relative_to``, ``relative_error``)."""
        return None

    def knob_stretches(self, state):
        """Where the encoded bits of rows laid out by ``state`` fall as a fraction ``budget_knob`` grows: the
        smallest value of each stretch above which they grow with the knob again (:mod:`fedsim.compress.budget`
        searches each); ``()`` when they grow with it throughout (the default), None when that is not known."""
        return ()

    def state_arrays(self, state) -> dict[str, np.ndarray]:
        """What of ``state`` must be checkpointed (nothing for a stateless compressor)."""
        return {}

    def load_state_arrays(self, state, arrays: dict[str, np.ndarray]):
        """``state`` with the checkpointed ``arrays`` restored."""
        return state

