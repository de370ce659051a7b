"""Scale benchmark: seconds per round and peak memory from 100 to 100,000 simulated clients.

Setting: ``stc_updown`` (p_up 0.001, p_down 0.002, error feedback both ways) on FedProx's Synthetic(1, 1)
(60 features, 10 classes: 610 parameters, float32), one client per device (the data's natural partition),
participation 0.01 and 0.1, plus a series at a fixed 100 participants per round (1,000 / 10,000 /
100,000 clients at 0.1 / 0.01 / 0.001) that separates the effect of total clients from that of
participants. FedProx's own sample-count law (lognormal, mean ~450 per device) would need ~45 million
samples (~11 GB) at 100,000 devices, so every device here holds ``SAMPLES_PER_DEVICE`` = 10 training
samples (``make_synthetic(samples=10, test_fraction=0)``: same generative model, smaller devices), and a
local step uses all 10 (batch 10). Evaluation is off (it measures the model, not the simulator's scale).

Each configuration runs in its own process, so its peak resident memory (``ru_maxrss``) is its own; the
report splits it into the interpreter with its libraries, the data, and the run's state (RSS growth while
building the run and while running). The fixed-participants series is timed once more with its three
runs in one process, rounds interleaved, so that the comparison does not depend on when each process ran
on this shared machine. An idle client's cost is also computed from the arrays that hold it:
index and bookkeeping arrays are allocated up front; the residual row (P floats) exists only for a
client that has taken part (the client state store, ``ClientRows``).

The population series (issue #25): 1,000 to 1,000,000 clients at 100 participants per round, STC with
error feedback, each population in its own process for 1,000 rounds (300 in quick mode): peak RSS, seconds
per round and the state store's bytes per client that took part. Client k is device k of FedProx's
Synthetic(1, 1) with its own sample-count law (mean ~450), generated on demand
(``data.synthetic_on_demand``: a round draws its participants' data from their own seeds), as
``fedsim run --preset synthetic --set data.synthetic_on_demand=true ...`` runs it; one local step of batch 10.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.common import log

SAMPLES_PER_DEVICE = 10
POPULATION_PARTICIPANTS = 100
# Every configuration times the same number of rounds after the same warm-up, so that all are measured
# in the same state (the server's message cache, the share of clients that have participated).
SETTINGS = {
    "smoke": dict(grid=((200, 0.05),), fixed=(), rounds=2, warmup=1, population=(1_000,), population_rounds=5),
    "quick": dict(grid=tuple((n, r) for n in (100, 1_000, 10_000, 100_000) for r in (0.01, 0.1)),
                  fixed=((1_000, 0.1), (10_000, 0.01), (100_000, 0.001)), rounds=10, warmup=3,
                  population=(1_000, 10_000, 100_000, 1_000_000), population_rounds=300),
    "full": dict(grid=tuple((n, r) for n in (100, 1_000, 10_000, 100_000) for r in (0.01, 0.1)),
                 fixed=((1_000, 0.1), (10_000, 0.01), (100_000, 0.001)), rounds=30, warmup=3,
                 population=(1_000, 10_000, 100_000, 1_000_000), population_rounds=1_000),
}


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc), 0 where unavailable."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def measure_one(n_clients: int, participation: float, rounds: int, warmup: int, threads: int) -> dict:
    """Build and run one configuration in this process (call it in a fresh process; torch stays unloaded,
    so the memory measured is fedsim's)."""
    common.apply_threads(threads, torch=False)
    from fedsim.algorithms.federated import FederatedConfig, FederatedRun
    from fedsim.data.synthetic import make_synthetic

    rss_start = _rss_bytes()
    started = time.perf_counter()
    dataset = make_synthetic(1.0, 1.0, n_clients, np.random.default_rng(0), samples=SAMPLES_PER_DEVICE,
                             test_fraction=0.0)
    data_seconds = time.perf_counter() - started
    rss_data = _rss_bytes()
    never = 10 ** 9
    config = FederatedConfig(method="stc_updown", rounds=never, n_clients=n_clients,
                             participation_rate=participation, batch_size=SAMPLES_PER_DEVICE,
                             eval_every=never)
    started = time.perf_counter()
    run = FederatedRun(config, dataset, dataset.client_indices, seed=0)
    build_seconds = time.perf_counter() - started
    rss_built = _rss_bytes()
    for _ in range(warmup):
        run.step()
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        run.step()
        seconds.append(time.perf_counter() - started)
    rss_end = _rss_bytes()
    clients = run.clients
    per_client_arrays = {name: getattr(clients, name).nbytes for name in
                         ("samples", "order", "offsets", "cursor", "epoch", "order_epoch")}
    per_client_arrays["last_sync"] = clients.last_sync.allocated_bytes
    residual_row = clients.residual.shape[0] * clients.residual.dtype.itemsize if clients.residual is not None else 0
    return {
        "clients": n_clients, "participation": participation,
        "participants": config.participants_per_round, "parameters": int(run.model.size),
        "rounds_timed": len(seconds), "round": common.Timing(tuple(seconds)).to_dict(),
        "data_seconds": data_seconds, "build_seconds": build_seconds,
        "touched_clients": len(clients.last_sync),
        "memory": {
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_after_imports_bytes": rss_start, "data_bytes": rss_data - rss_start,
            "dataset_array_bytes": int(dataset.x_train.nbytes + dataset.y_train.nbytes),
            "run_build_bytes": rss_built - rss_data, "running_growth_bytes": rss_end - rss_built,
            "client_bookkeeping_bytes": int(sum(per_client_arrays.values())),
            "client_bookkeeping_arrays": per_client_arrays,
            "residual_row_bytes": int(residual_row),
            "residual_store_bytes": clients.residual.allocated_bytes if clients.residual is not None else 0,
        },
    }


def measure_population(n_clients: int, rounds: int, threads: int) -> dict:
    """One population of the series (call it in a fresh process): ``n_clients`` clients, one Synthetic(1, 1)
    device each, generated on demand, ``POPULATION_PARTICIPANTS`` per round, ``rounds`` rounds of STC with
    error feedback; peak RSS, seconds per round (median of all rounds but the first five) and the state
    store's bytes per client that took part."""
    common.apply_threads(threads, torch=False)
    from fedsim.algorithms.federated import FederatedConfig, FederatedRun
    from fedsim.data.synthetic import SyntheticPopulation, population_dataset

    dataset = population_dataset(SyntheticPopulation(1.0, 1.0, n_clients, seed=0), eval_devices=1)
    never = 10 ** 9
    config = FederatedConfig(method="stc_updown", rounds=never, n_clients=n_clients,
                             participation_rate=POPULATION_PARTICIPANTS / n_clients, batch_size=SAMPLES_PER_DEVICE,
                             eval_every=never)
    run = FederatedRun(config, dataset, None, seed=0)
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        run.step()
        seconds.append(time.perf_counter() - started)
    store = run.clients.residual
    return {"clients": n_clients, "participants": config.participants_per_round, "rounds": rounds,
            "round": common.Timing(tuple(seconds[5:] or seconds)).to_dict(),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "clients_taken_part": len(store),
            "store_bytes_per_client_taken_part": store.rows.nbytes / max(1, len(store))}


def measure_series_interleaved(configurations, rounds: int, warmup: int, threads: int) -> dict:
    """The fixed-participants series in one process, rounds interleaved (one round of each run in turn),
    so that load from other processes falls on all configurations alike."""
    common.apply_threads(threads, torch=False)
    from fedsim.algorithms.federated import FederatedConfig, FederatedRun
    from fedsim.data.synthetic import make_synthetic

    runs = []
    never = 10 ** 9
    for n_clients, participation in configurations:
        dataset = make_synthetic(1.0, 1.0, n_clients, np.random.default_rng(0), samples=SAMPLES_PER_DEVICE,
                                 test_fraction=0.0)
        config = FederatedConfig(method="stc_updown", rounds=never, n_clients=n_clients,
                                 participation_rate=participation, batch_size=SAMPLES_PER_DEVICE,
                                 eval_every=never)
        runs.append(FederatedRun(config, dataset, dataset.client_indices, seed=0))
    for run in runs:
        for _ in range(warmup):
            run.step()
    seconds = [[] for _ in runs]
    for _ in range(rounds):
        for index, run in enumerate(runs):
            started = time.perf_counter()
            run.step()
            seconds[index].append(time.perf_counter() - started)
    return {"configurations": [{"clients": n, "participation": r, "participants": run.config.participants_per_round,
                                "round": common.Timing(tuple(times)).to_dict()}
                               for (n, r), run, times in zip(configurations, runs, seconds)]}


def run(mode: str, threads: int) -> dict:
    common.check_mode(mode)
    thread_report = common.apply_threads(threads)
    settings = SETTINGS[mode]
    configurations = list(settings["grid"]) + [c for c in settings["fixed"] if c not in settings["grid"]]
    results = {"suite": "scale", "mode": mode, "machine": common.machine_info(thread_report),
               "samples_per_device": SAMPLES_PER_DEVICE,
               "fixed_participants_series": [list(c) for c in settings["fixed"]],
               "configurations": []}
    environment = common.thread_environment(threads)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(common.REPO), environment.get("PYTHONPATH")]))
    for n_clients, participation in configurations:
        log(f"scale: {n_clients:,} clients, participation {participation}")
        command = [sys.executable, "-m", "benchmarks.scale", "--one", str(n_clients), str(participation),
                   "--rounds", str(settings["rounds"]), "--warmup", str(settings["warmup"]),
                   "--threads", str(threads)]
        finished = subprocess.run(command, cwd=common.REPO, env=environment, capture_output=True, text=True)
        if finished.returncode != 0:
            raise RuntimeError(f"scale configuration {n_clients} x {participation} failed:\n{finished.stderr}")
        results["configurations"].append(json.loads(finished.stdout.strip().splitlines()[-1]))
    if settings["fixed"]:
        log("scale: fixed participants, interleaved in one process")
        command = [sys.executable, "-m", "benchmarks.scale", "--series", *[f"{n}:{r}" for n, r in settings["fixed"]],
                   "--rounds", str(settings["rounds"]), "--warmup", str(settings["warmup"]),
                   "--threads", str(threads)]
        finished = subprocess.run(command, cwd=common.REPO, env=environment, capture_output=True, text=True)
        if finished.returncode != 0:
            raise RuntimeError(f"the interleaved fixed-participants series failed:\n{finished.stderr}")
        results["fixed_participants_interleaved"] = json.loads(finished.stdout.strip().splitlines()[-1])
    results["population"] = []
    for n_clients in settings["population"]:
        log(f"scale: population of {n_clients:,} clients, {POPULATION_PARTICIPANTS} per round")
        command = [sys.executable, "-m", "benchmarks.scale", "--population", str(n_clients),
                   "--rounds", str(settings["population_rounds"]), "--threads", str(threads)]
        finished = subprocess.run(command, cwd=common.REPO, env=environment, capture_output=True, text=True)
        if finished.returncode != 0:
            raise RuntimeError(f"the population of {n_clients} clients failed:\n{finished.stderr}")
        results["population"].append(json.loads(finished.stdout.strip().splitlines()[-1]))
    return results


def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="quick", choices=common.MODES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="where to write the results (suite mode)")
    parser.add_argument("--one", nargs=2, metavar=("CLIENTS", "PARTICIPATION"),
                        help="measure one configuration in this process and print its JSON")
    parser.add_argument("--series", nargs="+", metavar="CLIENTS:PARTICIPATION",
                        help="measure these configurations interleaved in this process and print JSON")
    parser.add_argument("--population", type=int, metavar="CLIENTS",
                        help="measure one population of the series in this process and print its JSON")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds of --one, --series and "
                        "--population (default 5; a suite run takes them from --mode)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2), as --rounds")
    parser.add_argument("--data-dir", type=Path, default=None, help="unused (synthetic data)")
    args = parser.parse_args(argv)
    from fedsim.algorithms.federated.config import FederatedConfig
    from fedsim.constraints import Integer, constraint_of
    common.check_option(parser, "--threads", Integer(low=1), args.threads)
    if args.population is None and not args.series and not args.one:
        for option, value in (("--rounds", args.rounds), ("--warmup", args.warmup)):
            if value is not None:
                parser.error(f"{option} applies to --one, --series and --population; a suite run (--json) takes "
                             f"its rounds from --mode")
        if args.json is None:
            parser.error("--json is required unless --one, --series or --population is given")
        common.write_json(args.json, run(args.mode, args.threads))
        return
    rounds = common.check_option(parser, "--rounds", Integer(low=1), 5 if args.rounds is None else args.rounds)
    warmup = common.check_option(parser, "--warmup", Integer(low=0), 2 if args.warmup is None else args.warmup)
    clients, participation = constraint_of(FederatedConfig, "n_clients"), constraint_of(FederatedConfig,
                                                                                         "participation_rate")
    if args.population is not None:
        population = common.check_option(parser, "--population", clients, args.population)
        print(json.dumps(measure_population(population, rounds, args.threads)))
        return
    configurations = [args.one] if args.one else [item.partition(":")[::2] for item in args.series]
    option = "--one" if args.one else "--series"
    configurations = [(common.check_option(parser, f"{option} CLIENTS", clients, n),
                       common.check_option(parser, f"{option} PARTICIPATION", participation, r))
                      for n, r in configurations]
    if args.series:
        print(json.dumps(measure_series_interleaved(configurations, rounds, warmup, args.threads)))
        return
    print(json.dumps(measure_one(*configurations[0], rounds, warmup, args.threads)))


if __name__ == "__main__":
    main()
