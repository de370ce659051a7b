"""A user's own data: the arrays of one ``.npz`` file (``data.dataset = "npz:PATH"``), checked once.

The file (``numpy.savez``) holds::

    x_train, x_test   (samples, features >= 1) finite numbers, the same number of features in both;
                      or (samples, height >= 1, width >= 1) uint8 images, the same size in both
    y_train, y_test   (samples,) whole numbers in [0, n_classes), n_classes = 1 + the largest label (2 to
                      MAX_CLASSES)
    client_ids        optional, (n_train,) whole numbers (int64): the natural partition (``data.partition =
                      "natural"``), one client per distinct id, in increasing order of id

Features are used as they are, in the pipeline's dtype (float32 for ``stc``, float64 for ``laq``), which must
hold them. uint8 images go through the pipeline as MNIST's do: ``laq`` divides by 255; ``stc`` divides by 255,
resizes to 32x32 and normalizes with the mean and std of the resized training images (:func:`pixel_statistics`;
a std of 0, images all of one shade, is refused).

Every problem is a one-line :class:`DataSettingError` naming the file, the array and what is allowed. The
file's SHA-256 (:func:`file_sha256`) is what a run folder records of it.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from fedsim.data.dataset import Dataset
from fedsim.data.partition import indices_by_owner
from fedsim.data.preprocess import laq_pipeline, pixel_statistics, stc_pipeline
from fedsim.data.registry import DataSettingError
from fedsim.data.search import expand_home
from fedsim.files import read_hashed

#: The prefix of ``data.dataset`` that names an npz file.
PREFIX = "npz:"
ARRAYS = ("x_train", "y_train", "x_test", "y_test")
CLIENT_IDS = "client_ids"
#: The most classes the labels may name (a model holds a column of weights for each).
MAX_CLASSES = 65_536
_HASHED: dict[tuple, str] = {}       # (path, size, mtime) -> SHA-256: a file is hashed once per process


def npz_path(dataset: str) -> Path | None:
    """The absolute path of ``"npz:PATH"`` (a relative PATH from the current folder, ``~`` expanded);
    None for a dataset name that is not ``npz:``."""
    if not dataset.startswith(PREFIX):
        return None
    text = dataset[len(PREFIX):].strip()
    if not text:
        raise DataSettingError(f"data.dataset {dataset!r} names no file; give npz:PATH (PATH of a .npz file)")
    return Path(os.path.abspath(expand_home(text, "data.dataset")))


def _problem(path: Path, text: str) -> DataSettingError:
    return DataSettingError(f"data.dataset npz:{path}: {text}")


def file_sha256(path: Path, setting: str | None = None) -> str:
    """The SHA-256 (hex) of the file at ``path``, computed once per process for an unchanged file (the same
    inode, size and change time: a copy that keeps its mtime, or a link retargeted, is hashed again). A file
    that cannot be read is a DataSettingError naming ``setting`` (default ``data.dataset npz:PATH``)."""
    try:
        status = os.stat(path)
        key = (str(path), status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
        if key not in _HASHED:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            _HASHED[key] = digest.hexdigest()
    except OSError as error:
        why = f"cannot be read ({error.strerror or error})"
        raise (DataSettingError(f"{setting}: {why}") if setting else _problem(path, why)) from None
    return _HASHED[key]


def _whole_numbers(path: Path, name: str, values: np.ndarray, low: int = 0) -> np.ndarray:
    """``values`` as int64 if they are whole numbers >= ``low`` in int64's range in a 1-D array; else
    DataSettingError naming the first that is not."""
    if values.ndim != 1 or values.dtype.kind not in "biuf":
        raise _problem(path, f"{name} must be a 1-D array of whole numbers; got {values.dtype} of shape {values.shape}")
    # compared before the cast to int64, which wraps (uint64) or is undefined (NaN, 1e300)
    floats = values.dtype.kind == "f"
    broken = ~np.isfinite(values) | (values != np.round(values)) if floats else np.zeros(values.shape, bool)
    outside = (np.abs(values) >= 2.0 ** 63) & (values != -2.0 ** 63) if floats else values > np.iinfo(np.int64).max
    wrong = np.flatnonzero(broken | outside | (values < low))
    if len(wrong):
        at, value = wrong[0], values[wrong[0]].item()
        bound = f" >= {low}" if low > np.iinfo(np.int64).min else ""
        why = f", too {'large' if value > 0 else 'small'} for int64" if outside[at] and not broken[at] else ""
        raise _problem(path, f"{name} must hold whole numbers{bound}; {name}[{at}] is {value!r}{why}")
    return values.astype(np.int64)


def _features(path: Path, name: str, x: np.ndarray) -> None:
    images = x.ndim == 3 and x.dtype == np.uint8
    if not (images or (x.ndim == 2 and x.dtype.kind in "biuf")):
        raise _problem(path, f"{name} must be (samples, features) numbers or (samples, height, width) uint8 "
                             f"images; got {x.dtype} of shape {x.shape}")
    if 0 in x.shape[1:]:
        raise _problem(path, f"{name} has samples of shape {x.shape[1:]}, holding no {'pixel' if images else 'feature'}"
                             f"; a sample needs at least one")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        row = np.flatnonzero(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1))[0]
        raise _problem(path, f"{name} must be finite; row {row} holds NaN or inf")


def _in_dtype(path: Path, name: str, x: np.ndarray, dtype, pipeline: str) -> np.ndarray:
    """``x`` cast to the pipeline's ``dtype``; DataSettingError naming the first entry beyond its range."""
    with np.errstate(over="ignore"):
        cast = x.astype(dtype)
    if x.dtype.kind == "f" and not np.all(np.isfinite(cast)):    # finite float64 beyond float32's range
        at = np.unravel_index(np.argmin(np.isfinite(cast)), x.shape)
        raise _problem(path, f"{name}[{', '.join(map(str, at))}] is {x[at].item()!r}, beyond the range of "
                             f"{np.dtype(dtype)}, the dtype of the {pipeline} pipeline (magnitudes up to "
                             f"{np.finfo(dtype).max:.4g}); scale the features, or set data.pipeline = \"laq\" "
                             f"(float64)")
    return cast


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The checked arrays of the npz file at ``path`` (the module docstring): x as stored, labels and
    client ids as int64, ``n_classes``, and ``sha256``: that of the bytes read (:func:`fedsim.files.read_hashed`)."""
    try:
        data, digest = read_hashed(path)      # parsed from the bytes hashed: the run records what it read
    except FileNotFoundError:
        raise _problem(path, "no such file") from None
    except OSError as error:
        raise _problem(path, f"cannot be read ({error.strerror or error})") from None
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise _problem(path, "not an .npz file (numpy.savez writes a zip archive of arrays)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files if name in (*ARRAYS, CLIENT_IDS)}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise _problem(path, f"not a readable .npz file of plain arrays ({' '.join(str(error).split())[:200]})") \
            from None
    missing = [name for name in ARRAYS if name not in arrays]
    if missing:
        raise _problem(path, f"has no array {', '.join(missing)}; it needs {', '.join(ARRAYS)} (and may hold "
                             f"{CLIENT_IDS})")
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        _features(path, f"x_{split}", x)
        arrays[f"y_{split}"] = _whole_numbers(path, f"y_{split}", arrays[f"y_{split}"])
        if len(arrays[f"y_{split}"]) != len(x):
            raise _problem(path, f"x_{split} has {len(x)} samples, y_{split} {len(arrays[f'y_{split}'])}; they "
                                 f"must be equal")
        if len(x) == 0:
            raise _problem(path, f"x_{split} holds no samples")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise _problem(path, f"x_train has samples of shape {arrays['x_train'].shape[1:]}, x_test of shape "
                             f"{arrays['x_test'].shape[1:]}; they must be the same")
    largest = {split: int(arrays[f"y_{split}"].max()) for split in ("train", "test")}    # Python ints: no overflow
    n_classes = 1 + max(largest.values())
    if n_classes < 2:
        raise _problem(path, "the labels y_train, y_test must name at least 2 classes (0 and 1); all are 0")
    if n_classes > MAX_CLASSES:
        split = "train" if largest["train"] + 1 == n_classes else "test"
        at = int(arrays[f"y_{split}"].argmax())
        raise _problem(path, f"the labels must name at most {MAX_CLASSES:,} classes (0 .. {MAX_CLASSES - 1}); "
                             f"y_{split}[{at}] is {n_classes - 1}")
    if CLIENT_IDS in arrays:
        arrays[CLIENT_IDS] = _whole_numbers(path, CLIENT_IDS, arrays[CLIENT_IDS], low=np.iinfo(np.int64).min)
        if len(arrays[CLIENT_IDS]) != len(arrays["y_train"]):
            raise _problem(path, f"{CLIENT_IDS} has {len(arrays[CLIENT_IDS])} entries, x_train "
                                 f"{len(arrays['y_train'])} samples; they must be equal (one id per sample)")
    arrays["n_classes"], arrays["sha256"] = n_classes, digest
    return arrays


def load_npz(dataset: str, pipeline: str | None, dtype=None) -> Dataset:
    """The :class:`Dataset` of ``"npz:PATH"``, prepared by ``pipeline`` (the module docstring); with ``pipeline``
    None, its labels and natural partition alone (no feature: all a partition reads)."""
    path = npz_path(dataset)
    arrays = read_npz(path)
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    if pipeline is None:
        x_train, x_test = np.empty((len(x_train), 0)), np.empty((len(x_test), 0))
    elif x_train.ndim == 3 and pipeline == "laq":
        x_train, x_test = laq_pipeline(x_train, dtype), laq_pipeline(x_test, dtype)
    elif x_train.ndim == 3:
        mean, std = pixel_statistics(x_train)
        if not std > 0:
            raise _problem(path, "x_train's images are all one shade (std 0 after the resize), and the stc pipeline "
                                 "divides by their std; give images that vary, or set data.pipeline = \"laq\"")
        x_train, x_test = (stc_pipeline(x, mean=mean, std=std, dtype=dtype) for x in (x_train, x_test))
    else:
        x_train, x_test = (_in_dtype(path, name, x, dtype, pipeline) for name, x in (("x_train", x_train),
                                                                                     ("x_test", x_test)))
    client_indices = None
    if CLIENT_IDS in arrays:
        ids, owner = np.unique(arrays[CLIENT_IDS], return_inverse=True)
        client_indices = tuple(indices_by_owner(owner, len(ids)))
    return Dataset(name=f"{PREFIX}{path}", x_train=x_train, y_train=arrays["y_train"], x_test=x_test,
                   y_test=arrays["y_test"], n_classes=arrays["n_classes"], client_indices=client_indices,
                   description=f"{path} (sha256 {arrays['sha256']}), {pipeline} pipeline")


__all__ = ["PREFIX", "file_sha256", "load_npz", "npz_path", "read_npz"]
