"""examples/stc_paper_protocol.py and its two sweeps: the STC paper's protocol (equal training iterations:
FedAvg with delay n against STC at p = 1/n) planned as the paper says, and the script's table, verdict and
figure computed from the run folders."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fedsim.runs import read_run
from fedsim.sweeps import load_sweep
from tests.conftest import clean_env, error_lines
from tests.examples.conftest import REPO, load_example


def test_both_sweeps_compare_fedavg_with_delay_n_and_stc_at_one_over_n_at_equal_iterations():
    for model, hidden in (("softmax", ()), ("mlp", (200,))):
        sweep = load_sweep(REPO / "examples" / "sweeps" / f"stc_paper_{model}.toml")
        assert len(sweep.runs) == 72, model
        plans = set()
        for run in sweep.runs:
            config = run.config
            federated = config.federated
            assert (config.model.name, config.model.hidden) == (model, hidden)
            assert config.data.dataset == "fashion-mnist" and federated.n_clients == 10
            assert federated.local_iterations * federated.rounds == 2000, run.label     # equal iterations
            if federated.method == "fedavg":
                n = federated.local_iterations
            else:
                assert federated.method == "stc_updown" and federated.local_iterations == 1
                n = round(1 / federated.p_up)
                assert federated.p_up == federated.p_down == 1 / n
            plans.add((federated.method, n, config.data.classes_per_client, config.seed))
        assert plans == {(method, n, classes, seed) for method in ("fedavg", "stc_updown") for n in (25, 100, 400)
                         for classes in (1, 2, 4, 10) for seed in (0, 1, 2)}


@pytest.fixture
def small_example(tmp_path, monkeypatch):
    """The script with its softmax sweep a small one of the same shape (synthetic data, 8 local iterations in
    all, 8 runs)."""
    small = tmp_path / "small.toml"
    small.write_text('base = "synthetic"\nname = "small"\n\n[set]\n"data.partition" = "classes_per_client"\n'
                     '"federated.n_clients" = 6\n"federated.eval_every" = 2\n\n[zip]\n'
                     '"federated.method" = ["fedavg", "stc_updown"]\n"federated.local_iterations" = [4, 1]\n'
                     '"federated.rounds" = [2, 8]\n"federated.p_up" = [0.25, 0.25]\n'
                     '"federated.p_down" = [0.25, 0.25]\n\n'
                     '[grid]\n"data.classes_per_client" = [1, 10]\nseed = [0, 1]\n')
    example = load_example("stc_paper_protocol.py")
    monkeypatch.setattr(example, "SWEEPS", {"softmax": small})
    return example


def test_the_report_is_computed_from_the_run_folders(tmp_path, small_example, capsys):
    """The script on the small sweep: each table cell is the mean and standard deviation over seeds of the
    runs' final accuracies, the drop and verdict follow from them, and the figure is drawn."""
    example = small_example
    example.main(["--models", "softmax", "--out", str(tmp_path / "out"), "--workers", "1", "--quiet"])
    printed = capsys.readouterr().out
    finals = {}
    for folder in (tmp_path / "out" / "softmax" / "runs").iterdir():
        config = read_run(folder).config
        summary = json.loads((folder / "summary.json").read_text())
        method = "FedAvg n = 4" if config["federated"]["method"] == "fedavg" else "STC p = 1/4"
        classes = config["data"]["classes_per_client"]
        finals.setdefault((method, classes), []).append(100 * summary["final_test_accuracy"])
    assert sorted(len(values) for values in finals.values()) == [2, 2, 2, 2]
    for method in ("FedAvg n = 4", "STC p = 1/4"):
        row = next(line for line in printed.splitlines() if line.startswith(f"| {method} |"))
        cells = [f"{np.mean(finals[method, c]):.1f} ± {np.std(finals[method, c], ddof=1):.1f}" for c in (1, 10)]
        drop = np.mean(finals[method, 10]) - np.mean(finals[method, 1])
        assert row.startswith(f"| {method} | {cells[0]} | {cells[1]} | {example.points(drop)} | "), row
    drops = {method: np.mean(finals[method, 10]) - np.mean(finals[method, 1])
             for method in ("FedAvg n = 4", "STC p = 1/4")}
    holds = "holds" if drops["STC p = 1/4"] < drops["FedAvg n = 4"] else "does not hold"
    assert f"n = 4, 10 -> 1 class: FedAvg loses {example.points(drops['FedAvg n = 4'])} points, STC " \
           f"{example.points(drops['STC p = 1/4'])}: the claim {holds}" in printed
    assert example.points(-0.04) == "0.0" and example.points(-0.06) == "-0.1"
    assert (tmp_path / "out" / "stc_paper_protocol.png").stat().st_size > 10_000


def test_a_ctrl_c_waits_for_the_sweep_to_stop(tmp_path):
    """Ctrl-C while the script waits for its sweep: the sweep (which gets the Ctrl-C too and saves its
    checkpoints first) is waited for, not killed; here a command that needs 2 s after the signal to finish."""
    import os
    import signal
    import threading
    example = load_example("stc_paper_protocol.py")
    done = tmp_path / "done"
    command = [sys.executable, "-c", f"import time; time.sleep(2.5); open({str(done)!r}, 'w').write('saved')"]
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()      # this process only, mid-wait
    assert example.wait_for(command) == 0 and done.read_text() == "saved"


def test_report_only_before_the_sweeps_ran_is_one_line(tmp_path):
    """`--report-only` before any sweep: one line saying to run the sweeps, exit 2 (was a traceback)."""
    finished = subprocess.run([sys.executable, str(REPO / "examples" / "stc_paper_protocol.py"), "--report-only",
                               "--out", "nowhere"], cwd=tmp_path, env=clean_env(tmp_path, MPLBACKEND="Agg"),
                              capture_output=True, text=True, timeout=120)
    assert (finished.returncode, error_lines(finished.stderr)) == (2, [
        "stc_paper_protocol.py: error: nowhere/softmax is not a sweep folder (no manifest.json in it): run the "
        "sweeps first (this command without --report-only)"]), finished.stderr
    assert finished.stdout == "" and not (tmp_path / "nowhere").exists()


def test_report_only_of_runs_not_yet_run_is_one_line(tmp_path, small_example, capfd):
    """`--report-only` on a sweep folder whose runs are pending: one line, exit 2 (was a StopIteration
    traceback)."""
    from fedsim.sweeps.folder import write_manifest
    out = tmp_path / "out"
    (out / "softmax").mkdir(parents=True)
    write_manifest(out / "softmax", load_sweep(small_example.SWEEPS["softmax"]), {})
    assert small_example.main(["--models", "softmax", "--out", str(out), "--report-only"]) == 2
    assert error_lines(capfd.readouterr().err) == [
        f"stc_paper_protocol.py: error: {out / 'softmax'}: 8 of its 8 runs are not finished: run the sweeps first "
        f"(this command without --report-only)"]


def test_a_sweep_refused_ends_the_script_with_its_one_line(tmp_path, small_example, capfd):
    """A sweep that `fedsim sweep` refuses (--workers 0, once taken for the default) ends the script with the
    sweep's one line and exit status (was a CalledProcessError traceback, for any refusal)."""
    assert small_example.main(["--models", "softmax", "--out", str(tmp_path / "zero"), "--workers", "0"]) == 2
    assert error_lines(capfd.readouterr().err) == ["fedsim: error: --workers must be an integer >= 1, got 0"]
    assert not (tmp_path / "zero").exists()
    (tmp_path / "a-file").write_text("mine")
    assert small_example.main(["--models", "softmax", "--out", str(tmp_path / "a-file"), "--quiet"]) == 1
    told = error_lines(capfd.readouterr().err)
    assert told == [f"fedsim: error: Not a directory ({tmp_path / 'a-file' / 'softmax'})"], told


def test_report_only_names_the_runs_left_out_of_the_means(tmp_path, small_example, capfd):
    """`--report-only` on a sweep some of whose runs diverged: each cell says how many of its planned runs it
    averages, one line per run left out says why, exit 1 (was: fewer seeds averaged unsaid, exit 0)."""
    sweep = small_example.SWEEPS["softmax"]
    sweep.write_text(sweep.read_text().replace("seed = [0, 1]", 'seed = [0, 1]\n"federated.lr" = [0.05, 1e30]'))
    out = tmp_path / "out"
    assert small_example.main(["--models", "softmax", "--out", str(out), "--workers", "1", "--quiet"]) == 1
    capfd.readouterr()
    assert small_example.main(["--models", "softmax", "--out", str(out), "--report-only"]) == 1
    printed = capfd.readouterr()
    for method in ("FedAvg n = 4", "STC p = 1/4"):
        row = next(line for line in printed.out.splitlines() if line.startswith(f"| {method} |"))
        assert row.count("(2 of 4 runs)") == 2, row
    told = error_lines(printed.err)
    assert len(told) == 8 and all(line.startswith("stc_paper_protocol.py: runs/") and "lr=1e+30" in line
                                  and ": diverged: " in line and line.endswith("; left out of the table")
                                  for line in told), told
