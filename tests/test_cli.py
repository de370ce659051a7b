"""The ``fedsim`` command: configs and their errors, runs, kill -9 / Ctrl-C and resume, plots, compare, data.

Each command runs at least once as a subprocess of the installed package (``python -m fedsim`` and the
console script), as do the tests of signals; the other calls run ``fedsim.cli.main`` in this process."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.cli import main, plot_folder
from fedsim.programs import UsageError, one_line_errors, report_outcome, report_outcomes, stopped_at_once
from fedsim.config import ConfigError, config_from_dict, load_preset, parse_toml
from fedsim.data.fetch import MAX_TIMEOUT_SECONDS
from fedsim.data.registry import DataSettingError
from fedsim.data.search import DatasetNotFoundError
from fedsim.runs import RunFolder, RunFolderError, RunOutcome, read_run, start_run
from fedsim.sweeps import SweepError
from tests.conftest import TINY, TINY_LAZY, clean_env, error_lines, fedsim
from tests.runs.conftest import finished_run, history as history_without_time, one_line_error
from tests.sweeps.conftest import wait_until

# The run that is killed: long enough to be caught mid-way (a few seconds), checkpoints every 2 rounds.
LONG = TINY + ["--set", "federated.rounds=100", "--set", "run.checkpoint_every=2"]


def stop_at_checkpoint(tmp_path, run_dir: Path, signal_number: int, at_least: int, *options: str,
                       timeout: float) -> tuple[int, str]:
    """Start the LONG run as a process, poll checkpoint.json until it records ``at_least`` completed rounds, then
    send ``signal_number``; (exit status, stderr)."""
    process = subprocess.Popen([sys.executable, "-m", "fedsim", "run", "--preset", "synthetic", *LONG, *options,
                                "--out", str(run_dir)], cwd=tmp_path, env=clean_env(tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    note = run_dir / "checkpoint.json"
    try:
        wait_until(process, lambda: note.is_file() and json.loads(note.read_text())["completed"] >= at_least,
                   f"a checkpoint with {at_least} rounds", 60)
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=timeout)
        return process.returncode, stderr
    finally:
        if process.poll() is None:
            process.kill()


@pytest.fixture(scope="module")
def reference_history(tmp_path_factory):
    """Records (without wall time) of the LONG run, uninterrupted, run in this process."""
    config = load_preset("synthetic", LONG[1::2])     # the values of the --set pairs
    out = tmp_path_factory.mktemp("reference") / "run"
    assert start_run(config, out, name="reference", quiet=True).status == "completed"
    return history_without_time(out)


# --- configs ------------------------------------------------------------------------------------------------

def test_console_script_and_version(tmp_path):
    script = Path(sys.executable).with_name("fedsim")
    if not script.is_file():
        pytest.skip("the fedsim console script is not installed next to this Python")
    result = subprocess.run([str(script), "presets"], capture_output=True, text=True, cwd=tmp_path,
                            env=clean_env(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"stc-mnist", "laq-mnist", "synthetic", "laq-synthetic"} <= set(names), result.stdout
    version = fedsim(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.startswith("fedsim "), version


def test_show_config_prints_every_setting_as_toml(tmp_path, fedsim_here):
    result = fedsim(tmp_path, "show-config", "--preset", "synthetic", "--set", "federated.lr=0.125",
                    "--seed", "5")
    assert result.returncode == 0, result.stderr
    document = parse_toml(result.stdout)
    assert document["seed"] == 5 and document["federated"]["lr"] == 0.125
    assert document["data"]["dataset"] == "synthetic" and document["federated"]["batch_size"] == 10
    assert config_from_dict(document) == load_preset("synthetic", ["federated.lr=0.125", "seed=5"])
    defaults = fedsim_here("show-config")
    assert defaults.returncode == 0 and 'method = "stc_updown"' in defaults.stdout
    # its output is a config that gives the same config, without a warning about the tables it does not use
    (tmp_path / "shown.toml").write_text(result.stdout)
    again = fedsim_here("show-config", "shown.toml")
    assert (again.returncode, again.stderr) == (0, "")
    assert again.stdout.split("\n", 1)[1] == result.stdout.split("\n", 1)[1]     # all but the header line
    (tmp_path / "exp.toml").write_text('family = "lazy"\n[lazy]\nmethod = "gd"\n')
    of_file = fedsim_here("show-config", "exp.toml", "--dataset", "fashion-mnist")
    assert of_file.returncode == 0, of_file.stderr
    document = parse_toml(of_file.stdout)
    assert (document["family"], document["lazy"]["method"], document["data"]["dataset"]) == \
        ("lazy", "gd", "fashion-mnist")


def test_the_readmes_offline_quickstart_names_only_presets_that_need_no_download():
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Quickstart \(works offline\)\n\n```bash\n(.*?)```", readme, re.S).group(1)
    presets = re.findall(r"--preset (\S+)", block)
    assert presets and all(load_preset(name).data.dataset == "synthetic" for name in presets), presets


@pytest.mark.parametrize("options, table, name, value", [
    # a relative or ~ data.data_dir from a file or --set, as --data-dir makes it: the saved config works anywhere
    (["--set", "data.data_dir=dd"], "data", "data_dir", "{sub}/dd"),
    (["--set", "data.data_dir=../dd"], "data", "data_dir", "{top}/dd"),      # normalized (was: {sub}/../dd)
    (["--data-dir", "../dd"], "data", "data_dir", "{top}/dd"),
    (["--set", "data.data_dir=~/dd"], "data", "data_dir", "{top}/home/dd"),
    (["--set", "data.data_dir=/a/../b"], "data", "data_dir", "/a/../b"),     # an absolute one as written
    # -0.0 as 0.0: one value, one fingerprint (a run folder's config.toml reads back as written: tests/runs)
    (["--set", "federated.l2=-0.0"], "federated", "l2", 0.0),
])
def test_a_new_config_is_taken_as_given_with_its_data_dir_absolute(in_process, tmp_path, monkeypatch, options, table,
                                                                     name, value):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    status, out, err = in_process("show-config", *options)
    expected = value.format(sub=tmp_path / "sub", top=tmp_path) if isinstance(value, str) else value
    assert status == 0 and repr(parse_toml(out)[table][name]) == repr(expected), err


def test_bad_config_file_gives_one_error_line_and_exit_2(tmp_path):
    (tmp_path / "exp.toml").write_text("[federated]\nlrr = 0.1\n")
    one_line_error(fedsim(tmp_path, "run", "exp.toml", "--quiet"), 2,
                   "unknown setting 'federated.lrr' in exp.toml; did you mean 'federated.lr'?")
    assert not (tmp_path / "runs").exists()


CONFIG = ["run", "exp.toml", "--quiet"]


@pytest.mark.parametrize("text, args, fragments", [
    ("[federated]\nlr = \"fast\"\n", CONFIG, ["federated.lr must be a finite number > 0, got 'fast'"]),
    ("", ["show-config", "--preset", "synthetic", "--set", "federated.lr=fast"],
     ["federated.lr must be a finite number > 0, got 'fast'"]),
    ("[federated]\np_up = 1.5\n", CONFIG, ["federated.p_up must be a finite number in (0, 1], got 1.5"]),
    ("[federated\n", CONFIG, ["exp.toml: not valid TOML"]),
    ("", [*CONFIG, "--set", "federated.rounds=0"], ["federated.rounds must be an integer >= 1, got 0"]),
    ("", [*CONFIG, "--set", "data.datset=mnist"], ["did you mean 'data.dataset'?"]),
    ("", [*CONFIG, "--set", "federated.lr"], ["--set needs key=value"]),
    ("", [*CONFIG, "--dataset", "cifar"], ["data.dataset must be one of"]),
    ("[lazy]\nseed = 1\n", CONFIG, ["lazy.seed cannot be set here; set the top-level `seed` instead"]),
    ("", ["run", "--preset", "stc-minst"], ["did you mean 'stc-mnist'"]),
    ("", ["run", "missing.toml"], ["config file missing.toml does not exist"]),
    ("", ["run", "exp.toml", "--preset", "synthetic"], ["not both"]),
    ("", ["run"], ["give a CONFIG file or --preset NAME"]),
    ("", ["run", "--resume", "somewhere", "--set", "seed=1"],
     ["--resume continues a run with the config saved in its folder", "--set"]),
    ("", ["run", "--resume", "nowhere"], ["nowhere is not a fedsim run folder"]),
    ("", ["run", "--preset", "synthetic", "--set", "data.partition=classes_per_client", "--set",
          "federated.n_clients=100000"], ["the config does not fit the data"]),
    ("", ["compare", "nothing"], ["nothing is not a fedsim run folder"]),
    ("", ["data", "fetch", "synthetic"], ["needs no files"]),
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", CONFIG, ["nested too deeply"]),
    ("", ["run", "--preset", "synthetic", "--extend-to", "3"], ["--extend-to goes with --resume"]),
    # a shortcut option and --set of its setting: two values for one setting, whatever the order (was: the option won)
    ("", ["show-config", "--preset", "synthetic", "--seed", "3", "--set", "seed=5"],
     ["--seed and --set seed=... give seed two values; give one of them"]),
    ("", ["run", "--preset", "stc-mnist", "--set", "data.dataset=npz:x.npz", "--dataset", "fashion-mnist"],
     ["--dataset and --set data.dataset=... give data.dataset two values"]),
    # a ~user that cannot be expanded, in each path a user gives
    ("", ["run", "--preset", "synthetic", "--dataset", "npz:~no-such-user-fedsim/x.npz"],
     ["data.dataset: cannot expand '~' in '~no-such-user-fedsim/x.npz'"]),
    ("", ["run", "--preset", "synthetic", "--data-dir", "~no-such-user-fedsim/x"],
     ["data_dir (--data-dir): cannot expand '~'"]),
    ("", ["run", "--preset", "synthetic", "--set", 'data.data_dir="~no-such-user-fedsim/x"'],
     ["data.data_dir: cannot expand '~' in '~no-such-user-fedsim/x'"]),
    ("", ["run", "--preset", "stc-mnist", "--data-dir", ""],
     ["data_dir (--data-dir) must be an existing folder holding dataset files; got an empty path"]),
    ("", ["run", "--preset", "synthetic", "--set", 'system.profile="trace"', "--set",
          'system.trace="~no-such-user-fedsim/t.csv"'], ["system.trace: cannot expand '~'"]),
])
def test_bad_configs_and_command_lines(in_process, tmp_path, text, args, fragments):
    (tmp_path / "exp.toml").write_text(text)
    status, out, err = in_process(*args)
    assert status == 2 and err.count("\n") == 1 and err.startswith("fedsim: error: "), err
    assert out == "" or "--quiet" not in args, out          # without --quiet, `run` first says what it runs
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "runs").exists()


SET_SPACE = "--set needs key=value, joined by '=' with no space (e.g. --set {}); got --set {}"
SPACED_LR = SET_SPACE.format("federated.lr=0.1", "federated.lr 0.1")
REPORT = ["compressors", "report"]


@pytest.mark.parametrize("args, line", [
    # a space for the '=' of --set: the example is a setting the command takes (report's: was federated.lr=0.1)
    (["run", "--preset", "synthetic", "--set", "federated.lr", "0.1"], SPACED_LR),
    (["run", "exp.toml", "--set", "federated.lr", "0.1", "--quiet"], SPACED_LR),
    (["show-config", "--set", "federated.lr", "0.1"], SPACED_LR),
    ([*REPORT, "--set", "stc.p", "stc"], SET_SPACE.format("stc.p=0.01", "stc.p stc")),
    # report --set: a setting the compressor does not have, or a value its field's constraint refuses, before
    # anything is measured (was: 'not measured' and a KeyError, or for a compressor not named, nothing)
    *(([*REPORT, "qsgd", "--set", setting, "--draws", "5", "--size", "100"], line) for setting, line in [
        ("qsgd.level=4", "unknown setting 'qsgd.level' in --set; did you mean 'qsgd.levels'?"),
        ("topk.pp=0.1", "unknown setting 'topk.pp' in --set; did you mean 'topk.p'?"),   # p: a config's is elsewhere
        ("qsgd.xyzzy=1", "unknown setting 'qsgd.xyzzy' in --set; qsgd has: levels, bucket_size, scope"),
        ("qsgd.levels=0", "qsgd.levels must be an integer in [1, 2^31 - 1], got 0"),
        ("stc.threshold=bogus", "stc.threshold must be one of 'exact', 'sampled', got 'bogus'")]),
    # a lazy preset's vectors, in the line a lazy run folder gets (was: a TypeError from LazyRun.run)
    ([*REPORT, "stc", "--vectors", "preset:laq-synthetic", "--draws", "5"],
     "--vectors preset:laq-synthetic: real updates come from federated runs (this is a LazyRun)"),
    ([*REPORT, "stc", "--draws", "2", "--size", "100", "--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["run", "--preset", "synthetic", "--set", "federated.batch_size=5000", "--quiet"],
     "the config does not fit the data: federated.batch_size (5000) is larger than the smallest client's data (40 "
     "samples, client 12): set federated.batch_size <= 40, or fewer federated.n_clients"),
    # options a sweep command cannot use, refused rather than ignored (as --threads with --scheduler)
    (["sweep", "s.toml", "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9", "--workers", "2"],
     "--workers sets how many workers fedsim starts; --scheduler runs the sweep on the workers its owner started "
     "(add some with `dask worker ADDRESS`)"),
    # an empty or unknown backend, also with --dry-run (were: run on local, listed)
    *((["sweep", "s.toml", "--backend", name, "--dry-run"], f"--backend must be one of local, dask, got {name!r}")
      for name in ("", "nonsense")),
    (["sweep", "report", "S", "--out", "elsewhere"],
     "--out goes with sweep SWEEP.toml and sweep plot; sweep report writes report.csv into DIR (S)"),
    # (were ignored: sweep plot --dry-run wrote the figures)
    (["sweep", "plot", "S", "--dry-run", "--workers", "9", "--backend", "nonsense"],
     "--workers, --backend, --dry-run go with sweep SWEEP.toml, which runs the runs; sweep plot only reads DIR (S)"),
    (["sweep", "report", "S", "--threads", "2", "--scheduler", "tcp://x:1", "--quiet"],
     "--threads, --scheduler, --quiet go with sweep SWEEP.toml, which runs the runs; sweep report only reads DIR (S)"),
    (["sweep", "report", "S", "--backend", "local"],
     "--backend goes with sweep SWEEP.toml, which runs the runs; sweep report only reads DIR (S)"),
    # an empty --out, or --seed 0, with --resume (were ignored)
    *((["run", "--resume", "r1", flag, value], f"--resume continues a run with the config saved in its folder; it "
       f"does not take {flag} (to run more steps: --extend-to N)") for flag, value in (("--out", ""), ("--seed", "0"))),
    (["run", "--preset", "synthetic", "--out", "", "--quiet"], "--out must name the run folder; got an empty path"),
    (["show-config", "--set", 'data.data_dir=" "'],        # under its own name (was: kept, then data_dir (--data-dir))
     "data.data_dir must be the path of a folder, or unset (only the standard search path), got ' '"),
    # a bit budget out of reach: refused before the run folder, as lazy.bits_per_upload (was: a folder left behind)
    (["run", "--preset", "synthetic", "--set", "federated.bits_per_round=1e300", "--quiet"],
     "federated.bits_per_round = 1e+300 is out of reach of stc: its reachable range ends at 1347.77 bits per client "
     "(p = 1)"),
    # beyond the training set: refused with its range, not clipped (the default 5000 means all if fewer)
    (["run", "--preset", "synthetic", "--set", "federated.eval_train_samples=100000000", "--quiet"],
     "the config does not fit the data: federated.eval_train_samples must be an integer in [1, 4321] (the training "
     "samples; or 5000: all of them if fewer), got 100000000"),
])
def test_errors_of_exactly_one_line(in_process, tmp_path, args, line):
    (tmp_path / "exp.toml").write_text("")
    assert in_process(*args) == (2, "", f"fedsim: error: {line}\n")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, text", [
    (["data", "fetch", "--help"], f"in (0, {MAX_TIMEOUT_SECONDS}]"),
    # report's --seed seeds the synthetic vectors and the draws, not a preset's vectors
    ([*REPORT, "--help"], "seed (>= 0) of the gaussian and heavy-tailed vectors and of the compressors' random "
                          "draws (a preset's or run folder's vectors are fixed by its run)"),
])
def test_help_says(in_process, capsys, args, text):
    with pytest.raises(SystemExit):
        in_process(*args)
    assert text in " ".join(capsys.readouterr().out.split())


# --- runs ---------------------------------------------------------------------------------------------------

def test_run_writes_a_run_folder(tmp_path, fedsim_here):
    result = fedsim_here("run", "--preset", "synthetic", *TINY, "--set", "federated.rounds=3")
    assert result.returncode == 0, result.stderr
    assert "run completed: 3 rounds; final test accuracy" in result.stdout
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1 and re.fullmatch(r"synthetic-\d{8}-\d{6}", folders[0].name), folders
    run_dir = folders[0]
    assert f"results: {Path('runs') / run_dir.name}" in result.stdout
    assert {"config.toml", "meta.json", "history.jsonl", "summary.json", "checkpoint.npz",
            "checkpoint.json"} <= set(os.listdir(run_dir))
    config = config_from_dict(parse_toml((run_dir / "config.toml").read_text()))
    assert config == load_preset("synthetic", ["data.synthetic_devices=8", "federated.n_clients=8",
                                               "federated.rounds=3"])
    assert len(RunFolder(run_dir).read_history()) == 3
    # --quiet: only the run folder on stdout, nothing on stderr but library warnings
    quiet = fedsim_here("run", "--preset", "synthetic", *TINY, "--set", "federated.rounds=2", "--quiet",
                        "--out", "q")
    assert quiet.returncode == 0 and quiet.stdout.strip() == "q" and error_lines(quiet.stderr) == []
    # a finished run folder is neither overwritten nor resumed
    again = fedsim_here("run", "--preset", "synthetic", "--out", "q")
    assert again.returncode == 2 and "q already holds a run; continue it with `fedsim run --resume q`" in again.stderr
    resumed = fedsim_here("run", "--resume", "q")
    assert resumed.returncode == 0 and "nothing to resume in q: the run already ended (completed)" in resumed.stderr


def test_lazy_run(tmp_path, fedsim_here):
    result = fedsim_here("run", "--preset", "laq-synthetic", *TINY_LAZY, "--out", "lazy")
    assert result.returncode == 0, result.stderr
    assert "run completed: 20 iterations" in result.stdout
    history = RunFolder(tmp_path / "lazy").read_history()
    assert [r["iteration"] for r in history] == list(range(20))
    assert json.loads((tmp_path / "lazy" / "summary.json").read_text())["status"] == "completed"


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, reference_history):
    run_dir = tmp_path / "killed"
    assert stop_at_checkpoint(tmp_path, run_dir, signal.SIGKILL, 10, "--quiet", timeout=30)[0] == -signal.SIGKILL
    # checkpoint.npz is what a resume starts from; the note checkpoint.json is written after it, so a kill
    # between the two leaves the note one checkpoint behind (never ahead)
    _, state, _ = RunFolder(run_dir).read_checkpoint()
    checkpointed = state["round"]
    noted = json.loads((run_dir / "checkpoint.json").read_text())["completed"]
    recorded = len(RunFolder(run_dir).read_history())
    assert 10 <= noted <= checkpointed <= recorded < 100, (noted, checkpointed, recorded)
    assert not (run_dir / "summary.json").exists()

    resumed = fedsim(tmp_path, "run", "--resume", run_dir, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    history = history_without_time(run_dir)
    assert len(history) == len(reference_history) == 100
    assert history == reference_history
    meta = json.loads((run_dir / "meta.json").read_text())
    assert [session["from"] for session in meta["sessions"]] == [0, checkpointed]


def test_ctrl_c_stops_cleanly_and_resumes(tmp_path, reference_history):
    run_dir = tmp_path / "interrupted"
    status, stderr = stop_at_checkpoint(tmp_path, run_dir, signal.SIGINT, 4, timeout=60)
    assert status == 130 and "Traceback" not in stderr, (status, stderr)
    assert f"fedsim run --resume {run_dir}" in stderr, stderr
    done = json.loads((run_dir / "checkpoint.json").read_text())["completed"]
    assert len(RunFolder(run_dir).read_history()) == done     # stopped at the checkpointed round boundary
    assert re.search(rf"interrupted after {done} of 100 rounds", stderr), stderr
    resumed = fedsim(tmp_path, "run", "--resume", run_dir, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert history_without_time(run_dir) == reference_history


# --- results ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Two federated runs and two lazy runs, made in this process."""
    root = tmp_path_factory.mktemp("finished")
    settings = ["data.synthetic_devices=8", "federated.n_clients=8", "federated.rounds=6"]
    lazy = ["data.synthetic_devices=6", "lazy.n_workers=6", "lazy.iterations=30", "lazy.eval_every=10"]
    specs = {"stc": ("synthetic", settings), "fedavg": ("synthetic", settings + ["federated.method=fedavg"]),
             "laq": ("laq-synthetic", lazy), "gd": ("laq-synthetic", lazy + ["lazy.method=gd"])}
    for name, (preset, overrides) in specs.items():
        finished_run(root, name, preset, overrides)
    return root


def test_plot_writes_png_and_svg(tmp_path, finished_runs, fedsim_here):
    runs = [finished_runs / name for name in ("stc", "fedavg", "laq", "gd")]
    result = fedsim(tmp_path, "plot", *runs, "--out", "figures")
    assert result.returncode == 0, result.stderr
    expected = {f"{stem}.{kind}" for stem in ("federated_accuracy", "lazy_residual", "lazy_uploads")
                for kind in ("png", "svg")}
    assert set(os.listdir(tmp_path / "figures")) == expected
    for name in expected:
        data = (tmp_path / "figures" / name).read_bytes()
        assert data.startswith(b"\x89PNG") if name.endswith(".png") else b"<svg" in data[:1000], name
    assert len(result.stdout.splitlines()) == 6
    # a folder the system refuses (/proc, even to root): 1, and the way out
    one_line_error(fedsim_here("plot", runs[0], "--out", "/proc/fedsim-plots"), 1,
                   "cannot write the figures into /proc/fedsim-plots (", "); choose another folder with --out")
    # without --out: into the run folder for one run, into ./plots for several
    one, two = read_run(runs[0]), read_run(runs[2])
    assert plot_folder([one]) == runs[0] / "plots"
    assert plot_folder([one, two]) == Path("plots") and plot_folder([one], "x") == Path("x")


def test_compare_prints_a_table(tmp_path, finished_runs, fedsim_here):
    runs = [finished_runs / name for name in ("stc", "fedavg", "laq", "gd")]
    result = fedsim(tmp_path, "compare", *runs, "--target-accuracy", "0.5", "--target-residual", "1e-3")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "federated runs (target: test accuracy >= 0.5)" in text
    assert "lazy runs (target: f - f_best <= 0.001; f_best = " in text   # not certified: the best of these runs
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split()
            and line.split()[0] in ("stc", "fedavg", "laq", "gd")}
    assert set(rows) == {"stc", "fedavg", "laq", "gd"}
    stc = json.loads((finished_runs / "stc" / "summary.json").read_text())
    assert rows["stc"][1:5] == ["stc_updown", "6", f"{stc['final_test_accuracy']:.4f}",
                                f"{stc['best_test_accuracy']:.4f}"]
    assert rows["gd"][2] == "30" and rows["gd"][-1] == "completed"
    # a folder of run folders among them (`fedsim compare runs/*` after the examples ran): left out, saying so
    among = fedsim_here("compare", *runs, finished_runs, "--target-accuracy", "0.5", "--target-residual", "1e-3")
    assert (among.returncode, among.stdout) == (0, text)
    assert error_lines(among.stderr) == [f"fedsim: {finished_runs} is not a run folder; left out (it holds the run "
                                         f"folders fedavg, gd, laq ...: fedsim compare {finished_runs / '*'})"]
    bad = fedsim_here("compare", *runs, "--target-accuracy", "2")
    one_line_error(bad, 2, "--target-accuracy must be in [0, 1]")
    # two folders of one name: each row named by as much of its path as tells them apart
    shutil.copytree(runs[0], tmp_path / "B" / "stc")
    twice = fedsim_here("compare", runs[0], tmp_path / "B" / "stc").stdout.splitlines()
    assert [line.split()[0] for line in twice[3:]] == [f"{finished_runs.name}/stc", "B/stc"], twice


# --- data ---------------------------------------------------------------------------------------------------

def test_data_info_reports_where_and_how_files_verified(tmp_path, shared_data):
    (tmp_path / "a-file").write_text("")
    entries = os.pathsep.join([str(shared_data), str(tmp_path / "a-file"), str(tmp_path / "absent")])
    result = fedsim(tmp_path, "data", "info", FEDSIM_DATA=entries)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"{shared_data}  [FEDSIM_DATA]\n" in text and f"download cache: {tmp_path / 'cache'}" in text
    assert f"{tmp_path / 'a-file'}  [FEDSIM_DATA]  (is not a folder)" in text
    assert f"{tmp_path / 'absent'}  [FEDSIM_DATA]  (does not exist)" in text
    block = text.split("fashion-mnist:")[1].split("synthetic:")[0]
    assert block.count("verified by") == 4, text
    assert str(shared_data / "fashion-mnist" / "train-images-idx3-ubyte.gz") in block
    mnist = text.split("mnist:")[1].split("fashion-mnist:")[0]
    assert re.search(r"train-images\s+not found", mnist) and mnist.count("verified by md5") == 3, text


def test_data_fetch_downloads_verifies_and_reports(tmp_path, shared_data, fedsim_here):
    mirror = shared_data.resolve().as_uri()          # file:///.../data, laid out as <base>/<name>/<file>
    result = fedsim(tmp_path, "data", "fetch", "fashion-mnist", FEDSIM_MIRRORS=mirror)
    assert result.returncode == 0, result.stderr
    cached = tmp_path / "cache" / "fashion-mnist"
    assert sorted(os.listdir(cached)) == sorted(["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
    assert result.stdout.count("verified by") == 4 and str(cached) in result.stdout
    # MNIST's train images are not on this mirror: the three others arrive, the error says what is missing
    partial = fedsim_here("data", "fetch", "mnist", FEDSIM_MIRRORS=mirror)
    assert partial.returncode == 1
    assert "no verified copy of train-images" in partial.stderr and "Traceback" not in partial.stderr
    assert partial.stdout.count("verified by") == 3

    # the files are on disk now; the settings are still checked first, so a typo shows before it matters
    for setting, env, words in (("--timeout 3601", {}, "timeout (--timeout, seconds) must be a finite number in (0, "
                                                        "3600], got 3601"),
                                ("", {"FEDSIM_MIRRORS": "ftp://bad"}, "FEDSIM_MIRRORS must hold base URLs")):
        refused = fedsim_here("data", "fetch", "fashion-mnist", *setting.split(), **env)
        assert (refused.returncode, refused.stdout) == (2, "") and words in refused.stderr, refused


def test_a_loss_beyond_the_float_range_is_divergence(in_process):
    status, out, err = in_process("run", "--preset", "synthetic", "--set", "federated.lr=1e30", "--out", "far",
                                  "--quiet")
    assert status == 1 and "fedsim: the run diverged after 0 rounds: round 1: the train loss of the server model " \
                           "is NaN or inf, or above 8.39e+06" in err and "; 0 completed rounds kept" in err, err
    summary, meta = (json.loads(Path(f"far/{name}.json").read_text()) for name in ("summary", "meta"))
    assert (summary["status"], summary["completed"], meta["sessions"][-1]["to"]) == ("diverged", 0, 0)


# --- real data ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_data_runs_of_both_families(tmp_path, shared_data, fedsim_here):
    federated = fedsim_here("run", "--preset", "stc-mnist", "--dataset", "fashion-mnist", "--data-dir",
                            shared_data, "--set", "data.train_split=test", "--set", "federated.n_clients=10",
                            "--set", "federated.rounds=2", "--set", "federated.eval_train_samples=500",
                            "--quiet", "--out", "fashion")
    assert federated.returncode == 0, federated.stderr
    history = RunFolder(tmp_path / "fashion").read_history()
    assert len(history) == 2 and 0.1 < history[-1]["test_accuracy"] <= 1
    saved = parse_toml((tmp_path / "fashion" / "config.toml").read_text())
    assert saved["data"]["data_dir"] == str(shared_data.resolve())
    lazy = fedsim_here("run", "--preset", "laq-mnist", "--set", "data.train_split=test",
                       "--set", "lazy.iterations=3", "--quiet", "--out", "mnist-laq",
                       FEDSIM_DATA=str(shared_data))
    assert lazy.returncode == 0, lazy.stderr
    records = RunFolder(tmp_path / "mnist-laq").read_history()
    assert len(records) == 3 and records[0]["uploads"] == list(range(10))


def test_missing_data_is_a_data_error_that_says_what_to_do_and_what_is_present(in_process, tmp_path, shared_data,
                                                                              monkeypatch):
    status, out, err = in_process("run", "--preset", "stc-mnist", "--set", "data.download=false", "--quiet")
    assert status == 1 and out == ""
    assert err.startswith("fedsim: error: dataset 'mnist': no verified copy of") and "How to fix" in err, err
    present = tmp_path / "present"
    (present / "mnist").mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (present / "mnist" / name).symlink_to(shared_data / "mnist" / name)
    (present / "fashion-mnist").symlink_to(shared_data / "fashion-mnist")
    monkeypatch.setenv("FEDSIM_DATA", str(present))
    status, out, err = in_process("run", "--preset", "stc-mnist", "--set", "data.download=false", "--quiet")
    lines = err.splitlines()
    assert status == 1 and lines[0].startswith("fedsim: error: dataset 'mnist': no verified copy of train-images")
    for fragment in ("`fedsim data fetch mnist`", "FEDSIM_DATA",
                     'mnist, its test split only: data.train_split = "test"',
                     'fashion-mnist, all files: data.dataset = "fashion-mnist" (--dataset fashion-mnist)'):
        assert any(fragment in line for line in lines), (fragment, err)
    # A sweep over that data: checked once, before any run starts (not once per run).
    (tmp_path / "s.toml").write_text('base = "stc-mnist"\nname = "s"\n[set]\n"data.download" = false\n'
                                     '[grid]\nseed = [0, 1, 2]\n"federated.lr" = [0.1, 0.2]\n')
    status, out, err = in_process("sweep", "s.toml", "--quiet")
    assert status == 1 and err.count("no verified copy") == 1 and "test split only" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, line", [
    (["run", "--preset", "synthetic", "--bogus"], "fedsim: error: unrecognized arguments: --bogus (see fedsim --help)"),
    (["run", "--extend-to", "x"], "fedsim: error: run: argument --extend-to: invalid int value: 'x' (see fedsim run "
                                  "--help)"),
    *((["data", "fetch", "fashion-mnist", "--timeout", value], "fedsim: error: data fetch: argument --timeout: must be "
       f"a number of seconds > 0, got '{value}' (see fedsim data fetch --help)") for value in ("0", "nan")),
])
def test_argument_errors_name_fedsim_once(in_process, capsys, args, line):
    with pytest.raises(SystemExit) as ended:
        in_process(*args)
    assert ended.value.code == 2 and capsys.readouterr().err == line + "\n"


# --- how a command ends: one mapping of errors, one outcome reporter (the examples share both) -------------

def _raising(error):
    def body():
        raise error
    return body


@pytest.mark.parametrize("error, status, line", [
    (UsageError("give a CONFIG file"), 2, "give a CONFIG file"),
    (ConfigError("federated.lr must be a number,\n  got 'x'"), 2, "federated.lr must be a number, got 'x'"),
    (RunFolderError("q already holds a run"), 2, "q already holds a run"),
    (SweepError("--workers must be an integer >= 1, got 0"), 2, "--workers must be an integer >= 1, got 0"),
    (DataSettingError("data_dir (--data-dir) x does not exist"), 2, "data_dir (--data-dir) x does not exist"),
    (DatasetNotFoundError("dataset 'mnist': no verified copy"), 1, "dataset 'mnist': no verified copy"),
    (PermissionError(13, "Permission denied", "runs/x"), 1, "Permission denied (runs/x)"),
    (OSError("disk full"), 1, "disk full"),
    (RuntimeError("boom"), 1, "unexpected RuntimeError: boom (please report it)"),
    (ConfigError("x" * 5000), 2, f"{'x' * 2000} ... [1,000 characters cut] ... {'x' * 2000}"),
])
def test_each_error_is_one_line_with_its_exit_status(capsys, error, status, line):
    assert one_line_errors("prog", _raising(error), unexpected="please report it") == status
    assert capsys.readouterr() == ("", f"prog: error: {line}\n")


def test_unexpected_errors_keep_their_traceback_unless_advice_is_given_and_debug_keeps_all(capsys):
    with pytest.raises(RuntimeError, match="boom"):
        one_line_errors("prog", _raising(RuntimeError("boom")))
    with pytest.raises(ConfigError):
        one_line_errors("prog", _raising(ConfigError("bad")), debug=True, unexpected="advice")
    assert one_line_errors("prog", lambda: 7) == 7
    assert one_line_errors("prog", _raising(BrokenPipeError())) == 0       # `fedsim compare ... | head`
    assert capsys.readouterr() == ("", "")


def test_ctrl_c_is_130_with_the_interrupts_own_words_or_the_callers(capsys):
    assert one_line_errors("prog", _raising(KeyboardInterrupt())) == 130
    assert one_line_errors("prog", _raising(KeyboardInterrupt()), interrupted=stopped_at_once("again")) == 130
    assert one_line_errors("prog", _raising(KeyboardInterrupt("stopped here"))) == 130
    assert capsys.readouterr().err.splitlines() == [
        "prog: interrupted",
        "prog: stopped at once; continue from the last checkpoint (if any; else from the start) with: again",
        "prog: stopped here"]


AT_ONCE = "fedsim: stopped at once; continue from the last checkpoint (if any; else from the start) with: "


@pytest.mark.parametrize("args, started, told", [
    (["--preset", "synthetic", "--out", "q"], True, AT_ONCE + "fedsim run --resume q"),
    (["--preset", "synthetic", "--out", "run 1/ü"], True, AT_ONCE + "fedsim run --resume 'run 1/ü'"),
    (["--resume", "q", "--extend-to", "30"], True, AT_ONCE + "fedsim run --resume q --extend-to 30"),
    # Ctrl-C while the data loads: no run folder yet (and none left of fedsim's naming)
    (["--preset", "synthetic", "--out", "q"], False, "fedsim: stopped before the run started: nothing is saved; "
                                                     "run the same command again"),
    (["--preset", "synthetic"], False, "fedsim: stopped before the run started: nothing is saved; run the same "
                                       "command again")],
    ids=["started", "quoted", "extension", "no folder yet", "no default folder yet"])
def test_a_ctrl_c_during_a_run_says_how_to_continue_in_a_command_that_can_be_pasted(in_process, monkeypatch, tmp_path,
                                                                                   args, started, told):
    def ctrl_c(*positional, **options):
        if started:
            Path(positional[-1]).mkdir(parents=True, exist_ok=True)
            (Path(positional[-1]) / "config.toml").write_text("")
        raise KeyboardInterrupt
    monkeypatch.setattr("fedsim.runs.start_run", ctrl_c)
    monkeypatch.setattr("fedsim.runs.resume_run", ctrl_c)
    if args[0] == "--resume":
        (tmp_path / "q").mkdir()
    status, out, err = in_process("run", *args, "--quiet")
    assert (status, out, err) == (130, "", told + "\n")
    assert not (tmp_path / "runs").exists()


def test_runs_started_at_once_without_out_take_folders_of_their_own(in_process, monkeypatch, tmp_path):
    """A second `fedsim run` without --out in the same second, while the first loads its data: each run gets its
    own folder (the second the first's name with -2)."""
    import datetime

    import fedsim.runs.folder
    import fedsim.runs.loop
    from fedsim.cli import main

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)
    monkeypatch.setattr(fedsim.runs.folder, "_datetime", type(datetime)("frozen"))
    fedsim.runs.folder._datetime.__dict__.update(datetime=Frozen, timezone=datetime.timezone)
    build = fedsim.runs.loop.build_run
    started = []

    def build_while_another_starts(config, **options):
        if not started:         # the other run, whose own build is the one that follows
            started.append(None)
            started[0] = main(["run", "--preset", "synthetic", *TINY, "--seed", "1", "--quiet"])
        return build(config, **options)
    monkeypatch.setattr(fedsim.runs.loop, "build_run", build_while_another_starts)
    status, out, err = in_process("run", "--preset", "synthetic", *TINY, "--quiet")
    assert (status, started, err) == (0, [0], ""), err
    folders = ["runs/synthetic-20260102-030405", "runs/synthetic-20260102-030405-2"]
    assert sorted(out.split()) == folders
    assert sorted(read_run(tmp_path / folder).config["seed"] for folder in folders) == [0, 1]


@pytest.mark.parametrize("status, completed, message, signal_number, exit_status, told", [
    ("completed", 6, "", None, 0, []),
    ("interrupted", 4, "", signal.SIGTERM, 143,
     ["p: interrupted after 4 of 6 rounds; everything so far is saved. Continue with: {again}"]),
    ("diverged", 3, "NaN or inf", None, 1,
     ["p: the run diverged after 3 rounds: NaN or inf", "p: the completed rounds are saved in {folder}"]),
    ("finished-before", 6, "the run already ended (completed)", None, 0,
     ["p: nothing to resume in {folder}: the run already ended (completed)"]),
])
def test_one_reporter_tells_how_a_run_ended(tmp_path, capsys, status, completed, message, signal_number,
                                            exit_status, told):
    folder = tmp_path / "run 1"       # the command to continue quotes it
    outcome = RunOutcome(status, "federated", RunFolder(folder), completed, 6, None, message, signal_number)
    for again in (None, "this command again"):
        assert report_outcome(outcome, prog="p", again=again) == exit_status
        hint = again or f"fedsim run --resume '{folder}'"
        assert capsys.readouterr() == ("", "".join(f"{line.format(again=hint, folder=folder)}\n"
                                                   for line in told))
    # a batch (the examples' methods) ends at its interrupted run, with that run's exit status
    stopped = report_outcomes({"a": outcome, "b": outcome}, prog="p", again="x")
    assert stopped == (exit_status if status == "interrupted" else None)
    assert len(capsys.readouterr().err.splitlines()) == len(told) * (1 if status == "interrupted" else 2)


def test_compressors_report_prints_every_compressor_against_its_theory_with_csv_and_figure(tmp_path, capsys):
    """The report card on small Gaussian vectors: a line per registered compressor, each stated theory met,
    the CSV and the figure written, the process's matplotlib backend left as it was (a notebook's stays inline);
    an unknown name or --set is one error line."""
    import matplotlib
    from fedsim.compress import COMPRESSORS
    table, figure = tmp_path / "card.csv", tmp_path / "card.png"
    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        assert main(["compressors", "report", "--size", "400", "--draws", "50", "--set", "qsgd.levels=4",
                     "--csv", str(table), "--figure", str(figure)]) == 0
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in COMPRESSORS}
    assert set(lines) == set(COMPRESSORS)
    assert "levels=4 bucket_size=512" in out and "lemma 3.1" in out
    rows = table.read_text().splitlines()
    assert rows[0].startswith("compressor,settings,vectors") and len(rows) == 1 + len(COMPRESSORS)
    assert all(",no," not in row for row in rows[1:]) and figure.stat().st_size > 0
    assert main(["compressors", "report", "nosuch"]) == 2
    assert main(["compressors", "report", "--set", "levels=4"]) == 2
    assert "NAME.SETTING=VALUE" in capsys.readouterr().err


def test_compressors_report_tells_of_a_compressor_it_cannot_measure(capsys):
    """A setting the vectors' layout refuses (PowerSGD's rank 5 on the 1 x 10 matrix of 11 entries) leaves that
    compressor unmeasured: its reason in the table and in one line on stderr, exit status 1, the others measured
    (was: an unexpected KeyError 'meets')."""
    assert main(["compressors", "report", "powersgd", "qsgd", "--size", "11", "--draws", "3",
                 "--set", "powersgd.rank=5"]) == 1
    captured = capsys.readouterr()
    reason = "powersgd.rank must be an integer in [1, 1] for the (1, 10) tensor (at most min(n, m)), got 5"
    assert f"powersgd   not measured: {reason}" in captured.out
    assert "qsgd: levels=16 bucket_size=512" in captured.out
    assert captured.err == f"fedsim: compressors report: powersgd not measured: {reason}\n"


@pytest.mark.parametrize("setting, message", [
    ("stcc.p=0.5", "unknown compressor 'stcc' in --set stcc.p; did you mean 'stc'?"),
    ("zzz.p=0.5", "unknown compressor 'zzz' in --set zzz.p; compressors: identity, topk, stc,"),
    ("federated.p_up=0.1", "--set federated.p_up is a run config's setting; report --set takes a compressor's "
                           "settings, NAME.SETTING with NAME one of identity, topk, stc,")])
def test_compressors_report_refuses_a_name_that_is_no_compressor(capsys, setting, message):
    """--set of an unknown compressor, or of a config table that is not a compressor's, is one line and exit
    status 2 before anything is measured (was: ignored, the report at the defaults, exit status 0); a compressor
    not measured has its settings named in one warning line."""
    assert main(["compressors", "report", "stc", "--set", setting, "--draws", "5", "--size", "100"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"fedsim: error: {message}") and len(err.splitlines()) == 1, err
    assert main(["compressors", "report", "stc", "--set", "qsgd.levels=4", "--set", "stc.p=0.5",
                 "--draws", "5", "--size", "100"]) == 0
    out, err = capsys.readouterr()
    assert "stc: p=0.5 threshold=exact" in out
    assert err == "fedsim: warning: settings not used by this report: qsgd.levels (the compressors measured: stc)\n"


def test_compressors_report_csv_leaves_the_relation_empty_where_no_theory_is_stated(in_process, tmp_path):
    """STC and the bare sign state no error: their relation is empty in the CSV as their theory is (was '<='
    and '='), as the text table shows '-'."""
    import csv
    table = tmp_path / "card.csv"
    assert in_process("compressors", "report", "stc", "sign", "topk", "--size", "100", "--draws", "3",
                      "--csv", table)[0] == 0
    rows = {row["compressor"]: row for row in csv.DictReader(table.read_text().splitlines())}
    assert [(rows[name]["theory"], rows[name]["relation"]) for name in ("stc", "sign")] == [("", ""), ("", "")]
    assert rows["topk"]["relation"] == "<=" and float(rows["topk"]["theory"]) > 0
