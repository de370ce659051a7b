"""The README's tables of the examples' results are what the examples print (issue #14).

Each table is checked against a fresh run of the command the README gives for it, taken from the README
itself (the last ``python examples/...`` command before the table), run as a subprocess into a temporary
folder: every cell must be the example's number as the README writes it (integers exactly, ratios and
accuracies to the README's decimals, ``1.33 M`` as millions to its decimals). The README's f* of the LAQ
experiment, the STC seed experiment's sentence and the LAQ bits sweep's sentence are checked the same way.

The LAQ tables are the expensive ones (MNIST: 5 methods x 4,000 full-batch iterations on 10,000 images;
Fashion-MNIST: 3 x 7,000): their methods are shared among as many processes at a time as this test
process has cores (two on the 2-core machine; one, its share, under ``pytest -n 2``), each its own run
folders in the same output folder, then the README's command itself runs, finds every run finished and
prints the table of all of them (with one process, the command alone runs them all). The results are
those of one process: every run pins its BLAS threads (``run.blas_threads = 1``), so its history does not
depend on what runs beside it or before it. The LAQ MNIST table and the bits sweep's sentence are one test:
the sweep's b = 4 run has the table's LAQ run's config (same fingerprint, checked on the run folder), so it
is read from the table's folder rather than run twice, whichever pytest-xdist worker runs the test.
"""

import concurrent.futures
import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
TIMEOUT = 1800                    # seconds for one example process; the slowest takes minutes

# (test id, the table's header line in README.md, the example it reports)
TABLES = [
    ("stc-synthetic", "| method | test accuracy | bits up | bits down |", "stc_mnist.py"),
    ("stc-fashion-mnist", "| method | test accuracy after 100 rounds | bits up | bits down |", "stc_mnist.py"),
    ("laq-mnist", "| method | iterations to f - f* <= 1e-6 | communications | bits | fewer communications than GD "
                  "| fewer bits than GD | accuracy |", "laq_mnist.py"),
    ("laq-fashion-mnist", "| method (Fashion-MNIST, alpha 0.01, f* from L-BFGS) | iterations to 1e-6 | "
                          "communications | bits | fewer communications | fewer bits | accuracy |", "laq_mnist.py"),
]
# The columns of a LAQ table after the method, as keys of the example's table.json rows.
LAQ_COLUMNS = ("iterations", "communications", "bits", "communications_saving", "bits_saving", "final_accuracy")
# The columns of an STC table after the method, as keys of a run's summary.json.
STC_COLUMNS = ("final_test_accuracy", "bits_up", "bits_down")


# ---------------------------------------------------------------------------------------------------------
# the README


def commands(text: str) -> list[tuple[int, list[str]]]:
    """Every example command of a README text, with its position: inline (`python examples/...`, possibly
    over several lines) and in code blocks (a line, with backslash continuations, without its comment)."""
    found = [(match.start(), match.group(1)) for match in re.finditer(r"`(python examples/[^`]+)`", text)]
    for match in re.finditer(r"^(python examples/(?:[^\n]*\\\n)*[^\n]*)$", text, flags=re.MULTILINE):
        found.append((match.start(), match.group(1).replace("\\\n", " ").split("#", 1)[0]))
    return sorted((position, shlex.split(command)) for position, command in found)


def readme_table(text: str, header: str) -> dict:
    """The table of ``text`` whose header line is ``header``: its rows (the method's cell -> the other cells),
    the command that precedes it, and the text between that command and the table."""
    assert text.count(header + "\n") == 1, f"README.md: the table {header!r} is missing or repeated"
    start = text.index(header + "\n")
    lines = text[start:].splitlines()
    assert re.fullmatch(r"\|(-+:?\|)+", lines[1]), lines[1]
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == header.count("|") - 1, line
        rows[cells[0]] = cells[1:]
    before = [(position, command) for position, command in commands(text) if position < start]
    assert before, f"README.md: no example command before the table {header!r}"
    position, command = before[-1]
    return {"rows": rows, "command": command, "prose": text[position:start]}


def formatted_like(cell: str, value) -> str:
    """``value`` written the way ``cell`` is: the same decimals, thousands separated by commas, and the
    cell's unit (" M": millions; "x": a ratio); compare with ``cell``."""
    match = re.fullmatch(r"[0-9,]+(?:\.([0-9]+))?( M|x)?", cell)
    assert match, f"README.md: {cell!r} is not a number the test knows how to read"
    decimals, unit = len(match.group(1) or ""), match.group(2) or ""
    if value is None:
        return "(none)"
    if isinstance(value, int) and not unit and not decimals:
        return f"{value:,}"
    return f"{value / (1e6 if unit == ' M' else 1):,.{decimals}f}{unit}"


def number(value, spec: str) -> str:
    """A number as examples/laq_mnist.py prints it in its table ("-": none)."""
    return "-" if value is None else format(value, spec)


def method_of(cell: str) -> str:
    """The method a row of a table is about: `stc_updown` -> stc_updown, "LAQ (b = 4)" -> laq."""
    return cell.strip("`").split(" (")[0].lower()


# ---------------------------------------------------------------------------------------------------------
# the examples


def example_command(command: list[str], out: Path, *extra: str) -> list[str]:
    """The README's command with this interpreter, then ``extra`` options, the output folder and --quiet."""
    assert command[0] == "python" and command[1].startswith("examples/"), command
    return [sys.executable, str(REPO / command[1]), *command[2:], *extra, "--out", str(out), "--quiet"]


def run(command: list[str], environment: dict) -> str:
    finished = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True,
                              timeout=TIMEOUT)
    assert finished.returncode == 0, f"{' '.join(command)}:\n{finished.stdout[-3000:]}\n{finished.stderr[-3000:]}"
    return finished.stdout


@functools.cache
def laq_example():
    """examples/laq_mnist.py as a module (its option parser and configs)."""
    spec = importlib.util.spec_from_file_location("laq_mnist_example", REPO / "examples" / "laq_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def laq_runs(command: list[str], out: Path) -> list[list[str]]:
    """The README's laq_mnist.py ``command`` split into ``SIDE_BY_SIDE`` processes, each running every
    ``SIDE_BY_SIDE``-th method into its folder of ``out`` with f* from its own runs (the table each prints is
    discarded: the command itself then prints the table of all). None with one process at a time: then the
    command alone runs every method, without a process more to start."""
    if SIDE_BY_SIDE == 1:
        return []
    methods = laq_example().parse_args(command[2:]).methods      # as the example reads its options
    return [example_command(command, out, "--methods", *methods[start::SIDE_BY_SIDE], "--f-star-from", "runs")
            for start in range(min(SIDE_BY_SIDE, len(methods)))]


#: Processes run side by side: this test process's share of the cores (pytest-xdist's workers split them).
SIDE_BY_SIDE = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def run_side_by_side(commands: list[list[str]], environment: dict) -> None:
    """Run the commands as processes, in order, ``SIDE_BY_SIDE`` at a time; each must succeed (after a
    failure, those running finish and no other starts)."""
    pool = concurrent.futures.ThreadPoolExecutor(SIDE_BY_SIDE)
    try:
        list(pool.map(functools.partial(run, environment=environment), commands))
    finally:
        pool.shutdown(cancel_futures=True)


def example_environment(request, needs_data: bool) -> dict:
    """The examples' environment: figures without a display, and the shared data folder (the test skips
    without it when ``needs_data``)."""
    environment = dict(os.environ, MPLBACKEND="Agg")
    if needs_data:
        environment["FEDSIM_DATA"] = str(request.getfixturevalue("shared_data"))
    return environment


def printed_rows(printed: str, header: str) -> dict[str, list[str]]:
    """The rows of the table an example printed after its ``header`` line: method -> the other cells."""
    lines = printed[printed.index(header):].splitlines()[1:]
    rows = {}
    for line in lines:
        if set(line) == {"-"}:
            continue
        if not line.strip() or line.startswith(("run folders:", "note:")):
            break
        words = line.split()
        rows[words[0]] = words[1:]
    return rows


# ---------------------------------------------------------------------------------------------------------
# the runs of the LAQ MNIST table and of the bits sweep, made once for both

LAQ_MNIST = "laq-mnist"


def laq_mnist_and_sweep_runs(command: list[str], out: Path, environment: dict) -> tuple[str, dict[int, Path]]:
    """The README's LAQ MNIST ``command`` into ``out`` and the bits sweep's LAQ runs, each run once: the
    sweep's runs whose config is not one of the table's (``fedsim run`` with the sweep's settings) and the
    table's methods (:func:`laq_runs`) side by side, then the command itself. What the command printed, and
    the run folder of each of the sweep's LAQ runs by bits (b = 4 is the table's LAQ run: same config)."""
    from fedsim.config import config_fingerprint
    from fedsim.sweeps import load_sweep

    options = laq_example().parse_args(command[2:])
    table_runs = {config_fingerprint(laq_example().config_of(options, method)): out / method
                  for method in options.methods}
    sweep = load_sweep(REPO / "examples" / "sweeps" / "laq_bits.toml")
    assert sweep.base.startswith("preset "), sweep.base
    commands, sweep_runs, fingerprints = [], {}, {}
    for planned in sweep.runs:
        if planned.config.lazy.method != "laq":
            continue
        bits = planned.config.lazy.bits
        fingerprints[bits] = config_fingerprint(planned.config)
        shared = table_runs.get(fingerprints[bits])
        sweep_runs[bits] = shared or out.parent / f"sweep-b{bits}"
        if shared is None:
            commands.append([sys.executable, "-m", "fedsim", "run", "--preset", sweep.base.removeprefix("preset "),
                             "--quiet", "--out", str(sweep_runs[bits])] +
                            [part for key, value in planned.overrides for part in ("--set", f"{key}={value}")])
    run_side_by_side(commands + laq_runs(command, out), environment)
    printed = run(example_command(command, out), environment)
    for bits, folder in sweep_runs.items():            # each folder holds the sweep's run, shared or not
        assert json.loads((folder / "meta.json").read_text())["config_sha256"] == fingerprints[bits], (bits, folder)
    return printed, sweep_runs


# ---------------------------------------------------------------------------------------------------------
# the tests


def check_table(rows: dict, values: dict, columns: tuple[str, ...]) -> list[str]:
    """Each differing cell of a README table against the example's values (method -> {column: value})."""
    differences = []
    assert sorted(map(method_of, rows)) == sorted(values), (list(rows), list(values))
    for label, cells in rows.items():
        for column, cell in zip(columns, cells):
            expected = formatted_like(cell, values[method_of(label)][column])
            if cell != expected:
                differences.append(f"{label}, {column}: README {cell}, the example {expected}")
    return differences


def laq_table_differences(table: dict, printed: str, out: Path) -> list[str]:
    """Each difference between a README LAQ ``table`` and the laq_mnist.py run in ``out`` that ``printed``
    it (after checking that the printed table is the saved one), f* included."""
    saved = json.loads((out / "table.json").read_text())
    printed_table = printed_rows(printed, "method   iterations")
    values = {row["method"]: row for row in saved["table"]}
    assert list(printed_table) == list(values)
    for method, cells in printed_table.items():       # the printed table is the saved one
        row = values[method]
        assert cells[:6] == [number(row[key], ",") for key in LAQ_COLUMNS[:3]] + [
            number(row[key], ".1f") for key in LAQ_COLUMNS[3:5]] + [f"{row['final_accuracy']:.4f}"], method
    differences = check_table(table["rows"], values, LAQ_COLUMNS)
    for claimed in re.findall(r"\(([0-9]+\.[0-9]{6,})\)", table["prose"]):     # f*, to the README's digits
        if claimed != f"{saved['f_star']:.{len(claimed.split('.')[1])}f}":
            differences.append(f"f*: README {claimed}, the example {saved['f_star']:.12g}")
    assert f"f* = {saved['f_star']:.12g}" in printed
    return differences


@pytest.mark.slow
@pytest.mark.parametrize("name, header, example", [table for table in TABLES if table[0] != LAQ_MNIST],
                         ids=[name for name, _, _ in TABLES if name != LAQ_MNIST])
def test_readme_table_is_what_the_example_prints(name, header, example, tmp_path, request):
    table = readme_table(README.read_text(), header)
    command, out = table["command"], tmp_path / "out"
    assert command[1] == f"examples/{example}", (name, command)
    env = example_environment(request, needs_data="synthetic" not in command)
    if example == "stc_mnist.py":
        printed = run(example_command(command, out), env)
        printed_table = printed_rows(printed, "method           rounds")
        values = {}
        for method in printed_table:
            summary = json.loads((out / method / "summary.json").read_text())
            # the printed table shows the summary's integers as they are, its accuracy to 4 decimals
            assert printed_table[method][2:4] == [f"{summary['bits_up']:,}", f"{summary['bits_down']:,}"], method
            values[method] = summary
        differences = check_table(table["rows"], values, STC_COLUMNS)
    else:
        run_side_by_side(laq_runs(command, out), env)
        differences = laq_table_differences(table, run(example_command(command, out), env), out)
    assert not differences, f"README.md's table for `{' '.join(command)}` is out of date:\n" + "\n".join(differences)


@pytest.mark.slow
def test_readme_stc_seed_experiment_sentence(tmp_path, request):
    """ "300 rounds reach **79.3% test accuracy** (0.7931) (81.2% on the first 5,000 training samples), with
    4.0 Mbit sent up and 5.6 Mbit down in all (the paper's estimate for the upstream: 3.1 Mbit)" against the
    section's command with that many rounds."""
    text = README.read_text()
    section = text[text.index("### The STC seed experiment"):text.index("All methods on the same data")]
    sentence = (r"(\d+) rounds reach \*\*([0-9.]+)% test accuracy\*\* \((0\.[0-9]+)\) \(([0-9.]+)% on the first "
                r"([0-9,]+) training samples\), with ([0-9.]+) Mbit sent up and ([0-9.]+) Mbit down in all \(the "
                r"paper's estimate for the upstream: ([0-9.]+) Mbit\)")
    claim = re.search(sentence.replace(" ", r"\s+"), section)          # the README wraps it anywhere
    assert claim, "README.md: the STC seed experiment's sentence of results is not where the test looks"
    rounds, percent, accuracy, train_percent, train_samples, up, down, estimate = claim.groups()
    command = next(command for _, command in commands(section) if f"--rounds {rounds}" in " ".join(command))
    out = tmp_path / "out"
    run(example_command(command, out), example_environment(request, needs_data=True))
    folder = out / "stc_updown"
    summary = json.loads((folder / "summary.json").read_text())
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    evaluated = int(re.search(r"^eval_train_samples = ([0-9]+)", (folder / "config.toml").read_text(),
                              flags=re.MULTILINE).group(1))
    assert summary["completed"] == int(rounds)

    def mbit(claimed, bits):
        return claimed, f"{bits / 1e6:.{len(claimed.split('.')[1])}f}"
    measured = {"test accuracy %": (percent, f"{100 * summary['final_test_accuracy']:.{len(percent.split('.')[1])}f}"),
                "test accuracy": (accuracy, f"{summary['final_test_accuracy']:.{len(accuracy) - 2}f}"),
                "training accuracy %": (train_percent,
                                        f"{100 * history[-1]['train_accuracy']:.{len(train_percent.split('.')[1])}f}"),
                "training samples evaluated": (train_samples, f"{evaluated:,}"),
                "Mbit up": mbit(up, summary["bits_up"]), "Mbit down": mbit(down, summary["bits_down"]),
                "the paper's estimate, Mbit up": mbit(estimate, sum(r["bits_up_analytic"] for r in history))}
    differences = [f"{what}: README {claimed}, the example {got}" for what, (claimed, got) in measured.items()
                   if claimed != got]
    assert not differences, "README.md's STC seed experiment sentence is out of date:\n" + "\n".join(differences)


@pytest.mark.slow
def test_readme_laq_mnist_table_and_bits_sweep_sentence(tmp_path, request):
    """The LAQ MNIST table, as test_readme_table_is_what_the_example_prints checks the others, and "b = 8
    and b = 4 reach the residual ... with 453 and 505 uploads ..., while b = 2 does not converge: f climbs
    above 1,000 within 400 iterations, peaks at 5,074 and ends at 1,945 after 4,000" against the sweep
    file's three LAQ runs: one test, so that the runs they share (the sweep's b = 4 run is the table's LAQ
    run) are made once whichever pytest-xdist worker runs it."""
    from fedsim.algorithms.lazy import records_reach
    text = README.read_text()
    header = next(header for name, header, _ in TABLES if name == LAQ_MNIST)
    table = readme_table(text, header)
    command, out = table["command"], tmp_path / "out"
    assert command[1] == "examples/laq_mnist.py", command
    printed, runs = laq_mnist_and_sweep_runs(command, out, example_environment(request, needs_data=True))
    differences = laq_table_differences(table, printed, out)
    assert not differences, f"README.md's table for `{' '.join(command)}` is out of date:\n" + "\n".join(differences)

    section = text[text.index("LAQ's bits (`fedsim sweep examples/sweeps/laq_bits.toml"):]
    sentence = (r"b = 8 and b = 4 reach the residual \(f - f\* <= 1e-([0-9]+), with the f\* of the LAQ table above\) "
                r"with ([0-9,]+) and ([0-9,]+) uploads .*?\*\*b = 2 does not converge\*\*: f climbs above ([0-9,]+) "
                r"within ([0-9,]+) iterations, peaks at ([0-9,]+) and ends at ([0-9,]+) after ([0-9,]+)")
    claim = re.search(sentence.replace(" ", r"\s+"), section, flags=re.DOTALL)
    assert claim, "README.md: the LAQ bits sweep's sentence is not where the test looks"
    exponent, uploads_8, uploads_4, above, within, peak, final, iterations = claim.groups()
    f_star = float(re.search(r"f\* is the smallest objective any of the five runs reached \(([0-9.]+)\)",
                             text).group(1))
    assert sorted(runs) == [2, 4, 8]
    histories = {bits: [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
                 for bits, folder in runs.items()}
    tolerance = 10.0 ** -int(exponent)
    reached = {bits: records_reach(histories[bits], f_star, tolerance) for bits in (8, 4, 2)}
    objective = [row["objective"] for row in histories[2]]
    first_above = next((row["iteration"] for row in histories[2] if row["objective"] > int(above.replace(",", ""))),
                       None)
    measured = {"b = 8 uploads": (uploads_8, f"{reached[8]['communications']:,}" if reached[8] else "never"),
                "b = 4 uploads": (uploads_4, f"{reached[4]['communications']:,}" if reached[4] else "never"),
                "b = 2 reaches the residual": ("no", "no" if reached[2] is None else "yes"),
                f"b = 2 above {above} within": (within, within if first_above is not None and
                                                first_above <= int(within.replace(",", "")) else str(first_above)),
                "b = 2 peak": (peak, f"{max(objective):,.0f}"),
                "b = 2 final": (final, f"{objective[-1]:,.0f}"),
                "iterations": (iterations, f"{len(histories[2]):,}")}
    differences = [f"{what}: README {claimed}, measured {got}" for what, (claimed, got) in measured.items()
                   if claimed != got]
    assert not differences, "README.md's LAQ bits sweep sentence is out of date:\n" + "\n".join(differences)
