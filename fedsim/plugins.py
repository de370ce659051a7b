"""Plugins: a user's own modules that extend fedsim's registries when they are imported.

A plugin is an importable module (or package) whose import registers what it defines: a compressor
(``@register`` of :mod:`fedsim.compress.base`), a partitioner (``@register_partitioner`` of
:mod:`fedsim.data.partition`), or an entry of any registry that grows at import. fedsim imports plugins
two ways, both before a config is validated (so that its methods and tables are known):

* installed packages that declare an entry point in the group ``fedsim.plugins`` (each process imports
  them all, once);
* the modules a config names, top-level ``plugins = ["mypkg.int8"]``: module names only, no file paths.
  The config travels with the run (its folder's ``config.toml``, a sweep's workers), so ``fedsim run
  --resume`` and every sweep worker import them again before they build the run.

The module must be importable wherever the run goes: an installed package, or its folder on PYTHONPATH
(also for Dask workers).
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass
from importlib.metadata import entry_points

from fedsim.constraints import Constraint

ENTRY_POINT_GROUP = "fedsim.plugins"
#: A dotted module name: identifiers joined by dots (``mypkg.int8``), never a file path.
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclass(frozen=True)
class ModuleNames(Constraint):
    """A list of dotted module names (kept as a tuple)."""

    def describe(self) -> str:
        return "a list of importable module names like 'mypkg.int8' (no file paths)"

    def normalize(self, value) -> tuple:
        if not (isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value)):
            raise TypeError
        return tuple(value)

    def allows(self, value: tuple) -> bool:
        return all(MODULE_NAME.fullmatch(name) for name in value)


#: The constraint of a config's ``plugins``.
MODULE_NAMES = ModuleNames()


class PluginError(ValueError):
    """A plugin that cannot be imported; the message is one line naming it."""


def _imported(what: str, load):
    try:
        return load()
    except Exception as error:      # an ImportError, or anything the module raised while running
        message = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, ModuleNotFoundError):
            message += " (a plugin must be importable: an installed package, or its folder on PYTHONPATH)"
        raise PluginError(f"plugin {what} failed to import: {message}") from None


@functools.cache
def load_entry_points() -> tuple[str, ...]:
    """Import every plugin declared in the entry point group ``fedsim.plugins`` (once per process: a
    failed import is tried again on the next call); the names of the entry points imported."""
    names = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        _imported(f"'{point.name}' (entry point {point.value} of {ENTRY_POINT_GROUP})", point.load)
        names.append(point.name)
    return tuple(names)


def load_plugins(modules=()) -> None:
    """Import the entry point plugins (:func:`load_entry_points`), then each module named in ``modules``
    (a config's ``plugins``), in order; :class:`PluginError` names the first that fails, and a name that
    is not a module name is a one-line ValueError or TypeError (:data:`MODULE_NAMES`)."""
    modules = MODULE_NAMES.check("plugins", modules)
    load_entry_points()
    for name in modules:
        _imported(f"'{name}'", lambda: importlib.import_module(name))


__all__ = ["ENTRY_POINT_GROUP", "MODULE_NAMES", "PluginError", "load_entry_points", "load_plugins"]
