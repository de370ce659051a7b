"""One flat parameter vector for a model, and the names and shapes inside it.

Conventions (used everywhere in fedsim)
---------------------------------------
A model's parameters are one contiguous 1-D array ``theta`` of length ``spec.size``. The tensors are laid
out one after another in ``spec.names`` order, each row-major. Many clients at once are a 2-D array
(clients x spec.size); every function that takes ``theta`` also accepts such a stack, the parameter axis
being the last one. :meth:`ParamSpec.view` returns a view, never a copy, so writing into it writes into
the flat vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np


@dataclass(frozen=True)
class ParamSpec:
    """Names and shapes of the tensors packed, in order, into one flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        if len(self.names) != len(self.shapes):
            raise ValueError(f"ParamSpec: {len(self.names)} names but {len(self.shapes)} shapes")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"ParamSpec: tensor names must be unique, got {self.names}")
        for name, shape in zip(self.names, self.shapes):
            if any(int(d) < 0 for d in shape):
                raise ValueError(f"ParamSpec: tensor {name!r} has a negative dimension in {shape}")

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of entries of each tensor."""
        return tuple(prod(shape) for shape in self.shapes)

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return sum(self.sizes)

    @property
    def offsets(self) -> np.ndarray:
        """Segment boundaries: tensor i occupies ``theta[offsets[i]:offsets[i + 1]]``."""
        return np.concatenate(([0], np.cumsum(self.sizes, dtype=np.int64))).astype(np.int64)

    def slice(self, name: str) -> slice:
        """The slice of the flat vector that holds tensor ``name``."""
        i = self.names.index(name)
        start = int(self.offsets[i])
        return slice(start, start + self.sizes[i])

    def view(self, theta: np.ndarray, name: str) -> np.ndarray:
        """Tensor ``name`` of ``theta`` (shape ``(..., size)``) as a view of shape ``(..., *shape)``."""
        self._check(theta)
        shape = self.shapes[self.names.index(name)]
        return theta[..., self.slice(name)].reshape(theta.shape[:-1] + tuple(shape))

    def flatten(self, tensors: dict[str, np.ndarray], dtype=None) -> np.ndarray:
        """Pack named tensors (each ``(..., *shape)``) into a new flat array ``(..., size)``."""
        missing = set(self.names) - set(tensors)
        if missing:
            raise ValueError(f"ParamSpec.flatten: missing tensors {sorted(missing)}")
        first = np.asarray(tensors[self.names[0]])
        batch = first.shape[: first.ndim - len(self.shapes[0])]
        dtype = dtype or np.result_type(*[np.asarray(t) for t in tensors.values()])
        out = np.empty(batch + (self.size,), dtype=dtype)
        for name, shape in zip(self.names, self.shapes):
            out[..., self.slice(name)] = np.asarray(tensors[name]).reshape(batch + (prod(shape),))
        return out

    def zeros(self, dtype=np.float32, batch: tuple[int, ...] = ()) -> np.ndarray:
        """A zero flat vector (or a stack of ``batch`` of them)."""
        return np.zeros(tuple(batch) + (self.size,), dtype=dtype)

    def _check(self, theta: np.ndarray) -> None:
        if theta.shape[-1:] != (self.size,):
            raise ValueError(f"parameter vector has {theta.shape[-1:]} entries on its last axis; "
                             f"the spec {dict(zip(self.names, self.shapes))} needs {self.size}")
