"""What the sweep tests share: the sweep file of tiny synthetic runs, real ``fedsim sweep`` processes (killed
at teardown) and bounded waits on them, and what a sweep folder and its runs hold (the manifest, histories,
checkpoints, lock owners, sessions)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsim.runs import RunFolder
from tests.conftest import clean_env, fedsim
from tests.runs.conftest import history


def sweep_text(name: str | None, rounds: int, checkpoint_every: int, grid: str) -> str:
    """A sweep file of tiny synthetic runs (8 clients) of ``rounds`` rounds over the axes ``grid``
    (``name`` None: no name, the file's stem names the sweep)."""
    named = "" if name is None else f'name = "{name}"\n'
    return (f'base = "synthetic"\n{named}\n[set]\n"data.synthetic_devices" = 8\n"federated.n_clients" = 8\n'
            f'"federated.rounds" = {rounds}\n"run.checkpoint_every" = {checkpoint_every}\n\n[grid]\n{grid}\n')


def write_sweep(folder: Path, name: str, rounds: int, checkpoint_every: int, grid: str) -> Path:
    """:func:`sweep_text` written to ``folder/<name>.toml``."""
    path = folder / f"{name}.toml"
    path.write_text(sweep_text(name, rounds, checkpoint_every, grid))
    return path


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def run_folders(out: Path, sweep) -> list[Path]:
    """The run folders of the planned runs of ``sweep`` in the sweep folder ``out``, in plan order."""
    return [out / "runs" / planned.folder_name for planned in sweep.runs]


def histories(out: Path) -> dict[str, list]:
    """The records (without wall time) of each run folder of the sweep folder ``out``, by folder name."""
    return {folder.name: history(folder) for folder in sorted((out / "runs").iterdir())}


def history_alone(tmp_path: Path, planned, timeout: float = 120) -> list[dict]:
    """The records (without wall time) of the planned run's settings run alone with ``fedsim run``."""
    result = fedsim(tmp_path, "run", "--preset", "synthetic",
                    *[f"--set={key}={json.dumps(value)}" for key, value in planned.overrides],
                    "--quiet", "--out", tmp_path / "alone", timeout=timeout)
    assert result.returncode == 0, result.stderr
    return history(tmp_path / "alone")


def checkpointed(folder: Path) -> int:
    """The steps in the run folder's last checkpoint (0 before the first, or while it is replaced)."""
    try:
        return int(json.loads((folder / "checkpoint.json").read_text())["completed"])
    except (OSError, ValueError, KeyError):
        return 0


def owner(folder: Path) -> int | None:
    """The pid written into the run folder's lock by the process that owns (or last owned) it."""
    try:
        text = (folder / ".lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def run_to_kill(folders, is_worker, rounds: int):
    """(folder, owner's pid, steps checkpointed) of a run of ``folders`` owned by a worker (``is_worker(pid)``)
    with a checkpoint of a tenth to a half of its ``rounds`` and not ended; None if there is none yet."""
    for folder in folders:
        pid, completed = owner(folder), checkpointed(folder)
        if is_worker(pid) and rounds // 10 <= completed <= rounds // 2 and not (folder / "summary.json").exists():
            return folder, pid, completed
    return None


def assert_resumed_once(folder: Path, at: int, rounds: int) -> list[dict]:
    """The run of ``folder``, whose process was killed after a checkpoint of ``at`` steps, was resumed from a
    checkpoint (``at`` or a later one) by a second session that ended it; its sessions."""
    sessions = RunFolder(folder).read_json("meta.json")["sessions"]
    assert len(sessions) == 2 and "ended" not in sessions[0], sessions      # the killed session never ended
    assert at <= sessions[1]["from"] < rounds and sessions[1]["to"] == rounds, (at, sessions)
    return sessions


def stopped_statuses(out: Path, folders: list[Path], rounds: int) -> dict[Path, str]:
    """The manifest's status of each run folder of a sweep a signal stopped, checked against the folder: a
    pending run's folder does not exist (no queued run starts after the stop); an interrupted run stopped
    at a step boundary with a checkpoint there (every recorded round is in the checkpoint, which the
    manifest and the session's end record), before its end."""
    manifest = {run["folder"]: run for run in manifest_of(out)["runs"]}
    statuses = {}
    for folder in folders:
        entry = manifest[f"runs/{folder.name}"]
        statuses[folder] = entry["status"]
        if entry["status"] == "pending":
            assert not folder.exists(), f"a queued run started after the stop: {folder}"
        elif entry["status"] == "interrupted":
            assert entry["completed"] == checkpointed(folder) == len(RunFolder(folder).read_history()) < rounds, entry
            session = RunFolder(folder).read_json("meta.json")["sessions"][-1]
            assert session["status"] == "interrupted" and session["to"] == checkpointed(folder), session
    return statuses


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group of ``process`` if it still runs, and reap it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture
def start_sweep(tmp_path):
    """``start_sweep(PATH, OUT, *OPTIONS)``: ``fedsim sweep PATH --out OUT --quiet OPTIONS`` started in
    ``tmp_path`` (text pipes), in a process group of its own (the group Ctrl-C goes to); every group started
    is killed at teardown, however the test ends."""
    processes = []

    def start(path: Path, out: Path, *options) -> subprocess.Popen:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "fedsim", "sweep", str(path), "--out", str(out), "--quiet", *map(str, options)],
            cwd=tmp_path, env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True))
        return processes[-1]
    yield start
    for process in processes:
        kill_group(process)


def finish(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The (stdout, stderr) of ``process`` once it ends within ``timeout`` seconds; its group is killed then."""
    try:
        return process.communicate(timeout=timeout)
    finally:
        kill_group(process)


def wait_until(process: subprocess.Popen, condition, what: str, timeout: float = 120, details=str):
    """Poll ``condition()`` until it returns something true (returned); fails, with ``details()``, if
    ``process`` ends first or ``timeout`` seconds pass (by default, time for a sweep to reach a checkpoint or a
    lock's owner)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args[:4]} ended before {what}:\n{process.communicate()}\n{details()}"
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}\n{details()}")


def signal_when(process: subprocess.Popen, ready, signum: int, timeout: float = 120) -> None:
    """Send ``signum`` to the process group of ``process`` once ``ready()`` is true (or after ``timeout``
    seconds) and wait for the process to end; the group is killed if it outlives the wait."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ready():
            time.sleep(0.05)
        os.killpg(process.pid, signum)
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
