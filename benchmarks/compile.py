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

**Start-up** (the time to a first result): the whole command ``fedsim run --preset stc-mnist --set
federated.rounds=5`` (and ``--preset laq-mnist --set lazy.iterations=5``), each a fresh process timed from
outside, medians of the repeats:

* **cold**: empty Numba cache and empty fedsim cache (fresh ``NUMBA_CACHE_DIR`` and ``FEDSIM_CACHE`` for each
  repeat): the kernels compile and the STC pipeline's arrays are computed and stored;
* **warm**: the caches a first run filled: the kernels' machine code and the preprocessed arrays are loaded.

Each is broken down from inside the process (:data:`STARTUP_CHILD` runs ``fedsim.cli.main`` with timers):
interpreter start-up (the wall time outside ``main``), imports (what ``fedsim run`` imports before it runs),
data (locating, verifying and preprocessing the dataset, or loading the cached arrays), the first round
(which imports Numba and loads or compiles the kernels it uses) and the rest (the other rounds, building the
run, writing the run folder). The presets train on MNIST; where its train images are not on disk the same
command runs on Fashion-MNIST (``--dataset fashion-mnist``, the same sizes). Smoke mode runs the offline
``synthetic`` preset (FedAvg, 1 round) once each way.
"""

from __future__ import annotations

import json
import os
import shutil
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
    from fedsim.kernels import golomb, laq, selection, sparsify, ternary
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
        ("ternarize", lambda: ternary._ternarize(x, 50, positions, signs)),
        ("sampled_ternarize", lambda: ternary._sampled_ternarize(x, sample, 5, 50, positions, signs)),
        ("top_k_threshold", lambda: selection._top_k_threshold(x, 50)),
        ("top_k_sparsify", lambda: selection._top_k_sparsify(x, 50, positions, values)),
        ("sign", lambda: ternary._sign(x, signs)),
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


# The start-up commands: (label, fedsim run arguments, steps) by mode; repeats of each, cold and warm.
STARTUP = {
    "smoke": {"repeats": 1, "runs": [("synthetic", ["--preset", "synthetic", "--set", "federated.rounds=1",
                                                    "--set", "federated.method=fedavg"], 1)]},
    "quick": {"repeats": 3, "runs": [("stc-mnist", ["--preset", "stc-mnist", "--set", "federated.rounds=5"], 5),
                                     ("laq-mnist", ["--preset", "laq-mnist", "--set", "lazy.iterations=5"], 5)]},
    "full": {"repeats": 5, "runs": [("stc-mnist", ["--preset", "stc-mnist", "--set", "federated.rounds=5"], 5),
                                    ("laq-mnist", ["--preset", "laq-mnist", "--set", "lazy.iterations=5"], 5)]},
}

# Run in a fresh process as `python -c STARTUP_CHILD TIMINGS.json ARGS...`: `fedsim ARGS` with timers around
# its imports, its data loading and each step; the timings go to TIMINGS.json (fedsim's own output is left
# alone). Nothing of the benchmarks is imported, so the imports timed are fedsim's alone.
STARTUP_CHILD = """
import json, sys, time
started = time.perf_counter()
import fedsim.cli
import fedsim.config, fedsim.data.fetch, fedsim.runs, fedsim.sweeps.execute  # what `fedsim run` imports
imported = time.perf_counter()
from fedsim.runs import loop
timings = {"import_seconds": imported - started, "step_seconds": []}
load_data, execute = loop.load_data, loop.execute

def timed_load_data(*args, **kwargs):
    begun = time.perf_counter()
    try:
        return load_data(*args, **kwargs)
    finally:
        timings["data_seconds"] = time.perf_counter() - begun

def timed_execute(run, *args, **kwargs):
    step = run.step
    def timed_step():
        begun = time.perf_counter()
        try:
            return step()
        finally:
            timings["step_seconds"].append(time.perf_counter() - begun)
    run.step = timed_step
    return execute(run, *args, **kwargs)

loop.load_data, loop.execute = timed_load_data, timed_execute
status = fedsim.cli.main(sys.argv[2:])
timings["main_seconds"] = time.perf_counter() - started
timings["exit_status"] = status
with open(sys.argv[1], "w") as handle:
    json.dump(timings, handle)
sys.exit(status)
"""


def startup_dataset(data_dir) -> list[str]:
    """Extra ``fedsim run`` arguments for the MNIST presets: none if MNIST's four files are on disk, else
    ``--dataset fashion-mnist`` if its files are; ``--data-dir`` if given. None if neither dataset is."""
    from fedsim.data.search import locate
    from fedsim.data.registry import FILE_KEYS
    extra = ["--data-dir", str(data_dir)] if data_dir is not None else []
    for name, arguments in (("mnist", []), ("fashion-mnist", ["--dataset", "fashion-mnist"])):
        if all(locate(name, key, data_dir) is not None for key in FILE_KEYS):
            return arguments + extra
    return None


def _startup_once(arguments: list[str], environment: dict, caches: Path, scratch: Path) -> dict:
    """One fresh ``fedsim run`` process with its caches in ``caches``: wall time and breakdown."""
    out = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    timings_file = out / "timings.json"
    environment = dict(environment, NUMBA_CACHE_DIR=str(caches / "numba"), FEDSIM_CACHE=str(caches / "fedsim"))
    command = [sys.executable, "-c", STARTUP_CHILD, str(timings_file), "run", *arguments,
               "--out", str(out / "run"), "--quiet"]
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=scratch, env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0 or not timings_file.exists():
        raise RuntimeError(f"start-up measurement `fedsim run {' '.join(arguments)}` failed "
                           f"(exit {finished.returncode}):\n{finished.stderr[-3000:]}")
    timings = json.loads(timings_file.read_text())
    steps = timings["step_seconds"]
    shutil.rmtree(out, ignore_errors=True)
    first = steps[0] if steps else 0.0
    return {"wall_seconds": wall, "interpreter_seconds": wall - timings["main_seconds"],
            "import_seconds": timings["import_seconds"], "data_seconds": timings.get("data_seconds", 0.0),
            "first_round_seconds": first,
            "rest_seconds": timings["main_seconds"] - timings["import_seconds"] - timings.get("data_seconds", 0.0)
                            - first,
            "other_rounds_seconds": float(sum(steps[1:])), "steps": len(steps)}


STARTUP_PARTS = ("wall_seconds", "interpreter_seconds", "import_seconds", "data_seconds", "first_round_seconds",
                 "rest_seconds", "other_rounds_seconds")


def _medians(samples: list[dict]) -> dict:
    return {part: float(np.median([sample[part] for sample in samples])) for part in STARTUP_PARTS}


def startup_benchmark(mode: str, threads: int, data_dir=None) -> dict:
    """Cold and warm start of each command of :data:`STARTUP` ``[mode]``, interleaved (cold, warm, cold,
    warm, ...): each cold repeat in new empty caches, each warm one in the caches the first cold run
    filled."""
    settings = STARTUP[mode]
    dataset_arguments = [] if mode == "smoke" else startup_dataset(data_dir)
    results = {"repeats": settings["repeats"], "runs": {}}
    if dataset_arguments is None:
        results["skipped"] = "neither MNIST nor Fashion-MNIST is on disk"
        return results
    from fedsim.data.search import cache_dir, user_cache_dir
    environment = common.thread_environment(threads)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(common.REPO), environment.get("PYTHONPATH")]))
    # The children get caches of their own: the dataset files this process finds in its caches stay found.
    environment["FEDSIM_DATA"] = os.pathsep.join(filter(None, [environment.get("FEDSIM_DATA"), str(cache_dir()),
                                                                str(user_cache_dir())]))
    environment.pop("FEDSIM_ARRAY_CACHE", None)
    for label, arguments, steps in settings["runs"]:
        # the command as recorded: without --data-dir (a path of this machine)
        shown = arguments + [a for a, before in zip(dataset_arguments, [None] + dataset_arguments)
                             if a != "--data-dir" and before != "--data-dir"]
        arguments = arguments + dataset_arguments
        log(f"compile: start-up of fedsim run {' '.join(arguments)}")
        samples: dict[str, list[dict]] = {"cold": [], "warm": []}
        with tempfile.TemporaryDirectory(prefix="fedsim-startup-") as scratch:
            scratch = Path(scratch)
            warm_caches = scratch / "warm"
            for repeat in range(settings["repeats"]):
                cold_caches = warm_caches if repeat == 0 else scratch / f"cold-{repeat}"
                samples["cold"].append(_startup_once(arguments, environment, cold_caches, scratch))
                if cold_caches != warm_caches:
                    shutil.rmtree(cold_caches, ignore_errors=True)
                samples["warm"].append(_startup_once(arguments, environment, warm_caches, scratch))
        results["runs"][label] = {
            "command": ["fedsim", "run", *shown], "steps": steps,
            "cold": {"median": _medians(samples["cold"]), "samples": samples["cold"]},
            "warm": {"median": _medians(samples["warm"]), "samples": samples["warm"]}}
    return results


def run(mode: str, threads: int, data_dir=None) -> dict:
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
    results["startup"] = startup_benchmark(mode, threads, data_dir)
    for label, measured in results["startup"]["runs"].items():
        results["summary"][f"startup_{label}_cold_seconds"] = measured["cold"]["median"]["wall_seconds"]
        results["summary"][f"startup_{label}_warm_seconds"] = measured["warm"]["median"]["wall_seconds"]
    return results


def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="quick", choices=common.MODES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", action="store_true", help="measure this process and print JSON")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder with the dataset files of the start-up runs (default: fedsim's search path)")
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure_process(args.mode)))
        return
    if args.json is None:
        parser.error("--json is required unless --measure is given")
    from fedsim.constraints import Integer
    common.check_option(parser, "--threads", Integer(low=1), args.threads)
    common.write_json(args.json, run(args.mode, args.threads, args.data_dir))


if __name__ == "__main__":
    main()
