"""The federated simulation: determinism, batches, caching bits, divergence, checkpoints, settings."""

import numpy as np
import pytest

from fedsim.algorithms.federated import FederatedConfig, FederatedRun, methods
from fedsim.compress.bits import sparse_vector_bits
from fedsim.errors import DivergenceError
from fedsim.data.load import load_dataset
from fedsim.data.partition import split_indices
from fedsim.experiment_data import DataConfig, split_among_clients
from fedsim.runs import strip_wall_time


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", synthetic_devices=12, seed=5)


def make_run(dataset, seed=0, trace=False, **settings):
    settings = {"rounds": 6, "n_clients": len(dataset.client_indices), "batch_size": 16,
                "p_up": 0.05, "p_down": 0.1, "lr": 0.05, **settings}
    return FederatedRun(FederatedConfig(**settings), dataset, dataset.client_indices, seed=seed,
                        trace_batches=trace)


# Methods whose test loss falls within these 8 rounds at these settings (signSGD's fixed step oscillates
# here; the unbiased compressors' own tests show their learning at settings that suit them).
LEARNS_IN_EIGHT_ROUNDS = ("none", "fedavg", "topk_up", "topk_updown", "stc_up", "stc_updown")


@pytest.mark.parametrize("method", sorted(methods()))
def test_same_seed_same_history_and_learning(synthetic, method):
    first = make_run(synthetic, method=method, participation_rate=0.5, rounds=8)
    second = make_run(synthetic, method=method, participation_rate=0.5, rounds=8)
    history = first.run()
    assert strip_wall_time(history) == strip_wall_time(second.run())
    np.testing.assert_array_equal(first.server.weights, second.server.weights)
    if method in LEARNS_IN_EIGHT_ROUNDS:
        assert history[-1]["test_loss"] < history[0]["test_loss"]
    other = make_run(synthetic, method=method, participation_rate=0.5, rounds=8, seed=1)
    assert strip_wall_time(other.run()) != strip_wall_time(history)


def test_every_sample_of_an_epoch_is_used_once(synthetic):
    run = make_run(synthetic, method="fedavg", local_iterations=7, batch_size=10, rounds=3, trace=True)
    run.run()
    for client in range(run.config.n_clients):
        size = len(synthetic.client_indices[client])
        used = []
        for _, participants, samples, count in run.batch_trace:
            row = int(np.flatnonzero(participants == client)[0])
            used.extend(samples[row, : count[row]].tolist())
        expected = np.sort(synthetic.client_indices[client])
        epochs, rest = divmod(len(used), size)
        for start in range(0, epochs * size, size):
            np.testing.assert_array_equal(np.sort(used[start:start + size]), expected)
        tail = used[epochs * size:]
        assert len(set(tail)) == rest and set(tail) <= set(expected.tolist())
        assert epochs == run.clients.epoch[client]


def test_full_participation_downstream_is_one_broadcast_per_client(synthetic):
    from fedsim.kernels import golomb

    run = make_run(synthetic, method="stc_updown")
    record = run.step()
    assert record["bits_down_catch_up"] == 0
    positions = np.flatnonzero(run.server.weights)  # zero init: the weights are the first message
    # per segment: 32-bit count, Golomb-Rice positions, 1 sign bit per entry, 32-bit mu
    offsets = run.model.spec.offsets
    per_client = 0
    for start, stop in zip(offsets[:-1], offsets[1:]):
        local = positions[(positions >= start) & (positions < stop)] - start
        per_client += golomb.sparse_segment_bits(local, stop - start, 1, 32)
    assert record["bits_down"] == record["participants"] * per_client


def test_returning_clients_pay_for_what_they_missed(synthetic):
    run = make_run(synthetic, method="stc_updown", participation_rate=0.25, rounds=12)
    catch_up = []
    for _ in range(12):
        before = run.clients.last_sync.dense()
        cache = list(run.server.cache)
        record = run.step()
        participants = np.flatnonzero(run.clients.last_sync.dense() == record["round"])
        expected = 0
        P = run.model.size
        for client in participants:
            since = before[client]
            if since < record["round"] - 1:
                missed = np.zeros(P, np.float32)
                for round_, positions, values in cache:
                    if round_ > since:
                        missed[positions] += values
                expected += min(sparse_vector_bits(np.flatnonzero(missed), P), 32 * P)
        assert record["bits_down_catch_up"] == expected
        catch_up.append(expected)
    assert sum(catch_up) > 0


@pytest.mark.parametrize("dtype, float_bits", [("float32", 32), ("float64", 64)])
def test_catch_up_falls_back_to_the_full_model_when_cheaper(synthetic, dtype, float_bits):
    # dense downstream messages (FedAvg): each returning client receives the full model, P floats of the
    # width the run's own messages carry (as each participant's broadcast)
    run = make_run(synthetic, method="fedavg", participation_rate=0.25, rounds=10, dtype=dtype)
    P = run.model.size
    returning = 0
    for _ in range(10):
        before = run.clients.last_sync.dense()
        record = run.step()
        behind = int(np.sum(before[run.clients.last_sync.dense() == record["round"]] < record["round"] - 1))
        assert record["bits_down_catch_up"] == behind * float_bits * P
        assert record["bits_down"] == (record["participants"] + behind) * float_bits * P
        returning += behind
    assert returning > 0


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("settings, message", [
    (dict(method="fedavg", lr=1e38, local_iterations=5), "NaN or inf"),
    # finite updates a compressor cannot encode (a scale overflows the dtype) diverge too (were a ValueError)
    (dict(method="powersgd_up", lr=3e37, local_iterations=1), "products with the factors overflow"),
    (dict(method="powersgd_up", lr=3e37, local_iterations=1, bits_per_round=3000), "products with the factors"),
    (dict(method="stc_up", dtype="float64", lr=1e307, local_iterations=1), r"mean magnitude \(STC's mu"),
    (dict(method="qsgd_up", dtype="float64", lr=1e307, local_iterations=1), "a bucket's norm overflows"),
    # a decoded entry scaled beyond the dtype (random-k's N/k, documented as inf): the aggregate diverges
    (dict(method="randomk_up", lr=3e37, local_iterations=1), "aggregate of the decoded updates is NaN or inf"),
], ids=["loss", "powersgd", "powersgd-budget", "stc", "qsgd", "randomk"])
def test_divergence_stops_with_the_history_so_far(synthetic, settings, message):
    run = make_run(synthetic, rounds=5, **settings)
    with pytest.raises(DivergenceError, match=message) as error:
        run.run()
    assert len(error.value.history) < 5
    assert all(np.isfinite(r["test_loss"]) for r in error.value.history)


def test_checkpoint_round_trip_continues_bitwise(synthetic):
    settings = dict(method="stc_updown", participation_rate=0.5, rounds=10, momentum=0.9)
    straight = make_run(synthetic, **settings)
    straight.run()
    first = make_run(synthetic, **settings)
    first.run(rounds=4)
    arrays, meta = first.state_dict()
    resumed = make_run(synthetic, **settings)
    resumed.load_state_dict(arrays, meta)
    resumed.run()
    assert strip_wall_time(resumed.history) == strip_wall_time(straight.history)
    np.testing.assert_array_equal(resumed.server.weights, straight.server.weights)


def test_majority_vote_ties_give_zero_and_each_sender_has_one_vote_whatever_its_scale(synthetic):
    run = make_run(synthetic, method="signsgd", n_clients=12)
    lr = np.float32(run.config.lr)
    votes = np.array([[1, -1, 0], [-1, -1, 0]], np.float32)
    np.testing.assert_array_equal(run.up.aggregate(votes, run.clients.sizes[[0, 1]], "majority", run.config.lr),
                                  [0, -lr, 0])
    # scaled sign messages (sign.scale = "mean"): two small + votes outvote one large - vote
    decoded = np.array([[0.001, 0.001], [0.001, 0.001], [-1.0, -1.0]], np.float32)
    np.testing.assert_array_equal(run.up.aggregate(decoded, run.clients.sizes[:3], "majority", run.config.lr),
                                  [lr, lr])


@pytest.mark.parametrize("settings, setting", [
    (dict(method="signsgd", accumulate_up=True), 'accumulate_up = true needs sign.scale = "mean"'),
    (dict(p_up=0.0), "p_up"), (dict(p_up=1.5), "p_up"), (dict(p_down=-1), "p_down"),
    (dict(participation_rate=0.0), "participation_rate"), (dict(participation_rate=1.2), "participation_rate"),
    (dict(method="stc_sideways"), "method"), (dict(lr=-0.1), "lr"), (dict(batch_size=0), "batch_size"),
    (dict(aggregation="median"), "aggregation"), (dict(method="stc_updown", aggregation="majority"),
                                                  "majority"),
])
def test_bad_settings_name_the_setting(settings, setting):
    with pytest.raises(ValueError, match=setting):
        FederatedConfig(**settings)


def test_more_clients_than_samples_and_too_many_classes_are_rejected(synthetic):
    with pytest.raises(ValueError, match="more clients than samples|n_clients"):
        split_among_clients(DataConfig(dataset="synthetic", partition="iid"), synthetic,
                            len(synthetic.y_train) + 1, seed=0)
    with pytest.raises(ValueError, match="classes_per_client"):
        split_indices("classes_per_client", synthetic.y_train, 5, np.random.default_rng(0),
                  classes_per_client=11, balancedness=1.0)
    with pytest.raises(ValueError, match="n_clients is 3"):
        FederatedRun(FederatedConfig(n_clients=3), synthetic, synthetic.client_indices)


@pytest.mark.parametrize("schedule, decay", [("exponential", 0.7), ("step", 0.5), ("constant", 1.0)])
def test_client_optimizer_momentum_l2_and_schedules(synthetic, schedule, decay):
    """One client, no compression: the server model after each round is the client's own SGD with
    momentum, L2 (g + l2 w) and lr = lr0 * schedule(epoch of the batch), replayed here by hand."""
    client = synthetic.client_indices[0]
    config = FederatedConfig(method="none", rounds=3, n_clients=1, batch_size=7, local_iterations=5,
                             lr=0.1, momentum=0.8, l2=0.01, lr_schedule=schedule,
                             lr_decay=decay, lr_step_epochs=2, dtype="float64")
    run = FederatedRun(config, synthetic, [client], seed=2, trace_batches=True)
    run.run()
    model = run.model
    x = synthetic.x_train.astype(np.float64)
    w = np.zeros(model.size)
    velocity = np.zeros(model.size)
    used = 0
    for _, _, samples, count in run.batch_trace:
        epoch = used // len(client)
        factor = {"exponential": decay ** epoch, "step": decay ** (epoch // 2), "constant": 1.0}[schedule]
        batch = samples[0, : count[0]]
        _, grad = model.loss_and_grad(w, x[batch], synthetic.y_train[batch])
        velocity = 0.8 * velocity + grad + 0.01 * w
        w = w - 0.1 * factor * velocity
        used += count[0]
    np.testing.assert_allclose(run.server.weights, w, rtol=1e-12, atol=1e-14)
    assert run.clients.epoch[0] == used // len(client) > 1
