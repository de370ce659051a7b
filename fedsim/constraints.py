"""One vocabulary for allowed values: a constraint is declared once and read by the check, its one-line error
and the documentation (``fedsim show-config``, docstrings).

A constraint describes itself (``Integer(low=1).describe() == "an integer >= 1"``) and checks a value::

    Integer(low=1).check("federated.rounds", 0)
    # ValueError: federated.rounds must be an integer >= 1, got 0

A value of the wrong kind (a string where a number belongs, a bool where an integer belongs) raises
``TypeError``; a value of the right kind outside the allowed set raises ``ValueError``. Both messages are one
line naming the setting, what is allowed and what was given. ``check`` returns the value normalized to the
Python type the constraint stands for (``numpy.int64(3)`` -> ``3``), so callers keep what it returns (``-0.0`` is
kept: a run folder's config.toml reads back to its fingerprint; ``fedsim run`` takes a new one as ``0.0``).

Config dataclasses declare each field with :func:`setting` (its default, its one-line description and its
constraint) and call :func:`check_fields` in ``__post_init__``; :func:`descriptions` gives the description of
each field for ``show-config``. Checks that relate several fields stay in ``__post_init__``, after
``check_fields``.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np


class Constraint:
    """The allowed values of one setting or argument."""

    def describe(self) -> str:
        """What is allowed, as the end of a sentence "<name> must be ..." (``"an integer >= 1"``)."""
        raise NotImplementedError

    def normalize(self, value):
        """``value`` as the type this constraint stands for; TypeError if it is of the wrong kind."""
        return value

    def allows(self, value) -> bool:
        """Whether a value of the right kind (already normalized) is allowed."""
        return True

    def check(self, name: str, value):
        """``value``, normalized, if it is allowed; else the module's one-line TypeError or ValueError."""
        try:
            normalized = self.normalize(value)
        except TypeError:
            raise TypeError(f"{name} must be {self.describe()}, got {_shown(value)}") from None
        if not self.allows(normalized):
            raise ValueError(f"{name} must be {self.describe()}, got {_shown(value)}")
        return normalized


def _shown(value) -> str:
    """``value`` for an error message: its repr, with its type where the repr hides it."""
    if isinstance(value, (np.generic, np.ndarray)):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, (datetime.date, datetime.time)):      # a TOML date or time, as TOML writes it
        return value.isoformat()
    if isinstance(value, list):                                 # ... also in an array or a table
        return "[" + ", ".join(map(_shown, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key!r}: {_shown(item)}" for key, item in value.items()) + "}"
    return repr(value)


def _bound(value) -> str:
    """A bound as text; the largest values of unsigned and signed integer types as ``2^n - 1``."""
    if isinstance(value, int) and value >= 2 ** 16 - 1 and (value + 1) & value == 0:
        return f"2^{value.bit_length()} - 1"
    return str(value)


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    """``"in [0, 1)"``, ``">= 1"`` or ``"> 0"``: the shortest text for the interval."""
    low, high = (None if bound is None else _bound(bound) for bound in (low, high))
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


@dataclass(frozen=True)
class Integer(Constraint):
    """An integer (a Python or NumPy integer, never a bool) in ``[low, high]``; either bound may be None."""

    low: int | None = None
    high: int | None = None

    def describe(self) -> str:
        bounds = _interval(self.low, self.high, False, False)
        return f"an integer {bounds}" if bounds else "an integer"

    def normalize(self, value) -> int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError
        return int(value)

    def allows(self, value: int) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class Real(Constraint):
    """A finite real number (an integer is accepted and becomes a float; a bool never is) in the interval given
    by ``low``, ``high`` and whether each end is open; either bound may be None."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        bounds = _interval(self.low, self.high, self.low_open, self.high_open)
        return f"a finite number {bounds}" if bounds else "a finite number"

    def normalize(self, value) -> float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError
        return float(value)

    def allows(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


@dataclass(frozen=True)
class OneOf(Constraint):
    """One of a fixed set of values (strings, usually)."""

    choices: tuple

    def __init__(self, *choices):
        object.__setattr__(self, "choices", tuple(choices))

    def describe(self) -> str:
        return "one of " + ", ".join(repr(choice) for choice in self.choices)

    def normalize(self, value):
        # A value no choice could equal (a list where strings are expected) is of the wrong kind.
        if not isinstance(value, tuple(type(choice) for choice in self.choices)):
            raise TypeError
        return value

    def allows(self, value) -> bool:
        return value in self.choices


@dataclass(frozen=True)
class Registered(Constraint):
    """One of the names ``names()`` gives when the value is checked: a registry that may still grow after the
    declaration (the federated methods, one pair per registered compressor)."""

    names: Callable[[], Iterable]

    def describe(self) -> str:
        return OneOf(*self.names()).describe()

    def check(self, name: str, value):
        return OneOf(*self.names()).check(name, value)


@dataclass(frozen=True)
class Flag(Constraint):
    """``true`` or ``false`` (a Python or NumPy bool)."""

    def describe(self) -> str:
        return "true or false"

    def normalize(self, value) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError
        return bool(value)


@dataclass(frozen=True)
class Text(Constraint):
    """A string; with ``nonempty``, one with at least one character that is not white space."""

    nonempty: bool = False

    def describe(self) -> str:
        return "a non-empty string" if self.nonempty else "a string"

    def normalize(self, value) -> str:
        if not isinstance(value, str):
            raise TypeError
        return value

    def allows(self, value: str) -> bool:
        return not self.nonempty or bool(value.strip())


@dataclass(frozen=True)
class Optional(Constraint):
    """``None`` (unset, with the meaning ``unset`` says) or a value that ``inner`` allows."""

    inner: Constraint
    unset: str = "unset"

    def describe(self) -> str:
        return f"{self.inner.describe()}, or unset ({self.unset})"

    def check(self, name: str, value):
        if value is None:
            return None
        try:
            return self.inner.check(name, value)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name} must be {self.describe()}, got {_shown(value)}") from None


# ---------------------------------------------------------------------------------------------------------
# config dataclasses

DESCRIPTION = "description"
CONSTRAINT = "constraint"
SYMBOL = "symbol"


def setting(default, description: str, constraint: Constraint | None = None, *, symbol: str | None = None,
            **field_options):
    """A dataclass field with its ``default``, its one-line ``description`` and its ``constraint``
    (``default_factory`` may replace ``default`` by passing ``default=dataclasses.MISSING``). ``symbol``:
    the letter the equations use for it (``"b"``), shown in its errors and before its description."""
    metadata = {DESCRIPTION: description, CONSTRAINT: constraint, SYMBOL: symbol}
    return dataclasses.field(default=default, metadata=metadata, **field_options)


def check_fields(instance, prefix: str = "") -> None:
    """Check every field of the (frozen) dataclass ``instance`` that declares a constraint, and store the
    normalized value; errors name the field as ``prefix + name``, with its symbol (``bits (b)``)."""
    for field in dataclasses.fields(instance):
        constraint = field.metadata.get(CONSTRAINT)
        if constraint is not None:
            symbol = field.metadata.get(SYMBOL)
            name = prefix + field.name + (f" ({symbol})" if symbol else "")
            object.__setattr__(instance, field.name, constraint.check(name, getattr(instance, field.name)))


def descriptions(cls) -> dict[str, str]:
    """The one-line description of each field of the dataclass ``cls`` that has one (``"b, bits per
    quantized entry"`` for a field with a symbol)."""
    return {field.name: ", ".join(filter(None, (field.metadata.get(SYMBOL), field.metadata[DESCRIPTION])))
            for field in dataclasses.fields(cls) if DESCRIPTION in field.metadata}


def constraint_of(cls, name: str) -> Constraint | None:
    """The constraint declared for field ``name`` of the dataclass ``cls`` (None if it declares none)."""
    return {field.name: field for field in dataclasses.fields(cls)}[name].metadata.get(CONSTRAINT)


# ---------------------------------------------------------------------------------------------------------
# registries: a name's allowed values are the registered names


def register_into(registry: dict, name: str, value, what: str):
    """``registry[name] = value`` (returns ``value``); ValueError if another value holds ``name``."""
    if name in registry and registry[name] is not value:
        raise ValueError(f"{what} {name!r} is registered twice")
    registry[name] = value
    return value


def lookup(registry: dict, name, what: str):
    """``registry[name]``, or a one-line error naming ``what`` and the registered names."""
    return registry[OneOf(*registry).check(what, name)]
