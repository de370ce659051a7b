"""What a sweep found: a tidy table of every completed run's metrics, a summary over seeds, and figures.
A run that did not complete (diverged, interrupted, failed) is in none of them: :func:`left_out` names it.

``report.csv`` has one row per (run, metric): the run's folder, its status, one column per axis, then
``metric`` and ``value``. The summary groups the runs by every axis except ``seed`` and gives, per metric,
mean +- standard deviation (over seeds, ``ddof=1``) and n. The figures: the runs' curves as the mean over
seeds with a band from their minimum to their maximum (and cumulative bits sent up as a second x axis: through
a federated round, before a lazy iterate, as ``fedsim plot`` draws them; legends by its rules too),
and the first metric at the end against the first axis that is not the method or the seed. A sweep whose runs
solved their up compressor's knob for a bit budget (``federated.bits_per_round``) also gets the knob and the
upload per participant beside the first metric (:func:`format_budget`). Runs that started on unlike BLAS
kernels or NumPy SIMD loops (a Dask sweep over unlike machines) are named in a note (:func:`platforms_note`).
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np

from fedsim.algorithms.family import family
from fedsim.runs import RunFolderError, read_run
from fedsim.runs.compare import same_data, text_table
from fedsim.sweeps.folder import FINAL, MANIFEST, RUNS_FOLDER, check_run_folder, differing_versions, read_manifest
from fedsim.sweeps.spec import run_label

SEED = "seed"


def checked_manifest(out) -> dict:
    """The sweep folder's manifest, with the keys a report reads (RunFolderError naming the one missing)."""
    manifest = read_manifest(out)
    where = Path(out) / MANIFEST
    for key, kind in (("name", str), ("axes", dict), ("runs", list)):
        if not isinstance(manifest.get(key), kind):
            raise RunFolderError(f"{where} has no {kind.__name__} '{key}'; it was changed or damaged outside "
                                 f"fedsim (run the sweep file again to rewrite it)")
    for number, run in enumerate(manifest["runs"], start=1):
        for key, kind in (("folder", str), ("values", dict)):
            if not isinstance(run, dict) or not isinstance(run.get(key), kind):
                raise RunFolderError(f"{where}: run {number} has no {kind.__name__} '{key}'; it was changed or "
                                     f"damaged outside fedsim (run the sweep file again to rewrite it)")
    return manifest


def collect(out) -> tuple[dict, list[dict]]:
    """(manifest, one entry per run: folder, status, axis values, the manifest's message and completed steps,
    run result or None, problem or None, and whether the problem is another version of a file: ``mixed``).

    A run folder that is not the run the manifest names (:func:`fedsim.sweeps.folder.check_run_folder`, its
    name made of the manifest's axis values), or that read another version of a file than the other runs
    (:func:`fedsim.sweeps.folder.differing_versions`), gets a one-line ``problem`` and no result, so no number
    is reported under the wrong settings.
    """
    out = Path(out)
    manifest = checked_manifest(out)
    entries = []
    for run in manifest["runs"]:
        relative = Path(run["folder"])
        folder, result, problem = out / relative, None, None
        if relative.parent != Path(RUNS_FOLDER) or relative.name in ("", ".", ".."):
            problem = f"{out / MANIFEST} names the folder {run['folder']!r}, which is not in {RUNS_FOLDER}/"
        elif (folder / "config.toml").exists():
            try:
                mismatch = check_run_folder(folder, label=run_label(run["values"].items()),
                                            config_sha256=run.get("config_sha256"))
                problem = mismatch and f"{run['folder']}: {mismatch}"
                result = None if problem else read_run(folder)
            except RunFolderError as error:
                problem = str(error)
        entries.append({"folder": run["folder"], "status": run.get("status", "pending"), "values": run["values"],
                        "message": run.get("message"), "completed": run.get("completed"), "result": result,
                        "problem": problem})
    differing = differing_versions({entry["folder"]: entry["result"].meta for entry in entries if entry["result"]})
    for entry in entries:           # runs on another version of a file: not beside the others' numbers
        entry["mixed"] = entry["folder"] in differing
        if entry["mixed"]:
            entry["result"], entry["problem"] = None, f"{entry['folder']}: {differing[entry['folder']]}"
    return manifest, entries


def tidy_rows(out, collected: tuple[dict, list[dict]] | None = None) -> list[dict]:
    """One row per (run, metric) of the completed runs (of ``collected``, :func:`collect`, if given): a diverged
    run's last numbers are not a result (:func:`left_out` names it)."""
    manifest, entries = collected or collect(out)
    axes = list(manifest["axes"])
    rows = []
    for entry in entries:
        result = entry["result"]
        if result is None or result.status != "completed":
            continue
        for metric in family(result.family).report.metrics:
            if metric in result.summary:
                rows.append({"run": entry["folder"], "status": result.status,
                             **{axis: entry["values"].get(axis) for axis in axes},
                             "metric": metric, "value": result.summary[metric]})
    return rows


def left_out(entries: list[dict], rows: list[dict]) -> list[str]:
    """One line per run of ``entries`` (:func:`collect`) with no row in ``rows`` (:func:`tidy_rows`): its
    folder's problem, or its status (failed, interrupted, pending) and message, so that no run (no setting
    whose every seed failed) leaves the report unnoticed."""
    reported = {row["run"] for row in rows}
    lines = []
    for entry in entries:
        if entry["problem"]:
            lines.append(entry["problem"])
            continue
        if entry["folder"] in reported:
            continue
        result, status, message = entry["result"], entry["status"], entry["message"]
        if result is not None and result.summary is not None:      # diverged, or ended without a metric to report
            status, message = result.status, result.summary.get("message")
        elif status in FINAL:
            status, message = "not finished", f"the manifest says {status}, but the folder holds no summary.json"
        elif status == "interrupted" and isinstance(entry["completed"], int):
            status = f"interrupted after {entry['completed']} {family(result.family).units if result else 'steps'}"
        lines.append(f"{entry['folder']} ({run_label(entry['values'].items())}): {status}"
                     + (f": {' '.join(str(message).split())}" if message else ""))
    return lines


def _arithmetic(meta: dict) -> tuple[str, ...] | None:
    """The BLAS and NumPy SIMD pairs a run computed on, as its meta.json records them: its start's, then those
    of the resumes on others; None if its start's pair is not recorded whole (an older fedsim, a damaged
    file): it cannot be compared."""
    threads = meta.get("threads") if isinstance(meta.get("threads"), dict) else {}
    sessions = [session for session in meta.get("sessions") or [] if isinstance(session, dict)]
    pairs: list[str] = []
    for blas, simd in [(threads.get("blas"), threads.get("simd"))] + [
            (session.get("blas"), session.get("simd")) for session in sessions]:
        if isinstance(blas, str) and isinstance(simd, str) and f"{blas}, NumPy SIMD {simd}" not in pairs:
            pairs.append(f"{blas}, NumPy SIMD {simd}")
        elif not pairs:
            return None
    return tuple(pairs)


def platforms_note(entries: list[dict]) -> str | None:
    """A line naming the arithmetic the runs of ``entries`` (:func:`collect`) computed on, NumPy's BLAS and SIMD
    loops (:func:`_arithmetic`), when it is not the same for all (a Dask sweep over unlike machines): their
    numbers stand beside each other, but each run reproduces bit for bit on its own only. None when they agree."""
    platforms: dict[tuple[str, ...], list[str]] = {}
    for entry in entries:
        arithmetic = None if entry["result"] is None else _arithmetic(entry["result"].meta)
        if arithmetic is not None:
            platforms.setdefault(arithmetic, []).append(entry["folder"])
    if len(platforms) < 2:
        return None
    (most, commonest), *others = sorted(platforms.items(), key=lambda item: -len(item[1]))   # the others' named
    listed = "; ".join([f"{' then '.join(most)}: {len(commonest)} run{'s' if len(commonest) > 1 else ''}"] +
                       [f"{' then '.join(platform)}: {', '.join(folders)}" for platform, folders in others])
    pairs = {pair for platform in platforms for pair in platform}
    return (f"the runs ran on {len(pairs)} pairs of BLAS and NumPy SIMD loops, which round last bits their own "
            f"way ({listed}); each run reproduces bit for bit on its own pair only")


def write_csv(out, rows: list[dict]) -> Path:
    path = Path(out) / "report.csv"
    columns = list(rows[0]) if rows else ["run", "status", "metric", "value"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def summarize_over_seeds(rows: list[dict], axes: list[str]) -> list[dict]:
    """Per group of runs equal in every axis but the seed, and per metric: mean, std (ddof 1) and n."""
    grouping = [axis for axis in axes if axis != SEED]
    groups: dict[tuple, tuple[dict, list[float]]] = {}
    for row in rows:
        key = tuple(repr(row.get(axis)) for axis in grouping) + (row["metric"],)     # 1 and 1.0 apart
        groups.setdefault(key, ({axis: row.get(axis) for axis in grouping}, []))[1].append(float(row["value"]))
    summary = []
    for key, (values_of_axes, values) in groups.items():
        array = np.asarray(values)
        with np.errstate(over="ignore"):        # a diverged run's 1e288: the std is inf, and says so
            std = float(array.std(ddof=1)) if len(array) > 1 else math.nan
        summary.append({**values_of_axes, "metric": key[-1], "mean": float(array.mean()), "std": std,
                        "n": len(array)})
    return summary


def format_summary(summary: list[dict], axes: list[str]) -> str:
    grouping = [axis for axis in axes if axis != SEED]
    headers = [axis.rsplit(".", 1)[-1] for axis in grouping] + ["metric", "mean +- std", "n"]
    lines = [[row[axis] for axis in grouping] + [row["metric"], _mean_std(row), row["n"]] for row in summary]
    return text_table(headers, lines, right=False)


#: What the summary of a run that solved its knob for a bit budget holds: the knob, its value, the mean upload.
KNOB, KNOB_VALUE, UPLOAD = "bits_per_round_knob", "bits_per_round_knob_value", "bits_up_per_participant"


def format_budget(manifest: dict, entries: list[dict]) -> str | None:
    """The runs of :func:`collect` that solved their up compressor's knob for a bit budget (their summaries
    say so), grouped as :func:`summarize_over_seeds` groups: the knob (one value, or its range over the seeds),
    the mean upload per participant per round and the first metric (mean +- std over seeds), n; None if no run
    solved one."""
    solved = [entry for entry in entries if entry["result"] is not None and entry["result"].status == "completed"
              and KNOB in entry["result"].summary]
    if not solved:
        return None
    axes = list(manifest["axes"])
    grouping = [axis for axis in axes if axis != SEED]
    metric = family(solved[0]["result"].family).report.metrics[0]
    rows, knobs = [], {}
    for entry in solved:
        summary = entry["result"].summary
        values = {axis: entry["values"].get(axis) for axis in axes}
        rows += [{**values, "metric": name, "value": summary[name]} for name in (UPLOAD, metric) if name in summary]
        key = tuple(repr(values[axis]) for axis in grouping)
        knobs.setdefault(key, []).append((summary[KNOB], summary[KNOB_VALUE]))
    by_group: dict[tuple, dict] = {}
    for row in summarize_over_seeds(rows, axes):
        by_group.setdefault(tuple(repr(row[axis]) for axis in grouping), {"axes": row})[row["metric"]] = row
    lines = []
    for key, group in by_group.items():
        names, numbers = {name for name, _ in knobs[key]}, sorted({value for _, value in knobs[key]})
        knob = f"{'/'.join(sorted(names))} = {numbers[0]:.4g}" + (f" to {numbers[-1]:.4g}" if len(numbers) > 1 else "")
        cells = [_mean_std(group[name]) if name in group else "-" for name in (UPLOAD, metric)]
        lines.append([group["axes"][axis] for axis in grouping] + [knob, *cells, group.get(metric, {}).get("n", "-")])
    headers = [axis.rsplit(".", 1)[-1] for axis in grouping] + [
        "knob", "bits up per participant per round", metric.replace("_", " "), "n"]
    return ("federated.bits_per_round: each run's knob (a range where the seeds differ); mean +- std over seeds\n"
            + text_table(headers, lines, right=False))


def _mean_std(row: dict) -> str:
    """``mean +- std`` of a row of :func:`summarize_over_seeds` (the mean alone for one run)."""
    return f"{row['mean']:.4g}" + ("" if math.isnan(row["std"]) else f" +- {row['std']:.4g}")


def natural_order(manifest: dict, names: list[str]):
    """A sort key of axis values in natural order: numbers as numbers (1, 2, 4, 10), other values (methods)
    in the order the sweep file gives them."""
    given = {name: [repr(value) for value in manifest["axes"].get(name, [])] for name in names}

    def key(values) -> tuple:
        return tuple((0, value, 0) if isinstance(value, (int, float)) and not isinstance(value, bool) else
                     (1, 0, given[name].index(repr(value)) if repr(value) in given[name] else len(given[name]))
                     for name, value in zip(names, values))
    return key


def _in_natural_order(manifest: dict, names: list[str], groups: dict) -> list:
    """The (values of the axes ``names``, items) of ``groups`` (:func:`_group`), in :func:`natural_order`."""
    key = natural_order(manifest, names)
    return sorted(groups.values(), key=lambda item: key(item[0]))


def _group(groups: dict, values: tuple, item) -> None:
    """Put ``item`` in the group of the axis ``values`` (keyed by their reprs: a list value, hidden = [4], is one)."""
    groups.setdefault(tuple(map(repr, values)), (values, []))[1].append(item)


def _series_labels(names, keys, results) -> list[str]:
    """``name value, ...`` of the axes ``names`` of each series (its values in ``keys``, one of its runs in
    ``results``), without the settings its method ignores, as ``fedsim plot``'s legends
    (:func:`fedsim.plot.read_settings`); series left with one label are told apart by the values it left out."""
    from fedsim.plot import read_settings
    labels, unread = [], []
    for values, result in zip(keys, results):
        read = set(read_settings(result, names))
        for kept, into in ((True, labels), (False, unread)):
            into.append(", ".join(f"{name.rsplit('.', 1)[-1]} {value}" for name, value in zip(names, values)
                                  if (name in read) == kept))
    counts = Counter(labels)
    return [f"{label} (not read: {left})" if counts[label] > 1 and left else label
            for label, left in zip(labels, unread)]


def bits_up_spent(history: list[dict]) -> np.ndarray | None:
    """Cumulative bits sent up by each record's point, as ``fedsim plot`` draws it: through a federated round (its
    ``bits_up``: the accuracy comes after the round's uploads); before a lazy iterate theta^k (the uploads' ``bits``
    of iterations 0..k-1; theta^0 spent nothing: NaN, :func:`fedsim.plot.on_log_axis`). None for records without."""
    from fedsim.plot import on_log_axis, spent
    if history and "bits_up" in history[0]:
        return np.cumsum([record["bits_up"] for record in history], dtype=np.float64)
    if history and "bits" in history[0]:
        return on_log_axis(spent(history, "bits", before=True))
    return None


#: The residual at which ``fedsim compare`` (its --target-residual default) certifies a best value as f*.
TARGET_RESIDUAL = 1e-6


def residual_floors(results, objective: tuple) -> tuple[dict[int, float], set[int], str, list]:
    """f* of each run of ``results`` (by id) as ``fedsim compare`` takes it, one per objective the runs minimize
    (:func:`fedsim.runs.compare.same_data`, ``objective`` the family's settings): their run.f_star if they agree
    on one, else their smallest f, f* if certified (:func:`fedsim.algorithms.lazy.report.best_value_certified`
    at :data:`TARGET_RESIDUAL`) and else f_best; the runs (by id) that attain an f_best themselves (compared with
    themselves: not drawn, as compare shows them "-"); the residual's axis label, saying what f* is; and the
    groups of runs on one objective."""
    from fedsim.algorithms.lazy.report import best_value_certified, configured_f_star, f_star_of, own_best
    floors, kinds, hidden = {}, set(), set()
    groups = same_data(results, objective)
    for grouped in groups.values():
        floor = f_star_of(grouped)
        kind = ("given" if configured_f_star(grouped) is not None else
                "certified" if best_value_certified(grouped, TARGET_RESIDUAL) else "best")
        kinds.add(kind)
        if kind == "best":
            hidden.update(id(grouped[index]) for index in own_best(grouped, floor))
        floors.update(dict.fromkeys(map(id, grouped), floor))
    smallest = "smallest f of the sweep" if len(groups) == 1 else "smallest f of its objective"
    values = set(floors.values())
    value = f" = {values.pop():.10g}" if len(values) == 1 else ""
    if kinds == {"best"}:           # compare's f_best: the smallest f of the runs (on each data)
        return floors, hidden, f"f - f_best ({f'f_best{value}' if value else 'of each objective'}, not certified as " \
                               f"f*)", list(groups.values())
    said = ", else ".join(text for kind, text in (("given", "run.f_star"), ("certified", f"{smallest} (certified)"),
                                                  ("best", f"{smallest} (f_best, not certified)")) if kind in kinds)
    return floors, hidden, f"f - f* (f* = {said}{value})", list(groups.values())


def plot_sweep(out, figures_out=None, notes: list[str] | None = None) -> list[Path]:
    """The sweep's figures (PNG and SVG) the module describes, n in the legend, series in
    :func:`natural_order`, of the completed runs (as :func:`tidy_rows`: a diverged or interrupted run's curve
    would cut its series short); values a figure cannot show are left out; ``notes``, if given, gets one line
    per run drawn only in part and per run not drawn (:func:`left_out`; a run that is its own f_best), and a
    residual's f* above the smallest f reached, as ``fedsim plot`` (the title says it too, and counts the points
    f - f* <= 0 a log axis leaves out)."""
    from fedsim.plot import (THETA_0_LEFT_OUT, _figure, _finish, _legend, _plot, _save, _style, drawable,
                             drawn_in_part, drawn_records, residual_captions, residual_points)
    manifest, entries = collect(out)
    figures_out = Path(figures_out) if figures_out else Path(out) / "plots"
    figures_out.mkdir(parents=True, exist_ok=True)
    axes = list(manifest["axes"])
    grouping = [axis for axis in axes if axis != SEED]
    finished = [entry for entry in entries if entry["result"] is not None and entry["result"].status == "completed"
                and drawn_records(entry["result"].history)]
    if not finished:
        return []
    declared = family(finished[0]["result"].family)
    x_name, y_name, ylabel, kind = declared.report.curve
    residual, hidden, objectives, left_out_points, caption = kind == "residual", set(), [], [], []
    if residual:                        # f* as `fedsim compare` takes it: one per objective
        floors, hidden, ylabel, objectives = residual_floors([entry["result"] for entry in finished],
                                                             declared.report.objective)
    drawn = [entry for entry in finished if id(entry["result"]) not in hidden]
    if notes is not None:           # runs drawn in part, and each run not drawn
        notes += filter(None, (drawn_in_part(entry["result"]) for entry in drawn))
        notes += [f"{line}; not drawn" for line in left_out(entries, [{"run": entry["folder"]} for entry in finished])]
        notes += [f"{entry['folder']} ({run_label(entry['values'].items())}): it attains f_best, the best value of the "
                  f"runs on its data, so it would be compared with itself; not drawn (give run.f_star, e.g. from "
                  f"L-BFGS, for a true residual)" for entry in finished if id(entry["result"]) in hidden]
    paths: list[Path] = []
    if drawn:                           # none: each run is its own f_best (the final figure may still be drawn)
        groups: dict[tuple, tuple] = {}
        for entry in drawn:
            _group(groups, tuple(entry["values"].get(axis) for axis in grouping), entry["result"])
        with_bits = all(bits_up_spent(entry["result"].history) is not None for entry in drawn)
        figure, panels = _figure(1, 2 if with_bits else 1, width=5.0, height=4.2)
        series = _in_natural_order(manifest, grouping, groups)
        labels = _series_labels(grouping, [key for key, _ in series], [results[0] for _, results in series])
        for index, ((key, results), label) in enumerate(zip(series, labels)):
            curves, below = [], 0
            for result in results:
                records = [r for r in result.history if y_name in r]
                y = np.array([r[y_name] for r in records], dtype=float)
                bits = bits_up_spent(result.history)
                if residual:                # a log axis cannot show f - f* <= 0 (the best run's 0): left out, counted
                    y, points = residual_points(y, floors[id(result)])
                    below += points
                curves.append((np.array([r[x_name] for r in records], dtype=float),
                               None if bits is None else bits[[i for i, r in enumerate(result.history) if y_name in r]],
                               drawable(y)))
            if below:
                left_out_points.append(f"{below} of {label or 'runs'}")
            length = min(len(y) for _, _, y in curves)
            stack = np.vstack([y[:length] for _, _, y in curves])
            mean = stack.mean(axis=0)
            style = _style(index)
            x_values = [curves[0][0][:length]]
            if with_bits:                   # the runs of a series may send different bits: their mean
                x_values.append(np.mean([bits[:length] for _, bits, _ in curves], axis=0))
            for axis, x in zip(panels[0], x_values):
                _plot(axis, x, mean, label=f"{label or 'runs'} (n={len(curves)})", **style)
                axis.fill_between(x, drawable(stack.min(axis=0)), drawable(stack.max(axis=0)), color=style["color"],
                                  alpha=0.15, linewidth=0)
        yscale = "log" if residual else "linear"
        _finish(panels[0, 0], x_name, ylabel, yscale=yscale, integer_x=True)
        if with_bits:                   # a lazy iterate's: spent before it, as fedsim plot draws it
            _finish(panels[0, 1], "bits sent up (cumulative, before the iterate; mean of the series' runs)"
                    + THETA_0_LEFT_OUT if residual else "bits sent up (cumulative; mean of the series' runs)",
                    ylabel, xscale="log", yscale=yscale)
        _legend(figure, panels[0, 0])
        sizes = {len(results) for _, results in groups.values()}
        band = ("one run per series" if sizes == {1} else
                "mean of each series' n runs (n in the legend), band from their minimum to their maximum")
        above, caption = residual_captions(objectives, floors, "run.f_star", left_out_points) if residual else ([], [])
        if notes is not None:
            notes += above
        figure.suptitle("\n".join([f"sweep {manifest['name']}: {band}", *caption]), fontsize="medium")
        paths = _save(figure, figures_out, "sweep_curves")

    numeric = [axis for axis in grouping if not axis.endswith(".method")]
    if numeric:
        x_axis = numeric[0]
        others = [axis for axis in grouping if axis != x_axis]
        metric = declared.report.metrics[0]
        rows = summarize_over_seeds(tidy_rows(out, (manifest, entries)), axes)
        figure, panels = _figure(1, 1, width=6.0, height=4.2)
        axis = panels[0, 0]
        lines: dict[tuple, tuple] = {}
        for row in rows:
            if row["metric"] == metric:
                _group(lines, tuple(row[name] for name in others), row)
        values = sorted({repr(row[x_axis]): row[x_axis] for _, group in lines.values() for row in group}.values(),
                        key=lambda value: natural_order(manifest, [x_axis])((value,)))
        position = {repr(value): i for i, value in enumerate(values)}       # evenly spaced, labelled by value
        ordered = _in_natural_order(manifest, others, lines)
        run_of = {tuple(repr(entry["values"].get(name)) for name in others): entry["result"] for entry in entries
                  if entry["result"] is not None and entry["result"].status == "completed"}     # a run of each line
        labels = _series_labels(others, [key for key, _ in ordered],
                                [run_of[tuple(map(repr, key))] for key, _ in ordered])
        for index, ((key, points), label) in enumerate(zip(ordered, labels)):
            points.sort(key=lambda row: position[repr(row[x_axis])])
            means = drawable([row["mean"] for row in points])
            spread = np.where(np.isnan(means), 0.0, np.nan_to_num(drawable([row["std"] for row in points])))
            counts = sorted({row["n"] for row in points})
            label = f"{label or metric} (n={'/'.join(map(str, counts))})"
            style = {name: value for name, value in _style(index).items() if name != "markevery"}
            axis.errorbar([position[repr(row[x_axis])] for row in points], means, yerr=spread, label=label, capsize=3,
                          **style)
        spans_decades = axis.dataLim.y0 > 0 and axis.dataLim.y1 >= 100 * axis.dataLim.y0
        _finish(axis, x_axis.rsplit(".", 1)[-1].replace("_", " "), metric.replace("_", " "),
                yscale="log" if spans_decades else "linear")
        axis.set_xticks(range(len(values)), [str(value) for value in values])
        _legend(figure, axis)
        over = ("one run per point" if {row["n"] for row in rows} == {1} else
                "mean +- std over the n runs of each point")
        figure.suptitle(f"sweep {manifest['name']}: {metric.replace('_', ' ')} ({over})", fontsize="medium")
        paths += _save(figure, figures_out, "sweep_final")
    return paths


__all__ = ["checked_manifest", "collect", "format_budget", "format_summary", "left_out", "platforms_note",
           "plot_sweep", "summarize_over_seeds", "tidy_rows", "write_csv"]
