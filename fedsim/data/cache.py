"""Arrays computed from dataset files, kept on disk so that later runs load them instead of computing them.

``cached_array(name, key, compute)`` returns ``compute()``'s array. The first call computes it and stores
it as one file; later calls with the same ``name`` and ``key`` (in any process) read that file back, after
checking it. ``key`` must say everything the array depends on: the checksums of the source files, the
function, its parameters, the version of its code and whatever of the machine changes its bits
(:func:`compute_environment`). The array read back is bitwise the array ``compute()`` returned.

Where: ``<user cache>/arrays/`` (:func:`fedsim.data.search.user_cache_dir`, never the checkout), one file per
entry, ``<name>-<digest>.array``, the digest being the SHA-256 of the canonical JSON of ``name`` and ``key``.
Deleting the folder (or any file in it) clears the cache; nothing else refers to it.

A file holds, in this order::

    FEDSIM-ARRAY 1\\n                  magic and format version
    {"name": ..., "key": {...}, "dtype": "<f4", "shape": [N, F], "nbytes": ..., "sha256": "..."}\\n
    nbytes bytes                       the array, C order

An entry is used only if its magic, format, name and key are the ones asked for, its size is exactly the
header's plus ``nbytes``, and the SHA-256 of the bytes read is the recorded one. Anything else (a truncated,
corrupt or foreign file) is never trusted: the array is computed again and the entry replaced, with a
one-line warning on stderr. A missing entry is computed silently.

Writes are atomic (:func:`fedsim.files.atomic_file`: a temporary file in the same folder, renamed into
place), so no process ever sees half an entry; two processes computing one entry at once both write a whole
file and the last one stays. (The file is not fsynced: after a crash, a damaged entry fails its checksum and
is recomputed.) A folder that cannot take the file (not writable, disk full) costs a one-line warning and
nothing else: the computed array is returned.

Disable the cache with ``FEDSIM_ARRAY_CACHE=0`` (also ``off``, ``false``, ``no``), or ``enabled=False``:
the array is then always computed and nothing is read or written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from fedsim.data.registry import DataSettingError, read_into
from fedsim.data.search import user_cache_dir
from fedsim.files import atomic_file

ENV_ARRAY_CACHE = "FEDSIM_ARRAY_CACHE"
#: The first line of every entry: magic and the version of this file format.
MAGIC = b"FEDSIM-ARRAY 1\n"
#: The sub-folder of the user cache that holds the entries.
FOLDER_NAME = "arrays"
SUFFIX = ".array"
_ON = ("", "1", "on", "true", "yes")
_OFF = ("0", "off", "false", "no")
# A header line longer than this is not one of ours (the keys are a few hundred bytes).
_MAX_HEADER_BYTES = 1 << 20
_CHUNK_BYTES = 1 << 24


def cache_enabled(enabled: bool | None = None) -> bool:
    """``enabled`` if given, else what ``FEDSIM_ARRAY_CACHE`` says (unset: on); DataSettingError otherwise."""
    if enabled is not None:
        return bool(enabled)
    value = os.environ.get(ENV_ARRAY_CACHE, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise DataSettingError(f"{ENV_ARRAY_CACHE} must be 1 (use the cache of computed arrays, the default; also "
                           f"{'/'.join(_ON[2:])}) or 0 (never read or write it; also {'/'.join(_OFF[1:])}); "
                           f"got {os.environ[ENV_ARRAY_CACHE]!r}")


def array_cache_dir() -> Path:
    return user_cache_dir() / FOLDER_NAME


def numpy_blas_pools() -> list[dict]:
    """threadpoolctl's entries of the BLAS NumPy's products call, whatever else is loaded (SciPy's own).

    NumPy's BLAS is the one its wheel ships (in ``numpy.libs`` or inside the package); where none is found
    there (a NumPy linked to a system BLAS) every BLAS loaded is listed.
    """
    from threadpoolctl import threadpool_info
    pools = [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]
    numpy_folder = Path(np.__file__).resolve().parent

    def shipped_with_numpy(pool) -> bool:
        location = Path(pool.get("filepath") or "").resolve()
        return location.parent.name.startswith("numpy") or numpy_folder in location.parents

    return [pool for pool in pools if shipped_with_numpy(pool)] or pools


def numpy_simd() -> str:
    """The SIMD extensions NumPy's dispatched loops use on this processor (``X86_V3 X86_V4 AVX512_ICL``):
    its AVX-512 loops (X86_V4) round some functions in other last bits than its AVX2 ones (X86_V3)."""
    try:
        from numpy._core import _multiarray_umath as core      # NumPy 2
    except ImportError:
        from numpy.core import _multiarray_umath as core       # NumPy 1
    found = getattr(core, "__cpu_features__", {})
    return " ".join(name for name in getattr(core, "__cpu_dispatch__", []) if found.get(name)) or "baseline"


def compute_environment() -> dict:
    """What of this machine can change the bits of a NumPy computation: for a key of :func:`cached_array`.

    The NumPy version and its SIMD extensions (:func:`numpy_simd`), the CPU architecture and byte order, and
    NumPy's BLAS (:func:`numpy_blas_pools`: with a system BLAS, every BLAS loaded, so keys of processes that
    loaded different ones differ: a miss, never a wrong hit) with its version, the kernel it chose for this
    CPU and its current thread count (a product split over several threads may sum in another order).
    """
    import platform

    blas = sorted(f"{pool.get('internal_api')} {pool.get('version')} {pool.get('architecture', '')} "
                  f"threads={pool.get('num_threads')}" for pool in numpy_blas_pools())
    return {"numpy": np.__version__, "simd": numpy_simd(), "machine": platform.machine(), "byteorder": sys.byteorder,
            "blas": blas}


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def entry_path(name: str, key: Mapping, folder=None) -> Path:
    """The file of the entry ``name`` / ``key`` in ``folder`` (default :func:`array_cache_dir`)."""
    _check_name(name)
    digest = hashlib.sha256(_canonical({"name": name, "key": key}).encode()).hexdigest()[:32]
    return Path(array_cache_dir() if folder is None else folder) / f"{name}-{digest}{SUFFIX}"


def _check_name(name) -> None:
    if not isinstance(name, str) or not name or not all(char.isalnum() or char in "-_." for char in name) \
            or name.startswith("."):
        raise ValueError(f"cached_array: name must be a non-empty file name of letters, digits, '-', '_' and "
                         f"'.' (not starting with '.'), got {name!r}")


def _warn(message: str) -> None:
    print(f"fedsim: warning: {' '.join(message.split())}", file=sys.stderr)


class _Unusable(Exception):
    """The entry on disk exists but may not be used; the message says why."""


def _sha256(array: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(memoryview(array.reshape(-1)).cast("B"))
    return digest.hexdigest()


def _read(path: Path, name: str, key) -> np.ndarray | None:
    """The array of the entry at ``path``; None if there is none; _Unusable if it may not be used."""
    try:
        with open(path, "rb") as handle:
            magic = handle.readline(len(MAGIC))
            if magic != MAGIC:
                raise _Unusable("it is not a fedsim array file of this format (wrong first line)")
            line = handle.readline(_MAX_HEADER_BYTES)
            if not line.endswith(b"\n"):
                raise _Unusable("its header is truncated")
            try:
                header = json.loads(line)
                dtype = np.dtype(header["dtype"])
                shape = tuple(int(size) for size in header["shape"])
                nbytes, recorded = int(header["nbytes"]), str(header["sha256"])
            except (ValueError, TypeError, KeyError) as error:
                raise _Unusable(f"its header cannot be read ({type(error).__name__}: {error})") from None
            if header.get("name") != name or header.get("key") != json.loads(_canonical(key)):
                raise _Unusable("it was written for another name or key")
            if dtype.hasobject or dtype.kind not in "biufc" or any(size < 0 for size in shape) \
                    or nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise _Unusable(f"its header describes no plain array (dtype {dtype}, shape {shape}, {nbytes} bytes)")
            size = os.fstat(handle.fileno()).st_size
            if size != handle.tell() + nbytes:
                raise _Unusable(f"it holds {size - handle.tell()} bytes of data, the header says {nbytes}")
            array = np.empty(shape, dtype)
            filled = read_into(handle, memoryview(array.reshape(-1)).cast("B"), _CHUNK_BYTES)
            if filled < nbytes:
                raise _Unusable(f"it ended after {filled} of {nbytes} bytes of data")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _Unusable(f"cannot be read ({error.strerror or error})") from None
    if _sha256(array) != recorded:
        raise _Unusable("the SHA-256 of its data is not the recorded one")
    return array


def _write(path: Path, name: str, key, array: np.ndarray) -> None:
    """Store ``array`` at ``path`` atomically; OSError if the folder cannot take it (no file is left)."""
    header = {"name": name, "key": json.loads(_canonical(key)), "dtype": array.dtype.str,
              "shape": list(array.shape), "nbytes": int(array.nbytes), "sha256": _sha256(array)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, durable=False) as handle:
        handle.write(MAGIC)
        handle.write(_canonical(header).encode() + b"\n")
        handle.write(memoryview(array.reshape(-1)).cast("B"))    # streamed: no copy of the array


def cached_array(name: str, key: Mapping, compute: Callable[[], np.ndarray], *, enabled: bool | None = None,
                 folder=None) -> np.ndarray:
    """``compute()``, or the array a call with the same ``name`` (such as ``"fashion-mnist-train-stc"``) and
    ``key`` (JSON values only) stored (the module docstring), read back writable and owning its memory."""
    _check_name(name)
    try:
        _canonical(key)
    except (TypeError, ValueError) as error:
        raise ValueError(f"cached_array: key must hold only JSON values (finite floats), {error}") from None
    if not cache_enabled(enabled):
        return compute()
    path = entry_path(name, key, folder)
    try:
        found = _read(path, name, key)
    except _Unusable as reason:
        _warn(f"the cached array {path} is not used: {reason}; computing it again")
        found = None
    if found is not None:
        return found
    array = compute()
    if not isinstance(array, np.ndarray) or array.dtype.hasobject or array.dtype.kind not in "biufc":
        raise TypeError(f"cached_array: compute() must return a NumPy array of numbers, got "
                        f"{type(array).__name__}{f' of dtype {array.dtype}' if isinstance(array, np.ndarray) else ''}")
    try:
        _write(path, name, key, np.asarray(array, order="C"))   # (np.ascontiguousarray makes a 0-d array 1-d)
    except OSError as error:
        where = getattr(error, "filename", None) or path.parent
        _warn(f"cannot store the computed array in the cache folder {path.parent}: {error.strerror or error} "
              f"({where}); continuing without it (free space there, set FEDSIM_CACHE to another folder, or "
              f"{ENV_ARRAY_CACHE}=0)")
    return array


def stored_bytes(entries) -> int:
    """The bytes on disk of ``entries`` (a file deleted meanwhile counts 0)."""
    total = 0
    for path in entries:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def cache_entries(folder=None) -> list[Path]:
    """The entry files in ``folder`` (default :func:`array_cache_dir`), sorted; none if it does not exist."""
    folder = Path(array_cache_dir() if folder is None else folder)
    try:
        return sorted(path for path in folder.iterdir() if path.suffix == SUFFIX and not path.name.startswith("."))
    except OSError:
        return []


__all__ = ["ENV_ARRAY_CACHE", "array_cache_dir", "cache_enabled", "cache_entries", "cached_array",
           "compute_environment", "entry_path", "numpy_blas_pools", "numpy_simd", "stored_bytes"]
