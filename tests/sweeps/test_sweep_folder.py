"""The sweep folder's trust (issue #28 items 1, 2, 7, 8, 9; issue #23 item 1), each attack as a real
``fedsim`` process: run folders extended, swapped with mv or mis-pointed by the manifest are never reused
nor reported under the wrong settings; a folder belongs to one sweep and one sweep process at a time; the
sweep file is read once; a damaged summary.json costs only its run; the sweep name cannot leave runs/."""

import json
import re
import shutil
import time
from functools import partial
from pathlib import Path

import pytest

from fedsim.runs import RunFolder
from fedsim.runs.folder import LOCK_FILE
from fedsim.sweeps import load_sweep, resume_hint
from tests.conftest import error_lines, fedsim
from tests.runs.conftest import history, one_line_error
from tests.sweeps.conftest import manifest_of, sweep_text, wait_until, write_sweep

SEEDS = "seed = [0, 1, 2, 3]"


def seeds_sweep(folder: Path, rounds: int = 12) -> Path:
    """The sweep file ``seeds.toml`` of four seeds of one method."""
    return write_sweep(folder, "seeds", rounds, 5, SEEDS)


def run_of(out: Path, seed: int) -> Path:
    (folder,) = (out / "runs").glob(f"seed={seed}-*")
    return folder


def accuracy_rows(out: Path) -> dict[str, str]:
    """report.csv's final test accuracy by seed."""
    import csv
    with open(out / "report.csv", newline="") as handle:
        return {row["seed"]: row["value"] for row in csv.DictReader(handle) if row["metric"] == "final_test_accuracy"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished sweep of four seeds (and its sweep file beside it), built once; tests work on copies."""
    where = tmp_path_factory.mktemp("finished")
    result = fedsim(where, "sweep", seeds_sweep(where), "--workers", "2", "--out", where / "S", "--quiet")
    assert result.returncode == 0, result.stderr
    assert fedsim(where, "sweep", "report", where / "S").returncode == 0
    return where


@pytest.fixture
def sweep(finished, tmp_path) -> tuple[Path, Path]:
    """(the sweep file, a copy of the finished sweep folder) in ``tmp_path``."""
    shutil.copytree(finished / "S", tmp_path / "S")
    return seeds_sweep(tmp_path), tmp_path / "S"


def test_a_run_extended_past_its_plan_is_neither_reused_nor_reported(sweep, tmp_path):
    """An extended run, and a finished run whose history.jsonl holds a record past its plan (was: counted completed
    by the sweep run again, left out by the report): each named by both, left as found."""
    path, out = sweep
    extended, damaged = run_of(out, 0), run_of(out, 1) / "history.jsonl"
    result = fedsim(tmp_path, "run", "--resume", extended, "--extend-to", "16", "--quiet")
    assert result.returncode == 0, result.stderr
    records = damaged.read_text().splitlines()
    damaged.write_text("\n".join(records + [records[-1].replace('"round": 12', '"round": 13')]) + "\n")
    again = fedsim(tmp_path, "sweep", path, "--out", out, "--quiet")
    lines = [line for line in error_lines(again.stderr) if extended.name in line or damaged.parent.name in line]
    assert again.returncode == 1 and len(lines) == 2 and "2 completed, 2 mismatched" in again.stdout, again.stderr
    assert "federated.rounds: 12 -> 16" in lines[0] and "left as found" in lines[0]
    assert "history.jsonl line 13: a record past the 12 rounds" in lines[1] and "left as found" in lines[1]
    assert len(RunFolder(extended).read_history()) == 16           # not touched
    assert len(damaged.read_text().splitlines()) == 13
    assert {run["status"] for run in manifest_of(out)["runs"]} == {"completed", "mismatched"}
    report = fedsim(tmp_path, "sweep", "report", out)
    lines = [line for line in error_lines(report.stderr) if extended.name in line or damaged.parent.name in line]
    assert report.returncode == 1 and len(lines) == 2 and all("left out of the report" in line for line in lines), \
        report.stderr
    assert sorted(accuracy_rows(out)) == ["2", "3"]


def test_run_folders_swapped_with_mv_are_detected(sweep, tmp_path, finished):
    path, out = sweep
    zero, one = run_of(out, 0), run_of(out, 1)
    zero.rename(out / "runs" / "aside")
    one.rename(zero)
    (out / "runs" / "aside").rename(one)
    report = fedsim(tmp_path, "sweep", "report", out)
    named = [line for line in error_lines(report.stderr) if zero.name in line or one.name in line]
    assert report.returncode == 1 and len(named) == 2, report.stderr
    assert any("'seed=1', not 'seed=0'" in line or "seed: 0 -> 1" in line for line in named), named
    assert accuracy_rows(out) == {seed: value for seed, value in accuracy_rows(finished / "S").items()
                                  if seed in ("2", "3")}
    again = fedsim(tmp_path, "sweep", path, "--out", out, "--quiet")
    assert again.returncode == 1 and again.stderr.count("mismatched: it holds the run 'seed=") == 2, again.stderr
    assert history(zero) == history(run_of(finished / "S", 1))      # left as found


def test_a_manifest_pointing_a_run_at_another_folder_reports_nothing_wrong(sweep, tmp_path, finished):
    _, out = sweep
    manifest = manifest_of(out)
    manifest["runs"][3]["folder"] = manifest["runs"][0]["folder"]     # seed 3 -> seed 0's folder
    manifest["runs"][2]["folder"] = "runs/../../elsewhere"
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = fedsim(tmp_path, "sweep", "report", out)
    lines = error_lines(report.stderr)
    assert report.returncode == 1 and len(lines) == 2, report.stderr
    assert "'seed=0', not 'seed=3'" in lines[1] and "not in runs/" in lines[0]
    truth = accuracy_rows(finished / "S")
    assert accuracy_rows(out) == {"0": truth["0"], "1": truth["1"]}
    # a manifest written before config sha256s were recorded: the folder's name still says the run's hash
    for run in manifest["runs"]:
        run.pop("config_sha256")
    manifest["runs"][2]["folder"] = manifest["runs"][3]["folder"] = "runs/" + run_of(out, 3).name
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert fedsim(tmp_path, "run", "--resume", run_of(out, 3), "--extend-to", "13", "--quiet").returncode == 0
    report = fedsim(tmp_path, "sweep", "report", out)
    lines = error_lines(report.stderr)
    assert report.returncode == 1 and len(lines) == 2 and all("is not the" in line for line in lines), report.stderr
    assert sorted(accuracy_rows(out)) == ["0", "1"]


def test_a_sweep_folder_belongs_to_one_sweep(sweep, tmp_path):
    path, out = sweep
    before = (out / "manifest.json").read_bytes()
    other = tmp_path / "other.toml"
    other.write_text(sweep_text("seeds", 12, 5, "seed = [0, 1, 2, 3, 4]"))
    one_line_error(fedsim(tmp_path, "sweep", other, "--out", out, "--quiet"), 2, "holds another sweep ('seeds' of",
                   "give this one another --out")
    assert (out / "manifest.json").read_bytes() == before and len(list((out / "runs").iterdir())) == 4
    # the same sweep, its file reworded (comments, spacing, key order): resumes, nothing run again
    reworded = sweep_text("seeds", 12, 5, "seed=[0,1,2,3]  # four seeds").replace(
        '"data.synthetic_devices" = 8\n"federated.n_clients" = 8',
        '"federated.n_clients"=8\n"data.synthetic_devices" = 8')
    path.write_text("# the same plan\n" + reworded)
    again = fedsim(tmp_path, "sweep", path, "--out", out)
    assert again.returncode == 0 and "4 completed" in again.stdout, again.stderr
    # a folder holding files no sweep wrote
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    refused = fedsim(tmp_path, "sweep", path, "--out", tmp_path / "mine")
    assert refused.returncode == 2 and "is not a sweep folder (it holds notes.txt)" in refused.stderr
    assert [entry.name for entry in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_two_sweeps_of_one_file_into_one_folder_at_once(tmp_path, start_sweep):
    path = seeds_sweep(tmp_path, rounds=300)
    out = tmp_path / "S"
    first = start_sweep(path, out, "--workers", 1)
    wait_until(first, (out / LOCK_FILE).exists, "the first sweep holds the folder")     # then the second starts
    processes = [first, start_sweep(path, out, "--workers", 1)]
    results = [(process.wait(timeout=300), *process.communicate()) for process in processes]
    (refused,) = [stderr for status, _, stderr in results if status == 2]
    assert sorted(status for status, _, _ in results) == [0, 2], results
    lines = error_lines(refused)
    assert len(lines) == 1 and "is in use by another fedsim sweep (pid " in lines[0], refused
    assert [run["status"] for run in manifest_of(out)["runs"]] == ["completed"] * 4


def test_the_sweep_file_is_read_once_and_the_manifest_follows_every_run(tmp_path, start_sweep):
    path = seeds_sweep(tmp_path, rounds=60)
    text = path.read_text()
    out = tmp_path / "S"
    process = start_sweep(path, out, "--workers", 1)
    edited = deleted = False
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        finished = [folder for folder in out.glob("runs/*") if (folder / "summary.json").exists()]
        if finished and not edited:
            seeds_sweep(tmp_path, rounds=7)                         # edited mid-sweep ...
            edited = True
        if len(finished) >= 2 and not deleted:
            path.unlink()                                           # ... then deleted
            deleted = True
        if finished and (out / "manifest.json").exists():          # the manifest is never behind the folders
            recorded = [run for run in manifest_of(out)["runs"] if run["status"] == "completed"]
            assert len(recorded) >= len(finished) - 1               # at most the run ending now
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=60)
    assert edited and deleted and process.returncode == 0, stderr
    manifest = manifest_of(out)
    assert manifest["sweep_text"] == text
    assert [run["status"] for run in manifest["runs"]] == ["completed"] * 4
    assert all(len(RunFolder(folder).read_history()) == 60 for folder in out.glob("runs/*"))


def test_a_truncated_summary_costs_only_its_run(sweep, tmp_path, finished):
    path, out = sweep
    damaged = run_of(out, 2) / "summary.json"
    damaged.write_bytes(damaged.read_bytes()[:40])
    result = fedsim(tmp_path, "sweep", path, "--out", out, "--quiet")
    lines = [line for line in error_lines(result.stderr) if "summary.json" in line]
    assert result.returncode == 0 and "4 completed" in result.stdout, result.stderr
    assert len(lines) == 1 and f"runs/{damaged.parent.name}/summary.json is damaged" in lines[0]
    assert "finished again from its last checkpoint" in lines[0]
    wall = ("seconds", "wall_seconds")
    original = json.loads((run_of(finished / "S", 2) / "summary.json").read_text())
    again = json.loads(damaged.read_text())
    assert {key: value for key, value in again.items() if key not in wall} == \
        {key: value for key, value in original.items() if key not in wall}
    assert history(damaged.parent) == history(run_of(finished / "S", 2))
    assert (damaged.parent / ".damaged-summary.json").stat().st_size == 40


@pytest.mark.parametrize("name", ["/abs", "../x", "", "a/b", ".hidden", "x\\\\y"])
def test_a_sweep_name_cannot_leave_runs(tmp_path, name):
    (tmp_path / "seeds.toml").write_text(sweep_text(name, 2, 5, SEEDS))
    one_line_error(fedsim(tmp_path, "sweep", "seeds.toml", "--dry-run"), 2,      # (a real sweep on main wrote to /abs)
                   "name = ", "cannot name the sweep's folder", "letters, digits")


def test_a_name_from_the_file_is_made_a_folder_name_and_the_resume_hint_a_command_to_paste(tmp_path):
    path = tmp_path / "my sweep.toml"
    path.write_text(sweep_text(None, 2, 5, SEEDS))
    assert load_sweep(path).name == "my-sweep"
    hint = resume_hint(Path("my sweeps/a.toml"), Path("runs/a"))
    assert hint.endswith("Continue with: fedsim sweep 'my sweeps/a.toml' --out runs/a")


def file_sweep(tmp_path: Path, kind: str, seeds: str) -> tuple[Path, Path, object]:
    """(the sweep file ``seeds.toml`` of tiny runs over ``seeds`` reading a file of theirs, that file, a function
    that changes it): an npz dataset (``kind`` "npz") or a system.trace ("trace")."""
    if kind == "npz":
        from tests.data.test_npz import arrays, saved
        path = saved(tmp_path)
        settings = f'"data.dataset" = "npz:{path}"\n"data.partition" = "iid"\n'      # no synthetic_devices (warned)
        change = partial(saved, tmp_path, x_test=arrays()["x_test"] + 1)
    else:
        path = tmp_path / "trace.csv"
        path.write_text("client,up,down,latency,speed\n" + "".join(f"{k},1e6,4e6,0.05,1e9\n" for k in range(8)))
        settings = f'"system.profile" = "trace"\n"system.trace" = "{path}"\n'
        change = partial(path.write_text, path.read_text().replace("0,1e6,", "0,1e3,", 1))
    sweep = tmp_path / "seeds.toml"
    text = sweep_text("seeds", 3, 5, seeds).replace("\n\n[grid]", f"\n{settings}\n[grid]")
    sweep.write_text(text.replace('"data.synthetic_devices" = 8\n', "") if kind == "npz" else text)
    return sweep, path, change


def setting_of(kind: str, path: Path) -> str:
    return f"data.dataset npz:{path}" if kind == "npz" else f"system.trace {path}"


@pytest.mark.parametrize("kind", ["npz", "trace"])
def test_a_sweep_continued_after_a_file_its_runs_read_changed_is_refused_before_any_run(tmp_path, kind):
    """A file the runs read (npz data, a system.trace; its sha256 in their meta.json) changed between a sweep
    and its continuation: refused in one line naming the file, before a run starts, the folder as found (the
    runs still to run used to read the new file, reported beside the runs on the old one)."""
    sweep, path, change = file_sweep(tmp_path, kind, "seed = [0, 1]")
    out = tmp_path / "S"
    first = fedsim(tmp_path, "sweep", sweep, "--out", out, "--quiet")
    assert first.returncode == 0 and "2 completed" in first.stdout, first.stderr
    shutil.rmtree(run_of(out, 1))           # a run still to run
    change()
    manifest = (out / "manifest.json").read_bytes()
    line = one_line_error(fedsim(tmp_path, "sweep", sweep, "--out", out, "--quiet"), 2,
                          f"runs/{run_of(out, 0).name}: {setting_of(kind, path)}: ",
                          "the file changed since the run started", "put it back, or start the sweep in a new folder")
    assert not list((out / "runs").glob("seed=1-*")) and (out / "manifest.json").read_bytes() == manifest, line


@pytest.mark.parametrize("kind", ["npz", "trace"])
def test_the_report_names_the_runs_that_read_another_version_of_a_file(tmp_path, kind):
    """Runs that read other versions of one file (a run folder of the sweep run on the changed file moved in;
    a file changed while the sweep ran) are not reported beside each other: those that did not read the file
    as it is now are named, one line each, and left out."""
    sweep, path, change = file_sweep(tmp_path, kind, "seed = [0, 1, 2]")
    original = path.read_bytes()
    assert fedsim(tmp_path, "sweep", sweep, "--out", tmp_path / "S", "--quiet").returncode == 0
    change()
    assert fedsim(tmp_path, "sweep", sweep, "--out", tmp_path / "new", "--quiet").returncode == 0
    mine, moved_in = run_of(tmp_path / "S", 1), run_of(tmp_path / "new", 1)
    shutil.rmtree(mine)
    shutil.copytree(moved_in, mine)
    for now, named in ((None, [0, 2]), (original, [1])):       # the file as changed, then put back
        if now is not None:
            path.write_bytes(now)
        report = fedsim(tmp_path, "sweep", "report", tmp_path / "S")
        lines = error_lines(report.stderr)
        assert report.returncode == 1 and len(lines) == len(named), report.stderr
        for seed, line in zip(named, lines):
            assert line.startswith(f"fedsim: sweep report: runs/{run_of(tmp_path / 'S', seed).name}: "
                                   f"{setting_of(kind, path)}: it read the file with sha256 ") and \
                "other runs of the sweep another version (sha256 " in line and \
                line.endswith("; left out of the report"), line
        assert sorted(accuracy_rows(tmp_path / "S")) == [str(seed) for seed in (0, 1, 2) if seed not in named]
    path.unlink()                                              # the file gone: no run read it as it is now
    lines = error_lines(fedsim(tmp_path, "sweep", "report", tmp_path / "S").stderr)
    assert len(lines) == 3 and all(line.endswith("; the file is now missing or unreadable); left out of the report")
                                   for line in lines), lines


def test_a_file_changed_while_the_sweep_runs_is_told_at_its_end(tmp_path):
    """The trace is rewritten while the sweep runs (by a plugin partitioner, while the second run is built):
    that run is refused (its file changed while it was built), the third reads the new version, and the sweep
    ends with one line for the run that read the older one, and exit status 1."""
    import os
    from tests.conftest import REPO
    sweep, path, change = file_sweep(tmp_path, "trace", "seed = [0, 1, 2]")
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "changer.py").write_text(
        "import numpy as np\nfrom pathlib import Path\nfrom fedsim.data.partition import register_partitioner\n\n"
        f"CALLS = Path({str(tmp_path / 'calls')!r})\n\n"
        "@register_partitioner('changer')\ndef split(labels, n_clients, rng):\n"
        "    CALLS.write_text(CALLS.read_text() + 'x' if CALLS.exists() else 'x')\n"
        "    if CALLS.read_text() == 'xx':        # the second run: the trace changes while it is built\n"
        f"        path = Path({str(path)!r})\n"
        "        path.write_text(path.read_text().replace('0,1e6,', '0,1e3,', 1))\n"
        "    return np.array_split(np.arange(len(labels)), n_clients)\n")
    sweep.write_text(sweep.read_text().replace("[grid]", 'plugins = ["changer"]\n"data.partition" = "changer"\n\n'
                                               "[grid]"))
    ran = fedsim(tmp_path, "sweep", sweep, "--out", tmp_path / "S", "--workers", "1", "--quiet",
                 PYTHONPATH=os.pathsep.join([str(REPO), str(plug)]))
    refused, older = error_lines(ran.stderr)
    assert ran.returncode == 1 and "2 completed, 1 failed" in ran.stdout, ran.stderr
    assert re.match(rf"fedsim: seed=1-\w+: failed: DataSettingError: system.trace {re.escape(str(path))}: the file "
                    r"changed while the run was being built \(sha256 ", refused), refused
    assert not list((tmp_path / "S" / "runs").glob("seed=1-*"))                 # refused before its folder
    assert older.startswith(f"fedsim: sweep seeds: runs/{run_of(tmp_path / 'S', 0).name}: system.trace "
                            f"{path}: it read the file with sha256 "), older
