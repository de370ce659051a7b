"""Argument checks of the public kernels: plain Python, run before any jitted code.

A jitted kernel trusts its arguments: numba does no bounds checking, so a short output buffer, an offset
past the end of a stream or a position outside a vector is read or written out of bounds (a segfault, or
silently corrupted memory). Every public kernel is therefore a plain-Python function that checks its
arguments and then calls an unchecked jitted *core*::

    @checked(_ternarize_core)
    def ternarize(x, k, positions_out, signs_out):
        '''The public contract.'''
        ...checks, raising ValueError / TypeError that name the argument...
        return x, k, positions_out, signs_out          # the arguments the core is called with

:func:`checked` turns the decorated check into the kernel ``core(*check(...))``. The result also has

* ``.core``: the jitted core, for callers that have checked (or built) every argument themselves;
* ``.check``: the check alone (the NumPy twins call it, so that they reject the same input);
* ``.py_func``: the check, then the core's pure-Python ``py_func`` (what the tests compare);

and jitted code that calls the public name compiles to a direct call of the core (a numba overload):
jitted callers are trusted callers.

The checks are O(1) or O(number of segments); a check that needs a pass over the data (positions within
range, a bit count) is done only where the kernel would otherwise go out of bounds. What they require:

* arrays: ``numpy.ndarray`` (TypeError otherwise) of an allowed dtype (TypeError), the stated number of
  dimensions and shape or length (ValueError), C-contiguous (ValueError), outputs writable (ValueError);
* integers: ``int`` or a NumPy integer, not ``bool`` (TypeError), within the stated range (ValueError);
* reals: ``int``, ``float`` or a NumPy real scalar (TypeError), finite and within the range (ValueError);
* flags: ``bool`` or ``numpy.bool_`` (TypeError).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba.extending import overload

from fedsim.kernels import JIT_OPTIONS

FLOAT = (np.dtype(np.float32), np.dtype(np.float64))
FLOAT64 = (np.dtype(np.float64),)
INT64 = (np.dtype(np.int64),)
INT8 = (np.dtype(np.int8),)
UINT8 = (np.dtype(np.uint8),)
UINT64 = (np.dtype(np.uint64),)
INTEGER = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64,
                                      np.uint8, np.uint16, np.uint32, np.uint64))
CODE = (np.dtype(np.uint8), np.dtype(np.uint16))
INT64_MAX = (1 << 63) - 1
# Integers that jitted code receives as int64 must stay below 2^62 wherever the kernel doubles them or
# adds a few bits to them (counts, sizes, bit offsets).
COUNT_MAX = (1 << 62) - 1
FLOAT_BIT_WIDTHS = (32, 64)
# Index arrays up to this length are checked as Python lists (cheaper than NumPy calls on short arrays).
SHORT_ARRAY = 64


def checked(core):
    """Decorator: the decorated function checks the arguments of ``core`` and returns them (as a tuple,
    possibly normalized); the result is the public kernel (module docstring)."""
    def decorate(check):
        @functools.wraps(check)
        def kernel(*args, **kwargs):
            return core(*check(*args, **kwargs))

        def py_func(*args, **kwargs):
            return core.py_func(*check(*args, **kwargs))

        py_func.__name__ = check.__name__
        py_func.__qualname__ = f"{check.__qualname__}.py_func"
        py_func.__doc__ = f"{check.__name__} with the core's pure-Python body (core.py_func)."
        kernel.core = core
        kernel.check = check
        kernel.py_func = py_func

        def jitted_call(*args):
            def call_core(*args):
                return core(*args)
            return call_core

        overload(kernel, jit_options=JIT_OPTIONS)(jitted_call)
        return kernel
    return decorate


def _dtype_names(dtypes) -> str:
    names = [str(d) for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def array(name, value, dtypes, ndim=1, writable=False, contiguous=True):
    """``value`` if it is a C-contiguous (unless ``contiguous`` is False) ``ndim``-D NumPy array of one of
    ``dtypes`` (and writable if asked); TypeError for a wrong type or dtype, ValueError otherwise."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array of dtype {_dtype_names(dtypes)}, got "
                        f"{type(value).__name__}")
    if value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_dtype_names(dtypes)}, got {value.dtype}")
    if value.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {value.shape}")
    flags = value.flags
    if contiguous and not flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (np.ascontiguousarray gives a contiguous copy)")
    if writable and not flags.writeable:
        raise ValueError(f"{name} must be writable (it is an output)")
    return value


def float_vector(name, value):
    """A C-contiguous 1-D float32 or float64 array."""
    return array(name, value, FLOAT)


def output(name, value, dtypes, length):
    """A writable C-contiguous 1-D array of one of ``dtypes`` with at least ``length`` entries."""
    array(name, value, dtypes, 1, True)
    if value.shape[0] < length:
        raise ValueError(f"{name} has {value.shape[0]} entries, needs at least {length}")
    return value


def same_dtype(name, value, like_name, like):
    if value.dtype != like.dtype:
        raise TypeError(f"{name} must have the dtype of {like_name} ({like.dtype}), got {value.dtype}")
    return value


def output_like(name, value, like_name, like, shape):
    """A writable C-contiguous float array of exactly ``shape`` in the dtype of ``like``."""
    shaped(name, value, FLOAT, shape, True)
    return same_dtype(name, value, like_name, like)


def shaped(name, value, dtypes, shape, writable=False):
    """A C-contiguous array of one of ``dtypes`` with exactly this ``shape``."""
    array(name, value, dtypes, len(shape), writable)
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
    return value


def integer(name, value, low=0, high=INT64_MAX):
    """``value`` as an int if it is an integer (not a bool) in [low, high]."""
    if type(value) is not int:                 # (bool is a subclass of int, but not int itself)
        if not isinstance(value, np.integer):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
        value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{_bound(low)}, {_bound(high)}], got {value}")
    return value


def _bound(value) -> str:
    """``value`` for a message: 2^p - 1 and -2^p spelled as such."""
    for power in (31, 32, 56, 62, 63, 64):
        if value == (1 << power) - 1:
            return f"2^{power} - 1"
        if value in (1 << power, -(1 << power)):
            return f"{'-' if value < 0 else ''}2^{power}"
    return str(value)


def real(name, value, low=None, low_open=False):
    """``value`` as a float if it is a finite real number, ``>= low`` (``> low`` if ``low_open``)."""
    if type(value) is not float:
        if type(value) is not int and not isinstance(value, (np.integer, np.floating)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
        value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    return value


def flag(name, value):
    """``value`` as a bool if it is a bool or numpy.bool_."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def float_bits(name, value):
    """The width of an encoded float: 32 or 64."""
    value = integer(name, value, 0, 64)
    if value not in FLOAT_BIT_WIDTHS:
        raise ValueError(f"{name} must be 32 or 64, got {value}")
    return value


def segment_count(name, offsets, total):
    """The number S of segments that ``offsets`` (int64, S + 1 entries) cut [0, total) into: the offsets
    must start at 0, never decrease and end at ``total``."""
    array(name, offsets, INT64)
    n = offsets.shape[0]
    if n == 0:
        raise ValueError(f"{name} must hold S + 1 >= 1 offsets, got none")
    if n <= SHORT_ARRAY:
        values = offsets.tolist()
        valid = values[0] == 0 and values[-1] == total and values == sorted(values)
    else:
        valid = offsets[0] == 0 and offsets[-1] == total and not np.any(offsets[1:] < offsets[:-1])
    if not valid:
        raise ValueError(f"{name} must run from 0 to {total} without decreasing, got "
                         f"{_preview(offsets)}")
    return n - 1


def smallest(values):
    """The smallest entry of a nonempty integer array, as an int."""
    return min(values.tolist()) if values.shape[0] <= SHORT_ARRAY else int(values.min())


def nonnegative(name, values):
    """Every entry of the 1-D integer array ``values`` is >= 0."""
    if values.shape[0] and smallest(values) < 0:
        raise ValueError(f"{name} must be >= 0, got {smallest(values)}")


def within(name, values, size):
    """Every entry of the C-contiguous integer array ``values`` is in [0, size): one pass, the maximum of
    the entries read as unsigned integers (a negative entry reads as one >= 2^63)."""
    if values.size and values.view(f"u{values.dtype.itemsize}").max() >= size:
        bad = values[(values < 0) | (values >= size)][0]
        raise ValueError(f"{name} must be in [0, {size}), got {int(bad)}")


def bits_fit(name, stream, bit_offset, n_bits, message=None):
    """``bit_offset + n_bits`` bits fit in ``stream`` (uint8): ValueError ``message`` otherwise."""
    if bit_offset + n_bits > 8 * stream.shape[0]:
        raise ValueError(message or f"{name} holds {8 * stream.shape[0]} bits, too few for {n_bits} bits "
                                    f"from bit {bit_offset}")


def _preview(values, limit=8):
    listed = values[:limit].tolist()
    return f"{listed}{' ...' if values.shape[0] > limit else ''}"
