"""Data: IDX files, the dataset registry, searching and fetching, preprocessing, partitioners, synthetic data."""

from fedsim.data.dataset import Dataset
from fedsim.data.fetch import load_split
from fedsim.data.load import load_dataset
from fedsim.data.partition import class_counts, partition_report, split_indices
from fedsim.data.search import DatasetNotFoundError, dataset_status
from fedsim.data.synthetic import make_synthetic

__all__ = ["Dataset", "DatasetNotFoundError", "class_counts", "dataset_status", "load_dataset",
           "load_split", "make_synthetic", "partition_report", "split_indices"]
