"""JIT compile time of fedsim's kernels, apart from their steady-state time.

fedsim compiles its kernels with ``cache=True`` (``fedsim.kernels.JIT_OPTIONS``): the first process on a
machine compiles them and writes the machine code to Numba's cache; later processes load it. This suite
measures both in fresh processes whose ``NUMBA_CACHE_DIR`` points at a new temporary folder:

* **cold**: empty cache, so each kernel's first call compiles it (and the helpers it calls that no
  earlier kernel compiled);
* **cached**: a second process on the same folder, so first calls load machine code from the cache;
* **steady**: the second call in the same process (what every benchmark times).

Each kernel is called once with small inputs of the types a federated run uses (float32 updates, float64
LAQ gradients). The order is fixed, so shared helpers are charged to the first kernel that needs them.
A whole first round of a small STC run is measured the same way (it compiles everything a round needs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.common import log


# Smoke mode (the test suite) compiles only these two cheap kernels, and no round.
SMOKE_KERNELS = ("sign", "golomb_rice_encode")


def _calls(mode: str):
    """(name, zero-argument call) of each kernel of ``mode``, with small inputs."""
    from fedsim.kernels import golomb, laq, sparsify
    rng = np.random.default_rng(0)
    x = rng.standard_normal(50_000).astype(np.float32)
    positions = np.empty(x.size, np.int64)
    signs = np.empty(x.size, np.int8)
    values = np.empty(x.size, np.float32)
    sample = np.sort(rng.choice(x.size, 5_000, replace=False)).astype(np.int64)
    rows = rng.standard_normal((4, 1_000)).astype(np.float32)
    offsets = np.array([0, 900, 1_000], np.int64)
    sent = np.zeros_like(rows)
    counts = np.zeros((4, 2), np.int64)
    encoded = np.zeros(4, np.int64)
    scales = np.zeros((4, 2), np.float32)
    sorted_positions = np.sort(rng.choice(x.size, 500, replace=False)).astype(np.int64)
    stream, n_bits = golomb.golomb_rice_encode_numpy(sorted_positions, 6)
    gradients = rng.standard_normal((3, 2_000))
    previous = rng.standard_normal((3, 2_000))
    laq_out = (np.empty((3, 2_000), np.uint8), np.empty((3, 2_000)), np.empty(3), np.empty(3), np.empty(3))
    calls = [
        ("ternarize", lambda: sparsify.ternarize(x, 50, positions, signs)),
        ("sampled_ternarize", lambda: sparsify.sampled_ternarize(x, sample, 5, 50, positions, signs)),
        ("top_k_threshold", lambda: sparsify.top_k_threshold(x, 50)),
        ("top_k_sparsify", lambda: sparsify.top_k_sparsify(x, 50, positions, values)),
        ("sign", lambda: sparsify.sign(x, signs)),
        ("sparse_compress_batch", lambda: sparsify.sparse_compress_batch(
            rows, offsets, np.array([1, 1], np.int64), True, 32, False, np.zeros(0, np.int64),
            np.zeros(1, np.int64), np.zeros(2, np.int64), sent, counts, encoded)),
        ("sign_compress_batch", lambda: sparsify.sign_compress_batch(rows, offsets, True, 32, sent, scales,
                                                                     encoded)),
        ("golomb_rice_encode", lambda: golomb.golomb_rice_encode(sorted_positions, 6)),
        ("golomb_rice_decode", lambda: golomb.golomb_rice_decode(stream, n_bits, 500, 6)),
        ("laq_quantize", lambda: laq.laq_quantize(gradients, previous, 4, *laq_out)),
    ]
    return [(name, call) for name, call in calls if mode != "smoke" or name in SMOKE_KERNELS]


def _first_round():
    """Build a small STC run and return a call of one round."""
    from fedsim.algorithms.federated import FederatedConfig, FederatedRun
    from fedsim.data.synthetic import make_synthetic
    dataset = make_synthetic(1.0, 1.0, 10, np.random.default_rng(0), samples=20, test_fraction=0.2)
    config = FederatedConfig(method="stc_updown", rounds=5, n_clients=10, batch_size=10, eval_every=1)
    run = FederatedRun(config, dataset, dataset.client_indices, seed=0)
    return run.step


def measure_process(mode: str) -> dict:
    """First and second call of every kernel in this process (run it in a fresh process)."""
    started = time.perf_counter()
    import numba

    import fedsim.kernels.golomb  # noqa: F401  (import time of the kernel modules, reported apart)
    import fedsim.kernels.laq  # noqa: F401
    import fedsim.kernels.sparsify  # noqa: F401
    imported = time.perf_counter() - started

    def trivial(value):
        return value + 1

    # Numba initializes LLVM and its type machinery on the first compilation in a process: charged here,
    # not to the first kernel.
    started = time.perf_counter()
    numba.njit(cache=False)(trivial)(1)
    initialization = time.perf_counter() - started
    results = {"import_seconds": imported, "numba_initialization_seconds": initialization, "kernels": {}}
    for name, call in _calls(mode):
        first_started = time.perf_counter()
        call()
        first = time.perf_counter() - first_started
        second_started = time.perf_counter()
        call()
        second = time.perf_counter() - second_started
        results["kernels"][name] = {"first_call": first, "second_call": second}
    if mode == "smoke":
        return results
    step = _first_round()
    started = time.perf_counter()
    step()
    first = time.perf_counter() - started
    started = time.perf_counter()
    step()
    results["first_round"] = {"first_call": first, "second_call": time.perf_counter() - started}
    return results


def run(mode: str, threads: int) -> dict:
    common.check_mode(mode)
    thread_report = common.apply_threads(threads)
    results = {"suite": "compile", "mode": mode, "machine": common.machine_info(thread_report)}
    with tempfile.TemporaryDirectory(prefix="fedsim-numba-cache-") as cache:
        environment = common.thread_environment(threads)
        environment["NUMBA_CACHE_DIR"] = cache
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(common.REPO),
                                                                  environment.get("PYTHONPATH")]))
        for phase in ("cold", "cached"):
            log(f"compile: {phase} cache")
            finished = subprocess.run([sys.executable, "-m", "benchmarks.compile", "--measure", "--mode", mode],
                                      cwd=common.REPO, env=environment, capture_output=True, text=True)
            if finished.returncode != 0:
                raise RuntimeError(f"compile measurement ({phase}) failed:\n{finished.stderr}")
            results[phase] = json.loads(finished.stdout.strip().splitlines()[-1])
    cold, cached = results["cold"], results["cached"]
    results["summary"] = {
        "numba_initialization_seconds": cold["numba_initialization_seconds"],
        "cold_compile_seconds": sum(k["first_call"] for k in cold["kernels"].values()),
        "cached_load_seconds": sum(k["first_call"] for k in cached["kernels"].values()),
        "steady_call_seconds": sum(k["second_call"] for k in cached["kernels"].values()),
    }
    if "first_round" in cold:
        results["summary"].update({
            "first_round_after_compile_seconds": cold["first_round"]["first_call"],
            "first_round_cached_seconds": cached["first_round"]["first_call"],
            "round_steady_seconds": cached["first_round"]["second_call"]})
    return results


def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="quick", choices=common.MODES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", action="store_true", help="measure this process and print JSON")
    parser.add_argument("--data-dir", type=Path, default=None, help="unused")
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure_process(args.mode)))
        return
    if args.json is None:
        parser.error("--json is required unless --measure is given")
    common.write_json(args.json, run(args.mode, args.threads))


if __name__ == "__main__":
    main()
