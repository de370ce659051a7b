"""Sweeps on the local backend: the sweep file, one-line errors, bitwise determinism against single runs
and across worker counts, skipping and resuming on a rerun (after a kill -9 of the whole sweep), failed
runs that do not stop the others, the report and the figures."""

import csv
import json
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from fedsim.sweeps import load_sweep
from tests.conftest import REPO, error_lines, fedsim
from tests.runs.conftest import one_line_error
from tests.sweeps.conftest import histories, history_alone, manifest_of, signal_when, sweep_text

METHODS_AND_SEEDS = '"federated.method" = ["fedavg", "stc_updown"]\nseed = [0, 1]'


def sweep_file(tmp_path, rounds=12, grid=METHODS_AND_SEEDS, extra="") -> Path:
    path = tmp_path / "small.toml"
    path.write_text(sweep_text("small", rounds, 5, grid) + extra)
    return path


def test_a_sweep_file_expands_to_named_runs(tmp_path):
    zipped = '[zip]\n"federated.p_up" = [0.05, 0.1]\n"federated.p_down" = [0.1, 0.2]'
    sweep = load_sweep(sweep_file(tmp_path, extra=zipped))
    assert len(sweep.runs) == 2 * 2 * 2
    assert [name for name, _ in sweep.axes] == ["federated.method", "seed", "federated.p_up", "federated.p_down"]
    labels = [run.label for run in sweep.runs]
    assert labels[0] == "method=fedavg,seed=0,p_up=0.05,p_down=0.1"
    assert all(run.config.federated.rounds == 12 and run.config.federated.n_clients == 8 for run in sweep.runs)
    assert {(run.config.federated.p_up, run.config.federated.p_down) for run in sweep.runs} == {(0.05, 0.1), (0.1, 0.2)}
    # the folder name is stable: the same file gives the same names
    assert [run.folder_name for run in load_sweep(sweep.source).runs] == [run.folder_name for run in sweep.runs]


def test_a_sweep_of_an_earlier_fedsim_keeps_its_identity_and_its_run_folders(tmp_path):
    """A relative data.data_dir and a -0.0 resolve as fedsim bd3cc2d resolved them (the identity and the folder
    names it recorded), so that its sweep folder continues (was: 'holds another sweep')."""
    (tmp_path / "base.toml").write_text('[data]\ndataset = "synthetic"\npartition = "natural"\nsynthetic_devices = 8\n'
                                        '[federated]\nn_clients = 8\nrounds = 1\nbatch_size = 10\n')
    (tmp_path / "s.toml").write_text('config = "base.toml"\nname = "earlier"\n[set]\n"data.data_dir" = "dd"\n'
                                     '"federated.l2" = -0.0\n[grid]\n"federated.lr" = [0.05, 0.1]\n')
    sweep = load_sweep(tmp_path / "s.toml")
    assert sweep.identity == "0d78cb70fecdbd637e00ff435a75c8b68c74c06dc075fefb5e8ccf5f4e08345d"
    assert [run.folder_name for run in sweep.runs] == ["lr=0.05-3f5b157cb1", "lr=0.1-a95750ba93"]


def test_settings_the_runs_do_not_use_are_named_as_fedsim_run_names_them_once_each(in_process, tmp_path):
    """Once for all the runs, the settings none of them reads (was: never named by a sweep); a setting that some
    runs read (the preset's p_up, p_down: STC's, not FedAvg's) is what a sweep over methods needs, not named."""
    (tmp_path / "s.toml").write_text('base = "synthetic"\n[set]\n"data.dirichlet_alpha" = 0.3\n"federated.p_up" = 0.5\n'
                                     '[grid]\n"federated.method" = ["fedavg", "stc_updown"]\nseed = [0, 1]\n')
    status, out, err = in_process("sweep", "s.toml", "--dry-run")
    said = "fedsim: warning: settings not used by the sweep's runs: "
    assert status == 0 and err.splitlines() == [
        said + 'data.dirichlet_alpha (read only with data.partition = "dirichlet", not "natural")'], err
    (tmp_path / "s.toml").write_text(tmp_path.joinpath("s.toml").read_text().replace('"stc_updown"', '"signsgd"'))
    status, out, err = in_process("sweep", "s.toml", "--dry-run")
    assert status == 0 and err.splitlines()[1:] == [
        said + f"federated.{name} (method 'fedavg' does not read it; method 'signsgd' does not read it)"
        for name in ("p_up", "p_down")], err


def test_a_run_folders_label_shows_its_values_as_they_are_and_a_long_one_is_cut_between_settings():
    """A run folder's label over 80 characters keeps its first whole settings and ends ",..." (the STC paper
    sweep's were cut in a value: `p_up=0.0` for 0.04); shorter labels show their values as they are: lists in
    brackets, an exponent's sign (earlier fedsims wrote '-' for both: `hidden=-8,-4-`, 1e+20 as `1e-20`); a
    label whose first setting alone does not fit is "run"."""
    from fedsim.sweeps.spec import _cleaned, folder_label
    for planned in load_sweep(REPO / "examples" / "sweeps" / "stc_paper_softmax.toml").runs:
        label, digest = planned.folder_name.rsplit("-", 1)
        assert digest == planned.config_sha256[:10] and len(label) <= 80 and label.endswith(",..."), label
        shown = label.removesuffix(",...").split(",")
        assert 1 <= len(shown) < len(planned.values) and shown == planned.label.split(",")[:len(shown)], label
    values = (("model.hidden", [8, 4]), ("federated.method", "stc_updown"), ("seed", 0), ("federated.lr", 1e20))
    assert folder_label(values) == "hidden=[8,4],method=stc_updown,seed=0,lr=1e+20"
    assert folder_label(values, _cleaned) == "hidden=-8,-4-,method=stc_updown,seed=0,lr=1e-20"     # the earlier
    assert folder_label((("federated.method", "m" * 73),)) == "method=" + "m" * 73
    assert folder_label((("federated.method", "m" * 74),)) == "run"


@pytest.mark.parametrize("grid, earlier", [
    ('"federated.method" = ["fedavg", "stc_updown"]\n"federated.local_iterations" = [1]\n'
     '"federated.participation_rate" = [1.0]\n"federated.eval_every" = [4]\n"federated.batch_size" = [5]\n', 0),
    ('"model.name" = ["mlp"]\n"model.hidden" = [[4], [4, 2]]\n', 1)])
def test_a_run_folder_named_by_an_earlier_fedsim_is_found_and_renamed(tmp_path, grid, earlier):
    """A sweep folder whose run folders carry labels cut in a value (fedsim before the cut went between
    settings), or brackets as '-' (before names kept them), is continued: each such folder takes its new name,
    and its run is not run again."""
    path = sweep_file(tmp_path, rounds=4, grid=grid)
    out = tmp_path / "out"
    assert fedsim(tmp_path, "sweep", path, "--out", out, "--quiet").returncode == 0
    runs = load_sweep(path).runs
    assert all(run.earlier_folder_names[earlier] != run.folder_name for run in runs)
    before = {run.label: (out / "runs" / run.folder_name / "history.jsonl").read_bytes() for run in runs}
    manifest = (out / "manifest.json").read_text()
    for run in runs:                              # as the earlier fedsim left them
        (out / "runs" / run.folder_name).rename(out / "runs" / run.earlier_folder_names[earlier])
        manifest = manifest.replace(run.folder_name, run.earlier_folder_names[earlier])
    (out / "manifest.json").write_text(manifest)
    again = fedsim(tmp_path, "sweep", path, "--out", out)
    assert again.returncode == 0 and "2 completed" in again.stdout and again.stderr.count(" is now runs/") == 2
    # not run again: the histories are the same bytes, wall times included
    assert {run.label: (out / "runs" / run.folder_name / "history.jsonl").read_bytes() for run in runs} == before


@pytest.mark.parametrize("grid, fragment", [
    ('"federated.lrr" = [0.1]', "unknown setting 'federated.lrr'; did you mean 'federated.lr'?"),
    ('"federated.lr" = [0.1, -1.0]', "federated.lr = -1.0"),
    ('"federated.method" = "fedavg"', "must be a non-empty array"),
    ('"federated.method" = []', "must be a non-empty array"),
    ('seed = [0]\n[zip]\n"federated.p_up" = [0.05, 0.1]\n"federated.p_down" = [0.1]', "equal lengths"),
    # values written apart that resolve to one config (its fingerprint), in [grid] or [zip]: run once, not twice
    ('"federated.lr" = [1, 1.0]', "small.toml: two runs resolve to the same config (lr=1 and lr=1.0)"),
    ('seed = [0]\n[zip]\n"federated.lr" = [1, 1.0]\n"federated.p_up" = [0.1, 0.1]',
     "two runs resolve to the same config (seed=0,lr=1,p_up=0.1 and seed=0,lr=1.0,p_up=0.1)"),
    # a table's name is no setting: what is allowed, not the name itself as a suggestion
    ('federated = [1]', "small.toml [grid]: 'federated' needs a setting of the table, like 'federated.method'"),
])
def test_invalid_axes_fail_before_anything_runs_in_one_line(tmp_path, grid, fragment):
    one_line_error(fedsim(tmp_path, "sweep", sweep_file(tmp_path, grid=grid), "--out", tmp_path / "out"), 2, fragment)
    assert not (tmp_path / "out").exists()


def test_a_bad_base_of_a_sweep_without_axes_is_one_line_naming_no_empty_run(tmp_path):
    (tmp_path / "x.toml").write_text('base = "nope"\n')
    line = one_line_error(fedsim(tmp_path, "sweep", "x.toml"), 2, "unknown preset 'nope'")
    assert line.startswith("fedsim: error: x.toml: unknown preset 'nope'; presets: "), line


def test_pool_runs_equal_single_runs_at_any_worker_count_and_reruns_skip(tmp_path):
    path = sweep_file(tmp_path)
    two = fedsim(tmp_path, "sweep", path, "--workers", "2", "--out", tmp_path / "two", "--quiet")
    assert two.returncode == 0, two.stderr
    one = fedsim(tmp_path, "sweep", path.name, "--workers", "1", "--out", "one", "--quiet")
    assert one.returncode == 0, one.stderr
    assert histories(tmp_path / "two") == histories(tmp_path / "one")
    # each run's meta.json records the command that continues the sweep, from any folder (was: fedsim sweep
    # small.toml: run again, a new sweep into runs/small, and only from tmp_path)
    (command,) = {tuple(json.loads((run / "meta.json").read_text())["command"])
                  for run in (tmp_path / "one").glob("runs/*")}
    assert command == (sys.executable, "-m", "fedsim", "sweep", str(tmp_path.resolve() / path.name), "--out",
                       str(tmp_path.resolve() / "one"), "--workers", "1")
    (tmp_path / "elsewhere").mkdir()
    continued = fedsim(tmp_path / "elsewhere", *command[3:], "--quiet")
    assert continued.returncode == 0 and "4 completed" in continued.stdout, continued.stderr
    assert not any((tmp_path / "elsewhere").iterdir())
    # a run of the sweep equals the same settings run alone with `fedsim run`
    planned = load_sweep(path).runs[3]
    assert history_alone(tmp_path, planned) == histories(tmp_path / "two")[planned.folder_name]
    manifest = manifest_of(tmp_path / "two")
    assert [run["status"] for run in manifest["runs"]] == ["completed"] * 4
    assert manifest["axes"] == {"federated.method": ["fedavg", "stc_updown"], "seed": [0, 1]}
    # the same command again: nothing is run again (and more workers than the machine has are capped, in a line)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "two" / "runs").rglob("history.jsonl")}
    again = fedsim(tmp_path, "sweep", path, "--workers", "500", "--out", tmp_path / "two", "--quiet")
    assert again.returncode == 0 and "4 completed" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    told = [line for line in error_lines(again.stderr) if "capped" in line]
    assert len(told) == 1 and told[0].startswith("fedsim: sweep: --workers 500 capped to "), again.stderr


def test_kill_9_of_the_whole_sweep_then_the_same_command_finishes_it_identically(tmp_path, start_sweep):
    path = sweep_file(tmp_path, rounds=300)
    reference = fedsim(tmp_path, "sweep", path, "--workers", "2", "--out", tmp_path / "reference", "--quiet",
                       timeout=300)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    process = start_sweep(path, out, "--workers", 2)
    # once some run has a checkpoint and some run is unfinished
    signal_when(process, lambda: list(out.glob("runs/*/checkpoint.npz"))
                and len(list(out.glob("runs/*/summary.json"))) < 4, signal.SIGKILL)
    assert len(list(out.glob("runs/*/summary.json"))) < 4
    time.sleep(0.5)                                # the pool's workers die with their parent
    finished = fedsim(tmp_path, "sweep", path, "--workers", "2", "--out", out, "--quiet", timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert histories(out) == histories(tmp_path / "reference")
    report = fedsim(tmp_path, "sweep", "report", out)
    reference_report = fedsim(tmp_path, "sweep", "report", tmp_path / "reference")
    assert report.returncode == 0 and report.stdout.splitlines()[1:] == reference_report.stdout.splitlines()[1:]


def test_a_diverged_run_is_recorded_and_the_others_finish(tmp_path):
    path = sweep_file(tmp_path, grid='"federated.method" = ["fedavg"]\n"federated.lr" = [0.05, 1e35]')
    result = fedsim(tmp_path, "sweep", path, "--workers", "2", "--out", tmp_path / "out")
    assert result.returncode == 1, result.stderr
    manifest = manifest_of(tmp_path / "out")
    assert sorted(run["status"] for run in manifest["runs"]) == ["completed", "diverged"]
    assert "1 completed, 1 diverged" in result.stdout and "NaN or inf" in result.stderr
    # progress on a pipe: the last line always (the diverged run counts as finished: it is not run again)
    assert "fedsim: sweep: 2/2 runs done, 0 not finished (" in result.stderr, result.stderr


def test_report_of_runs_at_a_bit_budget_gives_each_knob_and_upload(tmp_path):
    """Runs that set federated.bits_per_round: the report adds, per method, the knob each solved and the
    mean upload per participant per round beside the final accuracy, from the runs' summaries (the README's
    equal-bits table; the report used to print only the generic table)."""
    import json
    import statistics
    text = sweep_text("budget", 4, 5, '"federated.method" = ["topk_up", "qsgd_up"]\nseed = [0, 1]')
    (tmp_path / "budget.toml").write_text(text.replace("[grid]", '"federated.bits_per_round" = 1000.0\n\n[grid]'))
    out = tmp_path / "out"
    assert fedsim(tmp_path, "sweep", "budget.toml", "--out", out, "--quiet").returncode == 0
    report = fedsim(tmp_path, "sweep", "report", out)
    assert report.returncode == 0, report.stderr
    summaries: dict[str, list] = {}
    for run in manifest_of(out)["runs"]:
        summaries.setdefault(run["values"]["federated.method"], []).append(
            json.loads((out / run["folder"] / "summary.json").read_text()))

    def spread(values):
        return f"{statistics.mean(values):.4g} +- {statistics.stdev(values):.4g}"
    title = "federated.bits_per_round: each run's knob"
    assert title in report.stdout, report.stdout
    table = report.stdout.split(title)[1]
    lines = [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()[1:]]
    assert lines[0] == ["method", "knob", "bits up per participant per round", "final test accuracy", "n"], lines
    assert len(lines) == 2 + len(summaries) and set("".join(lines[1])) == {"-"}, lines
    for cells, (method, runs) in zip(lines[2:], summaries.items()):
        knobs = {(run["bits_per_round_knob"], run["bits_per_round_knob_value"]) for run in runs}
        assert len(knobs) == 1 and next(iter(knobs))[0] == ("p" if method == "topk_up" else "levels"), knobs
        name, value = next(iter(knobs))
        assert cells == [method, f"{name} = {value:.4g}", spread([run["bits_up_per_participant"] for run in runs]),
                         spread([run["final_test_accuracy"] for run in runs]), "2"], cells


def test_report_and_plot(tmp_path):
    path = sweep_file(tmp_path, grid='"federated.method" = ["fedavg", "stc_updown"]\n'
                                     '"data.synthetic_alpha" = [0.5, 1.0]\nseed = [0, 1]')
    assert fedsim(tmp_path, "sweep", path, "--workers", "2", "--out", tmp_path / "out", "--quiet").returncode == 0
    report = fedsim(tmp_path, "sweep", "report", tmp_path / "out")
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    assert {row["metric"] for row in rows} >= {"final_test_accuracy", "bits"}
    assert set(rows[0]) == {"run", "status", "federated.method", "data.synthetic_alpha", "seed", "metric", "value"}
    assert len([row for row in rows if row["metric"] == "final_test_accuracy"]) == 8
    summary_lines = [line for line in report.stdout.splitlines() if "final_test_accuracy" in line]
    assert len(summary_lines) == 4 and all(line.rstrip().endswith(" 2") and "+-" in line for line in summary_lines)
    assert "bits_per_round" not in report.stdout         # no knob solved: no budget table
    assert "note" not in report.stderr                  # every run on this machine's BLAS and SIMD
    # runs started or resumed on another machine's BLAS (a Dask worker elsewhere): named in a note, still
    # reported; a run whose meta.json does not say (an older fedsim, a damaged file) is not compared
    from fedsim.data.cache import numpy_simd
    from fedsim.runs.provenance import numpy_blas
    here = f"{numpy_blas()}, NumPy SIMD {numpy_simd()}"
    folders = sorted((tmp_path / "out" / "runs").iterdir())
    moved, resumed, older, damaged = (folder / "meta.json" for folder in folders[:4])
    edits = {moved: lambda meta: meta["threads"].update(blas="openblas 0.3.31.188.0 Zen"),
             resumed: lambda meta: meta["sessions"].append({"blas": "openblas 0.3.31.188.0 Zen", "simd": "X86_V3"}),
             older: lambda meta: meta["threads"].pop("simd"), damaged: lambda meta: meta.update(threads="abc")}
    for path, edit in edits.items():
        meta = json.loads(path.read_text())
        edit(meta)
        path.write_text(json.dumps(meta))
    noted = fedsim(tmp_path, "sweep", "report", tmp_path / "out")
    assert noted.returncode == 0 and noted.stdout == report.stdout, noted.stderr
    assert noted.stderr.splitlines() == [
        f"fedsim: sweep report: note: the runs ran on 3 pairs of BLAS and NumPy SIMD loops, which round last bits "
        f"their own way ({here}: 4 runs; openblas 0.3.31.188.0 Zen, NumPy SIMD {numpy_simd()}: "
        f"runs/{moved.parent.name}; {here} then openblas 0.3.31.188.0 Zen, NumPy SIMD X86_V3: runs/"
        f"{resumed.parent.name}); each run reproduces bit for bit on its own pair only"]
    plot = fedsim(tmp_path, "sweep", "plot", tmp_path / "out")
    assert plot.returncode == 0, plot.stderr
    for name in ("sweep_curves.png", "sweep_final.png"):
        assert (tmp_path / "out" / "plots" / name).stat().st_size > 10_000


def test_plot_and_report_of_a_list_axis_leave_out_an_interrupted_run_alike(tmp_path):
    """An axis of lists (model.hidden) is plotted (was: TypeError, unhashable list); a run that did not finish is
    named and left out of the figures as of the report (was: drawn as finished, cutting its series short)."""
    path = sweep_file(tmp_path, rounds=3, grid='"model.hidden" = [[4], [8]]\nseed = [0, 1]')
    path.write_text(path.read_text().replace("[set]", '[set]\n"model.name" = "mlp"'))
    out = tmp_path / "out"
    assert fedsim(tmp_path, "sweep", path, "--out", out, "--quiet").returncode == 0
    manifest = manifest_of(out)
    stopped = manifest["runs"][3]                       # as a sweep stopped after its round 2 leaves it
    stopped.update(status="interrupted", completed=2)
    (out / stopped["folder"] / "summary.json").unlink()
    (out / "manifest.json").write_text(json.dumps(manifest))
    said = f"{stopped['folder']} (hidden=[8],seed=1): interrupted after 2 rounds"
    plotted = fedsim(tmp_path, "sweep", "plot", out)
    assert plotted.returncode == 0 and error_lines(plotted.stderr) == [f"fedsim: warning: {said}; not drawn"], \
        plotted.stderr
    assert sorted(path.name for path in (out / "plots").glob("*.png")) == ["sweep_curves.png", "sweep_final.png"]
    reported = fedsim(tmp_path, "sweep", "report", out)
    assert reported.returncode == 1 and error_lines(reported.stderr) == [
        f"fedsim: sweep report: {said}; left out of the report"], reported.stderr


def test_the_platforms_note_names_each_pair_and_compares_only_what_is_recorded():
    """sweep report's note (fedsim.sweeps.report.platforms_note) on hand-made meta.json contents: runs started
    or resumed on other pairs named, runs of an older fedsim (no simd, a list of BLAS) or damaged left out."""
    from types import SimpleNamespace

    from fedsim.sweeps.report import platforms_note

    def run(folder, threads, *sessions):
        return {"folder": folder, "result": SimpleNamespace(meta={"threads": threads, "sessions": list(sessions)})}

    a, b = {"blas": "openblas Haswell", "simd": "X86_V3"}, {"blas": "openblas Zen", "simd": "X86_V3"}
    same = [run("runs/1", a), run("runs/2", a, {"started": "then"}), run("runs/3", {"blas": ["x"], "simd": "X86_V3"}),
            run("runs/4", {"blas": "openblas Zen"}), run("runs/5", "abc"), run("runs/6", None),
            {"folder": "runs/7", "result": None}]
    assert platforms_note(same) is None
    assert platforms_note(same + [run("runs/8", b), run("runs/9", a, {}, b)]) == (
        "the runs ran on 2 pairs of BLAS and NumPy SIMD loops, which round last bits their own way (openblas Haswell, "
        "NumPy SIMD X86_V3: 2 runs; openblas Zen, NumPy SIMD X86_V3: runs/8; openblas Haswell, NumPy SIMD X86_V3 then "
        "openblas Zen, NumPy SIMD X86_V3: runs/9); each run reproduces bit for bit on its own pair only")
    assert platforms_note([run("runs/1", a), run("runs/2", b)]).count(": 1 run;") == 1
