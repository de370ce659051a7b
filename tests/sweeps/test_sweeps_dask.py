"""A sweep on a real Dask cluster: a ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1,
started here as subprocesses; one worker is killed (SIGKILL) in the middle of a run, and every run must
still complete, the killed one resumed from its checkpoint by the other worker, each with a history equal
bit for bit to the local backend's and to a plain ``fedsim run`` of the same settings. Every wait is bounded.

dask.distributed is the ``dask`` extra, which CI installs: there (``FEDSIM_REQUIRE_ORACLE=1``) a missing dask
fails the test instead of skipping it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedsim.runs import RunFolder
from fedsim.sweeps import load_sweep
from tests.conftest import clean_env, error_lines, fedsim
from tests.runs.conftest import one_line_error
from tests.sweeps.conftest import (assert_resumed_once, checkpointed, histories, history_alone, kill_group,
                                  manifest_of, owner, run_folders, run_to_kill, stopped_statuses, wait_until,
                                  write_sweep)

if os.environ.get("FEDSIM_REQUIRE_ORACLE") != "1":
    pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install -e '.[dask]')")

ROUNDS = 1000
CHECKPOINT_EVERY = 10
RUNS = 4
# Seconds: for the cluster to come up, for the sweep to reach a killable state, for a whole sweep.
START_TIMEOUT = 60
KILL_TIMEOUT = 90
SWEEP_TIMEOUT = 180


@dataclass
class Cluster:
    address: str
    workers: list[subprocess.Popen]
    logs: list[Path] = field(default_factory=list)

    def log_tails(self, characters: int = 1500) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-characters:]}"
                         for path in self.logs if path.exists())


@pytest.fixture
def sweep_path(tmp_path) -> Path:
    """The sweep file of the tests in ``tmp_path``: two methods, two seeds."""
    return write_sweep(tmp_path, "dask-kill", ROUNDS, CHECKPOINT_EVERY,
                       '"federated.method" = ["fedavg", "stc_updown"]\nseed = [0, 1]')


@pytest.fixture
def dask_cluster(tmp_path):
    """A scheduler and two single-threaded workers without nannies (SIGKILL of a worker's process is the
    worker's death) on 127.0.0.1, each in its own process group (killing the group kills all of it), its
    output in a log; all killed at teardown, however the test ends."""
    from dask.distributed import Client

    folder = tmp_path / "cluster"
    folder.mkdir()
    env = clean_env(tmp_path, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    scheduler_file = folder / "scheduler.json"
    processes, logs = [], []

    def start(name: str, *arguments: str) -> subprocess.Popen:
        logs.append(folder / f"{name}.log")
        with logs[-1].open("wb") as handle:
            processes.append(subprocess.Popen([sys.executable, "-m", "dask", *arguments], cwd=folder, env=env,
                                              stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        return processes[-1]
    try:
        # --idle-timeout and --death-timeout: a safety net should this process die before its teardown.
        scheduler = start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file",
                          str(scheduler_file), "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                          "--idle-timeout", "600")
        wait_until(scheduler, scheduler_file.is_file, "the scheduler wrote its address", START_TIMEOUT,
                   lambda: logs[0].read_text(errors="replace")[-3000:])
        time.sleep(0.2)                        # the file is written in one go; let it land
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:"), address
        for name in ("worker-0", "worker-1"):
            start(name, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--nworkers", "1",
                  "--no-nanny", "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--host", "127.0.0.1",
                  "--name", name, "--local-directory", str(folder / name), "--death-timeout", "60")
        with Client(address, timeout=START_TIMEOUT) as client:
            client.wait_for_workers(2, timeout=START_TIMEOUT)
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
        yield Cluster(address, processes[1:], logs)
    finally:
        for process in reversed(processes):
            kill_group(process)


def local_histories(tmp_path: Path, path: Path) -> dict[str, list]:
    """The histories of the sweep ``path`` run on the local backend (2 workers) into ``tmp_path/local``."""
    local = fedsim(tmp_path, "sweep", path, "--backend", "local", "--workers", "2", "--out", tmp_path / "local",
                   "--quiet", timeout=SWEEP_TIMEOUT)
    assert local.returncode == 0, local.stderr
    return histories(tmp_path / "local")


@pytest.mark.slow
def test_a_worker_killed_mid_sweep_loses_no_run_and_changes_no_history(tmp_path, sweep_path, dask_cluster,
                                                                      start_sweep):
    path, out = sweep_path, tmp_path / "dask"
    sweep = load_sweep(path)
    assert len(sweep.runs) == RUNS
    process = start_sweep(path, out, "--backend", "dask", "--scheduler", dask_cluster.address)
    workers = {worker.pid: worker for worker in dask_cluster.workers}

    def running_run():              # a worker's run a tenth to a half done, while some run is unfinished
        assert len(list(out.glob("runs/*/summary.json"))) < RUNS
        return run_to_kill(run_folders(out, sweep), workers.__contains__, ROUNDS)
    killed_folder, pid, at = wait_until(process, running_run, "a worker could be killed mid-run", KILL_TIMEOUT,
                                        dask_cluster.log_tails)
    os.killpg(pid, signal.SIGKILL)
    killed_worker = workers[pid]
    killed_worker.wait(timeout=10)
    stdout, stderr = process.communicate(timeout=SWEEP_TIMEOUT)
    assert killed_worker.returncode == -signal.SIGKILL
    assert [worker.poll() for worker in dask_cluster.workers].count(None) == 1, "the other worker must live on"
    assert process.returncode == 0, f"{stdout}\n{stderr}\n{dask_cluster.log_tails()}"
    assert f"{RUNS} completed" in stdout, stdout

    manifest = manifest_of(out)
    assert len(manifest["runs"]) == RUNS
    assert {run["folder"] for run in manifest["runs"]} == {f"runs/{planned.folder_name}" for planned in sweep.runs}
    assert all(run["status"] == "completed" and run["completed"] == ROUNDS for run in manifest["runs"]), manifest

    # The killed worker's run was resumed by the surviving worker from a checkpoint (the killed worker may
    # have written a newer one between our reading and the kill), not started again.
    sessions = assert_resumed_once(killed_folder, at, ROUNDS)
    assert sessions[1]["from"] % CHECKPOINT_EVERY == 0 and sessions[1]["status"] == "completed", sessions
    assert owner(killed_folder) is None                # the lock was let go

    # The same sweep on the local backend: the same folders, bitwise the same histories.
    dask_histories = histories(out)
    assert set(dask_histories) == {planned.folder_name for planned in sweep.runs}
    assert all(len(history) == ROUNDS for history in dask_histories.values())
    assert dask_histories == local_histories(tmp_path, path)

    # The killed run, run alone and uninterrupted with `fedsim run`, has the same history too.
    planned = next(planned for planned in sweep.runs if planned.folder_name == killed_folder.name)
    assert history_alone(tmp_path, planned, SWEEP_TIMEOUT) == dask_histories[planned.folder_name]


def test_the_threads_option_reaches_the_workers_of_a_local_dask_cluster(tmp_path):
    """`--backend dask` without a scheduler starts a LocalCluster whose workers get --threads in their
    environment before anything numerical loads, as the local pool's do (each run records it)."""
    path = write_sweep(tmp_path, "threads", 3, CHECKPOINT_EVERY, "seed = [0, 1]")
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-m", "fedsim", "sweep", str(path), "--backend", "dask", "--workers",
                             "2", "--threads", "1", "--out", str(tmp_path / "out"), "--quiet"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=SWEEP_TIMEOUT)
    assert result.returncode == 0, result.stderr
    folders = sorted((tmp_path / "out" / "runs").iterdir())
    assert len(folders) == 2
    for folder in folders:
        recorded = RunFolder(folder).read_json("meta.json")["threads"]["environment"]
        assert recorded["OMP_NUM_THREADS"] == "1" and recorded["NUMBA_NUM_THREADS"] == "1", recorded


@pytest.fixture
def http_server(tmp_path):
    """``python -m http.server`` on 127.0.0.1 (a free port): a server that accepts a connection and never
    answers as a Dask scheduler would; its address as tcp://127.0.0.1:PORT."""
    process = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        line = process.stdout.readline()            # "Serving HTTP on 127.0.0.1 port PORT (http://...) ..."
        assert " port " in line, line
        yield f"tcp://127.0.0.1:{line.split(' port ')[1].split()[0]}"
    finally:
        kill_group(process)


def test_a_scheduler_address_that_is_not_dask_fails_in_bounded_time_with_one_line(tmp_path, sweep_path,
                                                                                 http_server):
    from fedsim.sweeps.execute import SCHEDULER_TIMEOUT
    out = tmp_path / "out"
    started = time.monotonic()
    result = fedsim(tmp_path, "sweep", sweep_path, "--backend", "dask", "--scheduler", http_server, "--out", out,
                    "--quiet", timeout=SCHEDULER_TIMEOUT + 40)
    assert time.monotonic() - started < SCHEDULER_TIMEOUT + 20
    line = one_line_error(result, 2)
    assert line == (f"fedsim: error: --scheduler {http_server}: no Dask scheduler answered within "
                        f"{SCHEDULER_TIMEOUT:g} s (it accepted the connection but never answered as a Dask "
                        f"scheduler); check that a Dask scheduler runs there (`dask scheduler --port PORT`) and "
                        f"that the address is its tcp://HOST:PORT, not its dashboard's"), line
    assert not out.exists(), "nothing may be written before the scheduler answers"


@pytest.mark.parametrize("options, start, fragment, end", [
    (["bogus://x"], "--scheduler 'bogus://x' is not a Dask scheduler address (", "unknown address scheme 'bogus'",
     "; give tcp://HOST:PORT"),
    (["localhost"], "--scheduler 'localhost' is not a Dask scheduler address (",
     "missing port number in address 'localhost'", "; give tcp://HOST:PORT"),
    # the workers of --scheduler are started by their owner: --threads cannot reach them and is refused (the
    # same sweep without --threads would contact the scheduler)
    (["tcp://127.0.0.1:9", "--threads", "1"], "--threads sets the workers fedsim starts; the workers of "
     "--scheduler keep their own", "dask worker ADDRESS --nthreads 1", "")])
def test_a_malformed_scheduler_address_or_threads_with_a_scheduler_is_one_line(tmp_path, sweep_path, options,
                                                                              start, fragment, end):
    line = one_line_error(fedsim(tmp_path, "sweep", sweep_path, "--backend", "dask", "--scheduler", *options,
                                 "--out", tmp_path / "out"), 2, fragment)
    assert line.startswith(f"fedsim: error: {start}") and line.endswith(end), line
    assert not (tmp_path / "out").exists(), "nothing may be written before the command is refused"


@pytest.mark.slow
def test_ctrl_c_stops_the_dask_tasks_at_a_step_boundary_and_the_same_command_finishes(tmp_path, sweep_path,
                                                                                      dask_cluster, start_sweep):
    """A Dask task's run gets no signal: the sweep sets an Event its tasks look at between steps. The runs
    begun stop with a checkpoint at their last step (nothing recorded past it), the queued ones never start,
    and the same command finishes the sweep with the histories of the local backend."""
    path, out = sweep_path, tmp_path / "dask"
    folders = run_folders(out, load_sweep(path))
    on_dask = ("--backend", "dask", "--scheduler", dask_cluster.address)
    process = start_sweep(path, out, *on_dask)
    wait_until(process, lambda: sum(checkpointed(folder) > 0 for folder in folders) >= 2,
               "two runs reached a checkpoint", KILL_TIMEOUT, dask_cluster.log_tails)
    os.killpg(process.pid, signal.SIGINT)          # the sweep's group; the cluster has its own sessions
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT, stderr
    # the command that continues it says where it runs, not only what
    assert error_lines(stderr)[0].endswith(f"Continue with: fedsim sweep {path} --out {out} --backend dask "
                                           f"--scheduler {dask_cluster.address}"), stderr
    statuses = stopped_statuses(out, folders, ROUNDS)
    assert "interrupted" in statuses.values(), statuses
    again = fedsim(tmp_path, "sweep", path, "--out", out, "--quiet", *on_dask, timeout=SWEEP_TIMEOUT)
    assert again.returncode == 0 and f"{RUNS} completed" in again.stdout, again.stderr
    assert histories(out) == local_histories(tmp_path, path)


@pytest.mark.slow
def test_two_sweeps_of_the_same_runs_into_two_folders_on_one_cluster_each_write_their_own(tmp_path, dask_cluster,
                                                                                         start_sweep):
    """A task's key names its run folder: the second sweep's runs are its own tasks, written into its own folder
    (was: the same key, so it was handed the first sweep's results, said "2 completed" and wrote no run folder)."""
    path = write_sweep(tmp_path, "twice", ROUNDS, CHECKPOINT_EVERY, "seed = [0, 1]")
    on_dask = ("--backend", "dask", "--scheduler", dask_cluster.address)
    first = start_sweep(path, tmp_path / "A", *on_dask)
    wait_until(first, lambda: list(tmp_path.glob("A/runs/*/checkpoint.json")), "the first sweep's runs began",
               KILL_TIMEOUT, dask_cluster.log_tails)
    second = fedsim(tmp_path, "sweep", path, "--out", tmp_path / "B", "--quiet", *on_dask, timeout=2 * SWEEP_TIMEOUT)
    stdout, stderr = first.communicate(timeout=SWEEP_TIMEOUT)
    assert first.returncode == 0 and "2 completed" in stdout, stderr
    assert second.returncode == 0 and "2 completed" in second.stdout, second.stderr
    found = histories(tmp_path / "B")
    assert len(found) == 2 and all(len(history) == ROUNDS for history in found.values()), found.keys()
    assert found == histories(tmp_path / "A")


def test_a_task_dask_gave_up_on_is_what_its_run_folder_holds(tmp_path, monkeypatch):
    """A task whose workers all died (KilledWorker: Dask counts a death against every task on the worker, also one
    whose run had ended) is the run its folder holds: completed with its summary.json, else failed (was: failed,
    while the folder and `sweep report` said completed)."""
    import distributed
    from distributed.scheduler import KilledWorker

    from fedsim.sweeps import execute
    path = write_sweep(tmp_path, "killed", 3, CHECKPOINT_EVERY, "seed = [0, 1]")
    assert fedsim(tmp_path, "sweep", path, "--out", tmp_path / "S", "--quiet").returncode == 0
    sweep = load_sweep(path)
    shutil.rmtree(run_folders(tmp_path / "S", sweep)[1])          # a run that never started

    class Gone:
        def done(self):
            return True

        def result(self):
            raise KilledWorker("run-x", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)
    client = SimpleNamespace(submit=lambda *args, **options: Gone())
    monkeypatch.setattr(distributed, "Event", lambda name, client: SimpleNamespace(name=name))
    ended = {}
    execute._run_dask(list(sweep.runs), tmp_path / "S", client, ["fedsim"],
                      lambda planned, result: ended.update({planned.label: result}), SimpleNamespace(received=None))
    assert ended["seed=0"] == {"status": "completed", "message": "", "completed": 3}, ended
    assert ended["seed=1"]["status"] == "failed" and ended["seed=1"]["message"].startswith("KilledWorker: "), ended
