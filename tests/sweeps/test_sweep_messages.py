"""A sweep's faults told in one line, never a traceback (issue 28, item 11): a sweep with diverged runs
plotted and reported, a manifest without its axes or a run's values, a sweep file that is not UTF-8, a
scheduler address of no known scheme, and nan or inf axis values. Every command is a real process."""

import json
import shutil

import pytest

from tests.conftest import error_lines, fedsim
from tests.runs.conftest import one_line_error

DIVERGING_SWEEP = """base = "laq-synthetic"
name = "diverging"
[set]
"data.synthetic_devices" = 6
"lazy.n_workers" = 6
"lazy.iterations" = 60
[grid]
"lazy.step_size" = [1e6, 0.02]
seed = [0, 1]
"""


@pytest.fixture(scope="module")
def diverged_sweep(tmp_path_factory):
    """A sweep folder of 4 lazy runs, the two with step_size 1e6 diverged (at about iteration 30)."""
    base = tmp_path_factory.mktemp("sweep")
    (base / "diverging.toml").write_text(DIVERGING_SWEEP)
    result = fedsim(base, "sweep", "diverging.toml", "--out", base / "S", "--workers", "1", "--quiet")
    assert result.returncode == 1 and "2 completed, 2 diverged" in result.stdout, result.stderr
    return base / "S"


def test_a_sweep_with_diverged_runs_is_plotted_and_reported(diverged_sweep, tmp_path):
    """The diverged runs are named and left out of the summary and the figures, alike (were: averaged into the
    summary as final numbers, exit 0; drawn, cutting their series short). Each completed run is alone on its
    data (its seed's), so it is its own f_best: no residual curve, said, and the final figure still drawn."""
    plotted = fedsim(tmp_path, "sweep", "plot", diverged_sweep, "--out", tmp_path / "plots")
    assert plotted.returncode == 0, plotted.stderr
    lines, own_best = error_lines(plotted.stderr)[:2], error_lines(plotted.stderr)[2:]
    assert len(lines) == 2 and all(line.startswith("fedsim: warning: runs/step_size=1000000.0,seed=") and
                                   ": diverged: " in line and line.endswith("; not drawn") for line in lines), lines
    assert len(own_best) == 2 and all(line.startswith("fedsim: warning: runs/step_size=0.02,seed=") and
                                      ": it attains f_best, " in line for line in own_best), own_best
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == ["sweep_final.png", "sweep_final.svg"]
    reported = fedsim(tmp_path, "sweep", "report", diverged_sweep)
    told = error_lines(reported.stderr)
    assert reported.returncode == 1 and [line.split(": diverged: ")[0] for line in told] == [
        line.split(": diverged: ")[0].replace("warning", "sweep report") for line in lines], reported.stderr
    assert all(line.endswith("; left out of the report") for line in told), told
    summary = reported.stdout.splitlines()[3:]          # the tidy table's line, the headers, their rule
    assert len(summary) > 2 and {line.split()[0] for line in summary} == {"0.02"}, reported.stdout


def test_a_sweep_with_nothing_drawable_is_one_line(diverged_sweep, tmp_path):
    copy = tmp_path / "S"
    shutil.copytree(diverged_sweep, copy)
    for history in copy.glob("runs/*/history.jsonl"):
        records = [json.loads(line) for line in history.read_text().splitlines()]
        history.write_text("".join(json.dumps({**record, "objective": 1e300}) + "\n" for record in records))
    one_line_error(fedsim(tmp_path, "sweep", "plot", copy), 2, f"none of the runs of {copy} has any records to plot")


@pytest.mark.parametrize("command", ["report", "plot"])
@pytest.mark.parametrize("damage, missing", [(lambda m: m.pop("axes"), "has no dict 'axes'"),
                                             (lambda m: m["runs"][1].pop("values"), "run 2 has no dict 'values'")])
def test_a_manifest_without_its_axes_or_a_runs_values_is_one_line(diverged_sweep, tmp_path, command, damage,
                                                                   missing):
    copy = tmp_path / "S"
    shutil.copytree(diverged_sweep, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    damage(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(fedsim(tmp_path, "sweep", command, copy), 2, f"{copy / 'manifest.json'}", missing)


def test_a_sweep_file_that_is_not_utf8_is_refused_like_a_config_file(tmp_path):
    (tmp_path / "latin.toml").write_bytes('base = "synthetic"\nname = "caf\xe9"\n'.encode("latin-1"))
    sweep = one_line_error(fedsim(tmp_path, "sweep", "latin.toml"), 2, "cannot read sweep file latin.toml: 'utf-8' "
                                                                       "codec can't decode byte 0xe9")
    config = one_line_error(fedsim(tmp_path, "run", "latin.toml"), 2, "cannot read config file latin.toml: ")
    assert config.split(": ", 3)[-1] == sweep.split(": ", 3)[-1]


@pytest.mark.parametrize("table", ["grid", "zip"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_nan_or_inf_axis_value_is_refused_when_the_sweep_file_is_read(tmp_path, table, value):
    """The value is checked as the config field declares (fedsim.constraints), for every planned run, up
    front: also where the partition does not use it (classes_per_client here)."""
    zipped = '"data.balancedness" = [1.0, 0.9, 0.8]\n' if table == "zip" else ""
    (tmp_path / "axes.toml").write_text(f'base = "stc-mnist"\n[{table}]\n"data.dirichlet_alpha" = [1.0, 2.0, {value}]\n'
                                        f'{zipped}')
    one_line_error(fedsim(tmp_path, "sweep", "axes.toml", "--dry-run"), 2, "data.dirichlet_alpha = " + value,
                   f"data.dirichlet_alpha must be a finite number > 0, got {value}")
