"""Reading IDX files, the format of MNIST and Fashion-MNIST.

Layout (all integers big-endian)::

    bytes 0-1   0x00 0x00          magic, zero
    byte  2     type               0x08 = unsigned byte (the only type fedsim reads)
    byte  3     ndim               number of dimensions
    4 * ndim    dims               uint32 size of each dimension
    prod(dims)  payload            the entries, row-major

A file may be gzip-compressed; that is detected from its first two bytes (``1f 8b``), not from its name.
Anything else is rejected with a ValueError that names the file and says what is wrong: a wrong magic or type
byte, a truncated header or payload, bytes after the payload, images and labels of different counts, labels
outside ``[0, n_classes)``.
"""

from __future__ import annotations

import gzip
import os
import zlib
from math import prod

import numpy as np

from fedsim.data.registry import is_gzip

# IDX type bytes other than 0x08, to name them when rejecting a file.
_OTHER_IDX_TYPES = {0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
_UINT8_TYPE = 0x08


def _read_source(source, name: str | None) -> tuple[bytes, str]:
    """The bytes of ``source`` (a path or bytes) and the name to use for it in messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<IDX bytes>"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        with open(path, "rb") as handle:
            return handle.read(), name or str(path)
    raise ValueError(f"IDX source must be a path (str or os.PathLike) or bytes, got {type(source).__name__}")


def read_idx(source, *, name: str | None = None) -> np.ndarray:
    """Read an IDX array of unsigned bytes from a file or from bytes, gzip-compressed or raw.

    Parameters
    ----------
    source : str, os.PathLike or bytes
        The file to read, or its contents.
    name : str, optional
        What to call the source in error messages (default: the path, or ``"<IDX bytes>"``).

    Returns
    -------
    numpy.ndarray
        A new, writable uint8 array of shape ``dims``.

    Raises
    ------
    ValueError
        If the data is not a well-formed IDX file of type 0x08 (see the module docstring).
    """
    data, label = _read_source(source, name)
    if is_gzip(data):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"IDX file {label}: starts like gzip (1f 8b) but does not decompress: {error}") \
                from None
    if len(data) < 4:
        raise ValueError(f"IDX file {label}: only {len(data)} bytes, shorter than the 4-byte magic")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"IDX file {label}: wrong magic {data[:4].hex(' ')}; an IDX file starts with "
                         f"00 00, then the type byte and the number of dimensions")
    type_byte, ndim = data[2], data[3]
    if type_byte != _UINT8_TYPE:
        known = _OTHER_IDX_TYPES.get(type_byte)
        described = f"0x{type_byte:02x} ({known})" if known else f"0x{type_byte:02x} (not an IDX type)"
        raise ValueError(f"IDX file {label}: type byte is {described}; only 0x08 (unsigned byte) is supported")
    if ndim < 1:
        raise ValueError(f"IDX file {label}: number of dimensions is 0, expected at least 1")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(f"IDX file {label}: truncated header: {ndim} dimensions need {header_size} bytes, "
                         f"the file has {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = prod(dims)
    present = len(data) - header_size
    if present < expected:
        raise ValueError(f"IDX file {label}: truncated payload: dims {dims} need {expected} bytes, "
                         f"only {present} present")
    if present > expected:
        raise ValueError(f"IDX file {label}: {present - expected} unexpected bytes after the payload "
                         f"(dims {dims} need {expected} bytes, {present} present)")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims).copy()


def read_images_and_labels(images_path, labels_path, n_classes: int = 10, *,
                           images_name: str | None = None,
                           labels_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a matching pair of image and label IDX files.

    Parameters
    ----------
    images_path, labels_path : str, os.PathLike or bytes
        The images (3-D IDX: samples x height x width) and labels (1-D IDX) files, or their contents.
    n_classes : int
        Labels must lie in ``[0, n_classes)``; between 1 and 256.
    images_name, labels_name : str, optional
        Names for the sources in error messages, when they are given as bytes.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape (N, height, width): (N, 28, 28) for MNIST and Fashion-MNIST.
    labels : numpy.ndarray
        int64, shape (N,).

    Raises
    ------
    ValueError
        If either file is malformed, the images are not 3-D or the labels not 1-D, the counts differ, or a
        label is out of range.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or not 1 <= n_classes <= 256:
        raise ValueError(f"n_classes must be an integer in [1, 256], got {n_classes!r}")
    images = read_idx(images_path, name=images_name)
    labels = read_idx(labels_path, name=labels_name)
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
