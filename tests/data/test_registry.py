"""The dataset registry: entries, and what a copy must be to verify."""

import pytest

from fedsim.data.registry import DATASETS, FILE_KEYS, get_dataset


def test_registry_entries():
    assert set(DATASETS) == {"mnist", "fashion-mnist"}
    for info in DATASETS.values():
        assert tuple(file.key for file in info.files) == FILE_KEYS
        assert len(info.mirrors) >= 2 and all(m.startswith(("http://", "https://")) for m in info.mirrors)
        assert info.n_classes == 10
        for file in info.files:
            assert file.filename.endswith("-ubyte.gz") and file.gzip_md5
    assert get_dataset("mnist").file("train-images").sha256 is None       # unknown: gzip MD5 only
    assert len(get_dataset("fashion-mnist").file("train-images").gzip_md5) == 2   # upstream and Debian
    with pytest.raises(Exception):
        get_dataset("mnist").mirrors = ()   # frozen


def test_uncompressed_mnist_train_images_cannot_verify():
    file = get_dataset("mnist").file("train-images")
    verification = file.verify(bytes(file.decompressed_size))
    assert not verification.ok and "no SHA-256" in verification.reason
