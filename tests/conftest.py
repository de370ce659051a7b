"""Shared test setup and helpers.

Helpers used by several test files live here, defined once: ``assert_bitwise`` (the comparison every
bitwise claim uses), the dtypes and layouts that the kernel and compressor tests share, and the compressor
helpers (random updates, the hypothesis strategy of updates, the message contract ``message_of`` /
``check_message``). Import them: ``from tests.conftest import ...``.

Oracle tests (marked ``oracle``) compare fedsim with an independent torch implementation. They skip when
torch is missing on a developer's machine, but with ``FEDSIM_REQUIRE_ORACLE=1`` (set by CI) a skipped
oracle test fails the run instead: a green CI always means the oracle ran.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from fedsim.params import ParamSpec


def assert_bitwise(got, want, what=""):
    """Assert equal dtype, shape and bytes (so -0.0 differs from +0.0, and a NaN equals the same NaN).

    A failure names ``what`` and prints both values where they first differ (and how many entries do).
    """
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{what}: {got.dtype}{got.shape} vs {want.dtype}{want.shape}"
    if got.tobytes() != want.tobytes():
        flat_got, flat_want = np.ascontiguousarray(got).reshape(-1), np.ascontiguousarray(want).reshape(-1)
        entry_bytes = (flat_got.size, got.dtype.itemsize)
        differs = np.any(flat_got.view(np.uint8).reshape(entry_bytes) != flat_want.view(np.uint8)
                         .reshape(entry_bytes), axis=1)
        where = np.flatnonzero(differs)[:5]
        raise AssertionError(f"{what}: {np.count_nonzero(differs)} of {flat_got.size} entries differ; at "
                             f"{where.tolist()}: got {flat_got[where]}, want {flat_want[where]}")


# ----------------------------------------------------------------------------------------------------
# the dtypes and layouts of the kernel and compressor tests (tests/kernels, tests/compress)
# ----------------------------------------------------------------------------------------------------

DTYPES = (np.float32, np.float64)
SPEC = ParamSpec(("W", "b"), ((30, 4), (4,)))                  # 124 entries: segments of 120 and 4
# A compressor that needs tensor shapes (PowerSGD): W (12 x 5), a bias, a 3-D tensor (compressed as 6 x 6),
# a scalar, an empty matrix.
SHAPED_SPEC = ParamSpec(("W", "b", "conv", "s", "e"), ((12, 5), (5,), (6, 3, 2), (), (0, 4)))
MATRICES = ((0, 12, 5), (65, 6, 6))       # (start, n, m) of the compressed segments of SHAPED_SPEC
ORACLE_SPEC = ParamSpec(("W", "b"), ((1024, 10), (10,)))   # the STC pipeline's softmax regression (the torch oracles')


# ----------------------------------------------------------------------------------------------------
# compressor helpers (tests/compress)
# ----------------------------------------------------------------------------------------------------

# Values that stress a compressor beside the general floats: signed zeros, ties, tiny magnitudes.
SPECIAL_UPDATES = (0.0, -0.0, 0.25, -0.25, 1.0, 1e-30, -3e-38)


def random_updates(rng, rows: int, size: int, dtype=np.float32) -> np.ndarray:
    """(rows, size) standard normal updates with zeros (every 7th entry) and ties (every 11th from 3)."""
    x = rng.standard_normal((rows, size)).astype(dtype)
    x[:, ::7] = 0.0
    x[:, 3::11] = x[:, 3:4]
    return x


def updates_strategy(shape, dtype):
    """Hypothesis arrays of ``shape``: floats in [-1e6, 1e6] of the dtype's width (subnormals included)
    mixed with SPECIAL_UPDATES."""
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    general = st.floats(-1e6, 1e6, width=8 * np.dtype(dtype).itemsize, allow_subnormal=True)
    return arrays(dtype, shape, elements=st.one_of(general, st.sampled_from(SPECIAL_UPDATES)))


def check_message(message, dtype, size: int) -> np.ndarray:
    """The wire contract of one message: ``encode_with_bit_count`` gives ``encoded_bits()`` meaningful
    bits padded to whole bytes, ``decode(encode(m), m.format) == m``, and the decoded message rebuilds
    the same dense row (of ``dtype`` and ``size``) bitwise. Returns that row."""
    from fedsim.compress import decode

    stream, n_bits = message.encode_with_bit_count()
    assert n_bits == message.encoded_bits(), (n_bits, message.encoded_bits())
    assert stream.dtype == np.uint8 and stream.size == (n_bits + 7) // 8
    assert_bitwise(stream, message.encode(), "encode() vs encode_with_bit_count()")
    back = decode(stream, message.format)
    assert back == message, f"decode(encode(m)) != m:\n{back}\n{message}"
    dense = message.to_dense()
    assert dense.dtype == dtype and dense.shape == (size,), (dense.dtype, dense.shape)
    assert_bitwise(back.to_dense(), dense, "to_dense() after the round trip")
    return dense


def message_of(compressed, row: int):
    """Row ``row`` of a Compressed batch as its wire message, checked against the batch: ``to_dense()``
    equals the decoded row bitwise, and the encoded and analytic bit counts are the batch's."""
    message = compressed.message(row)
    assert_bitwise(message.to_dense(), compressed.decoded[row], f"message({row}).to_dense() vs decoded row")
    assert message.encoded_bits() == compressed.encoded_bits[row]
    assert message.analytic_bits() == compressed.analytic_bits[row]
    return message


def compress_one(compressor, x, state, rng=None):
    """Compress one vector (a batch of one): (its wire message checked by ``message_of``, the new state)."""
    compressed, new_state = compressor.compress(x, state, rng)
    return message_of(compressed, 0), new_state


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


@pytest.fixture
def in_process(tmp_path, monkeypatch, capsys):
    """``fedsim.cli.main`` called in this process, in ``tmp_path``: returns (exit status, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    for variable, value in clean_env(tmp_path).items():
        monkeypatch.setenv(variable, value)
    for variable in ("FEDSIM_DATA", "FEDSIM_MIRRORS", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)

    from fedsim.cli import main

    def call(*args):
        status = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err
    return call


@pytest.fixture
def fedsim_here(in_process, monkeypatch):
    """``fedsim`` (a CompletedProcess) with ``fedsim.cli.main`` called in this process (about 1.3 s
    of interpreter start and imports less a call), for what a command prints and returns; each command keeps
    a test of its real process (``fedsim``), and the tests of signals and of a real process run one."""
    def call(*args, **env):
        for variable, value in env.items():
            monkeypatch.setenv(variable, str(value))
        status, out, err = in_process(*args)
        return subprocess.CompletedProcess(["fedsim", *map(str, args)], status, out, err)
    return call
