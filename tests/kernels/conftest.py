"""Helpers shared by the kernel tests."""

import numpy as np

from fedsim.kernels import laq


def select(kernel, x, k):
    """(count, kept positions) of a top-k selection kernel (or its twin, or .py_func) on fresh outputs."""
    positions = np.full(max(1, min(k, x.size)), -1, np.int64)
    count = kernel(x, k, positions)
    return count, positions[:count].copy()


def run_laq(kernel, gradients, previous, bits):
    """(codes, quantized, radius, error, innovation) of an LAQ quantizer kernel on fresh outputs."""
    n_workers = gradients.shape[0]
    out = (np.empty(gradients.shape, laq.code_dtype(bits)), np.empty_like(gradients), np.empty(n_workers),
           np.empty(n_workers), np.empty(n_workers))
    kernel(gradients, previous, bits, *out)
    return out
