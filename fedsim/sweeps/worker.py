"""What a sweep worker process does: pin its threads before anything numerical loads (this module imports
nothing numerical at its top), then run one run folder to its end (start it, resume it, or find it finished).

Signals in a local worker only note that the sweep is stopping (:data:`STOPPING`); while a run steps, the
run loop's own handlers take them, as in ``fedsim run``. The coordinator sends SIGTERM to a busy worker until
it answers, so a signal that came while the run was being built (before the loop's handlers) is not lost.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def pin_threads(threads: int) -> None:
    """First call of a local worker: at most ``threads`` threads for BLAS, OpenMP and Numba, set before they
    load (the thread variables), then as runtime limits; on Linux it dies with the process that started it."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))   # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    import numba
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=threads)


#: The answer for a run not started because the sweep is stopping.
NOT_STARTED = {"status": "pending", "message": "not started: the sweep was stopped"}
#: In a local worker, a stop signal (fedsim.runs.loop.STOP_SIGNALS) only sets this: no run is started after it.
STOPPING = {"signal": None}


def _note_stop(number, frame) -> None:
    STOPPING["signal"] = number


def serve(connection, threads: int) -> None:
    """The main loop of a local pool worker: pin the threads, then run each task ``(config, folder,
    name, command)`` received on ``connection`` (a pipe to the coordinator, one task at a time) and send
    back :func:`run_one`'s answer (:data:`NOT_STARTED` after a stop signal), until the coordinator sends
    None or goes away."""
    pin_threads(threads)
    from fedsim.runs.loop import STOP_SIGNALS       # once the threads are pinned: it loads NumPy
    for number in STOP_SIGNALS:
        signal.signal(number, _note_stop)
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):          # the coordinator went away
            return
        if task is None:
            return
        connection.send(NOT_STARTED if STOPPING["signal"] is not None else run_one(*task))


def run_one(config, folder: str, name: str, command: list[str], stop_event: str | None = None) -> dict:
    """Bring the run folder ``folder`` of ``config`` to its end; its status, message and completed steps.

    The config's plugins are imported first (:mod:`fedsim.plugins`). A finished folder (summary.json) is
    reported as it is; a folder with a config is resumed (from its checkpoint); otherwise the run starts.
    Any failure is reported, never raised, so one bad run does not stop the others. Datasets are kept in
    memory between the runs of this process.

    ``stop_event``: in a Dask task, the name of the sweep's ``distributed.Event``; once it is set, a run not
    yet started is not started (:data:`NOT_STARTED`) and a running one stops at its next step boundary
    with a checkpoint, as a signal stops a local worker's run.
    """
    from fedsim.config import import_plugins
    from fedsim.experiment_data import keep_datasets_in_memory
    from fedsim.runs import resume_run, start_run
    from fedsim.runs.folder import CONFIG_FILE, META_FILE, SUMMARY_FILE, RunFolder
    from fedsim.sweeps.folder import run_entry

    keep_datasets_in_memory(True)
    path = Path(folder)
    stop_requested = None if stop_event is None else _event_poll(stop_event)
    if stop_requested is not None and stop_requested():
        return dict(NOT_STARTED)
    try:
        # The config's own plugins, and their compressors' tables (a run folder's config.toml lists them):
        # this process may not have imported them.
        import_plugins(config.plugins)
        summary = RunFolder(path).read_json(SUMMARY_FILE)
        if summary is not None:
            return run_entry(summary)
        if (path / CONFIG_FILE).exists() and not (path / META_FILE).exists():
            # start_run writes config.toml, then meta.json: a worker killed between the two left a run
            # that never stepped and cannot be resumed (no run id); it starts afresh.
            with RunFolder(path).lock():
                if not (path / META_FILE).exists():
                    (path / CONFIG_FILE).unlink()
        if (path / CONFIG_FILE).exists():
            outcome = resume_run(path, quiet=True, stop_requested=stop_requested)
        else:
            outcome = start_run(config, path, name=name, quiet=True, command=command, stop_requested=stop_requested)
        return {"status": outcome.status, "completed": outcome.completed, "message": outcome.message}
    except Exception as error:       # recorded in the manifest; the sweep goes on
        return {"status": "failed", "message": f"{type(error).__name__}: {' '.join(str(error).split())}"}


#: Seconds between two looks of a Dask task at its sweep's stop event (each look asks the scheduler).
STOP_POLL_SECONDS = 0.25


def _event_poll(name: str):
    """``() -> bool``: whether the ``distributed.Event`` ``name`` is set, asking the scheduler at most every
    :data:`STOP_POLL_SECONDS` (a step can take a millisecond)."""
    import time
    from distributed import Event

    event, last = Event(name), {"at": -float("inf"), "set": False}

    def stop_requested() -> bool:
        if not last["set"] and time.monotonic() - last["at"] >= STOP_POLL_SECONDS:
            last["set"], last["at"] = event.is_set(), time.monotonic()
        return last["set"]
    return stop_requested


__all__ = ["STOPPING", "THREAD_VARIABLES", "pin_threads", "run_one", "serve"]
