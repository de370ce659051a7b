"""Provenance of a run: the versions it ran with, its threads and BLAS, and the git commit of fedsim.

Threads: a run's matrix products run on ``run.blas_threads`` BLAS threads, pinned with threadpoolctl for
the run's whole life whatever the environment says (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, ...), and the
softmax gradient walks its blocks on as many threads of its own (:mod:`fedsim.models.softmax`). A BLAS
product split over several threads sums in another order, so the last bits of a large product's result
depend on the thread count: pinning makes a run's history the same under any environment for one value
of ``run.blas_threads`` (1 by default; the data's loading, where the STC pipeline resizes with two products,
included), on any machine whose BLAS runs the same kernel (OpenBLAS picks one per processor, SkylakeX or
Haswell for instance, each rounding the products in its own last bits) and whose NumPy runs the same SIMD
loops (its AVX-512 ones round some functions otherwise than its AVX2 ones). The block threads change no
result, and the blocks' products are small enough that OpenBLAS runs each on one thread. fedsim's Numba
kernels are single-threaded.

BLAS: meta.json records NumPy's BLAS (:func:`numpy_blas`), the library the run's products call (not SciPy's
own, loaded by the array cache's first computation), and NumPy's SIMD extensions
(:func:`fedsim.data.cache.numpy_simd`), when the run starts; a resume warns when either differs
(:func:`blas_changed`), never because another library happens to be loaded or not.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from fedsim import __version__


def git_commit() -> dict:
    """The git commit (and whether the work tree has changes) of the checkout holding fedsim, if any: the
    folder above the package, whose ``.git`` is a folder, or a file in a git worktree."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return {}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return {}
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {"git_commit": commit.stdout.strip()}
    if status.returncode == 0:
        info["git_dirty"] = bool(status.stdout.strip())
    return info


def environment() -> dict:
    """Versions of fedsim, Python, NumPy, Numba and the platform."""
    import numba
    return {"fedsim": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "platform": platform.platform()}


@contextlib.contextmanager
def pinned_threads(blas_threads: int):
    """A context in which BLAS (and OpenMP) thread pools use ``blas_threads`` threads, and so do the
    softmax model's block loops (:func:`fedsim.models.softmax.set_threads`)."""
    from threadpoolctl import threadpool_limits

    from fedsim.models import softmax
    with threadpool_limits(limits=int(blas_threads)):
        previous = softmax.set_threads(int(blas_threads))
        try:
            yield
        finally:
            softmax.set_threads(previous)


def numpy_blas() -> str:
    """The BLAS library NumPy's products call, as ``"API VERSION KERNEL"`` (``openblas 0.3.31 SkylakeX``),
    whatever else is loaded; with a NumPy linked to a system BLAS, every BLAS loaded."""
    from fedsim.data.cache import numpy_blas_pools
    return ", ".join(sorted(f"{pool.get('internal_api')} {pool.get('version')} {pool.get('architecture', '')}".strip()
                            for pool in numpy_blas_pools()))


def thread_settings(blas_threads: int) -> dict:
    """The thread settings a run records: its pinned BLAS threads, NumPy's BLAS and SIMD extensions and the
    thread variables of the environment."""
    variables = {name: os.environ[name] for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                     "NUMBA_NUM_THREADS", "OPENBLAS_CORETYPE")
                 if name in os.environ}
    from fedsim.data.cache import numpy_simd
    return {"blas_threads": int(blas_threads), "blas": numpy_blas(), "simd": numpy_simd(), "environment": variables}


def blas_changed(recorded, current: str) -> bool:
    """Whether NumPy's BLAS ``current`` differs from the one a run ``recorded`` (a run folder written before
    fedsim recorded NumPy's alone holds the list of every BLAS then loaded: a change only if ``current`` is
    not among them)."""
    if recorded is None:
        return False
    return current not in (recorded if isinstance(recorded, list) else [recorded])


__all__ = ["blas_changed", "environment", "git_commit", "numpy_blas", "pinned_threads", "thread_settings"]
