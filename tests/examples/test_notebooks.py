"""The teaching notebooks of examples/notebooks: in sync with their sources, and running top to bottom.

Each notebook's source is a jupytext percent-format ``.py`` file; the ``.ipynb`` beside it is generated
from it (``jupytext --update --to ipynb examples/notebooks/*.py``) and committed without outputs. The
tests check that every ``.ipynb`` holds exactly what jupytext makes of its source (cell ids aside: jupytext
draws them at random, and ``--update`` keeps the committed ones), and execute every ``.ipynb`` with
nbclient on the ``python3`` kernel, in a temporary working directory, within a time budget per notebook.
A notebook whose dataset fedsim cannot find on disk is skipped, and the skip names the files.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

if os.environ.get("FEDSIM_REQUIRE_ORACLE") == "1":     # CI: the test extra is installed, never skip
    import jupytext
    import nbformat
else:
    jupytext = pytest.importorskip("jupytext", reason="the notebook tests need jupytext (the test extra)")
    nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbformat (the test extra)")

FOLDER = Path(__file__).resolve().parents[2] / "examples" / "notebooks"
REGENERATE = "jupytext --update --to ipynb examples/notebooks/*.py"


class Notebook(NamedTuple):
    dataset: str | None           # the dataset it reads (None: no data)
    files: tuple[str, ...]        # which of the dataset's files
    budget: float                 # seconds it should take, kernel start included (a hang: 10 times that)
    figure: str                   # its figure in the README, under figures/


FASHION = ("train-images", "train-labels", "test-images", "test-labels")
#: The budgets add up to the 3 minutes the notebooks may add to CI; each is 2 to 4 times what its
#: notebook takes on a 2-core machine (about 5, 12, 22, 6, 8, 6 and 6 s). Speed is not asserted here (a busy
#: machine is slower): a notebook fails only past HANG_FACTOR times its budget, as a hang.
NOTEBOOKS = {
    "01_softmax_regression": Notebook("fashion-mnist", FASHION, 20, "01_softmax_weights.png"),
    "02_sparse_ternary_compression": Notebook("fashion-mnist", FASHION, 35, "02_stc_accuracy_vs_bits.png"),
    "03_lazy_aggregation": Notebook("mnist", ("test-images", "test-labels"), 45, "03_lazy_residual.png"),
    "04_measuring_kernels": Notebook(None, (), 20, "04_kernel_vs_copy.png"),
    "05_backpropagation": Notebook("fashion-mnist", FASHION, 25, "05_hidden_units.png"),
    "06_what_a_compressor_does": Notebook(None, (), 15, "06_compressor_panels.png"),
    "07_simulated_time": Notebook(None, (), 20, "07_simulated_time.png"),
}
HANG_FACTOR = 10


def canonical(notebook) -> dict:
    """A notebook as a plain dict, without the cell ids (random in jupytext's output)."""
    plain = nbformat.from_dict(notebook)
    cells = [{key: value for key, value in cell.items() if key != "id"} for cell in plain["cells"]]
    return {**plain, "cells": cells}


def test_every_source_is_listed():
    sources = sorted(path.stem for path in FOLDER.glob("*.py"))
    assert sources == sorted(NOTEBOOKS), f"sources {sources} != the notebooks tested {list(NOTEBOOKS)}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_matches_its_source(name):
    source, committed = FOLDER / f"{name}.py", FOLDER / f"{name}.ipynb"
    assert committed.is_file(), f"{committed.name} is missing; generate it with: {REGENERATE}"
    notebook = nbformat.read(committed, as_version=4)
    generated = nbformat.reads(jupytext.writes(jupytext.read(source), fmt="ipynb"), as_version=4)
    assert canonical(notebook) == canonical(generated), (
        f"{committed.name} differs from what jupytext generates from {source.name} (edit the .py, never "
        f"the .ipynb); regenerate it with: {REGENERATE}")
    with_outputs = [i for i, cell in enumerate(notebook.cells)
                    if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not with_outputs, f"{committed.name}: cells {with_outputs} hold outputs; regenerate: {REGENERATE}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_readme_shows_the_notebook_and_its_figure(name):
    readme = (FOLDER / "README.md").read_text()
    figure = NOTEBOOKS[name].figure
    assert f"({name}.ipynb)" in readme, f"examples/notebooks/README.md does not link {name}.ipynb"
    assert f"(figures/{figure})" in readme, f"examples/notebooks/README.md does not show figures/{figure}"
    assert (FOLDER / "figures" / figure).stat().st_size > 0, f"figures/{figure} is missing"


def _history_weight_of_the_first_iterations():
    """H^k at k = 3 < D = 10 of three unit steps: xi / min(k, D) on each, so xi / 3 * 3."""
    from fedsim.algorithms.lazy.rules import history_threshold
    return history_threshold(np.array([1.0] * 3 + [0.0] * 7), 3, 0.8, 1.0, 1) == pytest.approx(0.8)


def _quick_run_leaves_the_readme():
    """`benchmarks.run --quick --write-readme` is refused: only a full run writes benchmarks/README.md."""
    from benchmarks import run
    with pytest.raises(SystemExit):
        run.parse_args(["--quick", "--write-readme"])
    return True


@pytest.mark.parametrize("name, said, holds", [
    ("03_lazy_aggregation", r"$\xi_d = 0.8 / \min(k, D)$", _history_weight_of_the_first_iterations),
    ("04_measuring_kernels", "only the maintainers' `--full --write-readme` rewrites the tables of "
                             "`benchmarks/README.md`", _quick_run_leaves_the_readme)])
def test_what_a_notebook_says_of_the_code_holds(name, said, holds):
    assert said in " ".join(line.lstrip("# ") for line in (FOLDER / f"{name}.py").read_text().splitlines())
    assert holds()


@functools.cache
def missing_files(dataset: str, keys: tuple[str, ...]) -> tuple[str, ...]:
    """The files of ``dataset`` that fedsim's data search does not find verified on disk."""
    from fedsim.data.search import locate
    return tuple(key for key in keys if locate(dataset, key) is None)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    dataset, files, budget, _ = NOTEBOOKS[name]
    missing = missing_files(dataset, files) if dataset else ()
    if missing:
        pytest.skip(f"{name} needs the {dataset} files {', '.join(missing)}, which fedsim's data search does "
                    f"not find on disk (set FEDSIM_DATA to the shared data folder, or run "
                    f"`fedsim data fetch {dataset}`)")
    notebook = nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)
    environment = dict(os.environ)
    environment.pop("FEDSIM_NOTEBOOK_FIGURES", None)       # write nothing into the checkout
    # The backend a student's Jupyter uses, so that every figure is really drawn (Agg would skip it).
    environment["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    deadline = time.monotonic() + HANG_FACTOR * budget
    client = NotebookClient(notebook, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                            timeout_func=lambda cell: max(1, int(deadline - time.monotonic())))
    started = time.monotonic()
    try:
        client.execute(env=environment)
    except CellTimeoutError:
        pytest.fail(f"{name} did not finish within {HANG_FACTOR * budget:g} s ({HANG_FACTOR} times its budget): "
                    f"a hang")
    print(f"{name}: {time.monotonic() - started:.1f} s (budget {budget:g} s)")
    written = sorted(path.name for path in tmp_path.iterdir())
    assert not written, f"{name} wrote files into its working directory: {written}"
