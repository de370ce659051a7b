"""Helpers shared by the kernel tests."""

import numpy as np

from fedsim.kernels import golomb, laq
from tests.conftest import assert_bitwise


def implementations(kernel, twin):
    """A checked kernel, its pure-Python ``.py_func`` and its NumPy ``twin``: what the tests compare."""
    return kernel, kernel.py_func, twin


def called(*args):
    """A ``run`` of :func:`agree`: the function called on fresh copies of the array ``args`` (outputs, or
    inputs it writes in place); its result (unpacked if a tuple) and those arrays after the call."""
    def run(function):
        fresh = [arg.copy() if isinstance(arg, np.ndarray) else arg for arg in args]
        result = function(*fresh)
        results = result if isinstance(result, tuple) else () if result is None else (result,)
        return (*results, *(arg for arg in fresh if isinstance(arg, np.ndarray)))
    return run


def assert_same(got, want, what):
    """Arrays bitwise (:func:`tests.conftest.assert_bitwise`), scalars by value (a jitted function returns a
    float32 as a Python float)."""
    if isinstance(got, np.ndarray) or isinstance(want, np.ndarray):
        assert_bitwise(got, want, what)
    else:
        assert got == want, f"{what}: {got!r} != {want!r}"


def agree(functions, run, what="", same=assert_same):
    """``run(function)`` (a tuple of values) of each of ``functions``, asserted equal value by value to the
    first one's (``same``); returns the first one's."""
    want = run(functions[0])
    for function in functions[1:]:
        got = run(function)
        assert len(got) == len(want), what
        for i, (a, b) in enumerate(zip(got, want)):
            same(a, b, f"{what}: {getattr(function, '__qualname__', function)} [{i}]")
    return want


def assert_golomb_round_trip(positions, b, start):
    """The Golomb-Rice code of ``positions``: its length (q + 1 + b bits a gap) from the encoder, its twin and
    both bit counters; the twin's stream; decoded by the decoder and its twin; and written into a dirty stream
    from bit ``start``, then read back from there."""
    stream, n_bits = golomb.golomb_rice_encode(positions, b)
    twin_stream, twin_bits = golomb.golomb_rice_encode_numpy(positions, b)
    gaps = np.diff(positions, prepend=-1)
    assert n_bits == twin_bits == int(np.sum((gaps - 1) // 2 ** b + 1 + b)) == golomb.golomb_rice_bits(positions, b) \
        == golomb.golomb_rice_bits_numpy(positions, b)
    np.testing.assert_array_equal(stream, twin_stream)
    assert stream.size == (n_bits + 7) // 8
    for decoder in (golomb.golomb_rice_decode, golomb.golomb_rice_decode_numpy):
        np.testing.assert_array_equal(decoder(stream, n_bits, positions.size, b), positions)
    stream = np.full((start + n_bits + 7) // 8 + 1, 0xFF, np.uint8)   # dirty bits must be overwritten
    end = golomb.golomb_rice_encode_into(positions, b, stream, start)
    decoded = np.empty(positions.size, np.int64)
    assert end == start + n_bits == golomb.golomb_rice_decode_from(stream, start, end, positions.size, b, decoded)
    np.testing.assert_array_equal(decoded, positions)


def select(kernel, x, k):
    """(count, kept positions) of a top-k selection kernel (or its twin, or .py_func) on fresh outputs."""
    positions = np.full(max(1, min(k, x.size)), -1, np.int64)
    count = kernel(x, k, positions)
    return count, positions[:count].copy()


def ternarized(kernel, x, k):
    """(count, mu, kept positions, signs) of a ternarize kernel (or its twin, or .py_func) on fresh outputs."""
    positions, signs = np.empty(min(k, x.size), np.int64), np.empty(min(k, x.size), np.int8)
    count, mu = kernel(x, k, positions, signs)
    return count, mu, positions[:count], signs[:count]


def run_laq(kernel, gradients, previous, bits):
    """(codes, quantized, radius, error, innovation) of an LAQ quantizer kernel on fresh outputs."""
    n_workers = gradients.shape[0]
    out = (np.empty(gradients.shape, laq.code_dtype(bits)), np.empty_like(gradients), np.empty(n_workers),
           np.empty(n_workers), np.empty(n_workers))
    kernel(gradients, previous, bits, *out)
    return out
