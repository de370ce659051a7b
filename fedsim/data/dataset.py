"""The in-memory dataset every algorithm consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """Features and labels of a train and a test split, ready for a model.

    ``x_*`` are float arrays of shape (samples, features); ``y_*`` are int64 labels in [0, n_classes).
    ``client_indices`` is the dataset's natural partition of the training set (one index array per
    device, as Synthetic(alpha, beta) has); ``None`` for datasets that a partitioner must split.
    ``population`` (a :class:`~fedsim.data.synthetic.SyntheticPopulation`) is a population too large to hold,
    one client per device, whose training data a run draws per round for that round's participants; then
    ``x_train`` .. ``y_test`` hold only an evaluation sample of its devices.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    client_indices: tuple[np.ndarray, ...] | None = None
    description: str = ""
    population: object | None = None

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(f"dataset {self.name!r}: {split} split needs x (samples, features) and "
                                 f"y (samples,) of equal length, got {x.shape} and {y.shape}")
            if len(y) and (y.min() < 0 or y.max() >= self.n_classes):
                raise ValueError(f"dataset {self.name!r}: {split} labels must lie in "
                                 f"[0, {self.n_classes - 1}], got [{y.min()}, {y.max()}]")
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise ValueError(f"dataset {self.name!r}: train has {self.x_train.shape[1]} features, "
                             f"test has {self.x_test.shape[1]}")

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])
