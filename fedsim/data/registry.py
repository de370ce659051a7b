"""The registry of downloadable datasets: files, mirrors, sizes and checksums, and how a copy is verified.

Two datasets, MNIST and Fashion-MNIST, each the same four IDX files (keys :data:`FILE_KEYS`), gzip-compressed
under their standard names. A copy of a file **verifies** when::

    decompressed size == expected size
    and (MD5 of the gzip bytes is one of the accepted ones  or  SHA-256 of the decompressed IDX matches)

Accepted gzip MD5s are the published upstream ones; for Fashion-MNIST also those of Debian's re-compressed
copies (package ``dataset-fashion-mnist``), whose gzip bytes differ from upstream while the IDX inside is the
same. An uncompressed copy (the file name without ``.gz``) has no gzip MD5: it verifies by size and SHA-256
only, so where the SHA-256 is unknown (MNIST train images) only the gzip file can verify.

Everything here is pure: no file system, no network (that is :mod:`fedsim.data.fetch`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

#: The four files of every dataset, in this order.
FILE_KEYS: tuple[str, ...] = ("train-images", "train-labels", "test-images", "test-labels")

#: The splits of every dataset and the (images, labels) file keys of each.
SPLIT_FILES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "train": ("train-images", "train-labels"),
    "test": ("test-images", "test-labels"),
})

GZIP_MAGIC = b"\x1f\x8b"
# Streams are read (and gzip decompressed) in pieces of this size: a few pieces are all the memory reading
# needs beyond the output buffer.
_CHUNK_BYTES = 1 << 18


class DataSettingError(ValueError):
    """A data setting (an argument, a command-line option or an environment variable) has a value that is
    not allowed. The message is one line that names the setting and says what it may be."""


def is_gzip(data: bytes) -> bool:
    """Whether ``data`` is gzip: it starts with the gzip magic ``1f 8b`` (a file's name never decides)."""
    return bytes(data[:2]) == GZIP_MAGIC


def gunzip_at_most(data: bytes, limit: int) -> bytearray:
    """The decompressed gzip ``data``, at most ``limit`` bytes of it (:func:`read_at_most`), however far it
    would decompress. OSError (gzip.BadGzipFile), EOFError or zlib.error for data that is not valid gzip."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        return read_at_most(stream, limit)


def read_at_most(stream, limit: int) -> bytearray:
    """Up to ``limit`` bytes of the binary ``stream``, fewer only at its end; the memory is one buffer of
    ``limit`` bytes, plus about 1 MiB when ``stream`` decompresses."""
    out = bytearray(limit)
    with memoryview(out) as view:
        filled = read_into(stream, view)
    del out[filled:]
    return out


def read_into(stream, view: memoryview, chunk_bytes: int = _CHUNK_BYTES) -> int:
    """Fill the bytes of ``view`` from the binary ``stream``, ``chunk_bytes`` at a time; the number of bytes
    read (fewer than ``len(view)`` only at the end of the stream)."""
    filled = 0
    while filled < len(view):
        count = stream.readinto(view[filled:filled + chunk_bytes])
        if not count:
            break
        filled += count
    return filled


@dataclass(frozen=True)
class Verification:
    """The outcome of checking one copy of a registry file: ``method`` ``"md5"`` or ``"sha256"`` when ``ok``,
    else None, ``reason`` what (did not) match, and ``payload`` the decompressed IDX, kept so that a caller
    that loads the file does not read and decompress it again."""

    ok: bool
    method: str | None
    reason: str
    payload: bytes | bytearray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DatasetFile:
    """One IDX file of a dataset and what a good copy of it looks like."""

    key: str                          # one of FILE_KEYS, e.g. "train-images"
    filename: str                     # standard gzip file name, e.g. "train-images-idx3-ubyte.gz"
    decompressed_size: int            # bytes of the IDX file inside the gzip
    gzip_md5: tuple[str, ...]         # accepted MD5s of the gzip bytes (hex, lower case)
    sha256: str | None                # SHA-256 of the decompressed IDX (hex), None where unknown

    @property
    def uncompressed_filename(self) -> str:
        """The file name of an uncompressed copy: the standard name without ``.gz``."""
        return self.filename[: -len(".gz")]

    def verify(self, data: bytes) -> Verification:
        """Check the bytes of a copy, gzip or raw IDX (:func:`is_gzip`), by the rule of the module docstring.

        The gzip MD5 is tried first (one pass over the small compressed bytes), the SHA-256 only when the MD5 is
        not an accepted one. Decompression stops after ``decompressed_size + 1`` bytes, so a corrupt or hostile
        file (a gzip bomb) cannot make it allocate more than that plus about 1 MiB.
        """
        compressed = is_gzip(data)
        md5_ok = False
        if compressed:
            md5_ok = hashlib.md5(data, usedforsecurity=False).hexdigest() in self.gzip_md5
            try:
                payload = gunzip_at_most(data, self.decompressed_size + 1)
            except (OSError, EOFError, zlib.error) as error:
                return Verification(False, None, f"not a valid gzip file ({error})")
        else:
            payload = data
        if len(payload) != self.decompressed_size:
            got = (f"{len(payload)} bytes" if len(payload) <= self.decompressed_size
                   else f"more than {self.decompressed_size} bytes (reading stopped there)")
            return Verification(False, None, f"decompressed size is {got}, expected {self.decompressed_size}")
        if md5_ok:
            return Verification(True, "md5", "gzip MD5 is a published one", payload)
        if self.sha256 is None:
            what = "gzip MD5 is none of the accepted ones" if compressed else "the file is not gzip"
            return Verification(False, None, f"{what}, and no SHA-256 of the decompressed file is recorded to "
                                             f"check it by (accepted gzip MD5s: {', '.join(self.gzip_md5)})")
        if hashlib.sha256(payload).hexdigest() == self.sha256:
            return Verification(True, "sha256", "SHA-256 of the decompressed IDX matches", payload)
        md5_part = "gzip MD5 is none of the accepted ones and " if compressed else ""
        return Verification(False, None, f"{md5_part}SHA-256 of the decompressed IDX is not {self.sha256}")


@dataclass(frozen=True)
class DatasetInfo:
    """A downloadable dataset: its four files, the folders it is published in, and its classes."""

    name: str                         # registry name, also the sub-folder name in caches and mirrors
    mirrors: tuple[str, ...]          # base URLs, tried in order; a file is at <mirror>/<filename>
    files: tuple[DatasetFile, ...]    # one per FILE_KEYS entry, in that order
    class_names: tuple[str, ...]      # label i means class_names[i]
    install_hint: str | None = None   # a system package that provides the files, if any

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def file(self, key: str) -> DatasetFile:
        """The file with key ``key`` (one of :data:`FILE_KEYS`, the order of ``files``)."""
        if key in FILE_KEYS:
            return self.files[FILE_KEYS.index(key)]
        raise DataSettingError(f"file_key must be one of {', '.join(FILE_KEYS)}; got {key!r}")


# Each file's standard gzip name and decompressed size: the same for both datasets.
_IDX_FILES: Mapping[str, tuple[str, int]] = MappingProxyType({
    "train-images": ("train-images-idx3-ubyte.gz", 47040016),
    "train-labels": ("train-labels-idx1-ubyte.gz", 60008),
    "test-images": ("t10k-images-idx3-ubyte.gz", 7840016),
    "test-labels": ("t10k-labels-idx1-ubyte.gz", 10008),
})


def _files(checksums: Mapping[str, tuple[tuple[str, ...], str | None]]) -> tuple[DatasetFile, ...]:
    """A dataset's four files from each key's (accepted gzip MD5s, SHA-256 of the decompressed IDX or None)."""
    return tuple(DatasetFile(key, *_IDX_FILES[key], *checksums[key]) for key in FILE_KEYS)


# MNIST handwritten digits (http://yann.lecun.com/exdb/mnist/): 60,000 train + 10,000 test, 28x28 grey
_MNIST = DatasetInfo(
    name="mnist",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    files=_files({
        "train-images": (("f68b3c2dcbeaaa9fbdd348bbdeb94873",), None),
        "train-labels": (("d53e105ee54ea40749a09fcbcd1e9432",),
                         "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        "test-images": (("9fb629c4189551a2d022fa330f9573f3",),
                        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        "test-labels": (("ec29112dd5afa0611ce80d1b7f02629c",),
                        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    }),
    class_names=tuple(str(digit) for digit in range(10)),
)

# Fashion-MNIST (Zalando, https://github.com/zalandoresearch/fashion-mnist) clothing: as MNIST's sizes
_FASHION_MNIST = DatasetInfo(
    name="fashion-mnist",
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    # Each MD5 pair: upstream release, then Debian's re-compressed copy.
    files=_files({
        "train-images": (("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "cf8536b0aa1a6ac5fa3f23001093305c"),
                         "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train-labels": (("25c81989df183df01b3e8a0aad5dffbe", "10bea18fdb374794d4bb42e356e600c9"),
                         "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "test-images": (("bef4ecab320f06d8554ea6380940ec79", "f78720b4224f21cce2f2ccf2d7a94c9a"),
                        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "test-labels": (("bb300cfdad3c16e7a12a480ee83cd310", "0d30e22e447f3c33dab9ed536400ac01"),
                        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    }),
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    install_hint="dataset-fashion-mnist",
)

#: Every registered dataset by name.
DATASETS: Mapping[str, DatasetInfo] = MappingProxyType({info.name: info for info in (_MNIST, _FASHION_MNIST)})


def get_dataset(name: str) -> DatasetInfo:
    """The registry entry of dataset ``name``; DataSettingError naming the registered datasets otherwise."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise DataSettingError(f"dataset name must be one of {', '.join(DATASETS)}; got {name!r}") from None
