"""What the sweep tests share: the sweep file of tiny synthetic runs, a real ``fedsim sweep`` process and
bounded waits on it, and what a sweep folder's runs hold (their histories, checkpoints, lock owners)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedsim.runs import RunFolder, strip_wall_time
from tests.conftest import clean_env, fedsim

#: Seconds for a sweep to reach the state a test waits for (a checkpoint, a lock's owner).
PROGRESS_TIMEOUT = 120


def sweep_text(name: str | None, rounds: int, checkpoint_every: int, grid: str) -> str:
    """A sweep file of tiny synthetic runs (8 clients) of ``rounds`` rounds over the axes ``grid``
    (``name`` None: no name, the file's stem names the sweep)."""
    named = "" if name is None else f'name = "{name}"\n'
    return (f'base = "synthetic"\n{named}\n[set]\n"data.synthetic_devices" = 8\n"federated.n_clients" = 8\n'
            f'"federated.rounds" = {rounds}\n"run.checkpoint_every" = {checkpoint_every}\n\n[grid]\n{grid}\n')


def histories(out: Path) -> dict[str, list]:
    """The records (without wall time) of each run folder of the sweep folder ``out``, by folder name."""
    return {folder.name: strip_wall_time(RunFolder(folder).read_history())
            for folder in sorted((out / "runs").iterdir())}


def history_alone(tmp_path: Path, planned, timeout: float = 120) -> list[dict]:
    """The records (without wall time) of the planned run's settings run alone with ``fedsim run``."""
    result = fedsim(tmp_path, "run", "--preset", "synthetic",
                    *[f"--set={key}={json.dumps(value)}" for key, value in planned.overrides],
                    "--quiet", "--out", tmp_path / "alone", timeout=timeout)
    assert result.returncode == 0, result.stderr
    return strip_wall_time(RunFolder(tmp_path / "alone").read_history())


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


def stopped_statuses(out: Path, folders: list[Path], rounds: int) -> dict[Path, str]:
    """The manifest's status of each run folder of a sweep a signal stopped, checked against the folder: a
    pending run's folder does not exist (no queued run starts after the stop); an interrupted run stopped
    at a step boundary with a checkpoint there (every recorded round is in the checkpoint, which the
    manifest and the session's end record), before its end."""
    manifest = {run["folder"]: run for run in json.loads((out / "manifest.json").read_text())["runs"]}
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


def start_sweep(tmp_path: Path, path: Path, out: Path, *options) -> subprocess.Popen:
    """``fedsim sweep PATH --out OUT --quiet OPTIONS`` started in ``tmp_path`` (text pipes), in a process
    group of its own (the group Ctrl-C goes to)."""
    return subprocess.Popen([sys.executable, "-m", "fedsim", "sweep", str(path), "--out", str(out), "--quiet",
                             *map(str, options)], cwd=tmp_path, env=clean_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


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


def finish(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The (stdout, stderr) of ``process`` once it ends within ``timeout`` seconds; its group is killed if not."""
    try:
        return process.communicate(timeout=timeout)
    finally:
        kill_group(process)


def wait_until(process: subprocess.Popen, condition, what: str, timeout: float = PROGRESS_TIMEOUT, details=str):
    """Poll ``condition()`` until it returns something true (returned); fails, with ``details()``, if
    ``process`` ends first or ``timeout`` seconds pass."""
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
