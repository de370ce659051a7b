"""Dataset registry, locating local copies, downloading (against servers on 127.0.0.1) and load_split.

Every test runs in an isolated environment (fixture ``isolated``): FEDSIM_DATA, FEDSIM_MIRRORS and
XDG_CACHE_HOME unset, FEDSIM_CACHE and HOME inside tmp_path, FEDSIM_NO_REPO_DATA=1 and the system dataset
folder replaced by an empty tmp folder. So no test reads or writes the real user cache, the checkout's data/
folder or /usr/share/datasets, and nothing is ever written into the shared data folder.
"""

import functools
import gzip
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fedsim.data import fetch, search
from fedsim.data.registry import DATASETS, FILE_KEYS, DatasetFile, get_dataset

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


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """Writes ``head`` (the raw status line and headers), then ``piece`` ``count`` times, ``pause`` seconds
    apart, as long as the client listens; then closes the connection."""

    head, piece, count, pause = b"", b"", 0, 0.0

    def do_GET(self):
        try:
            self.wfile.write(self.head)
            for _ in range(self.count):
                self.wfile.write(self.piece)
                time.sleep(self.pause)
        except OSError:
            pass
        self.close_connection = True

    def log_message(self, format, *args):
        pass


def scripted(head: bytes, piece: bytes = b"", count: int = 0, pause: float = 0.0) -> type:
    return type("Scripted", (ScriptedHandler,), {"head": head, "piece": piece, "count": count, "pause": pause})


OK = b"HTTP/1.0 200 OK\r\n"
#: Announces 4,542 bytes, sends 1,000, then closes the connection.
TRUNCATING = scripted(OK + b"Content-Length: 4542\r\n\r\n\x1f\x8b" + bytes(998))
#: Announces 4,542 bytes, then sends one byte a second (for at most 12 s): each read gets a byte well within
#: any per-read timeout, so only an overall deadline ends the download.
TRICKLE_BODY = scripted(OK + b"Content-Length: 4542\r\n\r\n", b"\x1f", 12, 1.0)
#: Starts a header line and never ends it: one byte a second (for at most 12 s).
TRICKLE_HEADER = scripted(OK + b"X-Slow: ", b"z", 12, 1.0)
#: A body with no Content-Length that does not end (until the client leaves, or 256 MiB).
ENDLESS = scripted(OK + b"\r\n", bytes(1 << 16), 4096)
#: Announces a terabyte.
HUGE_ANNOUNCED = scripted(OK + f"Content-Length: {10 ** 12}\r\n\r\n".encode())


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


@pytest.fixture
def closed_port_url():
    """A URL on a port nothing listens on (bound, then released): connection refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_url():
    """A URL whose server accepts connections (into the backlog) but never answers: a timeout."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


# --------------------------------------------------------------------------------------------------------
# Registry


def test_registry_entries():
    assert set(DATASETS) == {"mnist", "fashion-mnist"}
    for info in DATASETS.values():
        assert tuple(file.key for file in info.files) == FILE_KEYS
        assert len(info.mirrors) >= 2 and all(m.startswith(("http://", "https://")) for m in info.mirrors)
        assert info.n_classes == 10
        for file in info.files:
            assert file.filename.endswith("-ubyte.gz") and file.gzip_md5
    assert get_dataset("mnist").file("train-images").sha256 is None       # unknown: gzip MD5 only
    assert len(get_dataset("fashion-mnist").file("train-images").gzip_md5) == 2   # upstream and Debian
    with pytest.raises(Exception):
        get_dataset("mnist").mirrors = ()   # frozen


def test_unknown_names_list_the_allowed_ones(isolated):
    with pytest.raises(ValueError, match="mnist, fashion-mnist; got 'cifar10'"):
        fetch.load_split("cifar10", "train")
    with pytest.raises(ValueError, match="train, test; got 'validation'"):
        fetch.load_split("mnist", "validation")
    with pytest.raises(ValueError, match="train-images, train-labels, test-images, test-labels; got 'images'"):
        fetch.locate("mnist", "images")
    with pytest.raises(ValueError, match="mnist, fashion-mnist"):
        fetch.dataset_status("emnist")
    with pytest.raises(ValueError, match=r"timeout \(--timeout\) must be a number of seconds > 0"):
        fetch.fetch("mnist", "test-labels", timeout=0)


def test_uncompressed_mnist_train_images_cannot_verify():
    file = get_dataset("mnist").file("train-images")
    verification = file.verify(bytes(file.decompressed_size))
    assert not verification.ok and "no SHA-256" in verification.reason


# --------------------------------------------------------------------------------------------------------
# Real data from the shared folder


def test_fashion_mnist_from_shared_folder(isolated, shared_data, monkeypatch):
    images, labels = fetch.load_split("fashion-mnist", "train", data_dir=shared_data, download=False)
    assert images.dtype == np.uint8 and images.shape == (60000, 28, 28)
    assert labels.dtype == np.int64 and labels.shape == (60000,)
    assert np.bincount(labels).tolist() == [6000] * 10
    assert 0 < images.mean() < 255
    monkeypatch.setenv("FEDSIM_DATA", str(shared_data))   # found through the search path this time
    images, labels = fetch.load_split("fashion-mnist", "test", download=False)
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10


def test_mnist_test_split_verifies_by_published_md5(isolated, shared_data, monkeypatch):
    monkeypatch.setenv("FEDSIM_DATA", str(shared_data))
    status = {row["key"]: row for row in fetch.dataset_status("mnist")}
    for key in ("test-images", "test-labels", "train-labels"):
        assert status[key]["verified"] and status[key]["method"] == "md5", status[key]
        assert status[key]["path"] == shared_data / "mnist" / status[key]["filename"]
    assert status["train-images"] == {"key": "train-images", "filename": "train-images-idx3-ubyte.gz",
                                      "path": None, "verified": False, "method": None, "reason": "not found"}
    images, labels = fetch.load_split("mnist", "test", download=False)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == MNIST_TEST_LABEL_COUNTS


def test_debian_fashion_copy_verifies_by_its_md5(isolated, shared_data):
    status = fetch.dataset_status("fashion-mnist", data_dir=shared_data)
    assert [row["method"] for row in status] == ["md5"] * 4, status


def test_partial_split_error_names_only_the_missing_file(isolated, shared_data):
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.load_split("mnist", "train", data_dir=shared_data, download=False)
    error = raised.value
    assert isinstance(error, FileNotFoundError)
    assert error.missing == ("train-images",)
    assert "train-images-idx3-ubyte.gz" in str(error) and "train-labels-idx1-ubyte.gz" not in str(error)


# --------------------------------------------------------------------------------------------------------
# Locating local copies


def copy_file(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def test_flat_folder_and_shared_filenames(isolated, shared_data, tmp_path):
    # A flat folder holding Fashion-MNIST's test labels: it serves fashion-mnist, and is skipped (with a
    # reason) for mnist, whose file has the same name.
    flat = tmp_path / "flat"
    fashion_labels = copy_file(shared_data / "fashion-mnist" / LABELS_GZ, flat / LABELS_GZ)
    assert fetch.locate("fashion-mnist", "test-labels", data_dir=flat) == fashion_labels
    assert fetch.locate("mnist", "test-labels", data_dir=flat) is None
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", data_dir=flat, download=False)
    assert [path for path, _ in raised.value.rejected] == [fashion_labels]
    message = str(raised.value)
    assert "failed verification" in message and str(fashion_labels) in message
    assert "SHA-256 of the decompressed IDX is not" in message


def test_uncompressed_copy_verifies_by_sha256(isolated, shared_data, tmp_path, monkeypatch):
    folder = tmp_path / "raw"
    raw_labels = folder / "mnist" / "t10k-labels-idx1-ubyte"
    raw_labels.parent.mkdir(parents=True)
    raw_labels.write_bytes(gzip.decompress((shared_data / "mnist" / LABELS_GZ).read_bytes()))
    assert fetch.locate("mnist", "test-labels", data_dir=folder) == raw_labels
    status = {row["key"]: row for row in fetch.dataset_status("mnist", data_dir=folder)}
    assert status["test-labels"]["method"] == "sha256" and status["test-labels"]["path"] == raw_labels
    # images from the shared folder (FEDSIM_DATA), labels from the uncompressed copy (data_dir)
    monkeypatch.setenv("FEDSIM_DATA", str(shared_data))
    _, labels = fetch.load_split("mnist", "test", data_dir=folder, download=False)
    assert np.bincount(labels).tolist() == MNIST_TEST_LABEL_COUNTS
    # a damaged uncompressed copy is skipped, and the search goes on to the shared folder
    damaged = bytearray(raw_labels.read_bytes())
    damaged[100] = (damaged[100] + 1) % 10
    raw_labels.write_bytes(bytes(damaged))
    assert fetch.locate("mnist", "test-labels", data_dir=folder) == shared_data / "mnist" / LABELS_GZ


def test_search_order(isolated, shared_data, tmp_path, monkeypatch):
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    source = shared_data / "mnist" / LABELS_GZ
    copies = [copy_file(source, folder / "mnist" / LABELS_GZ) for folder in (first, second, third)]
    cached = copy_file(source, isolated / "mnist" / LABELS_GZ)
    missing = tmp_path / "missing"
    monkeypatch.setenv("FEDSIM_DATA", os.pathsep.join([str(missing), str(second), str(third)]))
    assert fetch.locate("mnist", "test-labels", data_dir=first) == copies[0]
    assert fetch.locate("mnist", "test-labels") == copies[1]
    monkeypatch.delenv("FEDSIM_DATA")
    assert fetch.locate("mnist", "test-labels") == cached
    monkeypatch.setattr(search, "SYSTEM_DATASET_DIRS", (third,))
    cached.unlink()
    assert fetch.locate("mnist", "test-labels") == copies[2]


def test_each_file_verified_once_per_call(isolated, shared_data, tmp_path, monkeypatch):
    calls = []
    original = DatasetFile.verify

    def counting_verify(self, data):
        calls.append(self.key)
        return original(self, data)

    monkeypatch.setattr(DatasetFile, "verify", counting_verify)
    # the same folder as data_dir and twice in FEDSIM_DATA
    monkeypatch.setenv("FEDSIM_DATA", os.pathsep.join([str(shared_data), str(shared_data)]))
    fetch.load_split("mnist", "test", data_dir=shared_data, download=False)
    assert sorted(calls) == ["test-images", "test-labels"]
    # a bad copy reachable through two folders (X and X/mnist) is read and rejected once
    calls.clear()
    outer = tmp_path / "outer"
    bad = outer / "mnist" / LABELS_GZ
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a gzip file")
    monkeypatch.setenv("FEDSIM_DATA", str(outer / "mnist"))
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", data_dir=outer, download=False)
    assert calls == ["test-labels"]
    assert [path for path, _ in raised.value.rejected] == [bad]


def test_offline_error_lists_every_place_searched(isolated, tmp_path, monkeypatch):
    data_dir, extra = tmp_path / "explicit", tmp_path / "extra"
    data_dir.mkdir()
    monkeypatch.setenv("FEDSIM_DATA", str(extra))
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.load_split("fashion-mnist", "test", data_dir=data_dir, download=False)
    error = raised.value
    assert error.searched == (data_dir, extra, isolated, tmp_path / "system-datasets")
    assert error.missing == ("test-images", "test-labels") and error.attempts == ()
    message = str(error)
    for word in [f"{data_dir}  [data_dir argument]", f"{extra}  [FEDSIM_DATA]  (does not exist)",
                 f"{isolated}  [user cache]", "system datasets folder", "t10k-images-idx3-ubyte.gz",
                 LABELS_GZ, "download=False", "set FEDSIM_DATA", "data_dir=",
                 "fedsim data fetch fashion-mnist", "apt-get install dataset-fashion-mnist"]:
        assert word in message, f"{word!r} missing from:\n{message}"
    assert not files_under(isolated)


# --------------------------------------------------------------------------------------------------------
# Folders: cache and checkout


def test_cache_dir_choices(isolated, tmp_path, monkeypatch):
    assert fetch.cache_dir() == isolated                       # FEDSIM_CACHE wins
    monkeypatch.delenv("FEDSIM_CACHE")
    assert fetch.cache_dir() == tmp_path / "home" / ".cache" / "fedsim"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.cache_dir() == tmp_path / "xdg" / "fedsim"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")       # the XDG spec says: ignore relative paths
    assert fetch.cache_dir() == tmp_path / "home" / ".cache" / "fedsim"
    checkout_data = tmp_path / "checkout-data"
    checkout_data.mkdir()
    monkeypatch.setattr(search, "repo_data_dir", lambda: checkout_data)
    assert fetch.cache_dir() == checkout_data                  # a writable checkout data/ folder
    assert (checkout_data, "checkout data/ folder") in fetch.search_path()
    monkeypatch.setenv("FEDSIM_CACHE", str(isolated))
    assert fetch.cache_dir() == isolated


def test_repo_data_dir_detection(monkeypatch):
    monkeypatch.setenv("FEDSIM_NO_REPO_DATA", "1")
    assert fetch.repo_data_dir() is None
    monkeypatch.delenv("FEDSIM_NO_REPO_DATA")
    checkout = Path(__file__).resolve().parents[2]
    assert fetch.repo_data_dir() == checkout / "data"           # the tests run from a checkout


# --------------------------------------------------------------------------------------------------------
# Mirrors


def test_parse_mirror_list():
    sep = os.pathsep
    text = f"http://127.0.0.1:8000/a{sep}https://example.org:8443/b/{sep}  file:///srv/mirror\n"
    assert fetch.parse_mirror_list(text) == ["http://127.0.0.1:8000/a", "https://example.org:8443/b/",
                                             "file:///srv/mirror"]
    with pytest.raises(ValueError, match="FEDSIM_MIRRORS must hold base URLs.*'not-a-url'"):
        fetch.parse_mirror_list("http://ok not-a-url")


def test_mirror_urls(isolated, monkeypatch):
    assert fetch.mirror_urls("mnist", "test-labels") == [
        f"{mirror.rstrip('/')}/{LABELS_GZ}" for mirror in get_dataset("mnist").mirrors]
    monkeypatch.setenv("FEDSIM_MIRRORS", "http://127.0.0.1:1/x/ http://127.0.0.1:2")
    assert fetch.mirror_urls("fashion-mnist", "test-labels") == [
        f"http://127.0.0.1:1/x/fashion-mnist/{LABELS_GZ}", f"http://127.0.0.1:2/fashion-mnist/{LABELS_GZ}"]
    assert fetch.mirror_urls("mnist", "test-labels", mirrors=["http://h/"]) == [f"http://h/mnist/{LABELS_GZ}"]
    with pytest.raises(ValueError, match="mirrors must be base URLs"):
        fetch.mirror_urls("mnist", "test-labels", mirrors=["/just/a/folder"])


# --------------------------------------------------------------------------------------------------------
# Downloads from servers on 127.0.0.1


def test_download_lands_in_cache_and_verifies(isolated, shared_data, serve, capsys):
    base = serve(shared_data)
    path = fetch.fetch("mnist", "test-labels", mirrors=[base], progress=True, timeout=5)
    assert path == isolated / "mnist" / LABELS_GZ
    assert path.read_bytes() == (shared_data / "mnist" / LABELS_GZ).read_bytes()
    assert files_under(isolated) == [path]                     # no temporary file left behind
    assert LABELS_GZ in capsys.readouterr().err                # the progress bar was drawn
    status = {row["key"]: row for row in fetch.dataset_status("mnist")}
    assert status["test-labels"]["path"] == path and status["test-labels"]["method"] == "md5"
    # found in the cache from now on, with no server needed
    assert fetch.fetch("mnist", "test-labels", download=False) == path


def test_load_split_downloads_via_env_mirrors(isolated, shared_data, serve, closed_port_url, monkeypatch):
    monkeypatch.setenv("FEDSIM_MIRRORS", os.pathsep.join([closed_port_url, serve(shared_data)]))
    images, labels = fetch.load_split("mnist", "test", progress=False)
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == MNIST_TEST_LABEL_COUNTS
    assert [p.name for p in files_under(isolated)] == ["t10k-images-idx3-ubyte.gz", LABELS_GZ]


def corrupt_copies(shared_data) -> dict[str, bytes]:
    original = (shared_data / "mnist" / LABELS_GZ).read_bytes()
    payload = bytearray(gzip.decompress(original))
    payload[8] = (payload[8] + 1) % 10                          # one label changed: same size, other hashes
    return {
        "one label changed": gzip.compress(bytes(payload)),
        "truncated gzip": original[: len(original) // 2],
        "error page with status 200": b"<html><body>Service unavailable</body></html>",
        "gzip of wrong size": gzip.compress(bytes(payload[:-1])),
    }


@pytest.mark.parametrize("kind", ["one label changed", "truncated gzip", "error page with status 200",
                                  "gzip of wrong size"])
def test_corrupt_download_rejected_and_nothing_left(isolated, shared_data, tmp_path, serve, kind):
    served = tmp_path / "served"
    (served / "mnist").mkdir(parents=True)
    (served / "mnist" / LABELS_GZ).write_bytes(corrupt_copies(shared_data)[kind])
    base = serve(served)
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", mirrors=[base], progress=False, timeout=5)
    [(url, error)] = raised.value.attempts
    assert url == f"{base}/mnist/{LABELS_GZ}"
    assert "failed verification" in error, error
    assert url in str(raised.value)
    assert files_under(isolated) == []                         # neither the final file nor a temporary one


def test_truncated_transfer_rejected_and_nothing_left(isolated, serve):
    base = serve(handler=TRUNCATING)
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", mirrors=[base], progress=False, timeout=5)
    [(_, error)] = raised.value.attempts
    assert "IncompleteRead" in error or "connection closed" in error, error
    assert files_under(isolated) == []


@pytest.mark.parametrize("dead", ["closed port", "404", "silent server"])
def test_dead_first_mirror_falls_back(isolated, shared_data, tmp_path, serve, closed_port_url, silent_url,
                                      dead):
    empty = tmp_path / "empty"
    empty.mkdir()
    dead_url = {"closed port": closed_port_url, "404": None, "silent server": silent_url}[dead] or serve(empty)
    good_url = serve(shared_data)
    path = fetch.fetch("mnist", "test-labels", mirrors=[dead_url, good_url], progress=False, timeout=0.5)
    assert path == isolated / "mnist" / LABELS_GZ and files_under(isolated) == [path]
    assert hashlib.md5(path.read_bytes()).hexdigest() == "ec29112dd5afa0611ce80d1b7f02629c"


def test_all_mirrors_dead_error_lists_each(isolated, tmp_path, serve, closed_port_url, silent_url):
    empty = tmp_path / "empty"
    empty.mkdir()
    not_found_url = serve(empty)
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.fetch("fashion-mnist", "test-labels", mirrors=[closed_port_url, not_found_url, silent_url],
                    progress=False, timeout=0.5)
    attempts = dict(raised.value.attempts)
    assert list(attempts) == [f"{base}/fashion-mnist/{LABELS_GZ}"
                              for base in (closed_port_url, not_found_url, silent_url)]
    errors = list(attempts.values())
    assert "cannot connect" in errors[0], errors
    assert "HTTP 404" in errors[1], errors
    assert "timed out" in errors[2], errors
    message = str(raised.value)
    for url, error in attempts.items():
        assert f"{url}: {error}" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert files_under(isolated) == []


def test_bad_cached_copy_replaced_by_download(isolated, shared_data, serve):
    stale = isolated / "mnist" / LABELS_GZ
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\x1f\x8b partial download from some other tool")
    path = fetch.fetch("mnist", "test-labels", mirrors=[serve(shared_data)], progress=False, timeout=5)
    assert path == stale and path.read_bytes() == (shared_data / "mnist" / LABELS_GZ).read_bytes()
    assert files_under(isolated) == [path]


def test_file_url_mirror(isolated, shared_data, tmp_path):
    # a folder without the file, then one with a file larger than any copy (sparse), then the real one
    empty, oversized = tmp_path / "empty", tmp_path / "oversized"
    empty.mkdir()
    (oversized / "mnist").mkdir(parents=True)
    with open(oversized / "mnist" / LABELS_GZ, "wb") as handle:
        handle.truncate(64 << 20)
    mirrors = [folder.resolve().as_uri() for folder in (empty, oversized, shared_data)]
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", mirrors=mirrors[:2], progress=False)
    limit = fetch.download_size_limit(get_dataset("mnist").file("test-labels"))
    assert [error for _, error in raised.value.attempts] == [
        "FileNotFoundError: No such file or directory",
        f"more than {limit} bytes received; no copy of {LABELS_GZ} is that large"]
    path = fetch.fetch("mnist", "test-labels", mirrors=mirrors, progress=False)
    assert path == isolated / "mnist" / LABELS_GZ and fetch.locate("mnist", "test-labels") == path
    assert files_under(isolated) == [path]


# --------------------------------------------------------------------------------------------------------
# Bad input: settings out of range, malformed mirrors, hostile servers, broken caches and folders. Settings
# raise DataSettingError (a ValueError) with a one-line message naming the setting; files that cannot be had
# raise DatasetNotFoundError; never anything else.


def one_line_setting_error(raised, *words) -> str:
    message = str(raised.value)
    assert isinstance(raised.value, ValueError) and "\n" not in message, message
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    return message


@pytest.mark.parametrize("timeout", [0, -1, -0.5, float("nan"), float("inf"), float("-inf"), 3601, 1e300,
                                     "30", None, True])
def test_timeout_out_of_range_is_a_setting_error(isolated, timeout):
    with pytest.raises(fetch.DataSettingError) as raised:
        fetch.fetch("mnist", "test-labels", timeout=timeout, mirrors=["http://127.0.0.1:9"])
    one_line_setting_error(raised, "timeout (--timeout)", "> 0 and <= 3600", f"got {timeout!r}")
    with pytest.raises(fetch.DataSettingError):
        fetch.load_split("mnist", "test", timeout=timeout, download=False)
    assert not files_under(isolated)


@pytest.mark.parametrize("deadline", [0, -3, float("nan"), float("inf"), 86401, "60", False])
def test_deadline_out_of_range_is_a_setting_error(isolated, deadline):
    with pytest.raises(fetch.DataSettingError) as raised:
        fetch.fetch("mnist", "test-labels", deadline=deadline, mirrors=["http://127.0.0.1:9"])
    one_line_setting_error(raised, "deadline must be None (automatic", "> 0 and <= 86400", f"got {deadline!r}")


def test_valid_timeouts_and_deadlines_are_accepted(isolated, shared_data):
    for timeout, deadline in [(1, None), (0.25, 0.5), (3600, 86400), (np.float64(2.5), np.int64(10))]:
        path = fetch.fetch("mnist", "test-labels", data_dir=shared_data, timeout=timeout, deadline=deadline)
        assert path == shared_data / "mnist" / LABELS_GZ


@pytest.mark.parametrize("value, problem", [
    (":", "holds no URL"),
    (f"{os.pathsep}{os.pathsep}", "holds no URL"),
    ("127.0.0.1:8000", "does not start with a scheme"),
    ("mirror.example.org/mnist", "does not start with a scheme"),
    ("ftp://127.0.0.1/data", "scheme 'ftp' is not supported (only http, https, file)"),
    ("gopher://127.0.0.1/data", "scheme 'gopher' is not supported"),
    ("http://", "names no host"),
    ("http://:8000/data", "names no host"),
    ("http://[::1/data", "not a valid URL"),
    ("http://127.0.0.1:99999/", "not a valid URL"),
    ("http://127.0.0.1:port/", "not a valid URL"),
    ("http://127.0.0.1:0/", "port 0"),
    ("http://127.0.0.1/data?token=1", "no query"),
    ("http://127.0.0.1/data#part", "no query (?) or fragment (#)"),
    ("file://server/folder", "a file URL names no host"),
    ("file://", "names no folder"),
    ("http://127.0.0.1/ok garbage", "'garbage' is not one"),
    ("http://127.0.0.1/ok http://mirror.example/\u00e9", "non-ASCII"),
])
def test_malformed_env_mirrors_is_a_setting_error(isolated, shared_data, monkeypatch, value, problem):
    monkeypatch.setenv("FEDSIM_MIRRORS", value)
    with pytest.raises(fetch.DataSettingError) as raised:
        fetch.fetch("mnist", "test-labels", progress=False, timeout=1)
    one_line_setting_error(raised, "FEDSIM_MIRRORS must hold base URLs such as http://host:port/path",
                           f"separated by whitespace or {os.pathsep!r}", problem)
    with pytest.raises(fetch.DataSettingError):
        fetch.mirror_urls("fashion-mnist", "test-images")
    # reported whether or not a download is needed, so a typo shows up before it matters...
    with pytest.raises(fetch.DataSettingError):
        fetch.load_split("mnist", "test", data_dir=shared_data)
    # ...but not where downloading is off, and FEDSIM_MIRRORS is not used
    assert fetch.fetch("mnist", "test-labels", data_dir=shared_data, download=False).name == LABELS_GZ
    assert not files_under(isolated)


def test_blank_env_mirrors_means_the_registry_mirrors(isolated, monkeypatch):
    monkeypatch.setenv("FEDSIM_MIRRORS", "  \n\t ")
    assert fetch.mirror_urls("mnist", "test-labels") == [
        f"{mirror.rstrip('/')}/{LABELS_GZ}" for mirror in get_dataset("mnist").mirrors]
    # empty entries between URLs are skipped
    monkeypatch.setenv("FEDSIM_MIRRORS", f"{os.pathsep}http://127.0.0.1:1{os.pathsep}{os.pathsep}"
                                         f"https://mirror.example/x/{os.pathsep} file://localhost/srv")
    assert fetch.mirror_urls("mnist", "test-labels") == [
        f"http://127.0.0.1:1/mnist/{LABELS_GZ}", f"https://mirror.example/x/mnist/{LABELS_GZ}",
        f"file://localhost/srv/mnist/{LABELS_GZ}"]


@pytest.mark.parametrize("mirrors, problem", [
    (5, "not a string or a sequence"),
    ([b"http://127.0.0.1/"], "a bytes, not a string"),
    (["http://127.0.0.1/", None], "a NoneType, not a string"),
    (["ftp://127.0.0.1/"], "scheme 'ftp'"),
    (["http://127.0.0.1/a b"], "contains a space"),
    ("http://127.0.0.1/ nonsense", "'nonsense' is not one"),
])
def test_malformed_mirrors_argument_is_a_setting_error(isolated, mirrors, problem):
    with pytest.raises(fetch.DataSettingError) as raised:
        fetch.fetch("mnist", "test-labels", mirrors=mirrors, progress=False, timeout=1)
    one_line_setting_error(raised, "mirrors must", problem)


# --- data_dir and the other folder settings


def make_symlink_loop(folder: Path) -> Path:
    loop = folder / "loop"
    loop.symlink_to(loop)
    return loop


@pytest.mark.parametrize("kind", ["missing", "file", "empty", "not a path", "unknown user", "symlink loop"])
def test_bad_data_dir_is_a_setting_error(isolated, tmp_path, kind):
    from fedsim.data.load import load_dataset
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    data_dir, words = {
        "missing": (tmp_path / "nonexistent", [str(tmp_path / "nonexistent"), "does not exist"]),
        "file": (a_file, [str(a_file), "is not a folder"]),
        "empty": ("", ["empty path"]),
        "not a path": (42, ["must be the path of a folder", "got int"]),
        "unknown user": ("~no-such-user-fedsim/data", ["cannot expand '~'"]),
        "symlink loop": (make_symlink_loop(tmp_path), ["cannot be examined"]),
    }[kind]
    calls = [lambda: fetch.fetch("mnist", "test-labels", data_dir=data_dir, download=False),
             lambda: fetch.load_split("mnist", "test", data_dir=data_dir, download=False),
             lambda: fetch.locate("mnist", "test-labels", data_dir=data_dir),
             lambda: fetch.dataset_status("mnist", data_dir=data_dir),
             lambda: fetch.search_path(data_dir),
             lambda: load_dataset("mnist", data_dir=data_dir, download=False)]
    for call in calls:
        with pytest.raises(fetch.DataSettingError) as raised:
            call()
        one_line_setting_error(raised, "data_dir (--data-dir)", *words)
    assert not files_under(isolated)


def test_bad_env_folders(isolated, tmp_path, monkeypatch):
    # a FEDSIM_DATA folder that is a symlink loop is searched (in vain) and listed with what is wrong
    loop = make_symlink_loop(tmp_path)
    monkeypatch.setenv("FEDSIM_DATA", str(loop))
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", download=False)
    assert f"{loop}  [FEDSIM_DATA]  (cannot be examined" in str(raised.value)
    # a ~user that cannot be expanded, in FEDSIM_DATA or FEDSIM_CACHE
    monkeypatch.setenv("FEDSIM_DATA", "~no-such-user-fedsim/data")
    with pytest.raises(fetch.DataSettingError) as raised:
        fetch.locate("mnist", "test-labels")
    one_line_setting_error(raised, "FEDSIM_DATA", "cannot expand '~'", "~no-such-user-fedsim/data")
    monkeypatch.delenv("FEDSIM_DATA")
    monkeypatch.setenv("FEDSIM_CACHE", "~no-such-user-fedsim/cache")
    with pytest.raises(fetch.DataSettingError) as raised:
        fetch.fetch("mnist", "test-labels", mirrors=["http://127.0.0.1:9"])
    one_line_setting_error(raised, "FEDSIM_CACHE", "cannot expand '~'")


def test_unknown_names_are_setting_errors(isolated):
    from fedsim.data.load import load_dataset
    for call, setting in [(lambda: fetch.fetch("cifar10", "test-labels"), "dataset name"),
                          (lambda: fetch.fetch("mnist", ["test-labels"]), "file_key"),
                          (lambda: fetch.load_split("mnist", "validation"), "split"),
                          (lambda: load_dataset("cifar10"), "dataset"),
                          (lambda: load_dataset("mnist", pipeline="vgg"), "pipeline"),
                          (lambda: load_dataset("mnist", train_split="all"), "train_split")]:
        with pytest.raises(fetch.DataSettingError) as raised:
            call()
        one_line_setting_error(raised, setting, "must be one of")


# --- hostile servers: the overall deadline and the size cap


def download_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("fedsim-download")]


def test_trickling_servers_stopped_by_the_deadline(isolated, shared_data, serve):
    body, header = serve(handler=TRICKLE_BODY), serve(handler=TRICKLE_HEADER)
    start = time.monotonic()
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", mirrors=[body, header], progress=False, timeout=5, deadline=1.5)
    elapsed = time.monotonic() - start
    attempts = dict(raised.value.attempts)
    assert list(attempts) == [f"{base}/mnist/{LABELS_GZ}" for base in (body, header)]
    for error in attempts.values():
        assert "gave up at the download's deadline of 1.5 s" in error, attempts
    assert "bytes received" in attempts[f"{body}/mnist/{LABELS_GZ}"]
    assert elapsed < 2 * 1.5 + 3, elapsed
    assert files_under(isolated) == []
    time.sleep(0.2)
    assert download_threads() == []     # the connections were shut down: no worker is left trickling
    # the next mirror is tried after a trickling one
    start = time.monotonic()
    path = fetch.fetch("mnist", "test-labels", mirrors=[body, serve(shared_data)], progress=False, timeout=5,
                       deadline=1.0)
    assert path == isolated / "mnist" / LABELS_GZ and files_under(isolated) == [path]
    assert time.monotonic() - start < 1.0 + 3


def test_automatic_deadline_follows_the_file_size(isolated, serve, monkeypatch):
    labels, images = get_dataset("mnist").file("test-labels"), get_dataset("mnist").file("train-images")
    assert fetch.download_deadline(labels) == pytest.approx(60 + 10008 / 65536)
    assert fetch.download_deadline(images) == pytest.approx(60 + 47040016 / 65536)   # about 13 minutes
    assert fetch.download_size_limit(labels) == 10008 + (1 << 20)
    # deadline=None uses download_deadline: shrink its constants to see it at work
    monkeypatch.setattr(fetch, "DEADLINE_BASE_SECONDS", 0.5)
    monkeypatch.setattr(fetch, "DEADLINE_MIN_BYTES_PER_SECOND", 10 ** 9)
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", mirrors=[serve(handler=TRICKLE_BODY)], progress=False)
    [(_, error)] = raised.value.attempts
    assert "deadline of 0.50001 s" in error, error


def test_oversized_bodies_cut_off_at_the_size_cap(isolated, shared_data, serve):
    endless, huge = serve(handler=ENDLESS), serve(handler=HUGE_ANNOUNCED)
    limit = fetch.download_size_limit(get_dataset("mnist").file("test-labels"))
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", mirrors=[endless, huge], progress=False, timeout=5)
    errors = [error for _, error in raised.value.attempts]
    assert errors == [f"more than {limit} bytes received; no copy of {LABELS_GZ} is that large",
                      f"server announces {10 ** 12} bytes; no copy of {LABELS_GZ} is larger than {limit}"]
    assert files_under(isolated) == []
    path = fetch.fetch("mnist", "test-labels", mirrors=[endless, huge, serve(shared_data)], progress=False)
    assert files_under(isolated) == [path]


# --- broken caches and search folders


def test_cache_that_cannot_take_the_file_stops_the_downloads(isolated, shared_data, serve):
    # where the file should go, there is a folder: no mirror can help, so only the first is tried
    blocker = isolated / "mnist" / LABELS_GZ
    blocker.mkdir(parents=True)
    first, second = serve(shared_data), serve(shared_data)
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", mirrors=[first, second], progress=False, timeout=5)
    assert raised.value.attempts == ((f"{first}/mnist/{LABELS_GZ}", "downloaded and verified, but not saved"),)
    message = str(raised.value)
    assert f"downloads stopped: cannot save the download in the cache folder {isolated / 'mnist'}" in message
    assert "Is a directory" in message and "set FEDSIM_CACHE to another folder" in message
    assert files_under(isolated) == []       # no temporary file left behind
    assert blocker.is_dir()


FULL_DISK_SCRIPT = """
import json, resource, sys
from fedsim.data import fetch
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))   # no file may grow past 1 KiB: a full disk
try:
    fetch.fetch("mnist", "test-labels", mirrors=sys.argv[1:], progress=False, timeout=5)
except fetch.DatasetNotFoundError as error:
    print(json.dumps({"attempts": error.attempts, "message": str(error)}))
"""


def test_full_disk_stops_the_downloads_and_leaves_nothing(isolated, shared_data, serve):
    first, second = serve(shared_data), serve(shared_data)
    result = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, first, second], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert [url for url, _ in report["attempts"]] == [f"{first}/mnist/{LABELS_GZ}"]
    assert "downloads stopped: cannot save the download" in report["message"]
    assert "File too large" in report["message"] and "free space there" in report["message"]
    assert files_under(isolated) == []


def test_cache_folder_that_cannot_be_created(isolated, tmp_path, serve, shared_data, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("in the way")
    monkeypatch.setenv("FEDSIM_CACHE", str(a_file / "cache"))
    with pytest.raises(fetch.DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", mirrors=[serve(shared_data)], progress=False)
    assert "no download tried: cannot create the cache folder" in str(raised.value)
    assert raised.value.attempts == ()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="permissions do not stop root")
def test_unwritable_cache_folder(isolated, serve, shared_data):
    (isolated / "mnist").mkdir(parents=True)
    (isolated / "mnist").chmod(0o500)
    try:
        with pytest.raises(fetch.DatasetNotFoundError) as raised:
            fetch.fetch("mnist", "test-labels", mirrors=[serve(shared_data)], progress=False)
        assert "is not writable" in str(raised.value) and raised.value.attempts == ()
    finally:
        (isolated / "mnist").chmod(0o700)


def not_found_and_peak_memory(call) -> tuple[fetch.DatasetNotFoundError, int]:
    """The DatasetNotFoundError that ``call()`` raises, and the peak of Python's allocations meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(fetch.DatasetNotFoundError) as raised:
            call()
        return raised.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_oversized_file_in_a_search_folder_is_rejected_unread(isolated, tmp_path):
    folder = tmp_path / "junk"
    junk = folder / "mnist" / LABELS_GZ
    junk.parent.mkdir(parents=True)
    with open(junk, "wb") as handle:         # 64 MiB, sparse: takes no disk space
        handle.truncate(64 << 20)
    limit = fetch.download_size_limit(get_dataset("mnist").file("test-labels"))
    error, peak = not_found_and_peak_memory(lambda: fetch.fetch("mnist", "test-labels", data_dir=folder,
                                                                download=False))
    reason = f"larger than {limit} bytes, more than any copy of {LABELS_GZ} can be"
    assert error.rejected == ((junk, reason),)
    assert peak < limit + (2 << 20), peak


def test_gzip_bomb_in_a_search_folder_is_rejected_in_bounded_memory(isolated, tmp_path):
    file = get_dataset("mnist").file("test-images")
    bomb = gzip.compress(bytes(1 << 20)) * 512          # 512 KiB that decompress to 512 MiB
    folder = tmp_path / "bombs"
    (folder / "mnist").mkdir(parents=True)
    (folder / "mnist" / file.filename).write_bytes(bomb)
    error, peak = not_found_and_peak_memory(lambda: fetch.load_split("mnist", "test", data_dir=folder,
                                                                     download=False))
    reason = (f"decompressed size is more than {file.decompressed_size} bytes (reading stopped there), "
              f"expected {file.decompressed_size}")
    assert [(path.name, why) for path, why in error.rejected] == [(file.filename, reason)]
    assert peak < file.decompressed_size + (2 << 20), peak    # one buffer of the registry's size, and a little
