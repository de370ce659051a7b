"""Argument checks of the public kernels: plain Python, run before any jitted code.

A jitted kernel trusts its arguments: numba does no bounds checking, so a short output buffer, an offset
past the end of a stream or a position outside a vector is read or written out of bounds (a segfault, or
silently corrupted memory). Every public kernel is therefore a plain-Python function that checks its
arguments and then calls an unchecked jitted *core*. Its argument contract is declared once, one spec per
argument, and both the check and the hostile-argument tests (tests/kernels/test_kernel_arguments.py) are
derived from it::

    @checked(_ternarize_core, x=FLOAT_VECTOR, k=Budget(size="x"),
             positions_out=Array(INT64, output=True, at_least=_kept),
             signs_out=Array(INT8, output=True, at_least=_kept))
    def ternarize(x, k, positions_out, signs_out):
        '''The public contract (the body is not run).'''

:func:`checked` makes the kernel ``core(*check(...))``. The result also has

* ``.contract`` and ``.extra``: the declaration (the hostile-argument tests read it);
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

import copy
import functools
import inspect
import math
import operator

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
# Index arrays up to this length are checked as Python lists (cheaper than NumPy calls on short arrays).
SHORT_ARRAY = 64


def checked(core, extra=None, **contract):
    """Decorator: the public kernel ``core(*check(...))`` from the argument contract of the decorated
    function (its signature and docstring; its body is not run).

    ``contract`` gives every argument a spec. A bound that depends on other arguments is a function whose
    parameters are named after them (``at_least=lambda k, x: min(k, x.shape[0])``), or the name of the
    argument whose length (an array) or value (an integer) it is (``within="x"``, ``at_least="count"``);
    the specs run in signature order, except that a spec runs after the arguments its bounds name.
    Relations a spec cannot say (samples within their segments) are small functions of the arguments they
    name, declared next to the kernel: a spec's ``then`` runs right after that spec (for a relation that
    later bounds rely on), ``extra`` after all of them."""
    def decorate(public):
        signature = inspect.signature(public)
        names = tuple(signature.parameters)
        if set(contract) != set(names):
            raise TypeError(f"{public.__name__}: the contract names {sorted(contract)}, the signature "
                            f"{list(names)}")
        # Each spec with its bounds reading the arguments by position (no per-call dictionary), run after
        # the arguments they name.
        specs = {name: contract[name].at_positions(names) for name in names}
        steps = tuple((names.index(name), name, specs[name].check, specs[name].then)
                      for name in _order(names, contract))
        relations = None if extra is None else _positional(extra, names)

        def check(*args, **kwargs):
            values = list(args if not kwargs and len(args) == len(names) else
                          _bind(signature, names, args, kwargs))
            for i, name, check_spec, then in steps:
                values[i] = check_spec(name, values[i], values)
                if then is not None:
                    then(values)
            if relations is not None:
                relations(values)
            return values

        @functools.wraps(public)
        def kernel(*args, **kwargs):
            return core(*check(*args, **kwargs))

        def py_func(*args, **kwargs):
            return core.py_func(*check(*args, **kwargs))

        def jitted_call(*args):
            def call_core(*args):
                return core(*args)
            return call_core

        check.__name__ = check.__qualname__ = f"{public.__name__}.check"
        py_func.__name__ = public.__name__
        py_func.__qualname__ = f"{public.__qualname__}.py_func"
        py_func.__doc__ = f"{public.__name__} with the core's pure-Python body (core.py_func)."
        kernel.core, kernel.check, kernel.py_func, kernel.extra = core, check, py_func, extra
        kernel.contract = {name: contract[name] for name in names}
        overload(kernel, jit_options=JIT_OPTIONS)(jitted_call)
        return kernel
    return decorate


def python_core(body, **pieces):
    """A core written in plain Python over jitted ``pieces`` (keyword arguments of ``body``): ``body`` with
    them; its ``.py_func`` passes their pure-Python bodies instead."""
    core = functools.partial(body, **pieces)
    core.py_func = functools.partial(body, **{name: piece.py_func for name, piece in pieces.items()})
    return core


def _order(names, contract):
    """The arguments in signature order, except that each comes after those its bounds name."""
    order = []

    def visit(name, path):
        if name in path:
            raise TypeError(f"the bounds of {' -> '.join(path + (name,))} name each other")
        if name not in order:
            for other in contract[name].depends():
                if other != name:
                    visit(other, path + (name,))
            order.append(name)

    for name in names:
        visit(name, ())
    return order


def _bind(signature, names, args, kwargs):
    """The arguments in signature order (keywords placed; Python's TypeError for a wrong call)."""
    if len(args) + len(kwargs) == len(names) and all(name in kwargs for name in names[len(args):]):
        return args + tuple(kwargs[name] for name in names[len(args):])
    return signature.bind(*args, **kwargs).args


def _named(bound):
    """The arguments a bound names (see :func:`resolve`)."""
    if isinstance(bound, str):
        return (bound,)
    if callable(bound):
        return tuple(inspect.signature(bound).parameters)
    return ()


def _length_or_value(value):
    return value.shape[0] if isinstance(value, np.ndarray) else value


def resolve(bound, args):
    """A bound's value for the arguments ``args`` (by name): a constant as it is, an argument's name as
    that argument's length (an array) or value (an integer), a function called with the arguments it
    names."""
    names = tuple(args)
    return _positional(bound, names)([args[name] for name in names])


def _positional(bound, names):
    """``bound`` (see :func:`resolve`) as a function of the list of a kernel's arguments (``names``)."""
    if isinstance(bound, str):
        index = names.index(bound)
        return lambda values: _length_or_value(values[index])
    if callable(bound):
        indices = [names.index(name) for name in inspect.signature(bound).parameters]
        if len(indices) == 1:                  # (the common cases spelled out: cheaper than a loop)
            (first,) = indices
            return lambda values: bound(values[first])
        if len(indices) == 2:
            first, second = indices
            return lambda values: bound(values[first], values[second])
        getter = operator.itemgetter(*indices)
        return lambda values: bound(*getter(values))
    return lambda values: bound


class Spec:
    """An argument's contract: ``check(name, value, values)`` returns the value the core receives
    (``values``: the kernel's arguments in signature order, those that the bounds name checked)."""

    BOUNDS = ()                           # the attributes that may depend on other arguments
    then = None                           # a relation checked right after this argument (checked)

    def depends(self):
        """The arguments that this spec's bounds and its ``then`` name."""
        return [name for attribute in self.BOUNDS + ("then",) for name in _named(getattr(self, attribute))]

    def at_positions(self, names):
        """This spec for a kernel with arguments ``names``: each bound a function of the values."""
        if not self.BOUNDS and self.then is None:
            return self
        bound = copy.copy(self)
        if self.then is not None:
            bound.then = _positional(self.then, names)
        for attribute in self.BOUNDS:
            value = getattr(self, attribute)
            if value is not None and value is not False:
                setattr(bound, attribute, _positional(value, names))
        return bound


class Array(Spec):
    """A NumPy array argument: one of ``dtypes`` (or the dtype of the argument named ``like``), ``ndim``
    dimensions (None: any number >= 1), C-contiguous if ``contiguous``, writable if ``output``.

    Bounds on other arguments (:func:`checked`): ``at_least`` entries along the first axis, or exactly
    ``shape`` (a tuple; None: not checked in this call); every entry in [0, ``within``); ``nonnegative``
    (True, or a bound saying whether): every entry >= 0."""

    BOUNDS = ("at_least", "shape", "within", "nonnegative")

    def __init__(self, dtypes, ndim=1, output=False, contiguous=True, at_least=None, shape=None, like=None,
                 within=None, nonnegative=False, then=None):
        self.dtypes, self.ndim, self.output, self.contiguous, self.then = dtypes, ndim, output, contiguous, then
        self.at_least, self.shape, self.like = at_least, shape, like
        self.within, self.nonnegative = within, nonnegative
        self._bounded = not (at_least is like is within is None and not nonnegative)
        self._like_index = None

    def depends(self):
        return super().depends() + ([self.like] if self.like is not None else [])

    def at_positions(self, names):
        bound = super().at_positions(names)
        if self.like is not None:
            bound._like_index = names.index(self.like)
        return bound

    def check(self, name, value, values):
        shape = None if self.shape is None else self.shape(values)
        array(name, value, self.dtypes, self.ndim if shape is None else len(shape), self.output, self.contiguous)
        if shape is not None and value.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
        if self._bounded:
            self._check_bounds(name, value, values)
        return value

    def _check_bounds(self, name, value, values):
        if self.at_least is not None:
            length = self.at_least(values)
            if value.shape[0] < length:
                raise ValueError(f"{name} has {value.shape[0]} entries, needs at least {length}")
        if self.like is not None:
            like = values[self._like_index]
            if value.dtype != like.dtype:
                raise TypeError(f"{name} must have the dtype of {self.like} ({like.dtype}), got {value.dtype}")
        if self.nonnegative and self.nonnegative(values) and value.shape[0] and smallest(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {smallest(value)}")
        if self.within is not None:
            # one pass: the maximum of the entries read as unsigned integers (a negative one reads as >= 2^63)
            size = self.within(values)
            if value.size and value.view(f"u{value.dtype.itemsize}").max() >= size:
                bad = value[(value < 0) | (value >= size)][0]
                raise ValueError(f"{name} must be in [0, {size}), got {int(bad)}")

    def accepted_dtypes(self, args):
        """The dtypes accepted in a call with these (valid) arguments (by name)."""
        return (args[self.like].dtype,) if self.like is not None else self.dtypes


class Stream(Spec):
    """A bit stream (a 1-D uint8 array; writable if ``output``) holding ``bits`` bits (a bound) from the bit
    offset ``start`` (a bound); ``message``: the error's text if it is too short (default: the numbers)."""

    BOUNDS = ("start", "bits")

    def __init__(self, output=False, start=0, bits=0, message=None):
        self.output, self.start, self.bits, self.message = output, start, bits, message

    def check(self, name, value, values):
        array(name, value, UINT8, 1, self.output)
        start, bits = self.start(values), self.bits(values)
        if start + bits > 8 * value.shape[0]:
            raise ValueError(self.message or f"{name} holds {8 * value.shape[0]} bits, too few for {bits} bits "
                                             f"from bit {start}")
        return value


class Count(Spec):
    """An integer argument (``int`` or a NumPy integer, not ``bool``) in [low, high] (constants or bounds on
    other arguments, :func:`checked`); ``label``: what the errors call it (default: its name)."""

    BOUNDS = ("low", "high")

    def __init__(self, low=0, high=INT64_MAX, label=None, then=None):
        self.low, self.high, self.label, self.then = low, high, label, then

    def at_positions(self, names):
        constant = self.then is None and not any(callable(bound) or isinstance(bound, str)
                                                 for bound in (self.low, self.high))
        return self if constant else super().at_positions(names)

    def check(self, name, value, values):
        low, high = self.low, self.high
        return integer(self.label or name, value, low(values) if callable(low) else low,
                       high(values) if callable(high) else high)


class Budget(Spec):
    """A budget k >= 0 of a vector of ``size`` entries (a bound, :func:`checked`), passed on as
    ``min(k, size + 1)``: the kept set has at most ``size`` entries, so the result does not change, and
    the kernels' buffer arithmetic (``2 k``) stays far from int64 overflow."""

    BOUNDS = ("size",)
    low, high = 0, INT64_MAX

    def __init__(self, size):
        self.size = size

    def check(self, name, value, values):
        return min(integer(name, value), self.size(values) + 1)


class Real(Spec):
    """A finite real argument, ``>= low`` (``> low`` if ``low_open``; no bound if ``low`` is None)."""

    def __init__(self, low=None, low_open=False):
        self.low, self.low_open = low, low_open

    def check(self, name, value, values):
        if type(value) is not float:
            if type(value) is not int and not isinstance(value, (np.integer, np.floating)):
                raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
            value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
        low = self.low
        if low is not None and (value <= low if self.low_open else value < low):
            raise ValueError(f"{name} must be {'>' if self.low_open else '>='} {low}, got {value}")
        return value


class Flag(Spec):
    """A ``bool`` or ``numpy.bool_`` argument."""

    def check(self, name, value, values):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
        return bool(value)


class Choice(Spec):
    """An integer argument that must be one of ``values`` (nonnegative, increasing)."""

    def __init__(self, values):
        self.values = values

    def check(self, name, value, values):
        value = integer(name, value, 0, self.values[-1])
        if value not in self.values:
            raise ValueError(f"{name} must be {' or '.join(map(str, self.values))}, got {value}")
        return value


class Offsets(Spec):
    """Segment offsets (int64, S + 1 >= 1 entries) cutting [0, ``total``) (a bound, :func:`checked`): from 0,
    never decreasing, to the total; ``total`` None: to wherever they end."""

    BOUNDS = ("total",)

    def __init__(self, total=None):
        self.total = total

    def check(self, name, value, values):
        array(name, value, INT64)
        n = value.shape[0]
        if n == 0:
            raise ValueError(f"{name} must hold S + 1 >= 1 offsets, got none")
        total = int(value[-1]) if self.total is None else self.total(values)
        if n <= SHORT_ARRAY:
            listed = value.tolist()
            valid = listed[0] == 0 and listed[-1] == total and listed == sorted(listed)
        else:
            valid = value[0] == 0 and value[-1] == total and not np.any(value[1:] < value[:-1])
        if not valid:
            raise ValueError(f"{name} must run from 0 to {total} without decreasing, got "
                             f"{value[:8].tolist()}{' ...' if n > 8 else ''}")
        return value


FLOAT_BITS = Choice((32, 64))
FLOAT_VECTOR = Array(FLOAT)


# The batched kernels: K updates (rows, float32 or float64) cut into S segments by their offsets, and
# their outputs: per entry (K, P) and per (row, segment) (K, S) in the updates' dtype, per row (K,) int64.
def rows(updates):
    return (updates.shape[0],)


def segments(segment_offsets):
    return (segment_offsets.shape[0] - 1,)


def rows_by_segments(updates, segment_offsets):
    return (updates.shape[0], segment_offsets.shape[0] - 1)


def updates_shape(updates):
    return updates.shape


UPDATES = Array(FLOAT, ndim=2)
SEGMENT_OFFSETS = Offsets(total=lambda updates: updates.shape[1])
PER_ENTRY_OUT = Array(FLOAT, output=True, shape=updates_shape, like="updates")
PER_SEGMENT_OUT = Array(FLOAT, output=True, shape=rows_by_segments, like="updates")
ENCODED_BITS_OUT = Array(INT64, output=True, shape=rows)


def _dtype_names(dtypes) -> str:
    names = [str(d) for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def array(name, value, dtypes, ndim=1, writable=False, contiguous=True):
    """``value`` if it is a C-contiguous (unless ``contiguous`` is False) ``ndim``-D (None: at least 1-D)
    NumPy array of one of ``dtypes`` (and writable if asked); TypeError for a wrong type or dtype,
    ValueError otherwise."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array of dtype {_dtype_names(dtypes)}, got "
                        f"{type(value).__name__}")
    if value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_dtype_names(dtypes)}, got {value.dtype}")
    if ndim is None and value.ndim == 0:
        raise ValueError(f"{name} must be an array of at least one dimension, got a 0-D array")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {value.shape}")
    flags = value.flags
    if contiguous and not flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (np.ascontiguousarray gives a contiguous copy)")
    if writable and not flags.writeable:
        raise ValueError(f"{name} must be writable (it is an output)")
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


def smallest(values):
    """The smallest entry of a nonempty integer array, as an int."""
    return min(values.tolist()) if values.shape[0] <= SHORT_ARRAY else int(values.min())
