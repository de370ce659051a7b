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
# # 5. Backpropagation by hand
#
# **Goal.** Notebook 1 wrote the gradient of softmax regression in one line. A network with a hidden
# layer needs the chain rule, applied layer by layer from the loss back to the input: backpropagation.
# This notebook takes the two-layer network $x \to W_1, b_1 \to \operatorname{relu} \to W_2, b_2 \to$
# softmax cross-entropy, writes each derivative as an equation and then as the NumPy line that computes
# it on a batch small enough to print, shows that `fedsim.models.MLP` (the model `model.name = "mlp"`
# trains) computes the same numbers, checks them against finite differences, and finally trains a small
# network on Fashion-MNIST and draws what its hidden units look for. It runs in about ten seconds; set
# `FULL = True` to train on all 60,000 training images.

# %%
import inspect
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy.special import softmax
from threadpoolctl import threadpool_limits

from fedsim.data import load_dataset
from fedsim.data.registry import get_dataset
from fedsim.models import MLP, ModelConfig

FULL = False                                          # True: train on all 60,000 training images
FIGURES = os.environ.get("FEDSIM_NOTEBOOK_FIGURES")   # a folder: save this notebook's README figure there
threadpool_limits(1)                                  # one BLAS thread: small products, repeatable timings
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)

# %% [markdown]
# ## The data and the network
#
# The images as in notebook 1: Fashion-MNIST through the `"laq"` pipeline, each 28 x 28 image one row
# of $F = 784$ features in $[0, 1]$, labels $0..9$.

# %%
data = load_dataset("fashion-mnist", pipeline="laq")
CLASSES = get_dataset("fashion-mnist").class_names
print(data.description)
print("train", data.x_train.shape, "| test", data.x_test.shape)

# %% [markdown]
# For a batch $X$ of $n$ images ($n \times F$), a hidden layer of $H$ units and $C = 10$ classes, the
# forward pass is four lines:
#
# $$Z_1 = X W_1 + b_1, \qquad A = \operatorname{relu}(Z_1) = \max(Z_1, 0), \qquad Z_2 = A W_2 + b_2,
# \qquad P = \operatorname{softmax}(Z_2),$$
#
# with $W_1$ of shape $F \times H$, $W_2$ of shape $H \times C$, and the loss the mean cross-entropy
# $L = -\frac1n \sum_i \log P_{i, y_i}$. fedsim builds the network from the registry, as a run does from
# its `[model]` table, and keeps all parameters in one flat vector $\theta = [W_1, b_1, W_2, b_2]$
# (each weight matrix row-major); `model.spec.view` returns views into $\theta$. To print every matrix
# we start with $H = 4$ hidden units and a batch of $n = 3$ images.

# %%
tiny = ModelConfig(name="mlp", hidden=(4,)).build(data.n_features, data.n_classes)
theta = tiny.init(rng, kind="glorot", dtype=np.float64)      # W ~ U(-a, a) layer by layer, b = 0
theta[tiny.spec.slice("b1")] = rng.uniform(-0.1, 0.1, 4)      # nonzero biases, so that db1 shows up below
W1, b1, W2, b2 = (tiny.spec.view(theta, name) for name in ("W1", "b1", "W2", "b2"))
print(type(tiny).__name__, tiny.size, "parameters:", dict(zip(tiny.spec.names, tiny.spec.shapes)))
print("W1 is a view into theta:", np.shares_memory(W1, theta))

X, y = data.x_train[:3].astype(np.float64), data.y_train[:3]
n = len(y)
print("labels:", [CLASSES[label] for label in y])

# %% [markdown]
# ## Forward, line by line

# %%
Z1 = X @ W1 + b1                        # Z1 = X W1 + b1          (n x H)
A = np.maximum(Z1, 0)                   # A = relu(Z1)            (n x H)
Z2 = A @ W2 + b2                        # Z2 = A W2 + b2          (n x C)
P = softmax(Z2, axis=1)                 # P = softmax(Z2), row by row
loss = -np.log(P[np.arange(n), y]).mean()
print("Z1 =\n", Z1, "\nA = relu(Z1) =\n", A)
print("P =\n", P)
print(f"loss by hand {loss:.12f}   fedsim's model.loss {tiny.loss(theta, X, y)[()]:.12f}")

# %% [markdown]
# ## Backward, line by line
#
# Backpropagation walks the same four lines in reverse. Each step multiplies what is known,
# $\partial L / \partial(\text{a layer's output})$, by the derivative of that layer, and each weight's
# gradient falls out on the way.
#
# **1. Softmax and cross-entropy together.** As in notebook 1, with $Y$ the one-hot labels,
#
# $$\frac{\partial L}{\partial Z_2} = \tfrac1n (P - Y) \;=:\; \Delta_2 \qquad (n \times C).$$

# %%
Y = np.eye(data.n_classes)[y]
delta2 = (P - Y) / n                    # dL/dZ2 = (P - Y) / n
print("delta2 =\n", delta2)

# %% [markdown]
# **2. The output layer's weights and bias.** $Z_2 = A W_2 + b_2$ is linear in $W_2$: entry
# $(i, c)$ of $Z_2$ depends on $W_2[j, c]$ through $A_{ij}$, so summing over the samples,
#
# $$\frac{\partial L}{\partial W_2} = A^\top \Delta_2 \quad (H \times C), \qquad
#   \frac{\partial L}{\partial b_2} = \textstyle\sum_i \Delta_2[i] \quad (C).$$

# %%
grad_W2 = A.T @ delta2                  # dL/dW2 = A^T delta2
grad_b2 = delta2.sum(axis=0)            # dL/db2 = sum over the samples
print("dL/dW2 =\n", grad_W2)

# %% [markdown]
# **3. Back through the output layer to the hidden units.** The same product read the other way:
# $Z_2$ depends on $A_{ij}$ through $W_2[j, :]$, so
#
# $$\frac{\partial L}{\partial A} = \Delta_2 W_2^\top \qquad (n \times H).$$

# %%
grad_A = delta2 @ W2.T                  # dL/dA = delta2 W2^T
print("dL/dA =\n", grad_A)

# %% [markdown]
# **4. Through the relu.** $A = \max(Z_1, 0)$ acts entry by entry; its derivative is 1 where the unit is
# active ($Z_1 > 0$) and 0 where it is not, so the gradient passes through active units unchanged and
# stops at the others:
#
# $$\frac{\partial L}{\partial Z_1} = \frac{\partial L}{\partial A} \odot [Z_1 > 0] \;=:\; \Delta_1
# \qquad (n \times H).$$
#
# (At $Z_1 = 0$ exactly the relu has no derivative; fedsim, like torch, uses 0 there.)

# %%
delta1 = grad_A * (Z1 > 0)              # dL/dZ1 = dL/dA * relu'(Z1)
print("active units [Z1 > 0] =\n", (Z1 > 0).astype(int), "\ndelta1 =\n", delta1)   # -0.: a negative times 0

# %% [markdown]
# **5. The first layer's weights and bias**, exactly as step 2 with $X$ in place of $A$:
#
# $$\frac{\partial L}{\partial W_1} = X^\top \Delta_1 \quad (F \times H), \qquad
#   \frac{\partial L}{\partial b_1} = \textstyle\sum_i \Delta_1[i] \quad (H).$$
#
# A row of $\partial L / \partial W_1$ belongs to one pixel; a pixel that is black (0) in all three
# images gets a zero row.

# %%
grad_W1 = X.T @ delta1                  # dL/dW1 = X^T delta1
grad_b1 = delta1.sum(axis=0)            # dL/db1 = sum over the samples
print("dL/dW1:", grad_W1.shape, "| rows of pixels 400..403:\n", grad_W1[400:404])
print("dL/db1 =", grad_b1)

# %% [markdown]
# ## The same through fedsim
#
# `MLP.loss_and_grad` runs the forward pass and hands its outputs to `MLP._backward`, which runs these steps
# for any number of layers: `delta` is $\Delta_l$, `h_below` the layer's input ($X$ or $A$); the gradient's
# tensors are views of one flat vector laid out like $\theta$. Here is its code, the equations beside the
# lines that compute them:

# %%
print(inspect.getsource(MLP._backward))

# %% [markdown]
# Our five steps, flattened in fedsim's layout, against fedsim's gradient:

# %%
by_hand = np.concatenate([grad_W1.ravel(), grad_b1, grad_W2.ravel(), grad_b2])
fedsim_loss, fedsim_grad = tiny.loss_and_grad(theta, X, y)
print(f"largest difference: loss {abs(fedsim_loss - loss):.1e}, gradient {np.abs(fedsim_grad - by_hand).max():.1e}"
      f" (largest entry {np.abs(by_hand).max():.1e})")
assert np.allclose(fedsim_grad, by_hand, rtol=1e-12, atol=1e-15)

# %% [markdown]
# **Many clients at once.** In a federated round every client has its own copy of the parameters and its
# own batch. fedsim stacks them: $\theta$ of shape $(K, P)$, the batches $(K, n, F)$, and each product
# above becomes one batched product over the $K$ clients (`np.matmul` on stacks). Three clients, each
# with its own parameters and images, in one call, against one call per client:

# %%
K = 3
thetas = np.stack([tiny.init(rng, "glorot", np.float64) for _ in range(K)])    # (K, P)
batches = data.x_train[3:3 + K * n].astype(np.float64).reshape(K, n, -1)       # (K, n, F)
labels = data.y_train[3:3 + K * n].reshape(K, n)
losses, grads = tiny.loss_and_grad(thetas, batches, labels)
one_by_one = np.stack([tiny.loss_and_grad(thetas[k], batches[k], labels[k])[1] for k in range(K)])
print("losses", losses, "| shapes", thetas.shape, "->", grads.shape,
      f"| largest difference to one call per client: {np.abs(grads - one_by_one).max():.1e}")

# %% [markdown]
# ## A finite-difference check
#
# The check of notebook 1, which needs no formula: for a coordinate $j$ of $\theta$,
#
# $$\frac{L(\theta + h e_j) - L(\theta - h e_j)}{2h} = \frac{\partial L}{\partial \theta_j} + O(h^2),$$
#
# in float64 with $h = 10^{-6}$ (near the best step $\varepsilon^{1/3}$, see notebook 1). The relu adds
# one trap: if a unit's $Z_1$ lies within about $h$ of 0, the two evaluations sit on both sides of the
# kink and the difference measures neither side's slope. On a batch of 50 images and random starting
# weights that is unlikely, and the check below would show it. We check 40 coordinates of each tensor,
# and measure each tensor's error against its largest gradient entry.

# %%
X_check, y_check = data.x_train[100:150].astype(np.float64), data.y_train[100:150]
_, grad = tiny.loss_and_grad(theta, X_check, y_check)
step = 1e-6


def central_difference(j: int) -> float:
    shift = np.zeros(tiny.size)
    shift[j] = step
    return (tiny.loss(theta + shift, X_check, y_check) - tiny.loss(theta - shift, X_check, y_check)) / (2 * step)


worst = 0.0
for name in tiny.spec.names:
    segment = np.arange(tiny.size)[tiny.spec.slice(name)]
    chosen = rng.choice(segment, size=min(40, segment.size), replace=False)
    differences = np.array([central_difference(j) for j in chosen])
    error = np.abs(differences - grad[chosen]).max() / np.abs(grad[segment]).max()
    worst = max(worst, error)
    print(f"{name:>3}: {chosen.size:2d} coordinates, max relative error {error:.1e}")
print(f"max relative error {worst:.1e}")
assert worst < 1e-6, f"the gradient disagrees with finite differences: {worst:.1e}"

# %% [markdown]
# ## Training a small network
#
# Now a network worth looking at: $H = 32$ hidden units, trained with plain mini-batch SGD
# ($\theta \leftarrow \theta - \eta \nabla L_\text{batch}$, $\eta = 0.2$, batches of 100 from a shuffled
# order, reshuffled every epoch) on 10,000 training images, from fedsim's Glorot start. We keep a copy of
# the start, $\theta^0$, for the pictures below.

# %%
network = ModelConfig(name="mlp", hidden=(32,)).build(data.n_features, data.n_classes)
start = network.init(np.random.default_rng(1), kind="glorot", dtype=np.float64)
theta = start.copy()
mine = np.arange(len(data.y_train) if FULL else 10_000)
x_mine, y_mine = data.x_train[mine].astype(np.float64), data.y_train[mine]
lr, batch_size, epochs = 0.2, 100, (10 if FULL else 8)
order_rng = np.random.default_rng(2)
curve = []                                                # (epoch, test loss, test accuracy)
for epoch in range(1, epochs + 1):
    order = order_rng.permutation(len(mine))
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size]
        _, grad = network.loss_and_grad(theta, x_mine[rows], y_mine[rows])
        theta -= lr * grad
    test_loss, test_accuracy = network.evaluate(theta, data.x_test, data.y_test)
    curve.append((epoch, float(test_loss), float(test_accuracy)))
print(f"after {epochs} epochs on {len(mine):,} images: test accuracy {curve[-1][2]:.3f}")

# %%
epoch_number, test_loss, test_accuracy = np.array(curve).T
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 2.8))
left.plot(epoch_number, test_loss, "o-")
left.set_xlabel("epoch")
left.set_ylabel("test loss")
right.plot(epoch_number, test_accuracy, "o-")
right.set_xlabel("epoch")
right.set_ylabel("test accuracy");

# %% [markdown]
# ## What the hidden units look for
#
# Hidden unit $j$ computes $\operatorname{relu}(x \cdot W_1[:, j] + b_1[j])$: column $j$ of $W_1$ is one
# weight per pixel, so it can be drawn as a 28 x 28 image. Drawn as they are, the columns would show
# mostly their random start (Glorot's $\pm\sqrt{6 / (784 + 32)} \approx \pm 0.09$ per pixel, which a few
# epochs do not wash out), so we draw what training added, $W_1 - W_1^0$. Red pixels now push the unit on
# when they are bright, blue ones push it off. Unlike softmax regression's ten columns (notebook 1), no
# unit belongs to a class: each is a feature (a sleeve, a sole, a collar, the gap between trouser legs)
# that the output layer $W_2$ combines, with its own signs, into the ten scores; the title names the class
# whose score the unit raises most.

# %%
learned = network.spec.view(theta, "W1") - network.spec.view(start, "W1")
W2 = network.spec.view(theta, "W2")
fig, axes = plt.subplots(4, 8, figsize=(11, 6))
for unit, ax in enumerate(axes.flat):
    limit = np.abs(learned[:, unit]).max()
    ax.imshow(learned[:, unit].reshape(28, 28), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_title(CLASSES[np.argmax(W2[unit])], fontsize=8)
    ax.axis("off")
fig.suptitle(f"what SGD added to the 32 hidden units of a 784-32-10 relu network, W1 - W1^0 "
             f"(test accuracy {curve[-1][2]:.2f})")
if FIGURES:
    fig.savefig(Path(FIGURES) / "05_hidden_units.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# **What to take away.** Backpropagation is the chain rule, one layer at a time: $\Delta_2 = (P - Y)/n$
# at the top, then for each layer its weight gradient $(\text{input})^\top \Delta$, its bias gradient
# $\sum_i \Delta$, and $\Delta W^\top$ passed down, masked by the activation's derivative. fedsim's MLP
# is these lines, batched over clients; every federated and lazy method of notebooks 2 and 3 runs on it
# with `--set model.name=mlp --set model.hidden=[200]`. One caution for LAQ (and QGD's grid) on a network: at
# the Glorot init most gradient entries are near 0, which the b-bit grid quantizes with an error as large as
# the innovation, so LAQ's rule skips every upload until the staleness clock (`lazy.max_skips`, C = 100)
# forces one; the `laq-mlp` preset's header measures it (f stays at 40.43 until k = 100).
