"""Whole federated rounds against an independent torch implementation, for each model.

Given the same partition, batch order (replayed from fedsim's batch log) and initial weights, the torch
rounds below recompute client training with autograd (``tests.algorithms.torch_models``: softmax regression
or the MLP over views of one flat vector), compression with a stable sort and error feedback, aggregation
and the server update. fedsim's server parameters and each participant's training loss must match after
each of 5 rounds: softmax regression in float32 on images, the MLP (relu and tanh, one and two hidden
layers) in float64 on small synthetic data.
"""

import math
from typing import NamedTuple

import numpy as np
import pytest

from fedsim.algorithms.federated import FederatedConfig, FederatedRun
from fedsim.data.dataset import Dataset
from fedsim.data.partition import classes_per_client, dirichlet
from fedsim.models import ModelConfig
from tests.algorithms.torch_models import TorchNetwork, teacher_dataset

ROUNDS = 5
N_CLIENTS = 10


@pytest.fixture(scope="module")
def small_dataset():
    """3,000 class-structured 28 x 28 images made here (no download), through the STC pipeline (32 x 32,
    normalized): the shapes and value ranges of the seed experiment's data."""
    from fedsim.data.preprocess import PIXEL_STATISTICS, stc_pipeline
    from tests.conftest import synthetic_images

    images, labels = synthetic_images(3000, seed=11)
    stats = PIXEL_STATISTICS["fashion-mnist"]
    x = stc_pipeline(images, mean=stats.mean, std=stats.std)
    return Dataset("synthetic-images", x[:2000], labels[:2000], x[2000:], labels[2000:3000], 10)


@pytest.fixture(scope="module")
def tiny_dataset():
    """800 samples of 12 features in 4 classes: small enough that an MLP round costs milliseconds."""
    return teacher_dataset(800, 12, 4, seed=5)


class ModelCase(NamedTuple):
    dataset: str           # the fixture holding its data
    model: ModelConfig
    settings: dict         # FederatedConfig settings of this model's runs
    tolerance: float       # allowed difference, relative to the largest parameter


# Softmax regression as the seed experiment runs it (float32: torch agrees to float32 rounding); the MLP in
# float64, where the two implementations agree to accumulated double rounding. From zero weights every
# first-round b-gradient is a multiple of 1 / batch_size: exact ties that rounding order decides, so the
# weights start random (glorot) and only genuine ties are left.
MODEL_CASES = {
    "softmax": ModelCase("small_dataset", ModelConfig(init="glorot"),
                         dict(batch_size=32, p_up=0.01, p_down=0.02, lr=0.05), 2e-5),
    "mlp-relu-7": ModelCase("tiny_dataset", ModelConfig(name="mlp", hidden=(7,), activation="relu"),
                            dict(batch_size=16, p_up=0.1, p_down=0.2, lr=0.2, dtype="float64"), 1e-12),
    "mlp-tanh-6-5": ModelCase("tiny_dataset", ModelConfig(name="mlp", hidden=(6, 5), activation="tanh"),
                              dict(batch_size=16, p_up=0.1, p_down=0.2, lr=0.2, dtype="float64"), 1e-12),
}


def torch_compress(torch, kind, tensor, p):
    """STC / top-k / sign of one flat tensor.

    The server's aggregate of ternary messages has genuinely tied magnitudes (entries that one client's
    +-mu alone set), so the selection follows fedsim's documented rule, ties to the lowest index, through
    a stable descending sort rather than torch.topk, whose order among ties is unspecified.
    """
    if kind == "identity":
        return tensor.clone()
    if kind == "sign":
        return torch.sign(tensor)
    k = min(math.ceil(p * tensor.numel()), int(torch.count_nonzero(tensor)))
    magnitudes, order = torch.sort(tensor.abs(), descending=True, stable=True)
    magnitudes, positions = magnitudes[:k], order[:k]
    out = torch.zeros_like(tensor)
    if kind == "topk":
        out[positions] = tensor[positions]
    else:  # stc: mu * sign on the k largest magnitudes
        out[positions] = magnitudes.mean() * torch.sign(tensor[positions])
    return out


def torch_compress_per_tensor(torch, kind, vector, p, tensor_sizes):
    return torch.cat([torch_compress(torch, kind, tensor, p) for tensor in torch.split(vector, tensor_sizes)])


def torch_rounds(torch, dataset, network, run_log, sizes, config, up, down, aggregation, initial):
    """Yield (round, server weights, each participant's loss at its last local step) after each round,
    computed in torch from the replayed batches. Clients run SGD with L2 and momentum as ``config`` says
    (v <- momentum v + g + l2 w, v kept per client across rounds; w <- w - lr v)."""
    x_all = torch.tensor(dataset.x_train, dtype=torch.float64 if config.dtype == "float64" else torch.float32)
    y_all = torch.tensor(dataset.y_train)
    tensor_sizes = network.tensor_sizes
    server = torch.tensor(initial)
    client_residual, client_momentum = {}, {}
    server_residual = torch.zeros_like(server)
    for t in range(1, ROUNDS + 1):
        steps = [entry for entry in run_log if entry[0] == t]
        participants = steps[0][1]
        sent, losses = [], []
        for row, client in enumerate(participants):
            w = server.clone()
            velocity = client_momentum.get(int(client), torch.zeros_like(w))
            for _, _, samples, count in steps:
                batch = torch.tensor(samples[row, : count[row]])
                loss, grad = network.loss_and_grad(torch, w, x_all[batch], y_all[batch])
                velocity = config.momentum * velocity + (grad + config.l2 * w)   # v <- momentum v + g + l2 w
                w = w - config.lr * velocity                                      # (momentum 0: v = g + l2 w)
            client_momentum[int(client)] = velocity
            losses.append(float(loss))
            update = w - server
            if up != "identity" and up != "sign":  # error accumulation on the client
                accumulated = client_residual.get(int(client), torch.zeros_like(update)) + update
                message = torch_compress_per_tensor(torch, up, accumulated, config.p_up, tensor_sizes)
                client_residual[int(client)] = accumulated - message
            else:
                message = torch_compress_per_tensor(torch, up, update, config.p_up, tensor_sizes)
            sent.append(message)
        sent = torch.stack(sent)
        if aggregation == "mean":
            aggregate = sent.mean(0)
        elif aggregation == "weighted":
            n = torch.tensor(sizes[participants], dtype=sent.dtype)
            aggregate = (n[:, None] * sent).sum(0) / n.sum()
        else:
            aggregate = config.lr * torch.sign(sent.sum(0))
        if down == "identity":
            message = aggregate
        else:
            accumulated = server_residual + aggregate
            message = torch_compress_per_tensor(torch, down, accumulated, config.p_down, tensor_sizes)
            server_residual = accumulated - message
        server = server + message
        yield t, server, losses


def assert_rounds_match_torch(torch, dataset, parts, config, model_config, up, down, aggregation, tolerance,
                              what):
    """Run ``config`` for ROUNDS rounds in fedsim and in torch; compare the server weights and the
    participants' losses round by round, to ``tolerance`` times the largest weight (the largest loss)."""
    run = FederatedRun(config, dataset, parts, seed=3, model_config=model_config, trace_batches=True)
    initial = run.server.weights.copy()
    fedsim_weights = []
    for _ in range(ROUNDS):
        run.step()
        fedsim_weights.append(run.server.weights.copy())
    network = TorchNetwork.of(model_config, dataset.n_features, dataset.n_classes)
    oracle = torch_rounds(torch, dataset, network, run.batch_trace, run.clients.sizes, config, up, down,
                          aggregation, initial)
    compared = 0
    for (t, expected, losses), actual, record in zip(oracle, fedsim_weights, run.history):
        expected = expected.numpy()
        assert np.abs(expected - initial).max() > 0, "the oracle's model did not move"
        np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance * np.abs(expected).max(),
                                   err_msg=f"{what}, round {t}: server weights")
        np.testing.assert_allclose(record["client_losses"], losses, rtol=0,
                                   atol=tolerance * max(np.abs(losses)),
                                   err_msg=f"{what}, round {t}: client losses")
        compared += 1
    assert compared == ROUNDS


@pytest.mark.oracle
@pytest.mark.parametrize("model_name", list(MODEL_CASES))
@pytest.mark.parametrize("participation", [1.0, 0.5])
@pytest.mark.parametrize("method, extra, up, down, aggregation", [
    ("stc_updown", {}, "stc", "stc", "mean"),
    ("topk_updown", {}, "topk", "topk", "mean"),
    ("fedavg", {"local_iterations": 3}, "identity", "identity", "weighted"),
    ("signsgd", {"lr": 0.001}, "sign", "identity", "majority"),
])
def test_server_weights_match_torch_round_by_round(request, torch, model_name, method, extra, up, down,
                                                   aggregation, participation):
    case = MODEL_CASES[model_name]
    dataset = request.getfixturevalue(case.dataset)
    rng = np.random.default_rng(7)
    # Non-IID: two classes per client, unequal sizes (balancedness < 1), so weighting matters.
    parts = classes_per_client(dataset.y_train, N_CLIENTS, 2, 0.8, rng)
    settings = dict(method=method, rounds=ROUNDS, n_clients=N_CLIENTS, participation_rate=participation,
                    **case.settings)
    settings.update(extra)
    assert_rounds_match_torch(torch, dataset, parts, FederatedConfig(**settings), case.model, up, down,
                              aggregation, case.tolerance,
                              f"{model_name}: {method}, participation {participation}")


@pytest.mark.oracle
@pytest.mark.parametrize("model_name", ["mlp-relu-7", "mlp-tanh-6-5"])
@pytest.mark.parametrize("method, up, down, aggregation", [
    ("fedavg", "identity", "identity", "weighted"),
    ("stc_updown", "stc", "stc", "mean"),
])
def test_client_momentum_and_weight_decay_on_a_dirichlet_split_match_torch(request, torch, model_name,
                                                                          method, up, down, aggregation):
    """Each client's own momentum buffer (kept across the rounds it misses) and L2 term, on a Dirichlet
    label-skewed split, with 3 local iterations and half the clients per round."""
    case = MODEL_CASES[model_name]
    dataset = request.getfixturevalue(case.dataset)
    parts = dirichlet(dataset.y_train, N_CLIENTS, 0.5, np.random.default_rng(2), min_size=16)
    settings = dict(case.settings, method=method, rounds=ROUNDS, n_clients=N_CLIENTS, participation_rate=0.5,
                    local_iterations=3, momentum=0.7, l2=0.01)
    assert_rounds_match_torch(torch, dataset, parts, FederatedConfig(**settings), case.model, up, down,
                              aggregation, case.tolerance, f"{model_name}: {method} with momentum and l2")
