"""An honest f* (issue #23 item 4): a lazy run is never said to reach a residual measured against its own
best value; a best value of the runs is called f* only where the gradient norm certifies it."""

import re

import numpy as np

from fedsim.algorithms.lazy.report import REPORT, best_value_certified
from tests.runs.conftest import finished_run

TINY_LAZY = ["data.synthetic_devices=6", "lazy.n_workers=6", "lazy.iterations=30", "lazy.eval_every=10"]


def lazy_run(tmp_path, method, *extra):
    return finished_run(tmp_path, method, "laq-synthetic", TINY_LAZY + [f"lazy.method={method}", *extra])


def compare_text(runs, residual=1e-6):
    title, headers, rows = REPORT.compare(runs, {"residual": residual})
    return title, dict(zip(headers, zip(*rows)))


def test_one_lazy_run_is_not_compared_with_itself(tmp_path):
    run = lazy_run(tmp_path, "laq")
    title, columns = compare_text([run])
    assert "f_best" in title and "not certified" in title and "-: this run attains f_best" in title
    assert columns["final f - f_best"] == ("-",) and columns["its to target"] == ("-",)
    assert "0.000e+00" not in str(columns)


def test_the_best_of_several_runs_is_dashed_and_the_others_are_relative_to_it(tmp_path):
    runs = [lazy_run(tmp_path, "gd"), lazy_run(tmp_path, "lag-wk")]
    best = min(range(2), key=lambda i: min(r["objective"] for r in runs[i].history))
    _, columns = compare_text(runs)
    assert columns["final f - f_best"][best] == "-" and columns["final f - f_best"][1 - best] != "-"


def test_a_certified_or_configured_f_star_is_f_star(tmp_path):
    run = lazy_run(tmp_path, "gd", "lazy.l2=0.01")                 # f is (M l2)-strongly convex
    assert best_value_certified([run], 1e4) and not best_value_certified([run], 1e-6)
    title, columns = compare_text([run], residual=1e4)               # ||grad f||^2 / (2 M l2) below 1000
    assert "f - f* <= 10000" in title and columns["its to target"] != ("-",)
    network = lazy_run(tmp_path / "mlp", "gd", "lazy.l2=0.01", "model.name=mlp", "model.hidden=[4]")
    assert not best_value_certified([network], 1e4), "a non-convex model's best value is no f*"
    known = lazy_run(tmp_path / "known", "gd", f"run.f_star={min(r['objective'] for r in run.history) - 1e-3}")
    title, columns = compare_text([known])
    assert "f*" in title and re.fullmatch(r"1\.0+e-03", columns["final f - f*"][0]) and "note" not in title
    # an f* above the smallest f reached is no lower bound of f: said in one line naming run.f_star
    lowest = min(r["objective"] for r in run.history)
    for f_star in (lowest + 1e-3, float(np.nextafter(lowest, np.inf))):   # the two numbers told apart, exactly
        above = lazy_run(tmp_path / f"above{f_star!r}", "gd", "lazy.l2=0.01", f"run.f_star={f_star!r}")
        title, _ = compare_text([above])
        assert title.split("\n")[1] == (f"note: run.f_star = {f_star!r} is above the smallest f these runs reached, "
                                        f"{lowest!r}: it is no lower bound of f, and a run below it counts as "
                                        f"reaching the target"), title


def test_runs_of_different_objectives_get_an_f_star_each(tmp_path, monkeypatch):
    """f = sum over the M workers of their mean loss + (l2 / 2)||theta||^2: runs of other l2, M, model or (with
    a split drawn from it) seed minimize other functions, so `fedsim compare` draws a table, and `fedsim plot` a
    residual, for each; runs whose run.f_star differ are told so, and none of them is used."""
    from fedsim.plot import lazy_figures
    from fedsim.runs.compare import compare_tables
    runs = [lazy_run(tmp_path / "a", "gd", "lazy.l2=0.01"), lazy_run(tmp_path / "b", "gd", "lazy.l2=0.02"),
            lazy_run(tmp_path / "c", "gd", "lazy.l2=0.01", "data.partition=iid", "lazy.n_workers=3")]
    tables = compare_tables(runs, target_accuracy=0.5, target_residual=1e-6).split("\n\n")
    # one row each, named by its folder's parent too (the three runs are all called gd)
    assert len(tables) == 3 and [table.count("/gd ") for table in tables] == [1, 1, 1], tables
    assert [f"\n{name}/gd " in table for name, table in zip("abc", tables)] == [True] * 3, tables
    assert "on synthetic, lazy.l2 0.02" in tables[1] and "lazy.n_workers 3" in tables[2], tables
    import fedsim.plot
    drawn = []
    monkeypatch.setattr(fedsim.plot, "_plot", lambda axis, x, y, **style: drawn.append(np.asarray(y)))
    (tmp_path / "plots").mkdir()
    lazy_figures(runs, tmp_path / "plots")
    residuals = drawn[0::6]         # per run: its residual and gradient norm against 3 x axes, iterations first
    # each run is the best of the runs minimizing its objective: its residual reaches 0 (not drawn: nan)
    assert [bool(np.isnan(residual).any()) for residual in residuals] == [True] * 3, residuals
    # the seed draws a dirichlet split, and f sums each worker's mean loss: two seeds, two objectives
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 4))
    y = np.argmax(x @ rng.normal(size=(4, 3)), axis=1)
    np.savez(tmp_path / "tiny.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    seeds = [lazy_run(tmp_path / f"seed{seed}", "gd", f"seed={seed}", f"data.dataset=npz:{tmp_path}/tiny.npz",
                      "data.partition=dirichlet", "data.dirichlet_alpha=0.3", "lazy.n_workers=4") for seed in (0, 1)]
    tables = compare_tables(seeds, target_accuracy=0.5, target_residual=1e-6).split("\n\n")
    assert len(tables) == 2 and tables[1].split("\n")[0].endswith("tiny.npz, seed 1"), tables
    drawn.clear()
    lazy_figures(seeds, tmp_path / "plots")
    assert [bool(np.isnan(residual).any()) for residual in drawn[0::6]] == [True] * 2, drawn[0::6]
    given = [lazy_run(tmp_path / f"f{value}", "gd", f"run.f_star={value}") for value in (25.0, 24.0)]
    title, _ = compare_text(given)
    assert "f_best" in title and "note: the runs' run.f_star differ (24, 25): none is used" in title, title
    labels = []
    monkeypatch.setattr(fedsim.plot, "_finish", lambda axis, xlabel, ylabel, **options: labels.append(ylabel))
    lazy_figures(given, tmp_path / "plots")                  # nor is either called f* in the figure
    assert "f - (smallest f of these runs)" in labels and "f - f*" not in labels, labels
