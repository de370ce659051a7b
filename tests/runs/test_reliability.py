"""Run folders that cannot be corrupted, and one clear line (never a traceback) on bad input: one section per
item of the reliability issue. The commands whose process is what is tested (a second writer, concurrent runs,
thread settings, the umask, --debug's traceback) run as real subprocesses (tests/conftest.py's ``fedsim``); the
others call ``fedsim.cli.main`` in this process (``fedsim_here``: the same exit status and lines)."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsim import __version__
from fedsim.algorithms.federated import FederatedRun
from fedsim.runs import RunFolder, start_run
from fedsim.runs.folder import CHECKPOINT_FILE, CHECKPOINT_NOTE_FILE, CONFIG_FILE, HISTORY_FILE, META_FILE, SUMMARY_FILE
from tests.conftest import TINY, TINY_LAZY, clean_env, fedsim
from tests.runs.conftest import ROUNDS12, before_step, history, one_line_error, tiny_federated


def unfinished_copy(tmp_path, name="run", stop_after=9) -> Path:
    """The finished run's settings, interrupted (a real SIGINT, handled by the runner) in round
    ``stop_after``: a folder checkpointed at that round, as Ctrl-C leaves it."""
    target = tmp_path / name
    with pytest.MonkeyPatch.context() as patch:
        before_step(patch, FederatedRun, stop_after - 1, lambda: os.kill(os.getpid(), signal.SIGINT))
        outcome = start_run(tiny_federated(), target, name=name, quiet=True)
    assert outcome.status == "interrupted" and outcome.completed == stop_after
    return target


# --- 1. one process owns a run folder ------------------------------------------------------------------

def test_a_second_writer_is_refused_with_the_holders_pid_and_a_killed_holder_leaves_no_lock(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fedsim.runs.folder import FolderLock\n"
                               f"with FolderLock({str(run_dir / '.lock')!r}):\n"
                               "    print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env=clean_env(tmp_path))
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = fedsim(tmp_path, "run", "--preset", "synthetic", *ROUNDS12, "--quiet", "--out", run_dir)
        one_line_error(started, 2, "in use by another fedsim process", f"pid {holder.pid}")
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]      # nothing written
        resumed = fedsim(tmp_path, "run", "--resume", run_dir, "--quiet")
        assert resumed.returncode == 2
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    # the lock of a killed process is gone with it: the folder is free
    started = fedsim(tmp_path, "run", "--preset", "synthetic", *ROUNDS12, "--quiet", "--out", run_dir)
    assert started.returncode == 0, started.stderr


def test_two_concurrent_runs_into_one_folder_leave_one_consistent_run(tmp_path, finished):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "fedsim", "run", "--preset", "synthetic", *ROUNDS12, "--quiet",
               "--out", str(run_dir)]
    processes = [subprocess.Popen(command, cwd=tmp_path, env=clean_env(tmp_path), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(process.wait(timeout=120), process.stderr.read()) for process in processes]
    statuses = sorted(status for status, _ in outcomes)
    assert statuses == [0, 2], outcomes
    loser = next(err for status, err in outcomes if status == 2)
    assert "in use by another fedsim process" in loser or "already holds a run" in loser, loser
    assert history(run_dir) == finished[1]                    # the winner's run, whole and unmixed


# --- 2. a resume refuses what does not match ------------------------------------------------------------

@pytest.mark.parametrize("edit, changed", [
    (("seed = 0", "seed = 3"), "seed: 0 -> 3"),
    (("lr = 0.05", "lr = 0.1"), "federated.lr: 0.05 -> 0.1"),
    (('method = "stc_updown"', 'method = "fedavg"'), 'federated.method: "stc_updown" -> "fedavg"'),
    (("rounds = 12", "rounds = 5"), "federated.rounds: 12 -> 5"),
    # an unset setting given the value it stands for is still an edit, told as config.toml tells it
    (('# pipeline = (unset: the family\'s, "stc")', 'pipeline = "stc"'), 'data.pipeline: (unset) -> "stc"'),
])
def test_an_edited_config_is_refused_with_the_changed_settings(tmp_path, edit, changed, fedsim_here):
    run_dir = unfinished_copy(tmp_path)
    config = run_dir / CONFIG_FILE
    text = config.read_text()
    assert edit[0] in text
    config.write_text(text.replace(edit[0], edit[1], 1))
    before = {path.name: path.read_bytes() for path in run_dir.iterdir()}
    one_line_error(fedsim_here("run", "--resume", run_dir, "--quiet"), 2, "was edited after the run started", changed)
    after = {path.name: path.read_bytes() for path in run_dir.iterdir()}
    assert after == before                                   # nothing lost, nothing changed


def test_a_checkpoint_of_another_run_is_refused(tmp_path, fedsim_here):
    run_dir = unfinished_copy(tmp_path, "run")
    other = unfinished_copy(tmp_path, "other")     # the same settings: only its id differs
    (run_dir / CHECKPOINT_FILE).write_bytes((other / CHECKPOINT_FILE).read_bytes())
    one_line_error(fedsim_here("run", "--resume", run_dir, "--quiet"), 2,
                   "is not the checkpoint checkpoint.json recorded")
    # with its note copied too, the checksum agrees; the run id inside the checkpoint does not
    (run_dir / "checkpoint.json").write_bytes((other / "checkpoint.json").read_bytes())
    one_line_error(fedsim_here("run", "--resume", run_dir, "--quiet"), 2, "belongs to another run")


def test_more_steps_than_asked_is_impossible_and_extend_to_continues(tmp_path, fedsim_here):
    run_dir = unfinished_copy(tmp_path)
    one_line_error(fedsim_here("run", "--resume", run_dir, "--quiet", "--extend-to", "5"), 2,
                   "--extend-to must be an integer >= 9")
    # a note older than its checkpoint (a kill between the two writes), or none: the checkpoint's count, nothing written
    for note in ('{"completed": 4, "sha256": "' + "0" * 64 + '"}', None):
        if note is None:
            (run_dir / CHECKPOINT_NOTE_FILE).unlink()
        else:
            (run_dir / CHECKPOINT_NOTE_FILE).write_text(note)
        before = {path.name: path.read_bytes() for path in run_dir.iterdir()}
        one_line_error(fedsim_here("run", "--resume", run_dir, "--quiet", "--extend-to", "5"), 2,
                       "--extend-to must be an integer >= 9 (the rounds already done), got 5")
        assert {path.name: path.read_bytes() for path in run_dir.iterdir()} == before
    # extending to 20 rounds gives the first 20 rounds of a 20-round run
    longer = fedsim_here("run", "--preset", "synthetic", *TINY, "--set", "federated.rounds=20",
                         "--set", "run.checkpoint_every=4", "--quiet", "--out", tmp_path / "twenty")
    assert longer.returncode == 0, longer.stderr
    extended = fedsim_here("run", "--resume", run_dir, "--quiet", "--extend-to", "20")
    assert extended.returncode == 0, extended.stderr
    assert history(run_dir) == history(tmp_path / "twenty")
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["completed"] == summary["planned"] == 20
    assert "federated.rounds: 12 -> 20" in json.dumps(json.loads((run_dir / META_FILE).read_text()))
    # a finished run can be extended too, and then resumes as the config says
    again = fedsim_here("run", "--resume", run_dir, "--quiet", "--extend-to", "24")
    assert again.returncode == 0, again.stderr
    assert len(history(run_dir)) == 24


def test_a_lazy_run_extends_like_a_longer_one_except_for_the_old_final_evaluation(tmp_path, fedsim_here):
    short = fedsim_here("run", "--preset", "laq-synthetic", *TINY_LAZY, "--quiet", "--out", tmp_path / "a")
    long = fedsim_here("run", "--preset", "laq-synthetic", *TINY_LAZY, "--set", "lazy.iterations=30",
                       "--quiet", "--out", tmp_path / "b")
    assert short.returncode == 0 and long.returncode == 0, short.stderr + long.stderr
    extended = fedsim_here("run", "--resume", tmp_path / "a", "--quiet", "--extend-to", "30")
    assert extended.returncode == 0, extended.stderr
    got, want = history(tmp_path / "a"), history(tmp_path / "b")
    assert "final_test_accuracy" in got[19] and "final_test_accuracy" not in want[19]
    del got[19]["final_test_accuracy"]
    assert got == want


# --- 3. a corrupt checkpoint: one line, nothing lost -----------------------------------------------------

def one_byte_changed(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


@pytest.mark.parametrize("damage", [lambda data: data[: len(data) // 2], lambda data: os.urandom(len(data)),
                                    one_byte_changed, lambda data: b""],
                         ids=["truncated", "garbage", "one byte changed", "empty"])
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, damage, fedsim_here):
    run_dir = unfinished_copy(tmp_path)
    path = run_dir / CHECKPOINT_FILE
    data = damage(path.read_bytes())
    path.write_bytes(data)
    line = one_line_error(fedsim_here("run", "--resume", run_dir, "--quiet"), 2, str(path))
    assert "allow_pickle" not in line
    assert path.read_bytes() == data                         # left as found, for the user to look at


def test_a_kill_during_the_checkpoint_write_leaves_a_resumable_folder(tmp_path, finished, fedsim_here):
    """What a kill -9 inside the atomic write leaves: a half-written temporary file beside the
    complete old checkpoint. The resume uses the old one and ends as an uninterrupted run."""
    run_dir = unfinished_copy(tmp_path)
    partial = run_dir / f".{CHECKPOINT_FILE}.4242-x1y2z3.part"
    partial.write_bytes(b"PK\x03\x04 half a zip")
    result = fedsim_here("run", "--resume", run_dir, "--quiet")
    assert result.returncode == 0 and history(run_dir) == finished[1], result.stderr
    assert not partial.exists(), "the resume must delete the interrupted write's temporary file"


# --- 4. results independent of the thread count -----------------------------------------------------------

@pytest.mark.parametrize("threads_of", ["environment", "run"])
def test_lazy_results_do_not_depend_on_the_thread_count(tmp_path, shared_data, threads_of):
    """LAQ at the MNIST scale, where two BLAS threads sum the gradient products in another order, at 1 and
    2 threads: the histories are identical bit for bit.

    environment: run.blas_threads stays pinned to 1 whatever the environment's thread variables say.
    run: run.blas_threads = 2 walks the gradient's blocks on two threads (each worker's blocks on one, in
    order) and gives BLAS two threads; the blocks' products are small enough that OpenBLAS runs each on one
    thread, so the history equals the one-thread run's."""
    histories = []
    for threads in (1, 2):
        out = tmp_path / f"threads{threads}"
        if threads_of == "environment":
            options, environment = [], {"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        else:
            options, environment = ["--set", f"run.blas_threads={threads}"], {}
        result = fedsim(tmp_path, "run", "--preset", "laq-mnist", "--dataset", "fashion-mnist", "--set",
                        "data.train_split=test", "--set", "lazy.iterations=4", *options, "--quiet", "--out", out,
                        FEDSIM_DATA=str(shared_data), **environment)
        assert result.returncode == 0, result.stderr
        histories.append(history(out))
        recorded = json.loads((out / META_FILE).read_text())["threads"]
        assert recorded["blas_threads"] == (1 if environment else threads) and recorded["blas"]
        if environment:
            assert recorded["environment"]["OPENBLAS_NUM_THREADS"] == str(threads)
    assert histories[0] == histories[1]


@pytest.mark.parametrize("environment, said, unsaid", [
    ({"OMP_NUM_THREADS": "2"}, ["thread settings of the environment differ"], []),
    # OPENBLAS_CORETYPE picks the kernel (the products' last bits), so its change is no thread setting the
    # results do not depend on: the resume names the BLAS change and nothing else
    ({"OPENBLAS_CORETYPE": "Prescott"}, ["(BLAS openblas", "may not be bitwise identical"], ["thread settings"])])
def test_a_resume_under_other_thread_settings_or_blas_kernel_warns(tmp_path, finished, environment, said, unsaid):
    run_dir = unfinished_copy(tmp_path)
    result = fedsim(tmp_path, "run", "--resume", run_dir, "--quiet", **environment)
    assert result.returncode == 0, result.stderr
    assert all(words in result.stderr for words in said), result.stderr
    assert not any(words in result.stderr for words in unsaid), result.stderr
    if "OMP_NUM_THREADS" in environment:          # a thread setting: the results do not depend on it
        assert history(run_dir) == finished[1]


def test_a_resume_with_other_numpy_simd_loops_warns_of_them(tmp_path):
    """NumPy's AVX-512 loops round some functions otherwise than its AVX2 ones: meta.json records the SIMD
    extensions the run started with, and a resume with its widest one turned off names the change."""
    from fedsim.data.cache import numpy_simd
    from fedsim.runs.provenance import numpy_blas
    run_dir = unfinished_copy(tmp_path)
    recorded = json.loads((run_dir / META_FILE).read_text())["threads"]["simd"]
    assert recorded == numpy_simd()
    if recorded in ("baseline", "unknown"):
        pytest.skip(f"NumPy dispatches no SIMD loop beyond its baseline here ({recorded}): none to turn off")
    turned_off = " ".join(filter(None, (os.environ.get("NPY_DISABLE_CPU_FEATURES"), recorded.split()[-1])))
    result = fedsim(tmp_path, "run", "--resume", run_dir, "--quiet", NPY_DISABLE_CPU_FEATURES=turned_off)
    assert result.returncode == 0, result.stderr
    now = ' '.join(recorded.split()[:-1]) or 'baseline'
    assert f"NumPy SIMD {recorded} -> {now}" in result.stderr, result.stderr
    session = json.loads((run_dir / META_FILE).read_text())["sessions"][-1]      # what the continuation ran on
    assert session["simd"] == now and session["blas"] == numpy_blas()


def test_a_resume_on_another_arithmetic_and_threads_warns_in_process_and_records_the_session(tmp_path, capsys,
                                                                                              monkeypatch):
    """The warnings of the child-process tests above, in process: meta.json as a run on another machine left
    it (another BLAS, other SIMD loops, other thread variables), and of another commit of fedsim."""
    from fedsim.data.cache import numpy_simd
    from fedsim.runs import resume_run
    from fedsim.runs.provenance import numpy_blas
    run_dir = unfinished_copy(tmp_path)
    meta = json.loads((run_dir / META_FILE).read_text())
    meta["threads"].update(blas="openblas 0.3.30 Zen", simd="X86_V9", environment={"OMP_NUM_THREADS": "64"})
    (run_dir / META_FILE).write_text(json.dumps({**meta, "git_commit": "0" * 40, "git_dirty": True}))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr("fedsim.runs.loop.git_commit", lambda: {"git_commit": "1" * 40, "git_dirty": False})
    capsys.readouterr()
    assert resume_run(run_dir, quiet=True).status == "completed"
    err = capsys.readouterr().err
    assert (f"(fedsim commit 000000000000 with changes -> 111111111111, BLAS openblas 0.3.30 Zen -> {numpy_blas()}, "
            f"NumPy SIMD X86_V9 -> {numpy_simd()})") in err, err
    assert "the thread settings of the environment differ from the run's start ({'OMP_NUM_THREADS': '64'} -> " in err
    session = json.loads((run_dir / META_FILE).read_text())["sessions"][-1]
    assert (session["blas"], session["simd"], session["status"]) == (numpy_blas(), numpy_simd(), "completed")
    assert (session["fedsim"], session["git_commit"], session["git_dirty"]) == (__version__, "1" * 40, False)


@pytest.mark.parametrize("threads", ["abc", None, {"blas": 5, "environment": None}])
def test_a_resume_of_a_folder_whose_threads_are_not_recorded_or_damaged_compares_nothing(tmp_path, capsys, threads):
    """meta.json's threads from an older fedsim (none) or damaged: nothing to compare, no warning, no crash."""
    from fedsim.runs import resume_run
    run_dir = unfinished_copy(tmp_path)
    meta = json.loads((run_dir / META_FILE).read_text())
    meta["threads"] = threads
    (run_dir / META_FILE).write_text(json.dumps(meta))
    capsys.readouterr()
    assert resume_run(run_dir, quiet=True).status == "completed"
    assert "warning" not in capsys.readouterr().err


def test_the_blas_recorded_is_numpys_whatever_else_is_loaded_and_a_resume_does_not_warn(tmp_path):
    """The first session loads SciPy's BLAS too (as the array cache's first computation does), the
    resume does not: meta.json holds NumPy's BLAS alone, and the resume warns of no change."""
    check = ("from fedsim.runs.provenance import numpy_blas; before = numpy_blas(); import scipy.linalg; "
             "from threadpoolctl import threadpool_info; "
             "print(len([p for p in threadpool_info() if p['user_api'] == 'blas']), before == numpy_blas())")
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            env=clean_env(tmp_path), timeout=120)
    libraries, same = loaded.stdout.split()          # NumPy's and SciPy's wheels each ship an OpenBLAS
    assert int(libraries) >= 2 and same == "True", loaded.stdout + loaded.stderr
    import scipy.linalg  # noqa: F401  (SciPy's BLAS loaded in this process, which starts the run)
    run_dir = unfinished_copy(tmp_path)
    recorded = json.loads((run_dir / META_FILE).read_text())["threads"]["blas"]
    assert isinstance(recorded, str) and recorded.count("openblas") <= 1, recorded
    result = fedsim(tmp_path, "run", "--resume", run_dir, "--quiet")
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    from fedsim.runs.provenance import blas_changed
    assert not blas_changed([recorded, "openblas 0.3.30 SkylakeX"], recorded)    # a folder of older fedsim
    assert blas_changed(recorded, "mkl 2025.1 avx512") and not blas_changed(None, recorded)


# --- 5. never overwrite a file fedsim did not write --------------------------------------------------------

@pytest.mark.parametrize("out, status, fragments", [
    ("mine", 2, ["not empty and not a fedsim run folder", "thesis.tex"]),
    # files of fedsim's names that a fedsim run did not write (a meta.json without its run id and config hash)
    ("theirs", 2, ["not empty and not a fedsim run folder (it holds checkpoint.npz, meta.json)"]),
    ("notes", 2, ["not empty and not a fedsim run folder (it holds summary.json)"]),
    ("file", 2, ["is a file, not a folder"]),
    # /proc refuses new folders even to root (CI runs as root, for whom a read-only mode means nothing): the
    # system refused, 1 (fedsim.programs)
    ("/proc/fedsim-run", 1, ["cannot create the run folder"])])
def test_out_with_files_of_the_user_a_file_or_an_unwritable_place_is_one_line_and_left_alone(tmp_path, fedsim_here,
                                                                                            out, status, fragments):
    for folder, files in {"mine": {"history.jsonl": "my own notes\n", "thesis.tex": "chapter 1\n"},
                          "theirs": {"meta.json": '{"run_id": "mine"}', "checkpoint.npz": "weights"},
                          "notes": {"summary.json": "{}"}}.items():
        (tmp_path / folder).mkdir()
        for name, text in files.items():
            (tmp_path / folder / name).write_text(text)
    (tmp_path / "file").write_text("x")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    one_line_error(fedsim_here("run", "--preset", "synthetic", *ROUNDS12, "--quiet", "--out", tmp_path / out),
                   status, *fragments)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


# --- 6. one line, never a traceback ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, damage", [
    (HISTORY_FILE, lambda text: text.replace("\n", "\n{not json\n", 1)),
    # valid JSON of another shape: a field missing, of another kind, a record twice, records out of turn
    (HISTORY_FILE, lambda text: text.replace("\n", "\n{}\n", 1)),
    (HISTORY_FILE, lambda text: text.replace("\n", '\n{"round": "x"}\n', 1)),
    (HISTORY_FILE, lambda text: text.splitlines(keepends=True)[0] + text),
    (HISTORY_FILE, lambda text: (lambda lines: "".join([lines[0], lines[2], lines[1], *lines[3:]]))(
        text.splitlines(keepends=True))),
    (META_FILE, lambda text: text[: len(text) // 2]),
    (SUMMARY_FILE, lambda text: "[1, 2"),
])
def test_damaged_run_files_give_one_line_in_resume_compare_and_plot(tmp_path, finished, name, damage,
                                                                     fedsim_here):
    unfinished = unfinished_copy(tmp_path, "unfinished")
    complete = tmp_path / "complete"
    shutil.copytree(finished[0], complete)
    commands = [["compare", complete], ["plot", complete, "--out", tmp_path / "plots"],
                ["export", complete, "--to", "tensorboard", tmp_path / "tb"]]
    damaged = [complete / name]
    if name != HISTORY_FILE:                 # a finished run's resume reads meta and summary, not history
        commands.append(["run", "--resume", complete])
    if name != SUMMARY_FILE:                 # an unfinished run has no summary
        commands.append(["run", "--resume", unfinished])
        damaged.append(unfinished / name)
    for path in damaged:
        path.write_text(damage(path.read_text()))
    for command in commands:
        folder = Path(command[2] if command[0] == "run" else command[1])
        one_line_error(fedsim_here(*command), 2, str(folder / name))


def test_a_lazy_record_of_another_shape_is_one_line_naming_its_line(tmp_path, fedsim_here):
    assert fedsim_here("run", "--preset", "laq-synthetic", *TINY_LAZY, "--quiet", "--out", "lazy").returncode == 0
    path = tmp_path / "lazy" / HISTORY_FILE
    text = path.read_text()
    for field, value, said in (("uploads", ["a"], 'uploads must be a list of integers, got ["a"]'),
                               ("objective", None, "objective must be a number, got null")):
        lines = text.splitlines(keepends=True)
        lines[1] = json.dumps({**json.loads(lines[1]), field: value}) + "\n"
        path.write_text("".join(lines))
        one_line_error(fedsim_here("compare", path.parent), 2, f"{path} line 2: {said}")


@pytest.mark.parametrize("sessions", [{}, ["a note by hand"], "abc", [{"from": 0, "seconds": "1.5"}],
                                      [{"from": 0, "seconds": None}], [{"from": 0, "seconds": True}],
                                      [{"from": 0, "seconds": float("nan")}], [{"from": 0, "seconds": -1e9}]])
def test_meta_sessions_that_are_no_list_of_objects_are_refused_before_the_resume_runs(tmp_path, sessions, fedsim_here):
    run_dir = unfinished_copy(tmp_path)
    meta = json.loads((run_dir / META_FILE).read_text())
    (run_dir / META_FILE).write_text(json.dumps({**meta, "sessions": sessions}))
    before = {path.name: path.read_bytes() for path in run_dir.iterdir()}
    for extend in ([], ["--extend-to", "20"]):
        one_line_error(fedsim_here("run", "--resume", run_dir, "--quiet", *extend), 2, f"{run_dir / META_FILE} must "
                       f"hold its sessions as a list of JSON objects (their seconds finite numbers >= 0)")
    assert {path.name: path.read_bytes() for path in run_dir.iterdir()} == before


def test_an_edited_history_line_is_refused_on_resume(tmp_path, fedsim_here):
    run_dir = unfinished_copy(tmp_path)
    path = run_dir / HISTORY_FILE
    lines = path.read_text().splitlines(keepends=True)
    record = json.loads(lines[2])
    record["test_accuracy"] = 0.99
    lines[2] = json.dumps(record) + "\n"
    path.write_text("".join(lines))
    one_line_error(fedsim_here("run", "--resume", run_dir, "--quiet"), 2,
                   f"{HISTORY_FILE} line 3 differs from the checkpoint")


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "nested.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    result = fedsim(tmp_path, "--debug", "run", "nested.toml")
    assert result.returncode != 0 and "Traceback" in result.stderr


# --- 8. the smaller items -------------------------------------------------------------------------------------

def test_run_files_follow_the_umask(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(["sh", "-c", f"umask 022 && exec {sys.executable} -m fedsim run --preset synthetic "
                             + " ".join(ROUNDS12) + f" --quiet --out {out}"],
                            cwd=tmp_path, env=clean_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in (CONFIG_FILE, META_FILE, HISTORY_FILE, SUMMARY_FILE, CHECKPOINT_FILE):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    # the command recorded runs again as it is (not the path of fedsim's __main__.py)
    assert json.loads((out / META_FILE).read_text())["command"] == [
        sys.executable, "-m", "fedsim", "run", "--preset", "synthetic", *ROUNDS12, "--quiet", "--out", str(out)]


def test_a_loss_that_overflows_stops_as_divergence_with_the_last_finite_values(tmp_path, fedsim_here):
    out = tmp_path / "run"
    result = fedsim_here("run", "--preset", "synthetic", *TINY, "--set", "federated.method=fedavg",
                         "--set", "federated.lr=1e6", "--set", "federated.rounds=10", "--quiet", "--out", out)
    assert result.returncode == 1, result.stderr
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["status"] == "diverged" and "NaN or inf" in summary["message"]
    assert "last finite: test accuracy" in summary["message"] and summary["completed"] >= 2, summary
    assert all(np.isfinite(r["test_loss"]) for r in RunFolder(out).read_history())


def test_a_huge_config_value_is_not_echoed_whole(tmp_path, fedsim_here):
    (tmp_path / "huge.toml").write_text('[federated]\nmethod = "' + "x" * 5_000_000 + '"\n')
    line = one_line_error(fedsim_here("run", "huge.toml"), 2, "federated.method", "characters cut")
    assert len(line) < 2_000


def test_a_lazy_error_names_the_lazy_setting(tmp_path, fedsim_here):
    result = fedsim_here("run", "--preset", "laq-synthetic", "--set", "lazy.n_workers=5000",
                         "--set", "data.partition=iid", "--quiet")
    line = one_line_error(result, 2, "lazy.n_workers")
    assert "n_clients" not in line
