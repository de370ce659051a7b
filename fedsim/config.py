"""Experiment configs: TOML files validated into frozen dataclasses.

A config file has three top-level settings and a table per dataclass (every setting may be left out: it
takes its default)::

    family = "federated"      # federated (STC, FedAvg, signSGD, top-k) | lazy (GD, QGD, LAG, LAQ, SLAQ)
    seed = 0                  # seeds everything: data generation, partition, sampling, initialization
    plugins = []              # modules imported first, registering compressors, partitioners (fedsim.plugins)

    [data]                    # DataConfig (fedsim.experiment_data): dataset, preprocessing, partition
    [model]                   # ModelConfig (fedsim.models): the registered model, its layers and init
    [federated]               # FederatedConfig (fedsim.algorithms.federated), used when family = "federated"
    [lazy]                    # LazyConfig (fedsim.algorithms.lazy), used when family = "lazy"
    [run]                     # RunConfig (below): checkpoints, f*
    [system]                  # SystemConfig (fedsim.system): links, devices, deadline; off by default
    [stc], [qsgd], ...        # each registered compressor with settings of its own

Validation happens in one place, :func:`config_from_dict`: the plugins are imported first
(:func:`fedsim.plugins.load_plugins`: the entry points of ``fedsim.plugins`` and the modules the config
names), then three steps, each failing with a :class:`ConfigError` whose one-line message names the setting:

1. keys: an unknown key is reported with the closest valid key (``difflib``);
2. values: each dataclass checks its fields against the constraints they declare (:mod:`fedsim.constraints`),
   then the checks that relate several of its fields;
3. the cross-table checks of :class:`ExperimentConfig`.

:func:`fedsim.config_toml.config_to_toml` writes a config back as TOML (``show-config``, a run folder's
config.toml).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import sys
from dataclasses import MISSING, dataclass
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    import tomli as tomllib

from fedsim.algorithms.federated import FederatedConfig
from fedsim.compress import COMPRESSORS
from fedsim.algorithms.family import FAMILIES, Family, family
from fedsim.algorithms.lazy import LazyConfig
from fedsim.constraints import Integer, Optional, Real, Registered, check_fields, setting
from fedsim.experiment_data import DataConfig, check_clients
from fedsim.models import ModelConfig
from fedsim.plugins import MODULE_NAMES, load_plugins
from fedsim.system import SystemConfig


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the setting and what is allowed."""


@dataclass(frozen=True)
class RunConfig:
    """How a run is carried out and recorded (not what it computes)."""

    checkpoint_every: int = setting(10, "checkpoint every this many rounds / iterations; 0: only at the end",
                                    Integer(low=0))
    f_star: float | None = setting(None, "lazy family: optimal objective for residuals f - f*",
                                   Optional(Real(), "the smallest objective among the runs compared"))
    blas_threads: int = setting(1, "threads of the run (BLAS, the gradient's blocks); same results for one value",
                                Integer(1, 1024))

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: which family, the seed, and the settings of data, algorithm and run."""

    family: str = setting("federated", "federated | lazy", Registered(lambda: FAMILIES))
    seed: int = setting(0, "seeds every random choice of the run", Integer(low=0))
    data: DataConfig = setting(MISSING, "dataset, pipeline, partition", default_factory=DataConfig)
    model: ModelConfig = setting(MISSING, "the model trained", default_factory=ModelConfig)
    federated: FederatedConfig = setting(MISSING, 'family "federated"', default_factory=FederatedConfig)
    lazy: LazyConfig = setting(MISSING, 'family "lazy" (its seed is `seed`)', default_factory=LazyConfig)
    run: RunConfig = setting(MISSING, "checkpoints, f*", default_factory=RunConfig)
    system: SystemConfig = setting(MISSING, "links, devices, deadline: the simulated clock (off by default)",
                                   default_factory=SystemConfig)
    plugins: tuple = setting((), "your modules imported first (names like 'mypkg.int8'): compressors, "
                                 "partitioners", MODULE_NAMES)

    def __post_init__(self):
        check_fields(self)
        # A family config that carries a seed of its own takes the experiment's: one source.
        for name, declared in FAMILIES.items():
            settings = getattr(self, name)
            if "seed" in declared.derived and settings.seed != self.seed:
                object.__setattr__(self, name, dataclasses.replace(settings, seed=self.seed))
        check_clients(self.data, self.family, self.n_clients, self.clients_setting)
        if self.family != "federated" and (self.system.deadline is not None or self.system.over_select != 1
                                           or self.system.availability != 1):
            raise ValueError(f"system.deadline, system.over_select and system.availability apply to family "
                             f"'federated' only (family is {self.family!r}); leave them unset")

    @property
    def algorithm_family(self) -> Family:
        """The registered family of this experiment (:mod:`fedsim.algorithms.family`)."""
        return family(self.family)

    @property
    def algorithm(self) -> FederatedConfig | LazyConfig:
        """The active family's settings."""
        return getattr(self, self.family)

    @property
    def n_clients(self) -> int:
        """Clients (federated) or workers (lazy) that hold data."""
        return getattr(self.algorithm, self.algorithm_family.clients_setting)

    @property
    def clients_setting(self) -> str:
        return self.algorithm_family.setting(self.algorithm_family.clients_setting)

    @property
    def steps(self) -> int:
        """Rounds (federated) or iterations (lazy) of a complete run."""
        return getattr(self.algorithm, self.algorithm_family.steps_setting)

    @property
    def pipeline(self) -> str:
        """The preprocessing pipeline in effect: ``data.pipeline`` or the family's."""
        return self.data.pipeline or self.algorithm_family.pipeline

    @property
    def method(self) -> str:
        return self.algorithm.method


#: Settings of a compressor that its table does not hold: the federated table sets them per direction.
COMPRESSOR_SETTINGS_ELSEWHERE = {"p": "federated.p_up / federated.p_down",
                                 "scope": "federated.compression_scope"}
#: The tables of a config file and the dataclass each is validated into: data, model, one per algorithm
#: family, run, system, then one per compressor with settings of its own (:data:`COMPRESSOR_TABLES`).
TABLES: dict[str, type] = {"data": DataConfig, "model": ModelConfig,
                           **{name: declared.config_class for name, declared in FAMILIES.items()},
                           "run": RunConfig, "system": SystemConfig}
#: The compressor tables ([stc], [sign], [qsgd], ...), each validated into the compressor class of that name.
COMPRESSOR_TABLES: dict[str, type] = {}
#: Top-level settings.
TOP_LEVEL = ("family", "seed", "plugins")
#: Dataclass fields that a config file does not set (derived from other settings), and where they are set.
DERIVED = {(name, setting): where for name, declared in FAMILIES.items()
           for setting, where in declared.derived.items()}
#: Settings that moved to another table: an old config setting one is told where it went.
MOVED = {("federated", "init"): "model.init", ("lazy", "init"): "model.init"}
#: The table that holds the compressor tables' settings (its field ``compressors``).
COMPRESSORS_HOLDER = next(name for name, declared in FAMILIES.items() if "compressors" in declared.derived)


def _add_compressor_tables() -> None:
    """Add a table for each registered compressor with settings of its own that has none yet (at import, and
    after plugins registered theirs)."""
    for name, cls in COMPRESSORS.items():
        if name not in COMPRESSOR_TABLES and any(f.name not in COMPRESSOR_SETTINGS_ELSEWHERE
                                                 for f in dataclasses.fields(cls)):
            COMPRESSOR_TABLES[name] = TABLES[name] = cls
            DERIVED.update({(name, setting): where for setting, where in COMPRESSOR_SETTINGS_ELSEWHERE.items()})


_add_compressor_tables()


def import_plugins(modules=()) -> None:
    """Import the plugins (the entry points and ``modules``, :func:`fedsim.plugins.load_plugins`) and add the
    tables of the compressors they register; a failure is one :class:`ConfigError` line naming it."""
    try:
        load_plugins(modules)
    except (ValueError, TypeError) as error:
        raise ConfigError(_one_line(error)) from None
    _add_compressor_tables()


def section(config: "ExperimentConfig", table: str):
    """The dataclass instance that holds ``table``'s settings in ``config``."""
    if table in COMPRESSOR_TABLES:
        return getattr(config, COMPRESSORS_HOLDER).compressors[table]
    return getattr(config, table)


def table_fields(table: str) -> list[str]:
    """The settings of ``table`` that a config file may hold, in declaration order."""
    return [f.name for f in dataclasses.fields(TABLES[table]) if (table, f.name) not in DERIVED]


def all_settings() -> list[str]:
    """Every valid dotted setting name: ``family``, ``seed``, ``data.dataset``, ..."""
    return list(TOP_LEVEL) + [f"{table}.{name}" for table in TABLES for name in table_fields(table)]


# ---------------------------------------------------------------------------------------------------------
# values in messages


_TOML_TYPES = ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), (dict, "table"),
               (list, "array"))


def _toml_type_name(value) -> str:
    """The TOML name of a value's type (``bool`` first: a bool is also an int)."""
    return next((name for kind, name in _TOML_TYPES if isinstance(value, kind)), type(value).__name__)


def format_value(value) -> str:
    """A value as it would be written in TOML (shortened if long); None, a setting left unset, as ``(unset)``."""
    if value is None:
        return "(unset)"
    try:
        text = toml_value(value)
    except TypeError:
        text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------------------
# keys


def suggest(key: str, table: str | None = None) -> str | None:
    """The valid dotted setting closest to ``key`` (``table`` is where the key was met), or None.

    Tried in order: the closest field of the same table (``difflib``, cutoff 0.6); a top-level setting of that
    exact name (``federated.seed`` -> ``seed``) or a field of that exact name in another table (``lr`` ->
    ``federated.lr``); the closest field name in any table.
    """
    name = key.rsplit(".", 1)[-1]
    if table in TABLES:
        close = difflib.get_close_matches(name, table_fields(table), n=1, cutoff=0.6)
        if close:
            return f"{table}.{close[0]}"
    elif table is None:
        close = difflib.get_close_matches(name, list(TOP_LEVEL) + list(TABLES), n=1, cutoff=0.6)
        if close:
            return close[0]
    if table is not None and name in TOP_LEVEL:      # federated.seed -> seed
        return name
    exact = [f"{other}.{name}" for other in TABLES if name in table_fields(other)]
    if exact:
        return exact[0]
    qualified = {field_name: f"{other}.{field_name}" for other in reversed(list(TABLES))
                 for field_name in table_fields(other)}
    close = difflib.get_close_matches(name, list(qualified), n=1, cutoff=0.6)
    return qualified[close[0]] if close else None


def _unknown_key(dotted: str, table: str | None, source: str) -> ConfigError:
    hint = suggest(dotted, table)
    where = f" in {source}" if source else ""
    if hint is not None:
        return ConfigError(f"unknown setting '{dotted}'{where}; did you mean '{hint}'?")
    if table in TABLES:
        valid = ", ".join(table_fields(table))
        return ConfigError(f"unknown setting '{dotted}'{where}; [{table}] has: {valid}")
    valid = ", ".join(list(TOP_LEVEL) + [f"[{name}]" for name in TABLES])
    return ConfigError(f"unknown setting '{dotted}'{where}; the top level has: {valid}")


# ---------------------------------------------------------------------------------------------------------
# dict <-> config


def _build_table(table: str, values: dict, source: str, **derived):
    cls = TABLES[table]
    kwargs = dict(derived)
    for key, value in values.items():
        if (table, key) in MOVED:
            raise ConfigError(f"{table}.{key} has moved: {MOVED[(table, key)]} replaces it")
        if (table, key) in DERIVED:
            raise ConfigError(f"{table}.{key} cannot be set here; set {DERIVED[(table, key)]} instead")
        if key not in table_fields(table):
            raise _unknown_key(f"{table}.{key}", table, source)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        raise setting_error(table, error, table_fields(table)) from None


def setting_error(table: str, error: Exception, fields) -> ConfigError:
    """The error of a dataclass validating ``table``'s settings (``fields``) as one line naming the setting."""
    message = _one_line(error)
    if message.startswith(f"{table}."):     # already dotted (data.dataset 'npz:' names no file)
        return ConfigError(message)
    # The dataclasses' messages start with the setting's name: make it the dotted one.
    first_word = re.match(r"\w+", message)
    named = first_word is not None and first_word.group(0) in fields
    return ConfigError(f"{table}.{message}" if named else f"[{table}] {message}")


def _one_line(error: BaseException, limit: int = 400) -> str:
    """The error's message on one line, its middle cut out if longer than ``limit`` characters (a
    50 MB value is not echoed back whole)."""
    text = " ".join(str(error).split())
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} ... [{len(text) - 2 * half:,} characters cut] ... {text[-half:]}"


def config_from_dict(raw: dict, source: str = "") -> ExperimentConfig:
    """Validate a parsed TOML document (nested dicts, every key optional) into an
    :class:`ExperimentConfig`; ``source`` (a file name) goes into the one-line :class:`ConfigError`.
    The plugins (``raw["plugins"]`` and the entry points) are imported first."""
    import_plugins(raw.get("plugins", ()))
    top, tables, compressors = {}, {}, {}
    for key, value in raw.items():
        if key in TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"'{key}' must be a table ([{key}]), got {format_value(value)} "
                                  f"({_toml_type_name(value)})")
            if key in COMPRESSOR_TABLES:
                compressors[key] = _build_table(key, value, source)
            elif key != COMPRESSORS_HOLDER:
                tables[key] = _build_table(key, value, source)
        elif key in TOP_LEVEL:
            top[key] = value
        else:
            raise _unknown_key(key, None, source)
    # [federated] last: it holds the compressor tables' settings.
    tables[COMPRESSORS_HOLDER] = _build_table(COMPRESSORS_HOLDER, raw.get(COMPRESSORS_HOLDER, {}), source,
                                              compressors=compressors)
    try:
        return ExperimentConfig(**top, **tables)
    except (ValueError, TypeError) as error:
        raise ConfigError(_one_line(error)) from None


#: Settings read only when another setting (dotted) has one of the values given: set otherwise, they are named
#: by :func:`unused_tables` (a warning: a sweep over the other setting keeps them).
READ_ONLY_WITH = {
    ("data", "classes_per_client"): ("data.partition", ("classes_per_client",)),
    ("data", "balancedness"): ("data.partition", ("classes_per_client",)),
    ("data", "dirichlet_alpha"): ("data.partition", ("dirichlet",)),
    ("data", "shards_per_client"): ("data.partition", ("shards",)),
    **{("data", name): ("data.dataset", ("synthetic",)) for name in ("synthetic_alpha", "synthetic_beta",
                                                                     "synthetic_devices")},
    ("data", "synthetic_eval_devices"): ("data.synthetic_on_demand", (True,)),
    ("data", "data_dir"): ("data.dataset", ("mnist", "fashion-mnist")),
    ("data", "download"): ("data.dataset", ("mnist", "fashion-mnist")),
    ("federated", "lr_decay"): ("federated.lr_schedule", ("exponential", "step")),
    ("federated", "lr_step_epochs"): ("federated.lr_schedule", ("step",)),
    ("stc", "sample_fraction"): ("stc.threshold", ("sampled",)),
    ("stc", "sample_mode"): ("stc.threshold", ("sampled",)),
    **{("lazy", name): ("lazy.method", ("lag-wk", "lag-ps", "laq", "slaq"))
       for name in ("history_length", "history_weight", "max_skips")},
    ("lazy", "slaq_error_scale"): ("lazy.method", ("slaq",)),
    ("lazy", "slaq_threshold_offset"): ("lazy.method", ("slaq",)),
    ("run", "f_star"): ("family", ("lazy",)),
}


def _value(config: ExperimentConfig, dotted: str):
    *table, name = dotted.split(".")
    return getattr(section(config, table[0]) if table else config, name)


def unused_tables(raw: dict, config: ExperimentConfig) -> list[str]:
    """The tables a document sets that ``config`` does not use: another family's, or a compressor's that
    neither direction of the federated method uses (their settings would be ignored without a word); then the
    settings of used tables that are not read (:data:`READ_ONLY_WITH`, the family's ``Report.unused``). A
    value equal to its default is no such setting: ``show-config`` writes every table so."""
    unused, ignored = [], config.algorithm_family.report.unused(config_to_dict(config))     # dotted: lazy.bits
    for table, values in raw.items():
        if not isinstance(values, dict) or not values or table not in TABLES:
            continue
        defaults = {field.name: field.default for field in dataclasses.fields(TABLES[table])}
        if all(defaults.get(name, MISSING) == value for name, value in values.items()):
            continue
        if table in FAMILIES and table != config.family:
            unused.append(f"[{table}] (family is {config.family!r})")
            continue
        if table in COMPRESSOR_TABLES:
            holder = getattr(config, COMPRESSORS_HOLDER)
            resolved = holder.resolved_method
            used = {resolved.up, resolved.down} if config.algorithm is holder else set()
            if table not in used:
                unused.append(f"[{table}] (method {config.method!r} does not use the {table} compressor)")
                continue
        for name, value in values.items():
            if defaults.get(name, MISSING) == value:
                continue
            if f"{table}.{name}" in ignored:
                unused.append(f"{table}.{name} (method {config.method!r} does not read it)")
            elif (table, name) in READ_ONLY_WITH:
                other, readers = READ_ONLY_WITH[table, name]
                if _value(config, other) not in readers:
                    said = ", ".join(map(toml_value, readers[:-1])) + " or " * (len(readers) > 1) + \
                        toml_value(readers[-1])
                    unused.append(f"{table}.{name} (read only with {other} = {said}, not "
                                  f"{toml_value(_value(config, other))})")
    return unused


#: Settings added after configs were fingerprinted, left out of a config's dict while at their defaults, so
#: that the fingerprints (and the run folders) of configs that do not use them stay as they were.
LEFT_OUT_AT_DEFAULT = {("federated", "bits_per_round"): None, ("lazy", "bits_per_upload"): None,
                       ("data", "synthetic_on_demand"): False, ("data", "synthetic_eval_devices"): 1000,
                       ("system", "round_spread"): 0.0}


def config_to_dict(config: ExperimentConfig, *, keep_unset: bool = False) -> dict:
    """Nested plain dict of ``config`` (derived settings left out; ``None`` values only if ``keep_unset``)."""
    document = {"family": config.family, "seed": config.seed}
    if config.plugins:      # left out when empty: the fingerprints of configs without plugins stay as they were
        document["plugins"] = list(config.plugins)
    for table in TABLES:
        settings = section(config, table)
        if table == "system" and not settings.enabled:     # left out when off: fingerprints stay as they were
            continue
        values = {name: getattr(settings, name) for name in table_fields(table)}
        # Lists as JSON reads them back (model.hidden is a tuple): a run's meta.json compares equal.
        document[table] = {name: list(value) if isinstance(value, tuple) else value
                           for name, value in values.items()
                           if (value is not None or keep_unset)
                           and not ((table, name) in LEFT_OUT_AT_DEFAULT and value == LEFT_OUT_AT_DEFAULT[table, name])}
    return document


def config_fingerprint(config: ExperimentConfig) -> str:
    """The sha256 of the config's canonical form (every setting, sorted): equal configs, equal hashes."""
    import hashlib
    document = config_to_dict(config, keep_unset=True)
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# TOML text


def parse_toml(text: str, source: str = "") -> dict:
    """``tomllib.loads`` with its error turned into a one-line :class:`ConfigError`."""
    where = f"{source}: " if source else ""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{where}not valid TOML: {_one_line(error)}") from None
    except RecursionError:
        raise ConfigError(f"{where}not a usable config: its tables or arrays are nested too deeply") from None


def _validated(text: str, source: str, overrides, notes: list | None) -> ExperimentConfig:
    """``text`` parsed, overridden (:func:`apply_overrides`) and validated; the tables it sets but does not
    use are added to ``notes`` if given (:func:`unused_tables`)."""
    raw = apply_overrides(parse_toml(text, source), overrides)
    config = config_from_dict(raw, source)
    if notes is not None:
        notes.extend(unused_tables(raw, config))
    return config


def load_config_file(path, overrides=(), source: str | None = None, notes: list | None = None) -> ExperimentConfig:
    """Read, override and validate the TOML config at ``path`` (:func:`_validated`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {_one_line(error)}") from None
    return _validated(text, source or path.name, overrides, notes)


def toml_value(value) -> str:
    """One value as TOML: a boolean, integer, float (``repr``, exact), basic string, or an array of them."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are TOML basic-string escapes; DEL must be escaped in TOML, not in JSON.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a TOML value")


# ---------------------------------------------------------------------------------------------------------
# --set overrides


def parse_override(text: str) -> tuple[list[str], object]:
    """``"federated.lr=0.1"`` -> (``["federated", "lr"]``, ``0.1``).

    The value is read as a TOML value (``0.1``, ``true``, ``"text"``, ``[1, 2]``); text that is not valid
    TOML is taken as a bare string, so ``data.dataset=fashion-mnist`` needs no quotes.
    """
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set needs key=value (e.g. federated.lr=0.1), got {text!r}")
    parts = key.split(".")
    if len(parts) > 2 or not all(parts):
        raise ConfigError(f"--set key must be a setting like 'seed' or 'federated.lr', got {key!r}")
    return parts, override_value(value_text)


def override_value(text: str):
    """An override's value ``text``, read as :func:`parse_override` says."""
    text = text.strip()
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides=()) -> dict:
    """A copy of the parsed document ``raw`` with each override set.

    Each override is a ``"key=value"`` string (:func:`parse_override`) or a ``(dotted_key, value)`` pair. The
    plugins the result names are imported first, so that an override reaches their tables; an unknown key is
    a :class:`ConfigError` that blames ``--set``.
    """
    document = {key: dict(value) if isinstance(value, dict) else value for key, value in raw.items()}
    pairs = [(item[0].split("."), item[1]) if isinstance(item, tuple) else parse_override(item) for item in overrides]
    import_plugins(next((value for parts, value in reversed(pairs) if parts == ["plugins"]), raw.get("plugins", ())))
    for parts, value in pairs:
        if len(parts) == 1:
            if parts[0] in TABLES:
                raise ConfigError(f"--set {parts[0]}=... needs a setting of the table, like "
                                  f"{parts[0]}.{table_fields(parts[0])[0]}=...")
            if parts[0] not in TOP_LEVEL:
                raise _unknown_key(parts[0], None, "--set")
            document[parts[0]] = value
            continue
        table, name = parts
        if table not in TABLES or (name not in table_fields(table) and (table, name) not in {**MOVED, **DERIVED}):
            raise _unknown_key(f"{table}.{name}", table if table in TABLES else None, "--set")
        values = document.setdefault(table, {})
        if not isinstance(values, dict):
            raise ConfigError(f"'{table}' must be a table ([{table}]), got {format_value(values)}")
        values[name] = value
    return document


# ---------------------------------------------------------------------------------------------------------
# presets


def _preset_files() -> dict:
    folder = resources.files("fedsim.presets")
    return {entry.name[:-len(".toml")]: entry for entry in folder.iterdir() if entry.name.endswith(".toml")}


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description (the first comment line of its file), sorted by name."""
    presets = {}
    for name, entry in sorted(_preset_files().items()):
        first = entry.read_text(encoding="utf-8").splitlines()[0] if entry.is_file() else ""
        presets[name] = first.lstrip("#").strip()
    return presets


def preset_text(name: str) -> str:
    """The TOML text of preset ``name``."""
    files = _preset_files()
    if name not in files:
        close = difflib.get_close_matches(name, list(files), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown preset '{name}'; {hint}presets: {', '.join(sorted(files))}")
    return files[name].read_text(encoding="utf-8")


def load_preset(name: str, overrides=(), notes: list | None = None) -> ExperimentConfig:
    """Preset ``name`` with ``overrides`` applied, validated (unused tables into ``notes``, if given)."""
    return _validated(preset_text(name), f"preset {name}", overrides, notes)


def __getattr__(name: str):
    """``config_to_toml``, which moved to :mod:`fedsim.config_toml` (imported here when asked: it imports this)."""
    if name == "config_to_toml":
        from fedsim.config_toml import config_to_toml
        return config_to_toml
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ConfigError", "ExperimentConfig", "FAMILIES", "RunConfig", "TABLES", "all_settings", "apply_overrides",
           "config_fingerprint", "config_from_dict", "config_to_dict", "config_to_toml", "format_value",  # noqa: F822
           "import_plugins", "list_presets", "load_config_file", "load_preset", "override_value", "parse_override",
           "parse_toml", "preset_text", "setting_error", "suggest", "table_fields", "toml_value", "unused_tables"]
