"""Finding, downloading and loading the registry's datasets (:mod:`fedsim.data.registry`).

Where fedsim looks for a file, in order (see :func:`search_path`):

1. the ``data_dir`` argument;
2. each folder in ``FEDSIM_DATA`` (several separated by ``os.pathsep``, ``:`` on POSIX);
3. the checkout's ``data/`` folder, when fedsim runs from a source checkout (:func:`repo_data_dir`);
4. the user cache: ``FEDSIM_CACHE`` if set, else ``$XDG_CACHE_HOME/fedsim``, else ``~/.cache/fedsim``;
5. ``/usr/share/datasets`` (Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``).

In each folder ``<folder>/<name>/<filename>`` and then ``<folder>/<filename>`` are tried, each as the gzip file
and as an uncompressed copy (the name without ``.gz``). Only a copy that verifies counts (MNIST and
Fashion-MNIST share file names, so a file in a flat folder may belong to the other dataset); a copy that is
present but fails verification is skipped and reported if nothing better is found.

Downloads go to ``<cache_dir()>/<name>/<filename>``: the mirrors are tried in order, each file is written
to a temporary file in the same folder, verified, and only then moved into place with :func:`os.replace`,
so a partial or corrupt download never sits at the final path.

Environment variables
---------------------
FEDSIM_DATA
    Extra folders to search, separated by ``os.pathsep``.
FEDSIM_CACHE
    The download cache (overrides both the checkout's ``data/`` folder and the user cache).
FEDSIM_MIRRORS
    Base URLs that replace the registry's mirrors for every dataset, separated by whitespace or
    ``os.pathsep`` (a ``:`` inside a URL is kept). A file is fetched from ``<base>/<name>/<filename>``,
    so an HTTP server (or a ``file://`` URL) over a folder laid out like the cache works as a mirror.
FEDSIM_NO_REPO_DATA
    Set to ``1`` to ignore the checkout's ``data/`` folder, both for searching and as the cache (the tests
    set it so they never touch a developer's data).
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedsim import __version__
from fedsim.data.idx import read_images_and_labels
from fedsim.data.registry import (DATASETS, FILE_KEYS, SPLIT_FILES, DatasetFile, DatasetInfo, Verification,
                                  get_dataset, is_gzip)

ENV_DATA = "FEDSIM_DATA"
ENV_CACHE = "FEDSIM_CACHE"
ENV_MIRRORS = "FEDSIM_MIRRORS"
ENV_NO_REPO_DATA = "FEDSIM_NO_REPO_DATA"

#: System-wide dataset folders, searched last (tests replace this tuple with monkeypatch).
SYSTEM_DATASET_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)

_CHUNK_BYTES = 1 << 16
# A downloaded file may exceed the decompressed size by this much (gzip of incompressible data grows a
# little); anything larger is not a copy of the file and the download is cut off.
_DOWNLOAD_SLACK_BYTES = 1 << 20
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is neither on disk (verified) nor downloadable; the message says where fedsim looked.

    Attributes
    ----------
    dataset : str
        The dataset's registry name.
    missing : tuple of str
        File keys that could not be had.
    searched : tuple of pathlib.Path
        Folders searched, in order.
    rejected : tuple of (pathlib.Path, str)
        Copies that were found but failed verification, with the reason.
    attempts : tuple of (str, str)
        URLs tried, with what went wrong.
    """

    def __init__(self, message: str, *, dataset: str = "", missing: tuple[str, ...] = (),
                 searched: tuple[Path, ...] = (), rejected: tuple[tuple[Path, str], ...] = (),
                 attempts: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.dataset = dataset
        self.missing = tuple(missing)
        self.searched = tuple(searched)
        self.rejected = tuple(rejected)
        self.attempts = tuple(attempts)


# ---------------------------------------------------------------------------------------------------------
# Folders


def repo_data_dir() -> Path | None:
    """The checkout's ``data/`` folder, or None when fedsim is not running from a source checkout.

    A checkout is recognised by a ``data/README.md`` next to the ``fedsim/`` package folder and a
    ``pyproject.toml`` beside them. ``FEDSIM_NO_REPO_DATA=1`` makes this return None.
    """
    if os.environ.get(ENV_NO_REPO_DATA, "").strip() not in ("", "0"):
        return None
    root = Path(__file__).resolve().parents[2]
    folder = root / "data"
    if (folder / "README.md").is_file() and (root / "pyproject.toml").is_file():
        return folder
    return None


def _env_cache() -> Path | None:
    value = os.environ.get(ENV_CACHE, "").strip()
    return Path(value).expanduser() if value else None


def user_cache_dir() -> Path:
    """``FEDSIM_CACHE`` if set, else ``$XDG_CACHE_HOME/fedsim`` (if absolute), else ``~/.cache/fedsim``."""
    explicit = _env_cache()
    if explicit is not None:
        return explicit
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "fedsim"
    return Path.home() / ".cache" / "fedsim"


def cache_dir() -> Path:
    """Where downloads go: ``FEDSIM_CACHE`` if set, else the checkout's ``data/`` if writable, else the user
    cache (:func:`user_cache_dir`). Files land in ``<cache_dir()>/<name>/<filename>``."""
    explicit = _env_cache()
    if explicit is not None:
        return explicit
    repo = repo_data_dir()
    if repo is not None and os.access(repo, os.W_OK):
        return repo
    return user_cache_dir()


def search_path(data_dir=None) -> list[tuple[Path, str]]:
    """The folders searched for dataset files, in order, each with where it came from.

    Duplicates (the same folder reached twice) are kept once, at their first position.
    """
    folders: list[tuple[Path, str]] = []
    if data_dir is not None:
        folders.append((Path(data_dir).expanduser(), "data_dir argument"))
    for entry in os.environ.get(ENV_DATA, "").split(os.pathsep):
        if entry.strip():
            folders.append((Path(entry.strip()).expanduser(), ENV_DATA))
    repo = repo_data_dir()
    if repo is not None:
        folders.append((repo, "checkout data/ folder"))
    folders.append((user_cache_dir(), "user cache"))
    folders.extend((folder, "system datasets folder") for folder in SYSTEM_DATASET_DIRS)
    unique, seen = [], set()
    for folder, source in folders:
        key = _identity(folder)
        if key not in seen:
            seen.add(key)
            unique.append((folder, source))
    return unique


def _identity(path: Path) -> str:
    try:
        return str(path.resolve())
    except OSError:
        return str(path.absolute())


def _candidates(folder: Path, name: str, file: DatasetFile) -> list[Path]:
    return [folder / name / file.filename, folder / name / file.uncompressed_filename,
            folder / file.filename, folder / file.uncompressed_filename]


# ---------------------------------------------------------------------------------------------------------
# Mirrors


def parse_mirror_list(text: str, setting: str = ENV_MIRRORS) -> list[str]:
    """Split a list of base URLs separated by whitespace or ``os.pathsep``.

    A separator is only recognised where the next URL begins (``<scheme>://``), so ``:`` inside a URL, as in
    ``http://127.0.0.1:8000``, is kept. Raises ValueError naming ``setting`` for an entry that is not a URL.
    """
    splitter = re.compile(re.escape(os.pathsep) + r"(?=[A-Za-z][A-Za-z0-9+.-]*://)")
    urls = []
    for token in text.split():
        for piece in splitter.split(token):
            piece = piece.strip(os.pathsep)
            if not piece:
                continue
            if not _URL_START.match(piece):
                raise ValueError(f"{setting} must hold base URLs such as http://host:port/path or "
                                 f"file:///folder, separated by whitespace or {os.pathsep!r}; got {piece!r}")
            urls.append(piece)
    return urls


def mirror_urls(name: str, file_key: str, mirrors=None) -> list[str]:
    """The URLs to download one file from, in the order they are tried.

    Parameters
    ----------
    name, file_key : str
        Dataset and file.
    mirrors : str or sequence of str, optional
        Base URLs replacing the registry's mirrors; a file is then at ``<base>/<name>/<filename>``.
        Default: ``FEDSIM_MIRRORS`` if set (same layout), else the registry's mirrors, where a file is at
        ``<mirror>/<filename>``.
    """
    info = get_dataset(name)
    file = info.file(file_key)
    if mirrors is None and os.environ.get(ENV_MIRRORS, "").strip():
        mirrors = parse_mirror_list(os.environ[ENV_MIRRORS], ENV_MIRRORS)
    if mirrors is None:
        return [f"{mirror.rstrip('/')}/{file.filename}" for mirror in info.mirrors]
    if isinstance(mirrors, str):
        mirrors = parse_mirror_list(mirrors, "mirrors")
    for base in mirrors:
        if not isinstance(base, str) or not _URL_START.match(base):
            raise ValueError(f"mirrors must be base URLs such as http://host:port/path; got {base!r}")
    return [f"{base.rstrip('/')}/{info.name}/{file.filename}" for base in mirrors]


# ---------------------------------------------------------------------------------------------------------
# Finding and downloading one file


@dataclass
class _Outcome:
    """What happened while obtaining one file."""

    file: DatasetFile
    path: Path | None = None
    verification: Verification | None = None
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    attempts: list[tuple[str, str]] = field(default_factory=list)
    download_note: str = ""      # why no download was tried, or a problem with the cache folder


def _verify_path(path: Path, file: DatasetFile, verified: dict[str, Verification]) -> Verification:
    """Verify the copy at ``path``, at most once per ``verified`` memo (one public call)."""
    key = _identity(path)
    if key not in verified:
        try:
            data = path.read_bytes()
        except OSError as error:
            verified[key] = Verification(False, None, f"cannot be read ({error.strerror or error})")
        else:
            verified[key] = file.verify(data)
    return verified[key]


def _find_local(info: DatasetInfo, file: DatasetFile, folders: list[tuple[Path, str]],
                verified: dict[str, Verification], outcome: _Outcome) -> bool:
    for folder, _source in folders:
        for path in _candidates(folder, info.name, file):
            if not path.is_file():
                continue
            verification = _verify_path(path, file, verified)
            if verification.ok:
                outcome.path, outcome.verification = path, verification
                return True
            if all(_identity(path) != _identity(seen) for seen, _ in outcome.rejected):
                outcome.rejected.append((path, verification.reason))
    return False


class _DownloadFailed(Exception):
    pass


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _open_temp(folder: Path, filename: str):
    """A new file ``.<filename>.<random>.part`` in ``folder``, opened for writing (mode 0644 minus umask)."""
    while True:
        path = folder / f".{filename}.{os.getpid()}-{secrets.token_hex(4)}.part"
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
        except FileExistsError:
            continue
        return path, os.fdopen(descriptor, "wb")


def _download(url: str, folder: Path, file: DatasetFile, timeout: float, show_progress: bool):
    """Download ``url`` into ``folder``, verify it, and move it into place; return (path, verification).

    The final name is ``file.filename`` for gzip content and ``file.uncompressed_filename`` otherwise.
    Raises _DownloadFailed, OSError or http.client.HTTPException; the temporary file is always removed.
    """
    limit = file.decompressed_size + _DOWNLOAD_SLACK_BYTES
    request = urllib.request.Request(url, headers={"User-Agent": f"fedsim/{__version__} (Python urllib)"})
    temp_path, handle = _open_temp(folder, file.filename)
    try:
        with handle:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                announced = response.headers.get("Content-Length")
                announced = int(announced) if announced and announced.isdigit() else None
                if announced is not None and announced > limit:
                    raise _DownloadFailed(f"server announces {announced} bytes; no copy of {file.filename} "
                                          f"is larger than {limit}")
                data = bytearray()
                with tqdm(total=announced, desc=file.filename, unit="B", unit_scale=True, unit_divisor=1024,
                          disable=not show_progress, leave=False) as bar:
                    while chunk := response.read(_CHUNK_BYTES):
                        data += chunk
                        if len(data) > limit:
                            raise _DownloadFailed(f"more than {limit} bytes received; no copy of "
                                                  f"{file.filename} is that large")
                        handle.write(chunk)
                        bar.update(len(chunk))
                if announced is not None and len(data) != announced:
                    raise _DownloadFailed(f"connection closed after {len(data)} of {announced} bytes")
            handle.flush()
            os.fsync(handle.fileno())
        verification = file.verify(data)
        if not verification.ok:
            raise _DownloadFailed(f"downloaded file failed verification: {verification.reason}")
        final = folder / (file.filename if is_gzip(data) else file.uncompressed_filename)
        os.replace(temp_path, final)
        return final, verification
    finally:
        temp_path.unlink(missing_ok=True)   # gone already after a successful os.replace


def _describe_error(error: BaseException, timeout: float) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        if isinstance(reason, TimeoutError):
            return f"timed out after {timeout} s while connecting"
        return f"cannot connect: {getattr(reason, 'strerror', None) or reason}"
    if isinstance(error, TimeoutError):
        return f"timed out after {timeout} s waiting for data"
    if isinstance(error, http.client.HTTPException):
        return f"broken HTTP response: {type(error).__name__} {error}".rstrip()
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {error.strerror or error}"
    return str(error)


def _obtain(info: DatasetInfo, file: DatasetFile, *, folders, verified, download: bool, mirrors,
            progress, timeout: float) -> _Outcome:
    """Find a verified copy of ``file``; failing that, download one (if allowed)."""
    outcome = _Outcome(file)
    if _find_local(info, file, folders, verified, outcome):
        return outcome
    if not download:
        outcome.download_note = "no download tried (download=False)"
        return outcome
    urls = mirror_urls(info.name, file.key, mirrors)
    if not urls:
        outcome.download_note = "no download tried (the mirror list is empty)"
        return outcome
    folder = cache_dir() / info.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        outcome.download_note = (f"no download tried: cannot create the cache folder {folder} "
                                 f"({error.strerror or error}); set {ENV_CACHE} to a writable folder")
        return outcome
    if not os.access(folder, os.W_OK):
        outcome.download_note = (f"no download tried: the cache folder {folder} is not writable; "
                                 f"set {ENV_CACHE} to a writable folder")
        return outcome
    show_progress = _stderr_is_terminal() if progress is None else bool(progress)
    for url in urls:
        try:
            outcome.path, outcome.verification = _download(url, folder, file, timeout, show_progress)
            return outcome
        except (_DownloadFailed, OSError, http.client.HTTPException, ValueError) as error:
            outcome.attempts.append((url, _describe_error(error, timeout)))
    return outcome


def _not_found(info: DatasetInfo, failures: list[_Outcome], folders: list[tuple[Path, str]]):
    """The one error for files that could not be had: where fedsim looked, what it found, how to fix it."""
    listed = ", ".join(f"{o.file.key} ({o.file.filename})" for o in failures)
    lines = [f"dataset {info.name!r}: no verified copy of {listed}.",
             f"Searched these folders, each as <folder>/{info.name}/<file> and <folder>/<file> "
             f"(gzip, or uncompressed without .gz):"]
    for folder, source in folders:
        exists = "" if folder.is_dir() else "  (does not exist)"
        lines.append(f"  - {folder}  [{source}]{exists}")
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


# ---------------------------------------------------------------------------------------------------------
# Public API


def locate(name: str, file_key: str, data_dir=None) -> Path | None:
    """The first verified local copy of a dataset file, or None; never downloads.

    Parameters
    ----------
    name : str
        Registry name (``"mnist"`` or ``"fashion-mnist"``).
    file_key : str
        One of ``"train-images"``, ``"train-labels"``, ``"test-images"``, ``"test-labels"``.
    data_dir : str or os.PathLike, optional
        Folder searched first.
    """
    info = get_dataset(name)
    file = info.file(file_key)
    outcome = _Outcome(file)
    _find_local(info, file, search_path(data_dir), {}, outcome)
    return outcome.path


def fetch(name: str, file_key: str, *, data_dir=None, download: bool = True, mirrors=None,
          progress: bool | None = None, timeout: float = 30) -> Path:
    """A verified copy of a dataset file: found locally, else downloaded into :func:`cache_dir`.

    Parameters
    ----------
    name, file_key, data_dir
        As in :func:`locate`.
    download : bool
        Whether to download when no verified local copy exists.
    mirrors : str or sequence of str, optional
        Base URLs replacing the registry's mirrors (see :func:`mirror_urls`).
    progress : bool, optional
        Show a progress bar; default: only when stderr is a terminal.
    timeout : float
        Seconds to wait for a server on each connect and each read.

    Raises
    ------
    DatasetNotFoundError
        Listing the folders searched, copies that failed verification, and mirrors tried with their errors.
    """
    _check_timeout(timeout)
    info = get_dataset(name)
    file = info.file(file_key)
    folders = search_path(data_dir)
    outcome = _obtain(info, file, folders=folders, verified={}, download=download, mirrors=mirrors,
                      progress=progress, timeout=timeout)
    if outcome.path is None:
        raise _not_found(info, [outcome], folders)
    return outcome.path


def load_split(name: str, split: str, *, data_dir=None, download: bool = True, progress: bool | None = None,
               mirrors=None, timeout: float = 30) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split of a registered dataset, located or downloaded and verified.

    Parameters
    ----------
    name : str
        Registry name (``"mnist"`` or ``"fashion-mnist"``).
    split : str
        ``"train"`` or ``"test"``.
    data_dir, download, progress, mirrors, timeout
        As in :func:`fetch`.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape (N, 28, 28).
    labels : numpy.ndarray
        int64, shape (N,), in ``[0, n_classes)``.

    Raises
    ------
    DatasetNotFoundError
        One error covering every file of the split that could not be had.
    """
    _check_timeout(timeout)
    info = get_dataset(name)
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_FILES)}; got {split!r}")
    folders = search_path(data_dir)
    verified: dict[str, Verification] = {}
    outcomes = [_obtain(info, info.file(key), folders=folders, verified=verified, download=download,
                        mirrors=mirrors, progress=progress, timeout=timeout) for key in SPLIT_FILES[split]]
    failures = [outcome for outcome in outcomes if outcome.path is None]
    if failures:
        raise _not_found(info, failures, folders)
    images, labels = outcomes
    # The verified payloads are the decompressed IDX files: parse them without reading the files again.
    return read_images_and_labels(images.verification.payload, labels.verification.payload,
                                  n_classes=info.n_classes, images_name=str(images.path),
                                  labels_name=str(labels.path))


def dataset_status(name: str, data_dir=None) -> list[dict]:
    """What is on disk for each file of a dataset (for ``fedsim data info``); never downloads.

    Returns
    -------
    list of dict
        One per file key, in :data:`~fedsim.data.registry.FILE_KEYS` order, with ``key``, ``filename``,
        ``path`` (the verified copy; else the first copy found that failed verification; else None),
        ``verified`` (bool), ``method`` (``"md5"``, ``"sha256"`` or None) and ``reason`` (how it verified,
        why it failed, or ``"not found"``).
    """
    info = get_dataset(name)
    folders = search_path(data_dir)
    verified: dict[str, Verification] = {}
    rows = []
    for key in FILE_KEYS:
        outcome = _Outcome(info.file(key))
        _find_local(info, outcome.file, folders, verified, outcome)
        if outcome.path is not None:
            path, ok = outcome.path, True
            method, reason = outcome.verification.method, outcome.verification.reason
        elif outcome.rejected:
            (path, reason), ok, method = outcome.rejected[0], False, None
        else:
            path, ok, method, reason = None, False, None, "not found"
        rows.append({"key": key, "filename": outcome.file.filename, "path": path, "verified": ok,
                     "method": method, "reason": reason})
        verified.clear()   # the payloads are not needed any more; files of different keys never coincide
    return rows


def _check_timeout(timeout) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")


__all__ = ["DATASETS", "DatasetNotFoundError", "cache_dir", "dataset_status", "fetch", "load_split", "locate",
           "mirror_urls", "parse_mirror_list", "repo_data_dir", "search_path", "user_cache_dir"]
