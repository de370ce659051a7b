"""Running an experiment into a run folder: building the run, the step loop, progress, checkpoints,
signals, resume.

The loop only knows the run protocol of :mod:`fedsim.algorithms.family`; what is written where is
:mod:`fedsim.runs.folder`'s (its docstring gives the consistency rules that make any kill resumable).

SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the run at the next step boundary: a checkpoint is written there and
the run can be resumed with ``fedsim run --resume RUN_DIR``. A second signal stops it at once (the last
periodic checkpoint is then what a resume starts from).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shlex
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from dataclasses import dataclass

from fedsim import __version__
from fedsim.algorithms.family import family
from fedsim.config import ConfigError, ExperimentConfig, config_fingerprint, config_to_dict
from fedsim.errors import DivergenceError
from fedsim.data.registry import DataSettingError
from fedsim.experiment_data import check_data_record, data_record, load_data, split_among_clients
from fedsim.files import noted_reads, write_atomic
from fedsim.programs import command_line
from fedsim.progress import Progress, show_progress
from fedsim.runs.folder import (CHECKPOINT_FILE, CHECKPOINT_NOTE_FILE, CONFIG_FILE, HISTORY_FILE, META_FILE,
                                SUMMARY_FILE, RunFolder, RunFolderError, check_new_run_target, listed_differences, now,
                                to_json)
from fedsim.runs.provenance import blas_changed, environment, git_commit, pinned_threads, thread_settings
from fedsim.runs.records import summarize

#: Exit status of a run stopped by a signal: 128 + the signal number (130 for Ctrl-C), as shells report.
EXIT_SIGNAL_BASE = 128


def build_run(config: ExperimentConfig, progress: bool | None = None):
    """Load the data, split it among the clients and construct the family's run object
    (:meth:`fedsim.algorithms.family.Family.make_run`). ``progress`` shows download bars (default: when
    stderr is a terminal)."""
    with pinned_threads(config.run.blas_threads):      # resizing and LAG-PS's build compute with BLAS
        dataset = load_data(config.data, config.pipeline, seed=config.seed, progress=progress)
        clients = split_among_clients(config.data, dataset, config.n_clients, seed=config.seed,
                                      clients_setting=config.clients_setting)
        return config.algorithm_family.make_run(config, dataset, clients)


def _build_checked(config: ExperimentConfig, quiet: bool, progress: bool | None):
    """:func:`build_run` (download bars unless ``quiet``, or as ``progress`` says), a setting unusable for the
    data (an impossible partition, more clients than samples, ...) reported as a :class:`ConfigError`; a
    DataSettingError (FEDSIM_ARRAY_CACHE, FEDSIM_MIRRORS) goes on in its own words."""
    try:
        return build_run(config, progress=show_progress(quiet) if progress is None else progress)
    except DataSettingError:
        raise
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


#: The signals that stop a run (and a sweep) at a step boundary with a checkpoint.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopOnSignals:
    """While active, the :data:`STOP_SIGNALS` only set :attr:`received`; the loop stops at a step boundary.
    A second signal gets the previous handler (Ctrl-C then raises KeyboardInterrupt at once). Outside the
    main thread, where no handler can be set, nothing changes."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame):
        self.received = number
        signal.signal(number, self._previous[number])

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        return False


#: Shown when the first step takes over :data:`COMPILE_NOTE_SECONDS` while Numba compiles kernels into their
#: on-disk cache (a first step slow for another reason, a busy machine, says nothing).
COMPILE_NOTE = "fedsim: compiling the kernels this run uses (once per machine; later runs start at once)"
COMPILE_NOTE_SECONDS = 2.0


@contextlib.contextmanager
def _counting_compiles():
    """A dict whose ``"started"`` counts the Numba compilations begun meanwhile (not cache loads)."""
    from numba.core import event

    count = {"started": 0}

    class Counter(event.Listener):
        def on_start(self, _):
            count["started"] += 1

        def on_end(self, _):
            pass

    with event.install_listener("numba:compile", Counter()):
        yield count


@contextlib.contextmanager
def _session(run, config: ExperimentConfig, name: str, quiet: bool):
    """A session's work from its start: ``(bar, compiling)``, its progress bar (whose clock, ``bar.started``, is
    the session's) and a timer that says :data:`COMPILE_NOTE` if Numba compiles meanwhile and the first step is
    not over (``compiling`` cancelled) within COMPILE_NOTE_SECONDS."""
    with _counting_compiles() as compiles:
        bar = Progress(name, config.steps, run.completed, config.algorithm_family.unit, quiet)
        compiling = bar.note_if_slow(COMPILE_NOTE_SECONDS, COMPILE_NOTE, when=lambda: compiles["started"] > 0)
        try:
            yield bar, compiling
        finally:
            compiling.cancel()
            bar.close()


def execute(run, folder: RunFolder, config: ExperimentConfig, *, name: str, quiet: bool = False,
            identity: dict | None = None, observer=None, stop_requested=None, session=None) -> RunOutcome:
    """Step ``run`` to the end of ``config``, recording into ``folder``: each record appended to history.jsonl
    (flushed), a checkpoint every ``config.run.checkpoint_every`` steps, at the end and at a stop, and
    summary.json when the run completes or diverges. ``observer(record)`` is called after each step's record
    is written (the examples print a block per round with it; the rules: :mod:`fedsim.runs`).
    summary.json's ``wall_seconds`` sums the sessions' wall time, each from its start (after the build) to its end,
    a killed session's to its last checkpoint (the steps it did after that are done again by the next session;
    a kill between the checkpoint and its note in meta.json leaves that session counted to the one before);
    ``seconds`` sums the records' ``time`` (the steps alone).
    ``stop_requested()`` is asked before each step: True stops the run there as a signal would (a sweep's
    Dask task, whose thread no signal reaches). ``session``: a :func:`_session` begun before (start_run's, whose
    round 1 may be trained before the folder exists: :meth:`FederatedRun.solve_budget`), else one begins now.
    """
    planned = config.steps
    every = config.run.checkpoint_every
    algorithms = config.algorithm_family
    state: dict = {}
    for record in run.history:           # a resumed run: the postfix starts from the totals so far
        algorithms.report.progress(record, state)
    status, message = "completed", ""

    def checkpoint():
        folder.write_checkpoint(*run.state_dict(), planned=planned, identity=identity)
        _note_session(folder, run.completed, time.perf_counter() - bar.started)     # what a kill leaves counted

    with contextlib.ExitStack() as scope, StopOnSignals() as stop, folder.open_history() as history_file, \
            pinned_threads(config.run.blas_threads):
        bar, compiling = session or scope.enter_context(_session(run, config, name, quiet))
        try:
            while run.completed < planned:
                if stop.received is not None or (stop_requested is not None and stop_requested()):
                    status = "interrupted"
                    break
                try:
                    record = run.step()
                except DivergenceError as error:
                    status, message = "diverged", str(error)
                    break
                finally:
                    compiling.cancel()
                history_file.write(to_json(record) + "\n")
                history_file.flush()
                bar.update(run.completed, algorithms.report.progress(record, state))
                if observer is not None:
                    observer(record)
                if every and run.completed % every == 0 and run.completed < planned:
                    checkpoint()
        finally:
            compiling.cancel()
        if status in ("completed", "interrupted"):
            checkpoint()
    sessions = _note_session(folder, run.completed, time.perf_counter() - bar.started, ended=now(), status=status)
    summary = None
    if status in ("completed", "diverged"):
        summary = summarize(config, list(run.history))
        summary["status"] = status
        if message:
            summary["message"] = message
        summary["wall_seconds"] = float(sum(s.get("seconds", 0.0) for s in sessions))
        if not any("time" in record for record in run.history):   # records without their own timing
            summary["seconds"] = summary["wall_seconds"]
        folder.write_json(SUMMARY_FILE, summary)
    return RunOutcome(status, config.family, folder, run.completed, planned, summary, message,
                      stop.received if status == "interrupted" else None)


def _note_session(folder: RunFolder, completed: int, seconds: float, **ended) -> list[dict]:
    """Record this session's steps and wall seconds so far in meta.json (and how it ended: ``ended``); the run's
    sessions."""
    meta = folder.read_json(META_FILE) or {}
    sessions = meta.setdefault("sessions", [{}])
    sessions[-1].update(**ended, to=completed, seconds=seconds)
    folder.write_json(META_FILE, meta)
    return sessions


def _write_config(folder: RunFolder, config: ExperimentConfig, name: str) -> None:
    folder.write_config(config, header=f"fedsim {__version__} effective config of run {name!r}")


def _identity(meta: dict) -> dict:
    return {"run_id": meta.get("run_id"), "config_sha256": meta.get("config_sha256")}


def start_run(config: ExperimentConfig, out, *, name: str, quiet: bool = False, command=None,
              progress_data: bool | None = None, observer=None, stop_requested=None) -> RunOutcome:
    """Create the run folder ``out``, write config.toml and meta.json, build the run and execute it,
    owning the folder (its lock) throughout. RunFolderError if ``out`` is a file, a folder of other files,
    already holds a run, is owned by another process, or cannot be written."""
    folder = RunFolder(out)
    check_new_run_target(folder.path)
    files = data_record(config.data, config.system)     # hashed before the build; what it reads must match
    with contextlib.ExitStack() as scope:
        with noted_reads() as reads:
            run = _build_checked(config, quiet, progress_data)
            # the session begins: round 1, trained now to solve a bit budget (one out of reach is refused before
            # the folder), counts in its time and compile note, on the threads execute() pins
            began = now()
            session = scope.enter_context(_session(run, config, name, quiet))
            with pinned_threads(config.run.blas_threads):
                run.solve_budget()
        check_data_record(config.data, files, config.system, building=True, reads=reads)
        try:
            folder.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunFolderError(f"cannot create the run folder {folder.path} ({error.strerror})") from None
        with folder.lock():
            check_new_run_target(folder.path)
            meta = {"name": name, "family": config.family, "method": config.method, "seed": config.seed,
                    "run_id": uuid.uuid4().hex, "config_sha256": config_fingerprint(config),
                    "config": config_to_dict(config, keep_unset=True), **files,
                    **environment(), "threads": thread_settings(config.run.blas_threads), **git_commit(),
                    "started": now(), "command": command_line() if command is None else list(command),
                    "sessions": [{"started": began, "from": 0}]}
            # meta.json first: config.toml marks a started run (a kill before it leaves a folder a new run may take)
            try:
                folder.write_json(META_FILE, meta)
                _write_config(folder, config, name)
            except OSError as error:
                raise RunFolderError(f"cannot write into {folder.path} ({error.strerror})") from None
            write_atomic(folder.file(HISTORY_FILE), b"")
            return execute(run, folder, config, name=name, quiet=quiet, identity=_identity(meta), observer=observer,
                           stop_requested=stop_requested, session=session)


def _check_identity(folder: RunFolder, config: ExperimentConfig, meta: dict) -> None:
    """Refuse a config.toml edited since the run started (listing what changed)."""
    recorded = meta.get("config_sha256")
    if recorded is None:
        raise RunFolderError(f"{folder.file(META_FILE)} has no config_sha256: the run was started by an older "
                             f"fedsim or meta.json was edited; it cannot be resumed safely")
    if config_fingerprint(config) != recorded:
        listed = listed_differences(meta.get("config", {}), config_to_dict(config, keep_unset=True), 8)
        raise RunFolderError(f"{folder.file(CONFIG_FILE)} was edited after the run started "
                             f"({listed or 'its text changed'}); restore it, or start a new run with the new settings "
                             f"(to run more {config.algorithm_family.units}: fedsim run --resume "
                             f"{shlex.quote(str(folder.path))} --extend-to N)")


def _load_checkpoint(folder: RunFolder, run, config: ExperimentConfig, meta: dict, extend_to=None) -> int:
    """Restore the last checkpoint into ``run`` (after checking it is this run's); the steps it holds (more than
    the config's are refused: as an ``extend_to`` too small, if that set them)."""
    checkpoint = folder.read_checkpoint()
    if checkpoint is None:
        return 0
    arrays, state, identity = checkpoint
    if identity.get("run_id") != meta.get("run_id"):
        raise RunFolderError(f"{folder.file(CHECKPOINT_FILE)} belongs to another run (run id "
                             f"{identity.get('run_id')}, this folder's is {meta.get('run_id')}): refused; "
                             f"put back this run's checkpoint or start the run again")
    try:
        run.load_state_dict(arrays, state)
    except (KeyError, ValueError, TypeError, IndexError) as error:
        raise RunFolderError(f"{folder.file(CHECKPOINT_FILE)} does not fit the run's config: "
                             f"{error}") from None
    if run.completed > config.steps and extend_to is not None:
        raise RunFolderError(f"--extend-to must be an integer >= {run.completed} (the "
                             f"{config.algorithm_family.units} already done), got {extend_to!r}")
    if run.completed > config.steps:
        raise RunFolderError(f"{folder.file(CHECKPOINT_FILE)} holds {run.completed} "
                             f"{config.algorithm_family.units}, more than the {config.steps} the config asks "
                             f"for; refused")
    return run.completed


def _check_history(folder: RunFolder, run, completed: int) -> None:
    """The history file's first ``completed`` records must be the checkpoint's own copy of them."""
    records = folder.read_history()
    if len(records) < completed:
        return      # fewer lines (they cannot be, unless edited): rewritten from the checkpoint's copy
    for number, (written, kept) in enumerate(zip(records, run.history), start=1):
        if written != json.loads(to_json(kept)):
            raise RunFolderError(f"{folder.file(HISTORY_FILE)} line {number} differs from the checkpoint's "
                                 f"copy of that record (edited outside fedsim?): refused; the checkpoint's "
                                 f"history is the reference")


def resume_run(path, *, quiet: bool = False, progress_data: bool | None = None,
               extend_to: int | None = None, observer=None, stop_requested=None) -> RunOutcome:
    """Continue the run in folder ``path`` from its last checkpoint (or from the start if it has none).

    ``extend_to``: continue to this many rounds / iterations in all (at least the steps done); the
    folder's config is updated to it, and a finished run continues. The continued history equals that of
    a run started with the larger number, except for the evaluation the old last step made as the end.

    RunFolderError if the folder is not a run folder, is owned by another process, or holds an edited
    config.toml or history, or a checkpoint that is corrupt, of another run or does not fit the run's config;
    ConfigError if its config.toml is not valid (for this version of fedsim).
    """
    folder = RunFolder(path)
    if not folder.path.is_dir():
        raise RunFolderError(f"{folder.path} is not a fedsim run folder (no such folder)")
    with folder.lock():
        folder.remove_partial_writes()
        config = folder.read_config()
        meta = folder.read_json(META_FILE) or {}
        sessions = meta.get("sessions", [])
        whole = isinstance(sessions, list) and all(isinstance(session, dict) for session in sessions)
        seconds = [session.get("seconds", 0.0) for session in sessions] if whole else []
        if not whole or not all(type(value) in (int, float) and 0 <= value < math.inf for value in seconds):
            raise RunFolderError(f"{folder.file(META_FILE)} must hold its sessions as a list of JSON objects (their "
                                 f"seconds finite numbers >= 0); it was changed or damaged outside fedsim")
        _check_identity(folder, config, meta)
        check_data_record(config.data, meta, config.system)
        if extend_to is not None:
            config, meta = _extend(folder, config, meta, extend_to)
        summary = folder.read_json(SUMMARY_FILE) if extend_to is None else None
        if summary is not None:
            ended = summary.get("status", "completed")
            return RunOutcome("finished-before", config.family, folder, int(summary.get("completed", 0)),
                              config.steps, summary, f"the run already ended ({ended})")
        with noted_reads() as reads:
            run = _build_checked(config, quiet, progress_data)
        check_data_record(config.data, meta, config.system, reads=reads)      # and the bytes its build read
        with pinned_threads(config.run.blas_threads):
            completed = _load_checkpoint(folder, run, config, meta, extend_to)
        _check_history(folder, run, completed)
        if extend_to is not None:       # only now: a build or a checkpoint refused leaves the folder as it was
            _write_extension(folder, config, meta)
        folder.truncate_history(completed, list(run.history) if completed else [])
        meta.setdefault("sessions", []).append({"started": now(), "from": completed})
        _warn_on_changes(meta, config.run.blas_threads)
        folder.write_json(META_FILE, meta)
        return execute(run, folder, config, name=meta.get("name", folder.path.name), quiet=quiet,
                       identity=_identity(meta), observer=observer, stop_requested=stop_requested)


def _extend(folder: RunFolder, config: ExperimentConfig, meta: dict, extend_to: int):
    """The config with ``extend_to`` steps and ``meta`` recording it, checked; nothing written yet
    (:func:`_write_extension`, once the run is built)."""
    declared = config.algorithm_family
    setting = declared.setting(declared.steps_setting)
    checkpoint = folder.read_json(CHECKPOINT_NOTE_FILE) or {}
    done = int(checkpoint.get("completed", 0))
    if isinstance(extend_to, bool) or not isinstance(extend_to, int) or extend_to < max(done, 1):
        raise RunFolderError(f"--extend-to must be an integer >= {max(done, 1)} (the {declared.units} "
                             f"already done), got {extend_to!r}")
    summary = folder.read_json(SUMMARY_FILE)
    if summary is not None and summary.get("status") == "diverged":
        raise RunFolderError(f"{folder.path} diverged; extending it would only diverge again")
    extended = dataclasses.replace(config, **{declared.name: dataclasses.replace(
        config.algorithm, **{declared.steps_setting: extend_to})})
    meta["sessions"] = meta.get("sessions", []) + [
        {"extended": f"{setting}: {config.steps} -> {extend_to}", "at": now()}]
    meta.update(config_sha256=config_fingerprint(extended), config=config_to_dict(extended, keep_unset=True))
    return extended, meta


def _write_extension(folder: RunFolder, config: ExperimentConfig, meta: dict) -> None:
    """Write an extended run's config.toml and meta.json, and reopen it if it had ended."""
    _write_config(folder, config, meta.get("name", folder.path.name))
    folder.write_json(META_FILE, meta)
    folder.file(SUMMARY_FILE).unlink(missing_ok=True)      # rewritten when the extended run ends


def _warn_on_changes(meta: dict, blas_threads: int) -> None:
    """Warn when the versions, fedsim's git commit (or its work tree's changes), the BLAS library or NumPy's SIMD
    extensions differ from the run's start (what meta.json does not record, or records damaged, is not
    compared); the session records its fedsim version and commit, and, on a change, what it runs on."""
    versions, commit = environment(), git_commit()
    changed = {key: (meta.get(key), value) for key, value in versions.items()
               if key in ("fedsim", "numpy", "numba") and meta.get(key) not in (None, value)}
    meta["sessions"][-1].update(fedsim=versions["fedsim"], **commit)
    then, current = ((info.get("git_commit"), info.get("git_dirty")) for info in (meta, commit))
    if then[0] is not None and then != current:
        changed["fedsim commit"] = tuple(f"{str(hexa)[:12]}{' with changes' if dirty else ''}"
                                         for hexa, dirty in (then, current))
    recorded = meta.get("threads") if isinstance(meta.get("threads"), dict) else {}
    now_settings = thread_settings(blas_threads)
    if isinstance(recorded.get("blas"), (str, list)) and blas_changed(recorded["blas"], now_settings["blas"]):
        changed["BLAS"] = (recorded["blas"], now_settings["blas"])
    if isinstance(recorded.get("simd"), str) and recorded["simd"] != now_settings["simd"]:
        changed["NumPy SIMD"] = (recorded["simd"], now_settings["simd"])
    if isinstance(recorded.get("environment"), dict):
        # OPENBLAS_CORETYPE picks the BLAS kernel, not a thread count: its change is the BLAS's (above)
        then, current = ({name: value for name, value in settings.items() if name != "OPENBLAS_CORETYPE"}
                         for settings in (recorded["environment"], now_settings["environment"]))
        if then != current:
            print(f"fedsim: warning: the thread settings of the environment differ from the run's start "
                  f"({then} -> {current}); the results do not depend on them (run.blas_threads = {blas_threads} "
                  f"is pinned)", file=sys.stderr)
    if changed:
        meta["sessions"][-1].update(versions=versions, blas=now_settings["blas"], simd=now_settings["simd"])
        details = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
        print(f"fedsim: warning: resuming on other versions or arithmetic than the run started with ({details}); "
              f"the continuation may not be bitwise identical", file=sys.stderr)


def run_each(configs: dict, out, *, quiet: bool = False, observers: dict | None = None) -> dict:
    """Bring ``OUT/<name>`` of each named config to its end, one after the other, as ``fedsim run`` would:
    start it, resume it (interrupted), or find it finished. Stops at the first run a signal interrupted;
    the outcomes by name (the examples' loop over methods). RunFolderError if a folder holds a run of other
    settings (listing them), before any run starts."""
    for name, config in configs.items():
        folder = RunFolder(Path(out) / name)
        meta = folder.read_json(META_FILE) if folder.exists else None
        if meta is not None and meta.get("config_sha256") != config_fingerprint(config):
            listed = listed_differences(meta.get("config") or {}, config_to_dict(config, keep_unset=True), 4)
            raise RunFolderError(f"{folder.path} holds a run of other settings ({listed or 'its config differs'}); "
                                 f"choose another --out, or remove that folder to run these settings")
    outcomes = {}
    for name, config in configs.items():
        folder = Path(out) / name
        observer = (observers or {}).get(name)
        if (folder / CONFIG_FILE).exists():
            outcomes[name] = resume_run(folder, quiet=quiet, observer=observer)
        else:
            outcomes[name] = start_run(config, folder, name=name, quiet=quiet, observer=observer)
        if outcomes[name].status == "interrupted":
            break
    return outcomes


__all__ = ["run_each", "EXIT_SIGNAL_BASE", "RunOutcome", "build_run", "execute", "resume_run", "start_run"]
