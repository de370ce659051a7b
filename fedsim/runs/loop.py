"""Running an experiment into a run folder: building the run, the step loop, progress, checkpoints,
signals, resume.

The loop only knows the run protocol of :mod:`fedsim.algorithms.family`; what is written where is
:mod:`fedsim.runs.folder`'s (its docstring gives the consistency rules that make any kill resumable).

SIGINT (Ctrl-C) and SIGTERM stop the run at the next step boundary: a checkpoint is written there and
the run can be resumed with ``fedsim run --resume RUN_DIR``. A second signal stops it at once (the last
periodic checkpoint is then what a resume starts from).
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass

from fedsim import __version__
from fedsim.algorithms.family import family
from fedsim.config import ConfigError, ExperimentConfig
from fedsim.errors import DivergenceError
from fedsim.experiment import load_data, split_among_clients
from fedsim.runs.folder import (CHECKPOINT_FILE, HISTORY_FILE, META_FILE, SUMMARY_FILE, RunFolder,
                                RunFolderError, atomic_write_bytes, now, to_json)
from fedsim.runs.provenance import environment, git_commit
from fedsim.runs.records import summarize

#: Exit status of a run stopped by a signal: 128 + the signal number (130 for Ctrl-C), as shells report.
EXIT_SIGNAL_BASE = 128


def build_run(config: ExperimentConfig, progress: bool | None = None):
    """Load the data, split it among the clients and construct the algorithm's run object.

    Returns the family's run object (:meth:`fedsim.algorithms.family.Family.make_run`), which follows the
    run protocol of :mod:`fedsim.algorithms.family`.
    ``progress`` shows download bars (default: when stderr is a terminal).
    """
    dataset = load_data(config.data, config.pipeline, seed=config.seed, progress=progress)
    clients = split_among_clients(config.data, dataset, config.n_clients, seed=config.seed)
    return config.algorithm_family.make_run(config, dataset, clients)


def _build_checked(config: ExperimentConfig, progress: bool | None):
    """:func:`build_run`, with a setting that turns out unusable for the data (an impossible partition,
    more clients than samples, ...) reported as a :class:`ConfigError`."""
    try:
        return build_run(config, progress=progress)
    except ValueError as error:
        raise ConfigError(f"the config does not fit the data: {' '.join(str(error).split())}") from None


# ---------------------------------------------------------------------------------------------------------
# running


@dataclass
class RunOutcome:
    """How a call to :func:`start_run` or :func:`resume_run` ended."""

    status: str                  # completed | diverged | interrupted | finished-before
    family: str                  # federated (steps are rounds) | lazy (steps are iterations)
    folder: RunFolder
    completed: int               # steps done
    planned: int                 # steps of the whole run
    summary: dict | None = None
    message: str = ""            # diverged: the error; interrupted: the signal
    signal: int | None = None    # the signal that interrupted the run

    @property
    def unit(self) -> str:
        return family(self.family).units

    @property
    def exit_code(self) -> int:
        if self.status == "interrupted":
            return EXIT_SIGNAL_BASE + (self.signal or signal.SIGINT)
        return 1 if self.status == "diverged" else 0


class _StopOnSignals:
    """While active, SIGINT and SIGTERM only set :attr:`received`; the loop stops at a step boundary.
    A second signal gets the previous handler (Ctrl-C then raises KeyboardInterrupt at once)."""

    def __init__(self, active: bool = True):
        self.active = active
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self):
        if self.active and threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame):
        self.received = number
        signal.signal(number, self._previous[number])

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        return False


def show_progress(quiet: bool) -> bool:
    """Progress bars: on unless ``quiet`` or stderr is not a terminal."""
    return not quiet and sys.stderr.isatty()


def execute(run, folder: RunFolder, config: ExperimentConfig, *, name: str,
            quiet: bool = False) -> RunOutcome:
    """Step ``run`` to the end of ``config``, recording into ``folder``.

    The step protocol: ``run.completed`` (steps done), ``run.step() -> record``, ``run.history``,
    ``run.state_dict() -> (arrays, meta)``.
    Appends each record to history.jsonl (flushed), checkpoints every ``config.run.checkpoint_every``
    steps and at the end, stops at a step boundary on SIGINT/SIGTERM (checkpointing there), and writes
    summary.json when the run completes or diverges.
    """
    planned = config.steps
    every = config.run.checkpoint_every
    algorithms = config.algorithm_family
    progress = show_progress(quiet)
    state: dict = {}
    for record in run.history:           # a resumed run: the postfix starts from the totals so far
        algorithms.progress(record, state)
    session_started = time.perf_counter()
    status, message = "completed", ""
    from tqdm.auto import tqdm

    with _StopOnSignals() as stop, folder.open_history() as history_file:
        unit = algorithms.unit
        # Follow the terminal's size; one that reports none (0 x 0, tqdm would then hide the bar)
        # gets 100 columns and 20 rows.
        sized = shutil.get_terminal_size((0, 0)).columns > 0
        bar = tqdm(total=planned, initial=run.completed, desc=name, unit=unit, disable=not progress,
                   file=sys.stderr, dynamic_ncols=sized, ncols=None if sized else 100,
                   nrows=None if sized else 20)
        try:
            while run.completed < planned:
                if stop.received is not None:
                    status = "interrupted"
                    break
                try:
                    record = run.step()
                except DivergenceError as error:
                    status, message = "diverged", str(error)
                    break
                history_file.write(to_json(record) + "\n")
                history_file.flush()
                bar.set_postfix_str(algorithms.progress(record, state), refresh=False)
                bar.update(1)
                if every and run.completed % every == 0 and run.completed < planned:
                    folder.write_checkpoint(*run.state_dict(), planned=planned)
        finally:
            bar.close()
        if status in ("completed", "interrupted"):
            folder.write_checkpoint(*run.state_dict(), planned=planned)
    _end_session(folder, status, run.completed, time.perf_counter() - session_started)
    summary = None
    if status in ("completed", "diverged"):
        summary = summarize(config, list(run.history))
        summary["status"] = status
        if message:
            summary["message"] = message
        meta = folder.read_json(META_FILE) or {}
        summary["wall_seconds"] = float(sum(s.get("seconds", 0.0) for s in meta.get("sessions", [])))
        if not any("time" in record for record in run.history):   # records without their own timing
            summary["seconds"] = summary["wall_seconds"]
        folder.write_json(SUMMARY_FILE, summary)
    return RunOutcome(status, config.family, folder, run.completed, planned, summary, message,
                      stop.received if status == "interrupted" else None)


def _end_session(folder: RunFolder, status: str, completed: int, seconds: float) -> None:
    meta = folder.read_json(META_FILE) or {}
    sessions = meta.setdefault("sessions", [{}])
    sessions[-1].update(ended=now(), status=status, to=completed, seconds=seconds)
    folder.write_json(META_FILE, meta)


def start_run(config: ExperimentConfig, out, *, name: str, quiet: bool = False, command=None,
              progress_data: bool | None = None) -> RunOutcome:
    """Create the run folder ``out``, write config.toml and meta.json, build the run and execute it.

    Raises
    ------
    RunFolderError
        ``out`` already holds a run (resume it, or choose another folder).
    """
    folder = RunFolder(out)
    if folder.exists or folder.file(HISTORY_FILE).exists():
        raise RunFolderError(f"{folder.path} already holds a run; continue it with "
                             f"`fedsim run --resume {folder.path}` or choose another --out")
    run = _build_checked(config, show_progress(quiet) if progress_data is None else progress_data)
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_config(config, header=f"fedsim {__version__} effective config of run {name!r}")
    meta = {"name": name, "family": config.family, "method": config.method, "seed": config.seed,
            **environment(), **git_commit(), "started": now(),
            "command": list(sys.argv if command is None else command),
            "sessions": [{"started": now(), "from": 0}]}
    folder.write_json(META_FILE, meta)
    atomic_write_bytes(folder.file(HISTORY_FILE), b"")
    return execute(run, folder, config, name=name, quiet=quiet)


def resume_run(path, *, quiet: bool = False, progress_data: bool | None = None) -> RunOutcome:
    """Continue the run in folder ``path`` from its last checkpoint (or from the start if it has none).

    Raises
    ------
    RunFolderError
        Not a run folder, or a checkpoint that does not fit the run's config.
    ConfigError
        The folder's config.toml is not valid (for this version of fedsim).
    """
    folder = RunFolder(path)
    config = folder.read_config()
    meta = folder.read_json(META_FILE) or {}
    summary = folder.read_json(SUMMARY_FILE)
    if summary is not None:
        ended = summary.get("status", "completed")
        return RunOutcome("finished-before", config.family, folder, int(summary.get("completed", 0)),
                          config.steps, summary, f"the run already ended ({ended})")
    run = _build_checked(config, show_progress(quiet) if progress_data is None else progress_data)
    checkpoint = folder.read_checkpoint()
    if checkpoint is not None:
        arrays, state = checkpoint
        try:
            run.load_state_dict(arrays, state)
        except (KeyError, ValueError) as error:
            raise RunFolderError(f"{folder.file(CHECKPOINT_FILE)} does not fit the run's config: "
                                 f"{error}") from None
    completed = run.completed if checkpoint is not None else 0
    folder.truncate_history(completed, list(run.history) if checkpoint is not None else [])
    meta.setdefault("sessions", []).append({"started": now(), "from": completed})
    versions = environment()
    changed = {key: (meta.get(key), value) for key, value in versions.items()
               if key in ("fedsim", "numpy", "numba") and meta.get(key) not in (None, value)}
    if changed:
        meta["sessions"][-1]["versions"] = versions
        details = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
        print(f"fedsim: warning: resuming with other versions than the run started with ({details}); "
              f"the continuation may not be bitwise identical", file=sys.stderr)
    folder.write_json(META_FILE, meta)
    return execute(run, folder, config, name=meta.get("name", folder.path.name), quiet=quiet)


__all__ = ["EXIT_SIGNAL_BASE", "RunOutcome", "build_run", "execute", "resume_run", "show_progress", "start_run"]
