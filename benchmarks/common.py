"""Shared pieces of the benchmarks: modes, thread control, timing, validation errors, machine info, JSON.

Timing protocol
---------------
Every benchmark first *validates* (the implementations it compares must agree on the very inputs it
times; a disagreement raises :class:`ValidationError` and nothing is timed), then times each
implementation ``repeats`` times after ``warmup`` untimed calls, **interleaved** (one call of each
implementation per repeat), so that a change of load on a shared machine hits all of them alike. Reported
numbers are medians; ratios are ratios of medians from the same run.

Threads
-------
BLAS (OpenBLAS for NumPy, MKL for torch), OpenMP, torch and Numba all use the same fixed thread count
(default 1). BLAS and OpenMP read their count from environment variables when they load, so
:mod:`benchmarks.run` starts every suite in a fresh process with :func:`thread_environment`;
:func:`apply_threads` then sets torch's and Numba's counts and records what each library reports.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

MODES = ("smoke", "quick", "full")
# Environment variables that fix the thread pools of BLAS, OpenMP and Numba before they load.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")
REPO = Path(__file__).resolve().parents[1]


class ValidationError(AssertionError):
    """Two implementations that a benchmark compares disagree: the benchmark refuses to time them."""


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls of one implementation."""

    samples: tuple[float, ...]   # one duration per repeat, in call order

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def minimum(self) -> float:
        return float(np.min(self.samples))

    def to_dict(self) -> dict:
        return {"median": self.median, "min": self.minimum, "repeats": len(self.samples),
                "samples": [float(s) for s in self.samples]}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def check_threads(threads) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    return int(threads)


# OpenMP threads (torch's) that finish a parallel region spin on their cores for a while by default;
# interleaved with fedsim's calls at 2 threads they took the second core from fedsim's block threads and
# from torch's own next call (a quick run: torch's STC round 95 ms spinning, 36 ms passive). Passive
# threads sleep when they have nothing to do.
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}


def thread_environment(threads: int, base: dict | None = None) -> dict:
    """A copy of ``base`` (default: this process's environment) with every thread variable = threads
    and OpenMP's idle threads passive (``WAIT_POLICY``)."""
    env = dict(os.environ if base is None else base)
    for name in THREAD_VARIABLES:
        env[name] = str(check_threads(threads))
    env.update(WAIT_POLICY)
    return env


def apply_threads(threads: int, torch: bool = True) -> dict:
    """Set torch's (unless ``torch`` is False: a suite that does not use it need not load it), Numba's and
    fedsim's block loops' thread counts; return what every library reports (for the results)."""
    threads = check_threads(threads)
    report = {"requested": threads,
              "environment": {name: os.environ.get(name) for name in THREAD_VARIABLES + tuple(WAIT_POLICY)}}
    import numba
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    report["numba"] = numba.get_num_threads()
    from fedsim.models import softmax
    softmax.set_threads(threads)
    report["fedsim_blocks"] = softmax.threads()
    if not torch:
        report["torch"] = "not loaded"
    else:
        try:
            import torch as torch_module
        except ImportError:
            report["torch"] = None
        else:
            torch_module.set_num_threads(threads)
            report["torch"] = torch_module.get_num_threads()
    mismatched = [name for name in THREAD_VARIABLES if os.environ.get(name) != str(threads)]
    report["blas_fixed_by_environment"] = not mismatched
    return report


def time_interleaved(functions: dict[str, Callable[[], object]], repeats: int,
                     warmup: int = 1) -> dict[str, Timing]:
    """Time each function ``repeats`` times, one call of each per repeat, after ``warmup`` calls each."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for function in functions.values():
        for _ in range(warmup):
            function()
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - started)
    return {name: Timing(tuple(values)) for name, values in samples.items()}


def assert_equal(name: str, got, want) -> None:
    """Bitwise equality of two arrays or scalars: dtype, shape and bytes, as ``fedsim.compress.base.same_value``
    (so -0.0 != 0.0, and a NaN equals only a NaN of the same bits), else ValidationError."""
    got_array, want_array = np.asarray(got), np.asarray(want)
    if got_array.shape != want_array.shape:
        raise ValidationError(f"{name}: shape {got_array.shape} != {want_array.shape}")
    if got_array.dtype != want_array.dtype:
        raise ValidationError(f"{name}: dtype {got_array.dtype} != {want_array.dtype}")
    got_bytes, want_bytes = (np.ascontiguousarray(array).reshape(-1).view(np.uint8).reshape(-1, array.itemsize)
                             for array in (got_array, want_array))
    if not np.array_equal(got_bytes, want_bytes):
        where = np.flatnonzero((got_bytes != want_bytes).any(axis=1))[:5]
        raise ValidationError(f"{name}: values differ in their bits at flat positions {where.tolist()}: "
                              f"{got_array.ravel()[where].tolist()} != {want_array.ravel()[where].tolist()}")


def assert_close(name: str, got, want, rtol: float, atol: float = 0.0) -> None:
    """``|got - want| <= atol + rtol |want|`` everywhere (shapes equal), else ValidationError."""
    got_array = np.asarray(got, dtype=np.float64)
    want_array = np.asarray(want, dtype=np.float64)
    if got_array.shape != want_array.shape:
        raise ValidationError(f"{name}: shape {got_array.shape} != {want_array.shape}")
    error = np.abs(got_array - want_array)
    bad = ~(error <= atol + rtol * np.abs(want_array))
    if np.any(bad):
        where = np.flatnonzero(bad.ravel())[:5]
        raise ValidationError(f"{name}: {int(bad.sum())} of {bad.size} values differ beyond rtol={rtol}, "
                              f"atol={atol}; first at {where.tolist()}: {got_array.ravel()[where].tolist()} "
                              f"!= {want_array.ravel()[where].tolist()}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def in_history(commit: str) -> bool | None:
    """Whether ``commit`` is in this checkout's git history; None where git cannot tell (no git, no
    repository, a shallow clone)."""
    try:
        shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=REPO, capture_output=True,
                                 text=True, timeout=10)
        if shallow.returncode or shallow.stdout.strip() != "false":
            return None
        return subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO, capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return None


# OpenBLAS reads these when it loads: the kernel family it uses (instead of the one it detects) and the L2
# size it blocks for. They are recorded, and the round benchmarks also measure the peak without them (in a
# child process); the benchmarks never set or change them.
BLAS_KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def blas_libraries() -> list[dict]:
    """Every BLAS library loaded in this process as threadpoolctl reports it: API, version, kernel family
    (``architecture``, OpenBLAS's name for the kernels it picked), threads, threading layer, file name and
    the name of its folder (``numpy.libs``: NumPy's own; SciPy brings another). torch's MKL is linked into
    torch statically and is not listed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{"internal_api": pool.get("internal_api"), "version": pool.get("version"),
             "architecture": pool.get("architecture"), "num_threads": pool.get("num_threads"),
             "threading_layer": pool.get("threading_layer"),
             "filepath": Path(pool["filepath"]).name if pool.get("filepath") else None,
             "package_dir": Path(pool["filepath"]).parent.name if pool.get("filepath") else None}
            for pool in threadpool_info() if pool.get("user_api") == "blas"]


def machine_info(threads: dict | None = None) -> dict:
    """Machine, versions (NumPy's SIMD extensions included), date, thread settings and the BLAS in use, for
    every results file."""
    import numba
    import scipy
    versions = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
                "scipy": scipy.__version__}
    try:
        import torch
        versions["torch"] = torch.__version__
    except ImportError:
        versions["torch"] = None
    try:
        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        versions["numpy_blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except (TypeError, AttributeError):
        versions["numpy_blas"] = None
    from fedsim.data.cache import numpy_simd
    versions["numpy_simd"] = numpy_simd()      # NumPy's AVX-512 loops round some functions otherwise than AVX2's
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "memory_bytes": _memory_bytes(),
        "platform": platform.platform(), "versions": versions, "threads": threads,
        "blas": blas_libraries(),
        "blas_environment": {name: os.environ.get(name) for name in BLAS_KERNEL_VARIABLES},
        "fedsim_commit": _git_commit(),
    }


def write_json(path: Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def check_option(parser, option: str, constraint, value):
    """``value`` (a text: the number it spells, if any) if the constraint (:mod:`fedsim.constraints`) allows
    it, else the parser's one-line error naming the option."""
    for kind in (int, float) if isinstance(value, str) else ():
        try:
            value = kind(value)
            break
        except ValueError:
            pass
    try:
        return constraint.check(option, value)
    except (TypeError, ValueError) as error:
        parser.error(str(error))


def suite_arguments(description: str, argv: Sequence[str] | None = None):
    """The command line every suite module accepts when run on its own (``python -m benchmarks.kernels``)."""
    import argparse

    from fedsim.constraints import Integer
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mode", default="quick", choices=MODES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder with the fashion-mnist IDX files (default: fedsim's search path)")
    args = parser.parse_args(argv)
    check_option(parser, "--threads", Integer(low=1), args.threads)
    check_data_dir(parser, args.data_dir)
    return args


def check_data_dir(parser, data_dir) -> None:
    """A given --data-dir must be an existing folder (else the parser's one-line error): a mistyped one must not
    leave the round benchmarks on random data."""
    from fedsim.data.registry import DataSettingError
    from fedsim.data.search import search_path
    try:
        search_path(data_dir)
    except DataSettingError as error:
        parser.error(str(error))


def suite_main(doc: str, run: Callable[..., dict], argv: Sequence[str] | None = None) -> None:
    """Run a suite from its own command line (see :func:`suite_arguments`) and write its JSON."""
    args = suite_arguments(doc.splitlines()[0], argv)
    write_json(args.json, run(args.mode, args.threads, args.data_dir))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
