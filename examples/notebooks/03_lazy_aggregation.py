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
# # 3. Lazy aggregation: GD, LAG-WK and LAQ
#
# **Goal.** In distributed gradient descent every worker uploads its gradient at every iteration. Lazy
# aggregation (LAG: Chen, Giannakis, Sun, Yin, arXiv 1805.09965) lets a worker skip the upload when its
# gradient has changed little since the last one it sent, and the server reuses the old one; LAQ (Sun,
# Chen, Giannakis, Yang, arXiv 1909.07588) also sends only a b-bit quantization of the change. This
# notebook runs GD, LAG-WK and LAQ on the LAQ paper's MNIST problem, draws when each worker uploads,
# follows the two sides of the skip rule over time, looks at the quantizer's grid for b = 2, 4 and 8, and
# plots the loss residual against uploads and bits. The small size (1,000 images, 2,500 iterations) runs
# in about 20 seconds; `FULL = True` runs the reference experiment (10,000 images, 4,000 iterations).

# %%
import dataclasses
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from fedsim.algorithms.lazy import (LAQ_ERROR_FACTOR, LazyRun, history_threshold, laq_upload_decision,
                                    records_reach, records_to_arrays, smallest_objective, smoothness_bounds,
                                    stack_shards)
from fedsim.config import load_preset
from fedsim.data import load_dataset
from fedsim.data.partition import contiguous
from fedsim.kernels.laq import quantize_innovation
from fedsim.models import SoftmaxRegression

FULL = False                                          # True: the reference experiment's size (minutes)
FIGURES = os.environ.get("FEDSIM_NOTEBOOK_FIGURES")   # a folder: save this notebook's README figure there
threadpool_limits(1)                                  # one BLAS thread: small products, repeatable timings

# %% [markdown]
# ## The problem
#
# $M = 10$ workers; worker $m$ holds a contiguous shard of the data and the objective
# $f_m(\theta)$ = mean cross-entropy of softmax regression on its shard $+ \frac{\lambda}{2}\|\theta\|^2$
# ($\lambda = 0.01$, 784 pixels / 255, 7,850 parameters). The server minimizes $f = \sum_m f_m$ by
#
# $$\theta^{k+1} = \theta^k - \alpha \sum_m Q_m, \qquad \alpha = 0.02,$$
#
# where $Q_m$ is the **last thing worker $m$ uploaded**. The settings are the `laq-mnist` preset's. The
# MNIST training images are not always at hand, so, like the LAQ example script, this trains on the
# 10,000-image test split (the "accuracy" below is therefore a training accuracy).

# %%
data = load_dataset("mnist", pipeline="laq", train_split="test")
preset = load_preset("laq-mnist", ["data.train_split=test"]).lazy
SAMPLES, ITERATIONS, TOLERANCE = (10_000, 4000, 1e-6) if FULL else (1_000, 2500, 1e-5)
config = dataclasses.replace(preset, iterations=ITERATIONS, eval_every=ITERATIONS)
workers = contiguous(SAMPLES, config.n_workers)          # worker m: samples [m N / M, (m + 1) N / M)
M = config.n_workers
print(config)

# %% [markdown]
# Two numbers to know before running: the step size against the curvature (GD converges for
# $\alpha < 2 / L_f$ with $L_f$ the smoothness of $f$; `smoothness_bounds` gives a worst-case bound, the
# curvature along the path is usually much smaller), and the optimum $f^* = \min f$, found here with
# SciPy's L-BFGS on fedsim's own loss and gradient, for the residuals $f(\theta^k) - f^*$.

# %%
shards = stack_shards(data.x_train, data.y_train, workers)
per_worker, L_f = smoothness_bounds(shards, config.l2)
print(f"alpha = {config.step_size}, 2 / L_f = {2 / L_f:.4f} (a worst-case bound)")
model = SoftmaxRegression(data.n_features, data.n_classes, config.l2)


def objective_and_gradient(theta):
    loss, gradients = model.loss_and_grad(theta, shards.x, shards.y, shards.weights)
    return float(loss.sum()), gradients.sum(axis=0)


best = minimize(objective_and_gradient, np.zeros(model.size), jac=True, method="L-BFGS-B",
                options={"maxiter": 5000, "maxcor": 30, "ftol": 0.0, "gtol": 1e-10})
print(f"L-BFGS: f* = {best.fun:.10f} after {best.nit} iterations")

# %% [markdown]
# ## GD and LAG-WK
#
# GD: every worker uploads $g_m = \nabla f_m(\theta^k)$ at every iteration. LAG-WK: worker $m$ uploads
# only if its gradient moved enough since its last upload $Q_m$,
#
# $$\|g_m - Q_m\|^2 \ \ge\
#   H^k = \frac{1}{\alpha^2 M^2} \sum_{d=1}^{D} \xi_d \|\theta^{k+1-d} - \theta^{k-d}\|^2 ,$$
#
# a threshold that shrinks with the server's recent steps ($D = 10$, $\xi_d = 0.8 / \min(k, D)$: before
# iteration $D$ the weight is spread over the $k$ differences that exist), or after $C = 100$ skips in a row.
# Both are one `LazyRun(...).run()`, which returns the run's records: one dict per iteration, as a run
# folder's history.jsonl holds them. `records_to_arrays` turns them into arrays.

# %%
records = {method: LazyRun(dataclasses.replace(config, method=method), data, workers).run()
           for method in ("gd", "lag-wk")}
histories = {method: records_to_arrays(history, M) for method, history in records.items()}
for method, history in histories.items():
    print(f"{method:6}: {history['communications'][-1]:6d} uploads in {len(records[method])} iterations")

# %% [markdown]
# ## LAQ, and the two sides of its rule
#
# LAQ uploads the quantized innovation $Q = \operatorname{quantize}_b(g_m \mid Q_m)$ (next section) and
# skips when the change it would send is small against the threshold plus the quantization errors,
# $e_m = \|Q - g_m\|^2$ now and $\hat e_m$ at the last upload:
#
# $$\text{upload if}\quad \underbrace{\|Q - Q_m\|^2}_{\text{left}} \ \ge\
#   \underbrace{H^k + 3 (e_m + \hat e_m)}_{\text{right}} .$$
#
# `LazyRun` applies the rule inside `step()`; to watch it, we recompute both sides before each step with
# the same public functions (`quantize_innovation`, `history_threshold`, `laq_upload_decision`), from the
# run's state, and check that the decision matches the run's.

# %%
laq = LazyRun(dataclasses.replace(config, method="laq"), data, workers)
left, right = np.zeros((ITERATIONS, M)), np.zeros((ITERATIONS, M))
for k in range(ITERATIONS):
    _, gradients = model.loss_and_grad(laq.theta, shards.x, shards.y, shards.weights)
    would_send = quantize_innovation(gradients, laq.uploaded, config.bits)
    threshold = history_threshold(laq.step_history, k, config.history_weight, config.step_size, M)
    left[k] = would_send.innovation
    right[k] = threshold + LAQ_ERROR_FACTOR * (would_send.error + laq.error_at_upload)
    decision = laq_upload_decision(would_send.innovation, threshold, would_send.error,
                                   laq.error_at_upload, laq.skips, config.max_skips)
    assert np.flatnonzero(decision).tolist() == laq.step()["uploads"], k
records["laq"] = laq.history
histories["laq"] = records_to_arrays(laq.history, M)
forced = histories["laq"]["uploads"] & (left < right)      # uploaded although the rule said skip
print(f"laq   : {histories['laq']['communications'][-1]:6d} uploads ({forced.sum()} forced by the clock); "
      f"every decision matched the run's")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3), sharey=True)
for ax, m in zip(axes, (0, 7)):
    ax.semilogy(left[:, m], lw=0.8, label="left: ||Q - Q_m||^2")
    ax.semilogy(right[:, m], lw=0.8, label="right: H^k + 3 (e + e_hat)")
    sent = np.flatnonzero(histories["laq"]["uploads"][:, m])
    ax.semilogy(sent, left[sent, m], "k.", ms=4, label="upload")
    ax.set_title(f"worker {m}: {len(sent)} uploads")
    ax.set_xlabel("iteration k")
axes[0].legend(fontsize=8);

# %% [markdown]
# Both sides shrink together as the iterates settle. Most of the time the left side stays below the
# right one and the worker skips; it uploads when its innovation has grown back up to the threshold,
# or when the staleness clock forces it ($C = 100$ skips in a row; the count is printed above).

# %% [markdown]
# ## When each worker uploads
#
# One row per worker, one column per iteration, a dark mark for each upload:

# %%
fig, axes = plt.subplots(3, 1, figsize=(11, 3.6), sharex=True)
for ax, (method, history) in zip(axes, histories.items()):
    ax.imshow(history["uploads"].T, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_ylabel(method, rotation=0, ha="right", va="center")
    ax.set_yticks([])
axes[-1].set_xlabel("iteration k");

# %% [markdown]
# ## The quantizer's grid
#
# LAQ quantizes the innovation $g - Q_{\text{prev}}$ on a uniform grid of $2^b$ points spanning
# $[-R, R]$, $R = \max_i |g_i - Q_{\text{prev}, i}|$, so only the $b$-bit codes and $R$ are sent
# ($bP + 32$ bits instead of $32P$):
#
# $$\tau = \frac{1}{2^b - 1}, \quad
#   q_i = \left\lfloor \frac{g_i - Q_{\text{prev},i} + R}{2\tau R} + \frac12 \right\rfloor
#   \in \{0, \dots, 2^b - 1\},
#   \quad Q = Q_{\text{prev}} + 2\tau R\, q - R .$$
#
# Each entry lands within $\tau R$ of the truth, so the error $e = \|Q - g\|^2 \le P\,\tau^2 R^2$. Here is
# worker 0's first gradient (relative to $Q_{\text{prev}} = 0$) on 30 entries, quantized with
# `quantize_innovation` at $b = 2, 4, 8$:

# %%
_, first_gradients = model.loss_and_grad(np.zeros(model.size), shards.x, shards.y, shards.weights)
previous = np.zeros_like(first_gradients)
entries = np.arange(4000, 4030)                         # W rows of pixels near the image centre
fig, axes = plt.subplots(1, 3, figsize=(12, 2.8), sharey=True)
for ax, bits in zip(axes, (2, 4, 8)):
    quantized = quantize_innovation(first_gradients, previous, bits)
    radius = quantized.radius[0]
    for level in -radius + 2 * radius / (2 ** bits - 1) * np.arange(2 ** bits):
        ax.axhline(level, color="tab:gray", lw=0.3)
    ax.plot(first_gradients[0, entries], "o", ms=4, label="g - Q_prev")
    ax.plot(quantized.quantized[0, entries], "x", label="Q - Q_prev")
    ax.set_title(f"b = {bits}: {2 ** bits} levels, e = {quantized.error[0]:.1e}")
    ax.set_xlabel("entry")
axes[0].legend(fontsize=8);

# %% [markdown]
# The grid spans the largest entry, so most entries use only the middle levels. The error left against
# the bound, for every $b$ from 1 to 12:

# %%
all_bits = np.arange(1, 13)
errors = [quantize_innovation(first_gradients, previous, bits).error[0] for bits in all_bits]
bound = [model.size * (quantize_innovation(first_gradients, previous, bits).radius[0] / (2 ** bits - 1)) ** 2
         for bits in all_bits]
fig, ax = plt.subplots(figsize=(5.5, 3))
ax.semilogy(all_bits, errors, "o-", label="e = ||Q - g||^2")
ax.semilogy(all_bits, bound, "--", label="bound P (tau R)^2")
ax.set_xlabel("bits b")
ax.set_ylabel("quantization error")
ax.legend(fontsize=8);

# %% [markdown]
# Each extra bit halves $\tau$ and so divides the error by about 4.
#
# ## Loss residual against iterations, uploads and bits
#
# $f^*$ is the smaller of L-BFGS's value and the best objective of the three runs. An upload costs
# $32P$ bits for GD and LAG-WK and $bP + 32$ for LAQ (the codes and $R$).

# %%
f_star = min(best.fun, smallest_objective(records.values()))
fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), sharey=True)
for method, history in histories.items():
    residual = np.maximum(history["objective"] - f_star, 1e-16)
    axes[0].semilogy(residual, label=method)
    axes[1].loglog(np.maximum(history["communications_before"], 1), residual, label=method)
    axes[2].loglog(np.maximum(history["bits_before"], 1), residual, label=method)
for ax, label in zip(axes, ("iterations", "uploads (all workers)", "bits uploaded")):
    ax.axhline(TOLERANCE, color="tab:gray", ls=":")
    ax.set_xlabel(label)
axes[0].set_ylabel("f - f*")
axes[0].legend()
if FIGURES:
    fig.savefig(Path(FIGURES) / "03_lazy_residual.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# The cost of reaching the tolerance (dotted line), the savings against GD, and the accuracy of the final
# model on the 10,000 images (at the small size, the first 1,000 of them are the training data):

# %%
gd = records_reach(records["gd"], f_star, TOLERANCE)
print(f"to reach f - f* <= {TOLERANCE:g}:")
for method, history in histories.items():
    point = records_reach(records[method], f_star, TOLERANCE)
    if point is None or gd is None:
        print(f"{method:6}: not reached (final residual {history['objective'][-1] - f_star:.2e})")
        continue
    print(f"{method:6}: {point['iteration']:5d} iterations, {point['communications']:6d} uploads "
          f"({gd['communications'] / point['communications']:5.1f}x fewer), {point['bits']:14,d} bits "
          f"({gd['bits'] / point['bits']:6.1f}x fewer); accuracy {history['test_accuracy'][-1]:.3f}")

# %% [markdown]
# **What to take away.** Skipping saves most uploads at little or no cost in iterations: here LAG-WK reaches
# the tolerance in about as many iterations as GD (a few fewer) and LAQ in about 20% more, with a small
# fraction of GD's uploads, and LAQ's 4-bit uploads save another factor of about 8 in bits.
# The rule is cheap to evaluate because every term is a scalar per worker.
