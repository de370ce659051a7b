"""A federated run on a population drawn on demand (data.synthetic_on_demand): each round generates only its
participants' data, bitwise what the same data held whole would give, and resumes bit for bit."""

import json
from dataclasses import dataclass

import numpy as np
import pytest

from fedsim.algorithms.federated import FederatedConfig, FederatedRun
from fedsim.cli import main
from fedsim.config import ConfigError, config_to_dict, load_preset
from fedsim.data.dataset import Dataset
from fedsim.data.synthetic import LognormalCounts, SyntheticPopulation, population_dataset
from fedsim.runs import strip_wall_time
from tests.conftest import assert_bitwise

DEVICES = 40
# Epochs end inside rounds (25 steps of 10 rows against 40-240 training rows per device), the learning rate
# follows each client's epochs, momentum and both residuals are client and server state.
CONFIG = FederatedConfig(method="stc_updown", n_clients=DEVICES, participation_rate=0.25, rounds=6,
                         local_iterations=25, batch_size=10, lr=0.05, momentum=0.5, lr_schedule="exponential",
                         lr_decay=0.9, p_up=0.05, p_down=0.1, eval_train_samples=300)


@dataclass(frozen=True)
class CountingPopulation(SyntheticPopulation):
    """A population that records which devices it generated."""

    def device(self, k):
        self.asked.append(int(k))
        return super().device(k)

    @property
    def asked(self) -> list:
        if "_asked" not in self.__dict__:
            object.__setattr__(self, "_asked", [])
        return self.__dict__["_asked"]


def _population():
    return SyntheticPopulation(1.0, 1.0, DEVICES, seed=5, samples=LognormalCounts(max_per_device=300))


def _held(population) -> Dataset:
    """The same population's data generated whole: the devices' training rows, client k's at its offsets."""
    on_demand = population_dataset(population, eval_devices=DEVICES)
    _, _, offsets = population.training_data(range(DEVICES))
    clients = tuple(np.arange(offsets[k], offsets[k + 1]) for k in range(DEVICES))
    return Dataset(name="held", x_train=on_demand.x_train, y_train=on_demand.y_train, x_test=on_demand.x_test,
                   y_test=on_demand.y_test, n_classes=10, client_indices=clients)


def test_on_demand_rounds_are_bitwise_those_of_the_same_data_held_whole():
    population = _population()
    held = _held(population)
    whole = FederatedRun(CONFIG, held, held.client_indices, seed=2)
    drawn = FederatedRun(CONFIG, population_dataset(population, eval_devices=DEVICES), None, seed=2)
    for _ in range(CONFIG.rounds):
        a, b = whole.step(), drawn.step()
        assert strip_wall_time([a]) == strip_wall_time([b])
    assert_bitwise(drawn.server.weights, whole.server.weights, "server weights")
    assert_bitwise(drawn.clients.epoch.dense(), whole.clients.epoch, "epochs")
    assert_bitwise(drawn.clients.cursor.dense(), whole.clients.cursor, "cursors")
    assert whole.clients.epoch.max() >= 1                     # epochs did end inside rounds
    assert drawn.clients.samples is None and drawn.clients.order is None


def test_a_round_generates_only_its_participants_data_and_state_grows_with_them():
    population = CountingPopulation(1.0, 1.0, 100_000, seed=1)
    dataset = population_dataset(population, eval_devices=3)
    del population.asked[:]
    config = FederatedConfig(method="stc_updown", n_clients=100_000, participation_rate=0.0005, rounds=4,
                             batch_size=10, p_up=0.05, p_down=0.1)
    run = FederatedRun(config, dataset, None, seed=0)
    taken_part = set()
    for _ in range(config.rounds):
        asked_before = len(population.asked)
        run.step()
        participants = np.flatnonzero(run.clients.last_sync.dense() == run.server.round)
        assert sorted(population.asked[asked_before:]) == participants.tolist()
        taken_part.update(participants.tolist())
    P = run.server.weights.size
    assert len(taken_part) <= 4 * 50
    assert run.clients.residual.nbytes == len(taken_part) * P * 4       # rows only for those who took part
    for counters in (run.clients.cursor, run.clients.epoch, run.clients.last_sync):   # and their counters
        assert counters.held()[0].tolist() == sorted(taken_part) and counters.nbytes == len(taken_part) * 8
    assert run.clients.order_epoch is None


def test_an_on_demand_run_resumes_bit_for_bit():
    population = _population()
    dataset = population_dataset(population, eval_devices=DEVICES)
    straight = FederatedRun(CONFIG, dataset, None, seed=4)
    straight.run()
    first = FederatedRun(CONFIG, dataset, None, seed=4)
    first.run(3)
    arrays, meta = first.state_dict()
    touched = arrays["touched"]
    assert 0 < len(touched) < DEVICES and all(len(arrays[name]) == len(touched)
                                              for name in ("cursor", "epoch", "last_sync", "client_residual"))
    # a checkpoint written before the counters were saved for the touched clients only holds them for all
    every_client = dict(arrays)
    for name in ("cursor", "epoch", "last_sync"):
        every_client[name] = getattr(first.clients, name).dense()
    for saved in (arrays, every_client):
        resumed = FederatedRun(CONFIG, population_dataset(_population(), eval_devices=DEVICES), None, seed=4)
        resumed.load_state_dict({k: np.array(v) for k, v in saved.items()}, json.loads(json.dumps(meta)))
        resumed.run()
        assert_bitwise(resumed.server.weights, straight.server.weights, "server weights")
        assert strip_wall_time(resumed.history) == strip_wall_time(straight.history)


def test_a_million_clients_from_the_command_line(tmp_path, capsys):
    base = ["run", "--preset", "synthetic", "--set", "federated.n_clients=1000000",
            "--set", "federated.participation_rate=0.0001"]
    assert main(base + ["--out", str(tmp_path / "refused")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "data.synthetic_devices" in error and "synthetic_on_demand" in error
    assert not (tmp_path / "refused").exists()
    more = ["--set", "data.synthetic_devices=1000000", "--set", "data.synthetic_on_demand=true",
            "--set", "federated.rounds=3", "--set", "data.synthetic_eval_devices=20"]
    assert main(base + more + ["--out", str(tmp_path / "run")]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3] and all(r["participants"] == 100 for r in records)
    assert all(0 <= r["test_accuracy"] <= 1 for r in records)
    # the whole generator refuses a population it cannot hold, naming the setting that draws it on demand
    assert main(["run", "--preset", "synthetic", "--set", "federated.n_clients=5000", "--set",
                 "data.synthetic_devices=5000", "--out", str(tmp_path / "whole")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "data.synthetic_devices = 5000" in error and "data.synthetic_on_demand = true" in error


def test_settings_that_cannot_draw_on_demand_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="synthetic_on_demand applies to family 'federated' only"):
        load_preset("laq-synthetic", ["data.synthetic_on_demand=true"])
    with pytest.raises(ConfigError, match="synthetic_on_demand needs dataset 'synthetic' with partition 'natural'"):
        load_preset("synthetic", ["data.synthetic_on_demand=true", 'data.partition="iid"'])
    # left out of a config's dict (and fingerprint) while off, so existing run folders keep theirs
    assert "synthetic_on_demand" not in config_to_dict(load_preset("synthetic"))
    assert config_to_dict(load_preset("synthetic", ["data.synthetic_on_demand=true"]))["data"]["synthetic_on_demand"]
