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
# # 6. What a compressor does to a vector
#
# **Goal.** Every communication-efficient method replaces the update $x$ a client would send by a
# message that decodes to $C(x)$. This notebook takes one vector at a time and looks at what seven
# compressors make of it: top-k, STC, the scaled sign, QSGD, TernGrad, random-k and PowerSGD. For each:
# the decoded $C(x)$ drawn against $x$, the bias $E[C(x)] - x$ over many draws, the normalized error
# $E\|C(x) - x\|^2 / \|x\|^2$ beside what the compressor's paper says of it, and the bits per entry three
# ways. It ends by giving every compressor the same number of bits and comparing what they do with them.
# Everything comes from the functions behind `fedsim compressors report` (`fedsim.compress.theory`,
# `fedsim.report_card`, `fedsim.compress.budget`). It needs no dataset and runs in a few seconds;
# `FULL = True` measures the report card's default size (7,850 entries) over ten times the draws.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

from fedsim import report_card
from fedsim.compress import make_compressor
from fedsim.compress.budget import BudgetError, solve_knob
from fedsim.compress.theory import SIGMAS, measure, meets

FULL = False                                          # True: 7,850 entries, 2,000 draws per vector
FIGURES = os.environ.get("FEDSIM_NOTEBOOK_FIGURES")   # a folder: save this notebook's README figure there
threadpool_limits(1)                                  # one BLAS thread: small products, repeatable timings
SIZE, DRAWS = (7850, 2000) if FULL else (1000, 200)
SEED = 0

# %% [markdown]
# ## Three vectors
#
# `report_card.load_vectors` makes the vectors the report card measures, laid out as the weights of a
# 10-class model (one $(d / 10) \times 10$ matrix), in float32 as in a run:
#
# - **Gaussian**: $x_i \sim \mathcal N(0, 1)$, every entry about as large as any other;
# - **heavy-tailed**: Student's $t$ with 2 degrees of freedom, where a few entries hold most of $\|x\|^2$;
# - **a real update**: what a client of the `synthetic` preset (softmax regression on FedProx's
#   Synthetic(1, 1), 60 features and 10 classes, 610 parameters: $W$ and $b$) would send in round 3,
#   after two rounds of STC training. The layout is then the model's own.

# %%
VECTORS = {}
for kind in ("gaussian", "heavy-tailed", "preset:synthetic"):
    rows, spec, description = report_card.load_vectors(kind, SIZE, SEED, ValueError)
    VECTORS[kind] = (rows[0], spec)                   # the first client's update, for the real one
    x = rows[0].astype(np.float64)
    top = np.sort(x ** 2)[::-1]
    print(f"{description}: {x.size} entries, the largest 1% of them hold "
          f"{top[:max(1, x.size // 100)].sum() / top.sum():.0%} of ||x||^2")

# %%
fig, ax = plt.subplots(figsize=(6, 3))
for kind, (x, _) in VECTORS.items():
    magnitudes = np.sort(np.abs(x))[::-1]
    ax.loglog(np.arange(1, x.size + 1), magnitudes / magnitudes[0], label=kind)
ax.set_xlabel("rank")
ax.set_ylabel("|x_i| / max |x|, sorted")
ax.legend(fontsize=8);

# %% [markdown]
# ## The seven compressors
#
# Each is made from the registry with its settings. The densities are larger than a run's (5% instead
# of 1%) so that a vector of 1,000 entries keeps enough of them to see; the sign is the *scaled* sign
# (`scale="mean"`: every entry $\pm \frac1N \|x\|_1$ per tensor), the one that approximates $x$ (the
# default `scale="none"` sends bare signs for signSGD's majority vote, and no paper bounds its error).
#
# | compressor | $C(x)$ | message |
# |---|---|---|
# | `topk` | the $k = \lceil pN \rceil$ largest entries, exactly | positions and 32-bit values |
# | `stc` | the same positions, each $\pm\mu$, $\mu$ the mean kept magnitude | positions, signs and $\mu$ |
# | `sign` | $\operatorname{sign}(x_i) \, \|x\|_1 / N$ | one sign per entry and the scale |
# | `qsgd` | $\|v\| \operatorname{sign}(v_i) \, \ell_i / s$, $\ell_i$ a random rounding of $s \lvert v_i \rvert / \|v\|$ per bucket $v$ | the norms, levels in an Elias code |
# | `terngrad` | $\max\lvert x \rvert \operatorname{sign}(x_i) \, b_i$, $b_i \sim$ Bernoulli$(\lvert x_i \rvert / \max\lvert x \rvert)$ | a base-3 digit per entry and the scale |
# | `randomk` | $k$ entries drawn at random, scaled by $N / k$ | a seed and $k$ values |
# | `powersgd` | $P Q^\top$, one power step of rank $r$ from a random start | $(n + m) r$ values per matrix |

# %%
SETTINGS = {"topk": {"p": 0.05}, "stc": {"p": 0.05}, "sign": {"scale": "mean"}, "qsgd": {"levels": 4},
            "terngrad": {}, "randomk": {"p": 0.05}, "powersgd": {"rank": 2}}
COMPRESSORS = {name: make_compressor(name, **settings) for name, settings in SETTINGS.items()}
for name, compressor in COMPRESSORS.items():
    print(f"{name:9} {compressor.settings}")

# %% [markdown]
# ## C(x) against x
#
# One panel per compressor, on the Gaussian vector: each dot is one entry, $x_i$ across and $C(x)_i$ up,
# the blue ones from one draw, the orange ones the mean of $C(x)_i$ over all the draws. The grey diagonal
# is $C(x) = x$. Each draw starts from a fresh state, as a client's first message does. Where the
# orange dots hide the blue ones, every draw is the same: the compressor is deterministic.


# %%
def decoded_draws(compressor, x, spec, draws, rng):
    """``draws`` independent decodings C(x), one per row, each from a fresh state."""
    return np.stack([compressor.compress(x, compressor.init(spec), rng)[0].decoded[0] for _ in range(draws)])


x, spec = VECTORS["gaussian"]
rng = np.random.default_rng(SEED)
DECODED = {name: decoded_draws(compressor, x, spec, DRAWS, rng) for name, compressor in COMPRESSORS.items()}
fig, axes = plt.subplots(2, 4, figsize=(13, 6), constrained_layout=True)
for ax, (name, decoded) in zip(axes.flat, DECODED.items()):
    limit = np.abs(x).max()
    ax.plot([-limit, limit], [-limit, limit], color="tab:gray", lw=1)
    ax.plot(x, decoded[0], ".", ms=3, label="C(x), one draw")
    ax.plot(x, decoded.mean(axis=0), ".", ms=3, label=f"mean over {DRAWS} draws")
    ax.set_title(name)
    ax.set_xlabel("x_i")
axes[0, 0].set_ylabel("C(x)_i")
axes[1, 0].set_ylabel("C(x)_i")
axes[1, 3].legend(*axes[0, 0].get_legend_handles_labels(), loc="center", fontsize=10)
axes[1, 3].axis("off")
fig.suptitle(f"what each compressor makes of a Gaussian vector of {x.size} entries")
if FIGURES:
    fig.savefig(Path(FIGURES) / "06_compressor_panels.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# Read the panels before the numbers: for one draw, how many entries are sent, how many distinct
# magnitudes they take, and how far from $x$ the mean over the draws lies.

# %%
quantizer = COMPRESSORS["qsgd"]
scale = np.linalg.norm(x[:quantizer.bucket_size]) / quantizer.levels     # ||v|| / s, the first bucket
for name, decoded in DECODED.items():
    sent = decoded[0] != 0
    magnitudes = np.unique(np.abs(decoded[0][sent]))
    print(f"{name:9} {sent.sum():5d} entries sent, {magnitudes.size:5d} distinct magnitudes "
          f"({magnitudes.min():.3g} to {magnitudes.max():.3g}); "
          f"||mean C(x) - x|| / ||x|| = {np.linalg.norm(decoded.mean(axis=0) - x) / np.linalg.norm(x):.3f}")
kept = DECODED["randomk"][0] != 0
print(f"QSGD's step ||v|| / s on the first bucket: {scale:.2f}; max |x| = {np.abs(x).max():.2f}; random-k "
      f"sends C(x)_i = {np.median(DECODED['randomk'][0][kept] / x[kept]):.0f} x_i (N / k)")

# %% [markdown]
# Top-k keeps the entries beyond a threshold exactly (on the diagonal) and zeroes the rest; STC puts the
# same entries on two levels $\pm\mu$, the scaled sign every entry on $\pm\|x\|_1/N$. QSGD with
# $s = 4$ levels rounds each entry to a multiple of $\|v\|/s$, larger than most $|x_i|$ here; TernGrad
# rounds to $0$ or $\pm\max|x|$, and random-k sends $N/k$ times a few entries: one draw of each is far
# from $x$, but their means lie near the diagonal, and nearer with more draws. PowerSGD's rank-2 product
# is a smooth summary of every entry, and it changes with its random start.

# %% [markdown]
# ## Measured against theory
#
# `theory.measure` compresses $x$ `DRAWS` times and returns, with $D_j = C_j(x) - x$:
#
# $$\text{bias} = \frac{\|\frac1n \sum_j D_j\|}{\|x\|}, \qquad
#   \text{error} = \frac1n \sum_j \frac{\|D_j\|^2}{\|x\|^2},$$
#
# each with its standard error, and `bias_z`, about standard normal when $C$ is unbiased. The error splits
# as $\text{error} = \text{bias}^2 + \text{variance}$ (up to the sampling noise of the bias), so a
# deterministic compressor's error is all bias, and an unbiased one's all variance. Each compressor also
# states what its paper says (`compressor.theory(x, state)`): a **bound** ($\le$), an **exact** value
# ($=$), a **floor** no compressor of its kind beats ($\ge$), or nothing (**measured only**).
# `theory.meets` checks the measurement: within `SIGMAS` = 4 standard errors of the theory, and, if the
# theory says unbiased, $|\text{bias\_z}| \le 4$.

# %%
KIND = {"<=": "a bound", "=": "exact", ">=": "a floor"}


def what_theory_says(theory):
    """'a bound', 'exact', 'a floor' or 'measured only', for a compressor's Theory (or None)."""
    return "measured only" if theory is None or theory.error is None else KIND[theory.relation]


MEASURED = {}                                         # (vector kind, compressor) -> Measurement
for kind, (x, spec) in VECTORS.items():
    print(f"\n{kind}:  {'bias +- se':>17} {'bias_z':>8} {'error':>9} {'variance':>9}   theory")
    for name, compressor in COMPRESSORS.items():
        m = measure(compressor, x, spec, DRAWS, np.random.default_rng([SEED, 2]))
        MEASURED[kind, name] = m
        theory = m.theory
        stated = what_theory_says(theory)
        if stated != "measured only":
            stated += f" {theory.relation} {theory.error:.4g}"
        unbiased = theory is not None and theory.unbiased is True
        bias_z = f"{m.bias_z:8.2f}" if unbiased else f"{'-':>8}"      # tested only where stated unbiased
        variance = m.error - m.bias ** 2
        variance = variance if variance > 1e-12 else 0.0              # a deterministic C: 0 up to rounding
        print(f"  {name:9} {m.bias:8.4f} +- {m.bias_se:.4f} {bias_z} {m.error:9.4g} {variance:9.4g}   "
              f"{stated}{', unbiased' if unbiased else ''}")
        assert meets(m, x.dtype) is not False, f"{name} on {kind}: the measurement misses its theory"
print(f"\nevery stated bound, exact value, floor and unbiasedness met (within {SIGMAS:g} standard errors)")

# %% [markdown]
# What the theories are, and where they come from:

# %%
for name, compressor in COMPRESSORS.items():
    theory = MEASURED["gaussian", name].theory
    print(f"{name:9} {what_theory_says(theory):14} {theory.source}")

# %% [markdown]
# The numbers, compressor by compressor (each printed from the measurements above):

# %%
gaussian, heavy, real = ({name: MEASURED[kind, name] for name in COMPRESSORS} for kind in VECTORS)
print(f"top-k's bound 1 - k/N = {gaussian['topk'].theory.error:.3f}; measured {gaussian['topk'].error:.3f} "
      f"on the Gaussian vector, {heavy['topk'].error:.3f} on the heavy-tailed one: the bound is what a vector "
      f"of equal entries would give, and the fewer entries hold ||x||^2, the lower top-k's error")
print(f"STC against top-k (same positions): {gaussian['stc'].error:.3f} against {gaussian['topk'].error:.3f} "
      f"(Gaussian), {heavy['stc'].error:.3f} against {heavy['topk'].error:.3f} (heavy-tailed): one shared "
      f"magnitude is a poor summary of kept entries of very different sizes")
for name in ("qsgd", "terngrad", "randomk"):
    print(f"{name}: bias_z {gaussian[name].bias_z:+.2f}, error {gaussian[name].error:.3f} against "
          f"{what_theory_says(gaussian[name].theory)} {gaussian[name].theory.error:.3f} (Gaussian); "
          f"error {heavy[name].error:.3f} against {heavy[name].theory.error:.3f} (heavy-tailed)")
print(f"QSGD's bound min(d/s^2, sqrt(d)/s) is {gaussian['qsgd'].theory.error / gaussian['qsgd'].error:.1f} "
      f"times its measured error on the Gaussian vector: a worst case, not a prediction")
print(f"PowerSGD's error {real['powersgd'].error:.2e} on the real update, its floor (the best rank-2 error) "
      f"{real['powersgd'].theory.error:.2e}; on the Gaussian vector {gaussian['powersgd'].error:.3f} and "
      f"{gaussian['powersgd'].theory.error:.3f}")

# %% [markdown]
# Why PowerSGD does so much better on the real update than on the Gaussian vector: the singular values
# of the update's $W$ (60 x 10), relative to the largest.

# %%
x, spec = VECTORS["preset:synthetic"]
matrix = x[:spec.sizes[0]].astype(np.float64).reshape(spec.shapes[0])
singular = np.linalg.svd(matrix, compute_uv=False)
print(np.round(singular / singular[0], 5))
print(f"the first singular value holds {singular[0] ** 2 / np.sum(singular ** 2):.6%} of ||W||^2: this update "
      f"is nearly of rank 1, so a rank-2 message loses almost nothing; a Gaussian matrix has no such structure")

# %% [markdown]
# Measured errors (dots, with 4 standard errors as bars where visible) beside the theory (a bound
# $\triangledown$, an exact value $\times$, a floor $\triangle$), on a log scale:

# %%
MARKERS = {"<=": "v", "=": "x", ">=": "^"}
fig, ax = plt.subplots(figsize=(10, 3.4))
for shift, kind in zip((-0.25, 0, 0.25), VECTORS):
    color = None
    for place, name in enumerate(COMPRESSORS):
        m = MEASURED[kind, name]
        line = ax.errorbar(place + shift, m.error, yerr=SIGMAS * m.error_se, fmt="o", color=color, ms=5,
                           label=kind if color is None else None)
        color = line[0].get_color()
        if what_theory_says(m.theory) != "measured only":
            ax.plot(place + shift + 0.08, m.theory.error, MARKERS[m.theory.relation], color=color, ms=7)
ax.set_xticks(range(len(COMPRESSORS)), COMPRESSORS)
ax.set_yscale("log")
ax.set_ylabel("E||C(x) - x||^2 / ||x||^2")
ax.legend(fontsize=8);

# %% [markdown]
# ## Bits per entry, three ways
#
# The same measurements counted the bits of every message three ways (per entry of $x$):
#
# - **encoder**: the real encoder's message, what fedsim charges a run (`Compressed.encoded_bits`);
# - **entropy**: the empirical entropy of the symbols the message codes (`Message.symbols`): QSGD's signed
#   levels, TernGrad's, STC's and the sign's ternary or sign symbols (without the scales, norms and $\mu$
#   sent beside them), and the floats of the others (top-k's entries, 0 where none is sent; random-k's $k$
#   values; PowerSGD's factor entries). $n$ symbols with the plug-in entropy $H = -\sum_v f_v \log_2 f_v$
#   of their values give $nH/N$ bits per entry: what an ideal code of those symbols would need, without
#   naming the values themselves (so $n$ distinct floats cost $\log_2 n$ bits each, not 32);
# - **formula**: the paper's own count (`Compressed.analytic_bits`), e.g. STC's Golomb estimate, QSGD's
#   Elias bound; TernGrad's is $\log_2 3$ bits per entry plus 32 per segment, where its paper counts 2 bits
#   per entry.

# %%
print(f"{'':10}{'Gaussian':>27} {'real update':>27}")
print(f"{'':10}" + f"{'encoder':>9}{'entropy':>9}{'formula':>9}" * 2)
for name in COMPRESSORS:
    print(f"{name:10}" + "".join(f"{getattr(m, way):9.3f}" for m in (gaussian[name], real[name])
                                 for way in ("bits_encoder", "bits_entropy", "bits_formula")))
top, stc, qsgd = gaussian["topk"], gaussian["stc"], gaussian["qsgd"]
print(f"\nSTC sends {top.bits_encoder / stc.bits_encoder:.1f} times fewer bits than top-k for the same positions "
      f"(a sign instead of a 32-bit value); its error is {stc.error / top.error:.3f} times top-k's")
print(f"QSGD's encoder: {qsgd.bits_encoder:.2f} bits per entry against the paper's formula "
      f"{qsgd.bits_formula:.2f}: the formula bounds the Elias code from above")
assert stc.bits_encoder < top.bits_encoder and qsgd.bits_encoder <= qsgd.bits_formula
ratio = {name: m.bits_encoder / m.bits_entropy for name, m in real.items()}
print("\nencoder / entropy on the real update:", ", ".join(f"{name} {value:.1f}" for name, value in ratio.items()))
assert min(ratio["topk"], ratio["randomk"], ratio["powersgd"], ratio["terngrad"]) > 2 > max(ratio["stc"], ratio["sign"],
                                                                                         ratio["qsgd"])

# %% [markdown]
# Where the encoder spends several times the entropy, the gap has two causes. Top-k, random-k and PowerSGD
# send floats: the entropy counts each one as a symbol among the few sent ($\log_2 n$ bits), the encoder
# pays its 32 bits; that is the price of the values themselves, which no code of the symbols removes.
# TernGrad sends a base-3 digit for every entry, however many are zero: a code of its digits that knew how
# rare the nonzero ones are would save most of its bits. STC, the sign and QSGD code their symbols within
# twice their entropy (the rest: the scales, norms and $\mu$ sent beside them, and a code designed for a
# model of the symbols rather than for the symbols seen).
#
# The figure puts the bits beside the error they buy: each line runs from the entropy ($|$) to the
# encoder ($\circ$), with the paper's formula ($\times$).

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
for name in COMPRESSORS:
    m = real[name]
    error = max(m.error, 1e-9)
    line = ax.plot([m.bits_entropy, m.bits_encoder], [error, error], "-", lw=2)[0]
    ax.plot(m.bits_encoder, error, "o", color=line.get_color(), label=name)
    ax.plot(m.bits_entropy, error, "|", color=line.get_color(), ms=12)
    ax.plot(m.bits_formula, error, "x", color=line.get_color())
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("bits per entry")
ax.set_ylabel("E||C(x) - x||^2 / ||x||^2")
ax.set_title("the real update: error against bits")
ax.legend(fontsize=8, ncol=2);

# %% [markdown]
# All of this in one table, for the four clients' real updates together: what
# `fedsim compressors report --vectors preset:synthetic --set topk.p=0.05 ...` prints (without `--set`,
# at each compressor's defaults).

# %%
rows, spec, description = report_card.load_vectors("preset:synthetic", SIZE, SEED, ValueError)
print(report_card.format_table(report_card.report(list(COMPRESSORS), SETTINGS, rows, spec, description,
                                                  DRAWS, SEED)))

# %% [markdown]
# ## Equal bits
#
# The settings above were picked by hand, so the compressors spent very different numbers of bits. A fair
# comparison gives each the same budget: `budget.solve_knob` finds the largest knob (top-k, STC and
# random-k: $p$; QSGD: its levels $s$; PowerSGD: its rank) whose real encoder spends at most the budget
# per client on the given updates, the four clients' real updates here. A run does the same with
# `federated.bits_per_round`. The budget: 1,000 bits per client, about 1.6 bits per entry of the 610.

# %%
BUDGET = 1000
print(f"{'':9} {'knob':>14} {'bits':>7}  {'bias':>7} {'error':>9}")
AT_BUDGET = {}                                        # compressor -> Measurement at its solved knob
for name, compressor in COMPRESSORS.items():
    if getattr(compressor, "budget_knob", None) is None:
        print(f"{name:9} no knob: {compressor.name} spends what its format spends")
        continue
    try:
        chosen, knob, bits = solve_knob(compressor, rows, spec, BUDGET, lambda: np.random.default_rng(SEED))
    except BudgetError as problem:
        print(f"{name:9} {problem}")
        continue
    assert 0.95 * BUDGET <= bits <= BUDGET, f"{name}: {bits} bits for a budget of {BUDGET}"
    m = AT_BUDGET[name] = measure(chosen, rows[0], spec, DRAWS, np.random.default_rng([SEED, 2]))
    print(f"{name:9} {compressor.budget_knob:>5} = {knob:<6.3g} {bits:7.1f}  {m.bias:7.3f} {m.error:9.4g}")
ranking = sorted(AT_BUDGET, key=lambda name: AT_BUDGET[name].error)
print(f"\nat {BUDGET} bits, from the smallest error to the largest: {', '.join(ranking)}")
randomk = AT_BUDGET["randomk"]
print(f"random-k's error {randomk.error:.1f} against its exact variance N/k - 1 = {randomk.theory.error:.1f}")
assert meets(randomk, rows.dtype)
assert ranking[0] == "topk" and ranking[-1] == "randomk" and AT_BUDGET["stc"].error > AT_BUDGET["topk"].error

# %% [markdown]
# At one budget the knobs differ by an order of magnitude: STC's cheap signs buy it many more positions
# than top-k's 32-bit values, but each is rounded to $\pm\mu$, and on this update top-k's few exact
# entries leave the smaller error. QSGD spends its bits on more levels. Random-k pays for unbiasedness
# with a variance of $N/k - 1$, the largest error by far. PowerSGD's smallest message, one rank-1 factor
# pair plus the dense bias, does not fit into 1,000 bits at all: the solver says so instead of sending
# more. Which error matters depends on the method: a biased compressor needs error feedback, an unbiased
# one's variance slows SGD down; equal bits make the comparison of whole runs fair
# (`examples/sweeps/equal_bits.toml`).
#
# **What to remember.**
# - A compressor is three numbers: its bias, its error, and its bits; only the last is what the network
#   sees. Compare methods at equal bits, with each knob solved for the budget, not at hand-picked settings.
# - Unbiased compressors (QSGD, TernGrad, random-k) are right on average but far off in one draw; biased
#   ones (top-k, STC, the scaled sign, PowerSGD) are steady but wrong, and rely on error feedback to send
#   what they dropped later (notebook 2).
# - The theories are of different kinds: bounds (top-k's $1 - k/N$, QSGD's lemma), exact values (random-k,
#   TernGrad, the scaled sign), a floor (PowerSGD's best rank-r error), or nothing (STC, bare signs). A
#   bound can be far above what real vectors give.
# - The encoder, the entropy and the paper's formula disagree; the real encoder is the one to trust. For
#   symbols of a small alphabet (levels, signs, ternary digits) the entropy says how much a better code of
#   them could still save; for floats it leaves out the bits of the values themselves.
