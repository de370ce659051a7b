"""fedsim.files: the one atomic writer (run folders, the array cache and downloads all write through it)."""

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from fedsim import files
from fedsim.files import atomic_file, write_atomic


def test_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "file.json"
    write_atomic(path, b"old")
    write_atomic(path, "new content, as UTF-8: \u00e9")
    assert path.read_bytes() == "new content, as UTF-8: \u00e9".encode("utf-8")
    assert sorted(os.listdir(tmp_path)) == ["file.json"]


@pytest.mark.parametrize("failing", ["write", "replace"])
def test_a_failed_write_keeps_the_old_content_and_removes_the_temporary(tmp_path, monkeypatch, failing):
    path = tmp_path / "file.json"
    write_atomic(path, b"old")

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    if failing == "replace":
        monkeypatch.setattr(os, "replace", disk_full)
        with pytest.raises(OSError, match="disk full"):
            write_atomic(path, b"new")
    else:
        with pytest.raises(OSError, match="disk full"), atomic_file(path) as handle:
            handle.write(b"half of it")
            disk_full()
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["file.json"]


def test_a_folder_in_the_way_is_an_os_error_naming_both_paths(tmp_path):
    blocker = tmp_path / "target"
    blocker.mkdir()
    with pytest.raises(IsADirectoryError) as raised:
        write_atomic(blocker, b"data")
    assert raised.value.filename2 == str(blocker) and raised.value.filename.endswith(".part")
    assert sorted(os.listdir(tmp_path)) == ["target"]


def test_the_temporary_is_hidden_unique_and_beside_the_target(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def replace(source, target):
        seen.append((os.path.basename(source), os.path.dirname(source), open(source, "rb").read()))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    # the first random name is taken by another writer: O_EXCL notices, and another name is drawn
    taken = tmp_path / f".entry.{os.getpid()}-00000000.part"
    taken.write_bytes(b"another writer's")
    tokens = iter(["00000000", "11111111"])
    monkeypatch.setattr(files.secrets, "token_hex", lambda size: next(tokens))
    array = np.arange(1000, dtype=np.float32)
    with atomic_file(tmp_path / "entry", durable=False) as handle:
        handle.write(memoryview(array).cast("B"))           # streamed, as the array cache does
    [(name, folder, content)] = seen
    assert name == f".entry.{os.getpid()}-11111111.part" and folder == str(tmp_path)
    assert content == array.tobytes() and (tmp_path / "entry").read_bytes() == array.tobytes()
    assert taken.read_bytes() == b"another writer's"


def test_new_files_follow_the_umask(tmp_path):
    script = ("import os, sys; os.umask(0o027); from fedsim.files import write_atomic; "
              "write_atomic(sys.argv[1], b'x')")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "file")], check=True, timeout=60)
    assert stat.S_IMODE((tmp_path / "file").stat().st_mode) == 0o640
