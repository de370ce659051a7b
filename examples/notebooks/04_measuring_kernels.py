# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Measuring kernels honestly
#
# **Goal.** A compressor kernel such as STC's ternarization reads a vector once and writes a few
# positions: on a modern machine it should take about as long as reading the vector once. `numpy.copy`
# reads it once and writes it once, so the kernel may take less time than a copy or more; the figure
# shows the measured ratio on this machine.
# Measuring that is easy to get wrong: the first call compiles, thread pools compete with other programs,
# one slow repeat spoils a mean, and two implementations timed minutes apart see different machines.
# This notebook times fedsim's STC kernel the way the benchmark suite does (`benchmarks/common.py`: pinned
# threads, warm-up, interleaved repeats, medians, validation before timing) and plots time against size
# beside `numpy.copy`, the memory floor. It needs no dataset and runs in about ten seconds; `FULL = True`
# adds vectors of 10 million entries.

# %%
import importlib.util
import math
import os
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import fedsim
from fedsim.kernels import ternary

sys.path.insert(0, str(Path(fedsim.__file__).resolve().parents[1]))   # benchmarks/ sits beside fedsim/
common = importlib.import_module("benchmarks.common")                   # the suite's timing helpers

FULL = False                                          # True: sizes up to 10 million entries
FIGURES = os.environ.get("FEDSIM_NOTEBOOK_FIGURES")   # a folder: save this notebook's README figure there
rng = np.random.default_rng(0)

# %% [markdown]
# ## Step 1: pin the threads
#
# BLAS (under NumPy's matrix products), OpenMP and Numba each keep a pool of threads. On a shared
# 2-core machine a kernel timed with two threads is also timing its neighbours, and a result that
# depends on the thread count is not a property of the kernel. The suite sets
# `common.THREAD_VARIABLES` (`OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`, ...) before each suite's process
# starts, since the libraries read them only when they load. In a notebook they are loaded already, so
# we pin at run time: `common.apply_threads` for Numba (and torch, when used) and threadpoolctl for BLAS.

# %%
report = common.apply_threads(1, torch=False)
threadpool_limits(1)
print("numba threads:", report["numba"], "| fixed by the environment:", report["blas_fixed_by_environment"])
print("BLAS:", [(pool["internal_api"], pool["num_threads"]) for pool in threadpool_info()
                if pool["user_api"] == "blas"])

# %% [markdown]
# What a thread count does to a matrix product (600 x 600, interleaved, 15 repeats each). On an idle
# machine two threads take about half the time; on a busy one they wait for each other and for the
# neighbours, and the spread of each column shows how much the machine's load moves a single timing:

# %%
a = rng.standard_normal((600, 600))


def product_with(threads):
    def run():
        with threadpool_limits(threads):
            a @ a
    return run


products = common.time_interleaved({"1 thread": product_with(1), "2 threads": product_with(2)}, repeats=15)
fig, ax = plt.subplots(figsize=(5, 2.4))
for i, (name, timing) in enumerate(products.items()):
    ax.plot(np.full(len(timing.samples), i), np.array(timing.samples) * 1e3, "o", alpha=0.5)
    ax.plot([i - 0.2, i + 0.2], [timing.median * 1e3] * 2, "k-")
ax.set_xticks(range(len(products)), list(products))
ax.set_ylabel("ms per product (bar: median)");

# %% [markdown]
# ## Step 2: warm up
#
# fedsim's kernels are Numba functions compiled on their first call (`cache=True` stores the machine
# code on disk, so a later process only loads it, but even that takes far longer than a call). The NumPy
# twin has a smaller first-call cost of its own (buffers, caches). The first 15 calls of each, on
# $N = 10^6$ float32 entries with $k = \lceil 0.01 N \rceil$:

# %%
size = 1_000_000
x = rng.standard_normal(size).astype(np.float32)
k = math.ceil(0.01 * size)
outputs = {name: (np.empty(k, np.int64), np.empty(k, np.int8)) for name in ("fedsim", "numpy")}
kernels = {"fedsim": lambda: ternary._ternarize(x, k, *outputs["fedsim"]),
           "numpy": lambda: ternary._ternarize_numpy(x, k, *outputs["numpy"])}
first_calls = {name: [] for name in kernels}
for name, kernel in kernels.items():
    for _ in range(15):
        started = time.perf_counter()
        kernel()
        first_calls[name].append(time.perf_counter() - started)

# %%
fig, ax = plt.subplots(figsize=(6, 2.6))
for name, times in first_calls.items():
    ax.semilogy(range(1, 16), np.array(times) * 1e3, "o-", label=f"STC, {name}")
ax.set_xlabel("call number")
ax.set_ylabel("ms")
ax.legend(fontsize=8)
later = np.median(first_calls["fedsim"][1:])
print(f"first fedsim call {first_calls['fedsim'][0] * 1e3:.1f} ms, the later ones {later * 1e3:.2f} ms")

# %% [markdown]
# ## Step 3: validate before timing
#
# A fast wrong answer is worth nothing, so the suite first checks that what it compares computes the
# same thing: the NumPy twin must equal the Numba kernel **bitwise** (`common.assert_equal`: dtype, shape and
# bytes, so -0.0 is not 0.0; torch, in the suite, within a stated tolerance where it rounds otherwise). A
# disagreement raises `ValidationError` and nothing is timed.

# %%
results = {name: kernel() for name, kernel in kernels.items()}      # (count, mu) of each
count = results["fedsim"][0]
common.assert_equal("STC count", results["fedsim"][0], results["numpy"][0])
mus = [np.asarray(results[name][1], x.dtype) for name in kernels]     # mu in x's dtype, as the suite does
common.assert_equal("STC mu", *mus)
for i, field in enumerate(("positions", "signs")):
    common.assert_equal(f"STC {field}", outputs["fedsim"][i][:count], outputs["numpy"][i][:count])
print(f"fedsim and its NumPy twin agree bitwise: {count} positions, mu = {results['fedsim'][1]}")
try:
    common.assert_equal("a deliberate mismatch", outputs["fedsim"][0][:5], outputs["fedsim"][0][1:6])
except common.ValidationError as error:
    print("ValidationError:", error)

# %% [markdown]
# ## Step 4: interleave, repeat, take medians
#
# `common.time_interleaved` calls every implementation once per repeat, in turn, after a warm-up call
# each, so a burst of load from another program hits all of them alike. The **median** of the repeats
# ignores the few that another program interrupted (a mean would not); the minimum is the best case.
# Ratios are always ratios of medians from the same run. Here with `numpy.copy` of the same vector:

# %%
timings = common.time_interleaved({**kernels, "copy": lambda: np.copy(x)}, repeats=25, warmup=1)
fig, ax = plt.subplots(figsize=(6, 2.6))
for i, (name, timing) in enumerate(timings.items()):
    ax.plot(np.full(len(timing.samples), i) + rng.uniform(-0.1, 0.1, len(timing.samples)),
            np.array(timing.samples) * 1e3, "o", alpha=0.4)
    ax.plot([i - 0.25, i + 0.25], [timing.median * 1e3] * 2, "k-")
ax.set_xticks(range(3), ["STC (fedsim)", "STC (NumPy twin)", "numpy.copy"])
ax.set_ylabel("ms per call (bar: median)")
print({name: f"median {t.median * 1e3:.3f} ms, min {t.minimum * 1e3:.3f} ms" for name, t in timings.items()})

# %% [markdown]
# ## Step 5: time against size, and the copy floor
#
# A kernel that must read all $N$ entries cannot beat reading them. `numpy.copy` reads them once and
# writes them once, so it is a yardstick of that floor, not the floor itself: a kernel that writes only
# 1% of the entries can take less time than the copy (a ratio below 1 in the right panel) as well as more. Small vectors fit in the caches and are dominated by the
# fixed cost of a call (fedsim's kernels check their arguments in Python first); large ones stream from
# memory, and there the ratio to the copy is what to watch. `numpy.copy` also allocates its output, and
# the first write to fresh memory costs page faults; `numpy.copyto` into a buffer allocated once (as
# fedsim's kernels write into preallocated outputs) shows how much of the floor that is.

# %%
def medians(size):
    """Median seconds of STC (fedsim, NumPy twin), numpy.copy and numpy.copyto on ``size`` entries."""
    vector = rng.standard_normal(size).astype(np.float32)
    target = np.empty_like(vector)
    budget = math.ceil(0.01 * size)
    buffers = {name: (np.empty(budget, np.int64), np.empty(budget, np.int8)) for name in ("fedsim", "numpy")}
    measured = common.time_interleaved({
        "fedsim": lambda: ternary._ternarize(vector, budget, *buffers["fedsim"]),
        "numpy": lambda: ternary._ternarize_numpy(vector, budget, *buffers["numpy"]),
        "copy": lambda: np.copy(vector), "copyto": lambda: np.copyto(target, vector)},
        repeats=9 if size < 10 ** 6 else 5)
    return {name: timing.median for name, timing in measured.items()}


sizes = [10 ** e for e in range(3, 8 if FULL else 7)]
rows = [medians(size) for size in sizes]
scan = {name: [row[name] for row in rows] for name in rows[0]}

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.2))
labels = {"fedsim": "STC, fedsim (Numba)", "numpy": "STC, NumPy twin", "copy": "numpy.copy",
          "copyto": "numpy.copyto, preallocated"}
for (name, label), color in zip(labels.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
    style = "o-" if name in kernels else ".:"
    left.loglog(sizes, scan[name], style, color=color, label=label)
    right.semilogx(sizes, np.array(scan[name]) / np.array(scan["copy"]), style, color=color)
left.set_xlabel("N (float32 entries)")
left.set_ylabel("median seconds per call")
left.legend(fontsize=8)
right.set_yscale("log")
right.set_xlabel("N (float32 entries)")
right.set_ylabel("time / time of numpy.copy")
fig.suptitle("STC of N entries at p = 0.01, one thread, medians of interleaved repeats")
if FIGURES:
    fig.savefig(Path(FIGURES) / "04_kernel_vs_copy.png", dpi=80, bbox_inches="tight")
print({size: round(f / c, 2) for size, f, c in zip(sizes, scan["fedsim"], scan["copy"])})

# %% [markdown]
# ## Step 6: the suite's own case
#
# `benchmarks/kernels.py` packages all of this per kernel: `make_case` builds the inputs and every
# implementation (fedsim, the NumPy twin, torch on the CPU, `numpy.copy`), and `run_case` validates and
# then times them interleaved. It needs torch for its torch column; `python -m benchmarks.run --quick`
# runs every kernel this way and writes the JSON results and their tables (`tables.md`) to the user cache;
# only the maintainers' `--full --write-readme` rewrites the tables of `benchmarks/README.md`.

# %%
if importlib.util.find_spec("torch") is None:
    print("torch is not installed: the suite's cases need it (pip install -e '.[bench]')")
else:
    from benchmarks import kernels as suite
    common.apply_threads(1)                           # now torch too
    case = suite.make_case("stc_exact", 1_000_000, "float32", 0.01)
    result = suite.run_case(case, repeats=5)
    for name, timing in result["timings"].items():
        print(f"{name:7} median {timing['median'] * 1e3:7.3f} ms")
    print({name: round(ratio, 2) for name, ratio in result["ratios"].items()})

# %% [markdown]
# **What to take away.** Pin the threads, warm up, interleave, report medians and ratios from one run,
# and check the answers first. Then compare against what the hardware allows: a one-pass kernel whose time
# is within a small factor of `numpy.copy` (or below it: the copy also writes every entry) has little
# left to gain.
