"""The LAQ reference experiment: GD, QGD, LAG-WK, LAG-PS and LAQ, one run folder each (softmax regression, or
``--model``).

Sun, Chen, Giannakis, Yang, arXiv 1909.07588 (LAQ) and Chen et al., arXiv 1805.09965 (LAG). A thin layer
over the same experiment API as ``fedsim run``: the settings come from the dataset's preset (``laq-mnist``
for MNIST and Fashion-MNIST: the reference's M = 10 contiguous shards, alpha = 0.02, b = 4, D = 10,
xi = 0.8, C = 100, l2 = 0.01, 4,000 full-batch iterations, pixels / 255; ``laq-synthetic`` offline), then
the options below. Each method runs into ``OUT/<method>`` as ``fedsim run`` would: run the same command
again to resume an interrupted method (Ctrl-C saves and stops) or to skip finished ones. Run::

    python examples/laq_mnist.py --dataset mnist --train-split test     # ~4 min per method (see below)
    python examples/laq_mnist.py --dataset fashion-mnist --train-split test --alpha 0.01 --iterations 7000 \\
        --methods gd lag-wk laq --f-star-from lbfgs
    python examples/laq_mnist.py --dataset synthetic --methods gd laq    # offline, seconds
    python examples/laq_mnist.py --dataset mnist --train-split test --model mlp --hidden 200   # the network

``--model`` chooses a registered model (the preset's, softmax regression, by default) and ``--hidden`` the
widths of its hidden layers (default 200 for a model with hidden layers, the reference's network): the
``[model]`` table of every run.

Expected time, measured on this project's 2-core machine with one BLAS thread per run while other jobs
shared it: the reference's 4,000 iterations on the 10,000-image split took 90-180 s per method, 11 minutes
for the five default methods (`fedsim sweep examples/sweeps/laq_bits.toml --workers 2` runs five in 7
minutes); the 60,000-image train split takes about six times as long.

Output: the paper-style table (iterations, communications and bits until the residual f - f* first drops
to the tolerance, final accuracy) in ``OUT/table.txt``, and ``fedsim plot``'s figures of residual and
gradient norm against iterations, communications and bits, and of the upload events.

Choices to know about
---------------------
* f = sum_m f_m (the sum over workers, as in the papers' analysis). The reference code logged the mean
  (sum / M), so its residual threshold 1e-6 is 10x looser than the same number here.
* f* is, by default, the smallest objective value seen across the runs of this invocation (the
  reference's choice). The run that attains it reaches residual 0 by construction, so a method "reaches
  1e-6" only relative to the best of the compared runs, which is meaningful only if that run converged
  far below 1e-6 (it does on MNIST; on Fashion-MNIST at small alpha it does not). ``--f-star-from lbfgs``
  also minimizes f with SciPy's L-BFGS-B until it stalls and takes the smaller of that and the runs'
  best; ``--f-star`` gives f* outright (at most the smallest objective of the runs: else an error).
* Communications and bits are those spent *before* the first iterate within the tolerance.
* With ``--train-split test`` the test split is both training and evaluation data: the "test" accuracy is
  then a training accuracy.
* Step size check: L is the Hessian bound ``L_f = 0.5 lambda_max(sum_m X~_m^T X~_m / n_m) + M l2``
  (X~ = [X, 1]; :func:`fedsim.algorithms.lazy.smoothness_bounds`, computed exactly); alpha > 2 / L_f gives a
  warning (GD is then not guaranteed to converge). The bound takes the softmax curvature at its worst
  (1/2); the curvature at theta = 0 (uniform predictions, exactly ``lambda_max / C + M l2``) is printed too.
  A model without a smoothness bound (the MLP) gets estimates of the curvature at theta^0 instead
  (:func:`fedsim.algorithms.lazy.smoothness_of`, the L_m LAG-PS uses), checked and warned about alike, and
  said to be estimates. Its f* is never certified (it is not convex): L-BFGS-B gives a local minimum.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

PRESETS = {"mnist": "laq-mnist", "fashion-mnist": "laq-mnist", "synthetic": "laq-synthetic"}
DEFAULT_METHODS = ("gd", "qgd", "lag-wk", "lag-ps", "laq")
AGAIN = "this command again"        # what continues the runs after an interrupt


def parse_args(argv=None) -> argparse.Namespace:
    from fedsim.algorithms.lazy import METHODS
    from fedsim.programs import OneLineParser, add_model_options
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=sorted(PRESETS),
                        help="the data; it chooses the preset whose settings are the defaults (default mnist)")
    parser.add_argument("--train-split", choices=["train", "test"],
                        help="'test' trains on the 10,000-image test split (10 shards of 1,000)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    parser.add_argument("--iterations", type=int, help="iterations (default: the preset's)")
    parser.add_argument("--alpha", type=float, help="step size (lazy.step_size; default: the preset's)")
    parser.add_argument("--bits", type=int, help="b, bits per entry of qgd, laq, slaq (lazy.bits)")
    parser.add_argument("--minibatch", type=int, help="slaq: samples per worker per iteration")
    parser.add_argument("--eval-every", type=int, help="test accuracy every this many iterations")
    add_model_options(parser)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other setting, as for `fedsim run` (e.g. lazy.history_length=5)")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="residual f - f* of the table")
    parser.add_argument("--f-star", type=float, default=None, help="known optimal value (overrides --f-star-from)")
    parser.add_argument("--f-star-from", default="runs", choices=["runs", "lbfgs"],
                        help="f* = the smallest objective seen in these runs, or the smaller of that and an "
                             "L-BFGS-B minimum of f")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="a folder searched first for dataset files")
    parser.add_argument("--out", default="runs/laq_mnist", help="folder of the run folders, table and figures")
    parser.add_argument("--quiet", action="store_true", help="no progress, only the table")
    return parser.parse_args(argv)


def config_of(args, method: str):
    """The experiment of one method: the dataset's preset, then the options (as `fedsim run` does)."""
    from fedsim.programs import model_overrides
    from fedsim.config import load_preset
    overrides = [("data.dataset", args.dataset), ("seed", args.seed), ("lazy.method", method)]
    overrides += model_overrides(args)
    for option, setting in (("iterations", "lazy.iterations"), ("alpha", "lazy.step_size"), ("bits", "lazy.bits"),
                            ("minibatch", "lazy.minibatch_size"), ("eval_every", "lazy.eval_every"),
                            ("train_split", "data.train_split")):
        if getattr(args, option) is not None:
            overrides.append((setting, getattr(args, option)))
    if args.data_dir is not None:
        overrides.append(("data.data_dir", str(Path(args.data_dir).expanduser().resolve())))
    return load_preset(PRESETS[args.dataset], overrides + list(args.overrides))


def load(config):
    """The training data and its split among the workers, as the runs see them."""
    from fedsim.experiment_data import load_data, split_among_clients
    data = load_data(config.data, config.pipeline, seed=config.seed, progress=False)
    return data, split_among_clients(config.data, data, config.n_clients, seed=config.seed,
                                     clients_setting=config.clients_setting)


def check_step_size(config, data, partition) -> dict:
    """Smoothness of f_m and f (the model's bounds, or its curvature estimates at theta^0), and a warning when
    alpha > 2 / L_f."""
    from fedsim.algorithms.lazy import smoothness_of, stack_shards, starting_point
    from fedsim.rng import RunStreams
    lazy = config.lazy
    model, theta = starting_point(lazy, config.model, data.n_features, data.n_classes)
    smoothness = smoothness_of(model, stack_shards(data.x_train, data.y_train, partition), theta,
                               RunStreams(lazy.seed).generator("curvature"))      # the stream of LazyRun's
    per_worker, total = smoothness.per_worker, smoothness.total
    workers = f"L_m in [{per_worker.min():.4g}, {per_worker.max():.4g}]"
    if smoothness.bound:
        at_zero = (total - lazy.n_workers * lazy.l2) * 2 / data.n_classes + lazy.n_workers * lazy.l2
        found = (f"Hessian bound L_f = {total:.4g} (2 / L_f = {2 / total:.4g}); curvature at theta = 0: "
                 f"{at_zero:.4g} (2 / L = {2 / at_zero:.4g}); {workers}")
        what, outcome = "the Hessian bound of f = sum_m f_m on this data", "is not guaranteed to converge and may"
        extra = {"at_zero": at_zero}
    else:
        found = (f"model {config.model.name!r} has no bound; curvature estimates at theta^0: L_f ~ {total:.4g} "
                 f"(2 / L_f = {2 / total:.4g}); {workers} (estimates, not bounds)")
        what, outcome = "an estimate of the curvature of f = sum_m f_m at theta^0, not a bound", "may"
        extra = {"estimated_at_theta0": True}
    print(f"smoothness: {found}")
    if lazy.step_size > 2 / total:
        warnings.warn(f"step size alpha = {lazy.step_size} exceeds 2 / L_f = {2 / total:.4g} (L_f = {total:.4g}, "
                      f"{what}): gradient descent {outcome} oscillate or diverge", stacklevel=2)
    return {"per_worker": per_worker.tolist(), "total": total, **extra}


def minimize_objective(config, data, partition) -> float:
    """min f = sum_m f_m by SciPy's L-BFGS-B from the runs' theta^0 (one batched gradient per evaluation):
    the minimum for a convex model, a local minimum for another."""
    from scipy.optimize import minimize

    from fedsim.algorithms.lazy import stack_shards, starting_point
    shards = stack_shards(data.x_train, data.y_train, partition)
    model, start = starting_point(config.lazy, config.model, data.n_features, data.n_classes)

    def objective_and_gradient(theta):
        loss, gradients = model.loss_and_grad(theta, shards.x, shards.y, shards.weights)
        return float(loss.sum()), gradients.sum(axis=0)

    result = minimize(objective_and_gradient, start.astype(np.float64), jac=True, method="L-BFGS-B",
                      options=dict(maxiter=5000, maxcor=30, ftol=0.0, gtol=1e-10))
    print(f"L-BFGS-B: f = {result.fun:.12g} after {result.nit} iterations, ||grad f|| = "
          f"{float(np.linalg.norm(result.jac)):.2e} ({result.message})")
    return float(result.fun)


def table(runs, f_star: float, tolerance: float, own_best: set[int] = frozenset()) -> list[dict]:
    """One row per method: cost to reach the tolerance, and the savings against GD; none for the runs
    ``own_best`` (indices of runs that would be compared with their own best value)."""
    from fedsim.algorithms.lazy import records_reach
    rows = []
    for index, run in enumerate(runs):
        history, summary = run.history, run.summary or {}
        point = None if index in own_best else records_reach(history, f_star, tolerance)
        rows.append({
            "method": run.method, "reached": point is not None, "own_best": index in own_best,
            "iterations": None if point is None else point["iteration"],
            "communications": None if point is None else point["communications"],
            "bits": None if point is None else point["bits"],
            "final_residual": history[-1]["objective"] - f_star if history else None,
            "total_communications": history[-1]["communications"] if history else 0,
            "final_accuracy": summary.get("final_test_accuracy", float("nan")),
            "seconds": summary.get("seconds", 0.0), "diverged": run.status == "diverged",
            "completed_iterations": len(history)})
    baseline = next((r for r in rows if r["method"] == "gd" and r["reached"]), None)
    for row in rows:
        for cost in ("communications", "bits"):
            row[f"{cost}_saving"] = (baseline[cost] / row[cost] if baseline and row["reached"] and row[cost]
                                     else None)
    return rows


def format_table(rows: list[dict], tolerance: float, residual: str = "f - f*") -> str:
    def number(value, spec=","):
        return "-" if value is None else format(value, spec)

    header = (f"{'method':<8} {'iterations':>10} {'communications':>15} {'bits':>16} {'comm. saving':>13} "
              f"{'bits saving':>12} {'accuracy':>9} {'seconds':>8}")
    lines = [f"to reach {residual} <= {tolerance:g}:", header, "-" * len(header)]
    for row in rows:
        note = ("  (diverged)" if row["diverged"] else "" if row["reached"] else "  (-: see the note)"
                if row.get("own_best") else f"  (not reached; final residual {row['final_residual']:.3g})")
        lines.append(
            f"{row['method']:<8} {number(row['iterations']):>10} {number(row['communications']):>15} "
            f"{number(row['bits']):>16} {number(row['communications_saving'], '.1f'):>13} "
            f"{number(row['bits_saving'], '.1f'):>12} {row['final_accuracy']:>9.4f} {row['seconds']:>8.1f}{note}")
    return "\n".join(lines)


def oscillation_notes(objectives: dict) -> list[str]:
    """A note for every run whose objective rose in more than 5% of its second half of iterations.

    Gradient descent on a smooth convex f decreases f at every step when alpha < 2 / L; a run that keeps
    going up and down is oscillating (alpha too large for the curvature it meets), and a minimum over
    runs that includes such a run is a poor f*.
    """
    notes = []
    for method, objective in objectives.items():
        second_half = np.asarray(objective)[len(objective) // 2:]
        rises = int(np.sum(np.diff(second_half) > 0))
        if len(second_half) > 10 and rises > 0.05 * (len(second_half) - 1):
            notes.append(f"note: {method}: f rose in {rises} of the last {len(second_half) - 1} iterations - "
                         f"it oscillates (alpha too large for this data?); its values make a poor f*")
    return notes


def main(argv=None) -> dict | int:
    from fedsim.programs import describe_model, one_line_errors, report_outcomes, stopped_at_once
    from fedsim.runs import read_run, run_each

    args = parse_args(argv)
    out = Path(args.out)
    prepared = {}

    def run_all():
        from fedsim.errors import UsageError
        if not (np.isfinite(args.tolerance) and args.tolerance > 0):
            raise UsageError(f"--tolerance must be a finite number > 0, got {args.tolerance}")
        if args.f_star is not None and not np.isfinite(args.f_star):
            raise UsageError(f"--f-star must be a finite number, got {args.f_star}")
        repeated = sorted({method for method in args.methods if args.methods.count(method) > 1})
        if repeated:
            raise UsageError(f"--methods must name each method once; repeated: {', '.join(repeated)}")
        from fedsim.algorithms.lazy import METHODS, RULES, smallest_objective
        minibatch = [method for method in METHODS if RULES[method].gradient == "minibatch"]
        if args.minibatch is not None and not set(minibatch) & set(args.methods):
            raise UsageError(f"--minibatch applies only to {', '.join(minibatch)}, which --methods does not name")
        configs = {method: config_of(args, method) for method in args.methods}
        first = next(iter(configs.values()))
        data, partition = load(first)
        lazy = first.lazy
        print(f"{data.description or data.name}: {len(data.y_train):,} training samples in {len(partition)} shards "
              f"of {min(map(len, partition)):,}-{max(map(len, partition)):,}, {data.n_features} features; "
              f"{describe_model(first.model)}alpha {lazy.step_size:g}, b {lazy.bits}, D {lazy.history_length}, "
              f"xi {lazy.history_weight:g}, C {lazy.max_skips}, l2 {lazy.l2:g}, {lazy.iterations} iterations "
              f"({PRESETS[args.dataset]} preset)")
        if args.dataset != "synthetic" and first.data.train_split == "test":
            print("note: trained on the test split, so the accuracy below is measured on the training data")
        smoothness = check_step_size(first, data, partition)
        stopped = report_outcomes(run_each(configs, out, quiet=args.quiet), prog="laq_mnist.py",
                                  again=AGAIN)
        if stopped is not None:
            return stopped
        runs = [read_run(out / method) for method in args.methods]
        best = smallest_objective([run.history for run in runs])
        if args.f_star is not None and args.f_star > best:        # f* is the minimum: no run gets below it
            raise UsageError(f"--f-star must be at most {best!r}, the smallest objective these runs reached, "
                             f"got {args.f_star!r}")     # exact: the bound said is accepted
        prepared.update(first=first, data=data, partition=partition, smoothness=smoothness, runs=runs)
        return 0

    status = one_line_errors("laq_mnist.py", run_all, interrupted=stopped_at_once(AGAIN))
    if status != 0:
        return status
    return report(args, out, **prepared)


def report(args, out: Path, first, data, partition, smoothness, runs) -> dict:
    """f*, the table, the notes and the figures of the finished runs."""
    from fedsim.algorithms.lazy import f_star_of
    from fedsim.algorithms.lazy.report import best_value_certified, own_best
    from fedsim.plot import plot_runs

    convex = first.model.entry.convex
    if args.f_star is not None:
        f_star, f_star_source = args.f_star, "given (--f-star)"
    elif args.f_star_from == "lbfgs":
        f_star = min(minimize_objective(first, data, partition), f_star_of(runs))
        f_star_source = "the smaller of an L-BFGS-B minimum and the best value of these runs"
        if not convex:
            f_star_source += f" (a local minimum: model {first.model.name!r} is not convex)"
    else:
        f_star, f_star_source = f_star_of(runs), "smallest objective seen in these runs"
    # f* from the runs alone is honest only where ||grad f||^2 / (2 M l2) at the best iterate certifies it to
    # a tenth of the tolerance (a convex model); else the residual is f - f_best and the run attaining it is not
    # compared. L-BFGS-B's minimum is f* only for a convex model.
    honest = (args.f_star is not None or (args.f_star_from == "lbfgs" and convex)
              or best_value_certified(runs, args.tolerance))
    hidden = set() if honest else own_best(runs, f_star)
    rows = table(runs, f_star, args.tolerance, hidden)
    notes = oscillation_notes({run.method: [r["objective"] for r in run.history] for run in runs})
    if not honest and not convex:
        notes.append(f"note: f_best = {f_star:.12g} ({f_star_source}) is not certified as f*: model "
                     f"{first.model.name!r} is not convex, so no value is known to be its minimum; the residuals "
                     f"are f - f_best" + ("; the run attaining it is '-', compared with itself" if hidden else ""))
    elif not honest:
        notes.append(f"note: f_best = {f_star:.12g} is the best value of these runs, not certified as f* (its "
                     f"||grad f||^2 / (2 M l2) is above {args.tolerance / 10:g}): the residuals are f - f_best; "
                     f"the run attaining it is '-', compared with itself (--f-star-from lbfgs gives a true f*)")
    text = "\n".join([format_table(rows, args.tolerance, "f - f*" if honest else "f - f_best")] + notes)
    print(f"\nf* = {f_star:.12g} ({f_star_source})\n{text}")
    (out / "table.txt").write_text(f"f* = {f_star:.12g} ({f_star_source})\n{text}\n")
    (out / "table.json").write_text(json.dumps({"f_star": f_star, "f_star_source": f_star_source,
                                                "smoothness": smoothness, "table": rows, "notes": notes}))
    figures = plot_runs(runs, out, f_star=f_star if honest else None, tolerance=args.tolerance)
    print(f"run folders: {out}/<method>   figures: "
          f"{', '.join(str(path) for path in figures if path.suffix == '.png')}")
    return {"table": rows, "runs": runs, "f_star": f_star, "f_star_source": f_star_source, "figures": figures}


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
