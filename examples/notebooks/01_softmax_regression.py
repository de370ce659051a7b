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
# # 1. Softmax regression by hand
#
# **Goal.** Every algorithm in fedsim trains one model: softmax (multinomial logistic) regression, with
# a loss and a gradient written by hand instead of by a deep-learning framework. This notebook writes the
# loss and the gradient down as equations, puts them beside the lines of `fedsim.models.SoftmaxRegression`
# that compute them, checks the gradient against finite differences, trains the model with plain SGD on
# one client's share of Fashion-MNIST, and draws the learned weights as ten images. It runs in well under
# a minute; set `FULL = True` to train on the whole training set instead of one client's share.

# %%
import inspect
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy.special import softmax
from threadpoolctl import threadpool_limits

from fedsim.data import load_dataset
from fedsim.data.partition import split_indices
from fedsim.data.registry import get_dataset
from fedsim.models import SoftmaxRegression

FULL = False                                          # True: SGD on all 60,000 training images
FIGURES = os.environ.get("FEDSIM_NOTEBOOK_FIGURES")   # a folder: save this notebook's README figure there
threadpool_limits(1)                                  # one BLAS thread: small products, repeatable timings
rng = np.random.default_rng(0)

# %% [markdown]
# ## The data
#
# `load_dataset` finds the four IDX files (in the folders of `FEDSIM_DATA`, the checkout's `data/`, the
# user cache, or by downloading and verifying them) and preprocesses them. The `"laq"` pipeline used here
# only divides the pixels by 255: each 28 x 28 image becomes one row of F = 784 features in [0, 1], with
# a black background of exact zeros. (The STC notebook uses the `"stc"` pipeline: resized to 32 x 32 and
# normalized, as in the STC paper; the model is the same.) The labels are the integers 0..9.

# %%
data = load_dataset("fashion-mnist", pipeline="laq")
CLASSES = get_dataset("fashion-mnist").class_names
print(data.description)
print("train", data.x_train.shape, data.x_train.dtype, "| test", data.x_test.shape)

# %%
fig, axes = plt.subplots(1, 10, figsize=(12, 1.7))
for label, ax in enumerate(axes):
    image = data.x_train[np.flatnonzero(data.y_train == label)[0]]
    ax.imshow(image.reshape(28, 28), cmap="gray")
    ax.set_title(CLASSES[label], fontsize=8)
    ax.axis("off")

# %% [markdown]
# ## The model and its loss
#
# For an image $x \in \mathbb{R}^F$ and $C = 10$ classes, with weights $W \in \mathbb{R}^{F \times C}$
# and biases $b \in \mathbb{R}^C$:
#
# $$z = x W + b, \qquad p_c = \operatorname{softmax}(z)_c = \frac{e^{z_c - \max z}}{\sum_j e^{z_j - \max z}},
# \qquad \ell(x, y) = -\log p_y .$$
#
# Subtracting $\max z$ changes nothing mathematically and keeps $e^{z}$ from overflowing. The loss of a
# batch of $n$ images is the mean $L(\theta) = \frac1n \sum_i \ell(x_i, y_i)$ (plus
# $\frac{\lambda}{2}\|\theta\|^2$ when `l2` $= \lambda > 0$). fedsim keeps all parameters in **one flat
# vector** $\theta = [W \text{ (row-major)}, b]$; `model.spec` names the pieces, and `spec.view` returns
# views into $\theta$, never copies.

# %%
model = SoftmaxRegression(n_features=data.n_features, n_classes=data.n_classes)
theta = model.init(rng, kind="glorot", dtype=np.float64)     # W ~ U(-a, a), b = 0
W, b = model.spec.view(theta, "W"), model.spec.view(theta, "b")
print(model.size, "parameters:", dict(zip(model.spec.names, model.spec.shapes)))
print("W is a view into theta:", np.shares_memory(W, theta))

# %% [markdown]
# One image through the model, the softmax written out with SciPy, and the loss $-\log p_y$ compared with
# `model.loss`:

# %%
x, y = data.x_train[:1].astype(np.float64), data.y_train[:1]
p = softmax(model.logits(theta, x)[0])
print(f"-log p_y = {-np.log(p[y[0]]):.6f}   model.loss = {model.loss(theta, x, y)[()]:.6f}")
fig, ax = plt.subplots(figsize=(7, 2.4))
ax.bar(range(10), p, color=["tab:red" if c == y[0] else "tab:gray" for c in range(10)])
ax.set_xticks(range(10), CLASSES, rotation=30, fontsize=8)
ax.set_ylabel("p_c at a random start")
ax.set_title(f"true class {CLASSES[y[0]]} (red): loss = -log p_y = {-np.log(p[y[0]]):.2f}");

# %% [markdown]
# ## The gradient, and fedsim's code for it
#
# Differentiating $-\log p_y$ with respect to the logits gives the famous $\partial \ell / \partial z =
# p - e_y$ ($e_y$ the one-hot label). With $P$ and $Y$ the $n \times C$ matrices of probabilities and
# one-hot labels, the chain rule through $z = xW + b$ gives
#
# $$\nabla_W L = \tfrac1n X^\top (P - Y) + \lambda W, \qquad
#   \nabla_b L = \tfrac1n \textstyle\sum_i (p_i - e_{y_i}) + \lambda b .$$
#
# Here are the lines of `SoftmaxRegression.loss_and_grad` that compute it. fedsim walks the samples in
# cache-sized blocks, so that each sample is read from memory once per gradient: for each block, the
# forward product $u = X_\text{block} W$, then the logits and `delta` $= (P - Y)/n$ in place of `z` (the
# sample weights serve clients whose batches are padded to one array), then the block's share
# $X_\text{block}^\top \delta$ of the weight gradient. The elementwise work between the two products is two
# Numba kernels, `shift_logits` and `softmax_residual`; `exp`, `log` and the row totals stay NumPy's:

# %%
lines, first = inspect.getsourcelines(SoftmaxRegression.loss_and_grad)
start = next(i for i, line in enumerate(lines) if "for k0, k1, s0, s1 in blocks:" in line)
stop = next(i for i, line in enumerate(lines) if "plan.backward(x_block, z" in line)
for number, line in enumerate(lines[start:stop + 1], first + start):
    print(f"{number:4d} {line.rstrip()}")
print(inspect.getsource(SoftmaxRegression.weight_gradient))

# %% [markdown]
# Each kernel has a NumPy twin that does the same arithmetic in the same order (the tests check they agree
# bit for bit). The twins read like the equations:

# %%
from fedsim.kernels import softmax as softmax_kernels

print(inspect.getsource(softmax_kernels.shift_logits_numpy))
print(inspect.getsource(softmax_kernels.softmax_residual_numpy))

# %% [markdown]
# The formula computed directly with NumPy on a batch of 100 images, against fedsim:

# %%
X, Y = data.x_train[:100].astype(np.float64), data.y_train[:100]
loss, grad = model.loss_and_grad(theta, X, Y)
delta = softmax(model.logits(theta, X), axis=1) - np.eye(10)[Y]        # P - Y
grad_W, grad_b = X.T @ delta / len(Y), delta.mean(axis=0)
print("largest difference, W:", np.abs(grad_W - model.spec.view(grad, "W")).max())
print("largest difference, b:", np.abs(grad_b - model.spec.view(grad, "b")).max())

# %% [markdown]
# Column $c$ of $-\nabla_W L$ is the direction one SGD step moves class $c$'s weights: the mean of the
# images of class $c$ (weighted by $1 - p_c$) minus the images of other classes that the model gives to
# $c$ (weighted by $p_c$). Drawn as images, the first step already looks like a set of templates:

# %%
fig, axes = plt.subplots(1, 10, figsize=(12, 1.7))
for c, ax in enumerate(axes):
    column = -grad_W[:, c]
    limit = np.abs(column).max()
    ax.imshow(column.reshape(28, 28), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_title(CLASSES[c], fontsize=8)
    ax.axis("off")

# %% [markdown]
# ## A finite-difference check
#
# An independent check that needs no formula: for a coordinate $j$ and a step $h$, the central difference
#
# $$\frac{L(\theta + h e_j) - L(\theta - h e_j)}{2h} = \frac{\partial L}{\partial \theta_j} + O(h^2)$$
#
# approaches the gradient as $h$ shrinks, until rounding takes over: each loss carries an error of about
# $\varepsilon |L|$ ($\varepsilon \approx 2 \cdot 10^{-16}$ in float64), which the division turns into
# $O(\varepsilon / h)$. The total error is smallest near $h \approx \varepsilon^{1/3} \approx 10^{-5}$.

# %%
coordinates = rng.choice(model.size, size=12, replace=False)
steps = np.logspace(-11, -1, 21)


def central_difference(j, h):
    shift = np.zeros(model.size)
    shift[j] = h
    return (model.loss(theta + shift, X, Y) - model.loss(theta - shift, X, Y)) / (2 * h)


errors = [max(abs(central_difference(j, h) - grad[j]) for j in coordinates) for h in steps]
relative = np.array(errors) / np.abs(grad[coordinates]).max()
print(f"best relative error {relative.min():.1e} at h = {steps[relative.argmin()]:.0e}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3))
ax.loglog(steps, relative, "o-")
ax.loglog(steps, relative[-1] * (steps / steps[-1]) ** 2, ":", label="~ h^2 (truncation)")
ax.loglog(steps, relative[0] * steps[0] / steps, "--", label="~ eps / h (rounding)")
ax.set_ylim(1e-12, 10)
ax.set_xlabel("step h")
ax.set_ylabel("max relative error")
ax.legend();

# %% [markdown]
# ## One client's SGD
#
# In the STC experiment 50 clients each hold 1/50 of the training set. Here is what one of them does
# locally, written out: mini-batch SGD, $\theta \leftarrow \theta - \eta \nabla L_{\text{batch}}(\theta)$,
# with $\eta = 0.1$ and batches of 100 from a shuffled order, reshuffled every epoch, from a zero start.
# `fedsim.data.partition.split_indices` makes the split (here every client gets all ten classes in equal shares).

# %%
clients = split_indices("classes_per_client", data.y_train, 50, np.random.default_rng(0),
                        classes_per_client=10, balancedness=1.0)
mine = np.arange(len(data.y_train)) if FULL else clients[0]
x_mine, y_mine = data.x_train[mine], data.y_train[mine]
print(len(mine), "training images; per class:", np.bincount(y_mine, minlength=10))

# %%
lr, batch_size, epochs = 0.1, 100, (5 if FULL else 20)
theta = model.init(dtype=np.float64)                      # zeros
order_rng = np.random.default_rng(1)
curve = []                                                # (step, batch loss, test loss, test accuracy)
for epoch in range(epochs):
    order = order_rng.permutation(len(mine))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        loss, grad = model.loss_and_grad(theta, x_mine[rows], y_mine[rows])
        theta -= lr * grad
    test_loss, test_accuracy = model.evaluate(theta, data.x_test, data.y_test)
    curve.append((len(curve) + 1, float(loss), float(test_loss), float(test_accuracy)))
print(f"after {epochs} epochs: test accuracy {curve[-1][3]:.3f}")

# %%
epoch_number, batch_loss, test_loss, test_accuracy = np.array(curve).T
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 2.8))
left.plot(epoch_number, batch_loss, label="last training batch")
left.plot(epoch_number, test_loss, label="test set")
left.set_xlabel("epoch")
left.set_ylabel("loss")
left.legend()
right.plot(epoch_number, test_accuracy, "o-")
right.set_xlabel("epoch")
right.set_ylabel("test accuracy");

# %% [markdown]
# ## The weights as ten images
#
# Column $c$ of $W$ scores an image for class $c$: $z_c = x \cdot W_{:, c} + b_c$. Drawn as a 28 x 28
# picture, a red pixel is evidence for the class when it is bright and a blue one evidence against it
# (black pixels are 0 and count for nothing). The trouser column wants two legs with a gap between them,
# the sneaker column a low, flat shape with nothing above it.

# %%
W = model.spec.view(theta, "W")
fig, axes = plt.subplots(2, 5, figsize=(8, 3.6))
for c, ax in enumerate(axes.flat):
    limit = np.abs(W[:, c]).max()
    ax.imshow(W[:, c].reshape(28, 28), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_title(CLASSES[c], fontsize=9)
    ax.axis("off")
fig.suptitle(f"softmax regression weights after one client's SGD (test accuracy {curve[-1][3]:.2f})")
if FIGURES:
    fig.savefig(Path(FIGURES) / "01_softmax_weights.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# **What to take away.** The whole model is $z = xW + b$, the whole gradient is $X^\top (P - Y) / n$,
# and both checks agree with fedsim to rounding. The next notebooks send updates of such a model over
# a network: notebook 2 compresses them (STC), notebook 3 skips them (LAG and LAQ).
