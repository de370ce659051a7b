"""Input rows as a model reads them: a float array, or 8-bit codes with an affine map to floats.

Image datasets come as 8-bit pixels. Kept as codes ``u`` (uint8), a sample's features are::

    x = scale * u + offset                 (scale, offset: scalars of the dataset's preprocessing)

The model never forms ``x`` over the whole dataset: it casts one cache-sized block of codes to floats
(exact: integers below 256 are floats) and folds the affine map into the weights' side of the products::

    z      = x W + b      = scale * (u W) + (offset * 1^T W + b)
    grad_W = x^T delta    = scale * (u^T delta) + offset * 1 (sum_i delta_i)

so a gradient reads 1 byte per feature from memory instead of 4 (float32) or 8 (float64). The results
differ from the float path only by the rounding of those two regroupings (and, where the preprocessing
interpolated, of the codes themselves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class Codes:
    """Features stored as ``codes`` (uint8, shape ``(..., n, F)``) standing for ``scale * codes + offset``
    in floats of ``dtype``."""

    codes: np.ndarray
    scale: float
    offset: float = 0.0
    dtype: np.dtype = np.dtype(np.float64)

    def __post_init__(self):
        if not isinstance(self.codes, np.ndarray) or self.codes.dtype != np.uint8 or self.codes.ndim < 2:
            raise ValueError("Codes.codes must be a uint8 array of shape (..., samples, features), got "
                             f"{type(self.codes).__name__} {getattr(self.codes, 'dtype', '')} "
                             f"{getattr(self.codes, 'shape', '')}")
        if np.dtype(self.dtype) not in FLOAT_DTYPES:
            raise ValueError(f"Codes.dtype must be float32 or float64, got {self.dtype}")
        for name in ("scale", "offset"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"Codes.{name} must be finite, got {getattr(self, name)}")
        if self.scale == 0:
            raise ValueError("Codes.scale must not be 0")
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codes.shape

    @property
    def ndim(self) -> int:
        return self.codes.ndim

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index) -> "Codes":
        """The same map over a selection of the codes (rows, a gather, a reshape's view)."""
        return Codes(self.codes[index], self.scale, self.offset, self.dtype)

    def reshape(self, *shape) -> "Codes":
        return Codes(self.codes.reshape(*shape), self.scale, self.offset, self.dtype)

    def decode(self) -> np.ndarray:
        """``scale * codes + offset`` as floats (the whole array: for small sets and for tests)."""
        x = self.codes.astype(self.dtype)
        x *= self.dtype.type(self.scale)
        x += self.dtype.type(self.offset)
        return x


def as_dtype(x, dtype) -> "np.ndarray | Codes":
    """``x`` as a contiguous float array of ``dtype``, or as :class:`Codes` standing for floats of ``dtype``."""
    if isinstance(x, Codes):
        return Codes(np.ascontiguousarray(x.codes), x.scale, x.offset, dtype)
    return np.ascontiguousarray(x, dtype=dtype)


def decoded(x) -> np.ndarray:
    """``x`` as floats (a float array as it is; :class:`Codes` decoded)."""
    return x.decode() if isinstance(x, Codes) else x


def checked_rows(x, rows) -> np.ndarray:
    """``rows`` as int64 indices into the samples of ``x``, one ``(N, F)`` set: an integer array of at least one
    axis, in [0, N) (no wrap-around of negative rows, no read past the set)."""
    rows = np.asarray(rows)
    if x.ndim != 2 or rows.ndim < 1 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError("with rows, x must be one (samples, features) set and rows an integer index array, "
                         f"got x of shape {x.shape} and rows of {rows.dtype} {rows.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= x.shape[0]):
        raise ValueError(f"rows must lie in [0, {x.shape[0]}) (the rows of x), got range [{rows.min()}, {rows.max()}]")
    return rows.astype(np.int64, copy=False)


def split(x) -> tuple[np.ndarray, float, float, np.dtype]:
    """``(array, scale, offset, float dtype)`` of a float array (scale 1, offset 0) or of :class:`Codes`."""
    if isinstance(x, Codes):
        return x.codes, float(x.scale), float(x.offset), x.dtype
    x = np.asarray(x)
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"features must be a float32 or float64 array or Codes, got dtype {x.dtype}")
    return x, 1.0, 0.0, x.dtype


__all__ = ["Codes", "FLOAT_DTYPES", "as_dtype", "checked_rows", "decoded", "split"]
