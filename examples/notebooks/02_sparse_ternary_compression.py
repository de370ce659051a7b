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
# # 2. Sparse Ternary Compression
#
# **Goal.** Sparse Ternary Compression (STC; Sattler, Wiedemann, Mueller, Samek, arXiv 1903.02891) shrinks
# each model update a client sends by three tricks stacked on each other: keep only the k largest entries
# (top-k), replace their values by one shared magnitude and a sign (ternarization), and carry what was
# dropped over to the next round (error accumulation); the positions are then written with a
# Golomb-Rice code. This notebook builds STC up one step at a time with fedsim's own kernels and
# compressors, counts the bits against the paper's formula, and ends with small federated runs: accuracy
# against bits for FedAvg, signSGD, top-k and STC, IID against non-IID clients, and why compressing the
# server's broadcast matters as much as the clients' uploads. Small sizes run in about half a minute;
# `FULL = True` runs the seed experiment's scale (50 clients, 300 rounds, p = 1/1000 up, 1/500 down).

# %%
import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

from fedsim.algorithms.federated import FederatedRun
from fedsim.compress import ErrorFeedback, expected_position_bits, make_compressor, stc_bits_per_entry
from fedsim.config import load_preset
from fedsim.data import load_dataset
from fedsim.experiment_data import split_among_clients
from fedsim.kernels import golomb, selection
from fedsim.kernels import ternary as ternary_kernels
from fedsim.models import SoftmaxRegression

FULL = False                                          # True: the seed experiment's scale (minutes)
FIGURES = os.environ.get("FEDSIM_NOTEBOOK_FIGURES")   # a folder: save this notebook's README figure there
threadpool_limits(1)                                  # one BLAS thread: small products, repeatable timings
rng = np.random.default_rng(0)

# %% [markdown]
# ## An update to compress
#
# The data and model of the STC experiment: Fashion-MNIST resized to 32 x 32 and normalized (1024
# features), softmax regression with $W$ (1024 x 10) and $b$ (10), 10,250 parameters in one flat vector.
# A client that takes one SGD step from the server's model $\theta$ sends the update
# $\Delta = -\eta \nabla L_{\text{batch}}(\theta)$ with $\eta = 0.04$ and a batch of 100 images. Here
# $\theta$ is a model part-way through training (30 plain SGD steps from zero).

# %%
data = load_dataset("fashion-mnist", pipeline="stc")
model = SoftmaxRegression(data.n_features, data.n_classes)
lr = 0.04


def client_update(theta, rows):
    """One SGD step's update -lr * grad on the training rows ``rows`` (float32, as in the runs)."""
    _, grad = model.loss_and_grad(theta, data.x_train[rows], data.y_train[rows])
    return -lr * grad


theta = model.init()
for step in range(30):
    theta += client_update(theta, np.arange(step * 100, (step + 1) * 100))
update = client_update(theta, np.arange(3000, 3100))
x = model.spec.view(update, "W").ravel()               # the W tensor: N = 10,240 entries
print(f"N = {x.size} entries, |x| from {np.abs(x).min():.2e} to {np.abs(x).max():.2e}")

# %% [markdown]
# ## Step 1: top-k
#
# With sparsity $p$, keep the $k = \lceil pN \rceil$ entries of largest magnitude and drop the rest:
#
# $$v = \text{the } k\text{-th largest } |x_i|, \qquad
#   \operatorname{top}_k(x)_i = \begin{cases} x_i & |x_i| \ge v \\ 0 & \text{otherwise.} \end{cases}$$
#
# `selection._top_k_threshold` returns $v$, the mean kept magnitude $\mu$ and the count;
# `selection._top_k_sparsify` writes the kept positions and values into arrays we give it (fedsim's
# kernels never allocate in the hot path). Both are private: the compressors call them through the
# batched `sparse_compress_batch` of `fedsim.kernels.sparsify`; here we call them on one vector to look inside.

# %%
p = 0.01
k = math.ceil(p * x.size)
v, mu, count = selection._top_k_threshold(x, k)
positions, values = np.empty(k, np.int64), np.empty(k, x.dtype)
count = selection._top_k_sparsify(x, k, positions, values)
kept_energy = np.sum(values.astype(float) ** 2) / np.sum(x.astype(float) ** 2)
print(f"k = {k}: threshold v = {v:.3e}, {count} entries kept, {kept_energy:.1%} of ||x||^2")

# %%
mask = np.zeros(x.size)
mask[positions] = 1
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 2.6), width_ratios=[1, 3])
left.loglog(np.arange(1, x.size + 1), np.sort(np.abs(x))[::-1])
left.axvline(k, color="tab:red", ls="--", label=f"k = {k}")
left.axhline(v, color="tab:gray", ls=":", label="threshold v")
left.set_xlabel("rank")
left.set_ylabel("|x_i|, sorted")
left.legend(fontsize=8)
right.imshow(mask.reshape(32, 32, 10).transpose(0, 2, 1).reshape(32, 320), cmap="Greys")
for edge in range(32, 320, 32):
    right.axvline(edge - 0.5, color="tab:gray", lw=0.5)
right.set_title("kept positions of W (black): one 32 x 32 tile per class")
right.set_xticks([])
right.set_yticks([]);

# %% [markdown]
# ## Step 2: ternarization
#
# Top-k still sends a 32-bit value for every kept entry. STC sends one magnitude for them all, the mean
# $\mu$ of the kept magnitudes, and one sign bit each:
#
# $$\operatorname{STC}(x)_i = \begin{cases} \mu \operatorname{sign}(x_i) & |x_i| \ge v \\
#   0 & \text{otherwise,} \end{cases} \qquad \mu = \frac1k \sum_{|x_i| \ge v} |x_i| .$$
#
# `ternary._ternarize` (private too: one vector of the batched STC) returns the kept positions (the same
# as top-k's), their signs and $\mu$.

# %%
signs = np.empty(k, np.int8)
count, mu = ternary_kernels._ternarize(x, k, positions, signs)
ternary = np.zeros_like(x)
ternary[positions] = mu * signs
top_k = np.zeros_like(x)
top_k[positions] = values
for name, sent in (("top-k", top_k), ("STC", ternary)):
    print(f"{name:5}: ||x - sent||^2 / ||x||^2 = {np.sum((x - sent) ** 2) / np.sum(x ** 2):.3f}")

# %%
order = np.argsort(values)
fig, ax = plt.subplots(figsize=(8, 2.6))
ax.plot(values[order], ".", label="top-k: the exact values")
ax.plot((mu * signs)[order], "-", label=f"STC: +-mu, mu = {mu:.2e}")
ax.set_xlabel("kept entry (sorted by value)")
ax.set_ylabel("value sent")
ax.legend();

# %% [markdown]
# The compressors wrap these kernels for whole parameter vectors: `make_compressor("stc", p=...)` works
# per tensor by default ($W$ and $b$ each get their own $k$ and $\mu$), over many clients' rows at once,
# and reports each message's real encoded size beside the paper's estimate:

# %%
for name in ("topk", "stc"):
    compressor = make_compressor(name, p=p)
    compressed, _ = compressor.compress(update, compressor.init(model.spec))
    print(f"{name:4}: {int(compressed.encoded_bits[0]):6d} bits encoded, "
          f"{compressed.analytic_bits[0]:8.1f} estimated; dense: {32 * model.size} bits")

# %% [markdown]
# ## Step 3: error accumulation
#
# What a client does not send is not thrown away. It keeps a residual $A$ and adds it to its next update:
#
# $$A \leftarrow A + \Delta, \qquad m = \operatorname{STC}(A), \qquad A \leftarrow A - m .$$
#
# `ErrorFeedback` wraps any compressor with exactly these three lines. Below, one client trains alone
# for 60 rounds, each round one SGD step whose update goes through STC, with and without the residual.

# %%
def train_alone(compressor, rounds=60):
    """One client, one SGD step per round, every update compressed; returns the run's record."""
    state = compressor.init(model.spec)
    theta = model.init()
    accuracy, residuals = [], {}
    for t in range(1, rounds + 1):
        rows = np.arange((t - 1) * 100, t * 100)             # the next batch of the training set
        compressed, state = compressor.compress(client_update(theta, rows), state)
        theta += compressed.decoded[0]
        accuracy.append(float(model.accuracy(theta, data.x_test, data.y_test)))
        if isinstance(compressor, ErrorFeedback):
            residuals[t] = model.spec.view(state.residual, "W").copy()
    return {"accuracy": accuracy, "residuals": residuals, "theta": theta, "last": compressed}


stc = make_compressor("stc", p=p)
with_residual, without_residual = train_alone(ErrorFeedback(stc)), train_alone(stc)
print(f"test accuracy after 60 rounds: {with_residual['accuracy'][-1]:.3f} with the residual, "
      f"{without_residual['accuracy'][-1]:.3f} without")

# %% [markdown]
# What the residual holds: for one class (trousers), the column of $A$ over rounds. Pixels whose
# gradient keeps the same sign pile up round after round until they cross the threshold, are sent, and
# drop back towards zero; the picture is the part of the trouser template that has not been sent yet.

# %%
TROUSER, shown = 1, (1, 2, 5, 10, 20, 40, 60)
fig, axes = plt.subplots(1, len(shown) + 1, figsize=(12, 2))
limit = max(np.abs(with_residual["residuals"][t][:, TROUSER]).max() for t in shown)
for ax, t in zip(axes, shown):
    ax.imshow(with_residual["residuals"][t][:, TROUSER].reshape(32, 32), cmap="RdBu_r",
              vmin=-limit, vmax=limit)
    ax.set_title(f"A after round {t}", fontsize=8)
    ax.axis("off")
weights = model.spec.view(with_residual["theta"], "W")[:, TROUSER]
axes[-1].imshow(weights.reshape(32, 32), cmap="RdBu_r")
axes[-1].set_title("W (sent so far)", fontsize=8)
axes[-1].axis("off");

# %%
fig, ax = plt.subplots(figsize=(6, 2.6))
ax.plot(with_residual["accuracy"], label="STC with error accumulation")
ax.plot(without_residual["accuracy"], label="STC, residual dropped")
ax.set_xlabel("round")
ax.set_ylabel("test accuracy")
ax.legend();

# %% [markdown]
# ## Step 4: Golomb-Rice coding of the positions
#
# A message must also say *where* its k entries are. Sorted positions $s_1 < s_2 < \dots$ become gaps
# $g_1 = s_1 + 1$, $g_j = s_j - s_{j-1} \ge 1$. With a parameter $b$, each gap is written as
#
# $$g - 1 = q\,2^b + r, \quad 0 \le r < 2^b: \qquad
#   q \text{ ones, a zero, then } r \text{ in } b \text{ bits} \quad (q + 1 + b \text{ bits}).$$
#
# If the kept positions were spread at random with density $q' = k / N$, the gaps would be geometric, and
# the paper's best parameter and its expected bits per position are
#
# $$b^* = 1 + \left\lfloor \log_2 \frac{\ln(\varphi - 1)}{\ln(1 - q')} \right\rfloor, \qquad
# E(q') = b^* + \frac{1}{1 - (1 - q')^{2^{b^*}}}, \qquad \varphi = \tfrac{1 + \sqrt5}{2} .$$
#
# Here are the positions of the $W$ part of the last message of the run above, really encoded:

# %%
message = with_residual["last"].message(0)              # a TernaryMessage
local = message.local_positions()[0]                    # its positions inside W
N = model.spec.sizes[0]
rice = golomb.rice_parameter(len(local), N)             # b*
stream, n_bits = golomb.golomb_rice_encode(local, rice)
assert np.array_equal(golomb.golomb_rice_decode(stream, n_bits, len(local), rice), local)
print(f"{len(local)} positions of N = {N}: b* = {rice}, {n_bits} bits, {n_bits / len(local):.2f} per "
      f"position (the formula E: {expected_position_bits(len(local) / N):.2f}; an index: {math.log2(N):.1f})")
print(f"the whole message: {message.encoded_bits()} bits encoded, {message.analytic_bits():.1f} estimated")

# %% [markdown]
# The first gaps, their $q$ and $r$, and the bits of the real stream they occupy:

# %%
bits = np.unpackbits(stream)
offset = 0
for gap in np.diff(local, prepend=-1)[:6]:
    q, r = divmod(int(gap) - 1, 2 ** rice)
    code = "".join(map(str, bits[offset:offset + q + 1 + rice]))
    print(f"gap {gap:4d}: q = {q}, r = {r:3d}  ->  {code[:q] or '(no ones)'} {code[q]} {code[q + 1:]}")
    offset += q + 1 + rice

# %% [markdown]
# $W$ is stored row-major, (pixel, class), so one class in neighbouring pixels is 10 positions apart: real
# gaps are not geometric, and the encoded size can miss the formula either way. On positions drawn at
# random, where the formula's assumption holds, it is exact on average, at every density. The paper's
# check values, with the sign bit, are 7.085, 9.108 and 11.114 bits per entry at p = 1/25, 1/100 and
# 1/400; fedsim's `stc_bits_per_entry` gives:

# %%
print(np.round(stc_bits_per_entry(np.array([1 / 25, 1 / 100, 1 / 400])), 3))
size, densities = 100_000, np.logspace(-4, -0.5, 15)
encoded = []
for density in densities:
    drawn = np.sort(rng.choice(size, size=math.ceil(density * size), replace=False))
    encoded.append(golomb.golomb_rice_bits(drawn, golomb.rice_parameter(len(drawn), size)) / len(drawn))

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.semilogx(densities, encoded, "o", label="encoded (random positions)")
ax.semilogx(densities, expected_position_bits(densities), "-", label="the paper's E(q')")
ax.axhline(math.log2(size), color="tab:gray", ls=":", label="a plain index, log2 N")
ax.set_xlabel("density q' = k / N")
ax.set_ylabel("bits per position")
ax.legend(fontsize=8);

# %% [markdown]
# ## Step 5: federated runs, accuracy against bits
#
# Now all of it inside federated learning (`FederatedRun`; the round is written out in its docstring).
# The settings come from the `stc-mnist` preset (what `fedsim run --preset stc-mnist` runs) with
# overrides: Fashion-MNIST, and at the small size 20 clients, 60 rounds and p = 1/100 both ways. Five
# methods, each with its own compressor up and down:
#
# | method | upstream | downstream |
# |---|---|---|
# | `fedavg` | the dense update (32 bits per entry) | the dense model update |
# | `signsgd` | one sign per entry, majority vote | the dense update |
# | `topk_updown` | top-k with residuals | top-k with a server residual |
# | `stc_up` | STC with residuals | the dense update |
# | `stc_updown` | STC with residuals | STC with a server residual |
#
# signSGD's server step is $\eta \operatorname{sign}(\sum_k \operatorname{sign}(\Delta_k))$: every
# coordinate moves by a full $\eta$ each round, so it gets a smaller step than the averaging methods.

# %%
SCALE = (["federated.rounds=300", "federated.eval_every=10"] if FULL else
         ["federated.n_clients=20", "federated.rounds=60", "federated.eval_every=5",
          "federated.p_up=0.01", "federated.p_down=0.01", "federated.eval_train_samples=1000"])
METHODS = {"fedavg": 0.04, "signsgd": 0.001, "topk_updown": 0.04, "stc_up": 0.04, "stc_updown": 0.04}


def federated(method, classes_per_client):
    """Run ``method`` to the end; return its records (one per round)."""
    config = load_preset("stc-mnist", ["data.dataset=fashion-mnist", *SCALE, f"federated.method={method}",
                                       f"federated.lr={METHODS[method]}",
                                       f"data.classes_per_client={classes_per_client}"])
    clients = split_among_clients(config.data, data, config.n_clients, seed=config.seed)
    return FederatedRun(config.federated, data, clients, seed=config.seed).run()


iid = {method: federated(method, 10) for method in METHODS}

# %%
def curve(history, key="bits_up"):
    """Cumulative bits and test accuracy at the rounds that were evaluated."""
    total = np.cumsum([record[key] for record in history])
    evaluated = [i for i, record in enumerate(history) if "test_accuracy" in record]
    return total[evaluated], [history[i]["test_accuracy"] for i in evaluated]


fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.2), sharey=True)
for method, history in iid.items():
    rounds = [r["round"] for r in history if "test_accuracy" in r]
    left.plot(rounds, curve(history)[1], label=method)
    right.semilogx(*curve(history), "o-", ms=3, label=method)
left.set_xlabel("round")
left.set_ylabel("test accuracy")
right.set_xlabel("bits sent upstream by all clients")
right.legend(fontsize=8)
fig.suptitle("Fashion-MNIST, clients with all 10 classes")
if FIGURES:
    fig.savefig(Path(FIGURES) / "02_stc_accuracy_vs_bits.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# Per round, the methods whose server broadcast is dense (FedAvg, signSGD, `stc_up`) learn fastest; per
# bit sent upstream, STC is orders of magnitude ahead of FedAvg, and about four times ahead of top-k,
# which sends a 32-bit value where STC sends one sign bit.

# %% [markdown]
# ## Step 6: IID against non-IID clients
#
# Above, every client held all ten classes in equal shares. Real clients do not: a phone's photos are
# not a uniform sample of the world. The STC paper's partitioner (`classes_per_client`) gives each client
# only a few classes. The same five methods with **two classes per client**:

# %%
non_iid = {method: federated(method, 2) for method in METHODS}
final = {name: [runs[m][-1]["test_accuracy"] for m in METHODS] for name, runs in
         (("10 classes per client", iid), ("2 classes per client", non_iid))}
for method, before, after in zip(METHODS, *final.values()):
    print(f"{method:12} {before:.3f} -> {after:.3f}  ({after - before:+.3f})")

# %%
fig, ax = plt.subplots(figsize=(7, 2.8))
for i, (name, accuracies) in enumerate(final.items()):
    ax.bar(np.arange(len(METHODS)) + 0.4 * i - 0.2, accuracies, width=0.4, label=name)
ax.set_xticks(range(len(METHODS)), METHODS)
ax.set_ylabel("final test accuracy")
ax.set_ylim(0, 1)
ax.legend(fontsize=8);

# %% [markdown]
# Read the numbers before the story. On this convex model with one local step per round, FedAvg is
# plain large-batch SGD and hardly notices the split. In the small run, STC on the uplink alone loses
# little too, while the methods that also compress the broadcast (top-k and STC up and down) and signSGD
# lose far more: each client's update points towards its own two classes, and what survives compression
# is a poorer summary of the mix. The STC paper's robustness results are for neural networks and many
# local iterations, where FedAvg's clients drift apart; that is not what this run tests.

# %% [markdown]
# ## Step 7: why the downstream matters too
#
# After aggregating, the server sends the update of the global model back to every participant. With
# `stc_up` only the uploads are compressed: the broadcast is the dense 32-bit update, to each of the
# clients, every round, and it swamps everything the clients saved.

# %%
fig, ax = plt.subplots(figsize=(7, 2.8))
totals = {m: [sum(r[key] for r in iid[m]) for key in ("bits_up", "bits_down")] for m in METHODS}
for i, direction in enumerate(("upstream", "downstream")):
    ax.bar(np.arange(len(METHODS)) + 0.4 * i - 0.2, [t[i] for t in totals.values()], width=0.4,
           label=direction)
ax.set_xticks(range(len(METHODS)), METHODS)
ax.set_yscale("log")
ax.set_ylabel("total bits of the run")
ax.legend(fontsize=8);

# %% [markdown]
# `stc_up` sends as little upstream as `stc_updown` but as much downstream as FedAvg; only compressing
# both directions (with a residual on the server as well) makes the whole exchange small.
