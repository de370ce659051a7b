"""A config written as TOML (``fedsim show-config``, a run folder's config.toml): every setting filled in,
each with its field's one-line description, declared beside its constraint (:mod:`fedsim.constraints`), as its
comment; reading that text again gives an equal config. Unset settings (``None``, which TOML cannot express)
are comments saying what unset means (``# name = (unset: meaning)``)."""

from __future__ import annotations

from fedsim.algorithms.family import FAMILIES
from fedsim.config import (COMPRESSOR_TABLES, TABLES, TOP_LEVEL, ExperimentConfig, section, table_fields,
                           toml_value)
from fedsim.constraints import Integer, Optional, Real, constraint_of, descriptions


def _unset_meaning(config: ExperimentConfig, table: str, name: str) -> str:
    """What an unset (None) setting means for this config, for the comment written in its place."""
    if (table, name) == ("data", "pipeline"):
        return f"the family's, {toml_value(config.algorithm_family.pipeline)}"
    if (table, name) == ("model", "init"):
        return f"the model's, {toml_value(config.model.init_kind)}"
    if table in FAMILIES and name in FAMILIES[table].unset_meanings:
        whose, value_of = FAMILIES[table].unset_meanings[name]
        return f"{whose}, {toml_value(value_of(config))}"
    constraint = constraint_of(TABLES[table], name)
    return constraint.unset if isinstance(constraint, Optional) else "default"


def config_to_toml(config: ExperimentConfig, header: str = "", comments: bool = True) -> str:
    """``config`` as TOML text, every setting written out (the module docstring says how); with ``comments``,
    each setting carries its field's one-line description."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    top_comments = _comments(ExperimentConfig) if comments else {}
    for key in TOP_LEVEL:
        lines.append(_setting_line(key, getattr(config, key), top_comments.get(key)))
    for table in TABLES:
        settings = section(config, table)
        lines.append("")
        if table in FAMILIES and table != config.family:
            lines.append(f"# not used: family = {toml_value(config.family)}")
        if table in COMPRESSOR_TABLES:
            lines.append(f"# the {table} compressor's settings (p and scope: [federated])")
        lines.append(f"[{table}]")
        notes = _comments(type(settings)) if comments else {}
        if comments and table in FAMILIES and "method" in notes:
            notes["method"] = f"{notes['method']}: {', '.join(FAMILIES[table].method_names())}"
        for name in table_fields(table):
            value = getattr(settings, name)
            if value is None:
                lines.append(f"# {name} = (unset: {_unset_meaning(config, table, name)})")
            else:
                lines.append(_setting_line(name, value, notes.get(name)))
    return "\n".join(lines) + "\n"


def _comments(cls) -> dict[str, str]:
    """Each field's description, with the numbers its constraint allows (``communication rounds; an integer
    >= 1``)."""
    comments = descriptions(cls)
    for name in comments:
        constraint = constraint_of(cls, name)
        constraint = constraint.inner if isinstance(constraint, Optional) else constraint   # a value is set
        if isinstance(constraint, (Integer, Real)):
            comments[name] += f"; {constraint.describe()}"
    return comments


def _setting_line(name: str, value, comment: str | None) -> str:
    line = f"{name} = {toml_value(value)}"
    return f"{line:<40} # {comment}" if comment else line


__all__ = ["config_to_toml"]
