"""Figures of finished (or unfinished) runs, overlaid: ``fedsim plot RUN_DIR ...``.

Federated runs: test accuracy against rounds and against cumulative bits sent up, down and in total.
Lazy runs: residual ``f(theta^k) - f*`` and ``||grad f(theta^k)||^2`` against iterations, communications
(uploads) and bits spent to reach ``theta^k`` (log scale, as in the LAQ paper, arXiv 1909.07588), and an
upload-event raster per run (a mark where worker m uploaded at iteration k).

``f*`` is the runs' ``run.f_star`` if set (the LAQ example computes it with L-BFGS), else the smallest
objective among the lazy runs plotted together, and the axis then says "relative to the best value
reached"; the run attaining that value has no residual curve (compared with itself, it would plunge to 0 as
if converging: ``fedsim compare`` shows it as "-"). The title counts the points left out (f - f* <= 0) and
says when a run.f_star lies above the smallest f reached; theta^0, which spent nothing, is not drawn on the
log axes of communications and bits (their labels say so).

Titles hold the dataset, the partition and the settings the runs share; legends the method and the
settings in which the runs differ, of every table ([model], [system] and the compressors' too). Colours,
line styles and markers all change from run to run, so the figures survive greyscale printing; bits and
communications are on log axes in both families.

A diverged run is drawn up to its last value a figure can show (:data:`DRAWABLE`); its legend label says
where it diverged, and :func:`plot_runs` adds one line per such run to ``notes``.

Every figure is written as PNG and SVG. Only :class:`matplotlib.figure.Figure` is used (no pyplot), so
plotting never touches a GUI backend or global figure state.
"""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap
from pathlib import Path

import numpy as np

from fedsim.algorithms.family import FAMILIES, group_by_family
from fedsim.algorithms.lazy import configured_f_star, f_star_of, records_to_arrays, smallest_objective
from fedsim.config import COMPRESSOR_TABLES
from fedsim.runs import RunFolderError, RunResult
from fedsim.runs.compare import same_data
from fedsim.runs.folder import tell_apart

FORMATS = ("png", "svg")
#: The largest magnitude drawn: sqrt of the largest float64, about 1.3e154. A value whose square overflows
#: is as good as infinite to a figure (a log axis padded around it puts ticks past the float range).
DRAWABLE = math.sqrt(np.finfo(np.float64).max)


def drawable(values) -> np.ndarray:
    """``values`` as float64, NaN where a figure cannot show them (NaN, inf, or beyond :data:`DRAWABLE`)."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.abs(values) <= DRAWABLE, values, np.nan)


def drawn_records(history: list[dict]) -> int:
    """How many of the records, from the first, hold only drawable numbers (a diverged run's part shown)."""
    for index, record in enumerate(history):
        numbers = [value for value in record.values() if isinstance(value, (int, float))]
        if np.isnan(drawable(numbers)).any():
            return index
    return len(history)


def drawn_in_part(run: RunResult) -> str | None:
    """The line telling that ``run`` is drawn only in part (it diverged, or holds values too large to
    draw), or None when it is drawn whole."""
    shown = drawn_records(run.history)
    declared = FAMILIES[run.family]
    if run.status == "diverged":
        where = f"diverged at {declared.unit} {run.summary.get('completed', len(run.history))}"
    elif shown < len(run.history):
        where = f"has values too large to draw (above {DRAWABLE:.2g})"
    else:
        return None
    return f"{run.path} {where}: the figures show its first {shown} {declared.units}"


def _plot(axis, x, y, **style) -> None:
    """``axis.plot`` of the points whose x and y are drawable; no markers on a curve with none (matplotlib's
    ``markevery`` fails on an empty path)."""
    x, y = drawable(x), drawable(y)
    left_out = np.isnan(x) | np.isnan(y)
    if left_out.all():
        style.pop("markevery", None)
    axis.plot(np.where(left_out, np.nan, x), np.where(left_out, np.nan, y), **style)


def _figure(rows: int, columns: int, width: float = 4.6, height: float = 3.4):
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    return figure, figure.subplots(rows, columns, squeeze=False)


def _fit_title(figure, margin: float = 0.97) -> None:
    """Wrap the figure's title (at spaces, each of its lines) until it is at most ``margin`` of the figure's
    width: a title of many shared settings would otherwise run off both edges."""
    title = figure._suptitle
    if title is None or not title.get_text():
        return
    lines = title.get_text().split("\n")
    width = max(map(len, lines))
    while title.get_window_extent().width > margin * figure.bbox.width and width > 20:
        width -= 4
        title.set_text("\n".join(_wrap_settings(line, width) for line in lines))


def _wrap_settings(line: str, width: int) -> str:
    """``line`` in lines of at most ``width`` characters, broken after a comma or semicolon (a setting
    and its value stay together), or at a space inside a setting longer than that."""
    pieces = [piece for item in re.split(r"(?<=[,;]) ", line)
              for piece in (textwrap.wrap(item, width, break_long_words=False) if len(item) > width else [item])]
    wrapped = [pieces[0]]
    for piece in pieces[1:]:
        if len(wrapped[-1]) + 1 + len(piece) <= width:
            wrapped[-1] += " " + piece
        else:
            wrapped.append(piece)
    return "\n".join(wrapped)


def _save(figure, out: Path, stem: str) -> list[Path]:
    import matplotlib
    _fit_title(figure)
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


# Distinguishable in colour (Okabe-Ito, safe for colour-blind readers) and in greyscale print (line style
# and marker change with every run too).
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999")
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: Settings that say nothing about the experiment (left out of titles and legends).
_BOOKKEEPING = ("run.checkpoint_every", "data.data_dir", "data.download", "federated.eval_every",
                "lazy.eval_every", "seed_of_run")


def _style(index: int) -> dict:
    """Colour, line style and marker of the index-th series, walking their product: index = 8 a + c gets
    colour c, marker (c + a) mod 8 and line style (c + a // 8) mod 4, so no two of the first 256 series look
    alike and each differs from the one before in all three."""
    cycle, colour = divmod(index, len(COLOURS))
    return {"color": COLOURS[colour], "linestyle": LINE_STYLES[(colour + cycle // len(MARKERS)) % len(LINE_STYLES)],
            "marker": MARKERS[(colour + cycle) % len(MARKERS)], "markevery": 0.1, "markersize": 4,
            "linewidth": 1.4}


def _legend(figure, axis) -> None:
    """The legend of ``axis``'s series, in the order they were drawn, outside every panel (below them, in
    up to three columns; the constrained layout makes room for it)."""
    handles, labels = axis.get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize="small")


def _flat_settings(run: RunResult) -> dict:
    """The run's settings as ``table.name -> value`` (seed and every table but another family's: [data],
    [model], [system], the compressors' ...), without those its method ignores (QSGD's p_up, the tables of
    compressors it does not use: ``Report.unused``)."""
    settings = {"seed": run.config.get("seed", 0)}
    for table, values in run.config.items():
        if isinstance(values, dict) and (table == run.family or table not in FAMILIES):
            settings.update({f"{table}.{name}": value for name, value in values.items()})
    return {key: settings[key] for key in read_settings(run, settings) if key not in _BOOKKEEPING}


def read_settings(run: RunResult, keys) -> list[str]:
    """The settings of ``keys`` (``table.name``) that the method of ``run`` reads: neither named by its family's
    ``Report.unused`` nor in a table it names whole (a compressor's the method does not use)."""
    declared = FAMILIES.get(run.family)
    unused = declared.report.unused(run.config) if declared is not None else set()
    return [key for key in keys if not {key, key.split(".")[0]} & unused]


def _short(key: str, value, family: str = "") -> str:
    """``name value`` of a setting of [data] or the family's table, ``table.name value`` of another's."""
    table, _, name = key.rpartition(".")
    name = name if table in ("", "data", family) else key
    return f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"


def _differs(key: str, flats: list[dict]) -> bool:
    """Whether the runs' settings ``flats`` differ in ``key``; a compressor's setting that only the runs of its
    method read counts only when one of them has it off its default (the method's name says the rest)."""
    if len({repr(flat.get(key)) for flat in flats}) < 2:
        return False
    table, _, name = key.rpartition(".")
    if table not in COMPRESSOR_TABLES or all(key in flat for flat in flats):
        return True
    default = {field.name: field.default for field in dataclasses.fields(COMPRESSOR_TABLES[table])}.get(name)
    return any(flat[key] != default for flat in flats if key in flat)


def describe(runs: list[RunResult]) -> tuple[str, list[str]]:
    """(title, one legend label per run): the title holds the dataset, partition and the settings the
    runs share that matter most; each label the method and the settings in which the runs differ, of any
    table (``model.hidden [16]``; the family's own and [data] by their names, ``lr 0.1``). A setting a run's
    method ignores is in neither (one that only some runs read is in their labels: :func:`_differs`); runs
    of the same settings are told apart by their folders (:func:`~fedsim.runs.folder.tell_apart`)."""
    flats = [_flat_settings(run) for run in runs]
    keys = sorted(set().union(*flats))
    differing = [key for key in keys if _differs(key, flats)]
    common = flats[0]
    family = runs[0].family
    data = [f"{common.get('data.dataset', '?')}"]
    partition = common.get("data.partition")
    if partition and "data.partition" not in differing:
        detail = {"classes_per_client": f" ({common.get('data.classes_per_client')} classes per client)",
                  "dirichlet": f" (alpha {common.get('data.dirichlet_alpha')})"}.get(partition, "")
        data.append(f"partition {partition}{detail}")
    declared = FAMILIES.get(family)
    if declared is not None:
        clients_key = declared.setting(declared.clients_setting)
        if clients_key in common and clients_key not in differing:
            data.append(f"{common[clients_key]} {declared.report.clients_word}")
    shared = [_short(key, common[key], family) for key in (f"{family}.lr", f"{family}.step_size", f"{family}.p_up",
                                                           f"{family}.p_down", f"{family}.batch_size", f"{family}.bits")
              if key in common and key not in differing]
    title = ", ".join(data) + (f"; {', '.join(shared)}" if shared else "")
    method_key = f"{family}.method"
    labels = []
    for run, flat in zip(runs, flats):
        extra = [_short(key, flat.get(key), family) for key in differing if key != method_key and key in flat]
        if run.status == "diverged":
            extra.append(f"diverged at {run.summary.get('completed', len(run.history))}")
        labels.append(", ".join([run.method] + extra))
    if len(set(labels)) < len(labels):             # the same settings twice: tell them apart by folder
        labels = [f"{label} ({run.label})" for label, run in zip(labels, tell_apart(runs))]
    return title, labels


def _finish(axis, xlabel: str, ylabel: str, xscale: str = "linear", yscale: str = "linear",
            integer_x: bool = False) -> None:
    """Labels, scales, grid; a log scale only over data with a positive value (else linear: a run of one
    step has spent nothing before its only record, and a log axis cannot show that)."""
    from matplotlib.ticker import MaxNLocator
    limits = axis.dataLim
    xscale = xscale if xscale != "log" or limits.x1 > 0 else "linear"
    yscale = yscale if yscale != "log" or limits.y1 > 0 else "linear"
    axis.set(xlabel=xlabel, ylabel=ylabel, xscale=xscale, yscale=yscale)
    axis.grid(alpha=0.3)
    if integer_x:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))


#: The x axes of ``fedsim plot --x``, per family (the first is the default), and each one's label.
X_AXES = {"federated": ("rounds", "bits", "time", "simulated"), "lazy": ("iterations", "bits", "time", "simulated")}
X_LABELS = {"bits": "bits up + down (cumulative)", "time": "wall time, s (cumulative 'time' of the records)",
            "simulated": "simulated time, s ([system]: links, devices, deadline)"}


def spent(history: list[dict], x: str, before: bool = False) -> np.ndarray:
    """Cumulative bits (up + down), wall time (the records' ``time``) or simulated time (their cumulative
    ``simulated_seconds``) through each record, or with ``before`` spent before it (what reaching a lazy
    iterate theta^k cost)."""
    if x == "simulated":
        through = np.array([record["simulated_seconds"] for record in history], dtype=np.float64)
    elif x == "bits" and history and "bits" in history[0]:           # lazy records hold it cumulative
        through = np.array([record["bits"] for record in history], dtype=np.float64)
    elif x == "time":
        through = np.cumsum([record.get("time", 0.0) for record in history], dtype=np.float64)
    else:
        through = np.cumsum([record.get("bits_up", 0) + record.get("bits_down", 0) for record in history],
                            dtype=np.float64)
    return np.concatenate(([0.0], through[:-1])) if before else through


#: The end of a log cost axis's label: theta^0, which spent nothing, has no place on it.
THETA_0_LEFT_OUT = "; theta^0 (0 spent) not drawn"


def on_log_axis(spent_before: np.ndarray) -> np.ndarray:
    """What was spent before each lazy iterate, for a log axis: NaN for theta^0 (and any iterate that spent
    nothing), unless nothing was spent at all (the axis is then linear: :func:`_finish`)."""
    return np.where(spent_before > 0, spent_before, np.nan) if np.any(spent_before > 0) else spent_before


def residual_points(objective, f_star: float, own_best: bool = False) -> tuple[np.ndarray, int]:
    """``f - f_star`` of the ``objective`` values where a log axis can show it (NaN where it is <= 0, and everywhere
    for a run compared with its own best value), and how many points f - f* <= 0 that leaves out (0 for such a run)."""
    residual = drawable(objective) - f_star
    if own_best:
        return np.full(residual.shape, np.nan), 0
    return np.where(residual > 0, residual, np.nan), int(np.count_nonzero(residual <= 0))


def residual_captions(groups, stars: dict, name: str, left_out: list[str]) -> tuple[list[str], list[str]]:
    """(one line per group of runs whose f* (``stars``, by run id; ``name`` says what it is) lies above the smallest
    f they reached: no lower bound of f; those lines and the points left out, ``left_out`` "n of label" each: the
    lines a residual figure's title adds)."""
    above = [f"{name} = {float(stars[id(group[0])])!r} is above the smallest f reached, {float(lowest)!r}: it is no "
             f"lower bound of f" for group in groups
             for lowest in [smallest_objective([run.history for run in group])] if stars[id(group[0])] > lowest]
    return above, above + ([f"points with f - f* <= 0 not drawn (log axis): {'; '.join(left_out)}"] if left_out else [])


def _check_x(x: str, family: str, runs: list[RunResult]) -> None:
    """A one-line error for an x axis the family has not, or a wall time that a run did not record."""
    if x not in X_AXES[family]:
        raise ValueError(f"--x must be one of {' | '.join(X_AXES[family])} for {family} runs, got {x!r}")
    for run in runs:
        if x == "time" and not any("time" in record for record in run.history):
            raise RunFolderError(f"--x time: the records of {run.path} hold no wall time ('time'); plot them "
                                 f"against {X_AXES[family][0]} or bits")
        if x == "simulated" and not all("simulated_seconds" in record for record in run.history):
            raise RunFolderError(f"--x simulated: the records of {run.path} hold no simulated time; run with a "
                                 f"[system] profile (e.g. --set system.profile='\"4g\"')")


def federated_figure(runs: list[RunResult], out: Path, x: str = "rounds") -> list[Path]:
    """Test accuracy against rounds and cumulative bits (up, down, total), or with ``x`` "bits" | "time" |
    "simulated" against that alone (file ``federated_accuracy_by_<x>``); returns the files written."""
    _check_x(x, "federated", runs)
    runs = [run for run in runs if run.history]
    title, labels = describe(runs)
    if x == "rounds":
        figure, axes = _figure(2, 2)
        x_labels = ("round", "bits sent up (cumulative)", "bits sent down (cumulative)", "bits up + down (cumulative)")
    else:
        figure, axes = _figure(1, 1, width=6.0, height=4.2)
        x_labels = (X_LABELS[x],)
    for index, (run, label) in enumerate(zip(runs, labels)):
        history = run.history
        if x == "rounds":
            up = np.cumsum([r.get("bits_up", 0) for r in history], dtype=np.float64)
            down = np.cumsum([r.get("bits_down", 0) for r in history], dtype=np.float64)
            x_values = (np.array([r["round"] for r in history]), up, down, up + down)
        else:
            x_values = (spent(history, x),)
        evaluated = [i for i, r in enumerate(history) if "test_accuracy" in r]
        accuracy = [history[i]["test_accuracy"] for i in evaluated]
        for axis, values in zip(axes.flat, x_values):
            _plot(axis, values[evaluated], accuracy, label=label, **_style(index))
    for axis, xlabel in zip(axes.flat, x_labels):
        _finish(axis, xlabel, "test accuracy", xscale="log" if "bits" in xlabel else "linear",
                integer_x=xlabel == "round")
    _legend(figure, axes[0, 0])
    figure.suptitle(title)
    return _save(figure, out, "federated_accuracy" if x == "rounds" else f"federated_accuracy_by_{x}")


def lazy_figures(runs: list[RunResult], out: Path, max_workers: int = 10, f_star: float | None = None,
                 tolerance: float | None = None, x: str = "iterations", notes: list[str] | None = None) -> list[Path]:
    """Residual and gradient norm against iterations, communications and bits, or with ``x`` "bits" |
    "time" against that alone (file ``lazy_residual_by_<x>``); upload rasters.

    ``f_star``: a known optimum (e.g. from L-BFGS) instead of the runs' own, each run's otherwise that of the runs
    minimizing its objective (:func:`fedsim.runs.compare.same_data`); ``tolerance``: a dotted line at that
    residual. The title says which points a log axis leaves out (f - f* <= 0; theta^0, which spent nothing, on a
    log cost axis) and an f* above the smallest f reached (no lower bound of f), which goes to ``notes`` too."""
    _check_x(x, "lazy", runs)
    runs = [run for run in runs if drawn_records(run.history)]
    if not runs:
        return []
    title, labels = describe(runs)
    groups = [runs] if f_star is not None else list(same_data(runs, FAMILIES["lazy"].report.objective).values())
    configured = f_star is not None or all(configured_f_star(group) is not None for group in groups)
    stars = {id(run): f_star_of(group) if f_star is None else f_star for group in groups for run in group}
    # Without a known f*, the residual is relative to the best value these runs reached, and says so.
    residual_label = "f - f*" if configured else "f - (smallest f of these runs)"
    x_labels = (("iteration", "communications (uploads, cumulative)", "bits (cumulative)") if x == "iterations"
                else ({"bits": "bits (cumulative, before the iterate)",
                       "time": "wall time, s (cumulative 'time' of the records, before the iterate)",
                       "simulated": "simulated time, s (before the iterate)"}[x],))
    log_x = [not xlabel.startswith(("iteration", "wall", "simulated")) for xlabel in x_labels]
    x_labels = [xlabel + THETA_0_LEFT_OUT if log else xlabel for xlabel, log in zip(x_labels, log_x)]
    left_out = []       # per run, its points with f - f* <= 0, which a log axis cannot show
    figure, axes = _figure(2, len(x_labels), width=4.6 if len(x_labels) > 1 else 6.0)
    for index, (run, label) in enumerate(zip(runs, labels)):
        arrays = records_to_arrays(run.history)
        own_best = not configured and np.nanmin(drawable(arrays["objective"])) <= stars[id(run)]
        # a log axis cannot show f - f* <= 0; no curve for the run attaining f_best (it is compared with itself)
        residual, below = residual_points(arrays["objective"], stars[id(run)], own_best)
        if below:
            left_out.append(f"{below} of {label}")
        x_axes = ((np.arange(len(run.history)), arrays["communications_before"], arrays["bits_before"])
                  if x == "iterations" else (spent(run.history, x, before=True),))
        for column, x_values in enumerate(x_axes):
            x_values = on_log_axis(x_values) if log_x[column] else x_values
            _plot(axes[0, column], x_values, residual, label=label, **_style(index))
            _plot(axes[1, column], x_values, arrays["grad_norm_sq"], label=label, **_style(index))
    for column, xlabel in enumerate(x_labels):
        xscale = "log" if log_x[column] else "linear"
        if tolerance is not None:
            axes[0, column].axhline(tolerance, color="grey", linewidth=0.8, linestyle=":")
        integer_x = xlabel == "iteration"
        _finish(axes[0, column], xlabel, residual_label, xscale=xscale, yscale="log", integer_x=integer_x)
        _finish(axes[1, column], xlabel, "||grad f||^2", xscale=xscale, yscale="log", integer_x=integer_x)
    _legend(figure, axes[0, 0])
    values = ", ".join(f"{value:.10g}" for value in dict.fromkeys(stars.values()))
    reference = (f"f* = {values}" if configured else f"relative to the best value reached, {values}, not drawn "
                 f"for its run") + (
        f"; each run against its objective's ({len(groups)} objectives)" if len(groups) > 1 else "")
    above, caption = residual_captions(groups, stars, "f*" if f_star is not None else "run.f_star", left_out)
    if notes is not None:
        notes += above
    figure.suptitle("\n".join([f"{title}\nresidual ({reference}) and gradient norm", *caption]))
    paths = _save(figure, out, "lazy_residual" if x == "iterations" else f"lazy_residual_by_{x}")
    if x != "iterations":
        return paths

    raster, raster_axes = _figure(len(runs), 1, width=9.0, height=max(1.4, 0.25 * max_workers + 0.8))
    for index, (axis, run, label) in enumerate(zip(raster_axes[:, 0], runs, labels)):
        shown = set(range(max_workers))
        events = [(r["iteration"] if "iteration" in r else k, m)
                  for k, r in enumerate(run.history) for m in r.get("uploads", []) if m in shown]
        if events:
            iterations, workers = np.array(events).T
            axis.scatter(iterations, workers, marker="|", s=30, linewidths=0.8, color=_style(index)["color"])
        n_workers = run.config.get("lazy", {}).get("n_workers", max_workers)
        axis.set_ylim(-0.5, min(n_workers, max_workers) - 0.5)
        axis.invert_yaxis()
        axis.set_title(f"{label}: uploads"
                       + (f" (first {max_workers} of {n_workers} workers)" if n_workers > max_workers else ""))
        axis.set_xlim(-0.5, len(run.history) - 0.5)
        _finish(axis, "iteration", "worker", integer_x=True)
        axis.grid(False)
    raster.suptitle(title)
    paths += _save(raster, out, "lazy_uploads")
    return paths


def plot_runs(runs: list[RunResult], out, notes: list[str] | None = None, **options) -> list[Path]:
    """All figures for ``runs`` into folder ``out``, and into ``notes`` (if given) the line of each run drawn
    in part and a figure's own (a lazy f* above the smallest f reached): each family's runs drawn by the
    figure function its registration names (``Report.figure``), with
    the ``options`` it takes. ``x``: "rounds" or "iterations" (each family's steps, the default), "bits",
    "time" or "simulated"."""
    import inspect
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if notes is not None:
        notes += filter(None, map(drawn_in_part, runs))
    for declared, chosen in group_by_family(runs):
        draw = globals()[declared.report.figure]
        accepted = inspect.signature(draw).parameters
        chosen_options = {key: value for key, value in options.items() if key in accepted}
        if notes is not None and "notes" in accepted:
            chosen_options["notes"] = notes
        if options.get("x") in (None, *(steps for steps, *_ in X_AXES.values())):
            chosen_options["x"] = X_AXES[declared.name][0]
        paths += draw(chosen, out, **chosen_options)
    return paths


__all__ = ["DRAWABLE", "X_AXES", "describe", "drawable", "drawn_in_part", "drawn_records", "federated_figure",
           "lazy_figures", "on_log_axis", "plot_runs", "read_settings", "residual_captions", "residual_points", "spent"]
