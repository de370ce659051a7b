"""Running a sweep: every planned run into its own run folder (:mod:`fedsim.sweeps.folder`), on a local
process pool or a Dask cluster. The coordinator (the process that runs ``fedsim sweep``) owns the sweep
folder and is the only writer of the manifest; each run folder is written by the worker running it, under
the run folder's lock. Running the same sweep again skips finished runs and resumes interrupted ones from
their checkpoints; a run that fails or diverges is recorded and the others go on.

Backends
--------
``local`` (default): a pool of ``workers`` processes (spawned), each with BLAS, OpenMP and Numba pinned to
``threads`` before anything numerical loads, each keeping the datasets it loaded for its next runs, and
each dying with the coordinator (so a killed sweep leaves no worker holding a run folder). The
coordinator hands each worker one run at a time, so it knows which run a worker held: a worker that dies
(kill -9, out of memory) is replaced, and its run goes on in the new worker from its folder's last
checkpoint (:data:`RUN_RETRIES` times; then the run is marked failed). ``workers`` is capped by the cores
this process may use and by the memory available for one run each (:func:`capped_workers`).

``dask``: the same runs as tasks of a ``dask.distributed`` cluster: the scheduler at ``scheduler``
(``tcp://host:port``), or a ``LocalCluster`` of ``workers`` processes when none is given. The workers write
the run folders themselves, so **the sweep folder must be on a file system every worker sees under the
same path** (a cluster's shared home or scratch). That choice, rather than returning results to the
client, keeps what matters on a cluster: a run's checkpoints are written as it goes, so a worker that dies
(a pre-empted node) costs only the rounds since its last checkpoint; Dask gives the task to another worker
(``retries``), which resumes the same folder. A task's key names its run folder, so two sweeps never share a
task; a task Dask gives up on (KilledWorker) is what its folder holds: ended if it has its summary.json.

Every run's history is bitwise the same whichever backend ran it and with how many workers: each run
seeds its own random streams from its config and pins its BLAS threads (``run.blas_threads``).

Signals stop a sweep as they stop ``fedsim run`` (:mod:`fedsim.runs.loop`): no queued run starts after
them, each running run stops at a step boundary with a checkpoint (the coordinator passes the stop on to a
local worker as SIGTERM, to Dask tasks through a ``distributed.Event``), the manifest records the runs as
interrupted or pending, and :class:`SweepInterrupted` tells the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import fedsim.sweeps.folder as sweep_folder
from fedsim.experiment_data import feature_count
from fedsim.progress import Progress
from fedsim.runs.folder import LOCK_FILE, SUMMARY_FILE, RunFolder, RunFolderError
from fedsim.runs.loop import EXIT_SIGNAL_BASE, StopOnSignals
from fedsim.sweeps.folder import (FINAL, RUNS_FOLDER, SweepError, SweepLock, run_entry, run_folder, say,
                                  sweep_options, write_manifest)
from fedsim.sweeps.spec import Sweep

BACKENDS = ("local", "dask")
#: Times a run is given to a new worker after the worker running it died, before it is marked failed.
RUN_RETRIES = 2
#: Seconds to reach a Dask scheduler, its handshake included (distributed's own connect timeout does not
#: cover a server that accepts the connection and never answers, such as an HTTP server).
SCHEDULER_TIMEOUT = 20.0
#: Seconds between the coordinator's looks at its workers, and between the SIGTERMs it sends a busy local
#: worker while the sweep stops (a signal that came while the run was being built is otherwise not seen).
POLL_SECONDS = 0.2
RESEND_SECONDS = 0.5
#: Seconds a stopping sweep waits for its Dask tasks to reach a step boundary before it cancels them.
DASK_STOP_SECONDS = 30.0
#: Peak resident memory of one run, in bytes, by dataset, rounded up from ``fedsim run`` measured with
#: getrusage's ru_maxrss: Fashion-MNIST through the STC pipeline 503 MB with the array cache off (460 MB
#: with it; MNIST has the same shapes), synthetic 233 MB (most of it NumPy, Numba and the compiled
#: kernels). A dataset not listed counts as the largest.
RUN_MEMORY = {"mnist": 550_000_000, "fashion-mnist": 550_000_000, "synthetic": 250_000_000}
#: Bytes of the counters every client of a federated run has, idle or not (at most: offsets, sizes, and the cursor,
#: epoch and order_epoch of data held whole; int64 each), and of those a client that took part adds (at most: its
#: last round, and the cursor and epoch of data drawn on demand, in the client state store: 24 bytes each).
CLIENT_COUNTER_BYTES = 40
TAKEN_PART_COUNTER_BYTES = 72


def run_memory(config) -> int:
    """The peak memory of one run: :data:`RUN_MEMORY` of its dataset, plus, for a federated run, what grows
    with its clients and its model: the counters of every client and of those that can take part in its rounds
    (:mod:`fedsim.algorithms.federated.clients`); three times the residual and momentum rows of the clients
    that can take part (the rows double as they fill; a checkpoint copies them); and eight (K, P) arrays of a
    round's K participants (their models, gradients, updates, messages). Measured against it (ru_maxrss of
    ``fedsim run``): 1,000,000 clients, 1,000 rounds of 100: 1.20 GB (this says 1.03); stc-mlp, 30 rounds:
    0.80 GB (this says 1.01)."""
    memory = RUN_MEMORY.get(config.data.dataset, max(RUN_MEMORY.values()))
    if config.family != "federated":
        return memory
    settings = config.federated
    rows = min(settings.n_clients, settings.participants_per_round * settings.rounds)
    memory += CLIENT_COUNTER_BYTES * settings.n_clients + TAKEN_PART_COUNTER_BYTES * rows
    features = feature_count(config.data, config.pipeline)
    if features is None:
        return memory
    parameter_bytes = config.model.build(features, 10).spec.size * (4 if settings.dtype == "float32" else 8)
    stores = int(bool(settings.resolved_method.accumulate_up)) + int(settings.momentum > 0)
    return memory + parameter_bytes * (3 * rows * stores + 8 * settings.participants_per_round)


class SweepInterrupted(Exception):
    """A sweep stopped by the signal ``number`` (exit status 128 + it); ``statuses`` are those of
    :func:`run_sweep` (the runs not started are not in it: pending)."""

    def __init__(self, number: int, statuses: dict[str, dict]):
        super().__init__(f"stopped by {signal.Signals(number).name}")
        self.number, self.statuses = number, statuses

    @property
    def exit_code(self) -> int:
        return EXIT_SIGNAL_BASE + self.number


def run_sweep(sweep: Sweep, out, *, backend: str = "local", workers: int | None = 1, threads: int | None = None,
              scheduler: str | None = None, quiet: bool = False) -> dict[str, dict]:
    """Run every planned run of ``sweep`` into ``out``; the status of each run folder (by folder name).

    ``workers``: processes running runs (None: as many as allowed), capped as :func:`capped_workers` says;
    unused with a Dask ``scheduler``, which has its own (``fedsim sweep`` refuses --workers with it).
    ``threads``: BLAS, OpenMP and Numba threads of each worker fedsim starts (None: 1); not with ``scheduler``,
    whose workers are started by their owner.

    SweepError for a bad backend, count or folder, or a scheduler that does not answer as Dask's (before
    anything is written); :class:`SweepInterrupted` when a signal stopped the sweep.
    """
    if backend not in BACKENDS:
        raise SweepError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if scheduler is not None and backend != "dask":
        raise SweepError("--scheduler goes with --backend dask")
    if scheduler is not None and threads is not None:
        raise SweepError("--threads sets the workers fedsim starts; the workers of --scheduler keep their own "
                         "(start each with its thread variables, e.g. `OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "
                         "NUMBA_NUM_THREADS=1 dask worker ADDRESS --nthreads 1`)")
    threads = 1 if threads is None else threads
    for name, value in (("--workers", 1 if workers is None else workers), ("--threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SweepError(f"{name} must be an integer >= 1, got {value!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out} is a file, not a folder")
    # each run's meta.json command: the sweep's, run again as recorded from any folder, continues it (and the run)
    command = [sys.executable, "-m", "fedsim", "sweep", str(Path(sweep.source).absolute()), "--out",
               str(out.absolute()), *sweep_options(backend, scheduler, workers, None if threads == 1 else threads)]
    sweep_folder.claim(out, sweep)             # before anything is written; again once the folder is ours
    if scheduler is None:
        workers = capped_workers(workers, sweep.runs, threads)
    # A scheduler is reached (or the cluster started) before anything is written into the sweep folder.
    client, cluster = _open_dask(scheduler, workers, threads) if backend == "dask" else (None, None)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with SweepLock(out / LOCK_FILE):
            sweep_folder.claim(out, sweep)
            sweep_folder.check_recorded_files(out, sweep)     # before any run starts
            (out / RUNS_FOLDER).mkdir(exist_ok=True)
            statuses, pending = sweep_folder.reuse_decision(out, sweep)
            write_manifest(out, sweep, statuses)
            try:
                _dispatch(sweep, out, statuses, pending, backend, workers, threads, client, quiet, command)
            finally:        # however the sweep ends, the manifest says what each run folder holds
                sweep_folder.record_from_folders(out, sweep, statuses)
                write_manifest(out, sweep, statuses)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return statuses


def _dispatch(sweep: Sweep, out: Path, statuses: dict, pending: list, backend: str, workers: int, threads: int,
              client, quiet: bool, command: list[str]) -> None:
    """Run ``pending`` on the backend (``command``: the one each new run's meta.json records), recording each
    result in ``statuses`` and the manifest as it comes, and the signals that stop the sweep meanwhile
    (:class:`SweepInterrupted`)."""
    done, not_finished = len(sweep.runs) - len(pending), 0
    progress = Progress("sweep", len(sweep.runs), done, "run", quiet,
                        line="{completed}/{total} runs done, {not_finished} not finished ({timing})")

    def finished(planned, result: dict) -> None:
        nonlocal done, not_finished
        statuses[planned.folder_name] = {key: result.get(key) for key in ("status", "message", "completed")}
        write_manifest(out, sweep, statuses)
        if result.get("status") == "interrupted":       # not done: it resumes (the sweep's stop line counts it)
            return
        done += 1
        not_finished += result.get("status", "failed") not in FINAL
        progress.update(done, f"failed {not_finished}", not_finished=not_finished)

    with StopOnSignals() as stop:
        try:
            if pending and backend == "local":
                _run_local(pending, out, workers, threads, command, finished, stop)
            elif pending:
                _run_dask(pending, out, client, command, finished, stop)
        finally:
            progress.close()
    if stop.received is not None and any(statuses.get(planned.folder_name, {}).get("status") in (None, "interrupted")
                                         for planned in sweep.runs):      # a stop after the last run ended: none
        write_manifest(out, sweep, statuses)
        raise SweepInterrupted(stop.received, statuses)


def capped_workers(workers: int | None, runs, threads: int = 1) -> int:
    """``workers`` (None: as many as allowed) capped by the cores this process may use (each worker
    using ``threads``), by the available memory over the largest peak memory of one of ``runs``
    (:func:`run_memory`) and by the number of runs; one line on stderr says which cap applied to a
    number that was asked for."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_run = max(run_memory(planned.config) for planned in runs)
    available = _available_memory()
    caps = {max(cores // threads, 1): f"{cores} cores may be used by this process, {threads} thread(s) per worker"}
    if available is not None:
        caps.setdefault(max(available // per_run, 1),
                        f"{available / 1e9:.1f} GB of memory available, up to {per_run / 1e9:.2f} GB per run")
    cap = min(caps)
    if workers is None:
        return min(cap, len(runs))
    if workers > cap:
        say(f"--workers {workers} capped to {cap}: {caps[cap]}")
    return min(workers, cap, len(runs))


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux); None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass
class _Worker:
    """A local worker process, the coordinator's end of its pipe, and the run it holds (None: idle)."""

    process: object
    connection: object
    planned: object = None


def _run_local(pending, out: Path, workers: int, threads: int, command, finished, stop) -> None:
    """Run ``pending`` on up to ``workers`` spawned processes, one run at a time each; a dead worker is
    replaced and its run given to a new one (resumed from its folder), :data:`RUN_RETRIES` times."""
    import multiprocessing
    from multiprocessing.connection import wait

    from fedsim.sweeps.worker import serve
    context = multiprocessing.get_context("spawn")
    queue, deaths, pool = deque(pending), Counter(), []
    resent = 0.0

    def start_worker() -> _Worker:
        ours, theirs = context.Pipe()
        process = context.Process(target=serve, args=(theirs, threads), name="fedsim-sweep-worker", daemon=True)
        process.start()
        theirs.close()
        return _Worker(process, ours)

    def hand_out() -> None:
        for worker in pool:
            if worker.planned is None and queue:
                worker.planned = queue.popleft()
                with contextlib.suppress(OSError):     # a dead worker: seen below, its run given to a new one
                    worker.connection.send((worker.planned.config, str(run_folder(out, worker.planned)),
                                            worker.planned.label, command))

    def lost(worker: _Worker) -> None:
        pool.remove(worker)
        worker.connection.close()
        planned, exitcode = worker.planned, worker.process.exitcode
        how = f"killed by {signal.Signals(-exitcode).name}" if exitcode and exitcode < 0 else f"exit status {exitcode}"
        deaths[planned.folder_name] += 1
        if stop.received is not None:
            finished(planned, {"status": "interrupted", "message": f"its worker died ({how}) as the sweep stopped"})
        elif deaths[planned.folder_name] > RUN_RETRIES:
            finished(planned, {"status": "failed", "message": f"its worker died {deaths[planned.folder_name]} times "
                                                              f"(last: {how}); not tried again"})
        else:
            say(f"the worker running {planned.label} died ({how}); the run goes on in a new worker from its last "
                f"checkpoint (retry {deaths[planned.folder_name]} of {RUN_RETRIES})")
            queue.appendleft(planned)

    clean = False
    try:
        while queue or any(worker.planned is not None for worker in pool):
            if stop.received is None:
                while len(queue) > sum(worker.planned is None for worker in pool) and len(pool) < workers:
                    pool.append(start_worker())
                hand_out()
            else:
                queue.clear()                       # not started: pending in the manifest
                if time.monotonic() - resent >= RESEND_SECONDS:
                    resent = time.monotonic()
                    for worker in pool:
                        if worker.planned is not None and worker.process.is_alive():
                            os.kill(worker.process.pid, signal.SIGTERM)
            busy = [worker for worker in pool if worker.planned is not None]
            wait([worker.connection for worker in busy] + [worker.process.sentinel for worker in busy],
                 timeout=POLL_SECONDS)
            for worker in busy:
                result = None
                with contextlib.suppress(EOFError, OSError):
                    if worker.connection.poll():
                        result = worker.connection.recv()
                if result is not None:
                    planned, worker.planned = worker.planned, None
                    if result.get("status") != "pending":       # "pending": not started, the sweep stopping
                        finished(planned, result)
                elif not worker.process.is_alive():
                    lost(worker)
        clean = True
    finally:
        for worker in pool:                 # idle workers end when told; the others (an error) at once
            if clean:
                with contextlib.suppress(OSError):
                    worker.connection.send(None)
            else:
                worker.process.kill()
        for worker in pool:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()


def _open_dask(scheduler: str | None, workers: int, threads: int):
    """(client, cluster): a client of the scheduler at ``scheduler``, reached within
    :data:`SCHEDULER_TIMEOUT` seconds, handshake included (cluster None); or of a new LocalCluster."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise SweepError("--backend dask needs dask.distributed: pip install 'fedsim-compress[dask]'") from None
    from fedsim.sweeps.worker import THREAD_VARIABLES
    if scheduler is None:
        # The nannies start each worker with the thread variables set, before anything numerical loads.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               env={name: str(threads) for name in THREAD_VARIABLES})
        return Client(cluster), cluster
    import asyncio

    from distributed.comm import connect

    async def handshake():
        comm = await asyncio.wait_for(connect(scheduler, timeout=SCHEDULER_TIMEOUT), SCHEDULER_TIMEOUT + 5)
        await comm.close()

    check = ("check that a Dask scheduler runs there (`dask scheduler --port PORT`) and that the address is "
             "its tcp://HOST:PORT, not its dashboard's")
    try:
        asyncio.run(handshake())
        return Client(scheduler, timeout=SCHEDULER_TIMEOUT), None
    except ValueError as error:
        raise SweepError(f"--scheduler {scheduler!r} is not a Dask scheduler address ({error}); give "
                         f"tcp://HOST:PORT") from None
    except (OSError, TimeoutError) as error:
        reason = str(error) or "it accepted the connection but never answered as a Dask scheduler"
        raise SweepError(f"--scheduler {scheduler}: no Dask scheduler answered within {SCHEDULER_TIMEOUT:g} s "
                         f"({reason}); {check}") from None


def _run_dask(pending, out: Path, client, command, finished, stop) -> None:
    """Run ``pending`` as tasks of ``client``'s cluster (each retried by Dask on another worker if its
    worker dies). On a stop, the sweep's ``distributed.Event`` is set (what a task then does:
    :func:`fedsim.sweeps.worker.run_one`); a task still running after :data:`DASK_STOP_SECONDS` is cancelled
    and its run resumes from its last periodic checkpoint."""
    from distributed import Event

    from fedsim.sweeps.worker import run_one
    event = Event(f"fedsim-stop-{uuid.uuid4().hex}", client=client)
    folders = {planned.folder_name: str(Path(run_folder(out, planned)).resolve()) for planned in pending}
    # a task's key names its run folder (its absolute path hashed): another sweep's run of the same settings into
    # another folder is another task, never this one's result
    futures = {client.submit(run_one, planned.config, folders[planned.folder_name], planned.label, command, event.name,
                             pure=False, retries=3, key=f"run-{planned.folder_name}-" + hashlib.sha256(
                                 folders[planned.folder_name].encode()).hexdigest()[:16]): planned
               for planned in pending}
    remaining = list(futures)
    stopping_since = None
    while remaining:
        if stop.received is not None and stopping_since is None:
            event.set()
            stopping_since = time.monotonic()
        if stopping_since is not None and time.monotonic() - stopping_since > DASK_STOP_SECONDS:
            client.cancel(remaining)
            for future in remaining:
                if run_folder(out, futures[future]).is_dir():
                    finished(futures[future], {"status": "interrupted", "message": "cancelled as the sweep stopped"})
            return
        ready = [future for future in remaining if future.done()]
        if not ready:
            time.sleep(POLL_SECONDS)
        for future in ready:
            remaining.remove(future)
            try:
                result = future.result()
            except Exception as error:      # (KilledWorker: workers died holding it) its folder may hold its end
                result = _ended(run_folder(out, futures[future])) or {
                    "status": "failed", "message": f"{type(error).__name__}: {error}"}
            if result.get("status") != "pending":       # "pending": not started, the sweep stopping
                finished(futures[future], result)


def _ended(folder: Path) -> dict | None:
    """The entry of the run folder's summary.json if its run ended (completed or diverged), else None."""
    try:
        summary = RunFolder(folder).read_json(SUMMARY_FILE)
    except RunFolderError:
        return None
    return run_entry(summary) if summary is not None and summary.get("status", "completed") in FINAL else None


def all_finished(statuses: dict[str, dict]) -> bool:
    return all(entry.get("status") == "completed" for entry in statuses.values())


__all__ = ["BACKENDS", "SweepInterrupted", "all_finished", "capped_workers", "run_sweep"]
