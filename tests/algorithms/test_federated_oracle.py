"""Whole federated rounds against an independent torch implementation.

Given the same partition, batch order (replayed from fedsim's batch log) and initial weights, the torch
rounds below recompute client training with autograd, compression with ``torch.topk`` and error feedback,
aggregation and the server update. fedsim's server parameters must match after each of 5 rounds.
"""

import math

import numpy as np
import pytest

from fedsim.algorithms.federated import FederatedConfig, FederatedRun
from fedsim.data.dataset import Dataset
from fedsim.data.partition import classes_per_client
from fedsim.models import ModelConfig

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


def torch_compress_per_tensor(torch, kind, vector, p, boundary):
    return torch.cat([torch_compress(torch, kind, vector[:boundary], p),
                      torch_compress(torch, kind, vector[boundary:], p)])


def torch_rounds(torch, dataset, run_log, sizes, config, up, down, aggregation, boundary, initial):
    """Yield the server weights after each round, computed in torch from the replayed batches."""
    x_all = torch.tensor(dataset.x_train)
    y_all = torch.tensor(dataset.y_train)
    F, C = dataset.n_features, dataset.n_classes
    n_params = initial.size
    server = torch.tensor(initial)
    client_residual = {}
    server_residual = torch.zeros(n_params, dtype=x_all.dtype)
    for t in range(1, ROUNDS + 1):
        steps = [entry for entry in run_log if entry[0] == t]
        participants = steps[0][1]
        sent = []
        for row, client in enumerate(participants):
            w = server.clone()
            for _, _, samples, count in steps:
                batch = torch.tensor(samples[row, : count[row]])
                w_param = w.clone().requires_grad_(True)
                logits = x_all[batch] @ w_param[: F * C].reshape(F, C) + w_param[F * C:]
                loss = torch.nn.functional.cross_entropy(logits, y_all[batch])
                (grad,) = torch.autograd.grad(loss, w_param)
                w = w - config.lr * grad
            update = w - server
            if up != "identity" and up != "sign":  # error accumulation on the client
                accumulated = client_residual.get(int(client), torch.zeros_like(update)) + update
                message = torch_compress_per_tensor(torch, up, accumulated, config.p_up, boundary)
                client_residual[int(client)] = accumulated - message
            else:
                message = torch_compress_per_tensor(torch, up, update, config.p_up, boundary)
            sent.append(message)
        sent = torch.stack(sent)
        if aggregation == "mean":
            aggregate = sent.mean(0)
        elif aggregation == "weighted":
            n = torch.tensor(sizes[participants], dtype=x_all.dtype)
            aggregate = (n[:, None] * sent).sum(0) / n.sum()
        else:
            aggregate = config.lr * torch.sign(sent.sum(0))
        if down == "identity":
            message = aggregate
        else:
            accumulated = server_residual + aggregate
            message = torch_compress_per_tensor(torch, down, accumulated, config.p_down, boundary)
            server_residual = accumulated - message
        server = server + message
        yield t, server


@pytest.mark.oracle
@pytest.mark.parametrize("participation", [1.0, 0.5])
@pytest.mark.parametrize("method, extra, up, down, aggregation", [
    ("stc_updown", {}, "stc", "stc", "mean"),
    ("topk_updown", {}, "topk", "topk", "mean"),
    ("fedavg", {"local_iterations": 3}, "identity", "identity", "weighted"),
    ("signsgd", {"lr": 0.001}, "sign", "identity", "majority"),
])
def test_server_weights_match_torch_round_by_round(torch, small_dataset, method, extra, up, down,
                                                   aggregation, participation):
    dataset = small_dataset
    rng = np.random.default_rng(7)
    # Non-IID: two classes per client, unequal sizes (balancedness < 1), so weighting matters.
    parts = classes_per_client(dataset.y_train, N_CLIENTS, 2, 0.8, rng)
    settings = dict(method=method, rounds=ROUNDS, n_clients=N_CLIENTS, participation_rate=participation,
                    batch_size=32, p_up=0.01, p_down=0.02, lr=0.05)
    settings.update(extra)
    config = FederatedConfig(**settings)
    # From zero weights every first-round b-gradient is a multiple of 1 / batch_size: exact ties that
    # rounding order decides. Random initial weights leave only genuine ties.
    run = FederatedRun(config, dataset, parts, seed=3, model_config=ModelConfig(init="glorot"), trace_batches=True)
    spec = run.model.spec
    boundary = spec.sizes[0]
    sizes = run.clients.sizes
    initial = run.server.weights.copy()
    fedsim_weights = []
    for _ in range(ROUNDS):
        run.step()
        fedsim_weights.append(run.server.weights.copy())
    oracle = torch_rounds(torch, dataset, run.batch_trace, sizes, config, up, down, aggregation, boundary,
                          initial)
    for (t, expected), actual in zip(oracle, fedsim_weights):
        expected = expected.numpy()
        scale = np.abs(expected).max()
        assert scale > 0, "the oracle's model did not move"
        np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-5 * scale,
                                   err_msg=f"{method}, participation {participation}, round {t}")
