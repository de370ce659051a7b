"""One call from a dataset name to a ready :class:`~fedsim.data.dataset.Dataset`.

``load_dataset("fashion-mnist", pipeline="stc")`` finds (or downloads and verifies) the IDX files,
decodes them and applies a preprocessing pipeline; ``load_dataset("synthetic", ...)`` generates
FedProx's Synthetic(alpha, beta) with its natural per-device partition and needs no files.

The STC pipeline's output (a resize and a normalization of every image, about 2 s for Fashion-MNIST) is
kept in the cache of computed arrays (:mod:`fedsim.data.cache`, keyed by :func:`stc_cache_key`); the files are
still located and verified on every load. The LAQ pipeline (one division) is faster to compute than to read
back, and is not cached.
"""

from __future__ import annotations

import numpy as np

from fedsim.data import preprocess
from fedsim.data.cache import cache_enabled, cached_array, compute_environment
from fedsim.data.dataset import Dataset
from fedsim.data.fetch import load_split
from fedsim.data.npz import load_npz, npz_path
from fedsim.data.preprocess import PIXEL_STATISTICS, laq_pipeline, stc_pipeline
from fedsim.data.registry import DATASETS, SPLIT_FILES, DatasetFile, DataSettingError
from fedsim.data.synthetic import SyntheticPopulation, make_synthetic, population_dataset

PIPELINES = ("stc", "laq")
DATASET_NAMES = tuple(sorted(DATASETS)) + ("synthetic",)
TRAIN_SPLITS = ("train", "test")


def load_dataset(name: str, pipeline: str = "stc", *, data_dir=None, download: bool = True,
                 train_split: str = "train", dtype=None, synthetic_alpha: float = 1.0,
                 synthetic_beta: float = 1.0, synthetic_devices: int = 30, seed: int = 0,
                 progress: bool | None = None, cache: bool | None = None,
                 synthetic_on_demand: bool = False, synthetic_eval_devices: int = 1000) -> Dataset:
    """Load dataset ``name`` (one of ``DATASET_NAMES``) and preprocess it.

    ``pipeline`` (:mod:`fedsim.data.preprocess`): ``"stc"`` (1024 features, float32 by default) or ``"laq"``
    (784 features, float64 by default); ignored for synthetic data. ``"npz:PATH"`` is a user's own arrays
    (:mod:`fedsim.data.npz`; the pipeline applies to its uint8 images). ``train_split="test"`` trains on the
    10,000-image test split (the MNIST train images are not always at hand) and evaluates on that same split:
    say so when reporting accuracies. ``cache`` (default ``FEDSIM_ARRAY_CACHE``) keeps the STC output, bitwise
    the same either way. ``synthetic_on_demand`` makes a population of ``synthetic_devices`` whose data is
    drawn per device when a run asks for it (:func:`~fedsim.data.synthetic.population_dataset`, evaluated on
    ``synthetic_eval_devices`` devices). DataSettingError (one line) for a setting not allowed,
    DatasetNotFoundError for missing files.
    """
    for setting, value, allowed in (("dataset", name, DATASET_NAMES), ("pipeline", pipeline, PIPELINES),
                                    ("train_split", train_split, TRAIN_SPLITS)):
        if not isinstance(value, str) or value not in allowed and not (setting == "dataset" and npz_path(value)):
            raise DataSettingError(f"{setting} must be one of {list(allowed)}, got {value!r}")
    cache_enabled(cache)   # a bad FEDSIM_ARRAY_CACHE is reported before anything is loaded
    if dtype is None:
        dtype = np.float32 if pipeline == "stc" else np.float64
    if npz_path(name) is not None:
        return load_npz(name, pipeline, dtype)
    if name == "synthetic" and synthetic_on_demand:
        return population_dataset(SyntheticPopulation(synthetic_alpha, synthetic_beta, synthetic_devices, seed,
                                                      dtype=np.dtype(dtype).name), synthetic_eval_devices)
    if name == "synthetic":
        return make_synthetic(synthetic_alpha, synthetic_beta, synthetic_devices,
                              np.random.default_rng(seed), dtype=dtype)

    def prepare(images, split):
        if pipeline == "laq":
            return laq_pipeline(images, dtype=dtype)
        stats = PIXEL_STATISTICS[name]
        key = stc_cache_key(DATASETS[name].file(SPLIT_FILES[split][0]), size=32, mean=stats.mean,
                            std=stats.std, dtype=dtype)
        return cached_array(f"{name}-{split}-stc", key,
                            lambda: stc_pipeline(images, size=32, mean=stats.mean, std=stats.std, dtype=dtype),
                            enabled=cache)

    test_images, test_labels = load_split(name, "test", data_dir=data_dir, download=download, progress=progress)
    if train_split == "test":
        train_images, train_labels = test_images, test_labels
    else:
        train_images, train_labels = load_split(name, "train", data_dir=data_dir, download=download, progress=progress)
    x_test = prepare(test_images, "test")
    x_train = x_test if train_split == "test" else prepare(train_images, "train")
    return Dataset(name=name, x_train=x_train, y_train=train_labels, x_test=x_test, y_test=test_labels,
                   n_classes=10, description=f"{name} ({train_split} split as training data), "
                                             f"{pipeline} pipeline")


def stc_cache_key(source: DatasetFile, *, size: int, mean: float, std: float, dtype) -> dict:
    """The cache key of the STC pipeline's output of the images in ``source``: the checksums the registry
    records for them (what every copy that verifies holds: the SHA-256 of the decompressed IDX, or where it is
    unknown the accepted gzip MD5s), the pipeline, its parameters, ``PREPROCESS_VERSION`` and
    :func:`~fedsim.data.cache.compute_environment`."""
    checksum = {"sha256": source.sha256} if source.sha256 is not None else {"gzip_md5": list(source.gzip_md5)}
    return {"function": "fedsim.data.preprocess.stc_pipeline", "version": preprocess.PREPROCESS_VERSION,
            "source": {"file": source.filename, "bytes": source.decompressed_size, **checksum},
            "parameters": {"size": int(size), "mean": float(mean), "std": float(std),
                           "dtype": np.dtype(dtype).str, "chunk_images": preprocess._CHUNK_IMAGES},
            "environment": compute_environment()}
