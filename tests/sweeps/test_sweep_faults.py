"""A local sweep under the faults a single run survives: a pool worker killed (kill -9) mid-run, a run
that keeps killing its worker, Ctrl-C to the sweep's process group, SIGTERM and SIGHUP to the sweep
process; and ``--workers`` capped by the cores and the memory (the command's line: test_sweeps.py).

Each fault is a real signal to a real ``fedsim sweep`` process; the test waits for the run folders'
progress (checkpoints, the lock's owner), never a fixed time. After any interruption the same command
finishes the sweep, and every history equals that of the same sweep run without interruption, bit for bit.
"""

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from fedsim.runs import RunFolder
from fedsim.sweeps import load_sweep
from fedsim.sweeps.execute import RUN_MEMORY, RUN_RETRIES, capped_workers, run_memory
from tests.conftest import clean_env, error_lines, fedsim
from tests.sweeps.conftest import (assert_resumed_once, checkpointed, finish, histories, manifest_of, owner,
                                  run_folders, run_to_kill, stopped_statuses, sweep_text, wait_until, write_sweep)

ROUNDS = 600
CHECKPOINT_EVERY = 10
RUNS = 3
SWEEP = sweep_text("faults", ROUNDS, CHECKPOINT_EVERY, '"federated.method" = ["stc_updown"]\nseed = [0, 1, 2]')
# Seconds: for a sweep to stop after a signal, for a whole sweep.
STOP_TIMEOUT = 20
SWEEP_TIMEOUT = 300
UNPINNED = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(sweep file, histories) of the sweep run without interruption, its parent's thread variables unset:
    each pool worker pins BLAS, OpenMP and Numba to one thread itself (each run records it)."""
    folder = tmp_path_factory.mktemp("reference")
    path = folder / "faults.toml"
    path.write_text(SWEEP)
    env = {key: value for key, value in clean_env(folder).items() if key not in UNPINNED}
    result = subprocess.run([sys.executable, "-m", "fedsim", "sweep", str(path), "--workers", "2", "--out",
                             str(folder / "out"), "--quiet"], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=SWEEP_TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr
    recorded = [RunFolder(run).read_json("meta.json")["threads"]["environment"]
                for run in (folder / "out" / "runs").iterdir()]
    assert len(recorded) == RUNS and all(entry[name] == "1" for entry in recorded for name in UNPINNED), recorded
    found = histories(folder / "out")
    assert len(found) == RUNS and all(len(history) == ROUNDS for history in found.values())
    return path, found


def test_a_killed_pool_worker_costs_no_run_and_changes_no_history(tmp_path, reference, start_sweep):
    path, expected = reference
    sweep, out = load_sweep(path), tmp_path / "out"
    process = start_sweep(path, out, "--workers", 2)

    def a_worker(pid):              # not the coordinator
        return pid not in (None, process.pid)
    killed, pid, at = wait_until(process, lambda: run_to_kill(run_folders(out, sweep), a_worker, ROUNDS),
                                 "a worker's run reached a checkpoint")
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = finish(process, SWEEP_TIMEOUT)
    assert process.returncode == 0, stderr
    assert f"{RUNS} completed" in stdout, stdout
    label = next(planned.label for planned in sweep.runs if planned.folder_name == killed.name)
    told = [line for line in error_lines(stderr) if "died" in line]
    assert told == [(f"fedsim: sweep: the worker running {label} died (killed by SIGKILL); the run goes on in a "
                     f"new worker from its last checkpoint (retry 1 of {RUN_RETRIES})")], stderr
    manifest = manifest_of(out)
    assert [run["status"] for run in manifest["runs"]] == ["completed"] * RUNS, manifest
    assert_resumed_once(killed, at, ROUNDS)        # resumed from its checkpoint by a new worker, not started again
    assert histories(out) == expected


def test_a_run_that_keeps_killing_its_worker_is_marked_failed_and_the_queue_goes_on(tmp_path, reference,
                                                                                    start_sweep):
    path, _ = reference
    sweep, out = load_sweep(path), tmp_path / "out"
    first = run_folders(out, sweep)[0]
    process = start_sweep(path, out, "--workers", 1)
    killed: list[int] = []
    for _ in range(RUN_RETRIES + 1):       # every worker that takes the first run dies
        pid = wait_until(process, lambda: (owner(first) not in (None, process.pid, *killed)) and owner(first),
                         "a new worker took the first run")
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    _, stderr = finish(process, SWEEP_TIMEOUT)
    assert process.returncode == 1, stderr
    manifest = manifest_of(out)
    assert [run["status"] for run in manifest["runs"]] == ["failed"] + ["completed"] * (RUNS - 1), manifest
    message = f"its worker died {RUN_RETRIES + 1} times (last: killed by SIGKILL); not tried again"
    assert manifest["runs"][0]["message"] == message
    lines = error_lines(stderr)
    assert sum("the run goes on in a new worker" in line for line in lines) == RUN_RETRIES, stderr
    assert f"fedsim: {first.name}: failed: {message}" in lines, stderr
    # the report names the failed run (a setting whose every seed failed cannot vanish from it), exit 1
    report = fedsim(tmp_path, "sweep", "report", out)
    assert report.returncode == 1 and error_lines(report.stderr) == [
        f"fedsim: sweep report: runs/{first.name} ({sweep.runs[0].label}): failed: {message}; left out of the "
        f"report"], report.stderr
    plotted = fedsim(tmp_path, "sweep", "plot", out)           # and the figure says it is not drawn
    assert plotted.returncode == 0 and error_lines(plotted.stderr) == [
        f"fedsim: warning: runs/{first.name} ({sweep.runs[0].label}): failed: {message}; not drawn"], plotted.stderr


def test_a_start_killed_between_config_and_meta_starts_afresh(tmp_path):
    """A worker killed inside start_run after config.toml and before meta.json left a folder that no step
    ran in and that cannot be resumed (no run id): its next worker starts the run instead of failing it."""
    from fedsim.experiment_data import keep_datasets_in_memory
    from fedsim.sweeps.worker import run_one
    planned = load_sweep(write_sweep(tmp_path, "faults", 3, CHECKPOINT_EVERY, "seed = [0]")).runs[0]
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.write_config(planned.config)
    try:
        result = run_one(planned.config, str(folder.path), planned.label, ["test"])
    finally:
        keep_datasets_in_memory(False)
    assert (result["status"], result["completed"]) == ("completed", 3), result
    assert [session["from"] for session in folder.read_json("meta.json")["sessions"]] == [0]


@pytest.mark.parametrize("number, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False),
                                              (signal.SIGHUP, False)], ids=["ctrl-c", "sigterm", "sighup"])
def test_a_signal_stops_the_sweep_at_a_checkpoint_and_the_same_command_finishes_it(tmp_path, reference, number,
                                                                                  to_group, start_sweep):
    path, expected = reference
    out = tmp_path / "out"
    folders = run_folders(out, load_sweep(path))
    process = start_sweep(path, out, "--workers", 2)
    wait_until(process, lambda: sum(checkpointed(folder) > 0 for folder in folders) == 2,
               "two runs reached a checkpoint")
    queued = [folder for folder in folders if not folder.exists()]
    assert len(queued) == 1
    (os.killpg if to_group else os.kill)(process.pid, number)
    sent = time.monotonic()
    _, stderr = finish(process, STOP_TIMEOUT)
    assert process.returncode == 128 + number, stderr
    assert time.monotonic() - sent < STOP_TIMEOUT
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith(
        f"fedsim: sweep faults stopped by {signal.Signals(number).name}: 2 runs interrupted (each resumes from "
        f"its checkpoint), 1 pending, 0 completed; manifest: {out / 'manifest.json'}; finished runs and "
        f"checkpoints are kept. Continue with: fedsim sweep {path} --out {out} --workers 2"), stderr
    statuses = stopped_statuses(out, folders, ROUNDS)
    assert statuses == {folder: "pending" if folder in queued else "interrupted" for folder in folders}
    # the report's table is empty: each run is named with its status, exit 1
    report = fedsim(tmp_path, "sweep", "report", out)
    completed = {run["folder"]: run.get("completed") for run in manifest_of(out)["runs"]}
    assert report.returncode == 1 and error_lines(report.stderr) == [
        f"fedsim: sweep report: runs/{folder.name} ({planned.label}): {statuses[folder]}"
        + (f" after {completed[f'runs/{folder.name}']} rounds" if statuses[folder] == "interrupted" else "")
        + "; left out of the report" for folder, planned in zip(folders, load_sweep(path).runs)], report.stderr
    again = fedsim(tmp_path, "sweep", path, "--workers", "2", "--out", out, "--quiet", timeout=SWEEP_TIMEOUT)
    assert again.returncode == 0 and f"{RUNS} completed" in again.stdout, again.stderr
    assert histories(out) == expected


def planned_on(preset: str, count: int, *overrides: str) -> list:
    """Stand-ins of planned runs of ``preset``: all that :func:`capped_workers` reads of a run (its config)."""
    from fedsim.config import load_preset
    return [SimpleNamespace(config=load_preset(preset, list(overrides)))] * count


def test_workers_are_capped_by_cores_and_memory_with_one_line_saying_why(tmp_path, monkeypatch, capsys):
    synthetic, fashion = planned_on("synthetic", 8), planned_on("stc-mnist", 8, 'data.dataset="fashion-mnist"')
    fashion_bytes = run_memory(fashion[0].config)
    assert RUN_MEMORY["fashion-mnist"] < fashion_bytes < 1.1 * RUN_MEMORY["fashion-mnist"]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr("fedsim.sweeps.execute._available_memory", lambda: 64 * 10**9)
    assert capped_workers(48, synthetic) == 4
    assert capsys.readouterr().err == ("fedsim: sweep: --workers 48 capped to 4: 4 cores may be used by this "
                                       "process, 1 thread(s) per worker\n")
    assert capped_workers(48, synthetic, threads=2) == 2 and "capped to 2" in capsys.readouterr().err
    assert capped_workers(None, synthetic) == 4 and capped_workers(3, synthetic) == 3
    assert capped_workers(4, synthetic[:2]) == 2 and capped_workers(None, synthetic[:2]) == 2
    assert capsys.readouterr().err == ""          # nothing asked for beyond a cap: nothing said
    monkeypatch.setattr("fedsim.sweeps.execute._available_memory", lambda: 2 * fashion_bytes + 1)
    assert capped_workers(48, fashion) == 2 and capped_workers(None, fashion) == 2
    assert capsys.readouterr().err == (f"fedsim: sweep: --workers 48 capped to 2: "
                                       f"{(2 * fashion_bytes + 1) / 1e9:.1f} GB of memory available, up "
                                       f"to {fashion_bytes / 1e9:.2f} GB per run\n")
    assert capped_workers(3, synthetic) == 3      # a synthetic run needs less memory
    assert capped_workers(3, synthetic + fashion[:1]) == 2      # the largest run counts
    monkeypatch.setattr("fedsim.sweeps.execute._available_memory", lambda: 10**6)
    assert capped_workers(8, fashion) == 1        # one worker at least, however little memory is left
    monkeypatch.setattr("fedsim.sweeps.execute._available_memory", lambda: None)
    assert capped_workers(8, fashion) == 4        # memory unknown: the cores alone


def test_a_runs_memory_grows_with_its_clients_and_model():
    """The counters of every client, the rows of those that can take part, a round's (K, P) arrays: a million
    clients over 1,000 rounds of 100 count about 1 GB (measured: 1.26 GB), a 30-client run hardly more than
    its data."""
    million = planned_on("synthetic", 1, "federated.n_clients=1000000", "data.synthetic_devices=1000000",
                         "data.synthetic_on_demand=true", "federated.participation_rate=0.0001",
                         "federated.rounds=1000")[0].config
    small = planned_on("synthetic", 1)[0].config
    assert 0.9e9 < run_memory(million) < 1.3e9 and run_memory(small) < 1.01 * RUN_MEMORY["synthetic"]
    # rows of 100,000 clients of 610 float32 parameters, thrice, beside 40 bytes of counters per client and 72
    # per client that can take part
    assert run_memory(million) - RUN_MEMORY["synthetic"] >= 3 * 100_000 * 610 * 4 + 40 * 10**6 + 72 * 100_000
    mlp = planned_on("stc-mlp", 1)[0].config
    assert run_memory(mlp) > run_memory(planned_on("stc-mnist", 1, 'data.dataset="fashion-mnist"')[0].config)


@pytest.mark.parametrize("ends, interrupted", [(["completed", "completed"], False),
                                               (["completed", "interrupted"], True)])
def test_a_stop_ends_the_sweep_as_stopped_only_if_a_run_did_not_finish(tmp_path, monkeypatch, capsys, ends,
                                                                       interrupted):
    """SIGTERM once every run has ended: the sweep ended (was: "stopped by SIGTERM", exit 143, and a command to
    continue nothing); an interrupted run is not done in the progress line (was: "2/2 runs done, 1 not finished")."""
    from fedsim.sweeps import execute

    def run_all(pending, out, workers, threads, command, finished, stop):
        for planned, status in zip(pending, ends):
            finished(planned, {"status": status, "completed": 1, "message": ""})
        signal.raise_signal(signal.SIGTERM)
    monkeypatch.setattr(execute, "_run_local", run_all)
    sweep = load_sweep(write_sweep(tmp_path, "late", 3, CHECKPOINT_EVERY, "seed = [0, 1]"))
    if interrupted:
        with pytest.raises(execute.SweepInterrupted):
            execute.run_sweep(sweep, tmp_path / "out")
    else:
        assert execute.all_finished(execute.run_sweep(sweep, tmp_path / "out"))
    assert [run["status"] for run in manifest_of(tmp_path / "out")["runs"]] == ends
    last = error_lines(capsys.readouterr().err)[-1]
    assert last.startswith(f"fedsim: sweep: {ends.count('completed')}/2 runs done, 0 not finished ("), last
