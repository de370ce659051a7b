"""Downloading (from real HTTP servers on 127.0.0.1): mirrors in order, verification before the cache, the
timeout, the overall deadline and the size cap against hostile servers, caches that cannot take the file."""

import gzip
import hashlib
import http.server
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fedsim.data import fetch, search
from fedsim.data.registry import DATASETS, DataSettingError, get_dataset
from fedsim.data.search import DatasetNotFoundError
from tests.data.conftest import LABELS_GZ, MNIST_TEST_LABEL_COUNTS, files_under, one_line_error, write_file


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


def failed_fetch(isolated, mirrors, name="mnist", **settings) -> DatasetNotFoundError:
    """The error of fetching ``name``'s test labels from ``mirrors`` alone; the cache must hold nothing after."""
    with pytest.raises(DatasetNotFoundError) as raised:
        fetch.fetch(name, "test-labels", mirrors=mirrors, progress=False, **settings)
    assert files_under(isolated) == []                         # neither the final file nor a temporary one
    return raised.value


# --------------------------------------------------------------------------------------------------------
# Downloads from servers on 127.0.0.1


def test_download_lands_in_cache_and_verifies(isolated, shared_data, serve, capsys):
    base = serve(shared_data)
    umask = os.umask(0o027)
    try:
        path = fetch.fetch("mnist", "test-labels", mirrors=[base], progress=True, timeout=5)
    finally:
        os.umask(umask)
    assert path == isolated / "mnist" / LABELS_GZ
    assert path.read_bytes() == (shared_data / "mnist" / LABELS_GZ).read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640          # the umask's mode, not a temporary file's 0o600
    assert files_under(isolated) == [path]                     # no temporary file left behind
    err = capsys.readouterr().err
    assert LABELS_GZ in err and "Downloading data" not in err  # fedsim's progress bar; pooch's log kept quiet
    status = {row["key"]: row for row in search.dataset_status("mnist")}
    assert status["test-labels"]["path"] == path and status["test-labels"]["method"] == "md5"
    # found in the cache from now on, with no server needed
    assert fetch.fetch("mnist", "test-labels", download=False) == path


def test_pooch_and_requests_are_imported_only_to_download_and_pooch_checks_one_md5(isolated, shared_data):
    code = ("import sys\nfrom fedsim.data import fetch\n"
            f"fetch.fetch('mnist', 'test-labels', data_dir={str(shared_data)!r})\n"
            "print(sorted({'pooch', 'requests'} & set(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.split() == ["[]"], (result.stdout, result.stderr)
    # pooch checks the MD5 only where it alone decides
    hashes = {(info.name, file.key): fetch._pooch_hash(file) for info in DATASETS.values()
              for file in info.files}
    assert {key: value for key, value in hashes.items() if value} == {
        ("mnist", "train-images"): "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873"}


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


LIMIT = 10008 + (1 << 20)     # download_size_limit of the test labels (checked below)
FAST = {"timeout": 0.5}
#: Each way a mirror can fail: how it is served, a pattern its attempt's error matches, and the fetch settings
#: (a trickle of a byte a second passes a per-read timeout of 5 s: only the deadline ends it).
BAD_MIRRORS = {
    "closed port": ("closed port", "cannot connect", FAST),
    "404": ("empty folder", "HTTP 404", FAST),
    "silent server": ("silent", "timed out after 0.5 s", FAST),
    "truncated transfer": (TRUNCATING, "IncompleteRead|connection closed", FAST),
    "endless body": (ENDLESS, f"more than {LIMIT} bytes received; no copy of {LABELS_GZ} is that large", FAST),
    "a terabyte announced": (HUGE_ANNOUNCED, rf"server announces {10 ** 12} bytes; no copy of {LABELS_GZ} is "
                                             rf"larger than {LIMIT}", FAST),
    "trickled body": (TRICKLE_BODY, r"gave up at the download's deadline of 1.5 s \(\d+ bytes received\)",
                      {"timeout": 5, "deadline": 1.5}),
    "trickled header": (TRICKLE_HEADER, "gave up at the download's deadline of 1.5 s",
                        {"timeout": 5, "deadline": 1.5}),
    **{kind: (kind, "failed verification", FAST) for kind in ("one label changed", "truncated gzip",
                                                                "error page with status 200", "gzip of wrong size")},
}


@pytest.mark.parametrize("kind", BAD_MIRRORS)
def test_a_bad_mirror_fails_its_attempt_and_the_next_is_tried(isolated, shared_data, tmp_path, serve, request,
                                                              kind):
    how, pattern, settings = BAD_MIRRORS[kind]
    if how in ("closed port", "silent"):
        bad = request.getfixturevalue("closed_port_url" if how == "closed port" else "silent_url")
    elif isinstance(how, type):
        bad = serve(handler=how)
    else:                                                      # a folder without the file, or a corrupt copy
        (tmp_path / "served" / "mnist").mkdir(parents=True)
        if how != "empty folder":
            (tmp_path / "served" / "mnist" / LABELS_GZ).write_bytes(corrupt_copies(shared_data)[how])
        bad = serve(tmp_path / "served")
    raised = failed_fetch(isolated, [bad], **settings)
    [(url, error)] = raised.attempts
    assert url == f"{bad}/mnist/{LABELS_GZ}" and f"{url}: {error}" in str(raised)
    assert re.search(pattern, error), error
    if "deadline" in settings:            # the connections were shut down: no worker is left trickling
        time.sleep(0.2)
        assert [thread for thread in threading.enumerate() if thread.name.startswith("fedsim-download")] == []
    start = time.monotonic()
    path = fetch.fetch("mnist", "test-labels", mirrors=[bad, serve(shared_data)], progress=False, **settings)
    assert time.monotonic() - start < settings.get("deadline", 0.5) + 3
    assert path == isolated / "mnist" / LABELS_GZ and files_under(isolated) == [path]
    assert hashlib.md5(path.read_bytes()).hexdigest() == "ec29112dd5afa0611ce80d1b7f02629c"


def test_all_mirrors_failing_are_listed_in_order(isolated, tmp_path, serve, closed_port_url, silent_url):
    (tmp_path / "empty").mkdir()
    bases = [closed_port_url, serve(tmp_path / "empty"), silent_url]
    raised = failed_fetch(isolated, bases, "fashion-mnist", timeout=0.5)
    assert [url for url, _ in raised.attempts] == [f"{base}/fashion-mnist/{LABELS_GZ}" for base in bases]
    assert "apt-get install dataset-fashion-mnist" in str(raised)


def serve_unzipped_labels(shared_data, tmp_path, serve) -> tuple[str, bytes]:
    """A server that sends the raw IDX for the .gz name; its base URL and the IDX."""
    raw = gzip.decompress((shared_data / "mnist" / LABELS_GZ).read_bytes())
    write_file(tmp_path / "served" / "mnist" / LABELS_GZ, raw)
    return serve(tmp_path / "served"), raw


@pytest.mark.parametrize("unzipped", [False, True])
def test_bad_cached_copy_replaced_by_download(isolated, shared_data, tmp_path, serve, unzipped):
    # a raw IDX sent for the .gz name verifies by SHA-256, and is saved under the name without .gz
    if unzipped:
        base, sent = serve_unzipped_labels(shared_data, tmp_path, serve)
    else:
        base, sent = serve(shared_data), (shared_data / "mnist" / LABELS_GZ).read_bytes()
    stale = isolated / "mnist" / (LABELS_GZ.removesuffix(".gz") if unzipped else LABELS_GZ)
    write_file(stale, sent[:-1])      # a partial download from some other tool
    path = fetch.fetch("mnist", "test-labels", mirrors=[base], progress=False, timeout=5)
    assert path == stale and path.read_bytes() == sent and files_under(isolated) == [path]
    assert search.dataset_status("mnist")[3]["method"] == ("sha256" if unzipped else "md5")


@pytest.mark.parametrize("meanwhile", ["good copy", "bad copy"])
def test_copy_saved_meanwhile_by_another_process(isolated, shared_data, monkeypatch, meanwhile):
    # another process saves the file after this one searched and cleared the way: pooch finds it, fedsim checks it
    target = isolated / "mnist" / LABELS_GZ
    good = (shared_data / "mnist" / LABELS_GZ).read_bytes()
    automatic_deadline = fetch.download_deadline

    def deadline_while_another_process_saves(file):   # called between clearing the way and pooch.retrieve
        target.write_bytes(good if meanwhile == "good copy" else good[:-1])
        return automatic_deadline(file)

    monkeypatch.setattr(fetch, "download_deadline", deadline_while_another_process_saves)
    mirror = "http://127.0.0.1:9"            # never asked: pooch takes the file it finds
    if meanwhile == "good copy":
        assert fetch.fetch("mnist", "test-labels", mirrors=[mirror], progress=False) == target
        return
    with pytest.raises(DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", mirrors=[mirror], progress=False)
    [(_, error)] = raised.value.attempts
    assert error.startswith("not downloaded: a copy saved meanwhile is in the way and failed verification"), error


def test_file_url_mirror(isolated, shared_data, tmp_path):
    # a folder without the file, then one with a file larger than any copy (sparse), then the real one
    empty, oversized = tmp_path / "empty", tmp_path / "oversized"
    empty.mkdir()
    write_file(oversized / "mnist" / LABELS_GZ, size=64 << 20)
    mirrors = [folder.resolve().as_uri() for folder in (empty, oversized, shared_data)]
    limit = search.download_size_limit(get_dataset("mnist").file("test-labels"))
    assert [error for _, error in failed_fetch(isolated, mirrors[:2]).attempts] == [
        "FileNotFoundError: No such file or directory",
        f"more than {limit} bytes received; no copy of {LABELS_GZ} is that large"]
    path = fetch.fetch("mnist", "test-labels", mirrors=mirrors, progress=False)
    assert path == isolated / "mnist" / LABELS_GZ and search.locate("mnist", "test-labels") == path
    assert files_under(isolated) == [path]


# --------------------------------------------------------------------------------------------------------
# Bad input: settings out of range, hostile servers, broken caches. Settings
# raise DataSettingError (a ValueError) with a one-line message naming the setting; files that cannot be had
# raise DatasetNotFoundError; never anything else.


ALLOWED_LIMITS = {"timeout": "timeout (--timeout, seconds) must be a finite number in (0, 3600], got",
                  "deadline": "deadline (seconds) must be a finite number in (0, 86400], or unset (automatic: "
                              "60 s plus the file's size at 64 KiB/s), got"}


@pytest.mark.parametrize("setting, value", [
    *(("timeout", value) for value in [0, -1, -0.5, float("nan"), float("inf"), float("-inf"), 3601, 1e300, "30",
                                       None, True]),
    *(("deadline", value) for value in [0, -3, float("nan"), float("inf"), 86401, "60", False])])
def test_limits_out_of_range_are_setting_errors(isolated, setting, value):
    one_line_error(lambda: fetch.fetch("mnist", "test-labels", mirrors=["http://127.0.0.1:9"],
                                               **{setting: value}), f"{ALLOWED_LIMITS[setting]} {value!r}")
    with pytest.raises(DataSettingError):
        fetch.load_split("mnist", "test", download=False, **{setting: value})
    assert not files_under(isolated)


def test_valid_timeouts_and_deadlines_are_accepted(isolated, shared_data):
    for timeout, deadline in [(1, None), (0.25, 0.5), (3600, 86400), (np.float64(2.5), np.int64(10))]:
        path = fetch.fetch("mnist", "test-labels", data_dir=shared_data, timeout=timeout, deadline=deadline)
        assert path == shared_data / "mnist" / LABELS_GZ


def test_automatic_deadline_follows_the_file_size(isolated, serve, monkeypatch):
    labels, images = get_dataset("mnist").file("test-labels"), get_dataset("mnist").file("train-images")
    assert fetch.download_deadline(labels) == pytest.approx(60 + 10008 / 65536)
    assert fetch.download_deadline(images) == pytest.approx(60 + 47040016 / 65536)   # about 13 minutes
    assert search.download_size_limit(labels) == LIMIT == 10008 + (1 << 20)
    # deadline=None uses download_deadline: shrink its constants to see it at work
    monkeypatch.setattr(fetch, "DEADLINE_BASE_SECONDS", 0.5)
    monkeypatch.setattr(fetch, "DEADLINE_MIN_BYTES_PER_SECOND", 10 ** 9)
    [(_, error)] = failed_fetch(isolated, [serve(handler=TRICKLE_BODY)]).attempts
    assert "deadline of 0.50001 s" in error, error


# --- broken caches and search folders


@pytest.mark.parametrize("problem, words", [("a folder in the way", ["Is a directory"]),
                                            ("under a file", ["Not a directory"]), ("read-only", ["not writable"])])
def test_cache_folder_that_cannot_take_the_file_stops_before_any_download(isolated, shared_data, tmp_path,
                                                                         monkeypatch, serve, problem, words):
    folder = isolated / "mnist"
    if problem == "read-only" and (not hasattr(os, "geteuid") or os.geteuid() == 0):
        pytest.skip("permissions do not stop root")
    if problem == "under a file":
        (tmp_path / "a-file").write_text("in the way")
        monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "a-file" / "cache"))
    else:
        (folder / LABELS_GZ if problem == "a folder in the way" else folder).mkdir(parents=True)
        folder.chmod(0o500 if problem == "read-only" else 0o700)
    try:   # no mirror can help, so none is tried
        raised = failed_fetch(isolated, [serve(shared_data), serve(shared_data)], timeout=5)
    finally:
        if folder.is_dir():
            folder.chmod(0o700)
    assert raised.attempts == () and (problem != "a folder in the way" or (folder / LABELS_GZ).is_dir())
    [note] = [line for line in str(raised).splitlines() if "no download tried" in line]
    for word in [f"no download tried: the cache folder {search.cache_dir() / 'mnist'}", "cannot take the file", *words,
                 "set FEDSIM_CACHE to another, writable folder"]:
        assert word in note, note


FULL_DISK_SCRIPT = """
import json, resource, sys
from fedsim.data import fetch
from fedsim.data.search import DatasetNotFoundError
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))   # no file may grow past 1 KiB: a full disk
try:
    fetch.fetch("mnist", "test-labels", mirrors=sys.argv[1:], progress=False, timeout=5)
except DatasetNotFoundError as error:
    print(json.dumps({"attempts": error.attempts, "message": str(error)}))
"""


@pytest.mark.parametrize("problem", ["a folder in the way", "a full disk"])
def test_a_cache_that_cannot_save_the_download_stops_the_downloads(isolated, shared_data, tmp_path, serve, problem):
    # no mirror can help, so only the first is tried; nothing is left in the cache
    if problem == "a full disk":
        first = serve(shared_data)
        result = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, first, serve(shared_data)],
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        report = json.loads(result.stdout)
        attempts, message, cause = [tuple(item) for item in report["attempts"]], report["message"], "File too large"
    else:                     # a folder where the unzipped download should go
        first, _ = serve_unzipped_labels(shared_data, tmp_path, serve)
        blocker = isolated / "mnist" / LABELS_GZ.removesuffix(".gz")
        blocker.mkdir(parents=True)
        raised = failed_fetch(isolated, [first, serve(shared_data)], timeout=5)
        attempts, message, cause = list(raised.attempts), str(raised), "Is a directory"
        assert blocker.is_dir()
    assert attempts == [(f"{first}/mnist/{LABELS_GZ}", "not saved: the cache folder cannot take the file")]
    for words in [f"downloads stopped: cannot save the download in the cache folder {isolated / 'mnist'}", cause,
                  "free space there", "set FEDSIM_CACHE to another folder"]:
        assert words in message, message
    assert files_under(isolated) == []
