"""Figures fit for a paper: titles and legends that say what differs, integer round ticks, log bits axes in
both families, styles that survive greyscale, and an honest reference for a lazy run's residual."""

import itertools
import math

import numpy as np
import pytest

import fedsim.plot as plot
from fedsim.plot import _style, describe, federated_figure, lazy_figures
from tests.runs.conftest import finished_run
from tests.sweeps.conftest import sweep_text

TINY = ["data.synthetic_devices=8", "federated.n_clients=8", "federated.rounds=6"]
TINY_LAZY = ["data.synthetic_devices=6", "lazy.n_workers=6", "lazy.iterations=20", "lazy.eval_every=10"]


@pytest.fixture(scope="module")
def federated_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("figures")
    return [finished_run(base, "a", "synthetic", TINY + ["federated.method=fedavg"]),
            finished_run(base, "b", "synthetic", TINY + ["federated.method=stc_updown", "federated.lr=0.1"]),
            finished_run(base, "c", "synthetic", TINY + ["federated.method=stc_updown"])]


@pytest.fixture
def captured(monkeypatch):
    """The figures that the figure functions save, by file stem."""
    figures, original = {}, plot._save

    def save(figure, out, stem):
        figures.setdefault(stem, figure)
        return original(figure, out, stem)
    monkeypatch.setattr(plot, "_save", save)
    return figures


def test_titles_hold_the_shared_settings_and_legends_what_differs(federated_runs, tmp_path):
    title, labels = describe(federated_runs)
    assert title.startswith("synthetic, partition natural, 8 clients") and "batch_size 10" in title
    assert "lr" not in title and "p_up" not in title     # lr differs; fedavg ignores p_up, the STC runs read it
    assert labels == ["fedavg, lr 0.05", "stc_updown, lr 0.1, p_down 0.1, p_up 0.05",
                      "stc_updown, lr 0.05, p_down 0.1, p_up 0.05"]
    title, _ = describe(federated_runs[1:])
    assert "p_up 0.05, p_down 0.1" in title
    # QSGD, TernGrad and PowerSGD send every entry: p_up / p_down are neither in the title nor in their labels;
    # a run that reads them (STC) carries them in its label
    qsgd = finished_run(tmp_path, "q", "synthetic", TINY + ["federated.method=qsgd_updown"])
    title, labels = describe([qsgd])
    assert "p_up" not in title and "p_down" not in title
    title, labels = describe([federated_runs[0], federated_runs[2], qsgd])
    assert "p_up" not in title and labels[2] == "qsgd_updown" and "p_up 0.05" in labels[1]
    # every table's settings that differ: [model], [system], a compressor's (not one the method does not use)
    mlp = finished_run(tmp_path, "mlp", "synthetic", TINY + ["model.name=mlp", "model.hidden=[4]"])
    assert describe([federated_runs[2], mlp])[1] == ["stc_updown, model.hidden [], model.name softmax",
                                                     "stc_updown, model.hidden [4], model.name mlp"]
    one_level = finished_run(tmp_path, "q1", "synthetic", TINY + ["federated.method=qsgd_updown", "qsgd.levels=1"])
    slow = finished_run(tmp_path, "q3g", "synthetic", TINY + ["federated.method=qsgd_updown", "system.profile=3g"])
    assert describe([one_level, slow])[1] == ["qsgd_updown, qsgd.levels 1, system.profile off",
                                              "qsgd_updown, qsgd.levels 16, system.profile 3g"]
    assert describe([federated_runs[2], finished_run(tmp_path, "stc_q1", "synthetic", TINY + ["qsgd.levels=1"])])[1] \
        == ["stc_updown (c)", "stc_updown (stc_q1)"]
    # the same settings in two folders of one name: told apart by as much of their paths as differs
    twice = finished_run(tmp_path / "B", "q", "synthetic", TINY + ["federated.method=qsgd_updown"])
    assert describe([qsgd, twice])[1] == [f"qsgd_updown ({tmp_path.name}/q)", "qsgd_updown (B/q)"]
    # `fedsim sweep plot`'s legends (of series: their axis values) by the same rule (was: qsgd.levels named on STC
    # series, and two QSGD series of p_up 0.05 and 0.1 both "method qsgd_updown, levels 4"): series left alike are
    # told apart by the values their method does not read
    from fedsim.sweeps.report import _series_labels
    names, stc = ["federated.method", "qsgd.levels", "federated.p_up"], federated_runs[2]
    assert _series_labels(names, [("stc_updown", 4, 0.1), ("stc_updown", 16, 0.1), ("qsgd_updown", 4, 0.05),
                                  ("qsgd_updown", 4, 0.1), ("qsgd_updown", 16, 0.1)], [stc, stc, qsgd, qsgd, qsgd]) == [
        "method stc_updown, p_up 0.1 (not read: levels 4)", "method stc_updown, p_up 0.1 (not read: levels 16)",
        "method qsgd_updown, levels 4 (not read: p_up 0.05)", "method qsgd_updown, levels 4 (not read: p_up 0.1)",
        "method qsgd_updown, levels 16"]


def test_federated_axes(federated_runs, tmp_path, captured):
    paths = federated_figure(federated_runs, tmp_path)
    assert {path.suffix for path in paths} == {".png", ".svg"}
    axes = captured["federated_accuracy"].axes
    rounds = axes[0]
    assert rounds.get_xscale() == "linear" and all(tick == int(tick) for tick in rounds.get_xticks())
    assert [axis.get_xscale() for axis in axes[1:]] == ["log", "log", "log"]
    figure = captured["federated_accuracy"]
    legend_box = figure.legends[0].get_window_extent()
    assert [text.get_text() for text in figure.legends[0].get_texts()] == describe(federated_runs)[1]
    assert not any(legend_box.overlaps(axis.get_window_extent()) for axis in axes)    # outside every panel
    lines = rounds.get_lines()
    assert len({(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}) == len(lines)


def test_every_series_looks_different_from_every_other_and_from_the_one_before_in_more_than_colour():
    styles = [_style(index) for index in range(256)]
    assert len({(style["color"], style["linestyle"], style["marker"]) for style in styles}) == 256
    assert all(a[key] != b[key] for a, b in itertools.pairwise(styles) for key in ("color", "linestyle", "marker"))


@pytest.mark.parametrize("x, xlabel, xscale", [("bits", "bits up + down (cumulative)", "log"),
                                                ("time", "wall time, s (cumulative 'time' of the records)", "linear")])
def test_fedsim_plot_x_bits_and_time(federated_runs, tmp_path, captured, x, xlabel, xscale):
    from fedsim.cli import main
    assert main(["plot", *(str(r.path) for r in federated_runs), "--out", str(tmp_path), "--x", x]) == 0
    (axis,) = captured[f"federated_accuracy_by_{x}"].axes
    assert (axis.get_xlabel(), axis.get_xscale()) == (xlabel, xscale)
    first = federated_runs[0].history
    expected = {"bits": first[0]["bits_up"] + first[0]["bits_down"], "time": first[0]["time"]}[x]
    assert axis.get_lines()[0].get_xdata()[0] == pytest.approx(expected)


@pytest.mark.parametrize("infinite_from", [1, 4])
def test_a_simulated_time_beyond_the_float_range_is_left_out_and_said(tmp_path, captured, infinite_from):
    """A run folder whose records hold an infinite simulated time (written before the clock refused one): the
    finite part drawn, one note, no crash."""
    import dataclasses
    run = finished_run(tmp_path, "inf", "synthetic", TINY + ['system.profile="4g"'])
    history = [{**record, "simulated_seconds": math.inf} if record["round"] >= infinite_from else record
               for record in run.history]
    notes = []
    assert plot.plot_runs([dataclasses.replace(run, history=history)], tmp_path / "plots", notes=notes, x="simulated")
    (line,) = captured["federated_accuracy_by_simulated"].axes[0].get_lines()
    assert np.isfinite(line.get_xdata()).sum() == infinite_from - 1
    assert notes == [f"{run.path} has values too large to draw (above 1.3e+154): the figures show its first "
                     f"{infinite_from - 1} rounds"]


def test_a_single_lazy_run_says_what_its_residual_is_relative_to(tmp_path, captured):
    """Without f*, the run attaining the best value has no residual curve (against itself it would plunge to 0
    as if converging; the tables show it as '-'), the others do."""
    lazy = finished_run(tmp_path, "laq", "laq-synthetic", TINY_LAZY)
    gd = finished_run(tmp_path, "gd", "laq-synthetic", TINY_LAZY + ["lazy.method=gd"])
    lazy_figures([lazy, gd], tmp_path)
    residual_axes = captured["lazy_residual"].axes
    assert residual_axes[0].get_ylabel() == "f - (smallest f of these runs)"
    assert "relative to the best value reached" in captured["lazy_residual"]._suptitle.get_text()
    best = min(r["objective"] for r in gd.history) < min(r["objective"] for r in lazy.history)
    assert [np.isfinite(line.get_ydata()).sum() for line in residual_axes[0].lines] == ([20, 0] if best else [0, 20])
    assert [axis.get_xscale() for axis in residual_axes[1:3]] == ["log", "log"]
    # theta^0 spent nothing: not drawn on the log cost axes, and their labels say so
    assert all(np.isnan(axis.lines[0].get_xdata()[0]) and not np.any(axis.lines[0].get_xdata() <= 0)
               and axis.get_xlabel().endswith("; theta^0 (0 spent) not drawn") for axis in residual_axes[1:3])
    assert "not drawn (log axis)" not in captured["lazy_residual"]._suptitle.get_text()
    # with a known f* (the LAQ example's L-BFGS one) the axis is the true residual, every run drawn
    captured.clear()
    f_star = min(r["objective"] for r in lazy.history + gd.history) - 1e-3
    notes = []
    lazy_figures([lazy, gd], tmp_path, f_star=f_star, tolerance=1e-6, notes=notes)
    residual_axes = captured["lazy_residual"].axes
    assert residual_axes[0].get_ylabel() == "f - f*"
    assert [np.isfinite(line.get_ydata()).sum() for line in residual_axes[0].lines[:2]] == [20, 20]
    assert "not drawn (log axis)" not in captured["lazy_residual"]._suptitle.get_text() and notes == []
    # an f* above the smallest f is no lower bound of f: a line in the title and the notes, and what is left out
    above = finished_run(tmp_path, "above", "laq-synthetic", TINY_LAZY + ["run.f_star=1e3"])
    captured.clear()
    plot.plot_runs([above], tmp_path, notes=notes)
    said = f"run.f_star = 1000.0 is above the smallest f reached, {min(r['objective'] for r in above.history)!r}"
    assert notes == [f"{said}: it is no lower bound of f"]
    assert captured["lazy_residual"]._suptitle.get_text().split("\n")[-2:] == [
        notes[0], "points with f - f* <= 0 not drawn (log axis): 20 of laq"]


def test_a_long_title_is_wrapped_inside_the_figure(federated_runs, tmp_path, monkeypatch, captured):
    """A title of many shared settings (the STC example's is about 130 characters) is wrapped at spaces
    until it lies within the saved figure, instead of running off both edges."""
    long_title = ("fashion-mnist, partition classes_per_client (10 classes per client), 50 clients; lr 0.04, "
                  "p_up 0.001, p_down 0.002, batch_size 100, and a few more words to be sure")
    monkeypatch.setattr(plot, "describe", lambda runs: (long_title, describe(runs)[1]))
    federated_figure(federated_runs, tmp_path)
    figure = captured["federated_accuracy"]
    title = figure._suptitle
    extent = title.get_window_extent()
    assert "\n" in title.get_text() and title.get_text().replace("\n", " ") == long_title
    assert 0 <= extent.x0 and extent.x1 <= figure.bbox.width
    lines = title.get_text().split("\n")
    assert all(any(setting in line for line in lines) for setting in ("p_down 0.002", "batch_size 100", "lr 0.04"))
    # a short title is left as it is
    captured.clear()
    monkeypatch.setattr(plot, "describe", lambda runs: ("synthetic, 8 clients", describe(runs)[1]))
    federated_figure(federated_runs, tmp_path)
    assert captured["federated_accuracy"]._suptitle.get_text() == "synthetic, 8 clients"


def test_lazy_runs_of_one_iteration_are_drawn(tmp_path, captured):
    """`examples/laq_mnist.py --iterations 1`: one record per run, nothing spent before it and the best
    run's residual 0 (NaN on the log axis); no marker on an empty curve, linear axes where a log one has
    nothing positive to show."""
    runs = [finished_run(tmp_path, method, "laq-synthetic", TINY_LAZY + ["lazy.iterations=1", f"lazy.method={method}"])
            for method in ("gd", "laq")]
    assert len(lazy_figures(runs, tmp_path)) == 4
    residual_axes = captured["lazy_residual"].axes
    assert [axis.get_xscale() for axis in residual_axes[:3]] == ["linear", "linear", "linear"]


SWEEP = sweep_text("tiny", 3, 10, '"federated.method" = ["stc_updown", "fedavg"]\n"federated.batch_size" = [10, 2, 5]')


@pytest.mark.parametrize("seeds", [[0, 1], None])
def test_sweep_figures_in_natural_order_with_a_bits_panel_and_the_true_n(tmp_path, captured, seeds):
    """`fedsim sweep plot`: series in natural order (numbers as numbers, methods as given), each unlike the
    others, the legend outside the panels, n per series, a bits panel; no "over seeds" without seeds."""
    from fedsim.cli import main
    (tmp_path / "tiny.toml").write_text(SWEEP + (f"seed = {seeds}\n" if seeds else ""))
    assert main(["sweep", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "S"), "--workers", "1", "--quiet"]) == 0
    assert main(["sweep", "plot", str(tmp_path / "S")]) == 0
    curves, final = captured["sweep_curves"], captured["sweep_final"]
    n = len(seeds) if seeds else 1
    assert [text.get_text() for text in curves.legends[0].get_texts()] == [
        f"method {method}, batch_size {size} (n={n})" for method in ("stc_updown", "fedavg") for size in (2, 5, 10)]
    rounds, bits = curves.axes
    assert "bits sent up" in bits.get_xlabel() and bits.get_xscale() == "log"
    lines = rounds.get_lines()
    assert len({(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}) == len(lines) == 6
    legend_box = curves.legends[0].get_window_extent()
    assert not any(legend_box.overlaps(axis.get_window_extent()) for axis in curves.axes)
    assert [tick.get_text() for tick in final.axes[0].get_xticklabels()] == ["2", "5", "10"]
    titles = curves._suptitle.get_text() + final._suptitle.get_text()
    assert "min-max for 2" not in titles
    assert ("n in the legend" in titles) if seeds else ("one run per" in titles and "seeds" not in titles)
    # a metric spanning decades (the LAQ bits sweep's final objective: 5 to 2,347) is drawn on a log axis
    assert final.axes[0].get_yscale() == "linear"
    from fedsim.sweeps import report
    summarize = report.summarize_over_seeds
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(report, "summarize_over_seeds", lambda rows, axes: [
        {**row, "mean": row["mean"] * 10.0 ** row["federated.batch_size"]} for row in summarize(rows, axes)])
    captured.clear()
    assert main(["sweep", "plot", str(tmp_path / "S")]) == 0
    monkeypatch.undo()
    assert captured["sweep_final"].axes[0].get_yscale() == "log"


LAZY_SWEEP = ('base = "laq-synthetic"\nname = "lazy"\n[set]\n"data.synthetic_devices" = 6\n"lazy.n_workers" = 6\n'
              '"lazy.iterations" = 20\n"lazy.eval_every" = 10\n{extra}[grid]\n"lazy.method" = ["gd", "laq"]\n{axis}')


@pytest.mark.parametrize("extra, axis, ylabel", [
    ('"run.f_star" = 5.0\n', "", "f - f* (f* = run.f_star = 5)"),
    ('"run.f_star" = 7.5\n', "", "f - f* (f* = run.f_star = 7.5)"),       # above the smallest f reached
    ("", "seed = [0, 1]\n", "f - f_best (of each objective, not certified as f*)")],
    ids=["run.f_star", "run.f_star-above", "seeds"])
def test_sweep_residuals_use_the_f_star_of_fedsim_compare(tmp_path, captured, capsys, extra, axis, ylabel):
    """`fedsim sweep plot` of lazy runs: f - f* with the runs' run.f_star when they set it, else f - f_best, the
    smallest f on each run's data (a synthetic seed is other data), as `fedsim compare` takes and names it; a run
    that is its own f_best is not drawn (compare shows it "-"; was: drawn plunging to its own last value). As
    `fedsim plot`: a run.f_star above the smallest f is said (title and a warning) and the points f - f* <= 0 left
    out counted; bits are those spent before the iterate, theta^0 off the log axis (were: through it, unsaid)."""
    from fedsim.cli import main
    from fedsim.runs import read_run
    (tmp_path / "lazy.toml").write_text(LAZY_SWEEP.format(extra=extra, axis=axis))
    assert main(["sweep", str(tmp_path / "lazy.toml"), "--out", str(tmp_path / "S"), "--workers", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sweep", "plot", str(tmp_path / "S")]) == 0
    runs = [read_run(folder) for folder in sorted((tmp_path / "S" / "runs").iterdir())]
    objective = {(run.config["lazy"]["method"], run.config.get("seed", 0)): np.array(
        [r["objective"] for r in run.history]) for run in runs}
    given = float(extra.split("= ")[1]) if extra else None
    floors = {seed: given if extra else min(min(f) for (_, s), f in objective.items() if s == seed)
              for seed in (0, 1)}
    lowest = min(map(min, objective.values()))
    assert (floors[0] < lowest or given == 7.5 < max(map(max, objective.values()))) if extra else \
        floors[0] != floors[1]    # other data
    above = [f"run.f_star = 7.5 is above the smallest f reached, {float(lowest)!r}: it is no lower bound of f"]
    counted = "; ".join(f"{np.count_nonzero(f <= given)} of method {method}" for (method, _), f in objective.items()
                        if given is not None)
    title = captured["sweep_curves"]._suptitle.get_text().split("\n")
    assert title[1:] == ([*above, f"points with f - f* <= 0 not drawn (log axis): {counted}"] if given == 7.5 else [])
    assert [line for line in capsys.readouterr().err.splitlines() if "above" in line] == [
        f"fedsim: warning: {line}" for line in above if given == 7.5]

    drawn = {key: f for key, f in objective.items() if extra or min(f) > floors[key[1]]}     # not their own f_best
    assert extra or len(drawn) == 2, drawn.keys()

    def residual(method):
        curves = [f - floors[seed] for (name, seed), f in drawn.items() if name == method]
        return np.mean([np.where(curve > 0, curve, np.nan) for curve in curves], axis=0)
    axis = captured["sweep_curves"].axes[0]
    assert axis.get_ylabel() == ylabel
    methods = [method for method in ("gd", "laq") if any(name == method for name, _ in drawn)]
    assert len(axis.get_lines()) == len(methods)
    bits = captured["sweep_curves"].axes[1]
    assert bits.get_xlabel().endswith("before the iterate; mean of the series' runs); theta^0 (0 spent) not drawn")
    for line, bits_line, method in zip(axis.get_lines(), bits.get_lines(), methods):
        np.testing.assert_allclose(line.get_ydata(), residual(method), rtol=1e-12)
        before = [np.concatenate(([np.nan], [r["bits"] for r in run.history][:-1])) for run in runs
                  if (run.config["lazy"]["method"], run.config.get("seed", 0)) in drawn
                  and run.config["lazy"]["method"] == method]
        drawn_y = np.isfinite(bits_line.get_ydata())            # (_plot leaves out the x of a point not drawn)
        np.testing.assert_array_equal(bits_line.get_xdata(), np.where(drawn_y, np.mean(before, axis=0), np.nan))
