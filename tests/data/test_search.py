"""The registry, and finding verified copies on disk: the search path, the cache folders, the data_dir and
FEDSIM_DATA settings, copies that fail verification, and the one error listing where fedsim looked (all with
download=False)."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from fedsim.data import fetch, search
from fedsim.data.registry import DATASETS, FILE_KEYS, DatasetFile, get_dataset
from fedsim.data.search import DatasetNotFoundError
from tests.data.conftest import (LABELS_GZ, MNIST_TEST_LABEL_COUNTS, files_under, one_line_error,
                                 raised_and_peak_memory, write_file)


def test_registry_entries():
    # what every entry must be (DatasetInfo.file relies on the order of the files)
    assert set(DATASETS) == {"mnist", "fashion-mnist"}
    for info in DATASETS.values():
        assert tuple(file.key for file in info.files) == FILE_KEYS
        assert len(info.mirrors) >= 2 and all(m.startswith(("http://", "https://")) for m in info.mirrors)
        assert info.n_classes == 10
        for file in info.files:
            assert file.filename.endswith("-ubyte.gz") and file.gzip_md5 and file.decompressed_size >= 1
    mnist_train_images = get_dataset("mnist").file("train-images")
    assert mnist_train_images.sha256 is None       # unknown: gzip MD5 only, so an uncompressed copy cannot verify
    verification = mnist_train_images.verify(bytes(mnist_train_images.decompressed_size))
    assert not verification.ok and "no SHA-256" in verification.reason
    assert len(get_dataset("fashion-mnist").file("train-images").gzip_md5) == 2   # upstream and Debian
    with pytest.raises(Exception):
        get_dataset("mnist").mirrors = ()   # frozen


def test_unknown_names_are_setting_errors_listing_the_allowed_ones(isolated):
    from fedsim.data.load import load_dataset
    files = "train-images, train-labels, test-images, test-labels"
    datasets = "dataset name must be one of mnist, fashion-mnist"
    for call, words in [
            (lambda: fetch.load_split("cifar10", "train"), f"{datasets}; got 'cifar10'"),
            (lambda: fetch.fetch("cifar10", "test-labels"), "dataset name must be one of"),
            (lambda: search.dataset_status("emnist"), datasets),
            (lambda: fetch.load_split("mnist", "validation"), "split must be one of train, test; got 'validation'"),
            (lambda: search.locate("mnist", "images"), f"file_key must be one of {files}; got 'images'"),
            (lambda: fetch.fetch("mnist", ["test-labels"]), "file_key must be one of"),
            (lambda: load_dataset("cifar10"), "dataset must be one of"),
            (lambda: load_dataset("mnist", pipeline="vgg"), "pipeline must be one of"),
            (lambda: load_dataset("mnist", train_split="all"), "train_split must be one of")]:
        one_line_error(call, words)


# ---------------------------------------------------------------------------------------------------------
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


def test_mnist_test_split_verifies_by_published_md5_and_the_train_split_misses_its_images(isolated, shared_data,
                                                                                          monkeypatch):
    with pytest.raises(DatasetNotFoundError) as raised:       # the error names only the missing file
        fetch.load_split("mnist", "train", data_dir=shared_data, download=False)
    assert isinstance(raised.value, FileNotFoundError) and raised.value.missing == ("train-images",)
    assert "train-images-idx3-ubyte.gz" in str(raised.value) and "train-labels-idx1-ubyte.gz" not in str(raised.value)
    monkeypatch.setenv("FEDSIM_DATA", str(shared_data))
    status = {row["key"]: row for row in search.dataset_status("mnist")}
    for key in ("test-images", "test-labels", "train-labels"):
        assert status[key]["verified"] and status[key]["method"] == "md5", status[key]
        assert status[key]["path"] == shared_data / "mnist" / status[key]["filename"]
    assert status["train-images"] == {"key": "train-images", "filename": "train-images-idx3-ubyte.gz",
                                      "path": None, "verified": False, "method": None, "reason": "not found"}
    images, labels = fetch.load_split("mnist", "test", download=False)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == MNIST_TEST_LABEL_COUNTS
    # the shared Fashion-MNIST files are Debian's copies: they verify by Debian's MD5s
    assert [row["method"] for row in search.dataset_status("fashion-mnist")] == ["md5"] * 4


# ---------------------------------------------------------------------------------------------------------
# Locating local copies


def test_flat_folder_and_shared_filenames(isolated, shared_data, tmp_path):
    # A flat folder holding Fashion-MNIST's test labels: it serves fashion-mnist, and is skipped (with a
    # reason) for mnist, whose file has the same name.
    flat = tmp_path / "flat"
    fashion_labels = write_file(flat / LABELS_GZ, (shared_data / "fashion-mnist" / LABELS_GZ).read_bytes())
    assert search.locate("fashion-mnist", "test-labels", data_dir=flat) == fashion_labels
    assert search.locate("mnist", "test-labels", data_dir=flat) is None
    with pytest.raises(DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", data_dir=flat, download=False)
    assert [path for path, _ in raised.value.rejected] == [fashion_labels]
    message = str(raised.value)
    assert "failed verification" in message and str(fashion_labels) in message
    assert "SHA-256 of the decompressed IDX is not" in message


def test_uncompressed_copy_verifies_by_sha256(isolated, shared_data, tmp_path, monkeypatch):
    folder = tmp_path / "raw"
    raw_labels = write_file(folder / "mnist" / "t10k-labels-idx1-ubyte",
                            gzip.decompress((shared_data / "mnist" / LABELS_GZ).read_bytes()))
    assert search.locate("mnist", "test-labels", data_dir=folder) == raw_labels
    status = {row["key"]: row for row in search.dataset_status("mnist", data_dir=folder)}
    assert status["test-labels"]["method"] == "sha256" and status["test-labels"]["path"] == raw_labels
    # images from the shared folder (FEDSIM_DATA), labels from the uncompressed copy (data_dir)
    monkeypatch.setenv("FEDSIM_DATA", str(shared_data))
    _, labels = fetch.load_split("mnist", "test", data_dir=folder, download=False)
    assert np.bincount(labels).tolist() == MNIST_TEST_LABEL_COUNTS
    # a damaged uncompressed copy is skipped, and the search goes on to the shared folder
    damaged = bytearray(raw_labels.read_bytes())
    damaged[100] = (damaged[100] + 1) % 10
    raw_labels.write_bytes(bytes(damaged))
    assert search.locate("mnist", "test-labels", data_dir=folder) == shared_data / "mnist" / LABELS_GZ


def test_search_order(isolated, shared_data, tmp_path, monkeypatch):
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    source = (shared_data / "mnist" / LABELS_GZ).read_bytes()
    copies = [write_file(folder / "mnist" / LABELS_GZ, source) for folder in (first, second, third)]
    cached = write_file(isolated / "mnist" / LABELS_GZ, source)
    missing = tmp_path / "missing"
    monkeypatch.setenv("FEDSIM_DATA", os.pathsep.join([str(missing), str(second), str(third)]))
    assert search.locate("mnist", "test-labels", data_dir=first) == copies[0]
    assert search.locate("mnist", "test-labels") == copies[1]
    monkeypatch.delenv("FEDSIM_DATA")
    assert search.locate("mnist", "test-labels") == cached
    monkeypatch.setattr(search, "SYSTEM_DATASET_DIRS", (third,))
    cached.unlink()
    assert search.locate("mnist", "test-labels") == copies[2]


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
    bad = write_file(outer / "mnist" / LABELS_GZ, b"not a gzip file")
    monkeypatch.setenv("FEDSIM_DATA", str(outer / "mnist"))
    with pytest.raises(DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", data_dir=outer, download=False)
    assert calls == ["test-labels"]
    assert [path for path, _ in raised.value.rejected] == [bad]


def test_offline_error_lists_every_place_searched(isolated, tmp_path, monkeypatch):
    data_dir, extra = tmp_path / "explicit", tmp_path / "extra"
    data_dir.mkdir()
    monkeypatch.setenv("FEDSIM_DATA", str(extra))
    with pytest.raises(DatasetNotFoundError) as raised:
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


# ---------------------------------------------------------------------------------------------------------
# Folders: cache and checkout


def test_cache_dir_choices(isolated, tmp_path, monkeypatch):
    assert search.cache_dir() == isolated                       # FEDSIM_CACHE wins
    monkeypatch.delenv("FEDSIM_CACHE")
    assert search.cache_dir() == tmp_path / "home" / ".cache" / "fedsim"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert search.cache_dir() == tmp_path / "xdg" / "fedsim"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")       # the XDG spec says: ignore relative paths
    assert search.cache_dir() == tmp_path / "home" / ".cache" / "fedsim"
    checkout_data = tmp_path / "checkout-data"
    checkout_data.mkdir()
    monkeypatch.setattr(search, "repo_data_dir", lambda: checkout_data)
    assert search.cache_dir() == checkout_data                  # a writable checkout data/ folder
    assert (checkout_data, "checkout data/ folder") in search.search_path()
    monkeypatch.setenv("FEDSIM_CACHE", str(isolated))
    assert search.cache_dir() == isolated
    monkeypatch.undo()   # the real repo_data_dir and FEDSIM_NO_REPO_DATA=1 again
    monkeypatch.setenv("FEDSIM_NO_REPO_DATA", "1")
    assert search.repo_data_dir() is None
    monkeypatch.delenv("FEDSIM_NO_REPO_DATA")
    assert search.repo_data_dir() == Path(__file__).resolve().parents[2] / "data"   # the tests run from a checkout


# ---------------------------------------------------------------------------------------------------------
# Folder settings that are not allowed


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
             lambda: search.locate("mnist", "test-labels", data_dir=data_dir),
             lambda: search.dataset_status("mnist", data_dir=data_dir),
             lambda: search.search_path(data_dir),
             lambda: load_dataset("mnist", data_dir=data_dir, download=False)]
    for call in calls:
        one_line_error(call, "data_dir (--data-dir)", *words)
    assert not files_under(isolated)


def test_bad_env_folders(isolated, tmp_path, monkeypatch):
    # a FEDSIM_DATA folder that is a symlink loop is searched (in vain) and listed with what is wrong
    loop = make_symlink_loop(tmp_path)
    monkeypatch.setenv("FEDSIM_DATA", str(loop))
    with pytest.raises(DatasetNotFoundError) as raised:
        fetch.fetch("mnist", "test-labels", download=False)
    assert f"{loop}  [FEDSIM_DATA]  (cannot be examined" in str(raised.value)
    # a ~user that cannot be expanded, in FEDSIM_DATA or FEDSIM_CACHE
    monkeypatch.setenv("FEDSIM_DATA", "~no-such-user-fedsim/data")
    one_line_error(lambda: search.locate("mnist", "test-labels"), "FEDSIM_DATA", "cannot expand '~'",
                           "~no-such-user-fedsim/data")
    monkeypatch.delenv("FEDSIM_DATA")
    monkeypatch.setenv("FEDSIM_CACHE", "~no-such-user-fedsim/cache")
    one_line_error(lambda: fetch.fetch("mnist", "test-labels", mirrors=["http://127.0.0.1:9"]),
                           "FEDSIM_CACHE", "cannot expand '~'")


@pytest.mark.parametrize("key", ["test-labels", "test-images"])
def test_hostile_copy_in_a_search_folder_is_rejected_in_bounded_memory(isolated, tmp_path, key):
    file = get_dataset("mnist").file(key)
    junk = tmp_path / "junk" / "mnist" / file.filename
    if key == "test-labels":   # 64 MiB, sparse (it takes no disk space): rejected unread
        write_file(junk, size=64 << 20)
        limit = search.download_size_limit(file)
        reason = f"larger than {limit} bytes, more than any copy of {LABELS_GZ} can be"
    else:                      # a gzip bomb: 512 KiB that decompress to 512 MiB
        write_file(junk, gzip.compress(bytes(1 << 20)) * 512)
        limit = file.decompressed_size      # one buffer of the registry's size, and a little
        reason = (f"decompressed size is more than {limit} bytes (reading stopped there), expected {limit}")
    error, peak = raised_and_peak_memory(lambda: fetch.fetch("mnist", key, data_dir=tmp_path / "junk",
                                                             download=False), DatasetNotFoundError)
    assert error.rejected == ((junk, reason),)
    assert peak < limit + (2 << 20), peak
