"""One call from a dataset name to a ready :class:`~fedsim.data.dataset.Dataset`.

``load_dataset("fashion-mnist", pipeline="stc")`` finds (or downloads and verifies) the IDX files,
decodes them and applies a preprocessing pipeline; ``load_dataset("synthetic", ...)`` generates
FedProx's Synthetic(alpha, beta) with its natural per-device partition and needs no files.
"""

from __future__ import annotations

import numpy as np

from fedsim.data.dataset import Dataset
from fedsim.data.fetch import DataSettingError, load_split
from fedsim.data.preprocess import PIXEL_STATISTICS, laq_pipeline, stc_pipeline
from fedsim.data.registry import DATASETS
from fedsim.data.synthetic import make_synthetic

PIPELINES = ("stc", "laq")
DATASET_NAMES = tuple(sorted(DATASETS)) + ("synthetic",)
TRAIN_SPLITS = ("train", "test")


def load_dataset(name: str, pipeline: str = "stc", *, data_dir=None, download: bool = True,
                 train_split: str = "train", dtype=None, synthetic_alpha: float = 1.0,
                 synthetic_beta: float = 1.0, synthetic_devices: int = 30, seed: int = 0,
                 progress: bool | None = None) -> Dataset:
    """Load and preprocess a dataset.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "synthetic"}
    pipeline : {"stc", "laq"}
        ``"stc"``: /255, bilinear resize to 32x32, normalize (1024 features, float32 by default);
        ``"laq"``: /255 (784 features, float64 by default). Ignored for synthetic data.
    train_split : {"train", "test"}
        Which file split serves as training data. ``"test"`` trains on the 10,000-image test split (the
        MNIST train images are not always at hand) and then evaluates on that same split: say so when
        reporting accuracies.
    synthetic_alpha, synthetic_beta, synthetic_devices, seed
        Synthetic(alpha, beta) settings and the seed of its generator.
    data_dir, download, progress
        As in :func:`fedsim.data.fetch.load_split`; ``data_dir``, if given, must be an existing folder.

    Raises
    ------
    fedsim.data.fetch.DataSettingError
        A ValueError with a one-line message, for an unknown dataset, pipeline or split, or a ``data_dir``
        that is not an existing folder.
    fedsim.data.fetch.DatasetNotFoundError
        If the dataset's files are neither on disk nor downloadable.
    """
    if not isinstance(name, str) or name not in DATASET_NAMES:
        raise DataSettingError(f"dataset must be one of {list(DATASET_NAMES)}, got {name!r}")
    if not isinstance(pipeline, str) or pipeline not in PIPELINES:
        raise DataSettingError(f"pipeline must be one of {list(PIPELINES)}, got {pipeline!r}")
    if not isinstance(train_split, str) or train_split not in TRAIN_SPLITS:
        raise DataSettingError(f"train_split must be one of {list(TRAIN_SPLITS)}, got {train_split!r}")
    if dtype is None:
        dtype = np.float32 if pipeline == "stc" else np.float64
    if name == "synthetic":
        return make_synthetic(synthetic_alpha, synthetic_beta, synthetic_devices,
                              np.random.default_rng(seed), dtype=dtype)

    def prepare(images):
        if pipeline == "laq":
            return laq_pipeline(images, dtype=dtype)
        stats = PIXEL_STATISTICS[name]
        return stc_pipeline(images, mean=stats.mean, std=stats.std, dtype=dtype)

    test_images, test_labels = load_split(name, "test", data_dir=data_dir, download=download,
                                          progress=progress)
    if train_split == "test":
        train_images, train_labels = test_images, test_labels
    else:
        train_images, train_labels = load_split(name, "train", data_dir=data_dir, download=download,
                                                progress=progress)
    x_test = prepare(test_images)
    x_train = x_test if train_split == "test" else prepare(train_images)
    return Dataset(name=name, x_train=x_train, y_train=train_labels, x_test=x_test, y_test=test_labels,
                   n_classes=10, description=f"{name} ({train_split} split as training data), "
                                             f"{pipeline} pipeline")
