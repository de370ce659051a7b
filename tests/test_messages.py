"""One line, never a traceback, and never a misleading one (issue 28, items 11 and 12, the run side):
a diverged run plotted, FEDSIM_ARRAY_CACHE set wrong, lazy runs on different data compared, a disk that
fills up, and a second writer after the first one's `.lock` was deleted. Every command is a real process."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from fedsim.runs import RunFolder
from tests.conftest import TINY, TINY_LAZY, clean_env, error_lines, fedsim
from tests.runs.conftest import ROUNDS12, one_line_error
from tests.sweeps.conftest import wait_until

DIVERGING = TINY_LAZY + ["--set", "lazy.step_size=1e6", "--set", "lazy.iterations=200"]


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """A lazy run that diverged (theta overflows at iteration 31; its last records reach 1e290)."""
    base = tmp_path_factory.mktemp("diverged")
    result = fedsim(base, "run", "--preset", "laq-synthetic", *DIVERGING, "--quiet", "--out", base / "run")
    assert result.returncode == 1 and "diverged" in result.stderr, result.stderr
    return base / "run"


def test_a_diverged_run_is_plotted_up_to_what_can_be_drawn_and_says_where_it_diverged(diverged, tmp_path):
    completed = json.loads((diverged / "summary.json").read_text())["completed"]
    result = fedsim(tmp_path, "plot", diverged, "--out", tmp_path / "plots")
    assert result.returncode == 0, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"fedsim: warning: {diverged} diverged at iteration "
                                                   f"{completed}: the figures show its first "), lines
    shown = int(lines[0].split("its first ")[1].split()[0])
    assert 0 < shown < completed              # the records past about 1e154 are left out
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == [
        "lazy_residual.png", "lazy_residual.svg", "lazy_uploads.png", "lazy_uploads.svg"]


def test_a_run_with_nothing_drawable_is_one_line(diverged, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(diverged, copy)
    records = RunFolder(copy).read_history()
    (copy / "history.jsonl").write_text("".join(json.dumps({**r, "objective": 1e300}) + "\n" for r in records))
    one_line_error(fedsim(tmp_path, "plot", copy), 2, "none of the runs has any records to plot")


def test_a_wrong_array_cache_setting_names_the_variable_and_what_it_may_be(tmp_path):
    result = fedsim(tmp_path, "run", "--preset", "synthetic", *TINY, "--quiet", "--out", tmp_path / "run",
                    FEDSIM_ARRAY_CACHE="maybe")
    line = one_line_error(result, 2, "FEDSIM_ARRAY_CACHE must be 1", "on/true/yes", "off/false/no", "'maybe'")
    assert "does not fit the data" not in line


def test_lazy_runs_on_different_synthetic_data_are_each_measured_against_their_own_f_star(tmp_path):
    folders = []
    for seed in (0, 1):
        folders.append(tmp_path / f"seed{seed}")
        result = fedsim(tmp_path, "run", "--preset", "laq-synthetic", *TINY_LAZY, "--seed", seed, "--quiet",
                        "--out", folders[-1])
        assert result.returncode == 0, result.stderr
    result = fedsim(tmp_path, "compare", *folders)
    assert result.returncode == 0, result.stderr
    tables = result.stdout.split("\n\n")
    assert len(tables) == 2
    for seed, (folder, table) in enumerate(zip(folders, tables)):
        f_star = min(record["objective"] for record in RunFolder(folder).read_history())
        title, note, _, _, row = table.splitlines()       # one run: its own best value, so "-" and a note
        assert title.endswith(f"f_best = {f_star:.12g}, the best value of these runs, not certified as f*) "
                              f"on synthetic, seed {seed}"), title
        assert note.startswith("-: this run attains f_best") and row.startswith(folder.name)


def test_a_full_disk_names_the_folder_and_the_command_that_continues(tmp_path):
    """The run's files may not grow past 20 kB (RLIMIT_FSIZE, set in the child): the first checkpoint
    (35 kB) is refused as a full disk would refuse it."""
    run_dir = tmp_path / "run"
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))\n"
            "from fedsim.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    limited = subprocess.run([sys.executable, "-c", code, "run", "--preset", "synthetic", *ROUNDS12, "--quiet",
                              "--out", str(run_dir)], cwd=tmp_path, env=clean_env(tmp_path), capture_output=True,
                             text=True, timeout=120, check=False)
    one_line_error(limited, 1, f"cannot write {run_dir}: the file size limit is reached (File too large)",
                   f"continue with: fedsim run --resume {run_dir}")
    resumed = fedsim(tmp_path, "run", "--resume", run_dir, "--quiet")
    assert resumed.returncode == 0, resumed.stderr


def test_a_full_tmpfs_says_the_disk_is_full(tmp_path):
    """The same on a real full disk: a 1 MB tmpfs (mounted when the tests run as root), filled up first."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                                           capture_output=True, check=False).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        with open(disk / "filler", "wb") as filler:
            filler.write(bytes(1_000_000 - 20_000))
        result = fedsim(tmp_path, "run", "--preset", "synthetic", *ROUNDS12, "--quiet", "--out", disk / "run")
        one_line_error(result, 1, f"cannot write {disk / 'run'}: the disk is full (No space left on device)",
                       f"continue with: fedsim run --resume {disk / 'run'}")
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_second_writer_is_refused_after_the_first_ones_lock_file_was_deleted(tmp_path):
    run_dir = tmp_path / "run"
    writer = subprocess.Popen([sys.executable, "-m", "fedsim", "run", "--preset", "synthetic", *TINY, "--set",
                               "federated.rounds=100000", "--set", "run.checkpoint_every=10", "--quiet", "--out",
                               str(run_dir)], cwd=tmp_path, env=clean_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_until(writer, (run_dir / "checkpoint.json").exists, "the writer's first checkpoint", 60)
        assert (run_dir / ".lock").read_text().strip() == str(writer.pid)
        (run_dir / ".lock").unlink()
        try:
            second = fedsim(tmp_path, "run", "--resume", run_dir, "--extend-to", "200000", "--quiet", timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("a second writer ran in the run folder beside its owner")
        one_line_error(second, 2, f"{run_dir} is in use by another fedsim process")
        assert writer.poll() is None          # the owner goes on, alone
        writer.send_signal(signal.SIGINT)
        assert writer.wait(timeout=60) == 128 + signal.SIGINT
    finally:
        if writer.poll() is None:
            writer.kill()
    sessions = json.loads((run_dir / "meta.json").read_text())["sessions"]
    assert len(sessions) == 1                 # only the owner's
    with RunFolder(run_dir).lock():           # and its lock went with it
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())


@pytest.mark.parametrize("folders_lockable", [True, False])
def test_the_lock_refuses_a_second_owner_also_where_a_folder_cannot_be_locked(tmp_path, monkeypatch,
                                                                             folders_lockable):
    """Two locks in one process conflict as two processes would (flock is per open file). Where flock on a
    folder fails (NFS), the pid file is locked instead: a second owner is still refused (only a deleted
    `.lock` is no longer noticed there)."""
    import fcntl

    from fedsim.runs import RunFolderError
    from fedsim.runs.folder import FolderLock
    real_flock = fcntl.flock

    def flock_of_files_only(descriptor, operation):
        if os.path.isdir(f"/proc/self/fd/{descriptor}"):
            raise OSError(9, "Bad file descriptor")
        return real_flock(descriptor, operation)

    if not folders_lockable:
        monkeypatch.setattr(fcntl, "flock", flock_of_files_only)
    with FolderLock(tmp_path / ".lock"):
        with pytest.raises(RunFolderError, match=f"in use by another fedsim process \\(pid {os.getpid()}\\)"):
            FolderLock(tmp_path / ".lock").__enter__()
        if folders_lockable:
            (tmp_path / ".lock").unlink()
            with pytest.raises(RunFolderError, match="in use by another fedsim process \\(pid unknown\\)"):
                FolderLock(tmp_path / ".lock").__enter__()
    with FolderLock(tmp_path / ".lock"):          # let go: free again
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
