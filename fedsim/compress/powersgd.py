"""PowerSGD (Vogels, Karimireddy, Jaggi, arXiv 1905.13727): rank-r compression by one power iteration.

Segments. PowerSGD needs the parameter tensors' shapes (``scope="tensor"``, a state built from a
:class:`~fedsim.params.ParamSpec` or a :class:`~fedsim.compress.base.Layout` with shapes). A segment of
shape ``(n, m)`` is an ``n x m`` row-major matrix (more dimensions: ``(shape[0], prod(shape[1:]))``, the
paper's reshaping of convolution kernels); a 1-D segment (a bias), a scalar or an empty tensor is sent as
is, as in the paper. The rank r must not exceed ``min(n, m)`` of any matrix (a ValueError otherwise:
nothing is silently clipped). The default r = 2 is the rank of most of the paper's CIFAR-10 experiments,
on par with SGD's test accuracy (it compares ranks 1, 2 and 4; the LSTM runs use rank 4); a softmax
regression's 10-class weight matrix allows r <= 10.

One round (Algorithm 1 of the paper, with error feedback from the generic
:class:`~fedsim.compress.error_feedback.ErrorFeedback` wrapper). The rows of a batch are the K senders
of one round; ``M_k`` is sender k's (residual-accumulated) matrix and ``Q`` (m x r) the warm start kept
in the state::

    P_k = M_k Q                       sender k uploads P_k (n r floats)
    P   = (1/K) sum_k P_k             the all-reduce (the server's mean)
    P_hat = orthogonalize(P)          Gram-Schmidt, fedsim.kernels.powersgd._orthogonalize; sent to all
    Q_k = M_k^T P_hat                 sender k uploads Q_k (m r floats)
    decoded_k = P_hat Q_k^T           what sender k's two uploads reconstruct
    Q  <- (1/K) sum_k Q_k             the next round's warm start

so the mean of the decoded rows is ``P_hat Q^T``, the paper's aggregate. **The rows are coupled**: they
share P_hat, which depends on every row (this is the one compressor whose row r is not what
``updates[r]`` alone would give). With K = 1 (the server's downstream compression, with its own state)
P_hat is orthogonalized locally and nothing is broadcast. The orthogonalization is defined bit for bit
in :mod:`fedsim.kernels.powersgd`; a column of P that is zero or numerically dependent on the earlier ones
becomes a zero column of P_hat, so the matrix is sent at a lower rank that round and what is not sent
stays in the residual.

Randomness. ``Q`` starts as None in the state. At every compress call, each column of each matrix's Q
that is entirely zero (all of them at the first call; afterwards only a column that the
orthogonalization dropped, whose ``Q_k`` columns are then zero) is drawn standard normal from the
Generator: for each matrix segment in order, ``rng.standard_normal((c, m))`` for its c zero columns (in
column order; row i of the draw is column i), cast to the data dtype. Without the redraw a dropped column
would stay zero forever (``M Q`` is zero there) and the rank would be lost for the rest of the run.
``compress`` always needs the Generator (a ValueError naming ``rng`` otherwise).

Wire format (``powersgd``), per segment in order, no headers: a matrix segment sends ``P_hat`` (n r
floats, row-major n x r) then ``Q_k`` (m r floats, row-major m x r); any other segment its N values (the
format's options: the shapes and r). Bits per sender: ``float_bits (sum over matrices of (n + m) r + sum
over other segments of N)``, the float count of its two uploads (P_k and Q_k); analytic (the paper's
count): 32 bits per float. The server's P_hat, sent to each of the K senders between the two uploads, is
``Compressed.broadcast_bits`` = ``float_bits sum n r`` when K > 1 (0 for K = 1); the simulation adds it,
times K, to the round's downstream bits.

Aggregation: the plain mean only (PowerSGD's all-reduce); a weighted mean of the decoded rows is not what
the algorithm computes and the federated configuration refuses it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedsim.compress.base import (as_rows, Compressed, Compressor, float_bits, float_dtype, frozen_array, Layout,
                                  make_layout, MessageFormat, read_floats, register, register_message,
                                  require_generator, same_value, SegmentedMessage, write_floats)
from fedsim.compress.theory import Theory, relative_to
from fedsim.compress.bits import FLOAT_BITS
from fedsim.constraints import Integer, OneOf, setting
from fedsim.kernels import powersgd as kernels
from fedsim.kernels import sparsify

SCOPES = ("tensor",)   # PowerSGD factors matrices: it needs the tensors' shapes
RANK = Integer(low=1)  # r (and at most min(n, m) of each matrix, checked by init)


def matrix_shape(shape) -> tuple[int, int] | None:
    """(n, m) of a segment compressed as a matrix (2-D or more, nonempty), None for one sent as is."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2 or math.prod(shape) == 0:
        return None
    return shape[0], math.prod(shape[1:])


FIELDS = ("left", "right", "values")   # the message's arrays


def wire_fields(shapes, rank: int):
    """Per segment, in order, the (message array, floats) it sends (module docstring, wire format)."""
    for shape in shapes:
        matrix = matrix_shape(shape)
        if matrix is None:
            yield (("values", math.prod(shape)),)
        else:
            yield ("left", matrix[0] * rank), ("right", matrix[1] * rank)


def factor_sizes(shapes, rank: int) -> tuple[int, int, int]:
    """Floats of one row's message: (P_hat, n r per matrix; Q_k, m r per matrix; the segments sent as is)."""
    totals = dict.fromkeys(FIELDS, 0)
    for name, count in itertools.chain.from_iterable(wire_fields(shapes, rank)):
        totals[name] += count
    return totals["left"], totals["right"], totals["values"]


@register_message
@dataclass(frozen=True, eq=False)
class PowerSGDMessage(SegmentedMessage):
    """One sender's reconstruction: P_hat and Q_k per matrix segment, the other segments as they are."""

    kind: ClassVar[str] = "powersgd"
    shapes: tuple[tuple[int, ...], ...]    # each segment's tensor shape (known to the receiver)
    rank: int                              # r (known to the receiver)
    left: np.ndarray    # P_hat of every matrix segment, each row-major n x r, concatenated in segment order
    right: np.ndarray   # Q_k of every matrix segment, each row-major m x r, concatenated
    values: np.ndarray  # the entries of every other segment, concatenated

    def __post_init__(self):
        layout = Layout(self.segment_offsets, self.shapes)
        self._set(segment_offsets=layout.segment_offsets, shapes=layout.shapes, rank=RANK.check("rank", self.rank),
                  left=frozen_array(self.left))
        self._set(right=frozen_array(self.right, self.dtype), values=frozen_array(self.values, self.dtype))
        for name, expected in zip(FIELDS, factor_sizes(self.shapes, self.rank)):
            if getattr(self, name).size != expected:
                raise ValueError(f"PowerSGD message: {name} has {getattr(self, name).size} floats, the "
                                 f"shapes {self.shapes} with rank {self.rank} need {expected}")

    @property
    def dtype(self) -> np.dtype:
        return self.left.dtype

    @property
    def format(self) -> MessageFormat:
        return MessageFormat(self.kind, self.segment_offsets, self.dtype.name,
                             options=(("shapes", self.shapes), ("rank", self.rank)))

    def _segments(self):
        """Per segment: (start, stop, shape, {message array: the segment's part of it}) in wire order."""
        taken = dict.fromkeys(FIELDS, 0)
        for (start, stop), shape, sent in zip(self.layout.segments(), self.shapes, wire_fields(self.shapes, self.rank)):
            parts = {}
            for name, count in sent:
                parts[name] = getattr(self, name)[taken[name]:taken[name] + count]
                taken[name] += count
            yield start, stop, shape, parts

    def to_dense(self) -> np.ndarray:
        dense = np.empty(self.size, self.dtype)
        for start, stop, shape, parts in self._segments():
            if "values" in parts:
                dense[start:stop] = parts["values"]
            else:
                n, m = matrix_shape(shape)
                kernels.low_rank_product.core(parts["left"].reshape(n, self.rank), parts["right"].reshape(m, self.rank),
                                              dense[start:stop].reshape(n, m))
        return dense

    def symbols(self) -> np.ndarray:
        """The floats it sends: the factors, then the other segments' entries (fewer than the vector's)."""
        return np.concatenate((self.left, self.right, self.values))

    def floats(self) -> int:
        return self.left.size + self.right.size + self.values.size

    def encoded_bits(self) -> int:
        return float_bits(self.dtype) * self.floats()

    def _write(self, stream):
        offset = 0
        for *_, parts in self._segments():
            for part in parts.values():
                offset = write_floats(stream, offset, part)
        return offset

    def analytic_bits(self) -> float:
        return float(FLOAT_BITS * self.floats())

    @classmethod
    def decode(cls, stream: np.ndarray, fmt: MessageFormat) -> PowerSGDMessage:
        options = dict(fmt.options)
        if set(options) != {"shapes", "rank"}:
            raise ValueError(f"a powersgd format needs the options shapes and rank, got {fmt.options}")
        shapes, rank = options["shapes"], options["rank"]
        read = {name: [np.zeros(0, fmt.dtype)] for name in FIELDS}
        offset = 0
        for name, count in itertools.chain.from_iterable(wire_fields(shapes, rank)):
            chunk, offset = read_floats(stream, offset, count, fmt.dtype)
            read[name].append(chunk)
        return cls(fmt.segment_offsets, shapes, rank, *(np.concatenate(read[name]) for name in FIELDS))


@dataclass(frozen=True, eq=False)
class PowerSGDState:
    """The segments and the warm-start factors Q (one (m, r) array per matrix segment, in segment order;
    None before the first compress call)."""

    layout: Layout
    factors: tuple[np.ndarray, ...] | None = None

    def __eq__(self, other):
        if not isinstance(other, PowerSGDState):
            return NotImplemented
        return same_value((self.layout, self.layout.shapes, self.factors),
                          (other.layout, other.layout.shapes, other.factors))

    __hash__ = None


@register
@dataclass(frozen=True)
class PowerSGD(Compressor):
    """Rank-r PowerSGD with warm start (module docstring). Message: :class:`PowerSGDMessage`."""

    name: ClassVar[str] = "powersgd"
    aggregations: ClassVar[tuple[str, ...]] = ("mean",)
    error_feedback: ClassVar[bool] = True
    budget_knob: ClassVar[str] = "rank"

    rank: int = setting(2, "r, the rank of each matrix's approximation (at most min(n, m))", RANK)
    scope: str = setting("tensor", "must be \"tensor\": each tensor of the ParamSpec is factored as a matrix",
                         OneOf(*SCOPES))

    # -- state ---------------------------------------------------------------------------------------
    def init(self, spec_or_size) -> PowerSGDState:
        """The segments (with shapes, from a ParamSpec or a Layout with shapes) and no factors yet."""
        layout = make_layout(spec_or_size, self.scope)
        if layout.shapes is None:
            raise ValueError("PowerSGD needs the tensors' shapes (scope='tensor'): init it with a ParamSpec "
                             "or a Layout with shapes, not an int size or a Layout without shapes")
        for j, _, n, m in self.matrix_segments(layout):
            if self.rank > min(n, m):
                raise ValueError(f"powersgd.rank must be an integer in [1, {min(n, m)}] for the {layout.shapes[j]} "
                                 f"tensor (at most min(n, m)), got {self.rank}")
        return PowerSGDState(layout)

    def matrix_segments(self, layout: Layout) -> list[tuple[int, int, int, int]]:
        """(segment index, start, n, m) of each segment compressed as a matrix."""
        starts_and_shapes = zip(layout.segment_offsets, layout.shapes)
        matrices = [(j, start, matrix_shape(shape)) for j, (start, shape) in enumerate(starts_and_shapes)]
        return [(j, start, *matrix) for j, start, matrix in matrices if matrix is not None]

    def state_arrays(self, state: PowerSGDState) -> dict[str, np.ndarray]:
        """The factor Q of each matrix segment j as ``q_segment_<j>`` (nothing before the first call)."""
        if state.factors is None:
            return {}
        return {f"q_segment_{j}": factor
                for (j, _, _, _), factor in zip(self.matrix_segments(state.layout), state.factors)}

    def load_state_arrays(self, state: PowerSGDState, arrays) -> PowerSGDState:
        matrices = self.matrix_segments(state.layout)
        keys = [f"q_segment_{j}" for j, _, _, _ in matrices]
        present = [key in arrays for key in keys]
        if not any(present) and matrices:
            return PowerSGDState(state.layout, None)
        if not all(present):
            raise ValueError(f"checkpoint lacks PowerSGD factors {[k for k, p in zip(keys, present) if not p]}")
        factors = []
        for key, (_, _, _, m) in zip(keys, matrices):
            factor = np.array(arrays[key])
            float_dtype(factor.dtype)
            if factor.shape != (m, self.rank):
                raise ValueError(f"checkpoint factor {key} has shape {factor.shape}, expected {(m, self.rank)}")
            factors.append(factor)
        return PowerSGDState(state.layout, tuple(factors))

    # -- compression ---------------------------------------------------------------------------------
    def warm_start(self, state: PowerSGDState, dtype, rng) -> list[np.ndarray]:
        """The factors Q for this call: the state's, with every all-zero column (all at the first call)
        drawn standard normal from ``rng`` (module docstring)."""
        matrices = self.matrix_segments(state.layout)
        factors = []
        for index, (_, _, _, m) in enumerate(matrices):
            if state.factors is None:
                factor = np.zeros((m, self.rank), dtype)
            else:
                factor = np.array(state.factors[index], dtype=dtype)   # a copy: states are not mutated
                if state.factors[index].dtype != dtype:
                    raise ValueError(f"update dtype {np.dtype(dtype)} differs from the PowerSGD state's "
                                     f"{state.factors[index].dtype}")
            zero = np.flatnonzero(~np.any(factor != 0, axis=0))
            if zero.size:
                factor[:, zero] = rng.standard_normal((zero.size, m)).T.astype(dtype)
            factors.append(factor)
        return factors

    def compress(self, updates, state: PowerSGDState, rng: np.random.Generator | None = None):
        """``(Compressed, new state)``: one power step over the K rows (coupled through P_hat)."""
        require_generator(rng, "PowerSGD, for its factors' draws,")
        if not isinstance(state, PowerSGDState):
            raise TypeError(f"PowerSGD's state comes from its init, got {type(state).__name__}")
        layout = state.layout
        rows = as_rows(updates, layout)
        if not sparsify.all_finite(rows):
            raise ValueError(sparsify.NONFINITE_MESSAGE)
        n_rows, dtype = rows.shape[0], rows.dtype
        factors = self.warm_start(state, dtype, rng)
        tolerance = kernels.drop_tolerance(dtype)
        decoded = rows.copy()                        # segments sent as they are keep their values
        lefts, rights, new_factors = [], [], []
        for (_, start, n, m), factor in zip(self.matrix_segments(layout), factors):
            stop = start + n * m
            matrices = rows[:, start:stop].reshape(n_rows, n, m)
            out = decoded[:, start:stop].reshape(n_rows, n, m)       # a view into decoded
            # every argument is built here (the factor by warm_start, out a view into decoded): the core
            p_hat, q_each, q_mean = kernels.power_step.core(matrices, factor, tolerance, out)
            lefts.append(p_hat.reshape(-1))
            rights.append(q_each.reshape(n_rows, -1))
            new_factors.append(q_mean)
        left_floats, right_floats, value_floats = factor_sizes(layout.shapes, self.rank)
        floats = left_floats + right_floats + value_floats
        encoded = np.full(n_rows, float_bits(dtype) * floats, np.int64)
        analytic = np.full(n_rows, float(FLOAT_BITS * floats), np.float64)
        fields = {"left": np.concatenate(lefts or [np.zeros(0, dtype)]),
                  "right": np.concatenate(rights, axis=1) if rights else np.zeros((n_rows, 0), dtype)}
        broadcast = float_bits(dtype) * left_floats if n_rows > 1 else 0
        compressed = Compressed(decoded, encoded, analytic, layout, self, fields, broadcast)
        return compressed, PowerSGDState(layout, tuple(new_factors))

    def theory(self, x, state):
        """A floor (Eckart-Young): no rank-r matrix is nearer a matrix M than its truncated SVD, whose
        error is sum_{i > r} sigma_i(M)^2; summed over the matrix segments (the others are sent exactly)
        and divided by ||x||^2. One power step (Vogels et al., arXiv 1905.13727) can only do worse."""
        x = np.asarray(x, np.float64)
        floor = 0.0
        for _, start, n, m in self.matrix_segments(state.layout):
            singular = np.linalg.svd(x[start:start + n * m].reshape(n, m), compute_uv=False)
            floor += float(np.square(singular[self.rank:]).sum())
        return Theory(False, relative_to(floor, float(x @ x)), ">=", "Eckart-Young: the best rank-r error (SVD)")

    def message(self, compressed: Compressed, row: int) -> PowerSGDMessage:
        layout = compressed.layout
        dense = compressed.decoded[row]
        values = [dense[start:stop] for (start, stop), shape in zip(layout.segments(), layout.shapes)
                  if matrix_shape(shape) is None]
        return PowerSGDMessage(layout.segment_offsets, layout.shapes, self.rank, compressed.fields["left"],
                               compressed.fields["right"][row],
                               np.concatenate(values or [np.zeros(0, dense.dtype)]))

