"""The algorithm protocol and the registry of algorithm families (federated, lazy).

A family is everything the experiment layer, the command line and the figures need to know about one kind
of algorithm, declared once beside its algorithms (fedjax's ``FederatedAlgorithm(init, apply)`` is the
model: an object that says how to start and how to step, and nothing else is special-cased). Config
validation, the runner, ``fedsim show-config``, ``compare`` and ``plot`` ask :data:`FAMILIES` instead of
branching on a family's name.

The run protocol (what :meth:`Family.make_run` returns)::

    run.completed          steps done so far
    run.step() -> dict     one round / iteration; returns its record (JSON-able), appended to run.history
    run.history            the records so far
    run.state_dict()       (arrays, JSON metadata): everything to continue bitwise
    run.load_state_dict(arrays, meta)

A step that meets NaN or inf raises :class:`fedsim.errors.DivergenceError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Family:
    """One algorithm family: its config table, how to build and step a run, its metrics and figures."""

    name: str                  # the config's `family` value, and the name of its table ([federated])
    description: str           # one line, for help texts
    config_class: type         # the frozen dataclass its table is validated into
    make_run: Callable         # (experiment config, dataset, client index arrays) -> a run (protocol above)
    pipeline: str              # the preprocessing pipeline used when data.pipeline is unset
    unit: str                  # what one step is: "round" or "iteration"
    clients_word: str          # what the data holders are called: "clients" or "workers"
    clients_setting: str       # the config_class field giving their number
    steps_setting: str         # the config_class field giving the number of steps of a complete run
    summarize: Callable        # (records) -> dict: the family's part of summary.json
    progress: Callable         # (record, state dict carried across records) -> progress-bar text
    report: Callable           # (summary) -> list of "what the run achieved" phrases, for the CLI
    compare: Callable          # (run results, targets dict) -> the `fedsim compare` table text
    figures: str               # name of the fedsim.plot function that draws the family's runs
    method_names: Callable     # () -> the names its `method` setting accepts
    metrics: tuple = ()        # the summary.json metrics a sweep report tabulates; the first is "the result"
    curve: tuple = ()          # (x field, y field, y label, "value" | "residual"): a record's curve in a sweep
    #: Settings of config_class that a config file does not set, and where they come from.
    derived: dict[str, str] = field(default_factory=dict)
    #: Settings left unset (None) and what that means, for `fedsim show-config`:
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
    if family.name in FAMILIES and FAMILIES[family.name] is not family:
        raise ValueError(f"algorithm family {family.name!r} is registered twice")
    FAMILIES[family.name] = family
    return family


def family(name: str) -> Family:
    """The registered family ``name`` (ValueError listing the families otherwise)."""
    if name not in FAMILIES:
        raise ValueError(f"family must be one of {list(FAMILIES)}, got {name!r}")
    return FAMILIES[name]


__all__ = ["FAMILIES", "Family", "family", "register_family"]


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


__all__ += ["cell", "run_seconds"]


def group_by_family(runs) -> list[tuple[Family, list]]:
    """``runs`` (anything with a ``family`` name) grouped by registered family, in registration order."""
    return [(declared, [run for run in runs if run.family == name]) for name, declared in FAMILIES.items()
            if any(run.family == name for run in runs)]


__all__ += ["group_by_family"]
