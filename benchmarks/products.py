"""Can hand-written matrix products beat OpenBLAS on the seed experiments' skinny shapes?

The rounds suite shows that the STC round and the LAQ iteration are bounded by their matrix products
(forward ``x W``, backward ``x^T delta``, N = 10 output columns): with NumPy's OpenBLAS products, fedsim
cannot reach the issue's 3x / 2x over torch even if everything else took no time. This suite times the
alternatives tried in issue #5 against the same NumPy calls, on the same shapes, each validated first:

* ``columns``: the LAQ forward ``X W`` with 8, 10 and 16 columns. If the time hardly grows with the
  columns, the cost is per element of X (BLAS packs all of it), not per flop.
* ``client_blocks``: the STC round's gather + forward + backward, batched over the 50 clients as fedsim
  runs it, against client by client with the batch gathered into one cache-resident buffer.
* ``fixed_order``: Numba kernels that add in a fixed order (no ``fastmath``, so a NumPy twin could
  reproduce them bitwise): a forward over a feature-major copy of X in blocks of 4 features, a backward
  over sample-major X in blocks of 4 samples. Without LLVM's SLP vectorizer (off in Numba) these
  elementwise-along-the-contiguous-axis loops are the only ones Numba vectorizes.
* ``reassociated``: Numba dot products with ``fastmath={"reassoc"}`` (the compiler picks the summation
  order), 4 classes per pass over a row; for STC with the gather fused in.
* ``sparse``: the LAQ pipeline's pixels are exact zeros where the image is blank; a CSR forward that skips
  them (Numba, and scipy.sparse) against the dense product.

Usage: ``python -m benchmarks.products --mode quick --json out.json`` or through
``python -m benchmarks.run --only products``.
"""

from __future__ import annotations

import numba
import numpy as np

from benchmarks import common
from benchmarks.common import assert_close, log

# Shapes per mode: the LAQ shards (samples, features), the STC round (clients, batch, features, train
# samples), classes, repeats.
SETTINGS = {
    "smoke": dict(laq=(600, 40), stc=(5, 20, 64, 500), classes=10, repeats=2),
    "quick": dict(laq=(60_000, 784), stc=(50, 100, 1024, 60_000), classes=10, repeats=5),
    "full": dict(laq=(60_000, 784), stc=(50, 100, 1024, 60_000), classes=10, repeats=9),
}


# -- fixed-order kernels (no fastmath) ----------------------------------------------------------------

@numba.njit(cache=True)
def forward_feature_major(x_t, weights, logits_t):
    """``logits_t[c, s] = sum_j weights[j, c] x_t[j, s]``, added in increasing j, 4 features a step,
    over blocks of 512 samples (``x_t`` is X transposed: features x samples)."""
    n_features, n_samples = x_t.shape
    n_classes = weights.shape[1]
    for s0 in range(0, n_samples, 512):
        s1 = min(n_samples, s0 + 512)
        for c in range(n_classes):
            logits_t[c, s0:s1] = 0.0
        j = 0
        while j + 4 <= n_features:
            x0, x1, x2, x3 = x_t[j, s0:s1], x_t[j + 1, s0:s1], x_t[j + 2, s0:s1], x_t[j + 3, s0:s1]
            for c in range(n_classes):
                w0, w1, w2, w3 = weights[j, c], weights[j + 1, c], weights[j + 2, c], weights[j + 3, c]
                z = logits_t[c, s0:s1]
                for i in range(s1 - s0):
                    z[i] = z[i] + w0 * x0[i] + w1 * x1[i] + w2 * x2[i] + w3 * x3[i]
            j += 4
        while j < n_features:
            x0 = x_t[j, s0:s1]
            for c in range(n_classes):
                w0 = weights[j, c]
                z = logits_t[c, s0:s1]
                for i in range(s1 - s0):
                    z[i] = z[i] + w0 * x0[i]
            j += 1


@numba.njit(cache=True)
def backward_sample_major(x, delta, gradient_t):
    """``gradient_t[c, j] = sum_s delta[s, c] x[s, j]``, added in increasing s, 4 samples a step."""
    n_samples, n_features = x.shape
    n_classes = delta.shape[1]
    gradient_t[:] = 0.0
    s = 0
    while s + 4 <= n_samples:
        x0, x1, x2, x3 = x[s], x[s + 1], x[s + 2], x[s + 3]
        for c in range(n_classes):
            d0, d1, d2, d3 = delta[s, c], delta[s + 1, c], delta[s + 2, c], delta[s + 3, c]
            g = gradient_t[c]
            for j in range(n_features):
                g[j] = g[j] + d0 * x0[j] + d1 * x1[j] + d2 * x2[j] + d3 * x3[j]
        s += 4
    while s < n_samples:
        x0 = x[s]
        for c in range(n_classes):
            d0 = delta[s, c]
            g = gradient_t[c]
            for j in range(n_features):
                g[j] = g[j] + d0 * x0[j]
        s += 1


# -- reassociated dot products ------------------------------------------------------------------------

@numba.njit(cache=True, fastmath={"reassoc"})
def forward_dots(x, rows, weights_t, logits):
    """``logits[r, c] = x[rows[r]] . weights_t[c]``: 4 classes per pass over a row (then pairs, then
    single classes), each dot product vectorized by LLVM in an order of its choosing."""
    n_features = x.shape[1]
    n_classes = weights_t.shape[0]
    for r in range(rows.shape[0]):
        row = x[rows[r]]
        c = 0
        while c + 4 <= n_classes:
            w0, w1, w2, w3 = weights_t[c], weights_t[c + 1], weights_t[c + 2], weights_t[c + 3]
            a0 = a1 = a2 = a3 = row.dtype.type(0)
            for j in range(n_features):
                v = row[j]
                a0 += v * w0[j]
                a1 += v * w1[j]
                a2 += v * w2[j]
                a3 += v * w3[j]
            logits[r, c], logits[r, c + 1], logits[r, c + 2], logits[r, c + 3] = a0, a1, a2, a3
            c += 4
        while c < n_classes:
            w0 = weights_t[c]
            a0 = row.dtype.type(0)
            for j in range(n_features):
                a0 += row[j] * w0[j]
            logits[r, c] = a0
            c += 1


# -- sparse rows ----------------------------------------------------------------------------------------

@numba.njit(cache=True)
def forward_csr(indptr, indices, values, weights, logits):
    """``logits[s] = sum over the nonzeros (j, v) of row s of v * weights[j]``, in increasing j."""
    n_classes = weights.shape[1]
    for s in range(indptr.shape[0] - 1):
        z = logits[s]
        for c in range(n_classes):
            z[c] = 0.0
        for k in range(indptr[s], indptr[s + 1]):
            v = values[k]
            w = weights[indices[k]]
            for c in range(n_classes):
                z[c] += v * w[c]


# -- the experiments --------------------------------------------------------------------------------------

def _laq_features(settings: dict, data_dir) -> tuple[np.ndarray, str]:
    """The LAQ pipeline's Fashion-MNIST pixels (float64), or random pixels of the same shape and about the
    same share of zeros when the files are missing or the mode is smoke."""
    n_samples, n_features = settings["laq"]
    if n_features == 784:
        try:
            from fedsim.data import load_dataset
            dataset = load_dataset("fashion-mnist", pipeline="laq", data_dir=data_dir)
            return np.ascontiguousarray(dataset.x_train[:n_samples], dtype=np.float64), "Fashion-MNIST"
        except (FileNotFoundError, OSError) as error:
            log(f"products: Fashion-MNIST not found ({error}); random pixels instead")
    rng = np.random.default_rng(0)
    x = rng.random((n_samples, n_features))
    x[rng.random(x.shape) < 0.5] = 0.0
    return x, "random pixels, half zeros"


def _timed(calls: dict, repeats: int) -> dict:
    return {name: timing.median for name, timing in common.time_interleaved(calls, repeats).items()}


def _fixed_order(x, weights, delta, delta_t, repeats: int) -> dict:
    """The fixed-order products against BLAS, validated, then timed; the feature-major copy of ``x`` they
    need lives only while this runs (it is as large as ``x``)."""
    n_samples, n_features = x.shape
    n_classes = weights.shape[1]
    x_t = np.ascontiguousarray(x.T)
    logits_t = np.empty((n_classes, n_samples))
    gradient_t = np.empty((n_classes, n_features))
    forward_feature_major(x_t, weights, logits_t)
    backward_sample_major(x, delta, gradient_t)
    reference_logits, reference_gradient = x @ weights, delta_t @ x
    assert_close("fixed-order forward vs BLAS", logits_t.T, reference_logits, rtol=1e-10,
                 atol=1e-12 * float(np.abs(reference_logits).max()))
    assert_close("fixed-order backward vs BLAS", gradient_t, reference_gradient, rtol=1e-10,
                 atol=1e-12 * float(np.abs(reference_gradient).max()))
    return _timed({
        "BLAS forward x W": lambda: x @ weights,
        "Numba forward, feature-major x": lambda: forward_feature_major(x_t, weights, logits_t),
        "BLAS backward (delta^T x)^T": lambda: delta_t @ x,
        "Numba backward, sample-major x": lambda: backward_sample_major(x, delta, gradient_t),
    }, repeats)


def run(mode: str, threads: int, data_dir=None) -> dict:
    import scipy.sparse

    thread_report = common.apply_threads(threads, torch=False)
    settings = SETTINGS[common.check_mode(mode)]
    repeats, n_classes = settings["repeats"], settings["classes"]
    rng = np.random.default_rng(1)
    results = {"suite": "products", "mode": mode, "machine": common.machine_info(thread_report)}

    x, source = _laq_features(settings, data_dir)
    n_samples, n_features = x.shape
    results["laq_data"] = {"source": source, "samples": n_samples, "features": n_features,
                           "zero_share": float(np.mean(x == 0))}
    weights = rng.standard_normal((n_features, n_classes)) * 0.01
    delta = rng.standard_normal((n_samples, n_classes))
    delta_t = np.ascontiguousarray(delta.T)

    log("products: columns")
    by_columns = {}
    for columns in (8, 10, 16):
        w = rng.standard_normal((n_features, columns)) * 0.01
        by_columns[f"x W, {columns} columns"] = (lambda w=w: x @ w)
    results["columns"] = _timed(by_columns, repeats)

    log("products: fixed order (LAQ shapes, float64)")
    results["fixed_order"] = _fixed_order(x, weights, delta, delta_t, repeats)
    reference_logits = x @ weights

    log("products: reassociated dot products")
    all_rows = np.arange(n_samples)
    weights_t = np.ascontiguousarray(weights.T)
    logits = np.empty((n_samples, n_classes))
    forward_dots(x, all_rows, weights_t, logits)
    assert_close("reassociated forward vs BLAS (LAQ)", logits, reference_logits, rtol=1e-10,
                 atol=1e-12 * float(np.abs(reference_logits).max()))
    laq_dots = {"BLAS forward x W": lambda: x @ weights,
                "Numba forward, reassociated dots": lambda: forward_dots(x, all_rows, weights_t, logits)}

    n_clients, batch, stc_features, stc_samples = settings["stc"]
    x_stc = rng.standard_normal((stc_samples, stc_features)).astype(np.float32)
    w_stc = (rng.standard_normal((stc_features, n_classes)) * 0.01).astype(np.float32)
    w_stc_t = np.ascontiguousarray(w_stc.T)
    stacked = np.broadcast_to(w_stc, (n_clients, stc_features, n_classes))
    rows = rng.integers(0, stc_samples, size=(n_clients, batch))
    flat_rows = rows.reshape(-1)
    stc_logits = np.empty((n_clients * batch, n_classes), np.float32)
    forward_dots(x_stc, flat_rows, w_stc_t, stc_logits)
    reference = x_stc[flat_rows] @ w_stc
    assert_close("reassociated forward vs BLAS (STC)", stc_logits, reference, rtol=1e-4,
                 atol=1e-5 * float(np.abs(reference).max()))
    stc_dots = {"BLAS gather + forward": lambda: np.matmul(x_stc[rows], stacked),
                "Numba gather fused into reassociated dots": lambda: forward_dots(x_stc, flat_rows, w_stc_t,
                                                                                  stc_logits)}
    results["reassociated"] = {"laq": _timed(laq_dots, repeats), "stc": _timed(stc_dots, repeats)}

    log("products: STC client blocks")
    stc_delta = rng.standard_normal((n_clients, batch, n_classes)).astype(np.float32)
    gradients = np.empty((n_clients, stc_features, n_classes), np.float32)
    buffer = np.empty((batch, stc_features), np.float32)

    def batched():
        x_batches = x_stc[rows]
        np.matmul(x_batches, stacked)
        np.matmul(np.swapaxes(x_batches, 1, 2), stc_delta, out=gradients)

    def client_by_client():
        for client in range(n_clients):
            np.take(x_stc, rows[client], axis=0, out=buffer)
            buffer @ w_stc
            np.matmul(buffer.T, stc_delta[client], out=gradients[client])

    batched()
    expected = gradients.copy()
    client_by_client()
    assert_close("client-by-client gradients vs batched", gradients, expected, rtol=1e-4,
                 atol=1e-5 * float(np.abs(expected).max()))
    results["client_blocks"] = _timed({"batched (as fedsim runs it)": batched,
                                       "client by client, cache-resident batch": client_by_client}, repeats)

    log("products: sparse rows")
    csr = scipy.sparse.csr_matrix(x)
    indptr, indices = csr.indptr.astype(np.int64), csr.indices.astype(np.int64)
    forward_csr(indptr, indices, csr.data, weights, logits)
    assert_close("CSR forward vs BLAS", logits, reference_logits, rtol=1e-10,
                 atol=1e-12 * float(np.abs(reference_logits).max()))
    results["sparse"] = _timed({"BLAS forward x W (dense)": lambda: x @ weights,
                                "Numba CSR forward": lambda: forward_csr(indptr, indices, csr.data, weights,
                                                                         logits),
                                "scipy.sparse CSR forward": lambda: csr @ weights}, repeats)
    return results


def main(argv=None) -> None:
    common.suite_main(__doc__, run, argv)


if __name__ == "__main__":
    main()
