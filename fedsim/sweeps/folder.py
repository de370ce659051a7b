"""The sweep folder: its manifest, its one owner, and the check of every run folder it reuses or reports.

A sweep folder holds::

    manifest.json     the sweep's identity (spec_sha256, :attr:`fedsim.sweeps.spec.Sweep.identity`), the text
                      of its sweep file as the runs used it, its axes, and per run: folder, label, axis values,
                      config sha256 and status; replaced atomically after every finished run
    runs/<folder>/    one ordinary run folder per planned run
    .lock             held (an OS file lock, :class:`fedsim.runs.folder.FolderLock`) by the sweep writing it

Trust, in four rules:

* **one sweep per folder**: a sweep whose identity differs from the manifest's, or a folder holding files
  no sweep wrote, is refused in one line (the same sweep resumes);
* **one writer**: the coordinator holds ``.lock`` from before it reads the manifest to after it writes
  the last one, so a second sweep into the folder is refused at once and touches nothing;
* **no run taken on trust**: a run folder is reused (skipped or resumed) or reported only if its
  meta.json is the planned run's (config sha256 and name) and, when it ended, its summary's completed
  steps are the planned ones (:func:`check_run_folder`). A folder that is not is left alone and named in
  one line with what differs; a damaged summary.json is put aside and the run finished again;
* **one version of each file**: a sweep continued after a file its runs read (npz data, a trace: meta.json's
  sha256) changed is refused before any run starts (:func:`check_recorded_files`); the report names the runs
  that read another version than the others (:func:`differing_versions`).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from fedsim.config import config_to_dict
from fedsim.runs.folder import (CHECKPOINT_NOTE_FILE, CONFIG_FILE, META_FILE, SUMMARY_FILE, FolderLock, RunFolder,
                                RunFolderError, foreign_files, listed_differences, now, read_run)
from fedsim.sweeps.spec import Sweep

MANIFEST = "manifest.json"
RUNS_FOLDER = "runs"
#: What a sweep writes at the top of its folder (besides hidden files).
SWEEP_FILES = (MANIFEST, RUNS_FOLDER, "report.csv", "plots")
#: Statuses that end a run for good (a rerun skips them); "interrupted" and "failed" runs are tried again.
FINAL = ("completed", "diverged")
#: The status of a planned run whose folder holds something else: never run over, never reported.
MISMATCHED = "mismatched"
#: Where a damaged summary.json is put aside (hidden, so the folder stays a run folder).
DAMAGED_SUMMARY = ".damaged-summary.json"


class SweepError(ValueError):
    """A sweep that cannot be run as asked (a bad backend, worker count, folder)."""


def run_folder(out: Path, planned) -> Path:
    return Path(out) / RUNS_FOLDER / planned.folder_name


def sweep_options(backend=None, scheduler=None, workers=None, threads=None) -> list[str]:
    """The options that say where and how a sweep runs, as arguments (those not given, and the local backend, left
    out): the command that continues it repeats them."""
    return [str(item) for flag, value in (("--backend", None if backend in (None, "local") else backend),
                                          ("--scheduler", scheduler), ("--workers", workers), ("--threads", threads))
            if value is not None for item in (flag, value)]


def resume_command(sweep_path, out, options=()) -> str:
    """The command that continues a sweep (``options``: the original command's backend, scheduler, workers and
    threads, as arguments: :func:`sweep_options`), quoted for a shell."""
    return shlex.join(["fedsim", "sweep", str(sweep_path), "--out", str(out), *map(str, options)])


def resume_hint(sweep_path, out, options=()) -> str:
    """What to say when a sweep stops early."""
    return f"finished runs and checkpoints are kept. Continue with: {resume_command(sweep_path, out, options)}"


def say(text: str) -> None:
    """One line about the sweep on stderr (``fedsim: sweep: ...``), also when progress is quiet."""
    print(f"fedsim: sweep: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# the manifest


def write_manifest(out: Path, sweep: Sweep, statuses: dict[str, dict]) -> None:
    """Replace manifest.json (atomically) by the sweep's plan and the runs' ``statuses`` (by folder name)."""
    runs = [{"folder": f"{RUNS_FOLDER}/{planned.folder_name}", "label": planned.label,
             "values": dict(planned.values), "config_sha256": planned.config_sha256,
             **statuses.get(planned.folder_name, {"status": "pending"})}
            for planned in sweep.runs]
    manifest = {"name": sweep.name, "spec_sha256": sweep.identity, "base": sweep.base,
                "sweep_file": str(sweep.source), "sweep_text": sweep.text, "fixed": dict(sweep.fixed),
                "axes": {name: list(values) for name, values in sweep.axes}, "zipped": list(sweep.zipped),
                "updated": now(), "runs": runs}
    RunFolder(out).write_json(MANIFEST, manifest)


def read_manifest(out) -> dict:
    manifest = RunFolder(out).read_json(MANIFEST)
    if manifest is None:
        raise RunFolderError(f"{out} is not a sweep folder (no {MANIFEST} in it)")
    return manifest


class SweepLock(FolderLock):
    """The sweep folder's ``.lock`` (``SweepLock(out / LOCK_FILE)``): the run folder's lock, refusing in a
    sweep's words."""

    error = SweepError
    refusal = ("{folder} is in use by another fedsim sweep (pid {holder}); wait for it to end (or stop it), "
               "then run the same command again to finish this one")


def claim(out: Path, sweep: Sweep) -> None:
    """Make sure ``out`` is this sweep's folder, or a new one (SweepError, one line, if it is another's)."""
    if not out.is_dir():
        return
    manifest = RunFolder(out).read_json(MANIFEST)
    if manifest is None:
        listed = foreign_files(out, SWEEP_FILES, 3)
        if listed:
            raise SweepError(f"--out {out} is not a sweep folder (it holds {listed}); give the sweep a new or "
                             f"empty folder")
        return
    recorded = manifest.get("spec_sha256")
    if recorded is None:        # a manifest of a fedsim before spec_sha256: the same runs, the same sweep
        mine = {f"{RUNS_FOLDER}/{planned.folder_name}" for planned in sweep.runs}
        same = {run.get("folder") for run in manifest.get("runs", []) if isinstance(run, dict)} == mine
    else:
        same = recorded == sweep.identity
    if not same:
        raise SweepError(f"--out {out} holds another sweep ({manifest.get('name')!r} of "
                         f"{manifest.get('sweep_file')}, its text in {MANIFEST}); a sweep folder belongs to one "
                         f"sweep: give this one another --out (or run that sweep's file to continue it)")


# ---------------------------------------------------------------------------------------------------------
# the run folders


def check_run_folder(path: Path, *, label: str, config_sha256: str | None) -> str | None:
    """What keeps the run folder ``path`` from being the run ``label`` of config ``config_sha256``, in a few
    words (:func:`identity_problem`, then :func:`summary_problem`); None if it is that run (or holds no run
    yet). RunFolderError if a file cannot be read."""
    return (identity_problem(path, label=label, config_sha256=config_sha256)
            or summary_problem(RunFolder(path).read_json(SUMMARY_FILE)))


def identity_problem(path: Path, *, label: str, config_sha256: str | None, config=None) -> str | None:
    """What in the run folder's meta.json is not the run ``label`` of config ``config_sha256`` (None: the
    sha256 whose first 10 hex digits end the folder's name, as a sweep names it; ``config``, the planned
    ExperimentConfig, lists the settings that differ); None if it is that run or the folder holds no run."""
    folder = RunFolder(path)
    meta = folder.read_json(META_FILE)
    if meta is None:
        started = folder.exists or any(folder.file(name).exists() for name in (SUMMARY_FILE, CHECKPOINT_NOTE_FILE))
        return f"it has no {META_FILE}, so it is not a run this sweep started" if started else None
    recorded, name = str(meta.get("config_sha256")), meta.get("name")
    holds = f"the run {name!r}, not {label!r}," if name != label else "a run"
    if config_sha256 is None:
        named = path.name.rsplit("-", 1)[-1]
        if not recorded.startswith(named):
            return (f"its config sha256 {recorded[:10]}... is not the {named} in its name (it holds {holds} of "
                    f"other settings): it was extended, moved or edited")
    elif recorded != config_sha256:
        listed = listed_differences(config_to_dict(config, keep_unset=True), meta.get("config") or {}, 4) \
            if config is not None else ""
        listed = listed or f"config sha256 {recorded[:12]}... instead of {config_sha256[:12]}..."
        return f"it holds {holds} of other settings than planned ({listed}): it was extended, moved or edited"
    if name != label:
        return f"it holds the run {name!r}, not {label!r}"
    return None


def summary_problem(summary: dict | None) -> str | None:
    """A completed summary whose completed steps are not its planned ones (an edited summary.json)."""
    if summary is not None and summary.get("status", "completed") == "completed" and \
            summary.get("completed") != summary.get("planned"):
        return f"its summary says completed after {summary.get('completed')} of {summary.get('planned')} steps"
    return None


def check_recorded_files(out: Path, sweep: Sweep) -> None:
    """SweepError (one line) if a file that a run of the sweep read (an npz dataset, a trace: meta.json's
    data_file, trace_file) is not the same now: the runs still to run would read other data than those that ran.
    Folders that are not their planned run are left to :func:`reuse_decision`."""
    from fedsim.experiment_data import changed_file
    for planned in sweep.runs:
        path = run_folder(out, planned)
        try:
            meta = None if identity_problem(path, label=planned.label, config_sha256=planned.config_sha256) \
                else RunFolder(path).read_json(META_FILE)
        except RunFolderError:
            continue
        changed = meta and changed_file(planned.config.data, meta, planned.config.system)
        if changed:
            raise SweepError(f"{RUNS_FOLDER}/{planned.folder_name}: {changed}; the runs of a sweep read one file: "
                             f"put it back, or start the sweep in a new folder (another --out)")


def differing_versions(metas: dict[str, dict]) -> dict[str, str]:
    """The run folders of ``metas`` (folder -> its meta.json) that read another version of a file (meta.json's
    data_file, trace_file: path and sha256) than other runs did, each with a few words: those that did not read
    the file as it is now (all of them if it is none of their versions). A sweep checks its files as it starts
    (:func:`check_recorded_files`); a file changed while it ran, or a run folder of another sweep moved in, can
    still mix versions."""
    from fedsim.data.npz import file_sha256
    from fedsim.data.registry import DataSettingError
    versions: dict[tuple, dict[str, list]] = {}
    for folder, meta in metas.items():
        for key in ("data_file", "trace_file"):
            record = meta.get(key)
            if isinstance(record, dict) and isinstance(record.get("sha256"), str):
                versions.setdefault((key, str(record.get("path"))), {}).setdefault(record["sha256"], []).append(folder)
    problems = {}
    for (key, path), readers in versions.items():
        if len(readers) < 2:
            continue
        try:
            now = file_sha256(Path(path))
            now_text = f"the file now is {now[:16]}..."
        except DataSettingError:
            now, now_text = None, "the file is now missing or unreadable"
        counted = ", ".join(f"{sha[:16]}...: {len(folders)} run{'s' if len(folders) > 1 else ''}"
                            for sha, folders in readers.items())
        setting = f"data.dataset npz:{path}" if key == "data_file" else f"system.trace {path}"
        for sha, folders in readers.items():
            if sha != now:
                problems.update(dict.fromkeys(folders, (
                    f"{setting}: it read the file with sha256 {sha[:16]}..., other runs of the sweep another "
                    f"version (sha256 {counted}; {now_text})")))
    return problems


def reuse_decision(out: Path, sweep: Sweep) -> tuple[dict[str, dict], list]:
    """(the statuses of the planned runs not to run, finished or mismatched, by folder name; the planned
    runs to start or resume), each existing run folder checked as :func:`check_run_folder` does, and a finished
    one's records as ``sweep report`` reads them (:func:`fedsim.runs.read_run`)."""
    statuses: dict[str, dict] = {}
    pending = []
    for planned in sweep.runs:
        path = run_folder(out, planned)
        where = f"{RUNS_FOLDER}/{planned.folder_name}"
        for earlier in map(path.with_name, planned.earlier_folder_names):
            if earlier != path and earlier.is_dir() and not path.exists():     # a run an earlier fedsim named
                earlier.rename(path)
                say(f"{RUNS_FOLDER}/{earlier.name} is now {where} (a name shows its values as they are: a long "
                    f"label cut between settings, not in a value; '+' and brackets kept)")
        try:
            problem = identity_problem(path, label=planned.label, config_sha256=planned.config_sha256,
                                       config=planned.config)
            summary = None if problem else _readable_summary(path, where)
            problem = problem or summary_problem(summary)
            if problem is None and summary is not None and summary.get("status") in FINAL:
                read_run(path)          # its history checked as sweep report reads it (RunFolderError: a problem)
        except RunFolderError as error:
            problem = str(error)
        if problem is not None:        # said at the end (naming the folder), with every run that did not complete
            statuses[planned.folder_name] = {"status": MISMATCHED, "message": f"{problem}; left as found (move "
                                             f"it out of {RUNS_FOLDER}/ to run it again)"}
        elif summary is not None and summary.get("status") in FINAL:
            statuses[planned.folder_name] = run_entry(summary)
        else:
            pending.append(planned)
    return statuses, pending


def _readable_summary(path: Path, where: str) -> dict | None:
    """The run folder's summary.json; one that cannot be read is moved to :data:`DAMAGED_SUMMARY` (said in
    one line) and the run finishes again from its last checkpoint (a completed run's is its last step)."""
    try:
        return RunFolder(path).read_json(SUMMARY_FILE)
    except RunFolderError as error:
        try:
            path.joinpath(SUMMARY_FILE).replace(path / DAMAGED_SUMMARY)
        except OSError as failure:
            raise RunFolderError(f"{error}; it cannot be put aside ({failure.strerror})") from None
    again = "from its last checkpoint" if path.joinpath(CONFIG_FILE).is_file() else "from the start"
    say(f"{where}/{SUMMARY_FILE} is damaged (kept as {DAMAGED_SUMMARY}); the run is finished again {again}")
    return None


def run_entry(summary: dict) -> dict:
    """A finished run's entry in the manifest (and a worker's answer for it), from its summary.json."""
    return {"status": summary.get("status", "completed"), "message": summary.get("message", ""),
            "completed": summary.get("completed")}


def record_from_folders(out: Path, sweep: Sweep, statuses: dict[str, dict]) -> None:
    """Fill in, from their folders, the runs of ``statuses`` that have none yet (a sweep that stopped
    early): ended runs as their summary says, started ones as interrupted after their checkpoint's steps."""
    for planned in sweep.runs:
        if planned.folder_name in statuses:
            continue
        folder = RunFolder(run_folder(out, planned))
        try:
            summary = folder.read_json(SUMMARY_FILE)
            note = folder.read_json(CHECKPOINT_NOTE_FILE)
        except RunFolderError:
            continue
        if summary is not None:
            statuses[planned.folder_name] = run_entry(summary)
        elif note is not None:
            statuses[planned.folder_name] = {"status": "interrupted", "message": "",
                                             "completed": note.get("completed")}


__all__ = ["DAMAGED_SUMMARY", "FINAL", "MANIFEST", "MISMATCHED", "RUNS_FOLDER", "SweepError", "SweepLock",
           "check_recorded_files", "check_run_folder", "claim", "differing_versions", "identity_problem",
           "read_manifest", "record_from_folders", "resume_hint", "reuse_decision", "run_entry", "run_folder", "say",
           "summary_problem", "sweep_options", "write_manifest"]
