"""Sweep benchmark: 8 runs of a small preset one after the other, on the local pool, and on Dask.

The sweep: preset ``synthetic`` (FedProx's Synthetic(1, 1), 30 devices as 30 clients, ``stc_updown``,
seed 0) with ``federated.lr`` in {0.01, 0.02, ..., 0.08}: 8 runs of the same cost, so that the ratios
measure the backends and not how unequal runs pack onto 2 workers (a grid over seeds would change the
devices' sizes: seed 3's run takes 1.7 times as long as seed 1's). Their length sets the mode
(smoke: 8 devices and 5 rounds, start-up is all there is; quick: 800 rounds, ~3 s a run on a quiet
machine; full: 1,500 rounds, ~6 s a run, so that process start-up does not dominate). Three ways to run
it, each into a fresh temporary folder:

* ``sequential``: the 8 runs one after the other in this process (:func:`fedsim.sweeps.worker.run_one`,
  the function every worker calls, with its datasets cleared first so that each pass loads its own);
* ``pool``: ``run_sweep(backend="local", workers=2)``, the process pool of ``fedsim sweep --workers 2``;
* ``dask``: ``run_sweep(backend="dask", workers=2)``, a ``LocalCluster`` of 2 worker processes started
  and closed by the sweep (what ``fedsim sweep --backend dask --workers 2`` does), skipped if
  dask.distributed is not installed.

Validation first: one untimed pass of each; the three must write bitwise identical histories (every
record but its wall time) for every run, else :class:`~benchmarks.common.ValidationError` and nothing is
timed. Then ``repeats`` timed passes, interleaved (one pass of each way per repeat); every timed pass is
checked against the validated histories too (outside its timing).

Reported: the median wall time of each way, its ratio to sequential (and the speed-up, its inverse), and
the **per-run dispatch overhead**, defined as the wall time a backend adds beyond a perfect split of
the sequential work over its W workers, per run: ``(T_backend - T_sequential / W) / N`` with N = 8 runs
and W = 2 (medians). It holds everything a backend costs that sequential running does not: starting
(and for Dask, the cluster's scheduler, nannies and workers) and stopping processes, importing fedsim
and loading its compiled kernels in each of them, sending each task and its result, the idle worker
at the end when the runs do not divide evenly, and whatever makes a run slower in a worker than in this
process (a Dask worker's own threads: its event loop ticks, profiler and memory monitor). To tell the
last apart, each pass also sums the runs' own seconds (their sessions in meta.json, which exclude the
backend's start-up and dispatch): ``run_slowdown`` is that sum over sequential's. In quick and full
modes the same three ways also run 8 *trivial* runs (1 round, 8 devices: nothing to compute), timed the
same way: their wall time over N is the fixed cost per run with no work to hide it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.common import ValidationError, log

RUNS = 8
WORKERS = 2
PRESET = "synthetic"
GRID = {"federated.lr": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]}
SMALL = {"data.synthetic_devices": 8, "federated.n_clients": 8}
SETTINGS = {
    "smoke": dict(overrides={**SMALL, "federated.rounds": 5}, repeats=1, trivial=False),
    "quick": dict(overrides={"federated.rounds": 800}, repeats=3, trivial=True),
    "full": dict(overrides={"federated.rounds": 1500}, repeats=3, trivial=True),
}
TRIVIAL = {**SMALL, "federated.rounds": 1}
WAYS = ("sequential", "pool", "dask")


def _toml_value(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return repr(value)


def write_sweep(folder: Path, name: str, overrides: dict):
    """The sweep file of the benchmark in ``folder``; the loaded :class:`fedsim.sweeps.Sweep`."""
    from fedsim.sweeps import load_sweep
    lines = [f'base = "{PRESET}"', f'name = "{name}"', "", "[set]"]
    lines += [f'"{key}" = {_toml_value(value)}' for key, value in overrides.items()]
    lines += ["", "[grid]"] + [f'"{key}" = {_toml_value(values)}' for key, values in GRID.items()]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    sweep = load_sweep(path)
    if len(sweep.runs) != RUNS:
        raise ValueError(f"the benchmark's sweep has {len(sweep.runs)} runs, not {RUNS}")
    return sweep


def run_sequential(sweep, out: Path) -> dict[str, dict]:
    """The sweep's runs one after the other in this process, into ``out/runs/<folder>`` as a sweep would."""
    from fedsim.experiment_data import keep_datasets_in_memory
    from fedsim.sweeps.folder import run_folder
    from fedsim.sweeps.worker import run_one
    keep_datasets_in_memory(False)        # forget the datasets of the previous pass (run_one keeps them)
    command = ["benchmarks.sweep", "sequential"]
    return {planned.folder_name: run_one(planned.config, str(run_folder(out, planned)), planned.label, command)
            for planned in sweep.runs}


def run_way(way: str, sweep, out: Path, threads: int) -> dict[str, dict]:
    """Run the whole sweep into ``out`` one way; the status of each run."""
    if way == "sequential":
        return run_sequential(sweep, out)
    from fedsim.sweeps import run_sweep
    backend = "local" if way == "pool" else "dask"
    return run_sweep(sweep, out, backend=backend, workers=WORKERS, threads=threads, quiet=True)


def histories(sweep, out: Path, statuses: dict[str, dict], way: str) -> dict[str, list]:
    """Every run's records without wall time (ValidationError if a run did not complete)."""
    from fedsim.runs import RunFolder, strip_wall_time
    from fedsim.sweeps.folder import run_folder
    records = {}
    for planned in sweep.runs:
        status = statuses.get(planned.folder_name, {})
        if status.get("status") != "completed":
            raise ValidationError(f"{way}: run {planned.label} did not complete: {status}")
        records[planned.folder_name] = strip_wall_time(RunFolder(run_folder(out, planned)).read_history())
    return records


def compare(reference: dict[str, list], got: dict[str, list], way: str) -> None:
    for name, want in reference.items():
        have = got.get(name)
        if have is None or len(have) != len(want):
            raise ValidationError(f"{way}: run {name} has {None if have is None else len(have)} records, "
                                  f"sequential {len(want)}")
        for number, (mine, theirs) in enumerate(zip(have, want), start=1):
            if mine != theirs:
                keys = sorted(key for key in set(mine) | set(theirs) if mine.get(key) != theirs.get(key))
                raise ValidationError(f"{way}: run {name}, record {number} differs from sequential's in {keys}")


def dask_missing() -> str | None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return "dask.distributed is not installed (pip install -e '.[dask]')"
    return None


def run_seconds(sweep, out: Path) -> float:
    """The seconds the runs themselves took (the sum of their sessions' ``seconds`` in meta.json): the
    work, without what the backend spends around the runs."""
    from fedsim.runs import RunFolder
    from fedsim.sweeps.folder import run_folder
    return float(sum(session.get("seconds", 0.0) for planned in sweep.runs
                     for session in RunFolder(run_folder(out, planned)).read_json("meta.json")["sessions"]))


def measure(sweep, ways: tuple[str, ...], repeats: int, threads: int, label: str) -> tuple[dict, dict, dict]:
    """Validate (one untimed pass of each way), then time ``repeats`` interleaved passes; the wall times,
    the runs' own seconds (:func:`run_seconds`) of each pass, and the validated histories."""
    log(f"sweep: {label}: validation pass ({', '.join(ways)})")
    reference = None
    for way in ways:
        with tempfile.TemporaryDirectory(prefix=f"fedsim-sweep-bench-{way}-") as folder:
            got = histories(sweep, Path(folder), run_way(way, sweep, Path(folder), threads), way)
        if reference is None:
            reference = got
        else:
            compare(reference, got, way)
    samples: dict[str, list[float]] = {way: [] for way in ways}
    work: dict[str, list[float]] = {way: [] for way in ways}
    for repeat in range(repeats):
        for way in ways:
            with tempfile.TemporaryDirectory(prefix=f"fedsim-sweep-bench-{way}-") as folder:
                started = time.perf_counter()
                statuses = run_way(way, sweep, Path(folder), threads)
                samples[way].append(time.perf_counter() - started)
                compare(reference, histories(sweep, Path(folder), statuses, way), way)
                work[way].append(run_seconds(sweep, Path(folder)))
            log(f"sweep: {label}: repeat {repeat + 1}/{repeats}: {way} {samples[way][-1]:.2f} s "
                f"(the runs themselves: {work[way][-1]:.2f} s)")
    timings = {way: common.Timing(tuple(values)) for way, values in samples.items()}
    return timings, {way: common.Timing(tuple(values)) for way, values in work.items()}, reference


def summarize(timings: dict[str, "common.Timing"], work: dict[str, "common.Timing"]) -> dict:
    sequential, sequential_work = timings["sequential"].median, work["sequential"].median
    summary = {"sequential_seconds": sequential, "sequential_run_seconds": sequential_work}
    for way in ("pool", "dask"):
        keys = ("seconds", "over_sequential", "speedup", "overhead_per_run_seconds", "run_seconds",
                "run_slowdown")
        if way not in timings:
            summary.update({f"{way}_{key}": None for key in keys})
            continue
        seconds, runs = timings[way].median, work[way].median
        summary.update({f"{way}_seconds": seconds, f"{way}_over_sequential": seconds / sequential,
                        f"{way}_speedup": sequential / seconds,
                        f"{way}_overhead_per_run_seconds": (seconds - sequential / WORKERS) / RUNS,
                        f"{way}_run_seconds": runs, f"{way}_run_slowdown": runs / sequential_work})
    return summary


def run(mode: str, threads: int, data_dir=None) -> dict:
    common.check_mode(mode)
    thread_report = common.apply_threads(threads, torch=False)
    settings = SETTINGS[mode]
    missing = dask_missing()
    ways = tuple(way for way in WAYS if way != "dask" or missing is None)
    results = {"suite": "sweep", "mode": mode, "machine": common.machine_info(thread_report),
               "settings": {"runs": RUNS, "workers": WORKERS, "preset": PRESET, "grid": GRID,
                            "overrides": settings["overrides"], "repeats": settings["repeats"],
                            "trivial_overrides": TRIVIAL if settings["trivial"] else None},
               "ways": list(ways), "skipped": {"dask": missing} if missing else {},
               "overhead_definition": "(T_backend - T_sequential / workers) / runs, medians of the same run"}
    with tempfile.TemporaryDirectory(prefix="fedsim-sweep-bench-") as folder:
        sweep = write_sweep(Path(folder), "bench", settings["overrides"])
        timings, work, reference = measure(sweep, ways, settings["repeats"], threads, "8 runs")
        results["validated"] = True
        results["rounds_per_run"] = len(next(iter(reference.values())))
        results["timings"] = {way: timing.to_dict() for way, timing in timings.items()}
        results["run_seconds"] = {way: timing.to_dict() for way, timing in work.items()}
        results["summary"] = summarize(timings, work)
        if settings["trivial"]:
            trivial = write_sweep(Path(folder), "trivial", TRIVIAL)
            trivial_timings, _, _ = measure(trivial, ways, settings["repeats"], threads, "8 trivial runs")
            results["trivial"] = {"timings": {way: timing.to_dict() for way, timing in trivial_timings.items()},
                                  "per_run_seconds": {way: timing.median / RUNS
                                                      for way, timing in trivial_timings.items()}}
    summary = results["summary"]
    log(f"sweep: pool / sequential {summary['pool_over_sequential']:.3f}"
        + (f", dask / sequential {summary['dask_over_sequential']:.3f}" if summary["dask_seconds"] else ""))
    return results


def main(argv=None) -> None:
    common.suite_main(__doc__, run, argv)


if __name__ == "__main__":
    main()
