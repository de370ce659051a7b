"""The run folder and its files: what each holds, atomic writes, checkpoints, reading a run back.

A run folder holds::

    config.toml        the effective config (every setting written out); what --resume rebuilds the run from
    meta.json          seed, versions (fedsim, numpy, numba, python), git commit, start time, sessions (each
                       resume's start, fedsim version and git commit; each session's end, steps and seconds)
    history.jsonl      one JSON record per round (federated) or iteration (lazy), appended and flushed
    checkpoint.npz     the run's state after `completed` steps: arrays + the JSON metadata (key __meta__)
    checkpoint.json    a small readable note of the checkpoint: completed steps, time, checksum of the npz
    summary.json       written when the run ends (completed or diverged); its ``seconds`` sum the records' step
                       times, ``wall_seconds`` the sessions' (a killed session's up to its last checkpoint)
    .lock              the pid of the one process writing the folder (which holds an OS lock on the folder)

Identity: meta.json records a random ``run_id`` and the sha256 of the canonical effective config
(:func:`fedsim.config.config_fingerprint`); every checkpoint carries both, and checkpoint.json the sha256
of checkpoint.npz. A resume refuses an edited config.toml (listing the changed settings), a checkpoint
of another run, and a corrupt or truncated checkpoint, each with one line; nothing is deleted but the
temporary files of writes a kill interrupted (``.<file>.<pid>-<random>.part``).

Consistency rules (so that a run killed at any instant, even by SIGKILL, resumes exactly):

* every file except history.jsonl is replaced atomically (:func:`fedsim.files.write_atomic`); checkpoint.npz
  is self-contained (its metadata is inside it), so a kill between the two checkpoint files leaves a usable one;
* a history record is appended after its step and before any checkpoint that includes the step, so
  history.jsonl always holds at least the checkpoint's steps; on resume it is cut back (atomically) to
  exactly the checkpoint's ``completed`` records, dropping records of steps done after the checkpoint and
  a possibly half-written last line;
* the run state restores every random stream, so the continued run is bitwise identical to an
  uninterrupted one (only the wall-time field ``time`` of the records differs).
"""

from __future__ import annotations

import datetime as _datetime
import hashlib
import io
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.algorithms.family import FAMILIES
from fedsim.config import ExperimentConfig, format_value, load_config_file, parse_toml
from fedsim.config_toml import config_to_toml
from fedsim.files import write_atomic

CONFIG_FILE = "config.toml"
META_FILE = "meta.json"
HISTORY_FILE = "history.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.npz"
CHECKPOINT_NOTE_FILE = "checkpoint.json"
LOCK_FILE = ".lock"
#: The files fedsim writes into a run folder (anything else in a folder marks it as not a run folder).
RUN_FILES = (CONFIG_FILE, META_FILE, HISTORY_FILE, SUMMARY_FILE, CHECKPOINT_FILE, CHECKPOINT_NOTE_FILE, LOCK_FILE)
_META_KEY = "__meta__"
_IDENTITY_KEY = "__identity__"


class RunFolderError(ValueError):
    """A run folder that is missing, not a fedsim run, or cannot be continued."""


def _json_default(value):
    for kind, convert in ((np.integer, int), (np.floating, float), (np.bool_, bool), (np.ndarray, np.ndarray.tolist)):
        if isinstance(value, kind):
            return convert(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(value, indent: int | None = None) -> str:
    """JSON text of records and metadata (NumPy scalars and arrays become numbers and lists; floats
    are written with ``repr``, so they read back bit for bit)."""
    return json.dumps(value, default=_json_default, indent=indent)


def now() -> str:
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
        write_atomic(self.file(CONFIG_FILE), config_to_toml(config, header=header))

    def config_file(self) -> Path:
        """The folder's config.toml (RunFolderError if it has none: it is not a run folder)."""
        if not self.exists:
            raise RunFolderError(f"{self.path} is not a fedsim run folder (no {CONFIG_FILE} in it)")
        return self.file(CONFIG_FILE)

    def read_config(self) -> ExperimentConfig:
        return load_config_file(self.config_file(), source=str(self.config_file()))

    def write_json(self, name: str, value) -> None:
        write_atomic(self.file(name), to_json(value, indent=1) + "\n")

    def read_json(self, name: str) -> dict | None:
        """The JSON object in file ``name``, None if there is no such file (RunFolderError if it is not
        a JSON object)."""
        path = self.file(name)
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise RunFolderError(f"{path} is not valid JSON ({_short(error)}); it was changed or damaged "
                                 f"outside fedsim") from None
        if not isinstance(value, dict):
            raise RunFolderError(f"{path} must hold a JSON object, got {type(value).__name__}")
        return value

    # history
    def read_history(self) -> list[dict]:
        """The complete records of history.jsonl (a half-written last line is left out; a complete line
        that is not a JSON object is a RunFolderError naming its line number)."""
        records = []
        for number, line in enumerate(self._complete_lines(), start=1):
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
                raise RunFolderError(f"{self.file(HISTORY_FILE)} line {number} is not a JSON record "
                                     f"({_short(error)}); it was changed or damaged outside fedsim") from None
            if not isinstance(record, dict):
                raise RunFolderError(f"{self.file(HISTORY_FILE)} line {number} must be a JSON object")
            records.append(record)
        return records

    def _complete_lines(self) -> list[bytes]:
        path = self.file(HISTORY_FILE)
        if not path.is_file():
            return []
        lines = path.read_bytes().split(b"\n")
        return [line for line in lines[:-1] if line.strip()]   # the part after the last newline is partial

    def truncate_history(self, count: int, records: list[dict] | None = None) -> None:
        """Cut history.jsonl back to its first ``count`` records (atomically); if it holds fewer (edited by
        hand), ``records`` (the checkpoint's own copy of the history) are written instead."""
        lines = self._complete_lines()
        if len(lines) >= count:
            kept = b"".join(line + b"\n" for line in lines[:count])
        elif records is not None and len(records) == count:
            kept = "".join(to_json(record) + "\n" for record in records).encode("utf-8")
        else:
            raise RunFolderError(f"{self.file(HISTORY_FILE)} holds {len(lines)} records but the checkpoint "
                                 f"has {count} completed steps")
        write_atomic(self.file(HISTORY_FILE), kept)

    def open_history(self):
        """history.jsonl opened for appending (text, line by line)."""
        return open(self.file(HISTORY_FILE), "a", encoding="utf-8")

    # checkpoints
    def write_checkpoint(self, arrays: dict[str, np.ndarray], meta: dict, planned: int,
                         identity: dict | None = None) -> None:
        """checkpoint.npz (arrays + metadata + the run's identity, atomically), then the note
        checkpoint.json with the npz's sha256."""
        for key in arrays:
            if key in (_META_KEY, _IDENTITY_KEY):
                raise ValueError(f"state array name {key!r} is reserved for the checkpoint metadata")
        meta_bytes = to_json(meta).encode("utf-8")
        identity_bytes = to_json(identity or {}).encode("utf-8")
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, **{_META_KEY: np.frombuffer(meta_bytes, dtype=np.uint8),
                                      _IDENTITY_KEY: np.frombuffer(identity_bytes, dtype=np.uint8)})
        data = buffer.getvalue()
        write_atomic(self.file(CHECKPOINT_FILE), data)
        completed = _completed_of(meta)
        self.write_json(CHECKPOINT_NOTE_FILE, {
            "completed": completed, "planned": planned, "written": now(), "file": CHECKPOINT_FILE,
            "sha256": hashlib.sha256(data).hexdigest()})

    def read_checkpoint(self) -> tuple[dict[str, np.ndarray], dict, dict] | None:
        """(arrays, metadata, identity) of checkpoint.npz, or None when the run has no checkpoint yet.

        A file that is not a complete fedsim checkpoint (truncated, corrupt, not an npz, arrays of
        Python objects) is a RunFolderError in one line; so is a file whose sha256 is not the one
        checkpoint.json recorded, unless the note is older than the file (a kill between the two writes).
        """
        path = self.file(CHECKPOINT_FILE)
        if not path.is_file():
            return None
        try:
            data = path.read_bytes()
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
            meta = json.loads(arrays.pop(_META_KEY).tobytes().decode("utf-8"))
            identity = json.loads(arrays.pop(_IDENTITY_KEY).tobytes().decode("utf-8")) \
                if _IDENTITY_KEY in arrays else {}
            completed = _completed_of(meta)
        except Exception as error:          # zipfile, EOF, pickle refusal, missing keys, bad JSON, ...
            why = ("it holds Python objects, which fedsim never writes" if "allow_pickle" in str(error)
                   else f"{type(error).__name__}: {_short(error)}")
            raise RunFolderError(f"{path} is not a readable fedsim checkpoint ({why}): it is truncated, "
                                 f"damaged or not fedsim's; the run cannot be resumed from it") from None
        note = self.read_json(CHECKPOINT_NOTE_FILE) or {}
        digest = hashlib.sha256(data).hexdigest()
        if note.get("sha256") not in (None, digest) and int(note.get("completed", -1)) >= completed:
            raise RunFolderError(f"{path} is not the checkpoint {CHECKPOINT_NOTE_FILE} recorded (sha256 "
                                 f"{digest[:12]}... instead of {str(note['sha256'])[:12]}...): it was replaced "
                                 f"or damaged; the run cannot be resumed from it")
        return arrays, meta, identity

    def remove_partial_writes(self) -> None:
        """Delete the temporary files of atomic writes a kill interrupted; only for the folder's owner
        (:meth:`lock`): no write is then under way."""
        for name in RUN_FILES:
            for partial in self.path.glob(f".{name}.*.part"):
                partial.unlink(missing_ok=True)

    # ownership
    def lock(self) -> "FolderLock":
        """Own the folder for this process (:class:`FolderLock`; RunFolderError if another process owns it)."""
        return FolderLock(self.file(LOCK_FILE))


def _completed_of(meta: dict) -> int:
    """Steps done according to a run's state metadata (federated: ``round``; lazy: ``completed``)."""
    for key in ("completed", "round", "iteration"):
        if key in meta:
            return int(meta[key])
    raise RunFolderError(f"checkpoint metadata has none of completed/round/iteration: {sorted(meta)}")


def _short(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FolderLock:
    """An exclusive, non-blocking OS lock (fcntl.flock) on the folder of file ``path``; ``path`` holds the
    owner's pid, for the message another process gets (:attr:`refusal`, raised as :attr:`error`).

    The lock is on the folder itself, not on the pid file: deleting ``path`` (``rm .lock``) while the
    owner runs leaves the owner's lock in place, so a second writer is still refused. Where a folder
    cannot be locked (NFS emulates flock with write locks, which a folder cannot take), the pid file is
    locked instead. The operating system releases the lock when the process ends, however it ends (kill -9
    included), so a lock left by a dead process is no lock: the next owner takes it and writes its pid.
    """

    error = RunFolderError
    refusal = ("{folder} is in use by another fedsim process (pid {holder}); wait for it to end, or stop it, "
               "before writing this run folder")

    def __init__(self, path: Path):
        self.path = Path(path)
        self._descriptors: list[int] = []

    def _take(self, descriptor: int) -> bool:
        """flock ``descriptor``: True if taken, False if another process holds it (OSError otherwise)."""
        import errno
        import fcntl
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        return True

    def __enter__(self) -> "FolderLock":
        folder = self.path.parent
        try:
            self._descriptors.append(os.open(folder, os.O_RDONLY))
            taken = self._take(self._descriptors[0])
        except OSError:          # a folder that cannot be locked: the pid file is, below
            self._release()
            taken = None
        if taken is not False:
            try:
                self._descriptors.append(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666))
                taken = taken or self._take(self._descriptors[-1])
            except OSError as error:
                self._release()
                raise RunFolderError(f"cannot create and lock {self.path} ({error.strerror}); the run folder "
                                     f"must be writable") from None
        if not taken:
            self._release()
            try:
                holder = self.path.read_text(encoding="ascii", errors="replace").strip() or "unknown"
            except OSError:
                holder = "unknown"        # its .lock was deleted: the owner lives on all the same
            raise self.error(self.refusal.format(folder=folder, holder=holder))
        descriptor = self._descriptors[-1]
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        return self

    def _release(self) -> None:
        while self._descriptors:
            os.close(self._descriptors.pop())

    def __exit__(self, *exc) -> bool:
        if self._descriptors:
            os.ftruncate(self._descriptors[-1], 0)
            self._release()                     # closing releases the lock
        return False


def foreign_files(path: Path, known, limit: int) -> str:
    """The first ``limit`` entries of folder ``path`` that fedsim did not write (not in ``known``, not hidden),
    listed ("" if none)."""
    foreign = sorted(entry.name for entry in path.iterdir()
                     if entry.name not in known and not entry.name.startswith("."))
    return ", ".join(foreign[:limit]) + (" ..." if len(foreign) > limit else "")


def check_new_run_target(path: Path) -> None:
    """Refuse an --out that is a file, already holds a run, or holds files fedsim did not write: a folder is taken
    only empty (hidden files aside) or as a kill left it before its config.toml, holding fedsim's meta.json."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"--out {path} is a file, not a folder; choose a new or empty folder")
    listed = foreign_files(path, RUN_FILES + ("plots",), 5) if path.is_dir() else ""
    if not listed and (path / CONFIG_FILE).is_file():
        raise RunFolderError(f"{path} already holds a run; continue it with "
                             f"`fedsim run --resume {shlex.quote(str(path))}` or choose another --out")
    if not listed and path.is_dir() and not _started_here(path):
        listed = foreign_files(path, (), 5)
    if listed:
        raise RunFolderError(f"--out {path} is not empty and not a fedsim run folder (it holds {listed}); "
                             f"fedsim writes only into a new or empty folder, so nothing of yours is overwritten")


def _started_here(path: Path) -> bool:
    """Whether folder ``path`` holds nothing but hidden files and a meta.json as fedsim writes it (with its run id
    and config hash): a run killed before its config.toml was written."""
    if foreign_files(path, (META_FILE,), 1) or not (path / META_FILE).is_file():
        return not foreign_files(path, (), 1)
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(meta, dict) and all(isinstance(meta.get(key), str) and re.fullmatch(f"[0-9a-f]{{{size}}}",
                                          meta[key]) for key, size in (("run_id", 32), ("config_sha256", 64)))


def default_run_dir(name: str, root="runs", create: bool = False) -> Path:
    """``<root>/<name>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... appended if that exists already; ``create``
    makes the folder, taking the next name if another process took this one meanwhile."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "run"
    stamp = _datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{safe}-{stamp}"
    candidate, count = base, 1
    while True:
        try:
            if create:
                candidate.mkdir(parents=True)       # FileExistsError if taken, even by a process this instant
            elif candidate.exists():
                raise FileExistsError
            return candidate
        except FileExistsError:
            count += 1
            candidate = Path(f"{base}-{count}")
        except OSError as error:
            raise RunFolderError(f"cannot create the run folder {candidate} ({error.strerror})") from None


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
    label: str = ""            # its name in tables and legends: the folder's, or more of its path (tell_apart)

    def __post_init__(self):
        self.label = self.label or self.path.name

    @property
    def family(self) -> str:
        return self.config.get("family", ExperimentConfig.family)

    @property
    def method(self) -> str:
        return self.config.get(self.family, {}).get("method", "?")

    @property
    def status(self) -> str:
        if self.summary is not None:
            return self.summary.get("status", "completed")
        return "unfinished"


def tell_apart(runs: list[RunResult]) -> list[RunResult]:
    """``runs``, each labelled by as many of its path's last parts as tell it from the others (``A/x``, ``B/x``)."""
    paths = [Path(os.path.abspath(run.path)).parts for run in runs]
    for run, parts in zip(runs, paths):
        depth = 1
        while depth < len(parts) and any(other != parts and other[-depth:] == parts[-depth:] for other in paths):
            depth += 1
        run.label = str(Path(*parts[-depth:]))
    return runs


def listed_differences(before: dict, after: dict, limit: int) -> str:
    """``"table.setting: old -> new"`` for each setting that differs between two config dicts (as
    :func:`fedsim.config.config_to_dict` gives them, with ``keep_unset``): the first ``limit`` joined by
    ``; `` (and how many more)."""
    def flat(document: dict) -> dict:
        items = {}
        for key, value in document.items():
            if isinstance(value, dict):
                items.update({f"{key}.{name}": inner for name, inner in value.items()})
            else:
                items[key] = value
        return items
    old, new = flat(before), flat(after)
    changes = [f"{key}: {format_value(old.get(key))} -> {format_value(new.get(key))}"
               for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return "; ".join(changes[:limit]) + (f"; and {len(changes) - limit} more" if len(changes) > limit else "")


_KINDS = {int: "an integer", float: "a number", list: "a list of integers"}


def _of_kind(value, kind) -> bool:
    if kind is list:
        return isinstance(value, list) and all(_of_kind(item, int) for item in value)
    return isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)


def check_records(records: list[dict], declared, path, planned=None) -> None:
    """RunFolderError naming ``path`` and the line of the first of ``records`` not of the shape the family
    ``declared`` gives them (``Report.fields``): a field missing or of another kind, a step's number out of
    turn, or a record past the ``planned`` steps."""
    fields = declared.report.fields
    step = next(iter(fields), None)
    if isinstance(planned, int) and len(records) > planned:
        raise RunFolderError(f"{path} line {planned + 1}: a record past the {planned} {declared.units} of the "
                             f"run's {CONFIG_FILE}; it was changed or damaged outside fedsim")
    for number, record in enumerate(records, start=1):
        for name, (kind, required) in fields.items():
            value = record.get(name)
            if (value is not None or required) and not _of_kind(value, kind):
                got = _short(to_json(value)) if name in record else "nothing"
                raise RunFolderError(f"{path} line {number}: {name} must be {_KINDS[kind]}, got {got}; it was "
                                     f"changed or damaged outside fedsim")
        if step is not None and record[step] != records[0][step] + number - 1:
            raise RunFolderError(f"{path} line {number} holds {step} {record[step]} after {step} "
                                 f"{records[number - 2][step]}; it was changed or damaged outside fedsim")


def read_run(path) -> RunResult:
    """Read a run folder (finished or not) for plots and comparisons; its records are checked against their
    family's fields (:func:`check_records`)."""
    folder = RunFolder(path)
    config = parse_toml(folder.config_file().read_text(encoding="utf-8"), str(folder.config_file()))
    run = RunResult(folder.path, config, folder.read_history(), folder.read_json(SUMMARY_FILE),
                    folder.read_json(META_FILE) or {})
    declared = FAMILIES.get(run.family)
    if declared is not None:
        check_records(run.history, declared, folder.file(HISTORY_FILE),
                      (config.get(run.family) or {}).get(declared.steps_setting))
    return run


__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_NOTE_FILE", "CONFIG_FILE", "FolderLock", "HISTORY_FILE", "LOCK_FILE",
           "META_FILE", "RUN_FILES", "SUMMARY_FILE", "RunFolder", "RunFolderError", "RunResult", "check_records",
           "check_new_run_target", "default_run_dir", "foreign_files", "listed_differences", "now", "read_run",
           "tell_apart", "to_json"]
