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
