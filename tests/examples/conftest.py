"""What the tests of the examples share: the repository's folder and an example script loaded as a module."""

import importlib.util
from pathlib import Path

import pytest

from fedsim.runs.provenance import numpy_blas

REPO = Path(__file__).resolve().parents[2]


def load_example(file_name: str):
    """examples/``file_name`` loaded afresh as a module (its option parser, configs and ``main``)."""
    spec = importlib.util.spec_from_file_location(f"{Path(file_name).stem}_example", REPO / "examples" / file_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: The BLAS that computed the README's numbers and the recorded runs of examples/results (their meta.json).
README_BLAS = "openblas 0.3.31.188.0 SkylakeX"


def require_readme_blas():
    """Skip, naming both, where NumPy's BLAS is not the one that computed the README's numbers: another kernel
    rounds the models' products in other last bits (tests/algorithms/golden_cases.py keeps a set of golden
    histories per kernel), and what follows them, down to printed digits, can differ."""
    if numpy_blas() != README_BLAS:
        pytest.skip(f"README.md's numbers were computed with {README_BLAS}; NumPy calls {numpy_blas()} here")
