"""The algorithm protocol and the registry of algorithm families (federated, lazy).

A family is the run protocol of one kind of algorithm, declared once beside its algorithms (fedjax's
``FederatedAlgorithm(init, apply)`` is the model: an object that says how to start and how to step): its
config table, ``make_run`` and the few words the runner needs (unit, clients and steps settings), plus one
:class:`Report` holding what the command line, the progress bar, ``compare``, ``plot`` and the sweeps say
about its runs. Config validation, the runner and ``fedsim show-config`` ask :data:`FAMILIES` instead of
branching on a family's name. A run builds its model in its constructor (:mod:`fedsim.models.base`).

The run protocol (what :meth:`Family.make_run` returns)::

    run.completed          steps done so far
    run.step() -> dict     one round / iteration; returns its record (JSON-able), appended to run.history
    run.history            the records so far
    run.solve_budget()     settles, before the run folder is made, what the config asks solved on the data
                           (a bit budget out of reach is refused then); may take the first step's work
    run.state_dict()       (arrays, JSON metadata): everything to continue bitwise
    run.load_state_dict(arrays, meta)

A step that meets NaN or inf raises :class:`fedsim.errors.DivergenceError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from fedsim.constraints import lookup, register_into


@dataclass(frozen=True)
class Report:
    """What is said about a family's runs: the CLI's lines, the progress text, the summary, the compare table
    and the figure (each function reads the JSON records of history.jsonl, or the summary made from them)."""

    clients_word: str          # what the data holders are called: "clients" or "workers"
    summarize: Callable        # (records) -> dict: the family's part of summary.json
    progress: Callable         # (record, state dict carried across records) -> progress-bar text
    achieved: Callable         # (summary) -> list of "what the run achieved" phrases, for the CLI
    compare: Callable          # (run results, targets dict) -> the `fedsim compare` table text
    figure: str                # name of the fedsim.plot function that draws the family's runs
    metrics: tuple = ()        # the summary.json metrics a sweep report tabulates; the first is "the result"
    curve: tuple = ()          # (x field, y field, y label, "value" | "residual"): a record's curve in a sweep
    #: Dotted settings besides [data] and [model] that the objective of a "residual" curve depends on: runs
    #: are compared against one f* only where these agree (fedsim.runs.compare.same_data).
    objective: tuple = ()
    #: (a run's config, as parsed TOML) -> the dotted settings and the tables its method ignores
    unused: Callable = lambda config: set()
    #: The record fields compare, plot and export read: name -> (int | float (any number) | list (of ints),
    #: required); the first is the step's number, one more on each line (read_run checks every record).
    fields: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """One algorithm family: its config table, how to build and step a run, and its :class:`Report`."""

    name: str                  # the config's `family` value, and the name of its table ([federated])
    config_class: type         # the frozen dataclass its table is validated into
    make_run: Callable         # (experiment config, dataset, client index arrays) -> a run (protocol above)
    pipeline: str              # the preprocessing pipeline used when data.pipeline is unset
    unit: str                  # what one step is: "round" or "iteration"
    clients_setting: str       # the config_class field giving the number of data holders
    steps_setting: str         # the config_class field giving the number of steps of a complete run
    method_names: Callable     # () -> the names its `method` setting accepts
    report: Report             # what the CLI, progress bar, compare, plot and sweeps say about its runs
    #: Settings of config_class that a config file does not set, and where they come from.
    derived: dict[str, str] = field(default_factory=dict)
    #: Settings left unset (None) whose meaning depends on the config, for `fedsim show-config`:
    #: name -> (whose value it takes, experiment config -> that value).
    unset_meanings: dict[str, tuple[str, Callable[[Any], Any]]] = field(default_factory=dict)

    @property
    def units(self) -> str:
        return self.unit + "s"

    def setting(self, name: str) -> str:
        """The dotted name of one of the family's settings (``federated.n_clients``)."""
        return f"{self.name}.{name}"


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    return register_into(FAMILIES, family.name, family, "algorithm family")


def family(name: str) -> Family:
    """The registered family ``name`` (a one-line error listing the families otherwise)."""
    return lookup(FAMILIES, name, "family")


# ---------------------------------------------------------------------------------------------------------
# helpers of the families' compare tables


def cell(value, spec: str) -> str:
    """A table cell: ``value`` formatted with ``spec``, or "-" for a missing (None or NaN) value."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec)


def run_seconds(run) -> str:
    """The compute time of a run read back from its folder (summary, else the records' own times)."""
    if run.summary is not None and "seconds" in run.summary:
        return f"{run.summary['seconds']:.1f}"
    times = [r["time"] for r in run.history if "time" in r]
    return f"{sum(times):.1f}" if times else "-"


def compare_table(title: str, steps_word: str, columns: list[str], rows: list[list[str]]):
    """A `fedsim compare` table ``(title, headers, rows)``: each row is the run's label, method and steps,
    the family's ``columns`` (from :func:`compare_row`), its compute time and status."""
    return title, ["run", "method", steps_word, *columns, "seconds", "status"], rows


def compare_row(run, *cells: str) -> list[str]:
    """One run's row of :func:`compare_table`, with the family's ``cells``."""
    return [run.label, run.method, str(len(run.history)), *cells, run_seconds(run), run.status]


def group_by_family(runs) -> list[tuple[Family, list]]:
    """``runs`` (anything with a ``family`` name) grouped by registered family, in registration order."""
    return [(declared, [run for run in runs if run.family == name]) for name, declared in FAMILIES.items()
            if any(run.family == name for run in runs)]


__all__ = ["FAMILIES", "Family", "Report", "cell", "compare_row", "compare_table", "family", "group_by_family",
           "register_family", "run_seconds"]
