"""Running an experiment into a run folder: progress, results, checkpoints, resume.

A run folder holds::

    config.toml        the effective config (every setting written out); what --resume rebuilds the run from
    meta.json          seed, versions (fedsim, numpy, numba, python), git commit, start time, sessions
    history.jsonl      one JSON record per round (federated) or iteration (lazy), appended and flushed
    checkpoint.npz     the run's state after `completed` steps: arrays + the JSON metadata (key __meta__)
    checkpoint.json    a small readable note of the checkpoint: completed steps, time, checksum of the npz
    summary.json       written when the run ends (completed or diverged)

Consistency rules (so that a run killed at any instant, even by SIGKILL, resumes exactly):

* every file except history.jsonl is replaced atomically (temporary file in the same folder, fsync,
  :func:`os.replace`); checkpoint.npz is self-contained (its metadata is inside it), so a kill between the
  two checkpoint files leaves a usable checkpoint;
* a history record is appended after its step and before any checkpoint that includes the step, so
  history.jsonl always holds at least the checkpoint's steps; on resume it is cut back (atomically) to
  exactly the checkpoint's ``completed`` records, dropping records of steps done after the checkpoint and
  a possibly half-written last line;
* the run state restores every random stream, so the continued run is bitwise identical to an
  uninterrupted one (only the wall-time field ``time`` of the records differs).

SIGINT (Ctrl-C) and SIGTERM stop the run at the next step boundary: a checkpoint is written there and
the run can be resumed with ``fedsim run --resume RUN_DIR``. A second signal stops it at once (the last
periodic checkpoint is then what a resume starts from).
"""

from __future__ import annotations

import datetime as _datetime
import hashlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim import __version__
from fedsim.config import (ConfigError, ExperimentConfig, config_to_toml, load_config_file)
from fedsim.errors import DivergenceError
from fedsim.experiment import load_data, split_among_clients

CONFIG_FILE = "config.toml"
META_FILE = "meta.json"
HISTORY_FILE = "history.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.npz"
CHECKPOINT_NOTE_FILE = "checkpoint.json"
_META_KEY = "__meta__"

#: Record fields that measure wall time; everything else in a record is reproducible bit for bit.
WALL_TIME_FIELDS = ("time",)

#: Exit status of a run stopped by a signal: 128 + the signal number (130 for Ctrl-C), as shells report.
EXIT_SIGNAL_BASE = 128


class RunFolderError(ValueError):
    """A run folder that is missing, not a fedsim run, or cannot be continued."""


# ---------------------------------------------------------------------------------------------------------
# atomic files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old or its new content, never a part.

    The bytes go to a temporary file in the same folder, are flushed to disk (fsync), and the file is
    moved over ``path`` with :func:`os.replace` (atomic on POSIX and Windows within one file system).
    """
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    finally:
        if os.path.exists(handle.name):
            os.unlink(handle.name)
    _fsync_folder(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(value, indent: int | None = None) -> str:
    """JSON text of records and metadata (NumPy scalars and arrays become numbers and lists; floats
    are written with ``repr``, so they read back bit for bit)."""
    return json.dumps(value, default=_json_default, indent=indent)


def _now() -> str:
    return _datetime.datetime.now(_datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------
# the folder


class RunFolder:
    """The files of one run folder (see the module docstring for what each holds)."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def exists(self) -> bool:
        return self.file(CONFIG_FILE).is_file()

    # config, meta, summary
    def write_config(self, config: ExperimentConfig, header: str = "") -> None:
        atomic_write_text(self.file(CONFIG_FILE), config_to_toml(config, header=header))

    def read_config(self) -> ExperimentConfig:
        if not self.exists:
            raise RunFolderError(f"{self.path} is not a fedsim run folder (no {CONFIG_FILE} in it)")
        return load_config_file(self.file(CONFIG_FILE), source=str(self.file(CONFIG_FILE)))

    def write_json(self, name: str, value) -> None:
        atomic_write_text(self.file(name), to_json(value, indent=1) + "\n")

    def read_json(self, name: str) -> dict | None:
        path = self.file(name)
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    # history
    def read_history(self) -> list[dict]:
        """The complete records of history.jsonl (a half-written last line is left out)."""
        return [json.loads(line) for line in self._complete_lines()]

    def _complete_lines(self) -> list[bytes]:
        path = self.file(HISTORY_FILE)
        if not path.is_file():
            return []
        lines = path.read_bytes().split(b"\n")
        return [line for line in lines[:-1] if line.strip()]   # the part after the last newline is partial

    def truncate_history(self, count: int, records: list[dict] | None = None) -> None:
        """Cut history.jsonl back to its first ``count`` records (atomically).

        If it holds fewer (it cannot, unless edited by hand), ``records`` (the checkpoint's own copy of
        the history) are written instead.
        """
        lines = self._complete_lines()
        if len(lines) >= count:
            kept = b"".join(line + b"\n" for line in lines[:count])
        elif records is not None and len(records) == count:
            kept = "".join(to_json(record) + "\n" for record in records).encode("utf-8")
        else:
            raise RunFolderError(f"{self.file(HISTORY_FILE)} holds {len(lines)} records but the checkpoint "
                                 f"has {count} completed steps")
        atomic_write_bytes(self.file(HISTORY_FILE), kept)

    def open_history(self):
        """history.jsonl opened for appending (text, line by line)."""
        return open(self.file(HISTORY_FILE), "a", encoding="utf-8")

    # checkpoints
    def write_checkpoint(self, arrays: dict[str, np.ndarray], meta: dict, planned: int) -> None:
        """checkpoint.npz (arrays + metadata, atomically), then the note checkpoint.json."""
        for key in arrays:
            if key == _META_KEY:
                raise ValueError(f"state array name {_META_KEY!r} is reserved for the checkpoint metadata")
        meta_bytes = to_json(meta).encode("utf-8")
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, **{_META_KEY: np.frombuffer(meta_bytes, dtype=np.uint8)})
        data = buffer.getvalue()
        atomic_write_bytes(self.file(CHECKPOINT_FILE), data)
        completed = _completed_of(meta)
        self.write_json(CHECKPOINT_NOTE_FILE, {
            "completed": completed, "planned": planned, "written": _now(), "file": CHECKPOINT_FILE,
            "sha256": hashlib.sha256(data).hexdigest()})

    def read_checkpoint(self) -> tuple[dict[str, np.ndarray], dict] | None:
        """(arrays, metadata) of checkpoint.npz, or None when the run has no checkpoint yet."""
        path = self.file(CHECKPOINT_FILE)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as error:
            raise RunFolderError(f"{path} cannot be read ({error}); it was not written by fedsim") from None
        if _META_KEY not in arrays:
            raise RunFolderError(f"{path} has no {_META_KEY} entry; it was not written by fedsim")
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode("utf-8"))
        return arrays, meta


def _completed_of(meta: dict) -> int:
    """Steps done according to a run's state metadata (federated: ``round``; lazy: ``completed``)."""
    for key in ("completed", "round", "iteration"):
        if key in meta:
            return int(meta[key])
    raise RunFolderError(f"checkpoint metadata has none of completed/round/iteration: {sorted(meta)}")


def default_run_dir(name: str, root="runs") -> Path:
    """``<root>/<name>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... appended if that exists already."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "run"
    stamp = _datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{safe}-{stamp}"
    candidate, count = base, 1
    while candidate.exists():
        count += 1
        candidate = Path(f"{base}-{count}")
    return candidate


# ---------------------------------------------------------------------------------------------------------
# provenance


def git_commit(path: Path | None = None) -> dict:
    """The git commit (and whether the work tree has changes) of the checkout holding fedsim, if any."""
    root = Path(__file__).resolve().parents[1] if path is None else Path(path)
    if not (root / ".git").exists():
        return {}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return {}
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {"git_commit": commit.stdout.strip()}
    if status.returncode == 0:
        info["git_dirty"] = bool(status.stdout.strip())
    return info


def environment() -> dict:
    """Versions of fedsim, Python, NumPy, Numba and the platform."""
    import numba
    return {"fedsim": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "platform": platform.platform()}


# ---------------------------------------------------------------------------------------------------------
# building a run


def build_run(config: ExperimentConfig, progress: bool | None = None):
    """Load the data, split it among the clients and construct the algorithm's run object.

    Returns a :class:`~fedsim.algorithms.federated.FederatedRun` (family ``federated``) or a lazy run
    (family ``lazy``, see :func:`_build_lazy`); both follow the step protocol of :func:`execute`.
    ``progress`` shows download bars (default: when stderr is a terminal).
    """
    dataset = load_data(config.data, config.pipeline, seed=config.seed, progress=progress)
    clients = split_among_clients(config.data, dataset, config.n_clients, seed=config.seed)
    if config.family == "federated":
        from fedsim.algorithms.federated import FederatedRun
        return FederatedRun(config.federated, dataset, clients, seed=config.seed)
    return _build_lazy(config, dataset, clients)


def _build_checked(config: ExperimentConfig, progress: bool | None):
    """:func:`build_run`, with a setting that turns out unusable for the data (an impossible partition,
    more clients than samples, ...) reported as a :class:`ConfigError`."""
    try:
        return build_run(config, progress=progress)
    except ValueError as error:
        raise ConfigError(f"the config does not fit the data: {' '.join(str(error).split())}") from None


def _build_lazy(config: ExperimentConfig, dataset, clients):
    from fedsim.algorithms.lazy import LazyRun
    return LazyRun(config.lazy, dataset, clients, f_star=config.run.f_star)


# ---------------------------------------------------------------------------------------------------------
# summaries and targets (shared by the run, `fedsim compare` and the plots)


def total_bits(record: dict) -> int:
    """Bits of one federated round, up + down."""
    return int(record.get("bits_up", 0)) + int(record.get("bits_down", 0))


def federated_reach(history: list[dict], target_accuracy: float) -> dict | None:
    """The first round whose test accuracy is >= ``target_accuracy``: its round and the bits (up, down,
    total) spent through it; None if never reached."""
    up = down = 0
    for record in history:
        up += int(record.get("bits_up", 0))
        down += int(record.get("bits_down", 0))
        if record.get("test_accuracy", -1.0) >= target_accuracy:
            return {"round": int(record["round"]), "bits_up": up, "bits_down": down, "bits": up + down}
    return None


def lazy_bits_before(history: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Uploads and bits spent to reach theta^k, for each record k (those of iterations 0..k-1)."""
    communications = np.array([r["communications"] for r in history], dtype=np.int64)
    bits = np.array([r["bits"] for r in history], dtype=np.int64)
    shift = lambda values: np.concatenate(([0], values[:-1])).astype(np.int64)   # noqa: E731
    return shift(communications), shift(bits)


def lazy_reach(history: list[dict], f_star: float, tolerance: float) -> dict | None:
    """Iterations, communications and bits to the first theta^k with f(theta^k) - f* <= tolerance."""
    if not history:
        return None
    objective = np.array([r["objective"] for r in history])
    hits = np.flatnonzero(objective - f_star <= tolerance)
    if hits.size == 0:
        return None
    k = int(hits[0])
    communications, bits = lazy_bits_before(history)
    return {"iteration": k, "communications": int(communications[k]), "bits": int(bits[k])}


def lazy_f_star(runs: list[RunResult]) -> float:
    """``f*`` for lazy runs compared together: the one in their configs if they all agree on one, else
    the smallest objective any of them reached."""
    configured = {run.config.get("run", {}).get("f_star") for run in runs}
    if len(configured) == 1 and None not in configured:
        return float(configured.pop())
    values = [min(r["objective"] for r in run.history) for run in runs if run.history]
    if not values:
        raise ValueError("no lazy run with at least one iteration to estimate f* from")
    return float(min(values))


def summarize(config: ExperimentConfig, history: list[dict]) -> dict:
    """Final and best accuracy, totals of bits and time, from a run's records."""
    accuracies = [(r["test_accuracy"], i) for i, r in enumerate(history) if "test_accuracy" in r]
    summary = {"family": config.family, "method": config.method, "completed": len(history),
               "planned": config.steps, "seconds": float(sum(r.get("time", 0.0) for r in history))}
    if config.family == "federated":
        summary["bits_up"] = sum(int(r.get("bits_up", 0)) for r in history)
        summary["bits_down"] = sum(int(r.get("bits_down", 0)) for r in history)
        summary["bits"] = summary["bits_up"] + summary["bits_down"]
        if accuracies:
            best, at = max(accuracies)
            summary.update(final_test_accuracy=accuracies[-1][0], best_test_accuracy=best,
                           best_round=history[at]["round"])
    else:
        if history:
            last = history[-1]
            summary.update(final_objective=last["objective"], final_grad_norm_sq=last["grad_norm_sq"],
                           communications=last["communications"], bits=last["bits"],
                           min_objective=float(min(r["objective"] for r in history)))
            final = last.get("final_test_accuracy", accuracies[-1][0] if accuracies else None)
            if final is not None:
                summary["final_test_accuracy"] = final
            values = [a for a, _ in accuracies] + ([final] if final is not None else [])
            if values:
                summary["best_test_accuracy"] = max(values)
    return summary


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
        return "rounds" if self.family == "federated" else "iterations"

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


def _postfix(family: str, record: dict, state: dict) -> str:
    if family == "federated":
        state["bits"] = state.get("bits", 0) + total_bits(record)
        if "test_accuracy" in record:
            state["accuracy"] = record["test_accuracy"]
        accuracy = f"acc {state['accuracy']:.4f}  " if "accuracy" in state else ""
        return f"{accuracy}bits {state['bits']:.3g}"
    if "test_accuracy" in record:
        state["accuracy"] = record["test_accuracy"]
    accuracy = f"  acc {state['accuracy']:.4f}" if "accuracy" in state else ""
    return (f"f {record['objective']:.6g}  |grad|^2 {record['grad_norm_sq']:.3g}  "
            f"bits {record['bits']:.3g}{accuracy}")


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
    family = config.family
    progress = show_progress(quiet)
    state: dict = {}
    for record in run.history:           # a resumed run: the postfix starts from the totals so far
        _postfix(family, record, state)
    session_started = time.perf_counter()
    status, message = "completed", ""
    from tqdm.auto import tqdm

    with _StopOnSignals() as stop, folder.open_history() as history_file:
        unit = "round" if family == "federated" else "it"
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
                bar.set_postfix_str(_postfix(family, record, state), refresh=False)
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
    return RunOutcome(status, family, folder, run.completed, planned, summary, message,
                      stop.received if status == "interrupted" else None)


def _end_session(folder: RunFolder, status: str, completed: int, seconds: float) -> None:
    meta = folder.read_json(META_FILE) or {}
    sessions = meta.setdefault("sessions", [{}])
    sessions[-1].update(ended=_now(), status=status, to=completed, seconds=seconds)
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
            **environment(), **git_commit(), "started": _now(),
            "command": list(sys.argv if command is None else command),
            "sessions": [{"started": _now(), "from": 0}]}
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
    meta.setdefault("sessions", []).append({"started": _now(), "from": completed})
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


# ---------------------------------------------------------------------------------------------------------
# reading finished runs


@dataclass
class RunResult:
    """A run folder read back: its config (as parsed TOML), records, summary and metadata."""

    path: Path
    config: dict
    history: list[dict]
    summary: dict | None
    meta: dict

    @property
    def family(self) -> str:
        return self.config.get("family", "federated")

    @property
    def method(self) -> str:
        return self.config.get(self.family, {}).get("method", "?")

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        if self.summary is not None:
            return self.summary.get("status", "completed")
        return "unfinished"


def read_run(path) -> RunResult:
    """Read a run folder (finished or not) for plots and comparisons."""
    from fedsim.config import parse_toml
    folder = RunFolder(path)
    if not folder.exists:
        raise RunFolderError(f"{folder.path} is not a fedsim run folder (no {CONFIG_FILE} in it)")
    config = parse_toml(folder.file(CONFIG_FILE).read_text(encoding="utf-8"), str(folder.file(CONFIG_FILE)))
    return RunResult(folder.path, config, folder.read_history(), folder.read_json(SUMMARY_FILE),
                     folder.read_json(META_FILE) or {})


def strip_wall_time(records: list[dict]) -> list[dict]:
    """Records without their wall-time fields (:data:`WALL_TIME_FIELDS`): what reproduces bit for bit."""
    return [{key: value for key, value in record.items() if key not in WALL_TIME_FIELDS}
            for record in records]


__all__ = ["RunFolder", "RunFolderError", "RunOutcome", "RunResult", "atomic_write_bytes",
           "atomic_write_text", "build_run", "default_run_dir", "environment", "execute", "federated_reach",
           "git_commit", "lazy_bits_before", "lazy_f_star", "lazy_reach", "read_run",
           "resume_run", "start_run", "strip_wall_time", "summarize"]
