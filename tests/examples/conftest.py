"""What the tests of the examples share: the repository's folder and an example script loaded as a module."""

import importlib.util
from pathlib import Path

import pytest

from fedsim.data.cache import numpy_simd
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
README_SIMD = "X86_V4"        # NumPy's AVX-512 loops (fedsim.data.cache.numpy_simd)


def require_readme_blas():
    """Skip, naming both, where NumPy's BLAS or SIMD level is not the one that computed the README's numbers:
    another rounds the models' products or functions in other last bits (tests/algorithms/golden_cases.py
    keeps a set of golden histories per pair), and what follows them, down to printed digits, can differ."""
    if numpy_blas() != README_BLAS or README_SIMD not in numpy_simd().split():
        pytest.skip(f"README.md's numbers were computed with {README_BLAS} and NumPy's {README_SIMD} loops; NumPy "
                    f"calls {numpy_blas()} with {numpy_simd()} here")
