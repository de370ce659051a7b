"""Kernel micro-benchmarks: fedsim's jitted kernels against their NumPy twins, torch (CPU) and a memory copy.

Kernels: top-k threshold selection, STC with the exact and the sampled threshold, top-k sparsification,
sign, the LAQ quantizer, Golomb-Rice encoding and decoding; and the compressors added on the registry
(QSGD, TernGrad, random-k, PowerSGD), each registered by its own ``@benchmark_case`` block at the end
(``CASES``), which names the registry's compressors it times. Inputs: one vector of N standard normal
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
data) or 1e-12 (float64 data), since it sums in another order. A disagreement raises
:class:`~benchmarks.common.ValidationError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from benchmarks import common
from benchmarks.common import ValidationError, assert_close, assert_equal, log

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


class Registered(NamedTuple):
    """A registered benchmark case: its report title, whether it takes a sparsity p, its builder, the
    dtypes it runs in (None: the mode's float dtypes) and the compressors of ``fedsim.compress.COMPRESSORS``
    whose kernel it times."""

    title: str
    sparse: bool
    build: Callable
    dtypes: tuple[str, ...] | None
    compressors: tuple[str, ...]


#: Every benchmark case, one ``@benchmark_case`` block each, in run order: kernel name -> Registered.
#: A builder takes (x, size, dtype, p, rng, captured) and returns a :class:`Case`; ``x`` is the seeded
#: standard-normal input vector and ``captured`` the dict of inputs to fill (see :func:`make_case`).
CASES: dict[str, Registered] = {}


def benchmark_case(kernel: str, title: str, sparse: bool = False, dtypes: tuple[str, ...] | None = None,
                   compressors: tuple[str, ...] = ()):
    """Decorator registering the builder of the benchmark case ``kernel`` (a new compressor adds one, naming
    itself in ``compressors``)."""
    def register(builder):
        CASES[kernel] = Registered(title, sparse, builder, dtypes, compressors)
        return builder
    return register


def all_kernels() -> tuple[str, ...]:
    return tuple(CASES)


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
    if kernel not in CASES:
        raise ValueError(f"kernel must be one of {all_kernels()}, got {kernel!r}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(size).astype(dtype)
    return CASES[kernel].build(x, size, dtype, p, rng, captured)


def _vector_inputs(x, size, p, captured):
    """The torch copy of ``x`` and the budget k = ceil(p N) (None without p), recorded in ``captured``."""
    from benchmarks import torch_reference as reference

    x_torch = reference.torch_tensor(x)
    k = reference.budget(p, size) if p is not None else None
    captured.update(x=x, x_torch=x_torch, k=k)
    return x_torch, k


@benchmark_case("top_k_threshold", "Top-k threshold selection (v and mu of the k largest magnitudes)",
                sparse=True, compressors=("topk", "stc"))
def _top_k_threshold_case(x, size, dtype, p, rng, captured) -> Case:
    from benchmarks import torch_reference as reference
    from fedsim.kernels import selection

    x_torch, k = _vector_inputs(x, size, p, captured)
    mean_tolerance = _mean_tolerance(dtype)

    def unpack(out):
        threshold, mu, count = out
        return {"threshold": np.asarray(threshold, dtype), "mu": np.asarray(mu, dtype),
                "count": np.int64(count)}

    def unpack_torch(out):
        threshold, mu, count = out
        return {"threshold": threshold.numpy(), "mu": mu.numpy(), "count": np.int64(count)}
    return Case("top_k_threshold", size, dtype, p, {
        "fedsim": lambda: selection._top_k_threshold(x, k),
        "numpy": lambda: selection._top_k_threshold_numpy(x, k),
        "torch": lambda: reference.top_k_threshold(x_torch, k),
        "copy": lambda: np.copy(x)},
        {"fedsim": unpack, "numpy": unpack, "torch": unpack_torch}, tolerance={"mu": mean_tolerance})


def _stc_case(kernel, x, size, dtype, p, rng, captured) -> Case:
    """STC of one vector, with the exact or the sampled threshold."""
    import torch

    from benchmarks import torch_reference as reference
    from fedsim.kernels import ternary

    x_torch, k = _vector_inputs(x, size, p, captured)
    mean_tolerance = _mean_tolerance(dtype)
    positions = {name: np.empty(size, np.int64) for name in ("fedsim", "numpy")}
    signs = {name: np.empty(size, np.int8) for name in ("fedsim", "numpy")}
    captured.update(positions_out=positions, signs_out=signs)
    if kernel == "stc_exact":
        calls = {name: (lambda f, n: lambda: f(x, k, positions[n], signs[n]))(function, name)
                 for name, function in (("fedsim", ternary._ternarize), ("numpy", ternary._ternarize_numpy))}
        calls["torch"] = lambda: reference.ternarize(x_torch, k)
    else:
        n_sample = reference.sample_size(p, SAMPLE_FRACTION, size)
        sample = rng.choice(size, size=n_sample, replace=False, shuffle=False).astype(np.int64)
        sample_torch = torch.from_numpy(sample)
        k_sample = reference.budget(p, n_sample)
        captured.update(sample=sample, sample_torch=sample_torch, k_sample=k_sample)
        calls = {name: (lambda f, n: lambda: f(x, sample, k_sample, k, positions[n], signs[n]))(function, name)
                 for name, function in (("fedsim", ternary._sampled_ternarize),
                                        ("numpy", ternary._sampled_ternarize_numpy))}
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


@benchmark_case("stc_exact", "STC, exact threshold", sparse=True, compressors=("stc",))
def _stc_exact_case(x, size, dtype, p, rng, captured) -> Case:
    return _stc_case("stc_exact", x, size, dtype, p, rng, captured)


@benchmark_case("stc_sampled", "STC, sampled threshold (sample fraction 0.01 here)", sparse=True,
                compressors=("stc",))
def _stc_sampled_case(x, size, dtype, p, rng, captured) -> Case:
    return _stc_case("stc_sampled", x, size, dtype, p, rng, captured)


@benchmark_case("top_k_sparsify", "Top-k sparsification (positions and values)", sparse=True,
                compressors=("topk",))
def _top_k_sparsify_case(x, size, dtype, p, rng, captured) -> Case:
    from benchmarks import torch_reference as reference
    from fedsim.kernels import selection

    x_torch, k = _vector_inputs(x, size, p, captured)
    positions = {name: np.empty(k, np.int64) for name in ("fedsim", "numpy")}
    values = {name: np.empty(k, dtype) for name in ("fedsim", "numpy")}

    def unpacker(name):
        return lambda count: {"positions": positions[name][:count].copy(), "values": values[name][:count].copy()}
    return Case("top_k_sparsify", size, dtype, p, {
        "fedsim": lambda: selection._top_k_sparsify(x, k, positions["fedsim"], values["fedsim"]),
        "numpy": lambda: selection._top_k_sparsify_numpy(x, k, positions["numpy"], values["numpy"]),
        "torch": lambda: reference.top_k_sparsify(x_torch, k),
        "copy": lambda: np.copy(x)},
        {"fedsim": unpacker("fedsim"), "numpy": unpacker("numpy"),
         "torch": lambda out: {"positions": out[0].numpy().astype(np.int64), "values": out[1].numpy()}})


@benchmark_case("sign", "Sign", compressors=("sign",))
def _sign_case(x, size, dtype, p, rng, captured) -> Case:
    from benchmarks import torch_reference as reference
    from fedsim.kernels import ternary

    x_torch, _ = _vector_inputs(x, size, p, captured)
    x[rng.integers(0, size, max(1, size // 1000))] = 0          # a few exact zeros: sign(0) = 0
    signs = {name: np.empty(size, np.int8) for name in ("fedsim", "numpy")}
    captured.update(signs_out=signs)

    def unpacker(name):
        return lambda zeros: {"signs": signs[name].copy(), "zeros": np.int64(zeros)}
    return Case("sign", size, dtype, None, {
        "fedsim": lambda: ternary._sign(x, signs["fedsim"]),
        "numpy": lambda: ternary._sign_numpy(x, signs["numpy"]),
        "torch": lambda: reference.sign(x_torch),
        "copy": lambda: np.copy(x)},
        {"fedsim": unpacker("fedsim"), "numpy": unpacker("numpy"),
         "torch": lambda out: {"signs": out.numpy(), "zeros": np.int64(int((out == 0).sum()))}})


@benchmark_case("laq_quantize", "LAQ quantizer (b = 4, one worker)")
def _laq_quantize_case(x, size, dtype, p, rng, captured) -> Case:
    from benchmarks import torch_reference as reference
    from fedsim.kernels import laq

    _vector_inputs(x, size, p, captured)
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
    return Case("laq_quantize", size, dtype, None, {
        "fedsim": lambda: laq.laq_quantize(gradients, previous, LAQ_BITS, *outputs["fedsim"]),
        "numpy": lambda: laq.laq_quantize_numpy(gradients, previous, LAQ_BITS, *outputs["numpy"]),
        "torch": lambda: reference.laq_quantize(gradients_torch, previous_torch, LAQ_BITS),
        "copy": lambda: np.copy(gradients)},
        {"fedsim": unpacker("fedsim"), "numpy": unpacker("numpy"),
         "torch": lambda out: {key: value.numpy() for key, value in zip(names, out)}},
        tolerance={"error": 1e-12, "innovation": 1e-12})


def _golomb_positions(x, size, p, rng, captured):
    """Golomb-Rice: positions are a sorted random subset; dtype does not matter (reported as int64)."""
    from fedsim.kernels import golomb

    _, k = _vector_inputs(x, size, p, captured)
    positions = np.sort(rng.choice(size, size=k, replace=False)).astype(np.int64)
    parameter = golomb.rice_parameter(k, size)
    captured.update(positions=positions, parameter=parameter)
    return positions, parameter, k


@benchmark_case("golomb_encode", "Golomb-Rice encoding of ceil(p N) positions", sparse=True, dtypes=("int64",),
                compressors=("topk", "stc"))
def _golomb_encode_case(x, size, dtype, p, rng, captured) -> Case:
    from fedsim.kernels import golomb

    positions, parameter, k = _golomb_positions(x, size, p, rng, captured)

    def unpack(out):
        return {"stream": np.asarray(out[0]), "bits": np.int64(out[1])}
    return Case("golomb_encode", size, "int64", p, {
        "fedsim": lambda: golomb.golomb_rice_encode(positions, parameter),
        "numpy": lambda: golomb.golomb_rice_encode_numpy(positions, parameter),
        "copy": lambda: np.copy(positions)},
        {"fedsim": unpack, "numpy": unpack}, skipped={"torch": "no tensor formulation of a bit-serial code"})


@benchmark_case("golomb_decode", "Golomb-Rice decoding of ceil(p N) positions", sparse=True, dtypes=("int64",),
                compressors=("topk", "stc"))
def _golomb_decode_case(x, size, dtype, p, rng, captured) -> Case:
    from fedsim.kernels import golomb

    positions, parameter, k = _golomb_positions(x, size, p, rng, captured)
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
    return Case("golomb_decode", size, "int64", p, calls, {"fedsim": lambda out: {"positions": np.asarray(out)},
                                                  "numpy": lambda out: {"positions": np.asarray(out)}},
                skipped=skipped)


def cases(mode: str):
    """Every (kernel, size, dtype, p) of a mode, in run order."""
    settings = SETTINGS[common.check_mode(mode)]
    for kernel, registered in CASES.items():
        for size in settings["sizes"]:
            for dtype in registered.dtypes or settings["dtypes"]:
                for p in (settings["ps"] if registered.sparse else (None,)):
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
# Compressor cases (one block each, registered like the kernels' above)

# --- qsgd ---
QSGD_LEVELS = 16
QSGD_BUCKET = 512
# torch's norms and decoded values against fedsim's: relative, in ulp (eps) of the data dtype. torch.sqrt
# on float64 is not correctly rounded on every build (about 1% of results 1 ulp off), which moves a norm
# by 1 ulp and a decoded value (norm * level / s, rounded) by up to 2.
QSGD_ULPS = 4


@benchmark_case("qsgd", f"QSGD (s = {QSGD_LEVELS} levels, buckets of {QSGD_BUCKET}, one row)",
                compressors=("qsgd",))
def _qsgd_case(x, size, dtype, p, rng, captured) -> Case:
    """QSGD of one row (1, N), one segment, s = 16, buckets of 512, on uniforms drawn up front.

    torch (:func:`benchmarks.torch_reference.qsgd`) gets the same uniforms: signed levels, encoded bits and
    the signs of the decoded values (+0.0 where the level is 0) must agree exactly, norms and decoded
    values to ``QSGD_ULPS`` ulp of the dtype (torch's float64 sqrt, see ``QSGD_ULPS``).
    """
    from benchmarks import torch_reference as reference
    from fedsim.compress.qsgd import level_dtype
    from fedsim.kernels import qsgd

    updates = x[None, :]
    uniforms = rng.random((1, size))
    offsets = qsgd.bucket_offsets((0, size), QSGD_BUCKET)
    float_bits = 8 * np.dtype(dtype).itemsize
    updates_torch, uniforms_torch = reference.torch_tensor(updates), reference.torch_tensor(uniforms)
    captured.update(x=x, updates=updates, uniforms=uniforms, updates_torch=updates_torch,
                    uniforms_torch=uniforms_torch, bucket_offsets=offsets, levels=QSGD_LEVELS,
                    bucket_size=QSGD_BUCKET, float_bits=float_bits)
    outputs = {name: (np.empty((1, size), dtype), np.empty((1, offsets.size - 1), dtype),
                      np.empty((1, size), level_dtype(QSGD_LEVELS)), np.empty(1, np.int64))
               for name in ("fedsim", "numpy")}

    def named(decoded, norms, levels, bits):
        return {"decoded": decoded, "decoded_signbit": np.signbit(decoded), "norms": norms,
                "levels": levels.astype(np.int64), "encoded_bits": bits}

    def unpacker(name):
        return lambda _: named(*(array.copy() for array in outputs[name]))
    rtol = QSGD_ULPS * float(np.finfo(dtype).eps)
    return Case("qsgd", size, dtype, None, {
        "fedsim": lambda: qsgd.qsgd_quantize(updates, offsets, QSGD_LEVELS, uniforms, float_bits, *outputs["fedsim"]),
        "numpy": lambda: qsgd.qsgd_quantize_numpy(updates, offsets, QSGD_LEVELS, uniforms, float_bits,
                                                  *outputs["numpy"]),
        "torch": lambda: reference.qsgd(updates_torch, (0, size), QSGD_BUCKET, QSGD_LEVELS, uniforms_torch,
                                        float_bits),
        "copy": lambda: np.copy(x)},
        {"fedsim": unpacker("fedsim"), "numpy": unpacker("numpy"),
         "torch": lambda out: named(*(tensor.numpy() for tensor in out))},
        tolerance={"decoded": rtol, "norms": rtol})


# --- terngrad ---
TERNGRAD_CLIP = 2.5


def _ternary_message_bits(sizes, scales, float_bits: int) -> int:
    """A TernGrad message's length written out again: per segment the scale, then (if it is not 0) five
    digits per byte and the last r = N mod 5 digits in the bits of 3^r - 1."""
    total = 0
    for n, scale in zip(sizes, scales):
        total += float_bits + ((8 * (n // 5) + (3 ** (n % 5) - 1).bit_length()) if scale != 0 else 0)
    return total


@benchmark_case("terngrad", f"TernGrad (clip c = {TERNGRAD_CLIP}, one segment, one row)", compressors=("terngrad",))
def _terngrad_case(x, size, dtype, p, rng, captured) -> Case:
    """TernGrad of one row (1, N), one segment, clipped at c = 2.5 (so the mean and variance passes run),
    on uniforms drawn up front.

    torch (:func:`benchmarks.torch_reference.terngrad`) gets the same uniforms; decoded values and scales
    are exact by definition and must agree bitwise. torch returns no bit count: its message length is
    written out again from its own scales (:func:`_ternary_message_bits`).
    """
    from benchmarks import torch_reference as reference
    from fedsim.kernels import terngrad

    updates = x[None, :]
    uniforms = rng.random((1, size))
    offsets = np.array([0, size], np.int64)
    float_bits = 8 * np.dtype(dtype).itemsize
    updates_torch, uniforms_torch = reference.torch_tensor(updates), reference.torch_tensor(uniforms)
    captured.update(x=x, updates=updates, uniforms=uniforms, updates_torch=updates_torch,
                    uniforms_torch=uniforms_torch, segment_offsets=offsets, clip=TERNGRAD_CLIP,
                    float_bits=float_bits)
    outputs = {name: (np.empty((1, size), dtype), np.empty((1, 1), dtype), np.empty(1, np.int64))
               for name in ("fedsim", "numpy")}

    def unpacker(name):
        def unpack(_):
            decoded, scales, bits = (array.copy() for array in outputs[name])
            return {"decoded": decoded, "scales": scales, "encoded_bits": bits}
        return unpack

    def unpack_torch(out):
        decoded, scales = out[0].numpy(), out[1].numpy()
        bits = np.array([_ternary_message_bits([size], scales[0].tolist(), float_bits)], np.int64)
        return {"decoded": decoded, "scales": scales, "encoded_bits": bits}
    return Case("terngrad", size, dtype, None, {
        "fedsim": lambda: terngrad.terngrad_batch(updates, offsets, uniforms, TERNGRAD_CLIP, float_bits,
                                                  *outputs["fedsim"]),
        "numpy": lambda: terngrad.terngrad_batch_numpy(updates, offsets, uniforms, TERNGRAD_CLIP, float_bits,
                                                       *outputs["numpy"]),
        "torch": lambda: reference.terngrad(updates_torch, offsets, uniforms_torch, TERNGRAD_CLIP),
        "copy": lambda: np.copy(x)},
        {"fedsim": unpacker("fedsim"), "numpy": unpacker("numpy"), "torch": unpack_torch})


# --- randomk ---
@benchmark_case("randomk", "Random-k (k = ceil(p N), unbiased N / k scaling, positions from a seed)", sparse=True,
                compressors=("randomk",))
def _randomk_case(x, size, dtype, p, rng, captured) -> Case:
    """Random-k of one row (1, N), one segment, k = ceil(p N), unbiased scaling dtype(N / k), one seed
    drawn up front.

    fedsim and its twin derive the positions from the seed (SplitMix64 and Floyd's algorithm) inside the
    timed call. torch has no counterpart of that sequential generator, so it is handed the positions
    fedsim's generator chose (:func:`fedsim.kernels.randomk.random_positions`, computed once, outside the
    timing) and the scale of each position, and times only the gather, multiply and scatter
    (:func:`benchmarks.torch_reference.randomk_rows`). Decoded rows and sent values are exact by
    definition and must agree bitwise.
    """
    import torch

    from benchmarks import torch_reference as reference
    from fedsim.compress.base import Layout
    from fedsim.compress.randomk import SEED_MAX, budgets, segment_scales
    from fedsim.kernels import randomk

    updates = x[None, :]
    layout = Layout((0, size))
    offsets = layout.offsets_array
    ks = budgets(p, layout)
    scales = segment_scales(p, "unbiased", layout, dtype)
    seeds = rng.integers(0, SEED_MAX, size=1, dtype=np.uint64, endpoint=True)
    k = int(ks[0])
    positions = np.empty(k, np.int64)
    randomk.random_positions(seeds[0], 0, size, k, positions)
    updates_torch = reference.torch_tensor(updates)
    positions_torch = torch.from_numpy(positions[None, :].copy())
    scales_torch = torch.from_numpy(np.repeat(scales, ks))
    captured.update(x=x, updates=updates, segment_offsets=offsets, budgets=ks, scales=scales, seeds=seeds,
                    k=k, positions=positions, updates_torch=updates_torch, positions_torch=positions_torch,
                    scales_torch=scales_torch)
    outputs = {name: (np.empty((1, size), dtype), np.empty((1, k), dtype)) for name in ("fedsim", "numpy")}

    def unpacker(name):
        return lambda _: {"decoded": outputs[name][0].copy(), "values": outputs[name][1].copy()}
    return Case("randomk", size, dtype, p, {
        "fedsim": lambda: randomk.randomk_compress_batch(updates, offsets, ks, scales, seeds, *outputs["fedsim"]),
        "numpy": lambda: randomk.randomk_compress_batch_numpy(updates, offsets, ks, scales, seeds,
                                                              *outputs["numpy"]),
        "torch": lambda: reference.randomk_rows(updates_torch, positions_torch, scales_torch),
        "copy": lambda: np.copy(x)},
        {"fedsim": unpacker("fedsim"), "numpy": unpacker("numpy"),
         "torch": lambda out: {"decoded": out[0].numpy(), "values": out[1].numpy()}})


# --- powersgd ---
POWERSGD_RANK = 2
# torch against fedsim on the summaries (relative): the two take other floating-point paths (torch's
# matmuls and Householder QR against BLAS and modified Gram-Schmidt twice), each a few ulp off.
POWERSGD_RTOL = {"float32": 1e-4, "float64": 1e-10}


@dataclass
class _SummaryCase(Case):
    """A :class:`Case` whose torch implementation is checked on summaries only.

    ``full`` maps fedsim and its twin to unpackers of their whole outputs, compared bitwise first; then
    :meth:`Case.validate` compares every implementation's summaries (``results``: torch within
    ``tolerance``, the twin bitwise).
    """

    full: dict[str, Callable[[object], dict]] = field(default_factory=dict)

    def validate(self) -> None:
        outputs = {name: self.full[name](self.implementations[name]()) for name in self.full}
        reference = outputs["fedsim"]
        for name, output in outputs.items():
            if name == "fedsim":
                continue
            if set(output) != set(reference):
                raise ValidationError(f"{self.label}: {name} returns {sorted(output)}, fedsim {sorted(reference)}")
            for key, value in output.items():
                assert_equal(f"{self.label}: {name} vs fedsim, {key}", value, reference[key])
        super().validate()


def _powersgd_summaries(matrix, decoded, q_new) -> dict:
    """Summaries of a power step that are not near zero (float64): the row norms of the decoded matrix,
    the column norms of the new Q, and the relative fit ||M - decoded|| / ||M|| (Frobenius)."""
    wide_matrix, wide_decoded = matrix.astype(np.float64), decoded.astype(np.float64)
    return {"decoded_row_norms": np.linalg.norm(wide_decoded, axis=1),
            "q_column_norms": np.linalg.norm(q_new.astype(np.float64), axis=0),
            "relative_fit": np.float64(np.linalg.norm(wide_matrix - wide_decoded) / np.linalg.norm(wide_matrix))}


@benchmark_case("powersgd", f"PowerSGD power step (rank {POWERSGD_RANK}, one sender, n x m matrix, "
                             "n = floor(sqrt(N)), m = N // n)", compressors=("powersgd",))
def _powersgd_case(x, size, dtype, p, rng, captured) -> Case:
    """One PowerSGD power step, one sender, rank 2, on the n x m matrix of the first n m entries of x
    (n = floor(sqrt(N)), m = N // n), with the warm start Q (m, 2) drawn standard normal up front.

    fedsim is :func:`fedsim.kernels.powersgd.power_step` (BLAS products, jitted Gram-Schmidt and low-rank
    product), the twin :func:`~fedsim.kernels.powersgd.power_step_numpy`: P_hat, Q_k, the decoded matrix
    and the new Q must agree bitwise. torch (:func:`benchmarks.torch_reference.powersgd_step`: its
    matmuls and Householder QR) computes the same step in another order, and entries near zero make
    relative tolerances meaningless, so it is compared on summaries that are not near zero
    (:func:`_powersgd_summaries`) within ``POWERSGD_RTOL``.
    """
    import math

    import torch

    from benchmarks import torch_reference as reference
    from fedsim.kernels import powersgd

    n = math.isqrt(size)
    m = size // n
    matrices = x[:n * m].reshape(1, n, m)
    q = rng.standard_normal((m, POWERSGD_RANK)).astype(dtype)
    tolerance = powersgd.drop_tolerance(dtype)
    matrices_torch, q_torch = torch.from_numpy(matrices), torch.from_numpy(q)
    captured.update(x=x, matrices=matrices, q=q, tolerance=tolerance, rank=POWERSGD_RANK,
                    matrices_torch=matrices_torch, q_torch=q_torch)
    decoded = {name: np.empty((1, n, m), dtype) for name in ("fedsim", "numpy")}

    def full(name):
        def unpack(out):
            p_hat, q_each, q_new = out
            return {"p_hat": p_hat.copy(), "q_each": q_each.copy(), "q_new": q_new.copy(),
                    "decoded": decoded[name].copy()}
        return unpack

    def summaries(name):
        return lambda out: _powersgd_summaries(matrices[0], decoded[name][0], out[2])
    rtol = POWERSGD_RTOL[np.dtype(dtype).name]
    return _SummaryCase("powersgd", size, dtype, None, {
        "fedsim": lambda: powersgd.power_step(matrices, q, tolerance, decoded["fedsim"]),
        "numpy": lambda: powersgd.power_step_numpy(matrices, q, tolerance, decoded["numpy"]),
        "torch": lambda: reference.powersgd_step(matrices_torch, q_torch, tolerance),
        "copy": lambda: np.copy(x)},
        {"fedsim": summaries("fedsim"), "numpy": summaries("numpy"),
         "torch": lambda out: _powersgd_summaries(matrices[0], out[2][0].numpy(), out[3].numpy())},
        tolerance={key: rtol for key in ("decoded_row_norms", "q_column_norms", "relative_fit")},
        full={"fedsim": full("fedsim"), "numpy": full("numpy")})


if __name__ == "__main__":
    main()
