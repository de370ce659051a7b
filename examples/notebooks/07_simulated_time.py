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
# # 7. Simulated time: from exact message sizes to seconds
#
# **Goal.** Rounds and bits do not say which method finishes first. A round lasts as long as the server
# waits for its participants, and each participant's part is a download, some local work and an upload,
# on its own links and its own device. fedsim's `[system]` table gives every client such a device and
# turns each round's exact message sizes into seconds. This notebook takes that clock apart: the devices
# a profile draws, one round recomputed by hand from its record, a deadline that drops the late clients
# (and what they keep), over-selection and availability, and at the end where compression pays:
# accuracy against simulated seconds on a slow link and a fast one. Everything runs on the `synthetic`
# preset (FedProx's Synthetic(1, 1), 30 clients, softmax regression with 610 parameters). It needs no
# dataset and runs in a few seconds; `FULL = True` runs the last comparison for 300 rounds instead of 60.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

from fedsim.compress.bits import dense_bits
from fedsim.config import load_preset
from fedsim.models.base import multiply_adds_per_sample
from fedsim.rng import RunStreams
from fedsim.runs.loop import build_run
from fedsim.system import PROFILES, SystemConfig, arrival_seconds, draw_devices, reachable_clients

FULL = False                                          # True: the last comparison for 300 rounds
FIGURES = os.environ.get("FEDSIM_NOTEBOOK_FIGURES")   # a folder: save this notebook's README figure there
threadpool_limits(1)                                  # one BLAS thread: small products, repeatable timings
SEED = 0                                              # the synthetic preset's seed
ROUNDS = 300 if FULL else 60


def synthetic_run(*settings):
    """The synthetic preset with ``settings`` ("table.key=value", as after `--set`), built, no round run yet."""
    return build_run(load_preset("synthetic", list(settings)), progress=False)


# %% [markdown]
# ## The devices
#
# A profile names four medians: the uplink $u$ and the downlink $d$ (bits/s), the one-way latency $\ell$
# of a message (s) and the compute speed $s$ (multiply-adds/s). `draw_devices` gives each client each
# number as its median $m$ times a lognormal factor,
#
# $$x_k = m \, e^{\sigma z_k}, \qquad z_k \sim \mathcal N(0, 1), \qquad \sigma = \texttt{system.spread} = 0.5,$$
#
# from the stream `"system"` of the run's seed, so the same seed gives the same devices whatever else the
# config changes. With $\sigma = 0.5$, 80% of the clients lie within a factor $e^{\pm 1.28 \cdot 0.5}$,
# 0.53 to 1.9, of the median. A thousand devices, more than a run's 30, to see the shape:

# %%
DRAWN = 1000
DEVICES = {profile: draw_devices(SystemConfig(profile=profile), DRAWN, RunStreams(SEED).generator("system"))
           for profile in ("3g", "wifi")}
UNITS = {"uplink": (1e6, "Mbit/s"), "downlink": (1e6, "Mbit/s"), "latency": (1e-3, "ms"),
         "speed": (1e9, "G multiply-adds/s")}
for profile, devices in DEVICES.items():
    print(f"{profile}:")
    for name, (unit, label) in UNITS.items():
        values = getattr(devices, name) / unit
        low, median, high = np.percentile(values, [10, 50, 90])
        print(f"  {name:8} median {median:6.3g} {label:17} (profile {getattr(PROFILES[profile], name) / unit:g}), "
              f"10% to 90%: {low:.3g} to {high:.3g}")

# %%
fig, axes = plt.subplots(1, 4, figsize=(13, 2.8), constrained_layout=True)
for ax, (name, (unit, label)) in zip(axes, UNITS.items()):
    for profile, devices in DEVICES.items():
        values = getattr(devices, name) / unit
        ax.hist(values, bins=np.geomspace(values.min(), values.max(), 30), alpha=0.6, label=profile)
    ax.set_xscale("log")
    ax.set_xlabel(f"{name} ({label})")
axes[0].set_ylabel(f"devices (of {DRAWN})")
axes[0].legend();

# %% [markdown]
# The speeds of the two profiles coincide: both have the median $10^9$, and the same seed draws the same
# $z_k$ whatever the profile. So the profiles differ only in their medians, and client $k$ is as much
# slower than the median on 3g as on Wi-Fi: runs on two profiles are paired, client by client.

# %%
for name in UNITS:
    ratios = [getattr(DEVICES[p], name) / getattr(PROFILES[p], name) for p in ("3g", "wifi")]
    assert np.allclose(*ratios, rtol=1e-12)
print("x_k / median is the same on 3g and on wifi, for all four numbers of every client")

# %% [markdown]
# ## One round by hand
#
# The clock of a federated round (the docstring of `fedsim.system`), for participant $k$:
#
# $$\text{transfer}_k(b) = \ell_k + \frac{b}{\text{bandwidth}_k}, \qquad
#   a_k = \underbrace{\ell_k + \frac{c_k}{d_k}}_{\text{download}}
#       + \underbrace{\frac{n F}{s_k}}_{\text{local work}}
#       + \underbrace{\ell_k + \frac{b_k}{u_k}}_{\text{upload}},$$
#
# where $c_k$ is what $k$ receives before it trains (its catch-up if it missed rounds, and PowerSGD's
# mid-protocol factor), $n$ the samples of its local work (`local_iterations` x `batch_size`), $F$ the
# model's multiply-adds per sample (those of its products as fedsim computes them: here $xW$ forward and
# $x^\top\delta$ backward, 2 per weight; a first layer passes no gradient down to the input), and $b_k$ the **encoded**
# bits of its update, the real message's length. The server waits until it holds the updates it needs,
# here all of them, $w = \max_k a_k$; then the new model, encoded in $B$ bits, reaches every participant:
#
# $$\text{round} = w + \max_k \left(\ell_k + \frac{B}{d_k}\right).$$
#
# One round of the preset (STC up and down) on the `"3g"` profile. Its devices are the ones drawn above
# (the first 30 of them: the draw fills client after client):

# %%
run = synthetic_run('system.profile="3g"')
record = run.step()
devices = run.clock.devices
assert all(np.array_equal(mine, drawn[:run.config.n_clients]) for mine, drawn in zip(devices, DEVICES["3g"]))
participants = np.flatnonzero(run.clients.last_sync.dense() == 1)            # who took part: everyone
K = len(participants)
print({key: record[key] for key in ("participants", "bits_up", "bits_down", "bits_down_catch_up",
                                    "simulated_seconds", "dropped")})

# %% [markdown]
# The record holds the round's total bits. Each participant's own message length comes from the encoder:
# a twin run (the same seed) trains the same updates, and the preset's upstream compressor encodes them;
# their lengths add up to the record's `bits_up`. Downstream, every participant received the same
# broadcast, and in round 1 no one has anything to catch up.

# %%
twin = synthetic_run('system.profile="3g"')
updates = twin.next_updates()
messages, _ = twin.compressors["up"].compress(updates, twin.up_state, np.random.default_rng(SEED))
up_bits = messages.encoded_bits                                       # b_k
assert up_bits.sum() == record["bits_up"] and record["bits_down_catch_up"] == 0
broadcast_bits = record["bits_down"] // K                             # B
assert broadcast_bits * K == record["bits_down"]
samples = run.config.local_iterations * run.config.batch_size        # n
macs = multiply_adds_per_sample(run.model)                            # F
print(f"b_k from {up_bits.min()} to {up_bits.max()} bits (STC: its positions' code varies), B = "
      f"{broadcast_bits} bits, n = {samples}, F = {macs} (2 x 60 x 10)")

# %%
uplink, downlink, latency, speed = (values[participants] for values in devices)      # u, d, l, s
download = latency + 0 / downlink                                     # c_k = 0: no catch-up in round 1
local_work = samples * macs / speed
upload = latency + up_bits / uplink
arrival = download + local_work + upload                              # a_k
wait = arrival.max()                                                  # w
broadcast = np.max(latency + broadcast_bits / downlink)
assert np.allclose(arrival, arrival_seconds(devices, participants, 0, samples, macs, up_bits), rtol=1e-15)
assert np.isclose(wait + broadcast, record["simulated_seconds"], rtol=1e-12, atol=0)
slowest = participants[arrival.argmax()]
print(f"wait {wait:.4f} s + broadcast {broadcast:.4f} s = {wait + broadcast:.4f} s = the record's "
      f"{record['simulated_seconds']:.4f} s")
print(f"the slowest client, {slowest}: latency {devices.latency[slowest] * 1e3:.0f} ms, uplink "
      f"{devices.uplink[slowest] / 1e6:.2f} Mbit/s; at most {np.max(up_bits / uplink) * 1e3:.2f} ms of "
      f"any upload is bits (the rest is latency), local work at most {local_work.max() * 1e3:.3f} ms")

# %% [markdown]
# Each participant's round, in the order of arrival: the wait is the last bar's end.

# %%
order = np.argsort(arrival)
fig, ax = plt.subplots(figsize=(8, 4))
left = np.zeros(K)
for part, seconds in (("download", download), ("local work", local_work), ("upload", upload)):
    ax.barh(np.arange(K), seconds[order], left=left, label=part)
    left += seconds[order]
ax.axvline(wait, color="k", lw=1)
ax.set_yticks(np.arange(K), participants[order], fontsize=6)
ax.set_ylabel("client")
ax.set_xlabel("seconds from the round's start")
ax.legend(loc="lower right");

# %% [markdown]
# On this small model the latencies set the clock: an STC message of a few hundred bits takes about a
# millisecond or less on the uplinks of 3g, against two latencies of 120 ms (median) each, and the local
# work of ten samples takes microseconds. The round lasts as long as the client with the longest latencies.

# %% [markdown]
# ## A deadline
#
# With `system.deadline` $= D$, the server stops waiting at $D$ and aggregates only the updates it
# holds by then; the round takes $D$ plus the broadcast, which still reaches every participant, late or
# not. A late client keeps its whole update: under error feedback its residual becomes
# $A_k \leftarrow A_k + \Delta W_k$ (none of it was delivered, so all of it waits for its next round);
# without error feedback the update is lost.
#
# FedAvg makes this easy to see: every update is sent dense, $32 \times 610 = 19{,}520$ bits, so each
# client's arrival can be predicted from its device alone, before the round. With
# `federated.accumulate_up = true` FedAvg keeps a residual, which a delivered dense message empties.
# The deadline: the median predicted arrival, so that about half the clients miss it.

# %%
FEDAVG_3G = ['federated.method="fedavg"', "federated.accumulate_up=true", 'system.profile="3g"']
clients = np.arange(run.config.n_clients)
P = run.server.weights.size
predicted = arrival_seconds(devices, clients, 0, samples, macs, dense_bits(P))
deadline = round(float(np.median(predicted)), 3)
late = predicted > deadline
print(f"predicted arrivals {predicted.min():.3f} to {predicted.max():.3f} s; deadline {deadline} s; "
      f"predicted late: clients {clients[late].tolist()}")

# %%
WITH_DEADLINE = FEDAVG_3G + [f"system.deadline={deadline}"]
updates = synthetic_run(*WITH_DEADLINE).next_updates()                # what round 1 trains, from a twin
run = synthetic_run(*WITH_DEADLINE)
record = run.step()
residual = run.clients.residual[clients]
kept_nothing = np.any(residual != 0, axis=1)
assert record["dropped"] == late.sum() and np.array_equal(kept_nothing, late)
assert np.array_equal(residual[late], updates[late])                  # A_k = 0 + dW_k, to the bit
broadcast = np.max(devices.latency + record["bits_down"] / len(clients) / devices.downlink)
assert record["bits_down"] == dense_bits(P) * len(clients)            # every participant got the broadcast
assert np.isclose(record["simulated_seconds"], deadline + broadcast, rtol=1e-12, atol=0)
print(f"dropped {record['dropped']}: exactly the predicted ones; their residuals hold their whole updates, "
      f"the kept clients' residuals are 0; the round: {deadline} + {broadcast:.4f} s")

# %% [markdown]
# The drops are not random: the devices come from the seed, and so does everything else. The same seed
# drops the same clients in every run; another seed draws other devices. With every client taking part
# every round and every message of the same size, the same clients are late in every round, and their
# residuals only grow: a fixed deadline silences the slow devices for good. (`system.round_spread` $> 0$
# lets each client's links and speed vary from round to round around its own, so that others are late.)

# %%
def dropped_and_residual(seed, rounds=5):
    run = synthetic_run(*WITH_DEADLINE, f"seed={seed}")
    history = run.run(rounds)
    return [r["dropped"] for r in history], run.clients.residual[clients]


first, again, other = dropped_and_residual(SEED), dropped_and_residual(SEED), dropped_and_residual(SEED + 1)
assert first[0] == again[0] and np.array_equal(first[1], again[1])
assert np.array_equal(np.any(first[1] != 0, axis=1), late)            # the same late clients in round 5
growth = np.linalg.norm(first[1][late], axis=1) / np.linalg.norm(residual[late], axis=1)
assert growth.min() > 1
print(f"seed {SEED}: dropped per round {first[0]}; again: {again[0]}; seed {SEED + 1}: {other[0]}")
print(f"after 5 rounds a late client's residual is {growth.min():.1f} to {growth.max():.1f} times its "
      f"first update's size")

# %% [markdown]
# ## Over-selection and availability
#
# `system.over_select` $= 1.5$: the server samples $\lceil 1.5 \times \text{needed} \rceil$ clients and
# keeps the first `needed` to arrive, as production cross-device systems do; the wait is the `needed`-th
# arrival, and the rest are dropped. With half the clients needed (15), it samples 23:

# %%
run = synthetic_run(*FEDAVG_3G, "federated.participation_rate=0.5", "system.over_select=1.5")
record = run.step()
sampled = np.flatnonzero(run.clients.last_sync.dense() == 1)
arrival = arrival_seconds(devices, sampled, 0, samples, macs, dense_bits(P))
wait = np.sort(arrival)[run.needed - 1]                               # the needed-th arrival
broadcast = np.max(devices.latency[sampled] + dense_bits(P) / devices.downlink[sampled])
assert record["participants"] == len(sampled) == 23 and record["dropped"] == 23 - run.needed == 8
assert np.isclose(record["simulated_seconds"], wait + broadcast, rtol=1e-12, atol=0)
for over_select in (1.0, 1.5):
    history = synthetic_run(*FEDAVG_3G, "federated.participation_rate=0.5",
                            f"system.over_select={over_select}").run(20)
    print(f"over_select {over_select}: {history[-1]['simulated_seconds'] / 20:.3f} s per round, "
          f"{np.mean([r['dropped'] for r in history]):.0f} dropped per round (20 rounds)")

# %% [markdown]
# `system.availability` $= q$: each sampled client is reachable with probability $q$, one uniform draw
# $U_k < q$ per round and client from the stream `("system", round)`. An unreachable client takes no part:
# it receives nothing, trains nothing, keeps its state, and counts in `dropped`. A run without it samples
# the same clients (the sampling has its own stream); the draw by hand says which of them were reachable:

# %%
HALF = FEDAVG_3G + ["federated.participation_rate=0.5"]
everyone = synthetic_run(*HALF)
everyone.step()
sampled = np.flatnonzero(everyone.clients.last_sync.dense() == 1)
run = synthetic_run(*HALF, "system.availability=0.8")
record = run.step()
reachable = RunStreams(SEED).generator("system", 1).random(len(sampled)) < 0.8       # U_k < q
assert np.array_equal(reachable, reachable_clients(run.clock.config, RunStreams(SEED), 1, sampled))
assert np.array_equal(np.flatnonzero(run.clients.last_sync.dense() == 1), sampled[reachable])
assert record["participants"] == len(sampled) and record["dropped"] == np.count_nonzero(~reachable)
assert record["bits_down"] == dense_bits(P) * np.count_nonzero(reachable)   # nothing sent to the others
history = run.run(20)                                                 # round 1 and 19 more
print(f"round 1: clients {sampled[~reachable].tolist()} unreachable; dropped per round over 20 rounds: "
      f"{[r['dropped'] for r in history]} (mean {np.mean([r['dropped'] for r in history]):.1f}, "
      f"expected {0.2 * len(sampled):.0f})")

# %% [markdown]
# ## Where compression pays
#
# A FedAvg round of the 610-parameter model sends 19,520 bits each way: 20 ms on a 1 Mbit/s uplink,
# small beside the latencies. A larger model makes the bits count: an MLP 60-200-10 (14,210 parameters,
# 454,720 bits dense) spends about half a second on the median 3g uplink. FedAvg against STC (up and down),
# both models, on `"3g"` (1 up, 4 down Mbit/s, 120 ms) and `"wifi"` (40 up, 90 down, 20 ms), for
# `ROUNDS` rounds each:

# %%
MODELS = {"softmax, 610 parameters": [],
          "MLP 60-200-10, 14,210 parameters": ['model.name="mlp"', "model.hidden=[200]"]}
METHODS = ("fedavg", "stc_updown")
PROFILE_NAMES = ("3g", "wifi")
HISTORIES = {}
for model, model_settings in MODELS.items():
    for method in METHODS:
        for profile in PROFILE_NAMES:
            HISTORIES[model, method, profile] = synthetic_run(
                f"federated.rounds={ROUNDS}", f'federated.method="{method}"', f'system.profile="{profile}"',
                *model_settings).run()
        accuracies = [[r["test_accuracy"] for r in HISTORIES[model, method, p]] for p in PROFILE_NAMES]
        assert accuracies[0] == accuracies[1]                         # without a deadline: the same training


def seconds_to(history, target):
    """Simulated seconds at the first record with test accuracy >= target (None: not reached)."""
    return next((r["simulated_seconds"] for r in history if r["test_accuracy"] >= target), None)


TARGET = 0.8
print(f"{'':34} {'method':11}" + "".join(f"{p + ': s/round':>15}{'to ' + str(TARGET):>9}" for p in PROFILE_NAMES))
for (model, method), runs in {(m, k): [HISTORIES[m, k, p] for p in PROFILE_NAMES]
                              for m in MODELS for k in METHODS}.items():
    cells = ""
    for history in runs:
        reached = seconds_to(history, TARGET)
        cells += f"{history[-1]['simulated_seconds'] / ROUNDS:15.3f}" + (f"{reached:9.1f}" if reached else f"{'-':>9}")
    print(f"{model:34} {method:11}{cells}")

# %% [markdown]
# The accuracy on each profile is the same round by round (asserted above): without a deadline the
# profile changes only the clock. Accuracy against simulated seconds:

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True, constrained_layout=True)
STYLES = {model: style for model, style in zip(MODELS, ("-", "--"))}
COLORS = {"fedavg": "tab:blue", "stc_updown": "tab:orange"}
for ax, profile in zip(axes, PROFILE_NAMES):
    for model in MODELS:
        for method in METHODS:
            history = HISTORIES[model, method, profile]
            ax.plot([r["simulated_seconds"] for r in history], [r["test_accuracy"] for r in history],
                    STYLES[model], color=COLORS[method], label=f"{method}, {model}")
    ax.set_title(f'"{profile}": {PROFILES[profile].uplink / 1e6:g} Mbit/s up, '
                 f'{PROFILES[profile].downlink / 1e6:g} down, {PROFILES[profile].latency * 1e3:g} ms')
    ax.set_xlabel("simulated seconds")
axes[0].set_ylabel("test accuracy")
axes[0].legend(fontsize=8, loc="lower right")
fig.suptitle(f"Synthetic(1, 1), 30 clients, {ROUNDS} rounds: accuracy against simulated time")
if FIGURES:
    fig.savefig(Path(FIGURES) / "07_simulated_time.png", dpi=80, bbox_inches="tight")

# %%
per_round = {key: history[-1]["simulated_seconds"] / ROUNDS for key, history in HISTORIES.items()}
softmax, mlp = MODELS
ratio = {(model, profile): per_round[model, "fedavg", profile] / per_round[model, "stc_updown", profile]
         for model in MODELS for profile in PROFILE_NAMES}
print("a FedAvg round costs, in STC rounds: " + ", ".join(f"{model.split(',')[0]} on {profile} {value:.2f}"
                                                          for (model, profile), value in ratio.items()))
assert ratio[mlp, "3g"] > 2 and max(ratio[softmax, "3g"], ratio[softmax, "wifi"], ratio[mlp, "wifi"]) < 1.25

# %% [markdown]
# Compression pays where the bits are a large part of the clock: the MLP on the 1 Mbit/s uplink, where a
# dense update's transfer takes as long as the latencies or longer, and a FedAvg round costs more than
# twice an STC round (the ratios above). On the small model, or on Wi-Fi, latency sets the clock, a
# compressed round costs nearly what a dense one does, and the method that needs fewer rounds is also the
# one that needs fewer seconds. Which one that is depends on the run (here, a short run of one seed); the
# repository's README measures the same question on Fashion-MNIST (`examples/sweeps/simulated_time_*.toml`).
#
# **What to remember.**
# - A round's time is the slowest kept participant's download, local work and upload, plus the
#   broadcast; each transfer is a latency plus the encoded bits over the bandwidth. fedsim computes it
#   from the real messages' lengths, and one round can be recomputed from the record by hand.
# - The devices come from the run's seed: the same seed gives the same devices, the same late clients and
#   the same unreachable ones; two profiles differ only in their medians.
# - A deadline or over-selection shortens the wait by dropping updates; a dropped client keeps its whole
#   update in its residual under error feedback, and with fixed devices the same clients stay late.
# - Compressing the update pays in seconds only where the bits, not the latency, set the clock: large
#   models on slow links.
