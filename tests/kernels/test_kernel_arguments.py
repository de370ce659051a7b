"""Hostile arguments to the public kernels (issue 12): a clean ValueError or TypeError that names the
argument, never a crash and never a silent result.

* Property tests (hypothesis): every checked kernel of ``fedsim.kernels`` (and its NumPy twin) is called
  with valid arguments of random sizes in which at most one argument is spoiled: the wrong type, dtype or
  number of dimensions, a non-contiguous array, a read-only output, an output one entry too short (or an
  exact-shape array one entry too long), a count, offset, width or index out of range, NaN or inf, a code
  out of range, decreasing offsets... A spoiled call must raise the documented exception with a message
  naming the argument (the twin the same exception type); an unspoiled call must be accepted. Both the
  valid call and the spoilers are read from the kernel's declared contract (``kernel.contract``,
  fedsim.kernels.checks): :func:`drawn` draws each argument from its spec, a case names only what the
  contract cannot say (data such as strictly increasing positions or a decodable stream, and the cases of
  the relations checked by ``extra`` and ``then`` or of the data: NaN or inf entries). The loops run in a
  child process (this file run as a script), so that a segfault fails the test instead of killing pytest.
* One hand-picked call per kernel that crashed or corrupted memory before the argument checks, run here
  in the main process (the canaries behind the short buffers must survive).
"""

from __future__ import annotations

import faulthandler
import importlib
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedsim.kernels as kernels_package
from fedsim.kernels import (bitstream, checks, golomb, laq, omega, powersgd, qsgd, randomk, selection, softmax,
                            sparsify, ternary, terngrad)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 1000        # hypothesis examples per module (each spoils at most one argument of one kernel)
CHILD_TIMEOUT = 240     # seconds; a first run may compile a few kernel signatures

ALL_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                                         np.uint8, np.uint16, np.uint32, np.uint64, np.bool_, np.complex128))
NONFINITE = "NaN or inf"
SIZE_LIMIT = 64        # the largest size or offset drawn for an argument that sizes another


@dataclass
class Call:
    args: dict                           # the valid arguments, in signature order
    contract: dict | None = None         # name -> spec (unlisted: not spoiled); None: the kernel's contract
    custom: list = field(default_factory=list)   # (label, name, value, errors, match)


@dataclass
class Case:
    name: str
    kernel: object
    twin: object
    build: object                        # draw -> Call


class Loose(checks.Array):
    """The spec of an argument of an unchecked kernel that converts what it is given: a list is accepted,
    a wrong dtype may raise ValueError."""
    strict_type = False
    dtype_errors = (TypeError, ValueError)


def strided(value):
    holder = np.zeros(value.shape[:-1] + (2 * value.shape[-1],), value.dtype)
    holder[..., ::2] = value
    return holder[..., ::2]


def read_only(value):
    value = value.copy()
    value.setflags(write=False)
    return value


def grown(value):
    return np.concatenate([value, np.zeros((1,) + value.shape[1:], value.dtype)])


def array_spoilers(draw, name, spec, value, args, shrink_match):
    """The spoilers (as :func:`spoilers`) of an array argument (``spec``: its Array, Stream or Offsets spec)."""
    rng = rng_of(draw)
    dtypes = spec.accepted_dtypes(args) if isinstance(spec, checks.Array) else (
        checks.UINT8 if isinstance(spec, checks.Stream) else checks.INT64)
    shape = checks.resolve(getattr(spec, "shape", None), args)
    length = "shape" if shape is not None else "at_least" if (
        isinstance(spec, checks.Stream) or getattr(spec, "at_least", None) or shrink_match) else None
    found = []
    if getattr(spec, "strict_type", True):
        found.append(("a list", name, value.tolist(), (TypeError,), name))
    dtype = draw(st.sampled_from([d for d in ALL_DTYPES if d not in dtypes]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found.append((f"dtype {dtype}", name, value.astype(dtype), getattr(spec, "dtype_errors", (TypeError,)), name))
    if getattr(spec, "ndim", 1) is not None:
        found.append(("one more dimension", name, value[None], (ValueError,), name))
    if getattr(spec, "contiguous", True) and value.shape[-1] >= 2 and value.size >= 2:
        found.append(("not contiguous", name, strided(value), (ValueError,), name))
    if getattr(spec, "output", False):
        found.append(("read-only", name, read_only(value), (ValueError,), name))
    if length and value.shape[0] > 0:
        found.append(("one entry short", name, value[:-1].copy(), (ValueError,), shrink_match or name))
    if length == "shape":
        found.append(("one entry long", name, grown(value), (ValueError,), name))
        if value.ndim == 2 and value.shape[1] > 0:
            found.append(("one column short", name, np.ascontiguousarray(value[:, :-1]), (ValueError,), name))
    within = checks.resolve(getattr(spec, "within", None), args)
    if within is not None:
        found += out_of_range(name, value, within, rng)
    if checks.resolve(getattr(spec, "nonnegative", False), args):
        found += negative_entry(name, value, rng)
    return found


def spoilers(draw, call):
    """(label, name, value, errors, match) for every applicable spoiler; name None is the valid call (a
    tuple of names and a tuple of values change several arguments at once)."""
    found = [("valid", None, None, None, None)]
    # an array whose length bounds an integer (a stream's bit_end): a shorter one puts it out of range
    bounding = {array: other for other, spec in call.contract.items() if isinstance(spec, checks.Count)
                for array in spec.depends() if isinstance(call.contract.get(array), checks.Array)}
    for name, spec in call.contract.items():
        value = call.args[name]
        if isinstance(spec, (checks.Array, checks.Stream, checks.Offsets)):
            found += array_spoilers(draw, name, spec, value, call.args, bounding.get(name))
        if isinstance(spec, (checks.Count, checks.Budget)):
            errors = getattr(spec, "type_errors", (TypeError,))
            for label, bad in (("a float", float(value) + 0.5), ("a bool", True), ("a string", "1"),
                               ("None", None), ("a numpy float", np.float64(value))):
                found.append((label, name, bad, errors, name))
            low, high = checks.resolve(spec.low, call.args), checks.resolve(spec.high, call.args)
            found.append(("below range", name, low - draw(st.integers(1, 1 << 66)), (ValueError,), name))
            found.append(("above range", name, high + draw(st.integers(1, 1 << 66)), (ValueError,), name))
        elif isinstance(spec, checks.Real):
            for bad in (np.nan, np.inf, -np.inf):
                found.append((f"{bad}", name, bad, (ValueError,), name))
            for label, bad in (("a string", "1.0"), ("None", None), ("a bool", True), ("complex", 1j)):
                found.append((label, name, bad, (TypeError,), name))
            if spec.low is not None:
                below = spec.low if spec.low_open else spec.low - draw(st.floats(1e-6, 1e6))
                found.append(("below range", name, below, (ValueError,), name))
        elif isinstance(spec, checks.Flag):
            for label, bad in (("an int", 1), ("a string", "yes"), ("None", None)):
                found.append((label, name, bad, (TypeError,), name))
        elif isinstance(spec, checks.Offsets):
            found += offsets_spoilers(value, rng_of(draw), name, past_end=spec.total is not None)
        elif isinstance(spec, checks.Choice):
            found.append(("not a choice", name, draw(st.sampled_from([0, 1, 16, 33, 63, 65, 128, -32])),
                          (ValueError,), name))
            found.append(("a float", name, float(spec.values[0]), (TypeError,), name))
    return found + call.custom


def exercise(case, call, spoiler):
    """Call the kernel and its twin with the spoiled arguments; the assertions of the module docstring."""
    label, name, value, errors, match = spoiler
    args = dict(call.args)
    if isinstance(name, tuple):                # a spoiler that changes several arguments together
        args.update(zip(name, value))
    elif name is not None:
        args[name] = value
    for function in (case.kernel, case.twin):
        if function is None:
            continue
        print(f"{case.name}: {label} {name or ''} -> {getattr(function, '__name__', function)}", flush=True)
        if name is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)      # overflow to inf, as documented
                function(*args.values())
            continue
        with pytest.raises(errors) as raised:
            function(*args.values())
        if function is case.kernel and match is not None:
            assert re.search(match, str(raised.value)), \
                f"{case.name}, {label} {name}: message {str(raised.value)!r} does not name {match!r}"


# ----------------------------------------------------------------------------------------------------
# Valid calls drawn from the contract
# ----------------------------------------------------------------------------------------------------

def drawn_value(draw, rng, spec, args, sizes):
    """A valid random value of an argument with this spec, given the arguments its bounds name (``sizes``:
    it sizes another argument, so it stays small)."""
    def bound(value):
        return checks.resolve(value, args)

    if isinstance(spec, (checks.Count, checks.Budget)):
        low = bound(spec.low)
        high = bound(spec.size) + 3 if isinstance(spec, checks.Budget) else bound(spec.high)
        return draw(st.integers(low, min(high, low + SIZE_LIMIT) if sizes else high))
    if isinstance(spec, checks.Real):
        low = -3.0 if spec.low is None else spec.low
        return draw(st.floats(low, low + 3, exclude_min=spec.low_open))
    if isinstance(spec, checks.Flag):
        return draw(st.booleans())
    if isinstance(spec, checks.Choice):
        return draw(st.sampled_from(spec.values))
    if isinstance(spec, checks.Stream):
        return stream_of(rng, bound(spec.start) + bound(spec.bits))
    if isinstance(spec, checks.Offsets):
        total = bound(spec.total)
        cuts = sorted(draw(st.lists(st.integers(0, total), max_size=3)))
        return np.array([0] + cuts + [total] if total or draw(st.booleans()) else [0], np.int64)
    dtype = args[spec.like].dtype if spec.like else np.dtype(draw(st.sampled_from(spec.dtypes)))
    shape = bound(spec.shape)
    if shape is None and spec.at_least:
        shape = (bound(spec.at_least),)
    elif shape is None:
        shape = {1: (draw(st.integers(0, 40)),), 2: (draw(st.integers(0, 3)), draw(st.integers(0, 20)))}[
            spec.ndim or draw(st.sampled_from([1, 2]))]
    if spec.output:
        return np.zeros(shape, dtype)
    if dtype.kind == "f":
        return vector(rng, dtype, shape)
    within = bound(spec.within)
    if within == 0:
        return np.zeros((0,) + shape[1:], dtype)
    return rng.integers(0, within or 100, shape).astype(dtype)


def drawn(kernel, custom=None, **given):
    """A builder of valid calls of ``kernel``: the arguments in ``given`` (name -> function of (draw, rng,
    the arguments drawn so far)) as given, every other drawn from its spec in the order the checks run;
    ``custom``: a function of (draw, rng, args) listing the cases the contract cannot say."""
    names = tuple(kernel.contract)
    sizing = {other for spec in kernel.contract.values() for other in spec.depends()}
    if kernel.extra is not None:
        sizing |= set(checks._named(kernel.extra))

    def build(draw):
        rng = rng_of(draw)
        args = {}
        for name in checks._order(names, kernel.contract):
            spec = kernel.contract[name]
            args[name] = (given[name](draw, rng, args) if name in given else
                          drawn_value(draw, rng, spec, args, name in sizing))
        args = {name: args[name] for name in names}
        return Call(args, custom=custom(draw, rng, args) if custom else [])
    return build


def case(kernel, twin=None, custom=None, build=None, **given):
    """The Case of ``kernel``: its valid calls made by ``build`` (draw -> Call), or else drawn from its
    contract (:func:`drawn`)."""
    return Case(kernel.__name__.lstrip("_"), kernel, twin, build or drawn(kernel, custom, **given))


def rng_of(draw):
    return np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))


def vector(rng, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    x[rng.random(shape) < 0.2] = 0
    return x


def one_entry(label, name, values, bad, rng, match=None):
    """The spoiler ``values`` with one random entry set to ``bad`` (none for an empty array); its message
    names ``match`` (default: the argument)."""
    if values.size == 0:
        return []
    spoiled = values.copy()
    spoiled.flat[int(rng.integers(0, values.size))] = bad
    return [(label, name, spoiled, (ValueError,), match or name)]


def nonfinite(name, x, rng):
    return one_entry("a non-finite entry", name, x, rng.choice([np.nan, np.inf, -np.inf]), rng, NONFINITE)


def nonfinite_in(name):
    """``custom`` of :func:`drawn`: a non-finite entry in the argument ``name``."""
    return lambda draw, rng, args: nonfinite(name, args[name], rng)


def out_of_range(name, values, size, rng):
    return one_entry("an index out of range", name, values, rng.choice([size, size + 7, -1, 1 << 40]), rng)


def stream_of(rng, n_bits):
    return rng.integers(0, 256, (n_bits + 7) // 8, dtype=np.uint8)


def layout(draw, max_segments=3, max_size=12):
    sizes = [draw(st.integers(0, max_size)) for _ in range(draw(st.integers(0, max_segments)))]
    return sizes, np.concatenate(([0], np.cumsum(sizes, dtype=np.int64))).astype(np.int64)


def offsets_spoilers(offsets, rng, name="segment_offsets", past_end=True):
    """Offsets that decrease, or do not run from 0 to P (``past_end``: also one that ends past P)."""
    found = []
    if past_end:
        end = offsets.copy()
        end[-1] += int(rng.integers(1, 1 << 40))
        found.append(("offsets past P", name, end, (ValueError,), name))
    if offsets.size >= 2:
        start = offsets.copy()
        start[0] = -1
        found.append(("a negative offset", name, start, (ValueError,), name))
    if offsets.size >= 3:
        down = offsets.copy()
        down[1] = down[2] + 1
        found.append(("decreasing offsets", name, down, (ValueError,), name))
    found.append(("no offsets", name, offsets[:0].copy(), (ValueError,), name))
    return found


def negative_entry(name, values, rng):
    return one_entry("a negative entry", name, values, -int(rng.integers(1, 1 << 40)), rng)


# --- sparsify --------------------------------------------------------------------------------------

def _sample(draw, rng, args):
    """At most N sample positions within x (sampled_ternarize's extra check)."""
    n = args["x"].size
    return rng.integers(0, max(1, n), draw(st.integers(0, n))).astype(np.int64)


def _crowded_sample(draw, rng, args):
    """More sample positions than entries (sampled_ternarize's extra check), and a NaN or inf in x."""
    longer = np.zeros(args["x"].size + 1, np.int64)
    return [("more sample positions than entries", "sample_positions", longer, (ValueError,), "sample_positions")
            ] + nonfinite("x", args["x"], rng)


def build_sparse_compress_batch(draw):
    rng = rng_of(draw)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    sizes, offsets = layout(draw)
    n_rows = draw(st.integers(0, 3))
    updates = vector(rng, dtype, (n_rows, int(offsets[-1])))
    n_segments = len(sizes)
    budgets = np.array([draw(st.integers(0, n + 2)) for n in sizes], np.int64)
    ternary, sampled = draw(st.booleans()), draw(st.booleans())
    active = ternary and sampled
    custom = nonfinite("updates", updates, rng)
    if active:        # (the extra check: each sample within its segment, no more samples than entries)
        samples = [rng.permutation(n)[:draw(st.integers(0, n))].astype(np.int64)
                   for _ in range(n_rows) for n in sizes]
        starts = np.concatenate(([0], np.cumsum([s.size for s in samples]))).astype(np.int64)
        positions = np.concatenate(samples + [np.zeros(0, np.int64)])
        sample_budgets = np.array([draw(st.integers(0, n + 2)) for n in sizes], np.int64)
        bounds = np.repeat(np.tile(np.array(sizes, np.int64), n_rows), np.diff(starts))
        if positions.size:
            bad = positions.copy()
            where = int(rng.integers(0, bad.size))
            bad[where] = bounds[where] + int(rng.integers(0, 3)) if rng.random() < 0.5 else -1
            custom.append(("a sample outside its segment", "sample_positions", bad, (ValueError,),
                           "sample_positions"))
        late = starts.copy()
        late[-1] += 1
        custom.append(("sample starts past the samples", "sample_starts", late, (ValueError,), "sample_starts"))
        if n_rows and n_segments:
            j = int(rng.integers(0, n_segments))
            crowded = list(samples)
            crowded[j] = np.zeros(sizes[j] + 1, np.int64)                  # row 0, segment j
            crowded_starts = np.concatenate(([0], np.cumsum([s.size for s in crowded]))).astype(np.int64)
            custom.append(("more samples than entries", ("sample_positions", "sample_starts"),
                           (np.concatenate(crowded), crowded_starts), (ValueError,), "sample_starts"))
    else:
        positions, starts, sample_budgets = np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64)
    args = {"updates": updates, "segment_offsets": offsets, "budgets": budgets, "ternary": ternary,
            "float_bits": 32 if dtype == np.float32 else 64, "sampled": sampled,
            "sample_positions": positions, "sample_starts": starts, "sample_budgets": sample_budgets,
            "sent_out": np.zeros_like(updates), "counts_out": np.zeros((n_rows, n_segments), np.int64),
            "encoded_bits_out": np.zeros(n_rows, np.int64)}
    return Call(args, custom=custom)


def _zero_dimensional(draw, rng, args):      # (all_finite takes any number of dimensions but 0)
    return [("a 0-D array", "x", np.array(1.0), (ValueError,), "x")]


# --- golomb ----------------------------------------------------------------------------------------

def _positions(draw, rng, args=None, high=5000, max_count=30):
    return np.sort(rng.choice(high, draw(st.integers(0, max_count)), replace=False)).astype(np.int64)


def not_increasing(name, positions, rng):
    found = [("a negative position", name, np.concatenate([[-1 - int(rng.integers(0, 9))], positions[1:]])
              .astype(np.int64), (ValueError,), "positions")]
    if positions.size >= 2:
        bad = positions.copy()
        bad[1] = bad[0]
        found.append(("a repeated position", name, bad, (ValueError,), "positions"))
    return found


def _not_increasing(draw, rng, args):
    return not_increasing("positions", args["positions"], rng)


def build_golomb_rice_decode_from(draw):
    rng = rng_of(draw)
    positions = _positions(draw, rng)
    b = draw(st.integers(0, 20))
    bit_offset = draw(st.integers(0, 13))
    stream = stream_of(rng, bit_offset + golomb.golomb_rice_bits(positions, b))
    end = golomb.golomb_rice_encode_into(positions, b, stream, bit_offset)
    n = positions.size
    args = {"stream": stream, "bit_offset": bit_offset, "bit_end": end, "count": n, "b": b,
            "positions_out": np.empty(n, np.int64)}
    return Call(args, custom=[("one position more than coded", ("count", "positions_out"),
                               (n + 1, np.empty(n + 1, np.int64)), (ValueError,), "ends before")])


def build_golomb_rice_decode(draw):
    rng = rng_of(draw)
    positions = _positions(draw, rng)
    b = draw(st.integers(0, 20))
    stream, n_bits = golomb.golomb_rice_encode(positions, b)
    return Call({"stream": stream, "n_bits": n_bits, "count": positions.size, "b": b},
                custom=[("one position more than coded", "count", positions.size + 1, (ValueError,), "ends before")])


def _holds(dtype, width):
    held = 8 * dtype.itemsize
    return held >= width if dtype.kind == "u" else held > width or held == width == 64


def _wide_enough(draw, rng, args):
    """values_out of an integer dtype that holds the fields (read_uints' extra check)."""
    wide = [d for d in checks.INTEGER if _holds(d, args["width"])]
    return np.zeros(draw(st.integers(0, 12)), draw(st.sampled_from(wide)))


def _too_narrow(draw, rng, args):
    narrow = [d for d in checks.INTEGER if not _holds(d, args["width"])]
    return [("an integer dtype too narrow", "values_out", np.zeros(args["values_out"].size, narrow[0]),
             (TypeError,), "values_out")] if narrow else []


def _signs(draw, rng, args=None):
    return rng.choice(np.array([-1, 1], np.int8), draw(st.integers(0, 40)))


def bad_sign(name, signs, rng, values=(0, 2, -2), match="only signs"):
    return one_entry("a value that is not a sign", name, signs, rng.choice(values), rng, match)


def _segment_size(draw, rng, args):
    positions = args["local_positions"]
    return int(positions[-1]) + 1 + draw(st.integers(0, 100)) if positions.size else draw(st.integers(0, 100))


def _segment_cases(draw, rng, args):
    positions = args["local_positions"]
    found = not_increasing("local_positions", positions, rng)
    if positions.size:
        found.append(("a position at size", "size", int(positions[-1]), (ValueError,), "local_positions"))
    return found


# --- laq -------------------------------------------------------------------------------------------

def _laq_problem(draw, rng):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = (draw(st.integers(0, 3)), draw(st.integers(0, 20)))
    gradients = rng.standard_normal(shape).astype(dtype)
    previous = (gradients + rng.normal(scale=0.3, size=shape)).astype(dtype)
    return dtype, shape, gradients, previous, draw(st.integers(1, 16))


LAQ_BITS = checks.Count(1, 16)
LAQ_BITS.type_errors = (ValueError,)


def _codes_for(draw, rng, args):
    """codes wide enough for the bits (laq_quantize's extra check)."""
    return np.zeros(args["gradients"].shape, laq.code_dtype(args["bits"]))


def _codes_too_narrow(draw, rng, args):
    if args["bits"] <= 8:
        return [("codes too narrow for the bits", "bits", 12, (TypeError,), "codes")]
    return [("codes too narrow for the bits", "codes", args["codes"].astype(np.uint8), (TypeError,), "codes")]


def build_quantize_innovation(draw):
    rng = rng_of(draw)
    _, _, gradients, previous, bits = _laq_problem(draw, rng)
    return Call({"gradients": gradients, "previous": previous, "bits": bits, "jit": draw(st.booleans())},
                {"gradients": Loose(checks.FLOAT, ndim=2, contiguous=False),
                 "previous": Loose(checks.FLOAT, contiguous=False, shape=lambda gradients: gradients.shape),
                 "bits": LAQ_BITS})


def build_laq_dequantize(draw):
    rng = rng_of(draw)
    _, shape, _, previous, bits = _laq_problem(draw, rng)
    codes = rng.integers(0, 1 << bits, shape).astype(laq.code_dtype(bits))
    radius = rng.uniform(0, 2, shape[0]) * (rng.random(shape[0]) < 0.8)
    custom = []
    for bad in (1 << bits, -1):
        custom += one_entry(f"a code {bad}", "codes", codes.astype(np.int64), bad, rng)
    for bad in (np.nan, np.inf, -1.0):
        custom += one_entry(f"a radius {bad}", "radius", radius, bad, rng)
    return Call({"codes": codes, "previous": previous, "radius": radius, "bits": bits},
                {"codes": checks.Array(checks.INTEGER, ndim=2, contiguous=False,
                                       shape=lambda previous: previous.shape),
                 "previous": checks.Array(checks.FLOAT, ndim=2, contiguous=False, shape=lambda codes: codes.shape),
                 "radius": checks.Array(checks.FLOAT, contiguous=False, shape=lambda codes: codes.shape[:1]),
                 "bits": LAQ_BITS}, custom)


# --- terngrad --------------------------------------------------------------------------------------

def _ternary_codes(draw, rng):
    return rng.integers(-1, 2, draw(st.integers(0, 40))).astype(np.int8)


def _bad_ternary_code(draw, rng, args):
    return bad_sign("codes", args["codes"], rng, (2, -2, 5), "ternary codes")


def build_unpack_ternary_from(draw):
    rng = rng_of(draw)
    codes = _ternary_codes(draw, rng)
    bit_offset = draw(st.integers(0, 13))
    stream = stream_of(rng, bit_offset + terngrad._ternary_code_bits(codes.size))
    terngrad.pack_ternary_into(codes, stream, bit_offset)
    custom = []
    if codes.size >= 5:
        corrupt = stream.copy()
        bitstream.write_uint(corrupt, bit_offset, 243 + int(rng.integers(0, 13)), 8)
        custom.append(("a group value beyond 3^5", "stream", corrupt, (ValueError,), "corrupt stream"))
    return Call({"stream": stream, "bit_offset": bit_offset, "count": codes.size,
                 "codes_out": np.empty(codes.size, np.int8)}, custom=custom)


# --- randomk ---------------------------------------------------------------------------------------

def _segment_relation(draw, rng, args):
    """The relation checked after k: 0 <= k <= size <= 2^32."""
    size, k = args["size"], args["k"]
    return [("below range", "size", k - draw(st.integers(1, 1 << 66)), (ValueError,), "size"),
            ("above range", "size", randomk.MAX_SEGMENT + draw(st.integers(1, 1 << 66)), (ValueError,), "size"),
            ("below range", "k", -draw(st.integers(1, 1 << 66)), (ValueError,), "k"),
            ("above range", "k", size + draw(st.integers(1, 1 << 66)), (ValueError,), "k")]


def _budgets_within(draw, rng, args):
    """Each budget in [0, its segment's size] (the relation checked after the budgets)."""
    return np.array([draw(st.integers(0, n)) for n in np.diff(args["segment_offsets"]).tolist()], np.int64)


def _budget_cases(draw, rng, args):
    budgets, sizes = args["budgets"], np.diff(args["segment_offsets"])
    custom = negative_entry("budgets", budgets, rng) + nonfinite("updates", args["updates"], rng)
    if sizes.size:
        big = budgets.copy()
        j = int(rng.integers(0, sizes.size))
        big[j] = sizes[j] + int(rng.integers(1, 5))
        custom.append(("a budget beyond its segment", "budgets", big, (ValueError,), "budgets"))
    return custom


# --- qsgd ------------------------------------------------------------------------------------------

SIGNED_DTYPES = (np.int8, np.int16, np.int32, np.int64)


def _signed(draw, rng, size, levels=None):
    levels = levels or draw(st.integers(1, 300))
    dtype = draw(st.sampled_from(SIGNED_DTYPES if levels < 128 else SIGNED_DTYPES[1:]))
    values = rng.integers(-levels, levels + 1, size) * (rng.random(size) < 0.6)
    return values.astype(dtype)


def beyond_omega(name, values, rng):
    """``values`` as int64 with one entry beyond the omega code's +-(2^62 - 1)."""
    bad = rng.choice([1 << 62, -(1 << 62), checks.INT64_MAX, -checks.INT64_MAX - 1])
    return one_entry("a level beyond 2^62", name, values.astype(np.int64), bad, rng)


def build_read_elias_omega(draw):
    rng = rng_of(draw)
    value = draw(st.one_of(st.integers(1, 300), st.integers(1, omega.MAX_OMEGA_VALUE)))
    bit_offset = draw(st.integers(0, 13))
    stream = stream_of(rng, bit_offset + omega._elias_omega_bits(value))
    end = omega._write_elias_omega(stream, bit_offset, value)
    return Call({"stream": stream, "bit_offset": bit_offset, "bit_end": end},
                custom=[("a code cut short", "bit_end", end - 1, (ValueError,), "past the end")])


def _levels_out(draw, rng, args):
    """int16 or int32 levels_out that holds +-s (the relation checked after levels_out)."""
    return np.zeros(args["updates"].shape, np.int16 if args["levels"] <= 32767 else np.int32)


def _levels_cases(draw, rng, args):
    narrow = np.zeros(args["updates"].shape, np.int16)
    custom = nonfinite("updates", args["updates"], rng) + [
        ("levels beyond int16", ("levels", "levels_out"), (int(rng.integers(32768, 1 << 31)), narrow), (TypeError,),
         "levels_out")]
    if args["levels"] > np.iinfo(np.int16).max:
        custom.append(("levels beyond int16", "levels_out", narrow, (TypeError,), "levels_out"))
    return custom


def _patterns(norms):
    if norms.dtype == np.float32:
        return norms.view(np.uint32).astype(np.int64)
    return norms.view(np.int64).copy()


def _qsgd_message(draw, rng):
    """(bucket offsets, float_bits, norms, signed levels, bit offset, a random stream that fits the code from
    the bit offset)."""
    _, segments = layout(draw)
    offsets = qsgd.bucket_offsets(segments, draw(st.integers(0, 5)))      # bucket size 0: one per segment
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    float_bits = 32 if dtype == np.float32 else 64
    norms = rng.random(offsets.size - 1).astype(dtype) + dtype(0.5)
    norms[rng.random(offsets.size - 1) < 0.3] = 0
    levels = _signed(draw, rng, int(offsets[-1]))
    levels[np.repeat(norms == 0, np.diff(offsets))] = 0
    bit_offset = draw(st.integers(0, 13))
    stream = stream_of(rng, bit_offset + qsgd.qsgd_bits(levels, offsets, norms, float_bits))
    return offsets, float_bits, norms, levels, bit_offset, stream


def build_qsgd_encode_into(draw):
    rng = rng_of(draw)
    offsets, float_bits, norms, levels, bit_offset, stream = _qsgd_message(draw, rng)
    patterns = _patterns(norms)
    custom = beyond_omega("signed_levels", levels, rng)
    sending = np.flatnonzero(patterns)      # buckets that send levels: the stream fits them either way
    if float_bits == 32 and sending.size:
        bad = patterns.copy()
        bad[int(rng.choice(sending))] = rng.choice([1 << 32, -1, 1 << 40])
        custom.append(("a pattern beyond 32 bits", "norm_patterns", bad, (ValueError,), "norm_patterns"))
    return Call({"signed_levels": levels, "bucket_offsets": offsets, "norm_patterns": patterns,
                 "float_bits": float_bits, "stream": stream, "bit_offset": bit_offset}, custom=custom)


def build_qsgd_decode_from(draw):
    rng = rng_of(draw)
    offsets, float_bits, norms, levels, bit_offset, stream = _qsgd_message(draw, rng)
    end = qsgd.qsgd_encode_into(levels, offsets, _patterns(norms), float_bits, stream, bit_offset)
    size, n_buckets = int(offsets[-1]), offsets.size - 1
    args = {"stream": stream, "bit_offset": bit_offset, "bit_end": end, "bucket_offsets": offsets,
            "float_bits": float_bits, "norm_patterns_out": np.zeros(n_buckets, np.int64),
            "levels_out": np.zeros(size, np.int64)}
    custom = []
    if end > bit_offset:
        custom.append(("a code cut short", "bit_end", end - 1, (ValueError,), "ends|past the end"))
    if size:
        dirty = np.zeros(size, np.int64)
        dirty[int(rng.integers(0, size))] = 1
        custom.append(("levels_out not zero-filled", "levels_out", dirty, (ValueError,), "levels_out"))
    return Call(args, custom=custom)


# --- powersgd --------------------------------------------------------------------------------------

def _matrix(rng, dtype, shape):
    return rng.standard_normal(shape).astype(dtype)


def build_low_rank_product(draw):
    rng = rng_of(draw)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n, m, rank = draw(st.integers(0, 8)), draw(st.integers(0, 8)), draw(st.integers(1, 4))
    left, right = _matrix(rng, dtype, (n, rank)), _matrix(rng, dtype, (m, rank))
    custom = [("rank 0", ("left", "right"), (np.zeros((n, 0), dtype), np.zeros((m, 0), dtype)), (ValueError,),
               "left"),
              ("right with a column more", "right", _matrix(rng, dtype, (m, rank + 1)), (ValueError,), "right")]
    if rank >= 2:
        custom.append(("right with a column less", "right", _matrix(rng, dtype, (m, rank - 1)), (ValueError,),
                       "right"))
    return Call({"left": left, "right": right, "out": np.zeros((n, m), dtype)}, custom=custom)


def build_power_step(draw):
    rng = rng_of(draw)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    senders, n, m, rank = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6)),
                           draw(st.integers(1, 3)))
    matrices = _matrix(rng, dtype, (senders, n, m))
    q = _matrix(rng, dtype, (m, rank))
    custom = [("no senders", ("matrices", "decoded_out"), (matrices[:0].copy(), np.zeros((0, n, m), dtype)),
               (ValueError,), "matrices"),
              ("rank 0", "q", np.zeros((m, 0), dtype), (ValueError,), "q"),
              ("q of another m", "q", _matrix(rng, dtype, (m + 1, rank)), (ValueError,), "q")]
    if m >= 2:        # (decoded_out may have any strides, so long as each decoded_out[k] is contiguous)
        custom.append(("not contiguous", "decoded_out", strided(np.zeros((senders, n, m), dtype)), (ValueError,),
                       "decoded_out"))
    custom += nonfinite("matrices", matrices, rng)
    return Call({"matrices": matrices, "q": q, "tolerance": powersgd.drop_tolerance(dtype),
                 "decoded_out": np.zeros((senders, n, m), dtype)}, custom=custom)


def _softmax_block(draw, rng):
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    G, R, C = draw(st.integers(1, 3)), draw(st.integers(0, 6)), draw(st.integers(1, 5))
    labels = rng.integers(0, C, (draw(st.sampled_from([1, G])), R))
    return dtype, G, R, C, labels


def _block_spoilers(z, labels, rng):
    """Labels out of range or one sample short, z without classes, z_y one sample long."""
    G, R, C = z.shape
    custom = out_of_range("labels", labels, C, rng)
    if labels.shape[1]:
        custom.append(("labels one sample short", "labels", np.ascontiguousarray(labels[:, :-1]),
                       (ValueError,), "labels"))
    return custom + [("no classes", "z", np.ascontiguousarray(z[..., :0]), (ValueError,), "class"),
                     ("z_y one sample long", "z_y", np.zeros((G, R + 1), z.dtype), (ValueError,), "z_y")]


def build_shift_logits(draw):
    rng = rng_of(draw)
    dtype, G, R, C, labels = _softmax_block(draw, rng)
    z = (rng.standard_normal((G, R, C)) * 4).astype(dtype)
    bias = rng.standard_normal((draw(st.sampled_from([1, G])), C)).astype(dtype)
    custom = _block_spoilers(z, labels, rng)
    custom.append(("bias one class short", "bias", np.ascontiguousarray(bias[:, :-1]), (ValueError,), "bias"))
    return Call({"z": z, "bias": bias, "scale": float(rng.uniform(0.001, 2)), "labels": labels,
                 "z_y": np.zeros((G, R), dtype)}, custom=custom)


def build_softmax_residual(draw):
    rng = rng_of(draw)
    dtype, G, R, C, labels = _softmax_block(draw, rng)
    z = rng.uniform(0, 1, (G, R, C)).astype(dtype)
    total = z.sum(axis=-1) + dtype.type(1)
    weighted = draw(st.booleans())
    share = (rng.uniform(0, 1, (draw(st.sampled_from([1, G])), R)) if weighted else np.empty((0, 0))).astype(dtype)
    custom = _block_spoilers(z, labels, rng)
    custom.append(("share of another length", "share", np.zeros((1, R + 1), dtype), (ValueError,), "share"))
    custom.append(("grad_b one class long", "grad_b", np.zeros((G, C + 1), dtype), (ValueError,), "grad_b"))
    return Call({"z": z, "total": total, "log_total": np.log(total), "z_y": np.zeros((G, R), dtype),
                 "labels": labels, "share": share, "divisor": float(max(R, 1)), "nll": np.zeros((G, R), dtype),
                 "grad_b": np.zeros((G, C), dtype)}, custom=custom)


CASES = {
    "sparsify": [
        case(selection._top_k_select, selection._top_k_select_numpy, nonfinite_in("x")),
        case(selection._top_k_threshold, selection._top_k_threshold_numpy, nonfinite_in("x")),
        case(ternary._ternarize, ternary._ternarize_numpy, nonfinite_in("x")),
        case(selection._top_k_sparsify, selection._top_k_sparsify_numpy, nonfinite_in("x")),
        case(selection._sampled_top_k_threshold, selection._sampled_top_k_threshold_numpy),
        case(selection._select_at_least, selection._select_at_least_numpy, nonfinite_in("x")),
        case(ternary._sampled_ternarize, ternary._sampled_ternarize_numpy, _crowded_sample,
             sample_positions=_sample),
        case(ternary._sign, ternary._sign_numpy, nonfinite_in("x")),
        case(ternary._mean_magnitude, ternary._mean_magnitude_numpy, nonfinite_in("x")),
        case(sparsify.all_finite, sparsify.all_finite_numpy, _zero_dimensional),
        case(sparsify.sparse_compress_batch, sparsify.sparse_compress_batch_numpy, build=build_sparse_compress_batch),
        case(sparsify.sign_compress_batch, sparsify.sign_compress_batch_numpy, nonfinite_in("updates")),
    ],
    "golomb": [
        case(golomb.rice_parameter, golomb.rice_parameter_numpy,
             size=lambda draw, rng, args: draw(st.integers(0, 10 ** 7))),
        case(bitstream.write_uint),
        case(bitstream.read_uint),
        case(golomb.golomb_rice_bits, golomb.golomb_rice_bits_numpy, _not_increasing, positions=_positions),
        case(golomb.golomb_rice_encode_into, None, _not_increasing, positions=_positions),
        case(golomb.golomb_rice_encode, golomb.golomb_rice_encode_numpy, _not_increasing, positions=_positions),
        case(golomb.golomb_rice_decode_from, None, build=build_golomb_rice_decode_from),
        case(golomb.golomb_rice_decode, golomb.golomb_rice_decode_numpy, build=build_golomb_rice_decode),
        case(bitstream.write_uints),
        case(bitstream.read_uints, None, _too_narrow, values_out=_wide_enough),
        case(bitstream.pack_signs_into, None, lambda draw, rng, args: bad_sign("signs", args["signs"], rng),
             signs=_signs),
        case(bitstream.unpack_signs_from),
        case(golomb.sparse_segment_bits, None, _segment_cases, local_positions=_positions, size=_segment_size),
    ],
    "laq": [
        case(laq.laq_quantize, laq.laq_quantize_numpy, _codes_too_narrow, codes=_codes_for),
        case(laq.quantize_innovation, None, build=build_quantize_innovation),
        case(laq._laq_dequantize, None, build=build_laq_dequantize),
    ],
    "terngrad": [
        case(terngrad.segment_bits),
        case(terngrad.terngrad_batch, terngrad.terngrad_batch_numpy, nonfinite_in("updates")),
        case(terngrad.pack_ternary_into, None, _bad_ternary_code,
             codes=lambda draw, rng, args: _ternary_codes(draw, rng)),
        case(terngrad.unpack_ternary_from, None, build=build_unpack_ternary_from),
    ],
    "randomk": [
        case(randomk.random_positions, randomk.random_positions_numpy, _segment_relation,
             size=lambda draw, rng, args: draw(st.integers(0, 60)),
             k=lambda draw, rng, args: draw(st.integers(0, args["size"]))),
        case(randomk.randomk_compress_batch, randomk.randomk_compress_batch_numpy, _budget_cases,
             budgets=_budgets_within),
    ],
    "qsgd": [
        case(omega._elias_omega_bits, omega._elias_omega_bits_numpy),
        case(omega._write_elias_omega),
        case(omega._read_elias_omega, None, build=build_read_elias_omega),
        case(qsgd.qsgd_bits, qsgd.qsgd_bits_numpy,
             lambda draw, rng, args: beyond_omega("signed_levels", args["signed_levels"], rng),
             signed_levels=lambda draw, rng, args: _signed(draw, rng, draw(st.integers(0, 40)))),
        case(qsgd.qsgd_quantize, qsgd.qsgd_quantize_numpy, _levels_cases, levels_out=_levels_out,
             levels=lambda draw, rng, args: draw(st.one_of(st.integers(1, 40), st.integers(1, qsgd.MAX_LEVELS)))),
        case(qsgd.qsgd_encode_into, None, build=build_qsgd_encode_into),
        case(qsgd.qsgd_decode_from, None, build=build_qsgd_decode_from),
    ],
    "powersgd": [
        case(powersgd._orthogonalize, powersgd._orthogonalize_numpy, nonfinite_in("p")),
        case(powersgd.low_rank_product, powersgd.low_rank_product_numpy, build=build_low_rank_product),
        case(powersgd.power_step, powersgd.power_step_numpy, build=build_power_step),
    ],
    "softmax": [
        case(softmax.shift_logits, softmax.shift_logits_numpy, build=build_shift_logits),
        case(softmax.softmax_residual, softmax.softmax_residual_numpy, build=build_softmax_residual),
        case(softmax.gather_rows, softmax.gather_rows_numpy),
    ],
}
# The groups of cases, each run in a child process of its own.
MODULES = tuple(CASES)


def run_hostile(module: str, examples: int) -> None:
    """The hypothesis loop of one module (run in the child process)."""
    cases = CASES[module]

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def hostile(data):
        case = data.draw(st.sampled_from(cases), label="kernel")
        call = case.build(data.draw)
        if call.contract is None:
            call.contract = case.kernel.contract
        spoiler = data.draw(st.sampled_from(spoilers(data.draw, call)), label="spoiler")
        exercise(case, call, spoiler)

    hostile()
    print(f"hostile arguments, {module}: {examples} examples passed", flush=True)


# ----------------------------------------------------------------------------------------------------
# The property tests, each module in its own child process
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", MODULES)
def test_hostile_arguments_in_a_child_process(module):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), module, str(EXAMPLES)],
                            capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env, cwd=str(ROOT),
                            check=False)
    tail = "\n".join(result.stdout.splitlines()[-5:] + result.stderr.splitlines()[-60:])
    code = result.returncode
    died = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    assert result.returncode == 0, f"hostile-argument child for {module}: {died}; last output:\n{tail}"
    assert f"hostile arguments, {module}: {EXAMPLES} examples passed" in result.stdout, tail


# ----------------------------------------------------------------------------------------------------
# In the main process: one call per kernel that crashed (signal) or corrupted memory before the checks
# ----------------------------------------------------------------------------------------------------

CANARY = 0x5A


def guarded(n, dtype, shape=None):
    """A C-contiguous view of the first ``n`` entries of a longer buffer whose tail holds canaries."""
    buffer = np.full(n + 4096, CANARY, dtype)
    view = buffer[:n]
    return buffer, view if shape is None else view.reshape(shape)


def _qsgd_rows(n_rows, size, d=0, levels=4):
    """Valid qsgd_quantize arguments (ones, buckets of d) with fresh outputs."""
    offsets = qsgd.bucket_offsets((0, size), d)
    return [np.ones((n_rows, size)), offsets, levels, np.zeros((n_rows, size)), 64,
            np.zeros((n_rows, size)), np.zeros((n_rows, offsets.size - 1)), np.zeros((n_rows, size), np.int16),
            np.zeros(n_rows, np.int64)]


def _qsgd_with(index, value, *args):
    call = _qsgd_rows(*args)
    call[index] = value
    return qsgd.qsgd_quantize(*call)


def _qsgd_decode(size, d, patterns_out, levels_out):
    """qsgd_decode_from of a float32 message of ``size`` levels 1 in buckets of d into the given outputs."""
    levels, offsets = np.ones(size, np.int16), qsgd.bucket_offsets((0, size), d)
    norms = np.ones(offsets.size - 1, np.float32)
    stream = np.zeros((qsgd.qsgd_bits(levels, offsets, norms, 32) + 7) // 8, np.uint8)
    qsgd.qsgd_encode_into(levels, offsets, norms.view(np.uint32).astype(np.int64), 32, stream, 0)
    return qsgd.qsgd_decode_from(stream, 0, 8 * stream.size, offsets, 32, patterns_out, levels_out)


FLOAT32_ONE = np.array([int(np.float32(1).view(np.uint32))], np.int64)

# (name, what happened before, expected error, what its message names, the call given a guarded buffer maker)
CRASHED_BEFORE = [
    ("ternarize (short signs_out)", "SIGSEGV", ValueError, "signs_out",
     lambda g: ternary._ternarize(np.ones(5000, np.float32), 5000, np.empty(5000, np.int64), g(1, np.int8))),
    ("top_k_sparsify (short values_out)", "wrote past values_out", ValueError, "values_out",
     lambda g: selection._top_k_sparsify(np.ones(3000), 3000, np.empty(3000, np.int64), g(1, np.float64))),
    ("select_at_least (short positions_out)", "wrote past positions_out", ValueError, "positions_out",
     lambda g: selection._select_at_least(np.ones(3000), 0.5, g(1, np.int64))),
    ("sampled_top_k_threshold (sample position 2^40)", "SIGSEGV", ValueError, "sample_positions",
     lambda g: selection._sampled_top_k_threshold(np.ones(10), np.array([0, 1 << 40], np.int64), 1)),
    ("sampled_ternarize (short positions_out)", "wrote past positions_out", ValueError, "positions_out",
     lambda g: ternary._sampled_ternarize(np.arange(1.0, 3001.0), np.array([2500], np.int64), 1, 30,
                                          g(1, np.int64), np.empty(3000, np.int8))),
    ("sign (short signs_out)", "wrote past signs_out", ValueError, "signs_out",
     lambda g: ternary._sign(np.ones(3000), g(1, np.int8))),
    ("sparse_compress_batch (sample position 2^40)", "SIGSEGV", ValueError, "sample_positions",
     lambda g: sparsify.sparse_compress_batch(
         np.ones((1, 10)), np.array([0, 10], np.int64), np.array([3], np.int64), True, 64, True,
         np.array([1 << 40], np.int64), np.array([0, 1], np.int64), np.array([1], np.int64),
         np.zeros((1, 10)), np.zeros((1, 1), np.int64), np.zeros(1, np.int64))),
    ("sparse_compress_batch (short sent_out)", "wrote past sent_out", ValueError, "sent_out",
     lambda g: sparsify.sparse_compress_batch(
         np.ones((1, 4000)), np.array([0, 4000], np.int64), np.array([4000], np.int64), True, 64, False,
         np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64), g(10, np.float64, (1, 10)),
         np.zeros((1, 1), np.int64), np.zeros(1, np.int64))),
    ("sign_compress_batch (short scales_out)", "wrote past scales_out", ValueError, "scales_out",
     lambda g: sparsify.sign_compress_batch(np.ones((4, 10)), np.array([0, 5, 10], np.int64), True, 64,
                                            np.zeros((4, 10)), g(1, np.float64, (1, 1)),
                                            np.zeros(4, np.int64))),
    ("write_uint (bit offset 2^40)", "SIGSEGV", ValueError, "stream",
     lambda g: bitstream.write_uint(g(2, np.uint8), 1 << 40, 255, 8)),
    ("read_uint (negative bit offset)", "read the stream's last byte", ValueError, "bit_offset",
     lambda g: bitstream.read_uint(np.array([0, 0, 0, 0xF0], np.uint8), -8, 8)),
    ("golomb_rice_encode_into (short stream)", "wrote past the stream", ValueError, "stream",
     lambda g: golomb.golomb_rice_encode_into(np.arange(0, 20000, 7, dtype=np.int64), 0, g(1, np.uint8), 0)),
    ("golomb_rice_decode_from (short positions_out)", "wrote past positions_out", ValueError, "positions_out",
     lambda g: golomb.golomb_rice_decode_from(np.zeros(375, np.uint8), 0, 3000, 3000, 0, g(1, np.int64))),
    ("write_uints (short stream)", "wrote past the stream", ValueError, "stream",
     lambda g: bitstream.write_uints(g(1, np.uint8), 0, np.full(1000, 0xFFFFFFFF, np.uint32), 32)),
    ("pack_signs_into (short stream)", "wrote past the stream", ValueError, "stream",
     lambda g: bitstream.pack_signs_into(-np.ones(8000, np.int8), g(1, np.uint8), 0)),
    ("unpack_signs_from (short signs_out)", "SIGABRT (heap corruption)", ValueError, "signs_out",
     lambda g: bitstream.unpack_signs_from(np.zeros(1000, np.uint8), 0, 8000, g(1, np.int8))),
    ("terngrad_batch (short decoded_out)", "wrote past decoded_out", ValueError, "decoded_out",
     lambda g: terngrad.terngrad_batch(np.ones((1, 3000)), np.array([0, 3000], np.int64),
                                       np.zeros((1, 3000)), 0.0, 64, g(10, np.float64, (1, 10)),
                                       np.zeros((1, 1)), np.zeros(1, np.int64))),
    ("pack_ternary_into (short stream)", "wrote past the stream", ValueError, "stream",
     lambda g: terngrad.pack_ternary_into(-np.ones(8000, np.int8), g(1, np.uint8), 0)),
    ("unpack_ternary_from (short codes_out)", "SIGABRT (heap corruption)", ValueError, "codes_out",
     lambda g: terngrad.unpack_ternary_from(np.zeros(2000, np.uint8), 0, 8000, g(1, np.int8))),
    ("random_positions (short positions_out)", "wrote past positions_out", ValueError, "positions_out",
     lambda g: randomk.random_positions(1, 0, 5000, 3000, g(1, np.int64))),
    ("randomk_compress_batch (short values_out)", "wrote past values_out", ValueError, "values_out",
     lambda g: randomk.randomk_compress_batch(np.ones((1, 5000)), np.array([0, 5000], np.int64),
                                              np.array([3000], np.int64), np.ones(1), np.zeros(1, np.uint64),
                                              np.zeros((1, 5000)), g(1, np.float64, (1, 1)))),
    ("laq_quantize (short radius)", "wrote past radius", ValueError, "radius",
     lambda g: laq.laq_quantize(np.ones((50, 3000)), np.zeros((50, 3000)), 4, np.zeros((50, 3000), np.uint8),
                                np.zeros((50, 3000)), g(1, np.float64), np.zeros(50), np.zeros(50))),
    ("laq_dequantize (NaN radius)", "silently returned Q_prev", ValueError, "radius",
     lambda g: laq._laq_dequantize(np.zeros((1, 3), np.uint8), np.zeros((1, 3)), np.array([np.nan]), 4)),
    ("qsgd_quantize (short decoded_out)", "SIGSEGV", ValueError, "decoded_out",
     lambda g: _qsgd_with(5, g(10, np.float64, (1, 10)), 1, 5000)),
    ("qsgd_quantize (short levels_out)", "SIGSEGV", ValueError, "levels_out",
     lambda g: _qsgd_with(7, g(10, np.int16, (1, 10)), 1, 5000)),
    ("qsgd_quantize (short norms_out)", "wrote past norms_out", ValueError, "norms_out",
     lambda g: _qsgd_with(6, g(1, np.float64, (1, 1)), 1, 5000, 1)),
    ("qsgd_quantize (short encoded_bits_out)", "wrote past encoded_bits_out", ValueError, "encoded_bits_out",
     lambda g: _qsgd_with(8, g(1, np.int64), 3000, 2)),
    ("qsgd_quantize (s = 100000 into int16 levels)", "silently wrapped the levels (1 became -31072)", TypeError,
     "levels_out",
     lambda g: _qsgd_with(2, 100000, 1, 2)),
    ("qsgd_bits (short norms)", "read past norms (a count from garbage)", ValueError, "norms",
     lambda g: qsgd.qsgd_bits(np.ones(1 << 20, np.int16), np.arange((1 << 20) + 1, dtype=np.int64),
                              np.zeros(1), 32)),
    ("qsgd_encode_into (short stream)", "SIGABRT (heap corruption)", ValueError, "stream",
     lambda g: qsgd.qsgd_encode_into(np.ones(20000, np.int16), np.array([0, 20000], np.int64),
                                     FLOAT32_ONE, 32, g(1, np.uint8), 0)),
    ("qsgd_encode_into (bit offset 2^40)", "SIGSEGV", ValueError, "stream",
     lambda g: qsgd.qsgd_encode_into(np.ones(4, np.int16), np.array([0, 4], np.int64), FLOAT32_ONE, 32,
                                     g(2, np.uint8), 1 << 40)),
    ("qsgd_encode_into (bucket offset 2^40)", "SIGSEGV", ValueError, "bucket_offsets",
     lambda g: qsgd.qsgd_encode_into(np.ones(4, np.int16), np.array([0, 1 << 40], np.int64),
                                     FLOAT32_ONE, 32, g(1024, np.uint8), 0)),
    ("qsgd_encode_into (float_bits 1000)", "wrote past the stream", ValueError, "float_bits",
     lambda g: qsgd.qsgd_encode_into(np.ones(4, np.int16), np.array([0, 4], np.int64), FLOAT32_ONE, 1000,
                                     g(8, np.uint8), 0)),
    ("qsgd_decode_from (short levels_out)", "wrote past levels_out", ValueError, "levels_out",
     lambda g: _qsgd_decode(3000, 0, np.zeros(1, np.int64), g(1, np.int64))),
    ("qsgd_decode_from (short norm_patterns_out)", "wrote past norm_patterns_out", ValueError, "norm_patterns_out",
     lambda g: _qsgd_decode(3000, 1, g(1, np.int64), np.zeros(3000, np.int64))),
    ("qsgd_decode_from (bit offset -2^40)", "SIGSEGV", ValueError, "bit_offset",
     lambda g: qsgd.qsgd_decode_from(np.zeros(4, np.uint8), -(1 << 40), 32, np.array([0, 1], np.int64), 32,
                                     np.zeros(1, np.int64), np.zeros(1, np.int64))),
    ("write_elias_omega (short stream)", "wrote past the stream", ValueError, "stream",
     lambda g: omega._write_elias_omega(g(1, np.uint8), 0, (1 << 62) - 1)),
    ("write_elias_omega (bit offset 2^40)", "SIGSEGV", ValueError, "stream",
     lambda g: omega._write_elias_omega(g(1, np.uint8), 1 << 40, 5)),
    ("read_elias_omega (bit offset -2^40)", "SIGSEGV", ValueError, "bit_offset",
     lambda g: omega._read_elias_omega(np.zeros(1, np.uint8), -(1 << 40), 8)),
    ("orthogonalize (short out)", "SIGSEGV (heap corruption)", ValueError, "out",
     lambda g: powersgd._orthogonalize(np.ones((3000, 2)), 1e-4, g(2, np.float64, (1, 2)))),
    ("orthogonalize (NaN tolerance)", "silently dropped every column", ValueError, "tolerance",
     lambda g: powersgd._orthogonalize(np.eye(3), np.nan, np.zeros((3, 3)))),
    ("low_rank_product (short out)", "wrote past out", ValueError, "out",
     lambda g: powersgd.low_rank_product(np.ones((100, 2)), np.ones((100, 2)), g(4, np.float64, (2, 2)))),
    ("low_rank_product (rank 0)", "read past left and right (garbage out)", ValueError, "left",
     lambda g: powersgd.low_rank_product(np.ones((3000, 0)), np.ones((3000, 0)), np.zeros((3000, 3000)))),
    ("low_rank_product (right of rank 1 for a left of rank 4)", "read past right", ValueError, "right",
     lambda g: powersgd.low_rank_product(np.ones((2000, 4)), np.ones((2000, 1)), np.zeros((2000, 2000)))),
    ("power_step (short decoded_out)", "wrote past decoded_out", ValueError, "decoded_out",
     lambda g: powersgd.power_step(np.ones((1, 100, 100)), np.ones((100, 2)), 1e-4,
                                   g(4, np.float64, (1, 2, 2)))),
    ("power_step (rank 0)", "read past P_hat and Q_k (garbage decoded)", ValueError, "q",
     lambda g: powersgd.power_step(np.ones((1, 3000, 3000)), np.ones((3000, 0)), 1e-4,
                                   np.zeros((1, 3000, 3000)))),
]


@pytest.mark.parametrize("name, before, error, match, call", CRASHED_BEFORE, ids=[c[0] for c in CRASHED_BEFORE])
def test_call_that_crashed_before_raises_in_process(name, before, error, match, call):
    buffers = []

    def make(n, dtype, shape=None):
        buffer, view = guarded(n, dtype, shape)
        buffers.append((buffer, n))
        return view

    with pytest.raises(error, match=match):
        call(make)
    for buffer, n in buffers:
        assert np.all(buffer[n:] == buffer.dtype.type(CANARY)), f"{name} ({before} before the checks): a canary changed"


def test_power_step_takes_views_into_a_batch():
    """The senders' matrices and decoded_out may be views into wider (K, P) rows (as the compressor's
    segments are); only each decoded_out[k] must be C-contiguous."""
    rng = np.random.default_rng(0)
    rows, decoded = rng.standard_normal((3, 40)), np.zeros((3, 40))
    matrices, out = rows[:, 5:35].reshape(3, 5, 6), decoded[:, 5:35].reshape(3, 5, 6)
    assert not matrices.flags.c_contiguous and not out.flags.c_contiguous
    q = rng.standard_normal((6, 2))
    contiguous = np.zeros((3, 5, 6))
    want = powersgd.power_step(np.ascontiguousarray(matrices), q, 1e-4, contiguous)
    for got, expected in zip(powersgd.power_step(matrices, q[::1], 1e-4, out), want):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(out, contiguous)
    assert not decoded[:, :5].any() and not decoded[:, 35:].any()


def test_every_checked_kernel_is_exercised():
    """Every checked kernel of every kernel module (public, or a private helper) has a hostile-argument case:
    a new module or kernel without a builder fails here."""
    covered = {case.name for cases in CASES.values() for case in cases}
    for module in (importlib.import_module(f"fedsim.kernels.{name}") for name in kernels_package._KERNEL_MODULES):
        kernels = {name.lstrip("_") for name, value in vars(module).items()
                   if callable(getattr(value, "check", None)) and hasattr(value, "core")
                   and getattr(value, "__module__", None) == module.__name__}
        assert kernels <= covered, f"{module.__name__}: no hostile case for {sorted(kernels - covered)}"


if __name__ == "__main__":
    faulthandler.enable()
    run_hostile(sys.argv[1], int(sys.argv[2]))
