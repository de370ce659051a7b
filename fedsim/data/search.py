"""Where dataset files are looked for, where downloads go, and finding a verified copy on disk.

Where fedsim looks for a file, in order (see :func:`search_path`):

1. the ``data_dir`` argument (it must be an existing folder: anything else is a :class:`DataSettingError`);
2. each folder in ``FEDSIM_DATA`` (separated by ``os.pathsep``; folders that do not exist are listed as such);
3. the checkout's ``data/`` folder, when fedsim runs from a source checkout (:func:`repo_data_dir`), unless
   ``FEDSIM_NO_REPO_DATA=1`` (then it is neither searched nor the cache; the tests set it);
4. the user cache: ``FEDSIM_CACHE`` if set, else ``$XDG_CACHE_HOME/fedsim`` (if absolute), else ``~/.cache/fedsim``;
5. ``/usr/share/datasets`` (Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``).

In each folder ``<folder>/<name>/<filename>`` and then ``<folder>/<filename>`` are tried, each as the gzip file
and as an uncompressed copy (the name without ``.gz``). Only a copy that verifies counts (MNIST and
Fashion-MNIST share file names, so a file in a flat folder may belong to the other dataset); a copy that is
present but fails verification is skipped and reported if nothing better is found. A copy larger than
:func:`download_size_limit` is rejected unread. Downloads go to ``<cache_dir()>/<name>/``
(:mod:`fedsim.data.fetch`): ``FEDSIM_CACHE`` if set, else the checkout's ``data/`` if writable, else the user cache.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from fedsim.data.registry import (FILE_KEYS, DatasetFile, DatasetInfo, DataSettingError, Verification,
                                  get_dataset)

ENV_DATA = "FEDSIM_DATA"
ENV_CACHE = "FEDSIM_CACHE"
ENV_NO_REPO_DATA = "FEDSIM_NO_REPO_DATA"

#: System-wide dataset folders, searched last (tests replace this tuple with monkeypatch).
SYSTEM_DATASET_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)

# A copy (found or downloaded) may exceed the decompressed size by this much (gzip of incompressible data
# grows a little); anything larger is not a copy of the file: it is rejected unread, or the download cut off.
_SLACK_BYTES = 1 << 20
_DATA_DIR_SETTING = "data_dir (--data-dir)"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is neither on disk (verified) nor downloadable; the message says where fedsim looked.

    Its attributes: the ``dataset`` name, the ``missing`` file keys, the folders ``searched`` in order, the
    copies ``rejected`` by verification as (path, reason), and the download ``attempts`` as (URL, error).
    """

    def __init__(self, message: str, *, dataset: str = "", missing: tuple[str, ...] = (),
                 searched: tuple[Path, ...] = (), rejected: tuple[tuple[Path, str], ...] = (),
                 attempts: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.dataset = dataset
        self.missing, self.searched = tuple(missing), tuple(searched)
        self.rejected, self.attempts = tuple(rejected), tuple(attempts)


def download_size_limit(file: DatasetFile) -> int:
    """The most bytes a copy of ``file`` can have: its decompressed size plus ``_SLACK_BYTES``."""
    return file.decompressed_size + _SLACK_BYTES


def expand_home(text: str, setting: str) -> Path:
    """``Path(text)`` with a leading ``~`` or ``~user`` expanded; DataSettingError naming ``setting`` if the
    home folder cannot be determined (every path a user gives fedsim is expanded here)."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise DataSettingError(f"{setting}: cannot expand '~' in {text!r} (no such user, or no home folder); "
                               f"give the full path") from None


def folder_problem(folder) -> str:
    """What keeps fedsim from searching ``folder``: ``""`` when it is a readable folder, else a short
    phrase such as ``"does not exist"`` or ``"is not a folder"`` (for messages and listings)."""
    try:
        mode = os.stat(folder).st_mode
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist (a parent is not a folder)"
    except OSError as error:
        return f"cannot be examined ({error.strerror or error})"
    except ValueError:
        return "is not a valid path"
    if not stat.S_ISDIR(mode):
        return "is not a folder"
    if not os.access(folder, os.R_OK | os.X_OK):
        return "cannot be read (permission denied)"
    return ""


_MUST = f"{_DATA_DIR_SETTING} must be an existing folder holding dataset files"


def data_dir_path(data_dir) -> Path:
    """The ``data_dir`` argument as a Path (``~`` expanded), if it is a path that is not empty; else
    DataSettingError."""
    try:
        text = os.fsdecode(data_dir)
    except TypeError:
        raise DataSettingError(f"{_DATA_DIR_SETTING} must be the path of a folder (str or os.PathLike); "
                               f"got {type(data_dir).__name__}") from None
    if not text.strip():
        raise DataSettingError(f"{_MUST}; got an empty path")
    if "\0" in text:
        raise DataSettingError(f"{_MUST}; {text!r} contains a NUL character")
    return expand_home(text, _DATA_DIR_SETTING)


def _checked_data_dir(data_dir) -> Path:
    """The ``data_dir`` argument as a Path, if it names an existing, readable folder; else DataSettingError."""
    path = data_dir_path(data_dir)
    problem = folder_problem(path)
    if problem:
        raise DataSettingError(f"{_MUST}; {path} {problem}")
    return path


def repo_data_dir() -> Path | None:
    """The checkout's ``data/`` folder (with a ``README.md``, beside ``fedsim/`` and ``pyproject.toml``), or None."""
    if os.environ.get(ENV_NO_REPO_DATA, "").strip() not in ("", "0"):
        return None
    root = Path(__file__).resolve().parents[2]
    folder = root / "data"
    if (folder / "README.md").is_file() and (root / "pyproject.toml").is_file():
        return folder
    return None


def _env_cache() -> Path | None:
    value = os.environ.get(ENV_CACHE, "").strip()
    return expand_home(value, ENV_CACHE) if value else None


def user_cache_dir() -> Path:
    explicit = _env_cache()
    if explicit is not None:
        return explicit
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "fedsim"
    try:
        home = Path.home()
    except RuntimeError:
        raise DataSettingError(f"{ENV_CACHE}: cannot place the user cache, as the home folder cannot be "
                               f"determined (HOME is unset); set {ENV_CACHE} to a folder") from None
    return home / ".cache" / "fedsim"


def cache_dir() -> Path:
    """Where downloads go (the module docstring)."""
    repo = repo_data_dir()
    if _env_cache() is None and repo is not None and os.access(repo, os.W_OK):
        return repo
    return user_cache_dir()


def search_path(data_dir=None) -> list[tuple[Path, str]]:
    """The folders searched for dataset files (the module docstring), in order, each with where it came from;
    a folder reached twice is kept at its first position."""
    folders: list[tuple[Path, str]] = []
    if data_dir is not None:
        folders.append((_checked_data_dir(data_dir), "data_dir argument"))
    for entry in os.environ.get(ENV_DATA, "").split(os.pathsep):
        if entry.strip():
            folders.append((expand_home(entry.strip(), ENV_DATA), ENV_DATA))
    repo = repo_data_dir()
    if repo is not None:
        folders.append((repo, "checkout data/ folder"))
    folders.append((user_cache_dir(), "user cache"))
    folders.extend((folder, "system datasets folder") for folder in SYSTEM_DATASET_DIRS)
    unique = {}
    for folder, source in folders:
        unique.setdefault(_identity(folder), (folder, source))
    return list(unique.values())


def _identity(path: Path) -> str:
    try:
        return str(path.resolve())
    except (OSError, RuntimeError, ValueError):   # RuntimeError: a symlink loop (Python < 3.13)
        return str(path.absolute())


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):   # e.g. a folder on the way that may not be searched
        return False


@dataclass
class Outcome:
    """What happened while obtaining one file: the verified copy, if any, and what was tried."""

    file: DatasetFile
    path: Path | None = None
    verification: Verification | None = None
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    attempts: list[tuple[str, str]] = field(default_factory=list)
    download_note: str = ""      # why no download was tried, or a problem with the cache folder


def verify_path(path: Path, file: DatasetFile, verified: dict[str, Verification]) -> Verification:
    """Verify the copy at ``path``, at most once per ``verified`` memo (one public call); a file larger than
    :func:`download_size_limit` is rejected after reading one byte more than that."""
    key = _identity(path)
    if key not in verified:
        limit = download_size_limit(file)
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except OSError as error:
            verified[key] = Verification(False, None, f"cannot be read ({error.strerror or error})")
        else:
            if len(data) > limit:
                verified[key] = Verification(False, None, f"larger than {limit} bytes, more than any copy of "
                                                          f"{file.filename} can be")
            else:
                verified[key] = file.verify(data)
    return verified[key]


def find_local(info: DatasetInfo, folders: list[tuple[Path, str]], verified: dict[str, Verification],
               outcome: Outcome) -> bool:
    """Whether a verified copy of ``outcome.file`` is in ``folders``; it goes into ``outcome``, with the copies
    that failed verification."""
    file = outcome.file
    for folder, _source in folders:
        for path in (folder / info.name / file.filename, folder / info.name / file.uncompressed_filename,
                     folder / file.filename, folder / file.uncompressed_filename):
            if not _is_file(path):
                continue
            verification = verify_path(path, file, verified)
            if verification.ok:
                outcome.path, outcome.verification = path, verification
                return True
            if all(_identity(path) != _identity(seen) for seen, _ in outcome.rejected):
                outcome.rejected.append((path, verification.reason))
    return False


def not_found_error(info: DatasetInfo, failures: list[Outcome], folders: list[tuple[Path, str]]):
    """The one error for files that could not be had: where fedsim looked, what it found, how to fix it."""
    listed = ", ".join(f"{o.file.key} ({o.file.filename})" for o in failures)
    lines = [f"dataset {info.name!r}: no verified copy of {listed}.",
             f"Searched these folders, each as <folder>/{info.name}/<file> and <folder>/<file> "
             f"(gzip, or uncompressed without .gz):"]
    for folder, source in folders:
        problem = folder_problem(folder)
        lines.append(f"  - {folder}  [{source}]{f'  ({problem})' if problem else ''}")
    for outcome in failures:
        lines.append(f"{outcome.file.filename}:")
        if outcome.rejected:
            lines.append("  found, but failed verification:")
            lines.extend(f"    - {path}: {reason}" for path, reason in outcome.rejected)
        else:
            lines.append("  no copy found in any of these folders")
        if outcome.download_note:
            lines.append(f"  {outcome.download_note}")
        if outcome.attempts:
            lines.append("  download attempts, all failed:")
            lines.extend(f"    - {url}: {error}" for url, error in outcome.attempts)
    lines += ["How to fix:",
              f"  - pass data_dir=<folder>, or set {ENV_DATA} to folders holding the files "
              f"(separated by {os.pathsep!r});",
              f"  - when online: `fedsim data fetch {info.name}` downloads and verifies them into "
              f"{cache_dir() / info.name}"]
    if info.install_hint:
        lines.append(f"  - on Debian/Ubuntu: `sudo apt-get install {info.install_hint}` "
                     f"(installs /usr/share/datasets/{info.name})")
    return DatasetNotFoundError(
        "\n".join(lines), dataset=info.name, missing=tuple(o.file.key for o in failures),
        searched=tuple(folder for folder, _ in folders),
        rejected=tuple(item for o in failures for item in o.rejected),
        attempts=tuple(item for o in failures for item in o.attempts))


def locate(name: str, file_key: str, data_dir=None) -> Path | None:
    """The first verified local copy of file ``file_key`` of dataset ``name``, or None; never downloads.
    DataSettingError for a bad ``data_dir``, an unknown name or file key."""
    info = get_dataset(name)
    outcome = Outcome(info.file(file_key))
    find_local(info, search_path(data_dir), {}, outcome)
    return outcome.path


def dataset_status(name: str, data_dir=None) -> list[dict]:
    """What is on disk for each file of a dataset (for ``fedsim data info``); never downloads.

    One dict per file key, in ``FILE_KEYS`` order: ``key``, ``filename``, ``path`` (the verified copy; else
    the first copy that failed verification; else None), ``verified``, ``method`` (``"md5"``, ``"sha256"``
    or None) and ``reason`` (how it verified, why it failed, or ``"not found"``). DataSettingError as
    :func:`locate`.
    """
    info = get_dataset(name)
    folders = search_path(data_dir)
    rows = []
    for key in FILE_KEYS:
        outcome = Outcome(info.file(key))
        # a fresh memo per file: the payloads are not kept, and files of different keys never coincide
        find_local(info, folders, {}, outcome)
        if outcome.path is not None:
            path, ok = outcome.path, True
            method, reason = outcome.verification.method, outcome.verification.reason
        elif outcome.rejected:
            (path, reason), ok, method = outcome.rejected[0], False, None
        else:
            path, ok, method, reason = None, False, None, "not found"
        rows.append({"key": key, "filename": outcome.file.filename, "path": path, "verified": ok,
                     "method": method, "reason": reason})
    return rows


__all__ = ["DataSettingError", "DatasetNotFoundError", "cache_dir", "data_dir_path", "dataset_status",
           "download_size_limit", "expand_home", "folder_problem", "locate", "repo_data_dir", "search_path",
           "user_cache_dir"]
