"""Numba-jitted kernels: arrays and scalars in, arrays out; no classes, no global state.

Every kernel ``foo`` has a plain NumPy twin ``foo_numpy`` with the same contract; the tests compare the
two (and the jitted function's ``.py_func``) on random and adversarial inputs. All kernels are compiled
with the one options dict below.

The public kernels of sparsify, golomb, laq, terngrad, randomk, qsgd and powersgd check their arguments in
plain Python before any jitted code runs (:mod:`fedsim.kernels.checks`); their unchecked jitted cores are
``kernel.core`` (also ``_<name>_core``), for callers that built every argument themselves.
"""

# Used as numba.njit(**JIT_OPTIONS): nopython mode, never a silent object-mode fallback (numba >= 0.59).
# cache: compile once per machine, not per process; nogil: callers may run kernels from threads;
# fastmath off: results must equal the NumPy twins bitwise.
JIT_OPTIONS = dict(cache=True, nogil=True, fastmath=False)

# The LAQ quantizer's bit widths (fedsim.kernels.laq): here, so that a config can be checked without Numba.
LAQ_MIN_BITS = 1
LAQ_MAX_BITS = 16

# ---------------------------------------------------------------------------------------------------------
# Deferred kernel modules. `from fedsim.kernels import sparsify` (as the compressors write it) gives, until
# some code imports the module itself, a stand-in that imports it at its first attribute access: importing
# the compressors (for a config, `fedsim show-config`) then loads no Numba. `import fedsim.kernels.sparsify`
# and `from fedsim.kernels.sparsify import name` import the module at once, as always; once imported, the
# package attribute is the module itself.

import importlib as _importlib
import types as _types

_KERNEL_MODULES = ("golomb", "laq", "powersgd", "qsgd", "randomk", "softmax", "sparsify", "terngrad")


class _DeferredModule(_types.ModuleType):
    """Stands for the kernel module of the same name; imports it (thread-safely, through the import
    system's locks) at the first attribute access and hands on every attribute of it from then on."""

    def __init__(self, name: str):
        super().__init__(name)
        self._fedsim_module = None

    def __getattr__(self, attribute):
        module = self._fedsim_module
        if module is None:
            module = self._fedsim_module = _importlib.import_module(self.__name__)
        return getattr(module, attribute)

    def __setattr__(self, attribute, value):   # e.g. a test's monkeypatch: it lands on the module
        if attribute == "_fedsim_module" or attribute.startswith("__"):
            super().__setattr__(attribute, value)
        else:
            setattr(_importlib.import_module(self.__name__), attribute, value)

    def __delattr__(self, attribute):
        delattr(_importlib.import_module(self.__name__), attribute)


def __getattr__(name: str):
    if name in _KERNEL_MODULES:
        return _DeferredModule(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
