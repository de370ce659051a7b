"""Writing a file atomically, the one place where fedsim moves a file into place, and reading a file whose hash a
run records (this module imports nothing of fedsim).

``with atomic_file(path) as handle:`` gives a binary file opened under a temporary name
``.<name>.<pid>-<random>.part`` in the folder of ``path``. When the block ends without an error, the file is
flushed to disk (fsync), moved over ``path`` with :func:`os.replace` (atomic within one file system, on POSIX
and Windows) and the folder is fsynced, so ``path`` holds either its old or its new content, never a part of
either, even after a crash. When the block raises, the temporary file is removed and the error goes on.

* The temporary name is created with ``O_EXCL`` and a random part, so processes writing the same path at once
  never share a temporary file: each writes a whole file and the last rename wins.
* A new file gets mode ``0o666`` minus the umask, as :func:`open` gives.
* The block writes what it likes through the handle, so a large array is streamed (``handle.write(memoryview)``)
  without a copy in memory.

A run records the SHA-256 of each file of the user's it reads (npz data, a trace). :func:`read_hashed` reads a
file whole and hashes the very bytes it returns, and inside :func:`noted_reads` notes ``(path, sha256)``: a run
compares what its build read with what it records, so a file changed while the run was built (even changed
back before the build ended) is never recorded under a hash of bytes the run did not read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
from pathlib import Path
from typing import BinaryIO, Iterator


def _create_temporary(path: Path) -> tuple[Path, BinaryIO]:
    """A new, empty file beside ``path`` under a name no other writer has, opened for binary writing."""
    while True:
        temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                                 0o666)
        except FileExistsError:
            continue
        return temporary, os.fdopen(descriptor, "wb")


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_file(path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write that replaces ``path`` (its folder must exist) as the module says. ``durable``
    fsyncs the file and the folder; ``False`` for a file whose damage after a crash is detected anyway (a
    checksummed cache entry). An OSError (folder not writable, disk full, a folder in the way) is an error
    of the block: ``path`` stays as it was."""
    path = Path(path)
    temporary, handle = _create_temporary(path)
    try:
        with handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    if durable:
        fsync_folder(path.parent)


def write_atomic(path, data: bytes | str) -> None:
    """Replace ``path`` by ``data`` (text as UTF-8) atomically and durably."""
    with atomic_file(path) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


_NOTES = threading.local()      # .open: the lists of the noted_reads() blocks open in this thread, innermost last


def read_hashed(path) -> tuple[bytes, str]:
    """``(the bytes of the file at path, their SHA-256 in hex)``, noted in each open :func:`noted_reads` block."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    for notes in getattr(_NOTES, "open", ()):
        notes.append((os.path.abspath(path), digest))
    return data, digest


@contextlib.contextmanager
def noted_reads() -> Iterator[list[tuple[str, str]]]:
    """A list that receives ``(absolute path, sha256)`` for each file :func:`read_hashed` reads in the block (in
    this thread; a block inside another notes into both)."""
    notes: list[tuple[str, str]] = []
    if not hasattr(_NOTES, "open"):
        _NOTES.open = []
    _NOTES.open.append(notes)
    try:
        yield notes
    finally:
        _NOTES.open.pop()


__all__ = ["atomic_file", "fsync_folder", "noted_reads", "read_hashed", "write_atomic"]
