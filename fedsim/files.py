"""Writing a file atomically: the one place where fedsim moves a file into place (it imports nothing of fedsim).

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
"""

from __future__ import annotations

import contextlib
import os
import secrets
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


__all__ = ["atomic_file", "fsync_folder", "write_atomic"]
