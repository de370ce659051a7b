"""The system model (fedsim.system): each formula against a hand computation, deterministic drops, the
records, and one-line errors for bad settings."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from fedsim.algorithms.federated.report import summarize
from fedsim.algorithms.lazy import METHODS, LazyConfig, LazyRun
from fedsim.algorithms.lazy.report import REPORT as LAZY_REPORT, records_reach
from fedsim.config import ConfigError, config_fingerprint, config_to_dict, load_preset
from fedsim.data.dataset import Dataset
from fedsim.data.registry import DataSettingError
from fedsim.models.base import multiply_adds_per_sample
from fedsim.rng import RunStreams
from fedsim.runs import RunFolderError
from fedsim.runs.compare import compare_tables
from fedsim.runs.loop import build_run
from fedsim.system import (MIXED, PROFILES, Devices, LazyClock, SystemConfig, arrival_seconds, draw_devices,
                           kept_updates, read_trace, round_devices)
from tests.runs.conftest import finished_run


def _synthetic(*overrides):
    """A run of the synthetic preset with ``overrides``."""
    return build_run(load_preset("synthetic", list(overrides)), progress=False)


def test_arrival_is_download_compute_upload_by_hand():
    # Three clients with round numbers: up, down (bits/s), latency (s), speed (multiply-adds/s).
    devices = Devices(uplink=np.array([1e6, 2e6, 4e6]), downlink=np.array([8e6, 8e6, 16e6]),
                      latency=np.array([0.1, 0.05, 0.2]), speed=np.array([1e9, 2e9, 1e9]))
    got = arrival_seconds(devices, np.array([0, 2]), down_bits=np.array([8e5, 0]), samples=100,
                          multiply_adds_per_sample=3e6, up_bits=np.array([5e5, 2e6]))
    # client 0: (0.1 + 8e5/8e6) + 100*3e6/1e9 + (0.1 + 5e5/1e6) = 0.2 + 0.3 + 0.6
    # client 2: (0.2 + 0) + 0.3 + (0.2 + 2e6/4e6) = 0.2 + 0.3 + 0.7
    np.testing.assert_allclose(got, [1.1, 1.2], rtol=1e-15)


def test_the_server_keeps_the_first_needed_arrivals_before_the_deadline():
    arrival = np.array([3.0, 1.0, 2.0, 5.0])
    reachable = np.array([True, True, False, True])
    kept, wait = kept_updates(arrival, reachable, needed=2, deadline=None)
    assert kept.tolist() == [True, True, False, False] and wait == 3.0        # over-selection: first two
    kept, wait = kept_updates(arrival, reachable, needed=4, deadline=4.0)
    assert kept.tolist() == [True, True, False, False] and wait == 4.0        # client 3 is late
    kept, wait = kept_updates(arrival, reachable, needed=4, deadline=None)
    assert kept.tolist() == [True, True, False, True] and wait == 5.0         # all reachable reported
    kept, wait = kept_updates(arrival, np.zeros(4, bool), needed=2, deadline=None)
    assert not kept.any() and wait == 0.0


def test_a_federated_round_by_hand_equals_the_simulator():
    """FedAvg (every upload and the broadcast a dense message of the same size) on clients with equal
    custom numbers; the first round has no catch-up."""
    config = load_preset("synthetic", ["federated.rounds=2", "federated.participation_rate=0.1",
                                       'federated.method="fedavg"', 'system.profile="custom"', "system.spread=0",
                                       "system.uplink=1e5", "system.downlink=1e6", "system.latency=0.05",
                                       "system.speed=1e7"])
    run = build_run(config, progress=False)
    first = run.step()
    macs = 2 * 60 * 10                                  # softmax regression: x W and x^T delta, W 60 x 10
    assert multiply_adds_per_sample(run.model) == macs
    samples = config.federated.batch_size * config.federated.local_iterations
    K = first["participants"]
    upload = first["bits_up"] / K                       # each participant's encoded message
    wait = (0.05 + 0) + samples * macs / 1e7 + (0.05 + upload / 1e5)
    broadcast = 0.05 + (first["bits_down"] / K) / 1e6
    assert first["simulated_seconds"] == pytest.approx(wait + broadcast, rel=1e-12)
    assert first["dropped"] == 0
    # Round 2: a participant that missed round 1 first receives its catch-up (the same for each of them).
    synced_before = run.clients.last_sync.dense()
    second = run.step()
    participants = np.flatnonzero(run.clients.last_sync.dense() == 2)
    behind = np.count_nonzero(synced_before[participants] == 0)
    catch_up = second["bits_down_catch_up"] / behind if behind else 0.0
    wait = (0.05 + catch_up / 1e6) + samples * macs / 1e7 + (0.05 + upload / 1e5)
    assert second["simulated_seconds"] - first["simulated_seconds"] == pytest.approx(wait + broadcast, rel=1e-12)
    assert behind > 0 and catch_up > 0


@pytest.mark.parametrize("method", ["powersgd_up", "powersgd_updown"])
def test_a_powersgd_round_by_hand_waits_for_every_p_then_sends_p_hat_then_q(method):
    """PowerSGD's two uploads: the slowest P_k (all equal here), the server's P_hat down, then Q_k (and the
    bias) up, then the broadcast. Softmax 60 x 10 + bias 10, rank 2, float32: P_k 120 floats, Q_k 20 + 10."""
    config = load_preset("synthetic", ["federated.rounds=1", f'federated.method="{method}"',
                                       'system.profile="custom"', "system.spread=0", "system.uplink=1e6",
                                       "system.downlink=2e6", "system.latency=0.1", "system.speed=1e6"])
    record = build_run(config, progress=False).step()
    assert record["participants"] == 30 and record["bits_up"] == 30 * 32 * 150
    p_up = 0.1 + 10 * 1200 / 1e6 + 0.1 + 32 * 120 / 1e6             # no catch-up, local work (2 x 600), P_k up
    p_hat, q_up = 0.1 + 32 * 120 / 2e6, 0.1 + 32 * 30 / 1e6
    broadcast_bits = (record["bits_down"] - 30 * 32 * 120) / 30        # the rest of bits_down is P_hat
    assert broadcast_bits == (32 * 610 if method == "powersgd_up" else 32 * 150)
    broadcast = 0.1 + broadcast_bits / 2e6
    assert record["simulated_seconds"] == pytest.approx(p_up + p_hat + q_up + broadcast, rel=1e-12)
    if method == "powersgd_up":
        assert record["simulated_seconds"] == pytest.approx(0.52848, rel=1e-12)


def test_the_lazy_clock_by_hand():
    devices_config = SystemConfig(profile="custom", spread=0.0, uplink=1e6, downlink=4e6, latency=0.1, speed=1e9)
    clock = LazyClock(devices_config, RunStreams(0), 2, multiply_adds_per_sample=1e3,
                      samples=np.array([1000, 4000]), broadcast_bits=4e5, bits_per_upload=5e5)
    # worker m: 0.1 + 4e5/4e6 + n_m 1e3/1e9 (+ 0.1 + 5e5/1e6 if it uploads)
    assert clock.iteration(0, np.array([True, False])) == pytest.approx(max(0.2 + 0.001 + 0.6, 0.2 + 0.004))
    assert clock.iteration(7, np.array([False, False])) == pytest.approx(0.204)
    # LAG-PS: only the asked workers receive theta and compute; an iteration that asks none costs nothing
    assert clock.iteration(7, np.array([True, False]), working=np.array([True, False])) == pytest.approx(0.801)
    assert clock.iteration(7, np.array([False, True]), working=np.array([False, True])) == pytest.approx(0.804)
    assert clock.iteration(7, np.array([False, False]), working=np.array([False, False])) == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_a_lazy_iteration_is_timed_over_the_workers_that_compute(method):
    """Every worker receives theta and computes its gradient (to decide), except under LAG-PS, whose server asks
    some: only they do; the uploaders then send theirs. Workers of spread devices, timed by hand."""
    x = np.random.default_rng(0).random((400, 6))
    data = Dataset("toy", x, (x[:, 0] * 3).astype(np.int64), x[:0], np.zeros(0, np.int64), 3)
    run = LazyRun(LazyConfig.reference(method, iterations=30, n_workers=5, minibatch_size=20), data,
                  system=SystemConfig(profile="custom", spread=1.0))
    before, upload = run.clock.parts
    records = run.run()
    seconds = np.diff([0.0] + [r["simulated_seconds"] for r in records])
    for record, spent in zip(records, seconds):
        uploads = np.isin(np.arange(5), record["uploads"])
        working = uploads if method == "lag-ps" else np.ones(5, bool)
        assert spent == pytest.approx(np.max(before + upload * uploads, where=working, initial=0.0), rel=1e-12)
    assert method != "lag-ps" or 0.0 in seconds          # LAG-PS asked no worker in some iteration


def test_round_spread_varies_each_clients_links_per_round_by_hand():
    """x_t = x exp(sigma_r z), z from the stream ("system-round", t, client): the same for a client whoever
    else takes part; a round's clock and a lazy iteration computed by hand from those numbers."""
    config = SystemConfig(profile="custom", spread=0.0, uplink=1e6, downlink=4e6, latency=0.1, speed=1e9,
                          round_spread=0.3)
    streams, base = RunStreams(5), draw_devices(config, 6, RunStreams(5).generator("system"))
    both = round_devices(config, streams, base, 3, np.array([1, 4]))
    alone = round_devices(config, streams, base, 3, np.array([4]))
    assert all(values[1] == single[0] for values, single in zip(both, alone))
    z = streams.generator("system-round", 3, 4).standard_normal(4)
    np.testing.assert_allclose([values[1] for values in both], np.array([1e6, 4e6, 0.1, 1e9]) * np.exp(0.3 * z),
                               rtol=1e-15)
    other_round = round_devices(config, streams, base, 4, np.array([4]))
    assert other_round.uplink[0] != alone.uplink[0]
    assert round_devices(dataclasses.replace(config, round_spread=0.0), streams, base, 3, np.array([4])) == \
        Devices(*(values[[4]] for values in base))
    # the lazy clock of iteration 3 from worker 0's and 1's numbers of that iteration
    clock = LazyClock(config, streams, 2, multiply_adds_per_sample=1e3, samples=np.array([1000, 4000]),
                      broadcast_bits=4e5, bits_per_upload=5e5)
    up, down, latency, speed = round_devices(config, streams, clock.devices, 3, np.arange(2))
    by_hand = max(latency[0] + 4e5 / down[0] + 1000 * 1e3 / speed[0] + latency[0] + 5e5 / up[0],
                  latency[1] + 4e5 / down[1] + 4000 * 1e3 / speed[1])
    assert clock.iteration(3, np.array([True, False])) == pytest.approx(by_hand, rel=1e-12)
    # the largest spreads give finite devices
    config = SystemConfig(profile="custom", spread=10.0, round_spread=10.0)
    devices = round_devices(config, RunStreams(0), draw_devices(config, 20000, RunStreams(0).generator("system")),
                            1, np.arange(20000))
    assert all(np.all(np.isfinite(values)) and np.all(values > 0) for values in devices)


def test_with_round_spread_a_deadline_drops_different_clients_from_round_to_round():
    base = ['federated.method="fedavg"', "federated.accumulate_up=true", 'system.profile="3g"',
            "system.deadline=0.3", "federated.rounds=6"]
    late_sets = {}
    for spread in (0.0, 0.5):
        run = _synthetic(*base, f"system.round_spread={spread}")
        sets = []
        for _ in range(6):
            residual_before = run.clients.residual[np.arange(30)].copy()
            record = run.step()
            late = np.any(run.clients.residual[np.arange(30)] != 0, axis=1)
            sets.append(frozenset(np.flatnonzero(late).tolist()))
            assert record["dropped"] == len(sets[-1]) and record["dropped"] > 0, (spread, residual_before.any())
        late_sets[spread] = sets
    assert len(set(late_sets[0.0])) == 1            # fixed devices: the same late clients every round
    assert len(set(late_sets[0.5])) > 1             # links that vary: other clients miss the deadline
    again = _synthetic(*base, "system.round_spread=0.5").run()
    assert [r["dropped"] for r in again] == [len(s) for s in late_sets[0.5]]
    assert config_fingerprint(load_preset("synthetic", base)) == config_fingerprint(
        load_preset("synthetic", base + ["system.round_spread=0"]))


def test_profiles_draw_the_same_devices_from_the_same_seed_each_client_in_the_same_place_of_its_spread():
    """x_k = median_k exp(sigma z_k) with the same z_k for every profile, "mixed" (which also draws each
    client's profile) included: the factors over the medians are equal."""
    config = SystemConfig(profile="mixed")
    first = draw_devices(config, 50, RunStreams(3).generator("system"))
    again = draw_devices(config, 50, RunStreams(3).generator("system"))
    other = draw_devices(config, 50, RunStreams(4).generator("system"))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first.uplink, other.uplink)
    assert np.all(first.uplink > 0) and np.all(first.latency > 0)
    drawn = {profile: draw_devices(SystemConfig(profile=profile), 40, RunStreams(3).generator("system"))
             for profile in ("3g", "mixed", "custom")}
    factors = {profile: devices.speed / 1e9 for profile, devices in drawn.items()}   # every median speed is 1e9
    np.testing.assert_array_equal(factors["mixed"], factors["3g"])
    np.testing.assert_array_equal(factors["custom"], factors["3g"])
    # the mixed clients' uplinks are their drawn profile's medians times those factors
    medians = {round(float(u)) for u in drawn["mixed"].uplink / (drawn["3g"].uplink / 1e6)}
    assert medians == {round(PROFILES[name].uplink) for name in MIXED}


def test_a_deadline_drops_the_same_clients_and_counts_them():
    overrides = ["federated.rounds=4", 'system.profile="3g"', "system.deadline=0.35", "system.availability=0.8"]
    histories = [_synthetic(*overrides).run() for _ in range(2)]
    dropped = [record["dropped"] for record in histories[0]]
    assert dropped == [record["dropped"] for record in histories[1]]
    assert all(d > 0 for d in dropped) and all(d < record["participants"] for d, record in zip(dropped, histories[0]))
    times = [record["simulated_seconds"] for record in histories[0]]
    assert times == sorted(times) and times == [record["simulated_seconds"] for record in histories[1]]


def test_a_dropped_client_keeps_its_whole_update_in_its_residual():
    """FedAvg with error feedback: a kept client's residual is update - update = 0, a dropped one's the
    whole update (the updates: the same run's next_updates, before any round)."""
    overrides = ["federated.rounds=1", 'federated.method="fedavg"', "federated.accumulate_up=true",
                 'system.profile="3g"', "system.deadline=0.35"]
    updates = _synthetic(*overrides).next_updates()
    run = _synthetic(*overrides)
    record = run.step()
    residual = run.clients.residual[np.arange(record["participants"])]     # every client takes part
    dropped = np.any(residual != 0, axis=1)
    assert 0 < dropped.sum() == record["dropped"]
    np.testing.assert_array_equal(residual[dropped], updates[dropped])


def test_an_unreachable_client_takes_no_part_and_is_counted():
    """The same sampling with every client reachable, then with availability 0.5: the unreachable ones
    receive nothing (no synchronization), train nothing (cursor, epoch, residual untouched)."""
    base = ["federated.rounds=1", 'federated.method="fedavg"', "federated.accumulate_up=true",
            "federated.participation_rate=0.5", 'system.profile="4g"']
    everyone = _synthetic(*base)
    everyone.step()
    sampled = np.flatnonzero(everyone.clients.last_sync.dense() == 1)
    run = _synthetic(*base, "system.availability=0.5")
    record = run.step()
    took_part = np.flatnonzero(run.clients.last_sync.dense() == 1)
    unreachable = np.setdiff1d(sampled, took_part)
    assert np.all(np.isin(took_part, sampled)) and len(unreachable) > 0
    assert record["participants"] == len(sampled) and record["dropped"] == len(unreachable)
    assert np.all(run.clients.cursor[unreachable] == 0) and np.all(run.clients.epoch[unreachable] == 0)
    assert not np.any(run.clients.residual[unreachable]) and run.clients.residual.nbytes == (
        len(took_part) * run.server.weights.size * 4)
    assert len(record["client_losses"]) == len(took_part)


@pytest.mark.parametrize("method", ["fedavg", "stc_updown", "signsgd"])
def test_a_round_without_a_reachable_client_leaves_the_model(method):
    run = _synthetic("federated.rounds=3", f'federated.method="{method}"', "federated.participation_rate=0.04",
                     'system.profile="wifi"', "system.availability=0.01")
    before = run.server.weights.copy()
    records = run.run()
    assert [(r["participants"], r["dropped"], r["bits_up"], r["lr"]) for r in records] == [(1, 1, 0, None)] * 3
    np.testing.assert_array_equal(run.server.weights, before)
    assert records[-1]["simulated_seconds"] == 0.0


def test_rounds_with_and_without_reachable_clients_follow_each_other():
    records = _synthetic("federated.rounds=30", 'system.profile="3g"', "system.availability=0.5",
                         "federated.participation_rate=0.1").run()
    nobody = [r["round"] for r in records if r["dropped"] == r["participants"]]
    assert nobody and len(nobody) < len(records)
    assert all(0 <= r["test_accuracy"] <= 1 for r in records)
    assert all(r["lr"] is None for r in records if r["round"] in nobody)


def test_a_bit_budget_is_solved_at_the_first_round_with_updates():
    settings = ['federated.method="topk_up"', "federated.participation_rate=0.04", "federated.bits_per_round=2000",
                'system.profile="wifi"', "system.availability=0.5", "federated.rounds=6"]
    for seed in range(20):                     # a seed whose round 1 reached nobody, and a later round someone
        records = _synthetic(*settings, f"seed={seed}").run()
        reached = [r["dropped"] == 0 for r in records]
        if not reached[0] and any(reached):
            break
    else:
        pytest.fail("no seed in 0..19 leaves round 1 without a reachable client")
    first = reached.index(True)
    assert "bits_per_round_knob" in records[first] and not any("bits_per_round_knob" in r for r in records[:first])
    assert summarize(records)["bits_per_round_knob_value"] == records[first]["bits_per_round_knob_value"]


def test_over_selection_samples_more_and_keeps_the_needed():
    record = _synthetic("federated.rounds=1", "federated.participation_rate=0.5", 'system.profile="mixed"',
                        "system.over_select=1.5").step()
    assert record["participants"] == 23 and record["dropped"] == 23 - 15
    assert _synthetic('system.profile="4g"', "federated.participation_rate=0.5",
                      "system.over_select=2").config.participants_per_round == 30


@pytest.mark.parametrize("preset, overrides, message", [
    # over-selection beyond the population; a deadline no client can meet
    ("synthetic", ['system.profile="4g"', "system.over_select=2"], r"^system.over_select \(2\) x the 30 "
     r"participants needed per round \(federated.participation_rate x n_clients\) is 60 clients, more than the 30 of "
     r"federated.n_clients; at most 1$"),
    ("synthetic", ['system.profile="4g"', "federated.participation_rate=0.5", "system.over_select=2.01"],
     r"is 31 clients, .* at most 2$"),
    ("synthetic", ['system.profile="3g"', "system.deadline=0.01"], r"^system.deadline \(0.01 s\) is shorter than "
                                                                   r"the fastest client"),
    # custom medians within the floats, a client's draw beyond them: refused as the clock is built (a trace's row is)
    ("synthetic", ['system.profile="custom"', "system.latency=1e307", "system.spread=3"], r"^system.latency = "
     r"1e\+307 with system.spread = 3 draws client 2 the latency inf, which makes the simulated time of a round "
     r"infinite \(beyond 1.8e\+308 s\); uplink, downlink and speed must be larger, latency or spread smaller$"),
    ("laq-synthetic", ['system.profile="custom"', "system.uplink=1e-306", "system.spread=10"],
     r"^system.uplink = 1e-306 with system.spread = 10 draws client \d+ the uplink [\d.e-]+, which makes"),
])
def test_an_over_selection_a_deadline_or_a_device_that_cannot_be_met_is_one_line(preset, overrides, message):
    with pytest.raises(ValueError, match=message):
        build_run(load_preset(preset, list(overrides)), progress=False)


LAZY_REFUSES = r"apply to family 'federated' only \(family is 'lazy'\)"     # the settings of the federated round


@pytest.mark.parametrize("preset, overrides, message", [
    ("synthetic", ['system.profile="4g"', "system.uplink=-1"], r"^system.uplink must be a finite number > 0, got -1"),
    ("synthetic", ['system.profile="4g"', "system.latency=-0.1"], r"^system.latency must be"),
    ("synthetic", ['system.profile="5g"'], r"^system.profile must be one of"),
    ("synthetic", ['system.profile="4g"', "system.availability=0"], r"^system.availability must be"),
    ("synthetic", ['system.profile="4g"', "system.over_select=0.5"], r"^system.over_select must be"),
    ("synthetic", ["system.deadline=3"], r"^system.profile is 'off'"),       # settings without a profile
    # settings the profile does not read (medians of "custom", the spread of drawn profiles) are refused
    ("synthetic", ['system.profile="4g"', "system.uplink=1", "system.speed=2"],
     r"^system.uplink, system.speed: read only with system.profile = 'custom', not '4g', which would ignore it"),
    ("synthetic", ['system.profile="mixed"', "system.latency=0.3"], r"^system.latency: read only with .* = 'custom',"),
    ("synthetic", ['system.profile="trace"', "system.trace='t.csv'", "system.spread=0"],
     r"^system.spread: read only with system.profile = 'wifi', '4g', '3g', 'mixed' or 'custom', not 'trace'"),
    # custom medians whose round of one bit each way is beyond the floats: refused before a run folder, as a trace's
    ("synthetic", ['system.profile="custom"', "system.uplink=1e-320"], r"^system.uplink = 9.99989e-321 makes the "
     r"simulated time of a round infinite \(beyond 1.8e\+308 s\); uplink, downlink and speed must be larger"),
    ("laq-synthetic", ['system.profile="custom"', "system.latency=1e308"], r"^system.latency = 1e\+308 makes"),
    # exp(sigma z) must stay finite: no inf or NaN time, no update silently dropped by it
    ("synthetic", ['system.profile="4g"', "system.spread=300"], r"^system.spread must be a finite number in \[0, 10\]"),
    ("synthetic", ['system.profile="4g"', "system.round_spread=1e308"], r"^system.round_spread must .* \[0, 10\]"),
    ("laq-synthetic", ['system.profile="4g"', "system.deadline=3"], LAZY_REFUSES),
    ("laq-synthetic", ['system.profile="4g"', "system.over_select=2"], LAZY_REFUSES),
    ("laq-synthetic", ['system.profile="4g"', "system.availability=0.5"], LAZY_REFUSES),
])
def test_bad_settings_are_one_line(preset, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_preset(preset, overrides)


HEADER = "client,up,down,latency,speed\n"


def _trace(tmp_path, text):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_a_trace_gives_every_client_its_row_also_as_saved_by_excel(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte order mark; blank lines (also a row of empty cells) are skipped
    wherever they are."""
    devices = read_trace(_trace(tmp_path, HEADER + "1,2e6,8e6,0.1,1e9\n0,1e6,4e6,0.05,2e9\n"), 2)
    assert devices.uplink.tolist() == [1e6, 2e6] and devices.speed.tolist() == [2e9, 1e9]
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfclient,up,down,latency,speed\r\n\r\n1,2e6,8e6,0.1,1e9\r\n,,,,\r\n"
                     b"0,1e6,4e6,0.05,2e9\r\n\r\n")
    assert read_trace(path, 2).uplink.tolist() == [1e6, 2e6]


@pytest.mark.parametrize("text, clients, message", [
    (HEADER + "0,1e6,4e6,0.05,2e9\n", 2, r"1 of the 2 clients have no row \(first: \[1\]\)"),
    ("client,up,down\n0,1,1\n", 2, r"the first line must be the header"),
    (HEADER + "0,fast,4e6,0.05,2e9\n1,1,1,1,1\n", 2, r"line 2 must hold 5 numbers"),
    (HEADER + "\n0,1,1,1,1\n1,x,1,1,1\n", 2, r"line 4 must hold 5 numbers"),    # its number in the file, blanks too
    (HEADER + "0,-1,4e6,0.05,2e9\n1,1,1,1,1\n", 2, r"up, down and speed must be finite and > 0"),
    # a row for a client the run does not have is refused, not used in another client's place nor dropped
    (HEADER + "-1,1,1,1,1\n0,1,1,1,1\n1,1,1,1,1\n", 2, r"the client column must hold the clients 0 \.\. 1 of the "
     r"run, one row each; it has rows for 1 others \(first: \[-1\]\)"),
    (HEADER + "0,1,1,1,1\n1,1,1,1,1\n2,1,1,1,1\n", 2, r"the client column .* \(first: \[2\]\)"),
    (HEADER + "0,1,1,1,1\n1,1,1,1,1\n1e300,1,1,1,1\n", 2, r"the client column .* \(first: \[1e\+300\]\)"),
    # finite values whose round (two latencies, a bit each way, a multiply-add) is beyond the float range
    (HEADER + "0,1e6,4e6,0.05,1e9\n1,1e6,4e6,0.05,1e9\n2,1e6,1e7,1e308,1e9\n", 3,
     r"line 4: latency 1e[+]308 makes the simulated time of a round infinite"),
    (HEADER + "0,1e6,4e6,0.05,1e9\n1,1e6,4e6,0.05,1e9\n2,1e-320,1e7,0.05,1e9\n", 3,
     r"line 4: up 9.99989e-321 makes the simulated time of a round infinite"),
])
def test_a_bad_trace_is_one_line(tmp_path, text, clients, message, recwarn):
    with pytest.raises(ValueError, match=r"^system.trace .*: " + message):
        read_trace(_trace(tmp_path, text), clients)
    assert not recwarn.list


SLOW_LINK = ['system.profile="custom"', "system.uplink=1e-306", "system.spread=0"]
PROFILE = r"system.profile 'custom' \(its links, latencies and speeds\)"


@pytest.mark.parametrize("preset, overrides, source, step", [
    ("synthetic", SLOW_LINK, PROFILE, "round 1"),
    ("laq-synthetic", SLOW_LINK, PROFILE, "iteration 0"),
    ("synthetic", ['system.profile="custom"', "system.latency=1e307", "system.round_spread=10", "system.spread=0"],
     PROFILE, "round 1"),                                             # a round's own factors: known only then
    ("synthetic", ['system.profile="trace"', "system.trace={trace!r}", "federated.participation_rate=1"],
     r"system.trace .*trace.csv", "round 1"),                        # the trace's client 3 has that link
])
def test_a_clock_that_overflows_stops_the_run_in_one_line(tmp_path, preset, overrides, source, step, recwarn):
    """Each number is finite, but the encoded bits over a link of 1e-306 bits/s take longer than 1.8e308 s."""
    trace = _trace(tmp_path, HEADER + "".join(f"{k},{1e-306 if k == 3 else 1e6},4e6,0.05,1e9\n" for k in range(30)))
    run = build_run(load_preset(preset, [item.format(trace=str(trace)) for item in overrides]), progress=False)
    with pytest.raises(DataSettingError, match=rf"^{source}: the simulated time through {step} is infinite"):
        run.step()
    assert not recwarn.list and not run.history


def test_a_trace_changed_since_the_run_started_is_refused_on_resume(tmp_path):
    """meta.json records the trace's SHA-256 (as an npz dataset's); a resume reading another file is one line."""
    from fedsim.runs import resume_run, start_run
    path = _trace(tmp_path, HEADER + "".join(f"{k},1e6,4e6,0.05,1e9\n" for k in range(30)))
    config = load_preset("synthetic", ["federated.rounds=2", 'system.profile="trace"', f"system.trace={str(path)!r}"])
    assert start_run(config, tmp_path / "run", name="run", quiet=True).status == "completed"
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["trace_file"] == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    path.write_text(path.read_text().replace("0,1e6,", "0,1e3,", 1))
    with pytest.raises(DataSettingError, match=r"^system.trace .*trace.csv: the file changed since the run started"):
        resume_run(tmp_path / "run", quiet=True, extend_to=3)
    path.unlink()
    with pytest.raises(DataSettingError, match=r"^system.trace .*trace.csv: the file the run started with \(sha256 "
                                               r"\w+\.\.\.\) is missing or unreadable; put the run's file back"):
        resume_run(tmp_path / "run", quiet=True, extend_to=3)
    with pytest.raises(DataSettingError, match=r"^system.trace .*trace.csv: cannot be read \(No such file"):
        start_run(config, tmp_path / "new", name="new", quiet=True)       # named as the trace, not as npz data
    assert not (tmp_path / "new").exists()
    # a trace read through a link is recorded under the link (as npz data is), so that sweep report compares
    # runs that read two targets of one link
    link = tmp_path / "link.csv"
    (tmp_path / "target.csv").write_text(HEADER + "".join(f"{k},1e6,4e6,0.05,1e9\n" for k in range(30)))
    link.symlink_to(tmp_path / "target.csv")
    linked = load_preset("synthetic", ["federated.rounds=2", 'system.profile="trace"', f"system.trace={str(link)!r}"])
    assert start_run(linked, tmp_path / "linked", name="linked", quiet=True).status == "completed"
    assert json.loads((tmp_path / "linked" / "meta.json").read_text())["trace_file"]["path"] == str(link)


def test_without_system_the_records_and_fingerprint_are_unchanged():
    config = load_preset("synthetic", ["federated.rounds=1"])
    assert "system" not in config_to_dict(config)
    record = build_run(config, progress=False).step()
    assert "simulated_seconds" not in record and "dropped" not in record
    on = load_preset("synthetic", ["federated.rounds=1", 'system.profile="4g"'])
    assert config_fingerprint(on) != config_fingerprint(config)


def test_run_folders_carry_simulated_time_to_summary_compare_and_plot(tmp_path):
    from fedsim.plot import plot_runs, spent
    overrides = ["federated.rounds=3", 'system.profile="4g"']
    on = finished_run(tmp_path, "on", "synthetic", overrides)
    off = finished_run(tmp_path, "off", "synthetic", ["federated.rounds=3"])
    times = [record["simulated_seconds"] for record in on.history]
    assert on.summary["simulated_seconds"] == times[-1] and on.summary["dropped"] == 0
    np.testing.assert_array_equal(spent(on.history, "simulated"), times)
    np.testing.assert_array_equal(spent(on.history, "simulated", before=True), [0.0] + times[:-1])
    table = compare_tables([on, off], target_accuracy=0.0, target_residual=1.0)
    assert "simulated s to target" in table and f"{times[0]:.4g}" in table
    assert "simulated s to target" not in compare_tables([off], target_accuracy=0.0, target_residual=1.0)
    assert plot_runs([on], tmp_path / "plots", x="simulated")
    with pytest.raises(RunFolderError, match=r"^--x simulated: the records of .* hold no simulated time"):
        plot_runs([off], tmp_path / "plots", x="simulated")


def test_lazy_runs_carry_simulated_time_to_compare_and_the_sweep_metrics(tmp_path):
    on = finished_run(tmp_path, "on", "laq-synthetic", ["lazy.iterations=30", 'system.profile="4g"',
                                                        "run.f_star=0.0"])
    objectives = [record["objective"] for record in on.history]
    target = objectives[9]                      # reached first at theta^9 (the objective decreases here)
    assert min(objectives[:9]) > target
    reached = records_reach(on.history, 0.0, target)
    assert reached["iteration"] == 9 and reached["simulated_seconds"] == on.history[8]["simulated_seconds"]
    table = compare_tables([on], target_accuracy=0.0, target_residual=target)
    assert "simulated s to target" in table and f"{on.history[8]['simulated_seconds']:.4g}" in table
    assert "simulated_seconds" in LAZY_REPORT.metrics
    assert on.summary["simulated_seconds"] == on.history[-1]["simulated_seconds"]


def test_a_resumed_run_continues_the_clock_and_the_drops_bitwise():
    overrides = ["federated.rounds=4", 'system.profile="mixed"', "system.deadline=0.5", "system.availability=0.7",
                 "federated.participation_rate=0.5"]
    straight = _synthetic(*overrides).run()
    first = _synthetic(*overrides)
    first.run(2)
    resumed = _synthetic(*overrides)
    resumed.load_state_dict(*first.state_dict())
    keys = ("simulated_seconds", "dropped", "test_accuracy")
    assert [[r[key] for key in keys] for r in resumed.run()] == [[r[key] for key in keys] for r in straight]
    assert sum(r["dropped"] for r in straight) > 0
