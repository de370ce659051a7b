"""Figures of finished (or unfinished) runs, overlaid: ``fedsim plot RUN_DIR ...``.

Federated runs: test accuracy against rounds and against cumulative bits sent up, down and in total.
Lazy runs: residual ``f(theta^k) - f*`` and ``||grad f(theta^k)||^2`` against iterations, communications
(uploads) and bits spent to reach ``theta^k`` (log scale, as in the LAQ paper, arXiv 1909.07588), and an
upload-event raster per run (a mark where worker m uploaded at iteration k).

``f*`` is each run's ``run.f_star`` if set, else the smallest objective among the lazy runs plotted
together (the reference's estimate; the best run then touches residual 0, which a log axis cannot show).

Every figure is written as PNG and SVG. Only :class:`matplotlib.figure.Figure` is used (no pyplot), so
plotting never touches a GUI backend or global figure state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsim.algorithms.family import group_by_family
from fedsim.algorithms.lazy import f_star_of, records_spent_before
from fedsim.runs import RunResult

FORMATS = ("png", "svg")


def _figure(rows: int, columns: int, width: float = 4.6, height: float = 3.4):
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, axes


def _save(figure, out: Path, stem: str) -> list[Path]:
    import matplotlib
    # Lay the figure out once (constrained layout), then keep those positions for every format.
    figure.draw_without_rendering()
    figure.set_layout_engine("none")
    paths = []
    # A fixed hash salt and no date make the SVG the same for the same data.
    with matplotlib.rc_context({"svg.hashsalt": "fedsim"}):
        for kind in FORMATS:
            path = out / f"{stem}.{kind}"
            metadata = {"Date": None} if kind == "svg" else {}
            figure.savefig(path, dpi=120, metadata=metadata)
            paths.append(path)
    return paths


def _label(run: RunResult) -> str:
    return f"{run.label} ({run.method})"


def _finish(axis, xlabel: str, ylabel: str, xscale: str = "linear", yscale: str = "linear") -> None:
    axis.set(xlabel=xlabel, ylabel=ylabel, xscale=xscale, yscale=yscale)
    axis.grid(alpha=0.3)
    if xscale == "linear":   # large counts (bits) as "x 1e5" beside the axis, not as long overlapping labels
        axis.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))


def federated_figure(runs: list[RunResult], out: Path) -> list[Path]:
    """Test accuracy against rounds and cumulative bits (up, down, total); returns the files written."""
    figure, axes = _figure(2, 2)
    panels = [(axes[0, 0], None, "round"), (axes[0, 1], "bits_up", "cumulative bits up"),
              (axes[1, 0], "bits_down", "cumulative bits down"),
              (axes[1, 1], "total", "cumulative bits, up + down")]
    for run in runs:
        history = run.history
        if not history:
            continue
        up = np.cumsum([r.get("bits_up", 0) for r in history], dtype=np.float64)
        down = np.cumsum([r.get("bits_down", 0) for r in history], dtype=np.float64)
        totals = {"bits_up": up, "bits_down": down, "total": up + down}
        evaluated = [i for i, r in enumerate(history) if "test_accuracy" in r]
        accuracy = [history[i]["test_accuracy"] for i in evaluated]
        for axis, key, _ in panels:
            x = [history[i]["round"] for i in evaluated] if key is None else totals[key][evaluated]
            axis.plot(x, accuracy, marker="." if len(evaluated) < 40 else None, label=_label(run))
    for axis, key, xlabel in panels:
        _finish(axis, xlabel, "test accuracy", xscale="linear" if key is None else "log")
    axes[0, 0].legend(fontsize="small")
    figure.suptitle("federated runs: test accuracy")
    return _save(figure, out, "federated_accuracy")


def lazy_figures(runs: list[RunResult], out: Path, max_workers: int = 10) -> list[Path]:
    """Residual and gradient norm against iterations, communications and bits; upload rasters."""
    runs = [run for run in runs if run.history]
    if not runs:
        return []
    f_star = f_star_of(runs)
    figure, axes = _figure(2, 3)
    for run in runs:
        history = run.history
        objective = np.array([r["objective"] for r in history])
        grad_norm = np.array([r["grad_norm_sq"] for r in history])
        residual = objective - f_star
        residual = np.where(residual > 0, residual, np.nan)      # a log axis cannot show 0 (the best run)
        communications, bits = records_spent_before(history)
        x_axes = (np.arange(len(history)), communications, bits)
        for column, x in enumerate(x_axes):
            axes[0, column].plot(x, residual, label=_label(run))
            axes[1, column].plot(x, grad_norm, label=_label(run))
    for column, xlabel in enumerate(("iteration", "communications (uploads)", "bits")):
        _finish(axes[0, column], xlabel, "f - f*", yscale="log")
        _finish(axes[1, column], xlabel, "||grad f||^2", yscale="log")
    axes[0, 0].legend(fontsize="small")
    figure.suptitle(f"lazy runs: residual (f* = {f_star:.10g}) and gradient norm")
    paths = _save(figure, out, "lazy_residual")

    raster, raster_axes = _figure(len(runs), 1, width=9.0, height=max(1.4, 0.25 * max_workers + 0.8))
    for axis, run in zip(raster_axes[:, 0], runs):
        shown = set(range(max_workers))
        events = [(r["iteration"] if "iteration" in r else k, m)
                  for k, r in enumerate(run.history) for m in r.get("uploads", []) if m in shown]
        if events:
            iterations, workers = np.array(events).T
            axis.scatter(iterations, workers, marker="|", s=30, linewidths=0.8)
        n_workers = run.config.get("lazy", {}).get("n_workers", max_workers)
        axis.set_ylim(-0.5, min(n_workers, max_workers) - 0.5)
        axis.invert_yaxis()
        axis.set(xlabel="iteration", ylabel="worker", title=f"{_label(run)}: uploads"
                 + (f" (first {max_workers} of {n_workers} workers)" if n_workers > max_workers else ""))
        axis.set_xlim(-0.5, len(run.history) - 0.5)
    paths += _save(raster, out, "lazy_uploads")
    return paths


def plot_runs(runs: list[RunResult], out) -> list[Path]:
    """All figures for ``runs`` into folder ``out``: each family's runs drawn by the figure function
    its registration names (``Family.figures``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for declared, chosen in group_by_family(runs):
        paths += globals()[declared.figures](chosen, out)
    return paths


__all__ = ["federated_figure", "lazy_figures", "plot_runs"]
