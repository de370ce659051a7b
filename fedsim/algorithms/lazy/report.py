"""What is said about lazy runs, all read from their JSON records (one per iteration, as history.jsonl holds
them): arrays for notebooks and plots, the cost of reaching a residual, f*, the summary, the progress text
and the ``fedsim compare`` table.

The residual ``f - f*`` needs ``f*``: take it from the config if known, or :func:`smallest_objective` of the
compared runs (the reference's choice; the best run then reaches residual 0 by construction, so it is a fair
yardstick only if that run has converged well below the tolerance of interest).
"""

from __future__ import annotations

import math

import numpy as np

from fedsim.algorithms.family import Report, cell, compare_row, compare_table
from fedsim.models import MODELS, ModelConfig


def records_to_arrays(records: list[dict], n_workers: int | None = None) -> dict[str, np.ndarray]:
    """The records of a lazy run as arrays over its K iterations k = 0..K-1, for notebooks and plots: the
    records' numbers by their keys (:mod:`fedsim.runs`); ``communications_before`` and ``bits_before`` (spent to
    reach theta^k: the x-axis of residual-vs-cost plots); ``uploads`` (K, M) bools (M: ``n_workers``, by default
    one past the largest worker that uploaded); ``eval_iterations`` with the ``test_accuracy`` measured there
    (the last at the final theta^K when the run completed)."""
    arrays = {name: np.array([r.get(name, math.nan) for r in records], np.float64)
              for name in ("objective", "grad_norm_sq", "aggregate_norm_sq")}
    for name in ("communications", "bits"):
        arrays[name] = np.array([r[name] for r in records], np.int64)
    arrays["communications_before"], arrays["bits_before"] = records_spent_before(records)
    if n_workers is None:
        n_workers = 1 + max((max(r["uploads"]) for r in records if r.get("uploads")), default=-1)
    arrays["uploads"] = np.zeros((len(records), n_workers), bool)
    for k, record in enumerate(records):
        arrays["uploads"][k, record.get("uploads", [])] = True
    measured = [(r["iteration"], r["test_accuracy"]) for r in records if "test_accuracy" in r]
    if records and "final_test_accuracy" in records[-1]:
        measured.append((len(records), records[-1]["final_test_accuracy"]))
    arrays["eval_iterations"] = np.array([k for k, _ in measured], np.int64)
    arrays["test_accuracy"] = np.array([accuracy for _, accuracy in measured], np.float64)
    return arrays


def records_spent_before(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Uploads and bits spent to reach theta^k, for each record k (those of iterations 0..k-1)."""
    def before(cumulative) -> np.ndarray:
        return np.concatenate(([0], np.asarray(cumulative)[:-1])).astype(np.int64)
    return before([r["communications"] for r in records]), before([r["bits"] for r in records])


def records_reach(records: list[dict], f_star: float, tolerance: float) -> dict | None:
    """Iterations, communications and bits (and, with [system] on, simulated seconds) to the first theta^k
    with ``f(theta^k) - f* <= tolerance`` (None if no record gets there)."""
    if f_star is None:
        raise ValueError("the residual needs f_star: pass it, or take smallest_objective(histories)")
    hits = np.flatnonzero(np.array([r["objective"] for r in records]) - f_star <= tolerance)
    if not hits.size:
        return None
    k = int(hits[0])
    communications, bits = records_spent_before(records)
    reached = {"iteration": k, "communications": int(communications[k]), "bits": int(bits[k])}
    if "simulated_seconds" in records[k]:       # cumulative through each iteration: theta^k after k of them
        reached["simulated_seconds"] = records[k - 1]["simulated_seconds"] if k else 0.0
    return reached


def smallest_objective(histories) -> float:
    """The smallest objective in any of ``histories`` (record lists): the reference's estimate of f*."""
    values = [min(r["objective"] for r in records) for records in histories if records]
    if not values:
        raise ValueError("no lazy run with at least one iteration to estimate f* from")
    return float(min(values))


def configured_f_star(runs) -> float | None:
    """The ``run.f_star`` of the runs' configs if they all agree on one, else None."""
    configured = {run.config.get("run", {}).get("f_star") for run in runs}
    return float(configured.pop()) if len(configured) == 1 and None not in configured else None


def f_star_of(runs) -> float:
    """``f*`` for lazy runs read back together: the one in their configs if they all agree on one, else
    :func:`smallest_objective` of their records."""
    configured = configured_f_star(runs)
    return smallest_objective([run.history for run in runs]) if configured is None else configured


#: A best value of the runs is taken as f* when it is certified within this fraction of the tolerance.
CERTIFIED_FRACTION = 0.1


def best_value_certified(runs, tolerance: float) -> bool:
    """Whether the smallest objective of ``runs`` is f* to within ``CERTIFIED_FRACTION * tolerance``.

    For a convex model (its registry entry says so), f = sum_m f_m, each f_m convex plus (l2 / 2) ||theta||^2,
    is mu-strongly convex with mu = M l2, so at the best iterate theta: f(theta) - f* <= ||grad f(theta)||^2 /
    (2 mu). A non-convex model's best value is never certified."""
    best = min(((r["objective"], r["grad_norm_sq"], run) for run in runs for r in run.history),
               key=lambda item: item[0], default=None)
    if best is None:
        return False
    model = MODELS.get((best[2].config.get("model") or {}).get("name", ModelConfig().name))
    if model is None or not model.convex:
        return False
    settings = best[2].config.get("lazy", {})
    mu = settings.get("n_workers", 0) * settings.get("l2", 0.0)
    return mu > 0 and best[1] / (2 * mu) <= CERTIFIED_FRACTION * tolerance


def own_best(runs, f_star: float) -> set[int]:
    """The indices of the runs that attain ``f_star`` themselves (compared with f* they reach 0)."""
    return {index for index, run in enumerate(runs) if run.history
            and min(r["objective"] for r in run.history) <= f_star}


#: The footnote of a "-" where a run would be compared with its own best value.
OWN_BEST_NOTE = ("-: this run attains f_best, the best value of these runs, so it would be compared with itself; "
                 "give run.f_star (e.g. from L-BFGS) for a true residual")


def summarize(history: list[dict]) -> dict:
    """The last objective, gradient norm, uploads and bits; the smallest objective; test accuracies."""
    if not history:
        return {}
    last = history[-1]
    summary = {"final_objective": last["objective"], "final_grad_norm_sq": last["grad_norm_sq"],
               "communications": last["communications"], "bits": last["bits"],
               "min_objective": float(min(r["objective"] for r in history))}
    summary.update({key: value for key, value in history[0].items() if key.startswith("bits_per_upload_")})
    accuracies = [r["test_accuracy"] for r in history if "test_accuracy" in r]
    final = last.get("final_test_accuracy", accuracies[-1] if accuracies else None)
    if final is not None:
        summary["final_test_accuracy"] = final
        summary["best_test_accuracy"] = max(accuracies + [final])
    return summary


def progress_text(record: dict, state: dict) -> str:
    """The progress bar's text after ``record``: objective, gradient norm, bits and the last accuracy
    (after the last iteration, the one at the final theta^K that the summary and tables report)."""
    for key in ("test_accuracy", "final_test_accuracy"):        # the record's test_accuracy is at theta^k
        if key in record:
            state["accuracy"] = record[key]
    accuracy = f"  acc {state['accuracy']:.4f}" if "accuracy" in state else ""
    return (f"f {record['objective']:.6g}  |grad|^2 {record['grad_norm_sq']:.3g}  "
            f"bits {record['bits']:.3g}{accuracy}")


def achieved(summary: dict) -> list[str]:
    """What the run achieved, for the command line's closing line."""
    if "final_objective" not in summary:
        return []
    said = [f"f {summary['final_objective']:.8g}, uploads {summary['communications']}, bits {summary['bits']:.4g}"]
    if "bits_per_upload_b" in summary:          # lazy.bits_per_upload: the b it chose
        said.append(f"b = {summary['bits_per_upload_b']} for {summary['bits_per_upload_achieved']:.6g} bits per "
                    f"upload (budget {summary['bits_per_upload_budget']:.6g})")
    return said


def compare(runs, targets: dict) -> tuple[str, list[str], list[list[str]]]:
    """The `fedsim compare` table of lazy runs: iterations, uploads and bits to the target residual; when a run
    has the simulated clock ([system]), the simulated seconds to it too. A run.f_star above the smallest f the
    runs reached (no lower bound of f) is said in a note."""
    target = targets["residual"]
    usable = [run for run in runs if run.history]
    f_star = f_star_of(usable) if usable else math.nan
    honest = configured_f_star(usable) is not None or best_value_certified(usable, target)
    hidden = set() if honest else own_best(runs, f_star)
    simulated = any("simulated_seconds" in r for run in runs for r in run.history[:1])
    rows = []
    for index, run in enumerate(runs):
        history = [] if index in hidden else run.history
        reached = records_reach(history, f_star, target) if history else None
        final = (run.summary or {}).get("final_test_accuracy")
        if final is None:
            measured = [r["test_accuracy"] for r in run.history if "test_accuracy" in r]
            final = measured[-1] if measured else None
        rows.append(compare_row(run, cell(final, ".4f"),
                                cell(history[-1]["objective"] - f_star if history else None, ".3e"),
                                cell(reached and reached["iteration"], "d"),
                                cell(reached and reached["communications"], "d"),
                                cell(reached and reached["bits"], ".4g"),
                                *([cell(reached and reached.get("simulated_seconds"), ".4g")] if simulated else []),
                                cell(run.history[-1]["bits"] if run.history else None, ".4g")))
    name = "f*" if honest else "f_best"
    given = sorted({run.config.get("run", {}).get("f_star") for run in usable} - {None})
    differ = (f"\nnote: the runs' run.f_star differ ({', '.join(f'{value:g}' for value in given)}): none is used"
              if len(given) > 1 else "")
    lowest = smallest_objective([run.history for run in usable]) if usable else math.nan
    above = (f"\nnote: run.f_star = {float(f_star)!r} is above the smallest f these runs reached, {float(lowest)!r}: "
             f"it is no lower bound of f, and a run below it counts as reaching the target" if f_star > lowest else "")
    title = (f"lazy runs (target: f - f* <= {target:g}; f* = {f_star:.12g}){above}" if honest else
             f"lazy runs (target: f - f_best <= {target:g}; f_best = {f_star:.12g}, the best value of these runs, "
             f"not certified as f*)" + differ + (f"\n{OWN_BEST_NOTE}" if hidden else ""))
    return compare_table(title, "iterations", ["final acc", f"final f - {name}", "its to target", "uploads to target",
                                               "bits to target", *(["simulated s to target"] if simulated else []),
                                               "bits total"], rows)


def unused_settings(config: dict) -> set[str]:
    """What of a run's config (parsed TOML) its lazy method ignores: the compressors' tables (federated's),
    ``lazy.bits`` unless it quantizes (qgd, laq, slaq), ``lazy.minibatch_size`` unless it samples minibatches
    (slaq)."""
    from fedsim.algorithms.lazy.config import RULES
    from fedsim.config import COMPRESSOR_TABLES
    rule = RULES.get((config.get("lazy") or {}).get("method"))
    if rule is None:
        return set(COMPRESSOR_TABLES)
    return set(COMPRESSOR_TABLES) | ({"lazy.bits"} if rule.upload != "quantized" else set()) | (
        {"lazy.minibatch_size"} if rule.gradient == "full" else set())


REPORT = Report(
    clients_word="workers", summarize=summarize, progress=progress_text, achieved=achieved, compare=compare,
    figure="lazy_figures",
    metrics=("final_objective", "min_objective", "communications", "bits", "final_test_accuracy",
             "simulated_seconds"),
    curve=("iteration", "objective", "f - f*", "residual"), unused=unused_settings,
    objective=("lazy.l2", "lazy.n_workers"),   # f = sum over the M workers of their mean loss + (l2 / 2)||theta||^2
    fields={"iteration": (int, True), "objective": (float, True), "grad_norm_sq": (float, True),
            "communications": (int, True), "bits": (int, True), "uploads": (list, False),
            **dict.fromkeys(("aggregate_norm_sq", "test_accuracy", "final_test_accuracy", "simulated_seconds",
                             "time"), (float, False))})
