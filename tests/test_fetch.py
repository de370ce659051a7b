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
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from fedsim.data import fetch
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
    monkeypatch.setattr(fetch, "SYSTEM_DATASET_DIRS", (tmp_path / "system-datasets",))
    return cache


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Announces 4,542 bytes, sends 1,000, then closes the connection."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "4542")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + bytes(998))
        self.wfile.flush()
        self.close_connection = True

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
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
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
    monkeypatch.setattr(fetch, "SYSTEM_DATASET_DIRS", (third,))
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
    monkeypatch.setattr(fetch, "repo_data_dir", lambda: checkout_data)
    assert fetch.cache_dir() == checkout_data                  # a writable checkout data/ folder
    assert (checkout_data, "checkout data/ folder") in fetch.search_path()
    monkeypatch.setenv("FEDSIM_CACHE", str(isolated))
    assert fetch.cache_dir() == isolated


def test_repo_data_dir_detection(monkeypatch):
    monkeypatch.setenv("FEDSIM_NO_REPO_DATA", "1")
    assert fetch.repo_data_dir() is None
    monkeypatch.delenv("FEDSIM_NO_REPO_DATA")
    checkout = Path(__file__).resolve().parents[1]
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
    base = serve(handler=TruncatingHandler)
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


def test_file_url_mirror(isolated, shared_data):
    path = fetch.fetch("mnist", "test-labels", mirrors=[shared_data.resolve().as_uri()], progress=False)
    assert path == isolated / "mnist" / LABELS_GZ and fetch.locate("mnist", "test-labels") == path
