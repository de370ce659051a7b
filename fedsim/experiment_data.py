"""The data side of an experiment: which dataset, preprocessed how, and how it is split among clients.

:class:`DataConfig` is the config file's ``[data]`` table; :func:`load_data` loads and preprocesses the
dataset, :func:`split_among_clients` partitions the training set among the clients (or takes a dataset's
natural partition). The run loop that uses them is :mod:`fedsim.runs.loop`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.constraints import Flag, Integer, OneOf, Optional, Real, Registered, Text, check_fields, setting
from fedsim.data.dataset import Dataset
from fedsim.data.fetch import load_split
from fedsim.data.load import DATASET_NAMES, PIPELINES, TRAIN_SPLITS, load_dataset
from fedsim.data.npz import PREFIX, file_sha256, load_npz, npz_path
from fedsim.data.partition import METHOD_SETTINGS, split_indices
from fedsim.data.registry import DATASETS, DataSettingError
from fedsim.data.search import DatasetNotFoundError, dataset_status
from fedsim.data.synthetic import FEATURES as SYNTHETIC_FEATURES, TooManySamples
from fedsim.data.preprocess import PIXEL_STATISTICS
from fedsim.files import noted_reads
from fedsim.models.features import Codes
from fedsim.rng import RunStreams

STORAGES = ("float", "uint8")
#: Devices beyond which Synthetic data held whole would pass make_synthetic's 2,000,000 samples (453 per device
#: on average): then a one-line error names data.synthetic_on_demand.
ON_DEMAND_ABOVE = 4000


class DatasetName(OneOf):
    """A registered dataset's name, or ``npz:PATH`` (a user's own arrays, :mod:`fedsim.data.npz`)."""

    def describe(self) -> str:
        return f"{super().describe()} or '{PREFIX}PATH' (a .npz file of your own arrays)"

    def allows(self, value) -> bool:
        return super().allows(value) or value.startswith(PREFIX)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, preprocessed how, split among the clients how."""

    dataset: str = setting("mnist", "mnist | fashion-mnist | synthetic | npz:PATH (your arrays; PATH made absolute)",
                           DatasetName(*DATASET_NAMES))
    pipeline: str | None = setting(None, "stc (32x32, normalized) | laq (784 raw / 255); None: the family's",
                                   Optional(OneOf(*PIPELINES), "the family's"))
    train_split: str = setting("train", "train | test (train on the test split, when train images are absent)",
                               OneOf(*TRAIN_SPLITS))
    data_dir: str | None = setting(
        None, "a folder searched first for the dataset files (fedsim run makes a relative one absolute)",
        Optional(Text(), "only the standard search path (FEDSIM_DATA, data/, the cache)"))
    download: bool = setting(True, "fetch missing files from the registry's mirrors", Flag())
    partition: str = setting("classes_per_client", "classes_per_client | dirichlet | shards | iid | contiguous | "
                             "natural (synthetic's devices, an npz file's client_ids)",
                             Registered(lambda: (*METHOD_SETTINGS, "natural")))
    classes_per_client: int = setting(10, "classes_per_client partition: classes per client", Integer(low=1))
    balancedness: float = setting(1.0, "classes_per_client partition: 1 equal sizes, < 1 geometric sizes",
                                  Real(0, 1, low_open=True))
    dirichlet_alpha: float = setting(1.0, "dirichlet partition: concentration (small: strong label skew)",
                                     Real(0, low_open=True))
    shards_per_client: int = setting(2, "shards partition: label-sorted shards per client", Integer(low=1))
    synthetic_alpha: float = setting(1.0, "Synthetic(alpha, beta): model heterogeneity across devices",
                                     Real(low=0))
    synthetic_beta: float = setting(1.0, "Synthetic(alpha, beta): feature heterogeneity across devices",
                                    Real(low=0))
    synthetic_devices: int = setting(30, "Synthetic(alpha, beta): number of devices", Integer(low=1))
    synthetic_on_demand: bool = setting(
        False, "Synthetic(alpha, beta): draw each device's data when it takes part, from its own seed (a "
               "population too large to hold, e.g. a million devices; family federated, partition natural)",
        Flag())
    synthetic_eval_devices: int = setting(1000, "synthetic_on_demand: evaluate on devices 0 .. this - 1",
                                          Integer(low=1))
    storage: str = setting("float", "float | uint8 (image pixels kept as 8-bit codes: 4-8x fewer bytes read)",
                           OneOf(*STORAGES))

    def __post_init__(self):
        check_fields(self)
        path = npz_path(self.dataset)
        if path is not None:     # a relative PATH is from the current folder now; the config keeps it absolute
            object.__setattr__(self, "dataset", f"{PREFIX}{path}")
        if self.train_split != "train" and (path is not None or self.dataset == "synthetic"):
            raise ValueError("train_split must be 'train' with " + ("npz data (the file has its own x_train)" if path
                             else "synthetic data (generated with a training set of its own)"))
        if self.storage == "uint8" and self.dataset not in DATASETS:
            raise ValueError(f"storage 'uint8' needs an 8-bit image dataset ({', '.join(DATASETS)}), not "
                             f"{self.dataset!r}: use storage 'float'")
        if self.synthetic_on_demand and (self.dataset != "synthetic" or self.partition != "natural"):
            raise ValueError(f"synthetic_on_demand needs dataset 'synthetic' with partition 'natural' (one client "
                             f"per device), not {self.dataset!r} with {self.partition!r}")
        if self.partition == "natural" and self.dataset != "synthetic" and path is None:
            raise ValueError(f"partition 'natural' needs a dataset with a natural partition ('synthetic', or "
                             f"npz data with client_ids), not {self.dataset!r}")


def check_clients(config: DataConfig, family: str, n_clients: int, clients_setting: str) -> None:
    """The checks between the data and the family's clients (``clients_setting`` of them, a dotted name)."""
    if config.partition == "natural" and config.dataset == "synthetic" and n_clients != config.synthetic_devices:
        large = n_clients > ON_DEMAND_ABOVE and not config.synthetic_on_demand
        raise ValueError(
            f"data.synthetic_devices ({config.synthetic_devices}) must equal {clients_setting} ({n_clients}) with "
            f"data.partition = 'natural' (one client per device)"
            + ("; so many devices also need data.synthetic_on_demand = true (data drawn per device when it takes "
               "part)" if large else ""))
    if config.synthetic_on_demand and family != "federated":
        raise ValueError(f"data.synthetic_on_demand applies to family 'federated' only (family is {family!r}: "
                         f"every worker computes every iteration); leave it unset")


def feature_count(config: DataConfig, pipeline: str) -> int | None:
    """The features of ``config``'s data under ``pipeline``, without loading it (None for npz data)."""
    if config.dataset == "synthetic":
        return SYNTHETIC_FEATURES
    return None if npz_path(config.dataset) is not None else (1024 if pipeline == "stc" else 784)


_MEMORY: dict | None = None      # the datasets kept by keep_datasets_in_memory(True), by their settings


def keep_datasets_in_memory(keep: bool = True) -> None:
    """Keep every dataset :func:`load_data` loads in this process, for the next run that asks for the same
    data (a sweep worker runs many runs on one dataset). The arrays are then read-only."""
    global _MEMORY
    _MEMORY = ({} if _MEMORY is None else _MEMORY) if keep else None


def load_data(config: DataConfig, family_pipeline: str, seed: int, progress: bool | None = None) -> Dataset:
    """The dataset of ``config``, with ``family_pipeline`` unless the config names a pipeline."""
    if _MEMORY is None:
        return _load(config, family_pipeline, seed, progress)
    # Only synthetic data depends on the seed; the partition is drawn later, from the run's seed.
    record = data_record(config)        # an npz file's SHA-256: a changed file is loaded again
    key = (config, config.pipeline or family_pipeline, seed if config.dataset == "synthetic" else None, str(record))
    if key in _MEMORY:
        return _MEMORY[key]
    with noted_reads() as reads:
        dataset = _load(config, family_pipeline, seed, progress)
    if changed_file(config, record, reads=reads) is None:      # kept only under the hash of the bytes it read
        for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
            getattr(array, "codes", array).setflags(write=False)
        _MEMORY[key] = dataset
    return dataset


def _load(config: DataConfig, family_pipeline: str, seed: int, progress: bool | None) -> Dataset:
    with _advice_when_missing(config):
        try:
            dataset = load_dataset(
                config.dataset, config.pipeline or family_pipeline, data_dir=config.data_dir,
                download=config.download, train_split=config.train_split,
                synthetic_alpha=config.synthetic_alpha, synthetic_beta=config.synthetic_beta,
                synthetic_devices=config.synthetic_devices, seed=seed, progress=progress,
                synthetic_on_demand=config.synthetic_on_demand, synthetic_eval_devices=config.synthetic_eval_devices)
        except TooManySamples as error:     # name the setting that holds a population too large to generate whole
            raise ValueError(f"data.synthetic_devices = {config.synthetic_devices}: Synthetic data would hold "
                             f"{error.total:,} samples, more than the {error.limit:,} generated whole; set "
                             f"data.synthetic_on_demand = true (each device's data drawn when it takes part), or "
                             f"use fewer devices") from None
    if config.storage == "uint8":
        dataset = stored_as_codes(dataset, config.pipeline or family_pipeline)
    return dataset


def pixel_affine(name: str, pipeline: str) -> tuple[float, float]:
    """``(scale, offset)`` with ``x = scale * u + offset`` from 8-bit pixels ``u`` to the pipeline's features:
    LAQ ``x = u / 255``; STC ``x = (u / 255 - mean) / std`` (on the resized pixels, rounded to 1/255 steps)."""
    if pipeline == "laq":
        return 1.0 / 255.0, 0.0
    stats = PIXEL_STATISTICS[name]
    return 1.0 / (255.0 * stats.std), -stats.mean / stats.std


def to_codes(x: np.ndarray, scale: float, offset: float, chunk: int = 8192) -> np.ndarray:
    """The 8-bit codes ``u = round((x - offset) / scale)`` of features ``x``, checked to lie in [0, 255]."""
    codes = np.empty(x.shape, dtype=np.uint8)
    for start in range(0, len(x), chunk):
        u = np.rint((np.asarray(x[start:start + chunk], dtype=np.float64) - offset) / scale)
        if u.size and (u.min() < 0 or u.max() > 255):
            raise ValueError(f"features outside the 8-bit range of their pipeline ({u.min():g} to {u.max():g} "
                             f"after undoing its scaling): data.storage 'uint8' cannot hold them")
        codes[start:start + chunk] = u
    return codes


def stored_as_codes(dataset: Dataset, pipeline: str) -> Dataset:
    """``dataset`` with its image features kept as 8-bit :class:`~fedsim.models.features.Codes` (the STC
    pipeline's resized pixels rounded to 1/255 steps, as its reference code's PIL resize did; the LAQ
    pipeline's pixels exactly)."""
    scale, offset = pixel_affine(dataset.name, pipeline)
    dtype = dataset.x_train.dtype
    test = Codes(to_codes(dataset.x_test, scale, offset), scale, offset, dtype)
    train = test if dataset.x_train is dataset.x_test else Codes(to_codes(dataset.x_train, scale, offset), scale,
                                                                 offset, dtype)
    return dataclasses.replace(dataset, x_train=train, x_test=test,
                               description=dataset.description + ", stored as 8-bit codes")


#: The partitioners' arguments that a [data] setting gives (:func:`_split`), and that setting.
PARTITION_SETTINGS = {"classes_per_client": "classes_per_client", "balancedness": "balancedness",
                      "alpha": "dirichlet_alpha", "shards_per_client": "shards_per_client"}


def split_among_clients(config: DataConfig, dataset: Dataset, n_clients: int, seed: int,
                        clients_setting: str = "n_clients") -> list[np.ndarray] | None:
    """One index array of training samples per client, as ``config.partition`` says (None for a population
    drawn on demand: one client per device); an error names the number of clients by ``clients_setting``
    (``federated.n_clients``, ``lazy.n_workers``)."""
    try:
        return _split(config, dataset, n_clients, seed)
    except ValueError as error:     # the partitioners' arguments named as the settings that give them
        names = {**{argument: f"data.{name}" for argument, name in PARTITION_SETTINGS.items()},
                 "n_clients": clients_setting}
        raise ValueError(re.sub(rf"(?<![\w.'])({'|'.join(names)})\b(?!')", lambda found: names[found[1]],
                                str(error))) from None


def _split(config: DataConfig, dataset: Dataset, n_clients: int, seed: int) -> list[np.ndarray]:
    if dataset.population is not None:      # drawn per round by the run; no index arrays
        if n_clients != dataset.population.n_devices:
            raise ValueError(f"the population has {dataset.population.n_devices} devices (data.synthetic_devices), "
                             f"but n_clients is {n_clients}")
        return None
    if config.partition == "natural":
        if dataset.client_indices is None:
            raise ValueError(f"dataset {dataset.name!r} has no natural partition (an npz file needs the array "
                             f"client_ids)")
        if n_clients != len(dataset.client_indices):
            what = "data.synthetic_devices" if config.dataset == "synthetic" else "distinct client_ids"
            raise ValueError(f"the natural partition of {dataset.name!r} has {len(dataset.client_indices)} "
                             f"devices ({what}), but n_clients is {n_clients}")
        return [np.asarray(ix) for ix in dataset.client_indices]
    rng = RunStreams(seed).generator("partition")
    settings = {argument: getattr(config, PARTITION_SETTINGS[argument])
                for argument in itertools.chain(*METHOD_SETTINGS[config.partition]) if argument in PARTITION_SETTINGS}
    return split_indices(config.partition, dataset.y_train, n_clients, rng, **settings)


# ---------------------------------------------------------------------------------------------------------
# the data checked once, before a run or a sweep starts; an npz file's identity in the run folder


def check_data(runs) -> None:
    """Check once that the data of each of ``runs`` (pairs: what names the run, its ExperimentConfig) can be had,
    before anything runs: the files of a registered dataset are found (or downloaded) and verified, an npz file
    is read and checked, and split among the run's clients as the run will split it. The first problem is
    raised: DatasetNotFoundError (several lines: what to do, what is present) or a one-line DataSettingError
    (a partition the npz data cannot make names the run)."""
    done, labels = set(), {}
    for name, experiment in runs:
        config = experiment.data
        key = (config.dataset, config.data_dir, config.download, config.train_split)
        if npz_path(config.dataset) is not None:
            if config.dataset not in labels:
                labels[config.dataset] = load_npz(config.dataset, None)
            try:
                split_among_clients(config, labels[config.dataset], experiment.n_clients, experiment.seed,
                                    experiment.clients_setting)
            except ValueError as error:
                raise DataSettingError(f"{name}: the config does not fit the data: {error}") from None
            continue
        if key in done or config.dataset == "synthetic":
            continue
        done.add(key)
        with _advice_when_missing(config):
            for split in dict.fromkeys(("test", config.train_split)):
                load_split(config.dataset, split, data_dir=config.data_dir, download=config.download)


@contextlib.contextmanager
def _advice_when_missing(config: DataConfig):
    """Add to a DatasetNotFoundError the datasets and splits that are present, and the settings that use them."""
    try:
        yield
    except DatasetNotFoundError as error:
        present = []
        for name in DATASETS:
            found = {row["key"] for row in dataset_status(name, config.data_dir) if row["verified"]}
            complete = {"train-images", "train-labels"} <= found
            settings = ([f'data.dataset = "{name}" (--dataset {name})'] if name != config.dataset else []) + \
                ([] if complete else ['data.train_split = "test" (--set data.train_split=test: trains on the test '
                                      'split, and reports accuracy on it)'])
            if {"test-images", "test-labels"} <= found and settings:
                present.append(f"  - {name}, {'all files' if complete else 'its test split only'}: "
                               f"{' with '.join(settings)}")
        if present:
            error.args = (f"{error}\nPresent here, usable now:\n" + "\n".join(present),)
        raise


def _read_files(config: DataConfig, system=None) -> dict[str, Path]:
    """The files a run reads besides the registered datasets (whose checksums are fedsim's), by the key
    meta.json records them under: an npz dataset (``data_file``), a ``system.trace`` (``trace_file``)."""
    files = {"data_file": npz_path(config.dataset),
             # absolute, links kept (as npz data's): runs that read two targets of one link are compared
             "trace_file": Path(os.path.abspath(system.trace)) if system is not None and system.profile == "trace"
             else None}
    return {key: path for key, path in files.items() if path is not None}


def _setting_of(key: str, path: Path) -> str:
    """The setting that names the file ``path`` read under ``key`` (:func:`_read_files`), for messages."""
    return f"data.dataset {PREFIX}{path}" if key == "data_file" else f"system.trace {path}"


def data_record(config: DataConfig, system=None) -> dict:
    """What meta.json records of the files a run reads (:func:`_read_files`; ``system``: the [system] table):
    each one's absolute path and SHA-256."""
    return {key: {"path": str(path), "sha256": file_sha256(path, _setting_of(key, path))}
            for key, path in _read_files(config, system).items()}


def changed_file(config: DataConfig, meta: dict, system=None, building: bool = False, reads=None) -> str | None:
    """Which file of a run (npz data, trace) differs from the one its meta.json recorded (``building``: the
    one hashed when a new run's build began), in a few words; None if none does. The file as it is now, or
    with ``reads`` (what :func:`fedsim.files.noted_reads` noted while the run was built) the bytes it read."""
    for key, path in _read_files(config, system).items():
        recorded = (meta.get(key) or {}).get("sha256")
        if recorded is None:
            continue
        setting = _setting_of(key, path)
        if reads is not None:
            seen = [digest for read, digest in reads if read == str(path)]
        else:
            try:
                seen = [file_sha256(path)]
            except DataSettingError:
                return f"{setting}: the file the run started with (sha256 {recorded[:16]}...) is missing or unreadable"
        other = next((digest for digest in seen if digest != recorded), None)
        if other is not None:
            since = ("while the run was being built", "when the build began") if building else (
                "since the run started", "in meta.json")
            return (f"{setting}: the file changed {since[0]} (sha256 {recorded[:16]}... {since[1]}, "
                    f"{'now' if reads is None else 'read'} {other[:16]}...)")
    return None


def check_data_record(config: DataConfig, meta: dict, system=None, building: bool = False, reads=None) -> None:
    """Refuse to resume a run whose npz file or trace changed since it started, or (``building``) to start
    one whose build read a file other than the one hashed when it began (DataSettingError, one line);
    ``reads`` as :func:`changed_file`'s."""
    changed = changed_file(config, meta, system, building, reads)
    if changed is not None:
        raise DataSettingError(f"{changed}; " + ("start the run again once the file stays as it is" if building
                                                 else "put the run's file back, or start a new run"))
