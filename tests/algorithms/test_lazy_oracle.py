"""Torch oracle for the lazy family: the LAQ quantizer, the upload rule and whole GD / QGD / LAG-WK /
LAG-PS / LAQ runs, on softmax regression and on the MLP.

The torch side is written independently, in the shape of the reference code (arXiv 1909.07588): a Python
loop over workers, autograd gradients of ``cross_entropy + (l2 / 2) ||theta||^2`` (the model's logits:
``tests.algorithms.torch_models``), the quantizer in its published form
``q = floor((g - Q_prev + R) / (2 tau R) + 1/2)``, a plain list of past squared steps, and the upload test
written out per worker. fedsim must produce the same iterates (to 1e-10 relative) and exactly the same
upload events.
"""

from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest

from fedsim.algorithms.lazy import LazyConfig, LazyRun, laq_upload_decision, records_to_arrays
from fedsim.kernels.laq import quantize_innovation
from fedsim.models import ModelConfig
from tests.algorithms.torch_models import TorchNetwork, teacher_dataset

pytestmark = pytest.mark.oracle


def torch_quantize(torch, gradient, previous, bits):
    """LAQ quantizer of one worker, as published: returns (Q, codes, R, e = ||Q - g||^2)."""
    radius = (gradient - previous).abs().max()
    if radius == 0:
        return previous.clone(), torch.full_like(previous, 2 ** (bits - 1)), radius, 0.0
    tau = 1.0 / (2 ** bits - 1)
    codes = torch.floor((gradient - previous + radius) / (2 * tau * radius) + 0.5)
    quantized = previous + 2 * tau * radius * codes - radius
    return quantized, codes, radius, float(((quantized - gradient) ** 2).sum())


def _random_pair(seed, n_workers=6, size=500):
    rng = np.random.default_rng(seed)
    gradients = rng.normal(size=(n_workers, size))
    previous = gradients + rng.normal(scale=rng.uniform(0.01, 1.0, size=(n_workers, 1)),
                                      size=gradients.shape)
    previous[0] = gradients[0]                              # R = 0
    return gradients, previous


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 12, 16])
def test_quantizer_matches_torch(torch, bits):
    gradients, previous = _random_pair(bits)
    ours = quantize_innovation(gradients, previous, bits)
    for m in range(len(gradients)):
        quantized, codes, radius, error = torch_quantize(torch, torch.tensor(gradients[m]),
                                                         torch.tensor(previous[m]), bits)
        np.testing.assert_array_equal(ours.codes[m], codes.numpy().astype(np.int64),
                                      err_msg=f"codes of worker {m}")
        np.testing.assert_allclose(ours.quantized[m], quantized.numpy(), rtol=1e-13,
                                   atol=1e-15 * float(radius), err_msg=f"Q of worker {m}")
        assert ours.radius[m] == float(radius)
        np.testing.assert_allclose(ours.error[m], error, rtol=1e-9, atol=1e-300,
                                   err_msg=f"e of worker {m}")


def test_upload_decision_matches_torch(torch):
    bits, n_workers = 3, 40
    gradients, previous = _random_pair(99, n_workers=n_workers, size=200)
    rng = np.random.default_rng(3)
    error_hat = rng.uniform(0, 30, size=n_workers)
    skips = rng.integers(0, 6, size=n_workers)
    threshold = 20.0
    ours = quantize_innovation(gradients, previous, bits)
    got = laq_upload_decision(ours.innovation, threshold, ours.error, error_hat, skips, max_skips=5)
    expected = []
    for m in range(n_workers):
        quantized, _, _, error = torch_quantize(torch, torch.tensor(gradients[m]),
                                                torch.tensor(previous[m]), bits)
        innovation = quantized - torch.tensor(previous[m])
        expected.append(bool(innovation.dot(innovation) >= threshold + 3 * (error + error_hat[m])
                             or skips[m] == 5))
    assert got.tolist() == expected, (got.tolist(), expected)
    assert 0 < sum(expected) < n_workers                    # both outcomes occur


# --- whole runs ------------------------------------------------------------------------------------------

class LazyModelCase(NamedTuple):
    model: ModelConfig
    n_features: int
    n_classes: int
    ragged: bool           # shards of unequal sizes in shuffled order (else contiguous equal blocks)


# Softmax regression from zeros on the LAQ reference's contiguous shards; the MLP from its glorot start on
# ragged shards (fedsim pads them and masks the padding out of each mean).
MODEL_CASES = {
    "softmax": LazyModelCase(ModelConfig(), 20, 5, ragged=False),
    "mlp-relu-7": LazyModelCase(ModelConfig(name="mlp", hidden=(7,), activation="relu"), 12, 4, ragged=True),
    "mlp-tanh-6-5": LazyModelCase(ModelConfig(name="mlp", hidden=(6, 5), activation="tanh"), 12, 4,
                                  ragged=True),
}


def _partition(n_samples, n_workers, ragged):
    """Contiguous equal blocks, or a shuffled split at random distinct cut points (every shard non-empty)."""
    if not ragged:
        return [np.arange(m * n_samples // n_workers, (m + 1) * n_samples // n_workers) for m in range(n_workers)]
    rng = np.random.default_rng(4)
    cuts = np.sort(rng.choice(np.arange(1, n_samples), n_workers - 1, replace=False))
    return np.split(rng.permutation(n_samples), cuts)


def torch_run(torch, data, network, partition, initial, smoothness, method, n_workers, step_size, bits,
              history_length, history_weight, max_skips, l2, iterations):
    """GD / QGD / LAG-WK / LAG-PS / LAQ written out per worker in torch; returns iterates, events,
    objectives."""
    xs = [torch.tensor(data.x_train[part]) for part in partition]
    ys = [torch.tensor(data.y_train[part]) for part in partition]
    theta = torch.tensor(initial)
    last = [torch.zeros_like(theta) for _ in range(n_workers)]
    theta_hat = [theta.clone() for _ in range(n_workers)]       # LAG-PS: where worker m's gradient was taken
    error_hat = [0.0] * n_workers
    clock = [0] * n_workers
    server_sum = torch.zeros_like(theta)
    squared_steps = []
    iterates, events, objectives = [], [], []
    for k in range(iterations):
        recent = squared_steps[-history_length:]
        weighted = sum(history_weight / len(recent) * s for s in recent) if recent else 0.0
        threshold = weighted / (step_size ** 2 * n_workers ** 2)
        row, objective = [], 0.0
        for m in range(n_workers):
            loss, gradient = network.loss_and_grad(torch, theta, xs[m], ys[m], l2)
            objective += float(loss)
            if method == "gd":
                new, error, upload = gradient, 0.0, True
            elif method == "qgd":
                new, _, _, error = torch_quantize(torch, gradient, last[m], bits)
                upload = True
            elif method == "lag-wk":
                change = gradient - last[m]
                new, error = gradient, 0.0
                upload = bool(change.dot(change) >= threshold) or clock[m] == max_skips
            elif method == "lag-ps":   # the server asks: L_m^2 ||theta_hat_m - theta||^2 > H, everyone at k = 0
                offset = theta_hat[m] - theta
                new, error = gradient, 0.0
                upload = k == 0 or bool(smoothness[m] ** 2 * offset.dot(offset) > threshold) \
                    or clock[m] == max_skips
                if upload:
                    theta_hat[m] = theta.clone()
            else:
                new, _, _, error = torch_quantize(torch, gradient, last[m], bits)
                change = new - last[m]
                upload = bool(change.dot(change) >= threshold + 3 * (error + error_hat[m])) \
                    or clock[m] == max_skips
            if upload:
                server_sum = server_sum + (new - last[m])
                last[m], error_hat[m], clock[m] = new, error, 0
            else:
                clock[m] += 1
            row.append(upload)
        new_theta = theta - step_size * server_sum
        squared_steps.append(float(((new_theta - theta) ** 2).sum()))
        theta = new_theta
        iterates.append(theta.numpy().copy())
        events.append(row)
        objectives.append(objective)
    return np.array(iterates), np.array(events), np.array(objectives)


@pytest.mark.parametrize("model_name", list(MODEL_CASES))
@pytest.mark.parametrize("method, bits", [("gd", 4), ("qgd", 4), ("lag-wk", 4), ("lag-ps", 4), ("laq", 4),
                                          ("laq", 2)])
def test_run_matches_torch_iterate_by_iterate(torch, model_name, method, bits):
    case = MODEL_CASES[model_name]
    data = teacher_dataset(300, case.n_features, case.n_classes, seed=0)
    settings = dict(n_workers=10, step_size=0.02, bits=bits, history_length=10, history_weight=0.8,
                    max_skips=8, l2=0.01, iterations=50)
    partition = _partition(len(data.x_train), settings["n_workers"], case.ragged)
    # LAG-PS needs each f_m's smoothness L_m: softmax regression's bound (fedsim's default), for the MLP,
    # which has none, a vector passed in.
    smoothness = np.linspace(0.5, 2.0, settings["n_workers"]) if method == "lag-ps" and case.ragged else None
    iterates = []
    config = LazyConfig(method=method, eval_every=100, **settings)
    run = LazyRun(config, data, partition, smoothness=smoothness, model_config=case.model)
    initial = run.theta.copy()
    records = run.run(callback=lambda k, theta: iterates.append(theta.copy()))
    history = SimpleNamespace(**records_to_arrays(records, config.n_workers))
    network = TorchNetwork.of(case.model, data.n_features, data.n_classes)
    ref_iterates, ref_events, ref_objectives = torch_run(torch, data, network, partition, initial,
                                                         run.smoothness, method, **settings)
    mismatched = np.flatnonzero((history.uploads != ref_events).any(axis=1))
    first = mismatched[:1]
    assert mismatched.size == 0, (f"upload events differ first at iteration {first}:\n"
                                  f"fedsim {history.uploads[first]}\ntorch  {ref_events[first]}")
    for k, (ours, ref) in enumerate(zip(iterates, ref_iterates)):
        scale = np.abs(ref).max()
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10 * scale,
                                   err_msg=f"{model_name}: theta^{k + 1} (fedsim vs torch)")
    np.testing.assert_allclose(history.objective, ref_objectives, rtol=1e-12)
    if method not in ("gd", "qgd"):
        # The comparison must exercise both branches of the rule, and the clock.
        skipped = ~history.uploads[1:]
        assert skipped.any() and history.uploads[1:].any(), history.uploads.sum(axis=1)
