"""The STC paper's central claim, by its own protocol: under non-IID data STC degrades less than FedAvg.

Sattler et al. (arXiv 1903.02891) compare the methods at EQUAL TRAINING ITERATIONS: FedAvg communicates once
every n local iterations (its delay period n), STC every iteration at sparsity p = 1/n (up and down, with error
accumulation on both sides), so both send about the same number of values. This script runs that protocol as
two sweeps (examples/sweeps/stc_paper_softmax.toml and stc_paper_mlp.toml: n = 25, 100, 400; 1, 2, 4 and 10
classes per client; 3 seeds; 2,000 local iterations per client; Fashion-MNIST), then prints the final test
accuracy (mean +- standard deviation over the seeds) of each method at each n and number of classes, each
method's drop from 10 classes to 1, and draws accuracy against classes per client, against iterations and
against the bits sent up. Finished runs are skipped, so a second call only reports.

    python examples/stc_paper_protocol.py                     # both models: about an hour on one core
    python examples/stc_paper_protocol.py --models softmax --workers 2
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SWEEPS = {"softmax": HERE / "sweeps" / "stc_paper_softmax.toml", "mlp": HERE / "sweeps" / "stc_paper_mlp.toml"}
TITLES = {"softmax": "softmax regression", "mlp": "MLP 1,024-200-10 (ReLU)"}
CLASSES = "data.classes_per_client"


def run_sweep(model: str, out: Path, workers: int | None, quiet: bool) -> int:
    """``fedsim sweep`` of the model's sweep file into ``out``; its exit status (it says why it is not 0)."""
    command = [sys.executable, "-m", "fedsim", "sweep", str(SWEEPS[model]), "--out", str(out)]
    command += ["--workers", str(workers)] if workers is not None else []
    command += ["--quiet"] if quiet else []
    return wait_for(command)


def wait_for(command: list[str]) -> int:
    """Run ``command`` to its end; its exit status (killed by a signal: 128 + its number). A Ctrl-C reaches the
    command too (the terminal's process group): the sweep stops at a step boundary and saves its checkpoints
    while this script waits for it, instead of killing it (as subprocess.run does a quarter second later)."""
    process = subprocess.Popen(command)
    while True:
        try:
            status = process.wait()
            break
        except KeyboardInterrupt:
            continue
    return 128 - status if status < 0 else status


def series_name(values: dict) -> tuple[str, int]:
    """("FedAvg n = 25" or "STC p = 1/25", n) of a run's axis values."""
    if values["federated.method"] == "fedavg":
        n = int(values["federated.local_iterations"])
        return f"FedAvg n = {n}", n
    n = round(1 / float(values["federated.p_up"]))
    return f"STC p = 1/{n}", n


def collect_runs(out: Path) -> tuple[dict, dict, list[str]]:
    """({series: {classes: [run result, one per seed]}} of the sweep folder ``out``'s completed runs, the number
    of runs planned per (series, classes), and one line per run left out (diverged, failed) saying why); a
    folder without a sweep, or with runs not yet run, is a UsageError (one line)."""
    from fedsim.errors import UsageError
    from fedsim.runs import RunFolderError
    from fedsim.sweeps.folder import MANIFEST
    from fedsim.sweeps.report import collect, left_out

    first = "run the sweeps first (this command without --report-only)"
    if not (out / MANIFEST).is_file():
        raise UsageError(f"{out} is not a sweep folder (no {MANIFEST} in it): {first}")
    _, entries = collect(out)
    waiting = [entry for entry in entries if entry["status"] in ("pending", "interrupted")]
    if waiting:
        raise UsageError(f"{out}: {len(waiting)} of its {len(entries)} runs are not finished: {first}")
    series: dict = {}
    planned: dict = {}
    kept = []
    for entry in entries:
        if entry["problem"]:
            raise RunFolderError(entry["problem"])
        name, _ = series_name(entry["values"])
        cell = (name, int(entry["values"][CLASSES]))
        planned[cell] = planned.get(cell, 0) + 1
        result = entry["result"]
        if result is None or result.summary is None or result.summary.get("status") != "completed":
            continue
        kept.append({"run": entry["folder"]})
        series.setdefault(name, {}).setdefault(cell[1], []).append(result)
    series = dict(sorted(series.items(), key=lambda item: (item[0].startswith("STC"), len(item[0]), item[0])))
    return series, planned, left_out(entries, kept)


def points(value: float) -> str:
    """A difference in points to one decimal, never "-0.0"."""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def accuracy(results) -> tuple[float, float]:
    values = np.array([100 * result.summary["final_test_accuracy"] for result in results])
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def table(model: str, series: dict, planned: dict) -> list[str]:
    """The README table of one model: final test accuracy (%) by method and classes per client (mean ± std over
    the completed runs, "(k of m runs)" where fewer than the m planned completed), the drop."""
    classes = sorted({c for per_class in series.values() for c in per_class})
    iterations = next(iter(next(iter(series.values())).values()))[0].history[-1]["iteration"]
    lines = [f"| {TITLES[model]}: test accuracy % after {iterations:,} iterations | "
             + " | ".join(f"{c} class{'es' if c > 1 else ''}" for c in classes)
             + " | drop from 10 classes to 1 | bits up per client |",
             "|---|" + "---:|" * (len(classes) + 2)]
    for name, per_class in series.items():
        cells = []
        for c in classes:
            results, wanted = per_class.get(c, []), planned.get((name, c), 0)
            mean, std = accuracy(results) if results else (np.nan, np.nan)
            cells.append("-" if not results else f"{mean:.1f}" + ("" if np.isnan(std) else f" ± {std:.1f}")
                         + (f" ({len(results)} of {wanted} runs)" if len(results) < wanted else ""))
        ends = [per_class.get(max(classes)), per_class.get(min(classes))]
        drop = points(accuracy(ends[0])[0] - accuracy(ends[1])[0]) if all(ends) else "-"
        bits = np.mean([result.summary["bits_up"] / result.history[0]["participants"]
                        for results in per_class.values() for result in results])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {drop} | {bits / 1e6:.2f} M |")
    return lines


def verdict(series: dict) -> list[str]:
    """Per delay n: whether STC at p = 1/n lost less accuracy than FedAvg at n from 10 classes to 1 and 2."""
    lines = []
    for n in sorted({series_name_n(name) for name in series}):
        fedavg, stc = series.get(f"FedAvg n = {n}"), series.get(f"STC p = 1/{n}")
        if not fedavg or not stc:
            continue
        for few in (1, 2):
            if any(c not in s for s in (fedavg, stc) for c in (few, 10)):
                continue
            drops = [accuracy(s[10])[0] - accuracy(s[few])[0] for s in (fedavg, stc)]
            holds = "holds" if drops[1] < drops[0] else "does not hold"
            lines.append(f"n = {n}, 10 -> {few} class{'es' if few > 1 else ''}: FedAvg loses {points(drops[0])} "
                         f"points, STC {points(drops[1])}: the claim {holds}")
    return lines


def series_name_n(name: str) -> int:
    return int(name.rsplit("/", 1)[-1] if "/" in name else name.rsplit("= ", 1)[-1])


def figures(all_series: dict, out: Path) -> list[Path]:
    """Accuracy against classes per client, and (at 1 class per client) against iterations and bits up: one
    colour per n, STC solid, FedAvg dashed."""
    from matplotlib.figure import Figure

    from fedsim.plot import COLOURS

    models = list(all_series)
    figure = Figure(figsize=(5.5 * len(models), 12), layout="constrained")
    axes = figure.subplots(3, len(models), squeeze=False)
    for column, model in enumerate(models):
        delays = sorted({series_name_n(name) for name in all_series[model]})
        for name, per_class in all_series[model].items():
            style = {"color": COLOURS[delays.index(series_name_n(name))],
                     "linestyle": "-" if name.startswith("STC") else "--"}
            classes = sorted(per_class)
            means, stds = zip(*(accuracy(per_class[c]) for c in classes))
            axes[0, column].errorbar(classes, means, yerr=stds, marker="o", capsize=3, label=name, **style)
            for index, result in enumerate(per_class[min(classes)]):
                evaluated = [r for r in result.history if "test_accuracy" in r]
                sent = np.cumsum([r["bits_up"] for r in result.history])
                sent = [sent[i] for i, r in enumerate(result.history) if "test_accuracy" in r]
                label = name if index == 0 else None
                accuracies = [100 * r["test_accuracy"] for r in evaluated]
                axes[1, column].plot([r["iteration"] for r in evaluated], accuracies, label=label, **style)
                axes[2, column].plot(sent, accuracies, label=label, **style)
        axes[0, column].set(title=TITLES[model], xlabel="classes per client", ylabel="test accuracy % (±1 std)",
                            xscale="log", xticks=[1, 2, 4, 10], xticklabels=["1", "2", "4", "10"])
        axes[1, column].set(title=f"{TITLES[model]}, 1 class per client (3 seeds)", xlabel="local iterations",
                            ylabel="test accuracy %")
        axes[2, column].set(title=f"{TITLES[model]}, 1 class per client (3 seeds)",
                            xlabel="bits sent up, all clients", ylabel="test accuracy %", xscale="log")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=3, fontsize="small")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "stc_paper_protocol.png", out / "stc_paper_protocol.svg"]
    for path in paths:
        figure.savefig(path, dpi=110)
    return paths


def main(argv=None) -> int:
    from fedsim.programs import OneLineParser, one_line_errors

    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    parser.add_argument("--out", type=Path, default=Path("runs") / "stc-paper", help="sweep folders go here")
    parser.add_argument("--workers", type=int, help="processes per sweep (default: fedsim sweep's)")
    parser.add_argument("--report-only", action="store_true", help="report the finished runs; run nothing")
    parser.add_argument("--quiet", action="store_true")
    options = parser.parse_args(argv)

    def run_and_report() -> int:
        all_series, left = {}, []
        for model in options.models:
            folder = options.out / model
            if not options.report_only:
                status = run_sweep(model, folder, options.workers, options.quiet)
                if status:
                    return status       # the sweep said why
            series, planned, missing = collect_runs(folder)
            left += missing
            if series:
                all_series[model] = series
                print("\n".join(table(model, series, planned)), end="\n\n")
                print("\n".join(verdict(series)), end="\n\n")
        if all_series:
            print("figures:", *figures(all_series, options.out))
        for line in left:       # a diverged or failed run: named, not silently left out of a mean
            print(f"stc_paper_protocol.py: {line}; left out of the table", file=sys.stderr)
        return 1 if left else 0

    return one_line_errors("stc_paper_protocol.py", run_and_report)


if __name__ == "__main__":
    sys.exit(main())
