"""Reading IDX files, the format of MNIST and Fashion-MNIST.

Layout (all integers big-endian)::

    bytes 0-1   0x00 0x00          magic, zero
    byte  2     type               0x08 = unsigned byte (the only type fedsim reads)
    byte  3     ndim               number of dimensions
    4 * ndim    dims               uint32 size of each dimension
    prod(dims)  payload            the entries, row-major

A file may be gzip-compressed (:func:`~fedsim.data.registry.is_gzip`), and is then decompressed as a stream, so
memory stays at the size the header declares (plus about 1 MiB): a small file that decompresses to gigabytes
is rejected after reading a few kilobytes past the declared end, a header declaring more than the file can
hold before anything is allocated. Anything else is rejected with a ValueError that names the file and says
what is wrong: a wrong magic or type byte, a truncated header or payload, bytes after the payload, images and
labels of different counts or dimensions, labels outside ``[0, n_classes)``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import stat
import zlib
from math import prod

import numpy as np

from fedsim.constraints import Integer, Optional
from fedsim.data.registry import is_gzip, read_at_most, read_into

# IDX type bytes other than 0x08, to name them when rejecting a file.
_OTHER_IDX_TYPES = {0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
_UINT8_TYPE = 0x08
# Past the payload, a gzip stream (or a stream of unknown size) is read at most this far: enough to count a
# few stray bytes exactly, and the most memory a gzip bomb's tail can take.
_TRAILING_BYTES = 1 << 16
# Deflate expands at most 1032:1 (zlib's documented limit), so a gzip file of n bytes holds at most this
# many times n; a header declaring more cannot be honest, and is rejected before anything is allocated.
_MAX_GZIP_RATIO = 1032
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


class _BufferReader(io.RawIOBase):
    """A read-only stream over a memoryview of bytes, without copying them."""

    def __init__(self, buffer: memoryview):
        super().__init__()
        self._view = buffer               # one-dimensional, of bytes
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        count = min(len(target), len(self._view) - self._position)
        target[:count] = self._view[self._position:self._position + count]
        self._position += count
        return count


@contextlib.contextmanager
def _opened(source, name: str | None):
    """Yield ``(stream, label, compressed, stored_size)`` for a path or bytes.

    ``stream`` reads the IDX bytes (decompressing gzip on the fly), ``stored_size`` is the size of the
    stored (possibly compressed) bytes, or None when unknown (a pipe or device).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
        raw, label, stored = io.BufferedReader(_BufferReader(view)), name or "<IDX bytes>", len(view)
    elif isinstance(source, (str, os.PathLike)):
        raw = open(os.fspath(source), "rb")
        info = os.fstat(raw.fileno())
        label, stored = name or os.fspath(source), info.st_size if stat.S_ISREG(info.st_mode) else None
    else:
        raise ValueError(f"IDX source must be a path (str or os.PathLike) or bytes, got {type(source).__name__}")
    compressed = is_gzip(raw.peek(2)[:2])
    with raw, (gzip.GzipFile(fileobj=raw, mode="rb") if compressed else contextlib.nullcontext(raw)) as stream:
        yield stream, label, compressed, stored


def read_idx(source, *, name: str | None = None, max_bytes: int | None = None) -> np.ndarray:
    """A new, writable uint8 array of shape ``dims`` from an IDX file (a path) or its bytes, gzip or raw.

    ``max_bytes``: the most bytes the decompressed file may have, header included, when the caller knows it
    (checked before anything is allocated). ``name`` is the source in error messages (default: the path, or
    ``"<IDX bytes>"``). ValueError for anything but a well-formed IDX file of type 0x08 (the module docstring);
    OSError if the file cannot be read.
    """
    Optional(Integer(low=0), "no limit").check("max_bytes", max_bytes)
    with _opened(source, name) as (stream, label, compressed, stored):
        try:
            return _parse(stream, label, compressed, stored, max_bytes)
        except _GZIP_ERRORS as error:
            if not compressed:
                raise
            raise ValueError(f"IDX file {label}: starts like gzip (1f 8b) but does not decompress: {error}") from None


def _parse(stream, label: str, compressed: bool, stored: int | None, max_bytes: int | None) -> np.ndarray:
    head = read_at_most(stream, 4)
    if len(head) < 4:
        raise ValueError(f"IDX file {label}: only {len(head)} bytes, shorter than the 4-byte magic")
    if head[0] != 0 or head[1] != 0:
        raise ValueError(f"IDX file {label}: wrong magic {head.hex(' ')}; an IDX file starts with "
                         f"00 00, then the type byte and the number of dimensions")
    type_byte, ndim = head[2], head[3]
    if type_byte != _UINT8_TYPE:
        known = _OTHER_IDX_TYPES.get(type_byte)
        described = f"0x{type_byte:02x} ({known})" if known else f"0x{type_byte:02x} (not an IDX type)"
        raise ValueError(f"IDX file {label}: type byte is {described}; only 0x08 (unsigned byte) is supported")
    if ndim < 1:
        raise ValueError(f"IDX file {label}: number of dimensions is 0, expected at least 1")
    header_size = 4 + 4 * ndim
    dims_bytes = read_at_most(stream, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise ValueError(f"IDX file {label}: truncated header: {ndim} dimensions need {header_size} bytes, "
                         f"the file has {4 + len(dims_bytes)}")
    dims = tuple(int(d) for d in np.frombuffer(dims_bytes, dtype=">u4"))
    expected = prod(dims)
    if max_bytes is not None and header_size + expected > max_bytes:
        raise ValueError(f"IDX file {label}: dims {dims} make a file of {header_size + expected} bytes, more "
                         f"than the {max_bytes} bytes this file has (max_bytes)")
    if not compressed and stored is not None:       # a raw file or bytes: the size is known, check first
        present = stored - header_size
        if present < expected:
            raise ValueError(f"IDX file {label}: truncated payload: dims {dims} need {expected} bytes, "
                             f"only {present} present")
        if present > expected:
            raise ValueError(f"IDX file {label}: {present - expected} unexpected bytes after the payload "
                             f"(dims {dims} need {expected} bytes, {present} present)")
    if compressed and stored is not None and header_size + expected > stored * _MAX_GZIP_RATIO:
        raise ValueError(f"IDX file {label}: truncated payload: dims {dims} need {expected} bytes, more than "
                         f"a gzip file of {stored} bytes can hold (at most {stored * _MAX_GZIP_RATIO} "
                         f"decompressed)")
    try:
        out = np.empty(expected, dtype=np.uint8)
    except (MemoryError, ValueError):
        raise ValueError(f"IDX file {label}: dims {dims} need {expected} bytes, more than can be allocated") from None
    filled = read_into(stream, memoryview(out))
    if filled < expected:
        raise ValueError(f"IDX file {label}: truncated payload: dims {dims} need {expected} bytes, "
                         f"only {filled} present")
    if compressed or stored is None:                # the end is only found by reading on (a little)
        extra = len(read_at_most(stream, _TRAILING_BYTES + 1))
        if extra > _TRAILING_BYTES:
            raise ValueError(f"IDX file {label}: more than {_TRAILING_BYTES} unexpected bytes after the "
                             f"payload (dims {dims} need {expected} bytes); stopped reading there")
        if extra:
            raise ValueError(f"IDX file {label}: {extra} unexpected bytes after the payload "
                             f"(dims {dims} need {expected} bytes, {expected + extra} present)")
    return out.reshape(dims)


def read_images_and_labels(images_path, labels_path, n_classes: int = 10, *,
                           images_name: str | None = None, labels_name: str | None = None,
                           images_max_bytes: int | None = None,
                           labels_max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A matching pair of IDX files (paths or bytes, as :func:`read_idx`): uint8 images (N, height, width)
    and int64 labels (N,) in ``[0, n_classes)``, ``n_classes`` between 1 and 256."""
    Integer(1, 256).check("n_classes", n_classes)
    images = read_idx(images_path, name=images_name, max_bytes=images_max_bytes)
    labels = read_idx(labels_path, name=labels_name, max_bytes=labels_max_bytes)
    images_label = images_name or _describe(images_path, "images")
    labels_label = labels_name or _describe(labels_path, "labels")
    if images.ndim != 3:
        raise ValueError(f"IDX file {images_label}: images must have 3 dimensions (samples, height, width), "
                         f"got shape {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"IDX file {labels_label}: labels must have 1 dimension, got shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"count mismatch: {images_label} holds {len(images)} images but {labels_label} "
                         f"holds {len(labels)} labels")
    out_of_range = np.flatnonzero(labels >= n_classes)
    if out_of_range.size:
        first = int(out_of_range[0])
        raise ValueError(f"IDX file {labels_label}: {out_of_range.size} labels outside [0, {n_classes - 1}] "
                         f"(n_classes={n_classes}); the first is label {int(labels[first])} at index {first}")
    return images, labels.astype(np.int64)


def _describe(source, what: str) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<{what} IDX bytes>"
