"""Running a sweep: every planned run into its own run folder, on a local process pool or a Dask cluster.

The sweep folder (:mod:`fedsim.sweeps.folder`) holds ``manifest.json`` and ``runs/<label>-<hash>/``, each
an ordinary run folder (the files of ``fedsim run``, resumable the same way). The coordinator (the process
that runs ``fedsim sweep``) owns the sweep folder (its lock) and is the only writer of the manifest; each
run folder is written by the worker running it, under the run folder's lock.

Running the same sweep again skips finished runs and resumes interrupted ones from their checkpoints,
once each folder is checked to be the planned run's; a run that fails or diverges is recorded and the
others go on.

Backends
--------
``local`` (default): a pool of ``workers`` processes (spawned), each with BLAS, OpenMP and Numba pinned to
``threads`` before anything numerical loads, each keeping the datasets it loaded for its next runs, and
each dying with the coordinator (so a killed sweep leaves no worker holding a run folder).

``dask``: the same runs as tasks of a ``dask.distributed`` cluster: the scheduler at ``scheduler``
(``tcp://host:port``), or a ``LocalCluster`` of ``workers`` processes when none is given. The workers write
the run folders themselves, so **the sweep folder must be on a file system every worker sees under the
same path** (a cluster's shared home or scratch). That choice, rather than returning results to the
client, keeps what matters on a cluster: a run's checkpoints are written as it goes, so a worker that dies
(a pre-empted node) costs only the rounds since its last checkpoint; Dask gives the task to another worker
(``retries``), which resumes the same folder.

Every run's history is bitwise the same whichever backend ran it and with how many workers: each run
seeds its own random streams from its config and pins its BLAS threads (``run.blas_threads``).
"""

from __future__ import annotations

from pathlib import Path

import fedsim.sweeps.folder as sweep_folder
from fedsim.progress import Progress
from fedsim.sweeps.folder import FINAL, RUNS_FOLDER, SweepError, run_folder, write_manifest
from fedsim.sweeps.spec import Sweep

BACKENDS = ("local", "dask")


def run_sweep(sweep: Sweep, out, *, backend: str = "local", workers: int = 1, threads: int = 1,
              scheduler: str | None = None, quiet: bool = False) -> dict[str, dict]:
    """Run every planned run of ``sweep`` into ``out``; the status of each run folder (by folder name)."""
    if backend not in BACKENDS:
        raise SweepError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    for name, value, low in (("--workers", workers, 1), ("--threads", threads, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SweepError(f"{name} must be an integer >= {low}, got {value!r}")
    if scheduler is not None and backend != "dask":
        raise SweepError("--scheduler goes with --backend dask")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out} is a file, not a folder")
    sweep_folder.claim(out, sweep)             # before anything is written; again once the folder is ours
    out.mkdir(parents=True, exist_ok=True)
    with sweep_folder.lock(out):
        sweep_folder.claim(out, sweep)
        (out / RUNS_FOLDER).mkdir(exist_ok=True)
        statuses, pending = sweep_folder.reuse_decision(out, sweep)
        write_manifest(out, sweep, statuses)
        try:
            return _run_pending(sweep, out, statuses, pending, backend, workers, threads, scheduler, quiet)
        finally:        # however the sweep ends, the manifest says what each run folder holds
            sweep_folder.record_from_folders(out, sweep, statuses)
            write_manifest(out, sweep, statuses)


def _run_pending(sweep: Sweep, out: Path, statuses: dict[str, dict], pending: list, backend: str, workers: int,
                 threads: int, scheduler: str | None, quiet: bool) -> dict[str, dict]:
    done, not_finished = len(sweep.runs) - len(pending), 0
    progress = Progress("sweep", len(sweep.runs), done, "run", quiet,
                        line="{completed}/{total} runs done, {not_finished} not finished ({timing})")
    command = ["fedsim", "sweep", str(sweep.source)]

    def finished(planned, result: dict) -> None:
        nonlocal done, not_finished
        statuses[planned.folder_name] = {key: result.get(key) for key in ("status", "message", "completed")}
        write_manifest(out, sweep, statuses)
        done += 1
        not_finished += result.get("status", "failed") not in FINAL
        progress.update(done, f"failed {not_finished}", not_finished=not_finished)

    try:
        if not pending:
            pass
        elif backend == "local":
            _run_local(pending, out, workers, threads, command, finished)
        else:
            _run_dask(pending, out, workers, threads, scheduler, command, finished)
    finally:
        progress.close()
    return statuses


def _run_local(pending, out: Path, workers: int, threads: int, command, finished) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from fedsim.sweeps.worker import pin_threads, run_one
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context,
                             initializer=pin_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(run_one, planned.config, str(run_folder(out, planned)), planned.label, command):
                   planned for planned in pending}
        try:
            for future in as_completed(futures):
                try:
                    result = future.result()
                except Exception as error:       # a worker that died (killed, out of memory)
                    result = {"status": "failed", "message": f"worker lost: {type(error).__name__}: {error}"}
                finished(futures[future], result)
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            raise


def _run_dask(pending, out: Path, workers: int, threads: int, scheduler: str | None, command, finished) -> None:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SweepError("--backend dask needs dask.distributed: pip install 'fedsim-compress[dask]'") from None
    from fedsim.sweeps.worker import THREAD_VARIABLES, run_one
    cluster = None
    if scheduler is None:
        # The nannies start each worker with the thread variables set, before anything numerical loads.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               env={name: str(threads) for name in THREAD_VARIABLES})
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout=30)
        except (OSError, TimeoutError) as error:
            raise SweepError(f"--scheduler {scheduler}: cannot reach a Dask scheduler there ({error})") from None
    try:
        futures = {client.submit(run_one, planned.config, str(Path(run_folder(out, planned)).resolve()),
                                 planned.label, command, threads, pure=False, retries=3, key=f"run-{planned.folder_name}"):
                   planned for planned in pending}
        for future in as_completed(list(futures)):
            try:
                result = future.result()
            except Exception as error:
                result = {"status": "failed", "message": f"{type(error).__name__}: {error}"}
            finished(futures[future], result)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def all_finished(statuses: dict[str, dict]) -> bool:
    return all(entry.get("status") == "completed" for entry in statuses.values())


__all__ = ["BACKENDS", "all_finished", "run_sweep"]
