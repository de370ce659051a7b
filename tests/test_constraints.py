"""The validation vocabulary (fedsim.constraints): what each constraint allows and says, and the settings
of every config table declared with it."""

import dataclasses
import datetime
import math
from dataclasses import dataclass

import numpy as np
import pytest

from fedsim.config import DERIVED, TABLES, ExperimentConfig, RunConfig
from fedsim.constraints import (CONSTRAINT, Flag, Integer, OneOf, Optional, Real, Registered, Text,
                                check_fields, descriptions, lookup, register_into, setting)


@pytest.mark.parametrize("constraint, text", [
    (Integer(low=1), "an integer >= 1"), (Integer(1, 16), "an integer in [1, 16]"), (Integer(), "an integer"),
    (Integer(0, 2 ** 64 - 1), "an integer in [0, 2^64 - 1]"),
    (Integer(1, 2 ** 31 - 1), "an integer in [1, 2^31 - 1]"),
    (Real(0, 1, low_open=True), "a finite number in (0, 1]"),
    (Real(0, 1, high_open=True), "a finite number in [0, 1)"),
    (Real(0, low_open=True), "a finite number > 0"), (Real(high=2), "a finite number <= 2"),
    (Real(), "a finite number"), (OneOf("a", "b"), "one of 'a', 'b'"), (Flag(), "true or false"),
    (Text(nonempty=True), "a non-empty string"),
    (Optional(Real(), "the default"), "a finite number, or unset (the default)"),
])
def test_each_constraint_describes_itself(constraint, text):
    assert constraint.describe() == text


@pytest.mark.parametrize("constraint, value, normalized", [
    (Integer(low=1), np.int64(3), 3), (Real(low=0), 2, 2.0), (Real(), np.float32(0.5), 0.5),
    (Flag(), np.bool_(True), True), (Optional(Integer()), None, None), (OneOf("a", "b"), "b", "b"),
    (Text(), "", ""), (Real(low=0), -0.0, -0.0),    # kept: a config.toml reads back to its fingerprint (tests/runs)
])
def test_check_returns_the_value_normalized(constraint, value, normalized):
    checked = constraint.check("x", value)
    assert repr(checked) == repr(normalized) and type(checked) is type(normalized)


@pytest.mark.parametrize("constraint, value, error, message", [
    (Integer(low=1), 0, ValueError, "x must be an integer >= 1, got 0"),
    (Integer(low=1), True, TypeError, "x must be an integer >= 1, got True"),
    (Integer(low=1), 1.0, TypeError, "x must be an integer >= 1, got 1.0"),
    (Integer(low=1), np.int8(0), ValueError, "x must be an integer >= 1, got int8 np.int8(0)"),
    (Real(0, 1, low_open=True), 0.0, ValueError, "x must be a finite number in (0, 1], got 0.0"),
    (Real(), math.nan, ValueError, "x must be a finite number, got nan"),
    (Real(), math.inf, ValueError, "x must be a finite number, got inf"),
    (Real(), "1", TypeError, "x must be a finite number, got '1'"),
    (Real(), False, TypeError, "x must be a finite number, got False"),
    (OneOf("a", "b"), "c", ValueError, "x must be one of 'a', 'b', got 'c'"),
    (OneOf("a", "b"), ["a"], TypeError, "x must be one of 'a', 'b', got ['a']"),
    (Flag(), 1, TypeError, "x must be true or false, got 1"),
    (Real(), datetime.date(1979, 5, 27), TypeError, "x must be a finite number, got 1979-05-27"),   # TOML dates
    (Integer(), datetime.time(7, 32), TypeError, "x must be an integer, got 07:32:00"),
    (Real(), [datetime.date(1979, 5, 27), "a"], TypeError, "x must be a finite number, got [1979-05-27, 'a']"),
    (Real(), {"a": [datetime.date(1979, 5, 27)]}, TypeError, "x must be a finite number, got {'a': [1979-05-27]}"),
    (Text(nonempty=True), "  ", ValueError, "x must be a non-empty string, got '  '"),
    (Optional(Integer(low=0), "none"), -1, ValueError, "x must be an integer >= 0, or unset (none), got -1"),
])
def test_a_bad_value_gets_one_line_naming_the_setting_and_what_is_allowed(constraint, value, error, message):
    with pytest.raises(error) as caught:
        constraint.check("x", value)
    assert str(caught.value) == message and type(caught.value) is error


def test_registered_names_are_read_when_checked_and_registries_refuse_a_second_holder():
    registry = {}
    known = Registered(lambda: registry)
    register_into(registry, "first", 1, "thing")
    assert known.check("thing", "first") == "first"
    register_into(registry, "second", 2, "thing")           # a registry that grows after the declaration
    assert known.describe() == "one of 'first', 'second'" and lookup(registry, "second", "thing") == 2
    assert register_into(registry, "second", 2, "thing") == 2          # the same value again: fine
    with pytest.raises(ValueError, match="thing 'second' is registered twice"):
        register_into(registry, "second", 3, "thing")
    with pytest.raises(ValueError, match="thing must be one of 'first', 'second', got 'third'"):
        lookup(registry, "third", "thing")


def test_setting_check_fields_and_descriptions():
    @dataclass(frozen=True)
    class Settings:
        bits: int = setting(4, "bits per entry", Integer(1, 16), symbol="b")
        rate: float = setting(1, "a rate", Real(0, low_open=True))
        free: str = "x"                                      # a plain field: neither checked nor described

        def __post_init__(self):
            check_fields(self, "table.")

    assert type(Settings().rate) is float
    assert descriptions(Settings) == {"bits": "b, bits per entry", "rate": "a rate"}
    with pytest.raises(ValueError, match=r"^table\.bits \(b\) must be an integer in \[1, 16\], got 0$"):
        Settings(bits=0)


@pytest.mark.parametrize("table", list(TABLES) + ["top level"])
def test_every_setting_a_config_file_may_hold_declares_a_constraint_and_a_description(table):
    cls = ExperimentConfig if table == "top level" else TABLES[table]
    settable = [f for f in dataclasses.fields(cls) if (table, f.name) not in DERIVED
                and not (table == "top level" and f.name not in ("family", "seed"))]
    assert settable
    for field in settable:
        assert field.metadata.get(CONSTRAINT) is not None, f"{table}.{field.name} declares no constraint"
        assert descriptions(cls).get(field.name), f"{table}.{field.name} has no description"


def test_run_config_is_checked_by_its_declarations():
    assert RunConfig(checkpoint_every=0, f_star=1).f_star == 1.0
    assert RunConfig(checkpoint_every=0).checkpoint_every == 0
    with pytest.raises(ValueError, match=r"f_star must be a finite number, or unset \(the smallest objective"):
        RunConfig(f_star=math.inf)
    with pytest.raises(TypeError, match="checkpoint_every must be an integer >= 0"):
        RunConfig(checkpoint_every=1.5)
    with pytest.raises(ValueError, match=r"blas_threads must be an integer in \[1, 1024\], got 0"):
        RunConfig(blas_threads=0)
