"""What the round benchmarks share (:mod:`benchmarks.rounds`, :mod:`benchmarks.mlp`,
:mod:`benchmarks.local_epoch`): their data, the machine's product peak and read bandwidth, the floor a round
is measured against, and a fedsim round replayed on torch and checked against it.

The floor: ``max(bytes / bandwidth, flops / peak)``, the bytes those a round reads once, the bandwidth that
of a streaming sum over those very arrays, the peak that of a large NumPy matmul on the same threads
(:mod:`benchmarks.rounds` says what each round counts).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from benchmarks import common
from benchmarks.common import ValidationError, assert_close, assert_equal, log


# Repeats of each peak measurement (median); the two peaks (here and in the child) are taken one after the
# other, so on a shared machine load can separate them by a few tens of percent.
PEAK_REPEATS = 5


@dataclass(frozen=True)
class Data:
    """A dataset for a benchmark and where it came from."""

    dataset: object            # fedsim Dataset
    source: str                # what it is, for the results


def load_or_synthesize(pipeline: str, data_dir, synthetic_shape, n_test, seed: int = 0) -> Data:
    """Fashion-MNIST through fedsim's pipeline (``stc`` or ``laq``), or random data of the same shapes when
    the files are not available (or ``synthetic_shape`` asks for small data)."""
    from fedsim.data.dataset import Dataset
    dtype = np.float32 if pipeline == "stc" else np.float64
    if synthetic_shape is None:
        from fedsim.data.load import load_dataset
        try:
            dataset = load_dataset("fashion-mnist", pipeline, data_dir=data_dir, download=False,
                                   progress=False)
            return Data(dataset, f"Fashion-MNIST (60,000 train / 10,000 test images), {pipeline} pipeline")
        except (OSError, ValueError) as error:
            log(f"fashion-mnist not available ({type(error).__name__}: {error}); using random data")
            synthetic_shape = (60000, 1024 if pipeline == "stc" else 784)
            n_test = 10000
    n_train, n_features = synthetic_shape
    n_test = n_test or 10000
    rng = np.random.default_rng(seed)
    dataset = Dataset(name="random", x_train=rng.standard_normal((n_train, n_features)).astype(dtype),
                      y_train=rng.integers(0, 10, n_train), x_test=rng.standard_normal(
                          (n_test, n_features)).astype(dtype), y_test=rng.integers(0, 10, n_test), n_classes=10)
    return Data(dataset, f"random normal data of shape {n_train} x {n_features} (train), {n_test} test "
                         f"(not the real images)")


def peak_matmul_gflops(size: int, dtype, repeats: int = 3) -> dict:
    """The machine's matmul rate: a (size x size) @ (size x size) NumPy product, 2 size^3 flops."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    timing = common.time_interleaved({"matmul": lambda: a @ b}, repeats)["matmul"]
    return {"size": size, "dtype": np.dtype(dtype).name, "seconds": timing.median,
            "gflops": 2 * size ** 3 / timing.median / 1e9}


def peak_here(size: int, dtype, repeats: int = 3) -> dict:
    """:func:`peak_matmul_gflops` in this process, with the BLAS that ran it and the environment's
    values of the OpenBLAS kernel variables (None: not set)."""
    peak = peak_matmul_gflops(size, dtype, repeats)
    peak["blas"] = common.blas_libraries()
    peak["environment"] = {name: os.environ.get(name) for name in common.BLAS_KERNEL_VARIABLES}
    return peak


_PEAK_IN_CHILD = ("import json, sys\n"
                  "from benchmarks.rounds import peak_here\n"
                  "print(json.dumps(peak_here(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))))\n")


def peak_without_kernel_variables(size: int, dtype, repeats: int = 3) -> dict:
    """:func:`peak_here` in a child process whose environment is this one without ``OPENBLAS_CORETYPE``
    and ``OPENBLAS_L2_SIZE`` (thread variables kept): the peak OpenBLAS reaches with the kernels it picks
    for the CPU it detects. This process's environment is left as it is."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in common.BLAS_KERNEL_VARIABLES}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(common.REPO), environment.get("PYTHONPATH")]))
    finished = subprocess.run([sys.executable, "-c", _PEAK_IN_CHILD, str(size), np.dtype(dtype).name,
                               str(repeats)], cwd=common.REPO, env=environment, capture_output=True, text=True,
                              timeout=900)
    if finished.returncode != 0:
        raise RuntimeError(f"the peak measurement in a child process failed: {finished.stderr[-2000:]}")
    peak = json.loads(finished.stdout.strip().splitlines()[-1])
    peak["removed_from_environment"] = {name: os.environ.get(name) for name in common.BLAS_KERNEL_VARIABLES}
    return peak


# ---------------------------------------------------------------------------------------------------------
# the floor: the samples read once at the measured bandwidth, or the products at the peak


@functools.cache
def _row_sum_kernel():
    """A Numba loop adding the rows ``x[rows]`` into ``out`` in place: a streaming read of exactly the
    training rows a round gathers, without the gather's copy (compiled on first use, not cached on disk)."""
    import numba

    @numba.njit(nogil=True)
    def add_rows(x, rows, out):
        out[:] = 0
        for i in range(rows.shape[0]):
            row = x[rows[i]]
            for j in range(out.shape[0]):
                out[j] += row[j]
        return out

    return add_rows


def row_reader(x: np.ndarray, rows: np.ndarray):
    """A zero-argument call that reads the rows ``x[rows]`` once (in place) and the bytes it reads."""
    kernel = _row_sum_kernel()
    flat = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
    out = np.zeros(x.shape[1], dtype=x.dtype)
    kernel(x, flat, out)                             # compile outside any timing
    return (lambda: kernel(x, flat, out)), int(flat.size) * x.shape[1] * x.itemsize


def array_reader(arrays):
    """A zero-argument call that reads each (C-contiguous) array once, a float sum of all its entries
    (``np.add.reduce`` on its flat view), and the bytes it reads."""
    arrays = list(arrays)
    for array in arrays:
        if not array.flags.c_contiguous:
            raise ValueError("a streaming read needs C-contiguous arrays (a copy would double the bytes)")

    def read():
        return [np.add.reduce(array.reshape(-1)) for array in arrays]
    return read, sum(int(array.nbytes) for array in arrays)


def floor(read_bytes: int, read_seconds: float, flops: float, peak: dict, seconds: dict) -> dict:
    """The floor ``max(bytes / bandwidth, flops / peak)`` of a computation that reads ``read_bytes`` (read
    in ``read_seconds`` by a streaming sum) and does ``flops`` of matrix products, and each implementation's
    time (``seconds``, by name) as a multiple of it."""
    bandwidth = read_bytes / read_seconds
    memory_seconds = read_bytes / bandwidth
    compute_seconds = flops / (peak["gflops"] * 1e9)
    floor_seconds = max(memory_seconds, compute_seconds)
    return {"bytes": int(read_bytes), "read_seconds": read_seconds, "bandwidth_gbps": bandwidth / 1e9,
            "memory_seconds": memory_seconds, "flops": int(flops), "peak_gflops": peak["gflops"],
            "peak_dtype": peak["dtype"], "compute_seconds": compute_seconds, "floor_seconds": floor_seconds,
            "binds": "memory" if memory_seconds >= compute_seconds else "compute",
            "seconds": dict(seconds), "multiple": {name: value / floor_seconds for name, value in seconds.items()}}


# ---------------------------------------------------------------------------------------------------------
# STC


def replay(run) -> tuple[np.ndarray, np.ndarray]:
    """Participants and batch rows (iterations, K, B) of the round fedsim just ran (from its batch trace)."""
    entries = run.batch_trace
    participants = entries[0][1]
    rows = []
    for _, _, samples, count in entries:
        if np.any(count < samples.shape[1]):
            raise ValidationError("a ragged batch (end of a client's epoch) in a replayed round; the torch "
                                  "round assumes full batches")
        rows.append(samples)
    run.batch_trace.clear()
    return participants, np.stack(rows)


def validate_stc(label: str, reference, outcome: dict, run, record: dict, fedsim_eval: dict | None) -> dict:
    """Check one torch round (``outcome`` of ``reference.step``) against fedsim's (``record``, the run's
    state after it) and the evaluations (None: no evaluation to check); raise ValidationError, else return
    the deviations found."""
    scale = float(np.abs(run.server.weights).max())
    weights = reference.weights.numpy()
    losses = outcome["client_losses"].numpy()
    assert_close(f"STC round: server weights ({label} vs fedsim)", weights, run.server.weights,
                 rtol=1e-4, atol=1e-5 * scale)
    assert_close(f"STC round: client losses ({label} vs fedsim)", losses, record["client_losses"],
                 rtol=1e-4, atol=1e-6)
    assert_equal(f"STC round: upstream bits ({label} vs fedsim)", outcome["bits_up"], record["bits_up"])
    assert_equal(f"STC round: downstream bits ({label} vs fedsim)", outcome["bits_down"], record["bits_down"])
    checked = {"passed": True,
               "server_weights_max_abs_difference": float(np.abs(weights.astype(np.float64)
                                                                 - run.server.weights).max()),
               "server_weights_max_abs": scale,
               "client_losses_max_abs_difference": float(np.abs(losses - np.asarray(record["client_losses"])).max()),
               "bits_up": int(outcome["bits_up"]), "bits_down": int(outcome["bits_down"]),
               "tolerances": {"server_weights": "rtol 1e-4, atol 1e-5 max|W|", "client_losses": "rtol 1e-4, atol 1e-6",
                              "bits": "exact"}}
    if fedsim_eval is None:
        return checked
    evaluation = reference.evaluate()
    for key, value in fedsim_eval.items():
        assert_close(f"STC evaluation ({label} vs fedsim): {key}", evaluation[key], value, rtol=1e-4, atol=1e-6)
    checked["evaluation_max_abs_difference"] = max(abs(evaluation[key] - value) for key, value in fedsim_eval.items())
    checked["tolerances"]["evaluation"] = "rtol 1e-4, atol 1e-6"
    return checked
