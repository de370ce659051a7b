"""What the tests of the examples share: the repository's folder and an example script loaded as a module."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_example(file_name: str):
    """examples/``file_name`` loaded afresh as a module (its option parser, configs and ``main``)."""
    spec = importlib.util.spec_from_file_location(f"{Path(file_name).stem}_example", REPO / "examples" / file_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
