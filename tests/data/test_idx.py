"""IDX reader: round trips of arrays written here, and a clear ValueError for every kind of bad input."""

import gzip
import os
import struct
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.data.idx import read_idx, read_images_and_labels
from tests.data.conftest import one_line_error, raised_and_peak_memory, write_file


def idx_bytes(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    """An IDX file written independently of the reader: magic 00 00 type ndim, big-endian dims, payload."""
    header = struct.pack(">BBBB", 0, 0, type_byte, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def random_uint8(rng, shape):
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 28, 28), (2, 3, 4, 5), (0, 28, 28)])
@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("as_path", [False, True])
def test_round_trip(tmp_path, shape, compressed, as_path):
    array = random_uint8(np.random.default_rng(sum(shape)), shape)
    data = gzip.compress(idx_bytes(array)) if compressed else idx_bytes(array)
    source = data
    if as_path:   # gzip is told by its magic, not by the name: the name says the opposite
        source = write_file(tmp_path / ("array-idx-ubyte" if compressed else "array-idx-ubyte.gz"), data)
    result = read_idx(source)
    assert result.dtype == np.uint8 and result.shape == shape
    np.testing.assert_array_equal(result, array)
    assert result.flags.writeable   # a copy, not a read-only view of the file's bytes


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 6), min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1),
       compressed=st.booleans())
def test_round_trip_property(shape, seed, compressed):
    array = random_uint8(np.random.default_rng(seed), tuple(shape))
    data = idx_bytes(array)
    result = read_idx(gzip.compress(data) if compressed else data)
    np.testing.assert_array_equal(result, array)
    assert result.shape == tuple(shape)


def good_idx() -> bytes:
    return idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


BAD_INPUTS = {
    # name: (bytes, words the message must contain)
    "wrong magic": (b"\x12\x34" + good_idx()[2:], ["wrong magic", "12 34 08 03", "00 00"]),
    "float32 type": (good_idx()[:2] + b"\x0d" + good_idx()[3:], ["0x0d", "float32", "0x08"]),
    "unknown type": (good_idx()[:2] + b"\x42" + good_idx()[3:], ["0x42", "not an IDX type", "0x08"]),
    "zero dims": (b"\x00\x00\x08\x00", ["number of dimensions is 0"]),
    "shorter than magic": (b"\x00\x00", ["only 2 bytes", "magic"]),
    "truncated header": (good_idx()[:9], ["truncated header", "3 dimensions need 16 bytes", "has 9"]),
    "truncated payload": (good_idx()[:-1], ["truncated payload", "(2, 3, 4)", "need 24 bytes", "only 23"]),
    "trailing bytes": (good_idx() + b"\x00\x01\x02", ["3 unexpected bytes after the payload", "(2, 3, 4)"]),
    "broken gzip": (gzip.compress(good_idx())[:-6], ["gzip", "does not decompress"]),
}


@pytest.mark.parametrize("kind, compressed", [(kind, compressed) for kind in sorted(BAD_INPUTS)
                                                for compressed in (False, True)
                                                if not (kind == "broken gzip" and compressed)])
def test_bad_input_raises_naming_file_and_problem(tmp_path, kind, compressed):
    data, words = BAD_INPUTS[kind]
    path = write_file(tmp_path / f"{kind.replace(' ', '-')}.idx", gzip.compress(data) if compressed else data)
    one_line_error(lambda: read_idx(path), str(path), *words, error=ValueError)


@pytest.mark.parametrize("source, name, pattern", [(b"\x01\x00\x08\x01", "my-labels.gz", "my-labels.gz.*wrong magic"),
                                                  (b"\x01\x00\x08\x01", None, "<IDX bytes>"),
                                                  (42, None, "path .* or bytes, got int")])
def test_the_source_is_named_in_the_message(source, name, pattern):
    with pytest.raises(ValueError, match=pattern):
        read_idx(source, name=name)


def write_pair(tmp_path, images, labels, compress_images=True):
    images_path, labels_path = tmp_path / "images-idx3-ubyte.gz", tmp_path / "labels-idx1-ubyte.gz"
    image_data = idx_bytes(images)
    images_path.write_bytes(gzip.compress(image_data) if compress_images else image_data)
    labels_path.write_bytes(gzip.compress(idx_bytes(labels)))
    return images_path, labels_path


def test_images_and_labels_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    images, labels = random_uint8(rng, (11, 28, 28)), rng.integers(0, 13, 11).astype(np.uint8)
    images_path, labels_path = write_pair(tmp_path, images, labels, compress_images=False)
    read_images, read_labels = read_images_and_labels(images_path, labels_path, n_classes=13)
    assert read_images.dtype == np.uint8 and read_images.shape == (11, 28, 28)
    assert read_labels.dtype == np.int64 and read_labels.shape == (11,)
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)


@pytest.mark.parametrize("images_shape, labels, n_classes, words", [
    ((5, 28, 28), np.zeros(4), 10, ["count mismatch", "{images}", "5 images", "{labels}", "4 labels"]),
    ((6, 28, 28), [0, 9, 3, 10, 2, 12], 10,
     ["{labels}", "2 labels outside [0, 9]", "n_classes=10", "label 10 at index 3"]),
    ((4, 784), np.zeros(4), 10, ["{images}", "images must have 3 dimensions", "got shape (4, 784)"]),
    ((4, 28, 28), np.zeros((4, 1)), 10, ["{labels}", "labels must have 1 dimension", "got shape (4, 1)"]),
    *(((1, 28, 28), [0], bad, ["n_classes must be an integer in [1, 256], got"]) for bad in (0, 257, 2.5, True, "10"))])
def test_bad_pair_raises_naming_file_and_problem(tmp_path, images_shape, labels, n_classes, words):
    images_path, labels_path = write_pair(tmp_path, np.zeros(images_shape, np.uint8), np.array(labels, np.uint8))
    wrong_kind = isinstance(n_classes, (bool, float, str))
    with pytest.raises(TypeError if wrong_kind else ValueError) as raised:
        read_images_and_labels(images_path, labels_path, n_classes=n_classes)
    for word in words:
        assert word.format(images=images_path, labels=labels_path) in str(raised.value), str(raised.value)


# --- bounded memory on hostile input: gzip bombs, headers that lie, files larger than they say


def gzip_of_zeros(mebibytes: int) -> bytes:
    """A small gzip file (about 1 KiB per MiB) that decompresses to ``mebibytes`` MiB of zeros: gzip
    members one after the other are one valid gzip stream."""
    return gzip.compress(bytes(1 << 20), compresslevel=9) * mebibytes


SLACK = 2 << 20        # what reading may allocate beyond the declared payload: a read buffer or two


def gzip_bomb() -> bytes:   # ~1 MiB that decompresses to 1 GiB
    return gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8))) + gzip_of_zeros(1024)


def lying_header() -> bytes:   # 68 GB declared in a file of a few dozen bytes
    return gzip.compress(struct.pack(">BBBB3I", 0, 0, 8, 3, 4096, 4096, 4096)) + gzip.compress(bytes(64))


BOMB_WORDS = "more than 65536 unexpected bytes after the payload (dims (10, 28, 28) need 7840 bytes); stopped reading"


@pytest.mark.parametrize("source, max_bytes, words, allowed_peak", [
    (lambda tmp_path: gzip_bomb(), None, BOMB_WORDS, 7840 + SLACK),     # the code before this check took 2 GiB
    (lambda tmp_path: write_file(tmp_path / "t10k-idx-ubyte.gz", gzip_bomb()), None, BOMB_WORDS, 7840 + SLACK),
    # dims (1000, 1000, 1000): 1 GB declared, and that many zeros follow; the registry says 47 MB at most
    (lambda tmp_path: gzip.compress(struct.pack(">BBBB3I", 0, 0, 8, 3, 1000, 1000, 1000)) + gzip_of_zeros(1000),
     47040016, "dims (1000, 1000, 1000) make a file of 1000000016 bytes, more than the 47040016 bytes this file "
               "has (max_bytes)", SLACK),
    # more than any gzip file that small can hold (deflate expands at most 1032:1): fails before allocating
    (lambda tmp_path: lying_header(), None, "truncated payload: dims (4096, 4096, 4096) need 68719476736 bytes, "
                                            f"more than a gzip file of {len(lying_header())} bytes can hold", SLACK),
    # a raw file of 256 MiB: the code before this check read it all
    (lambda tmp_path: write_file(tmp_path / "t10k-idx-ubyte.gz", idx_bytes(np.zeros(10, np.uint8)), 256 << 20), None,
     f"{(256 << 20) - 18} unexpected bytes after the payload (dims (10,) need 10 bytes", SLACK)])
def test_hostile_input_fails_early_in_bounded_memory(tmp_path, source, max_bytes, words, allowed_peak):
    source = source(tmp_path)
    start = time.monotonic()
    error, peak = raised_and_peak_memory(lambda: read_idx(source, name="hostile.gz", max_bytes=max_bytes))
    assert peak < allowed_peak, peak
    assert f"hostile.gz: {words}" in str(error), str(error)
    assert time.monotonic() - start < 5


def test_endless_streams_are_read_only_as_far_as_needed(tmp_path):
    # a named pipe (no size known in advance) with a good header and then 32 MiB of zeros
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)

    def write():
        try:
            with open(fifo, "wb") as pipe:
                pipe.write(idx_bytes(np.zeros(10, np.uint8)))
                pipe.writelines(bytes(1 << 16) for _ in range(512))
        except OSError:                    # the reader has gone: it stopped reading, as it should
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    error, peak = raised_and_peak_memory(lambda: read_idx(fifo))
    writer.join(timeout=10)
    assert peak < SLACK, peak
    assert "more than 65536 unexpected bytes after the payload (dims (10,) need 10 bytes)" in str(error)
    # an endless device: the zero type byte is seen after 4 bytes
    if os.path.exists("/dev/zero"):
        with pytest.raises(ValueError, match="/dev/zero: type byte is 0x00"):
            read_idx("/dev/zero")


def test_max_bytes(shared_data):
    images = shared_data / "mnist" / "t10k-images-idx3-ubyte.gz"
    labels = shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz"
    read_images, read_labels = read_images_and_labels(images, labels, images_max_bytes=7840016, labels_max_bytes=10008)
    assert read_images.shape == (10000, 28, 28) and read_labels.shape == (10000,)
    with pytest.raises(ValueError, match=r"dims \(10000,\) make a file of 10008 bytes, more than the 10007"):
        read_images_and_labels(images, labels, labels_max_bytes=10007)
    for bad, error in ((-1, ValueError), (2.5, TypeError), (True, TypeError), ("10", TypeError)):
        with pytest.raises(error, match=r"max_bytes must be an integer >= 0, or unset \(no limit\)"):
            read_idx(labels, max_bytes=bad)
