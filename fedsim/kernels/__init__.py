"""Numba-jitted kernels: arrays and scalars in, arrays out; no classes, no global state.

One module per job: sparsify (the batched top-k, STC and sign of the sparsifying compressors, built on the
one-vector helpers of selection (top-k selection, the thresholds) and ternary (ternarize, sign)), bitstream
(bits, fixed-width fields and sign bits of the encoded messages), golomb (the Golomb-Rice code of
positions), omega (the Elias omega code of QSGD's messages), qsgd, terngrad, randomk and powersgd (their
compressors' hot paths), laq (the LAQ quantizer), softmax (the softmax model's loss and gradient passes) and
local_sgd (a federated round's batches and SGD updates).

Every kernel ``foo`` that computes a compressor's or a model's numbers (selections, thresholds, quantizers, the
batched compressors, whole encoders and decoders) has a plain NumPy twin ``foo_numpy`` (``_foo_numpy`` for a
private helper) with the same contract, bitwise equal; the tests compare the two (and the jitted function's
``.py_func``) on random and adversarial inputs. The bit-stream writers and readers (bitstream's fields, the
``*_into`` / ``*_from`` of golomb, qsgd and terngrad) and the bit counters of one segment (golomb's
``sparse_segment_bits``, terngrad's ``segment_bits``) have none: they are checked by round trips (written,
then read back) and by the compressors' contract (every message's length is its ``encoded_bits``).

All kernels are compiled with the one options dict below (fastmath off: no reassociation, no fused
multiply-add). A sum over the data is a sequential float64 loop in index order,
which the twins compute with ``np.cumsum`` (``np.sum`` adds pairwise). The compressors' kernels reject
non-finite data with ``ValueError(NONFINITE_MESSAGE)`` (:mod:`fedsim.kernels.selection`): how the simulator
detects divergence.

The public kernels, and their twins, check their arguments in plain Python before any jitted code runs
(:mod:`fedsim.kernels.checks`); their unchecked jitted cores are ``kernel.core`` (also ``_<name>_core``), for
callers that built every argument themselves.
"""

# Used as numba.njit(**JIT_OPTIONS): nopython mode, never a silent object-mode fallback (numba >= 0.59).
# cache: compile once per machine, not per process; nogil: callers may run kernels from threads;
# fastmath off: results must equal the NumPy twins bitwise.
JIT_OPTIONS = dict(cache=True, nogil=True, fastmath=False)

# The LAQ quantizer's bit widths (fedsim.kernels.laq): here, so that a config can be checked without Numba.
LAQ_MIN_BITS = 1
LAQ_MAX_BITS = 16

# Deferred kernel modules: `from fedsim.kernels import sparsify` (as the compressors write it) gives the
# module through importlib's LazyLoader, which runs it at its first attribute access, so that importing the
# compressors (for a config, `fedsim show-config`) loads no Numba. `from fedsim.kernels.sparsify import name`
# runs it at once, as always.

import importlib.util as _import_util
import sys as _sys

_KERNEL_MODULES = ("bitstream", "golomb", "laq", "local_sgd", "omega", "powersgd", "qsgd", "randomk", "selection",
                   "softmax", "sparsify", "ternary", "terngrad")


def __getattr__(name: str):
    if name not in _KERNEL_MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    full_name = f"{__name__}.{name}"
    module = _sys.modules.get(full_name)
    if module is None:
        spec = _import_util.find_spec(full_name)
        spec.loader = _import_util.LazyLoader(spec.loader)
        module = _import_util.module_from_spec(spec)
        _sys.modules[full_name] = module
        spec.loader.exec_module(module)
    globals()[name] = module
    return module
