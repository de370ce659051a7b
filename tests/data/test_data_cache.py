"""The cache of computed arrays (fedsim.data.cache) and its use for the STC pipeline (load_dataset)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsim.data import cache, load, preprocess
from fedsim.data.cache import cached_array, entry_path
from fedsim.data.registry import DATASETS, DataSettingError
from tests.conftest import REPO, assert_bitwise

KEY = {"function": "test", "version": 1, "parameters": {"scale": 0.5, "size": 3}}


@pytest.fixture(autouse=True)
def isolated_cache(isolated, monkeypatch):
    """Every test gets its own user cache (conftest's ``isolated``); the cache is on unless a test says otherwise."""
    monkeypatch.delenv("FEDSIM_ARRAY_CACHE", raising=False)
    return isolated / "arrays"


class Counter:
    """A compute() that counts its calls and returns a fresh copy of ``array``."""

    def __init__(self, array):
        self.array, self.calls = array, 0

    def __call__(self):
        self.calls += 1
        return self.array.copy()


def awkward_array():
    """float32 values whose bits a careless round trip would change: -0.0, NaNs with payloads, subnormals."""
    values = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    values[0, 0] = -0.0
    values[0, 1] = np.finfo(np.float32).smallest_subnormal
    values[0, 2] = np.inf
    bits = values.view(np.uint32)
    bits[1, 0] = 0x7FC01234          # a quiet NaN with a payload
    bits[1, 1] = 0xFFA00001          # a negative signalling NaN
    return values


def only_entry(folder: Path) -> Path:
    files = list(folder.iterdir())
    assert len(files) == 1, files
    return files[0]


@pytest.mark.parametrize("array", [awkward_array(), np.arange(12, dtype=np.int64).reshape(3, 4),
                                   np.zeros((0, 4), np.float64), np.array(3.5), np.arange(6, dtype=np.uint8)[::2],
                                   np.ones((2, 3), bool), np.asfortranarray(np.arange(6.0).reshape(2, 3))])
def test_miss_then_hit_is_bitwise_the_computed_array(isolated_cache, array):
    # dtypes, shapes and layouts; bits a careless round trip would change
    compute = Counter(array)
    assert_bitwise(cached_array("values", KEY, compute), array)
    assert compute.calls == 1
    path = only_entry(isolated_cache)
    assert path == entry_path("values", KEY) and path.name.startswith("values-") and path.suffix == ".array"
    second = cached_array("values", KEY, compute)
    assert compute.calls == 1, "a hit must not compute"
    assert_bitwise(second, array)
    assert second.flags.writeable and second.flags.owndata and second.flags.c_contiguous


def test_the_key_and_the_name_select_the_entry(isolated_cache):
    compute = Counter(np.arange(4.0))
    cached_array("values", KEY, compute)
    changed = json.loads(json.dumps(KEY))
    changed["parameters"]["scale"] = 0.5000000000000001     # one ulp: another key
    cached_array("values", changed, compute)
    cached_array("values-b", KEY, compute)
    assert compute.calls == 3
    assert len(list(isolated_cache.iterdir())) == 3
    for key in (KEY, changed):
        cached_array("values", key, compute)
    assert compute.calls == 3


def test_stc_key_changes_with_every_input(monkeypatch):
    fashion, mnist = DATASETS["fashion-mnist"], DATASETS["mnist"]
    base = dict(size=32, mean=0.25, std=0.5, dtype=np.float32)
    key = load.stc_cache_key(fashion.file("train-images"), **base)
    assert key["source"]["sha256"] == fashion.file("train-images").sha256
    assert key["version"] == preprocess.PREPROCESS_VERSION
    assert key["environment"]["numpy"] == np.__version__ and key["environment"]["blas"]
    assert key["environment"]["simd"] == cache.numpy_simd()       # NumPy's AVX-512 loops round otherwise
    variants = [load.stc_cache_key(fashion.file("test-images"), **base),
                load.stc_cache_key(mnist.file("train-images"), **base),   # no SHA-256 known: its MD5s
                *(load.stc_cache_key(fashion.file("train-images"), **dict(base, **change))
                  for change in ({"size": 28}, {"mean": 0.26}, {"std": 0.51}, {"dtype": np.float64}))]
    assert variants[1]["source"]["gzip_md5"] == list(mnist.file("train-images").gzip_md5)
    assert load.stc_cache_key(fashion.file("train-images"), **base) == key
    monkeypatch.setattr(preprocess, "PREPROCESS_VERSION", preprocess.PREPROCESS_VERSION + 1)
    variants.append(load.stc_cache_key(fashion.file("train-images"), **base))      # the code's version
    monkeypatch.setattr(preprocess, "_CHUNK_IMAGES", 100)
    variants.append(load.stc_cache_key(fashion.file("train-images"), **base))      # the chunking
    assert len({entry_path("x", k) for k in [key] + variants}) == len(variants) + 1


def edit_header(data: bytes, **changes) -> bytes:
    """The entry ``data`` with the header's entries in ``changes`` replaced (``key`` merged)."""
    magic, line, payload = data.split(b"\n", 2)
    header = json.loads(line)
    header.update(changes, key=dict(header["key"], **changes.get("key", {})))
    return magic + b"\n" + json.dumps(header).encode() + b"\n" + payload


DAMAGES = {   # name: (what becomes of the entry's bytes, the reason the warning gives)
    "last byte flipped": (lambda data: data[:-1] + bytes([data[-1] ^ 0x01]), "SHA-256"),
    "truncated": (lambda data: data[:-3], "bytes of data"),
    "wrong magic": (lambda data: b"NOT-OURS 1\n" + data.split(b"\n", 1)[1], "wrong first line"),
    "garbled header": (lambda data: b"\n".join([data.split(b"\n")[0], b"{not json", data.split(b"\n", 2)[2]]),
                       "header"),
    # an entry written for another key (as one copied under this key's name)
    "other key": (lambda data: edit_header(data, key={"version": 2}), "another name or key"),
    "huge shape": (lambda data: edit_header(data, shape=[1 << 40, 1 << 20], nbytes=(1 << 60) * 4), "bytes of data"),
    "empty": (lambda data: b"", "wrong first line"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_entry_is_recomputed_with_one_warning_line(isolated_cache, capsys, damage):
    compute = Counter(awkward_array())
    cached_array("values", KEY, compute)
    path = only_entry(isolated_cache)
    spoil, reason = DAMAGES[damage]
    path.write_bytes(spoil(path.read_bytes()))
    capsys.readouterr()
    got = cached_array("values", KEY, compute)
    assert compute.calls == 2, "a damaged entry must never be trusted"
    assert_bitwise(got, compute.array)
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and warning.startswith("fedsim: warning: ") and reason in warning
    assert str(path) in warning
    # the entry was replaced by a good one: the next call is a silent hit
    again = cached_array("values", KEY, compute)
    assert_bitwise(again, compute.array)
    assert compute.calls == 2 and capsys.readouterr().err == ""


def test_disabled_by_the_environment_variable_or_the_argument_and_a_bad_value_is_one_line(isolated_cache,
                                                                                          monkeypatch):
    compute = Counter(np.arange(3.0))
    for value in ("0", "off", "False", "no"):
        monkeypatch.setenv("FEDSIM_ARRAY_CACHE", value)
        cached_array("values", KEY, compute)
    assert compute.calls == 4 and not isolated_cache.exists()
    monkeypatch.setenv("FEDSIM_ARRAY_CACHE", "1")
    cached_array("values", KEY, compute)
    assert compute.calls == 5 and isolated_cache.exists()
    cached_array("values", KEY, compute, enabled=False)          # neither read ...
    assert compute.calls == 6
    entry_path("values", KEY).unlink()
    cached_array("values", KEY, compute, enabled=False)          # ... nor written
    assert not entry_path("values", KEY).exists()
    monkeypatch.setenv("FEDSIM_ARRAY_CACHE", "0")
    cached_array("values", KEY, compute, enabled=True)           # the argument wins
    assert entry_path("values", KEY).exists()
    monkeypatch.setenv("FEDSIM_ARRAY_CACHE", "maybe")
    with pytest.raises(DataSettingError, match="FEDSIM_ARRAY_CACHE must be 1 .* or 0 .*'maybe'"):
        cached_array("values", KEY, Counter(np.zeros(1)))
    with pytest.raises(DataSettingError, match="FEDSIM_ARRAY_CACHE"):
        load.load_dataset("synthetic", synthetic_devices=3)   # checked before anything is loaded


@pytest.mark.parametrize("name, key, result, error, pattern", [
    *((name, KEY, np.zeros(1), ValueError, "name must be") for name in ("", ".hidden", "a/b", "a b", None)),
    *(("values", key, np.zeros(1), ValueError, "JSON values") for key in ({"mean": float("nan")}, {"what": object()})),
    *(("values", KEY, result, TypeError, "NumPy array of numbers") for result in ([1.0, 2.0], np.array([object()])))])
def test_bad_names_keys_and_results_are_refused(name, key, result, error, pattern):
    with pytest.raises(error, match=pattern):
        cached_array(name, key, lambda: result)


class FailingFile:
    """A file object that writes its first ``allowed`` calls and then fails like a full disk."""

    def __init__(self, handle, allowed: int):
        self.handle, self.allowed = handle, allowed

    def write(self, data):
        if self.allowed == 0:
            self.handle.write(bytes(data)[: len(data) // 2])       # half of it reached the disk
            raise OSError(28, "No space left on device")
        self.allowed -= 1
        return self.handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()
        return False


@pytest.mark.parametrize("failure", [0, 1, 2, "the cache is a file"])
def test_a_cache_that_cannot_take_the_entry_costs_one_warning_line(isolated_cache, tmp_path, monkeypatch, capsys,
                                                                   failure):
    # a disk that fills up at the 1st, 2nd or 3rd write (magic, header, data), or a file where the cache should be
    if failure == "the cache is a file":
        (tmp_path / "a-file").write_text("not a folder")
        monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "a-file"))
        reason = "Not a directory"
    else:
        real_fdopen = os.fdopen
        monkeypatch.setattr(cache.os, "fdopen", lambda *a, **k: FailingFile(real_fdopen(*a, **k), failure))
        reason = "No space left on device"
    compute = Counter(awkward_array())
    for calls in (1, 2):
        assert_bitwise(cached_array("values", KEY, compute), compute.array)
        *unreadable, warning = capsys.readouterr().err.splitlines()   # a file is also an entry that cannot be read
        assert compute.calls == calls and len(unreadable) == (failure == "the cache is a file"), unreadable
        assert "cannot store the computed array" in warning and "continuing without it" in warning
        assert reason in warning and warning.startswith("fedsim: warning: "), warning
    # neither a partial entry nor a temporary file may be left
    assert not isolated_cache.exists() or list(isolated_cache.iterdir()) == []


WRITER = """
import sys
import numpy as np
from fedsim.data.cache import cached_array
array = np.arange(2_000_000, dtype=np.float64) * 0.5
for _ in range(5):
    got = cached_array("shared", {"k": 1}, lambda: array.copy())
    assert got.tobytes() == array.tobytes()
print("ok")
"""


def test_two_processes_writing_one_entry_at_once(isolated_cache):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    (isolated_cache.parent).mkdir(parents=True, exist_ok=True)
    processes = [subprocess.Popen([sys.executable, "-c", WRITER], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and out.strip() == "ok", err
        assert "warning" not in err, err
    assert [p.suffix for p in isolated_cache.iterdir()] == [".array"]


def test_load_dataset_caches_the_stc_pipeline_bitwise(isolated_cache, shared_data, monkeypatch):
    calls = []
    real = load.stc_pipeline
    monkeypatch.setattr(load, "stc_pipeline", lambda *a, **k: calls.append(1) or real(*a, **k))
    arguments = dict(data_dir=shared_data, download=False, train_split="test")
    computed = load.load_dataset("fashion-mnist", "stc", cache=False, **arguments)
    assert len(calls) == 1 and not isolated_cache.exists()
    stored = load.load_dataset("fashion-mnist", "stc", **arguments)
    assert len(calls) == 2
    loaded = load.load_dataset("fashion-mnist", "stc", **arguments)
    assert len(calls) == 2, "the second load must read the cached array"
    for data in (stored, loaded):
        assert_bitwise(data.x_test, computed.x_test)
        assert_bitwise(data.x_train, computed.x_train)
        assert np.array_equal(data.y_test, computed.y_test)
    path = only_entry(isolated_cache)
    assert path.name.startswith("fashion-mnist-test-stc-")
    # the LAQ pipeline is not cached
    load.load_dataset("fashion-mnist", "laq", **arguments)
    assert len(list(isolated_cache.iterdir())) == 1


def test_data_info_shows_the_cache(isolated_cache, capsys, monkeypatch):
    from fedsim import cli
    cached_array("values", KEY, Counter(np.zeros(1000)))
    assert cli.main(["data", "info"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("preprocessed arrays:"))
    assert str(isolated_cache) in line and "1 entries" in line and "off" not in line
    monkeypatch.setenv("FEDSIM_ARRAY_CACHE", "0")
    assert cli.main(["data", "info"]) == 0
    assert "off (FEDSIM_ARRAY_CACHE=0)" in capsys.readouterr().out
