"""What the data tests share: an isolated environment (with ``isolated``, no test reads or writes the real user
cache, the checkout's data/ folder or /usr/share/datasets, nor writes into the shared data folder), an HTTP server
on 127.0.0.1, one-line error checks."""

import functools
import http.server
import threading
import tracemalloc
from pathlib import Path

import pytest

from fedsim.data import search
from fedsim.data.registry import DataSettingError

MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
LABELS_GZ = "t10k-labels-idx1-ubyte.gz"


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """Environment pointing every folder fedsim could touch into tmp_path; returns the cache folder."""
    for variable in ("FEDSIM_DATA", "FEDSIM_MIRRORS", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEDSIM_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FEDSIM_NO_REPO_DATA", "1")
    monkeypatch.setattr(search, "SYSTEM_DATASET_DIRS", (tmp_path / "system-datasets",))
    return cache


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def write_file(path: Path, data: bytes = b"", size: int = 0) -> Path:
    """``path`` (its folders made) holding ``data``, then zeros up to ``size`` bytes (sparse: no disk space)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
        handle.truncate(max(size, len(data)))
    return path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def serve():
    """``serve(folder)`` or ``serve(handler=...)``: an HTTP server on 127.0.0.1; returns its base URL.

    All servers are shut down when the test ends.
    """
    running = []

    def start(folder=None, handler=None) -> str:
        handler = handler or functools.partial(QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def one_line_error(call, *words, error: type = DataSettingError) -> str:
    """The message of the ``error`` (a ValueError) that ``call()`` raises: one line holding every word."""
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    assert isinstance(raised.value, ValueError) and "\n" not in message, message
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    return message


def raised_and_peak_memory(call, expected: type = ValueError) -> tuple[BaseException, int]:
    """The ``expected`` error that ``call()`` raises, and the peak of Python/NumPy memory it allocated, in bytes."""
    tracemalloc.start()
    try:
        with pytest.raises(expected) as raised:
            call()
        return raised.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
