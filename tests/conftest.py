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


def synthetic_images(n: int, seed: int = 0, classes: int = 10):
    """``n`` 28 x 28 uint8 images in ``classes`` classes and their labels, made here (no download): each
    class is a smooth random prototype, each image its class's prototype plus noise, clipped to [0, 255].
    The oracle tests run on them, so every machine checks the math without the real datasets."""
    import numpy as np
    rng = np.random.default_rng(seed)
    grid = np.linspace(-1.0, 1.0, 28)
    prototypes = np.empty((classes, 28, 28))
    for c in range(classes):
        fx, fy, phase = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, np.pi)
        prototypes[c] = 127.5 + 110 * np.sin(fx * np.pi * grid[:, None] + phase) * np.cos(fy * np.pi * grid[None, :])
    labels = rng.integers(0, classes, n)
    images = prototypes[labels] + rng.normal(0, 40, (n, 28, 28))
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels.astype(np.int64)


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


# ---------------------------------------------------------------------------------------------------------
# The fedsim command as a subprocess, shared by the tests of the CLI, runs, sweeps and the first hour
# (``from tests.conftest import fedsim, ...``). Its imports are here, so that the section stands alone.

import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

TINY = ["--set", "data.synthetic_devices=8", "--set", "federated.n_clients=8"]
TINY_LAZY = ["--set", "data.synthetic_devices=6", "--set", "lazy.n_workers=6", "--set", "lazy.iterations=20",
             "--set", "lazy.eval_every=10"]


def clean_env(tmp_path: Path, **extra) -> dict:
    """The environment of a fedsim subprocess: no developer data, a private download cache."""
    env = dict(os.environ)
    for variable in ("FEDSIM_DATA", "FEDSIM_MIRRORS", "XDG_CACHE_HOME"):
        env.pop(variable, None)
    env.update(FEDSIM_NO_REPO_DATA="1", FEDSIM_CACHE=str(tmp_path / "cache"), COLUMNS="200")
    env.update(extra)
    return env


def fedsim(tmp_path, *args, timeout=120, **env):
    """Run ``python -m fedsim ARGS`` in ``tmp_path``; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "fedsim", *map(str, args)], cwd=tmp_path,
                          env=clean_env(tmp_path, **env), capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """stderr without Python warnings (``file:line: XWarning: ...`` and the source line under it), which
    come from imported libraries, not from the command's own error reporting."""
    lines, skip_next = [], False
    for line in stderr.splitlines():
        if skip_next and line.startswith(" "):
            skip_next = False
            continue
        skip_next = False
        if re.match(r"^\S.*:\d+: \w*Warning: ", line):
            skip_next = True
            continue
        if line.strip():
            lines.append(line)
    return lines
