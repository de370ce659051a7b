"""Kernel micro-benchmarks: fedsim's jitted kernels against their NumPy twins, torch (CPU) and a memory copy.

Kernels: top-k threshold selection, STC with the exact and the sampled threshold, top-k sparsification,
sign, the LAQ quantizer, Golomb-Rice encoding and decoding. Inputs: one vector of N standard normal
values (seeded) for N in 1e4, 1e5, 1e6, 1e7, in float32 and float64, with sparsity p in {0.001, 0.01}
where the kernel has one (k = ceil(p N)). The LAQ quantizer takes a gradient and a previous quantized
gradient (two normal vectors, one worker) and b = 4 bits; the Golomb-Rice coder takes ceil(p N) sorted
random positions out of N and the paper's parameter b*.

Implementations, each timed on the same inputs in the same run (interleaved):

* ``fedsim``: the Numba kernel (outputs into preallocated arrays, as the library calls it);
* ``numpy``: its plain NumPy twin (``*_numpy``), bitwise equal by contract;
* ``torch``: torch on CPU (``torch.topk`` and friends, :mod:`benchmarks.torch_reference`); none exists for
  the Golomb-Rice coder (a bit-serial code has no tensor formulation worth timing);
* ``copy``: ``numpy.copy`` of the kernel's input vector (for the LAQ quantizer, the gradient), the
  memory-bandwidth floor of a kernel that reads its input once.

Before timing, every case validates: the NumPy twin must equal fedsim bitwise (all outputs), torch must
select the same positions, signs, codes and thresholds, and agree on the means to 2 float32 ulp (float32
data) or 1e-12 (float64 data), since it sums in another order. A disagreement raises :class:`~benchmarks.common.ValidationError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from benchmarks import common
from benchmarks.common import ValidationError, assert_close, assert_equal, log

KERNELS = ("top_k_threshold", "stc_exact", "stc_sampled", "top_k_sparsify", "sign", "laq_quantize",
           "golomb_encode", "golomb_decode")
SPARSE_KERNELS = ("top_k_threshold", "stc_exact", "stc_sampled", "top_k_sparsify", "golomb_encode",
                  "golomb_decode")
SETTINGS = {
    "smoke": dict(sizes=(1_000, 40_000), dtypes=("float32", "float64"), ps=(0.01,), repeats=1),
    "quick": dict(sizes=(100_000, 10_000_000), dtypes=("float32", "float64"), ps=(0.001, 0.01), repeats=3),
    "full": dict(sizes=(10_000, 100_000, 1_000_000, 10_000_000), dtypes=("float32", "float64"),
                 ps=(0.001, 0.01), repeats=7),
}
SAMPLE_FRACTION = 0.01           # the sampled threshold's sample share f in these cases
LAQ_BITS = 4
# The NumPy twin of the Golomb-Rice decoder rescans the rest of the stream for every position, so its cost
# grows like (positions x stream bits); above this product it is not run (reported as skipped).
TWIN_DECODE_LIMIT = 3e8


#: Benchmark cases of the compressors added after the kernels above, each registered by its own block
#: at the end of this file: kernel name -> (title for the report, whether it has a sparsity p, builder).
#: A builder takes (x, size, dtype, p, rng, captured) and returns a :class:`Case`; ``x`` is the seeded
#: standard-normal input vector and ``captured`` the dict of inputs to fill (see :func:`make_case`).
COMPRESSOR_CASES: dict[str, tuple[str, bool, Callable]] = {}


def compressor_case(kernel: str, title: str, sparse: bool = False):
    """Decorator registering a compressor's benchmark case builder under ``kernel``."""
    def register(builder):
        COMPRESSOR_CASES[kernel] = (title, sparse, builder)
        return builder
    return register


def all_kernels() -> tuple[str, ...]:
    return KERNELS + tuple(COMPRESSOR_CASES)


@dataclass
class Case:
    """One kernel on one input: implementations to time and a check that they agree."""

    kernel: str
    size: int
    dtype: str
    p: float | None
    implementations: dict[str, Callable[[], object]]           # zero-argument calls, all on the same input
    results: dict[str, Callable[[object], dict]] = field(default_factory=dict)   # output -> named arrays
    skipped: dict[str, str] = field(default_factory=dict)        # implementation -> why it is not run
    tolerance: dict[str, float] = field(default_factory=dict)    # output name -> rtol for torch
    inputs: dict[str, object] = field(default_factory=dict)       # the inputs, to build other implementations

    def validate(self) -> None:
        """Run every implementation once; fedsim vs NumPy bitwise, torch within ``tolerance``."""
        outputs = {name: self.results[name](call()) for name, call in self.implementations.items()
                   if name in self.results}
        reference = outputs["fedsim"]
        for name, output in outputs.items():
            if name == "fedsim":
                continue
            if set(output) != set(reference):
                raise ValidationError(f"{self.label}: {name} returns {sorted(output)}, fedsim {sorted(reference)}")
            for key, value in output.items():
                what = f"{self.label}: {name} vs fedsim, {key}"
                if name == "torch" and key in self.tolerance:
                    assert_close(what, value, reference[key], rtol=self.tolerance[key])
                else:
                    assert_equal(what, value, reference[key])

    @property
    def label(self) -> str:
        p = "" if self.p is None else f", p={self.p:g}"
        return f"{self.kernel} (N={self.size:,}, {self.dtype}{p})"


def _mean_tolerance(dtype: str) -> float:
    """torch's mu: a float64 sum in another order. Rounded to float32 it agrees to 2 ulp; in float64 the
    order shows in the last bits (relative error ~ sqrt(k) eps), so 1e-12."""
    return 2.0 * float(np.finfo(np.float32).eps) if np.dtype(dtype) == np.float32 else 1e-12


def make_case(kernel: str, size: int, dtype: str, p: float | None, seed: int = 0) -> Case:
    """The inputs and implementations of one benchmark case (see the module docstring).

    ``case.inputs`` holds what the implementations are called with (``x``, ``k``, ...), so that other
    implementations of the same case can be written against it.
    """
    captured: dict[str, object] = {}
    case = _make_case(kernel, size, dtype, p, seed, captured)
    case.inputs = captured
    return case


def _make_case(kernel, size, dtype, p, seed, captured) -> Case:
    import torch

    from benchmarks import torch_reference as reference
    from fedsim.kernels import golomb, laq, sparsify

    if kernel not in all_kernels():
        raise ValueError(f"kernel must be one of {all_kernels()}, got {kernel!r}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(size).astype(dtype)
    if kernel in COMPRESSOR_CASES:
        return COMPRESSOR_CASES[kernel][2](x, size, dtype, p, rng, captured)
    x_torch = reference.torch_tensor(x)
    mean_tolerance = _mean_tolerance(dtype)
    k = reference.budget(p, size) if p is not None else None
    captured.update(x=x, x_torch=x_torch, k=k)

    if kernel == "top_k_threshold":
        def unpack(out):
            threshold, mu, count = out
            return {"threshold": np.asarray(threshold, dtype), "mu": np.asarray(mu, dtype),
                    "count": np.int64(count)}

        def unpack_torch(out):
            threshold, mu, count = out
            return {"threshold": threshold.numpy(), "mu": mu.numpy(), "count": np.int64(count)}
        return Case(kernel, size, dtype, p, {
            "fedsim": lambda: sparsify.top_k_threshold(x, k),
            "numpy": lambda: sparsify.top_k_threshold_numpy(x, k),
            "torch": lambda: reference.top_k_threshold(x_torch, k),
            "copy": lambda: np.copy(x)},
            {"fedsim": unpack, "numpy": unpack, "torch": unpack_torch}, tolerance={"mu": mean_tolerance})

    if kernel in ("stc_exact", "stc_sampled"):
        positions = {name: np.empty(size, np.int64) for name in ("fedsim", "numpy")}
        signs = {name: np.empty(size, np.int8) for name in ("fedsim", "numpy")}
        captured.update(positions_out=positions, signs_out=signs)
        if kernel == "stc_exact":
            calls = {name: (lambda f, n: lambda: f(x, k, positions[n], signs[n]))(function, name)
                     for name, function in (("fedsim", sparsify.ternarize), ("numpy", sparsify.ternarize_numpy))}
            calls["torch"] = lambda: reference.ternarize(x_torch, k)
        else:
            n_sample = reference.sample_size(p, SAMPLE_FRACTION, size)
            sample = rng.choice(size, size=n_sample, replace=False, shuffle=False).astype(np.int64)
            sample_torch = torch.from_numpy(sample)
            k_sample = reference.budget(p, n_sample)
            captured.update(sample=sample, sample_torch=sample_torch, k_sample=k_sample)
            calls = {name: (lambda f, n: lambda: f(x, sample, k_sample, k, positions[n], signs[n]))(function, name)
                     for name, function in (("fedsim", sparsify.sampled_ternarize),
                                            ("numpy", sparsify.sampled_ternarize_numpy))}
            calls["torch"] = lambda: reference.sampled_ternarize(x_torch, sample_torch, k_sample, k)
        calls["copy"] = lambda: np.copy(x)

        def unpacker(name):
            def unpack(out):
                count, mu = out[0], out[1]
                result = {"positions": positions[name][:count].copy(), "signs": signs[name][:count].copy(),
                          "mu": np.asarray(mu, dtype)}
                if kernel == "stc_sampled":
                    result["exact_fallback"] = np.bool_(out[2])
                return result
            return unpack

        def unpack_torch(out):
            result = {"positions": out[0].numpy().astype(np.int64), "signs": out[1].numpy(),
                      "mu": out[2].numpy()}
            if kernel == "stc_sampled":
                result["exact_fallback"] = np.bool_(out[3])
            return result
        return Case(kernel, size, dtype, p, calls, {"fedsim": unpacker("fedsim"), "numpy": unpacker("numpy"),
                                                    "torch": unpack_torch}, tolerance={"mu": mean_tolerance})

    if kernel == "top_k_sparsify":
        positions = {name: np.empty(k, np.int64) for name in ("fedsim", "numpy")}
        values = {name: np.empty(k, dtype) for name in ("fedsim", "numpy")}

        def unpacker(name):
            return lambda count: {"positions": positions[name][:count].copy(), "values": values[name][:count].copy()}
        return Case(kernel, size, dtype, p, {
            "fedsim": lambda: sparsify.top_k_sparsify(x, k, positions["fedsim"], values["fedsim"]),
            "numpy": lambda: sparsify.top_k_sparsify_numpy(x, k, positions["numpy"], values["numpy"]),
            "torch": lambda: reference.top_k_sparsify(x_torch, k),
            "copy": lambda: np.copy(x)},
            {"fedsim": unpacker("fedsim"), "numpy": unpacker("numpy"),
             "torch": lambda out: {"positions": out[0].numpy().astype(np.int64), "values": out[1].numpy()}})

    if kernel == "sign":
        x[rng.integers(0, size, max(1, size // 1000))] = 0          # a few exact zeros: sign(0) = 0
        signs = {name: np.empty(size, np.int8) for name in ("fedsim", "numpy")}
        captured.update(signs_out=signs)

        def unpacker(name):
            return lambda zeros: {"signs": signs[name].copy(), "zeros": np.int64(zeros)}
        return Case(kernel, size, dtype, None, {
            "fedsim": lambda: sparsify.sign(x, signs["fedsim"]),
            "numpy": lambda: sparsify.sign_numpy(x, signs["numpy"]),
            "torch": lambda: reference.sign(x_torch),
            "copy": lambda: np.copy(x)},
            {"fedsim": unpacker("fedsim"), "numpy": unpacker("numpy"),
             "torch": lambda out: {"signs": out.numpy(), "zeros": np.int64(int((out == 0).sum()))}})

    if kernel == "laq_quantize":
        gradients = x[None, :]
        previous = rng.standard_normal((1, size)).astype(dtype)
        gradients_torch, previous_torch = reference.torch_tensor(gradients), reference.torch_tensor(previous)
        captured.update(gradients=gradients, previous=previous, gradients_torch=gradients_torch,
                        previous_torch=previous_torch, bits=LAQ_BITS)
        outputs = {name: (np.empty((1, size), laq.code_dtype(LAQ_BITS)), np.empty((1, size), dtype),
                          np.empty(1), np.empty(1), np.empty(1)) for name in ("fedsim", "numpy")}
        names = ("codes", "quantized", "radius", "error", "innovation")

        def unpacker(name):
            return lambda _: {key: value.copy() for key, value in zip(names, outputs[name])}
        return Case(kernel, size, dtype, None, {
            "fedsim": lambda: laq.laq_quantize(gradients, previous, LAQ_BITS, *outputs["fedsim"]),
            "numpy": lambda: laq.laq_quantize_numpy(gradients, previous, LAQ_BITS, *outputs["numpy"]),
            "torch": lambda: reference.laq_quantize(gradients_torch, previous_torch, LAQ_BITS),
            "copy": lambda: np.copy(gradients)},
            {"fedsim": unpacker("fedsim"), "numpy": unpacker("numpy"),
             "torch": lambda out: {key: value.numpy() for key, value in zip(names, out)}},
            tolerance={"error": 1e-12, "innovation": 1e-12})

    # Golomb-Rice: positions are a sorted random subset; dtype does not matter (reported as int64)
    positions = np.sort(rng.choice(size, size=k, replace=False)).astype(np.int64)
    parameter = golomb.rice_parameter(k, size)
    captured.update(positions=positions, parameter=parameter)
    if kernel == "golomb_encode":
        def unpack(out):
            return {"stream": np.asarray(out[0]), "bits": np.int64(out[1])}
        return Case(kernel, size, "int64", p, {
            "fedsim": lambda: golomb.golomb_rice_encode(positions, parameter),
            "numpy": lambda: golomb.golomb_rice_encode_numpy(positions, parameter),
            "copy": lambda: np.copy(positions)},
            {"fedsim": unpack, "numpy": unpack}, skipped={"torch": "no tensor formulation of a bit-serial code"})
    stream, n_bits = golomb.golomb_rice_encode(positions, parameter)
    captured.update(stream=stream, n_bits=n_bits)
    calls = {"fedsim": lambda: golomb.golomb_rice_decode(stream, n_bits, k, parameter),
             "numpy": lambda: golomb.golomb_rice_decode_numpy(stream, n_bits, k, parameter),
             "copy": lambda: np.copy(stream)}
    skipped = {"torch": "no tensor formulation of a bit-serial code"}
    if float(k) * n_bits > TWIN_DECODE_LIMIT:
        del calls["numpy"]
        skipped["numpy"] = (f"the twin rescans the remaining stream for each of the {k:,} positions "
                            f"(~{float(k) * n_bits:.1e} bit visits)")
    return Case(kernel, size, "int64", p, calls, {"fedsim": lambda out: {"positions": np.asarray(out)},
                                                  "numpy": lambda out: {"positions": np.asarray(out)}},
                skipped=skipped)


def cases(mode: str):
    """Every (kernel, size, dtype, p) of a mode, in run order."""
    settings = SETTINGS[common.check_mode(mode)]
    for kernel in all_kernels():
        golomb_kernel = kernel.startswith("golomb")
        sparse = kernel in SPARSE_KERNELS or (kernel in COMPRESSOR_CASES and COMPRESSOR_CASES[kernel][1])
        for size in settings["sizes"]:
            for dtype in (("int64",) if golomb_kernel else settings["dtypes"]):
                for p in (settings["ps"] if sparse else (None,)):
                    yield kernel, size, dtype, p


def run_case(case: Case, repeats: int) -> dict:
    case.validate()
    timings = common.time_interleaved(case.implementations, repeats)
    medians = {name: timing.median for name, timing in timings.items()}
    ratios = {f"fedsim_vs_{name}": medians["fedsim"] / medians[name] for name in medians if name != "fedsim"}
    return {"kernel": case.kernel, "size": case.size, "dtype": case.dtype, "p": case.p, "validated": True,
            "timings": {name: timing.to_dict() for name, timing in timings.items()},
            "skipped": case.skipped, "ratios": ratios}


def run(mode: str, threads: int, only: tuple[str, ...] | None = None) -> dict:
    thread_report = common.apply_threads(threads)
    settings = SETTINGS[common.check_mode(mode)]
    results = {"suite": "kernels", "mode": mode, "machine": common.machine_info(thread_report),
               "settings": {key: list(value) if isinstance(value, tuple) else value
                            for key, value in settings.items()},
               "sample_fraction": SAMPLE_FRACTION, "laq_bits": LAQ_BITS, "cases": []}
    for kernel, size, dtype, p in cases(mode):
        if only and kernel not in only:
            continue
        case = make_case(kernel, size, dtype, p)
        log(f"kernels: {case.label}")
        results["cases"].append(run_case(case, settings["repeats"]))
    return results


def main(argv=None) -> None:
    common.suite_main(__doc__, lambda mode, threads, data_dir: run(mode, threads), argv)


# ---------------------------------------------------------------------------------------------------------
# Compressor cases (one block each; see COMPRESSOR_CASES)


if __name__ == "__main__":
    main()
