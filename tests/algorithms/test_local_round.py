"""A federated round's local training through the model's reusable batch gradient (``batch_gradient`` of
softmax regression and of the MLP) is bitwise the round through its general ``loss_and_grad``: the server
model, the client momenta and the records, over ragged clients (epochs ending mid-round), momentum, L2, a
learning-rate schedule and partial participation; and the same on 1 and 2 BLAS threads."""

from __future__ import annotations

import dataclasses

import pytest

from fedsim.algorithms.federated import FederatedConfig, FederatedRun
from fedsim.data.load import load_dataset
from fedsim.models import MLP, ModelConfig, SoftmaxRegression
from fedsim.models.mlp import MLPBatchGradient
from fedsim.models.softmax import BatchGradient
from fedsim.runs import strip_wall_time
from fedsim.runs.provenance import pinned_threads
from tests.conftest import assert_bitwise


@dataclasses.dataclass(frozen=True)
class GeneralSoftmax(SoftmaxRegression):
    """Softmax regression without the optional batch_gradient: the run calls loss_and_grad each step."""

    batch_gradient = None


@dataclasses.dataclass(frozen=True)
class GeneralMLP(MLP):
    """The MLP without the optional batch_gradient."""

    batch_gradient = None


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", synthetic_devices=8, seed=3)


SETTINGS = [
    dict(method="fedavg", batch_size=16, local_iterations=9),
    dict(method="stc_up", batch_size=5, local_iterations=4, participation_rate=0.5, momentum=0.9, l2=0.01,
         lr_schedule="exponential", lr_decay=0.8),
    dict(method="topk_updown", batch_size=7, local_iterations=6, dtype="float64", momentum=0.5,
         lr_schedule="step", lr_decay=0.5, lr_step_epochs=1),
]


def run_rounds(dataset, general: bool, settings: dict, rounds: int = 3, model_config=None):
    config = FederatedConfig(n_clients=len(dataset.client_indices), rounds=rounds, lr=0.05, **settings)
    run = FederatedRun(config, dataset, dataset.client_indices, seed=4, model_config=model_config or ModelConfig())
    if general:
        model = run.model
        run.model = (GeneralSoftmax(model.n_features, model.n_classes, model.l2) if isinstance(model, SoftmaxRegression)
                     else GeneralMLP(model.n_features, model.hidden, model.n_classes, model.activation, model.l2,
                                     model.dtype))
    run.run()
    return run


MODELS = {"softmax": (ModelConfig(), BatchGradient),
          "mlp": (ModelConfig(name="mlp", hidden=(8,), activation="tanh"), MLPBatchGradient)}


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("settings", SETTINGS)
def test_batch_gradient_round_equals_general_round_bitwise(synthetic, settings, model):
    model_config, prepared_type = MODELS[model]
    prepared = run_rounds(synthetic, False, settings, model_config=model_config)
    general = run_rounds(synthetic, True, settings, model_config=model_config)
    key = ("gradient", prepared.config.participants_per_round)
    assert isinstance(prepared._local_buffers[key], prepared_type)
    assert not isinstance(general._local_buffers[key], prepared_type)
    assert prepared.clients.epoch.max() >= 1                 # epochs ended within the rounds
    assert_bitwise(prepared.server.weights, general.server.weights, "server weights")
    if prepared.clients.momentum is not None:
        assert_bitwise(prepared.clients.momentum.dense(), general.clients.momentum.dense(), "client momenta")
    assert strip_wall_time(prepared.history) == strip_wall_time(general.history)


def test_local_rounds_same_on_one_and_two_blas_threads(synthetic):
    weights = []
    for threads in (1, 2):
        with pinned_threads(threads):
            weights.append(run_rounds(synthetic, False, SETTINGS[1]).server.weights)
    assert_bitwise(weights[1], weights[0], "server weights on 2 threads")
