"""Shared test setup.

Oracle tests (marked ``oracle``) compare fedsim with an independent torch implementation. They skip when
torch is missing on a developer's machine, but with ``FEDSIM_REQUIRE_ORACLE=1`` (set by CI) a skipped
oracle test fails the run instead: a green CI always means the oracle ran.
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIRE_ORACLE = os.environ.get("FEDSIM_REQUIRE_ORACLE") == "1"


def shared_data_dir() -> Path | None:
    """The folder of real datasets: the first FEDSIM_DATA entry that exists, else ../shared/data."""
    for entry in os.environ.get("FEDSIM_DATA", "").split(os.pathsep):
        if entry and Path(entry).is_dir():
            return Path(entry)
    candidate = REPO.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("no shared data folder (set FEDSIM_DATA)")
    return path


@pytest.fixture(scope="session")
def torch():
    try:
        import torch as torch_module
    except ImportError:
        pytest.skip("torch is not installed (oracle tests need it)")
    torch_module.set_num_threads(1)
    return torch_module


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ORACLE and report.skipped and item.get_closest_marker("oracle") is not None:
        report.outcome = "failed"
        report.longrepr = f"oracle test {item.nodeid} was skipped, but FEDSIM_REQUIRE_ORACLE=1"
