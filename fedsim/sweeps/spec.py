"""A sweep file: a base experiment and axes, expanded into the runs of the sweep.

::

    # examples/sweeps/stc_noniid.toml
    base = "stc-mnist"                  # a preset, or:  config = "my.toml" (relative to the sweep file)
    name = "stc-noniid"                 # optional (a folder name: letters, digits, . _ -); default: the file's stem

    [set]                               # settings every run shares (as `fedsim run --set`)
    "data.dataset" = "fashion-mnist"
    "federated.rounds" = 100

    [grid]                              # the cartesian product of these axes
    "federated.method" = ["fedavg", "signsgd", "topk_updown", "stc_updown"]
    "data.classes_per_client" = [1, 2, 4, 10]
    seed = [0, 1, 2]

    [zip]                               # optional: axes walked together (equal lengths), one more grid axis
    "federated.p_up" = [0.001, 0.01]
    "federated.p_down" = [0.002, 0.02]

Keys are dotted settings, quoted or as TOML dotted keys (``federated.method = [...]``). Every run's
config is resolved and validated before anything runs, so an invalid axis fails with one line naming the
setting. A run's folder is ``runs/<label>-<hash>``: the label from its axis values (one over
:data:`LABEL_LENGTH` characters keeps its first whole settings that fit, then ``,...``: never part of a value),
the hash the first 10 hex digits of its full resolved config's sha256 (:func:`fedsim.config.config_fingerprint`),
so the same settings always map to the same folder and a rerun finds it.

The file is read once: its text (:attr:`Sweep.text`) and the runs planned from it are all a sweep uses, so
editing or deleting the file while the sweep runs changes nothing. A sweep's identity
(:attr:`Sweep.identity`) is the sha256 of its normalized plan: the axes and every run's label and config
sha256, so comments, spacing and the order of ``[set]`` keys do not change it, and any change of what runs does.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from fedsim.config import (TABLES, ConfigError, ExperimentConfig, all_settings, config_fingerprint, import_plugins,
                           load_config_file, load_preset, parse_toml, suggest, table_fields)

TOP_LEVEL = ("base", "config", "name", "set", "grid", "zip")
#: A sweep's name is the name of its folder (runs/<name> by default): no path separators, no "..", not empty.
SWEEP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
#: The longest label a run folder's name shows (:func:`folder_label`).
LABEL_LENGTH = 80


def run_label(values) -> str:
    """A run's name from its (setting, value) pairs: ``method=stc_updown,seed=0`` (the last part of each setting)."""
    return ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in values)


def run_settings(values) -> str:
    """A run's (setting, value) pairs as messages name them: ``data.classes_per_client = 7, seed = 0``."""
    return ", ".join(f"{key} = {value!r}" for key, value in values)


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its axis values, its overrides and its resolved config."""

    values: tuple[tuple[str, object], ...]       # (setting, value) of each axis, in axis order
    overrides: tuple[tuple[str, object], ...]    # everything applied on the base: [set] then the axes
    config: ExperimentConfig = field(compare=False)
    folder_name: str = ""

    @property
    def label(self) -> str:
        return run_label(self.values)

    @property
    def config_sha256(self) -> str:
        """As meta.json records it (:func:`fedsim.config.config_fingerprint`)."""
        return config_fingerprint(self.config)

    @property
    def earlier_folder_names(self) -> tuple[str, str]:
        """The folders earlier fedsims named this run: before labels over 80 characters were cut between settings
        (in a value, then), and before names kept '+' and brackets (as '-', then); :attr:`folder_name` where the
        label holds neither."""
        digest = self.config_sha256[:10]
        return f"{_safe(self.label)}-{digest}", f"{folder_label(self.values, _cleaned)}-{digest}"


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: where it came from, its base, axes and runs."""

    name: str
    source: Path
    base: str                                    # "preset NAME" or the config file's path
    fixed: tuple[tuple[str, object], ...]        # the [set] table
    axes: tuple[tuple[str, tuple], ...]          # grid axes, then zipped axes, in file order
    zipped: tuple[str, ...]                      # which axes are walked together
    runs: tuple[PlannedRun, ...]
    text: str = ""                               # the sweep file's text as read, once

    @property
    def identity(self) -> str:
        """sha256 of the normalized plan: the axes (zipped marked) and each run's label and config sha256."""
        plan = {"axes": [[name, list(values)] for name, values in self.axes], "zipped": list(self.zipped),
                "runs": [[planned.label, planned.config_sha256] for planned in self.runs]}
        return hashlib.sha256(json.dumps(plan, sort_keys=True).encode("utf-8")).hexdigest()


def _flatten(table: dict, prefix: str = "") -> dict:
    """Nested TOML tables -> dotted keys (``{"federated": {"method": [...]}}`` -> ``federated.method``)."""
    flat = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _cleaned(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "-", text).strip("-.")


def _safe(text: str) -> str:
    return _cleaned(text)[:80] or "run"


def _shown(text: str) -> str:
    """``text`` in a folder name: '+' and brackets kept (lr=1e+20, hidden=[32,16]), no space after a comma, any
    other run of characters a name should not hold as '-'."""
    return re.sub(r"[^A-Za-z0-9_.=,+\[\]-]+", "-", text.replace(", ", ",")).strip("-.")


def folder_label(values, clean=_shown) -> str:
    """The label in a run folder's name: :func:`run_label` made a folder name (``clean``: :func:`_cleaned` gives
    earlier fedsims' names, brackets and '+' as '-'). One longer than :data:`LABEL_LENGTH` keeps the first whole
    settings that fit and ends ``,...`` (the hash after it tells the runs apart), so what a name shows is true;
    sweep folders of earlier fedsims find their runs (:attr:`PlannedRun.earlier_folder_names`)."""
    label = clean(run_label(values))
    if len(label) <= LABEL_LENGTH:
        return label or "run"
    kept = []
    for part in (clean(run_label([pair])) for pair in values):
        if len(",".join([*kept, part, "..."])) > LABEL_LENGTH:
            break
        kept.append(part)
    return ",".join([*kept, "..."]) if kept else "run"


def _sweep_name(raw: dict, path: Path) -> str:
    """The sweep's name: ``name`` if it is a safe folder name (else ConfigError), or the file's stem made one."""
    if "name" not in raw:
        return _safe(path.stem)
    name = raw["name"]
    if not isinstance(name, str) or not SWEEP_NAME.fullmatch(name):
        raise ConfigError(f"{path.name}: name = {name!r} cannot name the sweep's folder: give 1 to 100 letters, "
                          f"digits, '_', '-' or '.', not starting with '.' or '-' (no '/', no '..')")
    return name


def _base_plugins(raw: dict, path: Path) -> list:
    """The ``plugins`` of the sweep's base config file (none for a preset); the file's own errors are left
    for when it is loaded."""
    if "config" not in raw:
        return []
    try:
        plugins = parse_toml((path.parent / str(raw["config"])).read_text(encoding="utf-8"), "").get("plugins", [])
    except (OSError, UnicodeDecodeError, ConfigError):
        return []
    return plugins if isinstance(plugins, list) else []


def load_sweep(path, notes: list | None = None) -> Sweep:
    """Read and expand the sweep file at ``path`` (ConfigError, one line, on anything invalid); the settings its
    runs set but none of them uses go into ``notes`` if given, each once with every run's reason
    (:func:`fedsim.config.unused_tables`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read sweep file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:     # as a config file's: a TOML file is UTF-8
        raise ConfigError(f"cannot read sweep file {path}: {error}") from None
    raw = parse_toml(text, path.name)
    for key in raw:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{path.name}: unknown key '{key}'; a sweep file has: {', '.join(TOP_LEVEL)}")
    if ("base" in raw) == ("config" in raw):
        raise ConfigError(f"{path.name}: give either base = \"PRESET\" or config = \"FILE.toml\", exactly one")
    name = _sweep_name(raw, path)
    for table in ("set", "grid", "zip"):
        if table in raw and not isinstance(raw[table], dict):
            raise ConfigError(f"{path.name}: '{table}' must be a table ([{table}])")
    fixed, grid, zipped = (_flatten(raw.get(table, {})) for table in ("set", "grid", "zip"))
    # The plugins the runs import first (the base config file's, then [set]'s): their compressors' tables
    # are settings the sweep may set.
    plugins = fixed.get("plugins", [])
    try:
        import_plugins([*_base_plugins(raw, path), *plugins] if isinstance(plugins, list) else plugins)
    except ConfigError as error:
        raise ConfigError(f"{path.name}: {error}") from None
    for where, table in (("[set]", fixed), ("[grid]", grid), ("[zip]", zipped)):
        for key in table:
            if key in TABLES:
                raise ConfigError(f"{path.name} {where}: '{key}' needs a setting of the table, like "
                                  f"'{key}.{table_fields(key)[0]}'")
            if key not in all_settings():
                hint = suggest(key, key.split(".")[0] if "." in key else None)
                raise ConfigError(f"{path.name} {where}: unknown setting '{key}'"
                                  + (f"; did you mean '{hint}'?" if hint else ""))
    for where, table in (("[grid]", grid), ("[zip]", zipped)):
        for key, values in table.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{path.name} {where}: '{key}' must be a non-empty array of values, got {values!r}")
            if where == "[grid]" and len(set(map(repr, values))) != len(values):
                raise ConfigError(f"{path.name} {where}: '{key}' lists a value twice")
    repeated = set(grid) & set(zipped) | (set(fixed) & (set(grid) | set(zipped)))
    if repeated:
        raise ConfigError(f"{path.name}: '{sorted(repeated)[0]}' is set in more than one of [set], [grid], [zip]")
    if len({len(values) for values in zipped.values()}) > 1:
        lengths = ", ".join(f"{key}: {len(values)}" for key, values in zipped.items())
        raise ConfigError(f"{path.name} [zip]: the axes must have equal lengths, got {lengths}")
    rows = [tuple(map(repr, row)) for row in zip(*zipped.values())]
    if len(set(rows)) != len(rows):
        raise ConfigError(f"{path.name} [zip]: two positions of the zipped axes give the same values")

    if "base" in raw:
        load, base_text = partial(load_preset, str(raw["base"])), f"preset {raw['base']}"
    else:
        config_path = (path.parent / str(raw["config"])).resolve()
        load, base_text = partial(load_config_file, config_path), str(config_path)

    runs, labels, unused = [], {}, {}   # labels: config sha256 -> its first run's; unused: setting -> why -> runs
    for grid_values in itertools.product(*grid.values()):
        for zip_values in zip(*zipped.values()) if zipped else [()]:
            values = tuple(zip(grid, grid_values)) + tuple(zip(zipped, zip_values))
            overrides = tuple(fixed.items()) + values
            try:
                config = load(list(overrides), notes=(found := []))
                for setting, _, why in dict.fromkeys(note.partition(" (") for note in found):   # setting (why)
                    unused.setdefault(setting, {}).setdefault(why, 0)
                    unused[setting][why] += 1
            except ConfigError as error:
                raise ConfigError(f"{path.name}: " + (f"the run with {run_settings(values)}: " if values else "")
                                  + str(error)) from None
            fingerprint = config_fingerprint(config)      # 1 and 1.0 are one value: the same config, run once
            if fingerprint in labels:
                raise ConfigError(f"{path.name}: two runs resolve to the same config ({labels[fingerprint]} and "
                                  f"{run_label(values)})")
            labels[fingerprint] = run_label(values)
            runs.append(PlannedRun(values, overrides, config, f"{folder_label(values)}-{fingerprint[:10]}"))
    if notes is not None:       # what no run reads (a setting some runs read is what a sweep over methods needs)
        notes.extend(f"{setting} ({'; '.join(why.removesuffix(')') for why in reasons)})"
                     for setting, reasons in unused.items() if sum(reasons.values()) == len(runs))
    axes = tuple((key, tuple(values)) for key, values in {**grid, **zipped}.items())
    return Sweep(name, path, base_text, tuple(fixed.items()), axes, tuple(zipped), tuple(runs), text)


__all__ = ["LABEL_LENGTH", "PlannedRun", "SWEEP_NAME", "Sweep", "folder_label", "load_sweep", "run_label",
           "run_settings"]
