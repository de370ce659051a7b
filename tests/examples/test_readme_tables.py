"""The README's tables of the examples' results are what the examples print (issue #14), and the recorded
runs behind its LAQ tables are what today's code computes (issue #22).

Each table is checked against the command the README gives for it, taken from the README itself (the last
``python examples/...`` command before the table), run as a subprocess into a temporary folder: every cell
must be the example's number as the README writes it (integers exactly, ratios and accuracies to the
README's decimals, ``1.33 M`` as millions to its decimals). The README's f* of the LAQ experiment, the STC
seed experiment's sentence and the LAQ bits sweep's sentence are checked the same way, and the equal-bits
table against the end of what ``fedsim sweep report`` prints after the README's sweep command (seconds).

The STC tables and sentence rerun their commands in full (seconds). The LAQ runs take minutes each (MNIST:
5 methods x 4,000 full-batch float64 iterations on 10,000 images; Fashion-MNIST: 3 x 7,000; the bits
sweep's b = 2 and b = 8: 2 x 4,000), so they are recorded in ``examples/results/`` (made by
``examples/results/record.py``), as the benchmarks' numbers are in ``benchmarks/results/``, and checked in
two steps:

* always: the README's command runs over a copy of the recorded runs (the example finds each run finished
  and prints its table from it; each run's config must be the one the command builds), and each recorded
  run's first iterations (past the first upload that ``max_skips`` forces, and past the history window D)
  are rerun from its config.toml with only ``lazy.iterations`` changed: their records must equal the
  recorded ones bitwise (all but the wall time);
* on demand (``python -m pytest -m reproduce tests/examples/test_readme_tables.py``, deselected by
  setup.cfg's ``addopts``; 16.5 minutes on two busy cores): every recorded run rerun in full, its whole
  history compared bitwise, and so every LAQ number of the README.
"""

import dataclasses
import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import fedsim
from tests.examples.conftest import README_BLAS, REPO, load_example, require_readme_blas

README = REPO / "README.md"
TIMEOUT = 600                     # seconds for one example process
STC, LAQ = "stc_mnist.py", "laq_mnist.py"

# The tables each example reports: test id -> the table's header line in README.md.
STC_TABLES = {"stc-synthetic": "| method | test accuracy | bits up | bits down |",
              "stc-fashion-mnist": "| method | test accuracy after 100 rounds | bits up | bits down |"}
LAQ_TABLES = {"laq-mnist": "| method | iterations to f - f* <= 1e-6 | communications | bits | fewer communications "
                           "than GD | fewer bits than GD | accuracy |",
              "laq-fashion-mnist": "| method (Fashion-MNIST, alpha 0.01, f* from L-BFGS) | iterations to 1e-6 | "
                                   "communications | bits | fewer communications | fewer bits | accuracy |"}
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
# the recorded LAQ runs (examples/results/)

RESULTS = REPO / "examples" / "results"
BITS_SWEEP = "laq-bits"               # the bits sweep's runs that the LAQ MNIST table's recording lacks
#: Iterations of a recorded run rerun always, at least: the first evaluations (every 100 iterations), the
#: history window D filled many times over; longer where needed to reach the first upload max_skips forces.
SHORTEST_PREFIX = 300
#: Every recorded run folder: RESULTS/<recording>/<run>.
RECORDED_RUNS = sorted(meta.parent for meta in RESULTS.glob("*/*/meta.json"))


def recorded_history_file(folder: Path) -> bytes:
    """A recorded run's history.jsonl, as the run wrote it (kept gzipped)."""
    return gzip.decompress((folder / "history.jsonl.gz").read_bytes())


def recorded_history(folder: Path) -> list[dict]:
    """The records of a recorded run."""
    return [json.loads(line) for line in recorded_history_file(folder).splitlines()]


def recorded_fingerprint(folder: Path) -> str:
    """The config sha256 a recorded run started with (its meta.json)."""
    return json.loads((folder / "meta.json").read_text())["config_sha256"]


def unpack(recording: str, out: Path) -> dict[str, Path]:
    """A copy of each run folder of RESULTS/``recording`` in ``out``, its history unpacked: finished run
    folders as the example left them (it skips finished runs). The copies by name."""
    copies = {}
    for folder in sorted(path for path in (RESULTS / recording).iterdir() if path.is_dir()):
        copies[folder.name] = out / folder.name
        shutil.copytree(folder, copies[folder.name], ignore=shutil.ignore_patterns("history.jsonl.gz"))
        (copies[folder.name] / "history.jsonl").write_bytes(recorded_history_file(folder))
    return copies


def first_forced_upload(history: list[dict], max_skips: int) -> int | None:
    """The first iteration at which a worker uploads after ``max_skips`` skips in a row (the upload C forces
    whatever the worker's innovation), or None."""
    last_upload = {}
    for record in history:
        for worker in record["uploads"]:
            if record["iteration"] - last_upload.get(worker, record["iteration"]) == max_skips + 1:
                return record["iteration"]
            last_upload[worker] = record["iteration"]
    return None


def prefix_length(history: list[dict], max_skips: int) -> int:
    """Iterations of a recorded run to rerun always: :data:`SHORTEST_PREFIX`, or to its first forced upload."""
    forced = first_forced_upload(history, max_skips)
    return max(SHORTEST_PREFIX, 0 if forced is None else forced + 1)


def check_recorded_run(folder: Path, out: Path, iterations: int | None) -> None:
    """Rerun the recorded run ``folder`` from its config.toml, with ``lazy.iterations`` = ``iterations``
    (None: its prefix length) and nothing else changed, into ``out``; its records must be the recorded
    run's first ones, bit for bit (all but the wall time)."""
    from fedsim.config import config_fingerprint, load_config_file
    from fedsim.runs import read_run, start_run, strip_wall_time

    recorded = load_config_file(folder / "config.toml")
    assert config_fingerprint(recorded) == recorded_fingerprint(folder), f"{folder}: config.toml is not the run's"
    history = recorded_history(folder)
    summary = json.loads((folder / "summary.json").read_text())
    assert len(history) == summary["completed"] == recorded.lazy.iterations, folder
    iterations = iterations or prefix_length(history, recorded.lazy.max_skips)
    config = load_config_file(folder / "config.toml", [("lazy.iterations", iterations)])
    assert config == dataclasses.replace(recorded, lazy=dataclasses.replace(recorded.lazy, iterations=iterations))
    outcome = start_run(config, out, name=folder.name, quiet=True)
    assert outcome.status == "completed", (folder, outcome.status, outcome.message)
    rerun, expected = strip_wall_time(read_run(out).history), strip_wall_time(history[:iterations])
    if iterations < len(history):
        del rerun[-1]["final_test_accuracy"]      # the evaluation at the rerun's end; the recorded run's came later
    assert len(rerun) == len(expected) == iterations
    differing = next((index for index, (got, want) in enumerate(zip(rerun, expected)) if got != want), None)
    assert differing is None, (f"{folder.parent.name}/{folder.name}: iteration {differing} differs from the "
                               f"recorded run (recorded: {expected[differing]}, today: {rerun[differing]}); if "
                               f"the change is intended, record again: python examples/results/record.py")
    if iterations == len(history):
        summary_now = json.loads((out / "summary.json").read_text())
        assert strip_seconds(summary_now) == strip_seconds(summary), folder


def strip_seconds(summary: dict) -> dict:
    """A summary without its wall-time entries."""
    return {key: value for key, value in summary.items() if key not in ("seconds", "wall_seconds")}


# ---------------------------------------------------------------------------------------------------------
# the tests


def sentence_numbers(section: str, sentence: str, what: str) -> tuple[str, ...]:
    """The numbers (groups) of the regular expression ``sentence`` in ``section``; a space of ``sentence`` is
    any white space (the README wraps a sentence anywhere)."""
    claim = re.search(sentence.replace(" ", r"\s+"), section, flags=re.DOTALL)
    assert claim, f"README.md: {what} is not where the test looks"
    return claim.groups()


def assert_measured(measured: dict[str, tuple[str, str]], what: str) -> None:
    """Each (claimed, measured) pair of ``measured`` equal, else the list of those that differ."""
    differences = [f"{name}: README {claim}, measured {got}" for name, (claim, got) in measured.items() if claim != got]
    assert not differences, f"README.md's {what} is out of date:\n" + "\n".join(differences)


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
@pytest.mark.parametrize("name", STC_TABLES)
def test_readme_table_is_what_the_example_prints(name, tmp_path, request):
    require_readme_blas()
    table = readme_table(README.read_text(), STC_TABLES[name])
    command, out = table["command"], tmp_path / "out"
    assert command[1] == f"examples/{STC}", (name, command)
    printed = run(example_command(command, out), example_environment(request, needs_data="synthetic" not in command))
    printed_table = printed_rows(printed, "method           rounds")
    values = {}
    for method in printed_table:
        summary = json.loads((out / method / "summary.json").read_text())
        # the printed table shows the summary's integers as they are, its accuracy to 4 decimals
        assert printed_table[method][2:4] == [f"{summary['bits_up']:,}", f"{summary['bits_down']:,}"], method
        values[method] = summary
    differences = check_table(table["rows"], values, STC_COLUMNS)
    assert not differences, f"README.md's table for `{' '.join(command)}` is out of date:\n" + "\n".join(differences)


@pytest.mark.slow
@pytest.mark.parametrize("name", LAQ_TABLES)
def test_readme_laq_table_is_what_the_example_prints_from_the_recorded_runs(name, tmp_path, request):
    """The README's command over a copy of the table's recorded runs (examples/results/<name>): every run
    has the config the command builds for its method (by sha256); the example finds each finished and prints
    the table of them."""
    from fedsim.config import config_fingerprint
    table = readme_table(README.read_text(), LAQ_TABLES[name])
    command, out = table["command"], tmp_path / "out"
    assert command[1] == f"examples/{LAQ}", (name, command)
    example = load_example(LAQ)
    options = example.parse_args(command[2:])
    runs = unpack(name, out)
    assert sorted(runs) == sorted(options.methods), f"examples/results/{name} does not hold the command's methods"
    for method, folder in runs.items():
        assert recorded_fingerprint(folder) == config_fingerprint(example.config_of(options, method)), (
            f"examples/results/{name}/{method} was recorded with other settings than `{' '.join(command)}`: "
            f"record again (python examples/results/record.py {name})")
    printed = run(example_command(command, out), example_environment(request, needs_data=True))
    differences = laq_table_differences(table, printed, out)
    assert not differences, f"README.md's table for `{' '.join(command)}` is out of date:\n" + "\n".join(differences)


def test_the_recorded_runs_were_computed_with_the_blas_the_readme_names():
    assert {json.loads((folder / "meta.json").read_text())["threads"]["blas"] for folder in RECORDED_RUNS} == {
        README_BLAS}


@pytest.mark.parametrize("folder", RECORDED_RUNS, ids=[f"{run.parent.name}/{run.name}" for run in RECORDED_RUNS])
@pytest.mark.parametrize("whole", [pytest.param(False, marks=pytest.mark.slow, id="begins"),
                                   pytest.param(True, marks=pytest.mark.reproduce, id="whole")])
def test_recorded_run_is_what_todays_code_computes(folder, whole, tmp_path, shared_data, monkeypatch):
    """The first iterations of every recorded run (:func:`prefix_length`), rerun, are the recorded ones; with
    ``whole`` (minutes each: ``-m reproduce`` only) every recorded run, rerun in full, is the recorded one: its
    whole history and its summary, and so every LAQ number of the README."""
    monkeypatch.setenv("FEDSIM_DATA", str(shared_data))
    require_readme_blas()
    check_recorded_run(folder, tmp_path / "rerun", iterations=len(recorded_history(folder)) if whole else None)


@pytest.mark.slow
def test_readme_stc_seed_experiment_sentence(tmp_path, request):
    """ "300 rounds reach **79.3% test accuracy** (0.7931) (81.2% on the first 5,000 training samples), with
    4.0 Mbit sent up and 5.6 Mbit down in all (the paper's estimate for the upstream: 3.1 Mbit)" against the
    section's command with that many rounds."""
    require_readme_blas()
    text = README.read_text()
    section = text[text.index("### The STC seed experiment"):text.index("All methods on the same data")]
    sentence = (r"(\d+) rounds reach \*\*([0-9.]+)% test accuracy\*\* \((0\.[0-9]+)\) \(([0-9.]+)% on the first "
                r"([0-9,]+) training samples\), with ([0-9.]+) Mbit sent up and ([0-9.]+) Mbit down in all \(the "
                r"paper's estimate for the upstream: ([0-9.]+) Mbit\)")
    rounds, percent, accuracy, train_percent, train_samples, up, down, estimate = sentence_numbers(
        section, sentence, "the STC seed experiment's sentence of results")
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
    assert_measured(measured, "STC seed experiment sentence")


@pytest.mark.slow
def test_readme_equal_bits_table_is_what_the_sweep_report_prints(tmp_path):
    """The README's equal-bits table is the end of what `fedsim sweep report` prints for the sweep: the two
    commands of the README's block before it, run as given (in tmp_path, the sweep file from the checkout)."""
    require_readme_blas()
    text = README.read_text()
    section = text[text.index("`examples/sweeps/equal_bits.toml` compares"):text.index("## Simulated time")]
    block, table = re.findall(r"```(?:bash)?\n(.*?)```", section, flags=re.DOTALL)
    sweep, report = (shlex.split(line.split("#")[0]) for line in block.splitlines())
    assert sweep[:3] == ["fedsim", "sweep", "examples/sweeps/equal_bits.toml"] and report[:3] == [
        "fedsim", "sweep", "report"], block
    ran = fedsim(tmp_path, "sweep", REPO / sweep[2], *sweep[3:], "--quiet", timeout=TIMEOUT)
    assert ran.returncode == 0, ran.stderr
    printed = fedsim(tmp_path, *report[1:])
    assert printed.returncode == 0, printed.stderr
    claimed = table.rstrip("\n").splitlines()
    got = [line.rstrip() for line in printed.stdout.rstrip("\n").splitlines()[-len(claimed):]]
    assert got == claimed, "README.md's equal-bits table is out of date; the report ends:\n" + "\n".join(got)


def test_readme_laq_bits_sweep_sentence():
    """ "b = 8 and b = 4 reach the residual ... with 453 and 505 uploads ..., while b = 2 does not converge: f
    climbs above 1,000 within 400 iterations, peaks at 5,074 and ends at 1,945 after 4,000" against the sweep
    file's three LAQ runs, found among the recorded runs by their config (b = 4 is the LAQ MNIST table's)."""
    from fedsim.algorithms.lazy import records_reach
    from fedsim.config import config_fingerprint
    from fedsim.sweeps import load_sweep
    text = README.read_text()
    recorded = {recorded_fingerprint(folder): folder for folder in RECORDED_RUNS}
    runs = {}
    for planned in load_sweep(REPO / "examples" / "sweeps" / "laq_bits.toml").runs:
        if planned.config.lazy.method == "laq":
            bits = planned.config.lazy.bits
            runs[bits] = recorded.get(config_fingerprint(planned.config))
            assert runs[bits], (f"the bits sweep's run at b = {bits} is not recorded: "
                                f"python examples/results/record.py {BITS_SWEEP}")

    section = text[text.index("LAQ's bits (`fedsim sweep examples/sweeps/laq_bits.toml"):]
    sentence = (r"b = 8 and b = 4 reach the residual \(f - f\* <= 1e-([0-9]+), with the f\* of the LAQ table above\) "
                r"with ([0-9,]+) and ([0-9,]+) uploads .*?\*\*b = 2 does not converge\*\*: f climbs above ([0-9,]+) "
                r"within ([0-9,]+) iterations, peaks at ([0-9,]+) and ends at ([0-9,]+) after ([0-9,]+)")
    exponent, uploads_8, uploads_4, above, within, peak, final, iterations = sentence_numbers(
        section, sentence, "the LAQ bits sweep's sentence")
    f_star = float(re.search(r"f\* is the smallest objective any of the five runs reached \(([0-9.]+)\)",
                             text).group(1))
    assert sorted(runs) == [2, 4, 8]
    histories = {bits: recorded_history(folder) for bits, folder in runs.items()}
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
    assert_measured(measured, "LAQ bits sweep sentence")


def test_record_errors_are_one_line(tmp_path, monkeypatch, capsys):
    """examples/results/record.py ends as the examples do: an unknown recording is one line, exit 2; data
    not found is fedsim's message, exit 1 (were a bare SystemExit, status 1, and a traceback). Its recordings
    go to tmp_path here, never over the repository's."""
    from fedsim.data import search
    record = load_example("results/record.py")
    monkeypatch.setattr(record, "RESULTS", tmp_path / "results")
    assert record.main(["bogus"]) == 2
    assert capsys.readouterr().err == ("record.py: error: unknown recording 'bogus'; choose from laq-mnist, "
                                       "laq-fashion-mnist, laq-bits\n")
    for variable in ("FEDSIM_DATA", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("FEDSIM_NO_REPO_DATA", "1")
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEDSIM_MIRRORS", "http://127.0.0.1:9/")         # refused at once: offline
    monkeypatch.setattr(search, "SYSTEM_DATASET_DIRS", (tmp_path / "system-datasets",))
    kept = tmp_path / "results" / BITS_SWEEP / "laq-b2" / "summary.json"     # the recording made before
    kept.parent.mkdir(parents=True)
    kept.write_text("{}")
    assert record.main([BITS_SWEEP]) == 1
    err = capsys.readouterr().err
    assert err.startswith("record.py: error: ") and "Traceback" not in err and "FEDSIM_DATA" in err, err
    assert kept.read_text() == "{}"                   # a failed recording leaves the last one in place
    assert sorted(path.name for path in (tmp_path / "results").iterdir()) == [BITS_SWEEP]     # and nothing else
