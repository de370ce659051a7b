"""Finding, downloading and loading the registry's datasets (:mod:`fedsim.data.registry`).

Where fedsim looks for a file, in order (see :func:`search_path`):

1. the ``data_dir`` argument (it must be an existing folder: anything else is a :class:`DataSettingError`);
2. each folder in ``FEDSIM_DATA`` (several separated by ``os.pathsep``, ``:`` on POSIX);
3. the checkout's ``data/`` folder, when fedsim runs from a source checkout (:func:`repo_data_dir`);
4. the user cache: ``FEDSIM_CACHE`` if set, else ``$XDG_CACHE_HOME/fedsim``, else ``~/.cache/fedsim``;
5. ``/usr/share/datasets`` (Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``).

In each folder ``<folder>/<name>/<filename>`` and then ``<folder>/<filename>`` are tried, each as the gzip file
and as an uncompressed copy (the name without ``.gz``). Only a copy that verifies counts (MNIST and
Fashion-MNIST share file names, so a file in a flat folder may belong to the other dataset); a copy that is
present but fails verification is skipped and reported if nothing better is found. A copy larger than
:func:`download_size_limit` is rejected without being read.

Downloads go to ``<cache_dir()>/<name>/<filename>``: the mirrors are tried in order, each file is received
into memory, verified, written to a temporary file in the same folder and only then moved into place with
:func:`os.replace`, so a partial or corrupt download never sits at the final path.

Limits of one download attempt (one file from one mirror); passing one counts as that mirror failing, and
the next mirror is tried:

* ``timeout``: seconds the server may stay silent, on connecting and on each read (default 30);
* the **deadline**: seconds the whole attempt may take, connecting, headers and body included. The
  default is :func:`download_deadline`: ``DEADLINE_BASE_SECONDS`` (60 s) plus the file's decompressed size
  at ``DEADLINE_MIN_BYTES_PER_SECOND`` (64 KiB/s), so 60 s for a label file, about 3 min for the test images
  and 13 min for the train images. A server that trickles bytes slowly enough never trips the per-read
  timeout; the deadline stops it. Pass ``deadline=`` to choose another one;
* the **size cap** :func:`download_size_limit`: the file's decompressed size plus 1 MiB (a gzip copy is
  smaller, an uncompressed one is exactly that size). A server that announces more is refused at once; one
  that sends more, or never stops, is cut off as soon as the cap is passed.

A problem with the cache folder itself (cannot be created, not writable, disk full) stops the downloads of
that file at once, as trying the other mirrors cannot help.

Settings that are not allowed (a timeout or deadline out of range, a malformed ``FEDSIM_MIRRORS`` or
``mirrors`` argument, a ``data_dir`` that is not an existing folder, a ``~user`` that cannot be expanded,
an unknown dataset, file key or split) raise :class:`DataSettingError`, a ValueError with a one-line message
naming the setting and what it may be. They are checked before anything is searched; the mirrors whenever
downloading is allowed, even if the files turn out to be on disk, so a typo shows before it matters. Files
that cannot be had raise :class:`DatasetNotFoundError`.

Environment variables
---------------------
FEDSIM_DATA
    Extra folders to search, separated by ``os.pathsep``. Folders that do not exist are listed as such.
FEDSIM_CACHE
    The download cache (overrides both the checkout's ``data/`` folder and the user cache).
FEDSIM_MIRRORS
    Base URLs that replace the registry's mirrors for every dataset, separated by whitespace or
    ``os.pathsep`` (a ``:`` inside a URL is kept); empty entries are skipped. Each is ``http://host[:port]
    [/path]``, ``https://...`` or ``file:///absolute/folder``, with no query (``?``) or fragment (``#``).
    A file is fetched from ``<base>/<name>/<filename>``, so an HTTP server (or a ``file://`` URL) over a
    folder laid out like the cache works as a mirror. Unset or blank: the registry's mirrors.
FEDSIM_NO_REPO_DATA
    Set to ``1`` to ignore the checkout's ``data/`` folder, both for searching and as the cache (the tests
    set it so they never touch a developer's data).
"""

from __future__ import annotations

import functools
import http.client
import math
import numbers
import os
import re
import secrets
import socket
import stat
import sys
import threading
import urllib.error
import urllib.parse
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

#: URL schemes a mirror may use.
MIRROR_SCHEMES: tuple[str, ...] = ("http", "https", "file")

#: The per-read ``timeout`` must lie in (0, MAX_TIMEOUT_SECONDS].
MAX_TIMEOUT_SECONDS = 3600.0
#: An explicit ``deadline`` must lie in (0, MAX_DEADLINE_SECONDS].
MAX_DEADLINE_SECONDS = 86400.0
#: The automatic deadline of one download attempt is DEADLINE_BASE_SECONDS plus the file's decompressed
#: size at DEADLINE_MIN_BYTES_PER_SECOND (see :func:`download_deadline`).
DEADLINE_BASE_SECONDS = 60.0
DEADLINE_MIN_BYTES_PER_SECOND = 64 * 1024

_CHUNK_BYTES = 1 << 16
# A downloaded (or found) file may exceed the decompressed size by this much (gzip of incompressible data
# grows a little); anything larger is not a copy of the file: it is refused, or the download cut off.
_DOWNLOAD_SLACK_BYTES = 1 << 20
# After its deadline, a download's worker thread gets this long to notice its connection was shut down.
_DEADLINE_GRACE_SECONDS = 2.0
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_MIRROR_EXAMPLES = "http://host:port/path, https://host/path or file:///folder"
_DATA_DIR_SETTING = "data_dir (--data-dir)"
_TIMEOUT_SETTING = "timeout (--timeout)"


class DataSettingError(ValueError):
    """A data setting (an argument, a command-line option or an environment variable) has a value that is
    not allowed. The message is one line that names the setting and says what it may be."""


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
# Settings


def _dataset(name) -> DatasetInfo:
    try:
        return get_dataset(name)
    except ValueError as error:
        raise DataSettingError(str(error)) from None


def _dataset_file(info: DatasetInfo, file_key) -> DatasetFile:
    try:
        return info.file(file_key)
    except ValueError as error:
        raise DataSettingError(str(error)) from None


def _check_seconds(value, setting: str, maximum: float, unset: str = "") -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or not 0 < value <= maximum):
        raise DataSettingError(f"{setting} must be {unset}a number of seconds > 0 and <= {maximum:g}; "
                               f"got {value!r}")
    return float(value)


def _check_timeout(timeout) -> float:
    return _check_seconds(timeout, _TIMEOUT_SETTING, MAX_TIMEOUT_SECONDS)


def _check_deadline(deadline) -> float | None:
    if deadline is None:
        return None
    return _check_seconds(deadline, "deadline", MAX_DEADLINE_SECONDS,
                          unset=f"None (automatic: {DEADLINE_BASE_SECONDS:g} s plus the file's size at "
                                f"{DEADLINE_MIN_BYTES_PER_SECOND // 1024} KiB/s) or ")


def download_deadline(file: DatasetFile) -> float:
    """The automatic overall deadline, in seconds, of one attempt to download ``file`` from one mirror.

    ``DEADLINE_BASE_SECONDS + file.decompressed_size / DEADLINE_MIN_BYTES_PER_SECOND``: 60 s of setup plus
    the time to move the uncompressed file (the most a mirror can have to send) at 64 KiB/s, a bandwidth
    any working connection exceeds (the gzip files are smaller still). About 60 s for a label file, 180 s
    for the test images, 780 s for the train images.
    """
    return DEADLINE_BASE_SECONDS + file.decompressed_size / DEADLINE_MIN_BYTES_PER_SECOND


def download_size_limit(file: DatasetFile) -> int:
    """The most bytes a copy of ``file`` can have: its decompressed size plus 1 MiB of slack.

    A download is cut off, and a file found on disk rejected unread, beyond this.
    """
    return file.decompressed_size + _DOWNLOAD_SLACK_BYTES


# ---------------------------------------------------------------------------------------------------------
# Folders


def _expand(text: str, setting: str) -> Path:
    """``Path(text)`` with a leading ``~`` or ``~user`` expanded; DataSettingError naming ``setting`` if the
    home folder cannot be determined."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise DataSettingError(f"{setting}: cannot expand '~' in {text!r} (no such user, or no home folder); "
                               f"give the folder's full path") from None


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


def _checked_data_dir(data_dir) -> Path:
    """The ``data_dir`` argument as a Path, if it names an existing, readable folder; else DataSettingError."""
    try:
        text = os.fspath(data_dir)
    except TypeError:
        raise DataSettingError(f"{_DATA_DIR_SETTING} must be the path of a folder (str or os.PathLike); "
                               f"got {type(data_dir).__name__}") from None
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise DataSettingError(f"{_DATA_DIR_SETTING} must be an existing folder holding dataset files; "
                               f"got an empty path")
    if "\0" in text:
        raise DataSettingError(f"{_DATA_DIR_SETTING} must be an existing folder holding dataset files; "
                               f"{text!r} contains a NUL character")
    path = _expand(text, _DATA_DIR_SETTING)
    problem = folder_problem(path)
    if problem:
        raise DataSettingError(f"{_DATA_DIR_SETTING} must be an existing folder holding dataset files; "
                               f"{path} {problem}")
    return path


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
    return _expand(value, ENV_CACHE) if value else None


def user_cache_dir() -> Path:
    """``FEDSIM_CACHE`` if set, else ``$XDG_CACHE_HOME/fedsim`` (if absolute), else ``~/.cache/fedsim``."""
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

    Raises
    ------
    DataSettingError
        If ``data_dir`` is given but is not an existing, readable folder, or a ``~`` in a setting cannot be
        expanded. Folders from ``FEDSIM_DATA`` that do not exist are kept (and listed as such in errors).
    """
    folders: list[tuple[Path, str]] = []
    if data_dir is not None:
        folders.append((_checked_data_dir(data_dir), "data_dir argument"))
    for entry in os.environ.get(ENV_DATA, "").split(os.pathsep):
        if entry.strip():
            folders.append((_expand(entry.strip(), ENV_DATA), ENV_DATA))
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
    except (OSError, RuntimeError, ValueError):   # RuntimeError: a symlink loop (Python < 3.13)
        return str(path.absolute())


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):   # e.g. a folder on the way that may not be searched
        return False


def _candidates(folder: Path, name: str, file: DatasetFile) -> list[Path]:
    return [folder / name / file.filename, folder / name / file.uncompressed_filename,
            folder / file.filename, folder / file.uncompressed_filename]


# ---------------------------------------------------------------------------------------------------------
# Mirrors


def _mirror_problem(url: str) -> str:
    """``""`` if ``url`` is a usable base URL for a mirror, else what is wrong with it."""
    if not url.isascii() or not url.isprintable() or any(char.isspace() for char in url):
        return "it contains a space, a control character or a non-ASCII character"
    if not _URL_START.match(url):
        return "it does not start with a scheme such as http://"
    scheme = url.split(":", 1)[0].lower()
    if scheme not in MIRROR_SCHEMES:
        return f"scheme {scheme!r} is not supported (only {', '.join(MIRROR_SCHEMES)})"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"it is not a valid URL ({error})"
    if "?" in url or "#" in url:
        return "a base URL has no query (?) or fragment (#)"
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            return f"a file URL names no host: file:///absolute/folder, not file://{parts.netloc}/..."
        if not parts.path.startswith("/"):
            return "it names no folder"
    elif not parts.hostname:
        return "it names no host"
    elif port == 0:
        return "port 0 is not a port a server listens on"
    return ""


def _mirror_format_error(setting: str, piece, problem: str, text: bool = True) -> DataSettingError:
    what = (f"must hold base URLs such as {_MIRROR_EXAMPLES}, separated by whitespace or {os.pathsep!r}"
            if text else f"must be base URLs such as {_MIRROR_EXAMPLES}")
    return DataSettingError(f"{setting} {what}; {piece!r} is not one: {problem}")


def parse_mirror_list(text: str, setting: str = ENV_MIRRORS) -> list[str]:
    """Split a list of base URLs separated by whitespace or ``os.pathsep``, and check each.

    A separator is only recognised where the next URL begins (``<scheme>://``), so ``:`` inside a URL, as in
    ``http://127.0.0.1:8000``, is kept; empty entries are skipped. Raises :class:`DataSettingError` naming
    ``setting`` for an entry that is not an ``http``, ``https`` or ``file`` URL as described in the module
    docstring.
    """
    if not isinstance(text, str):
        raise _mirror_format_error(setting, text, f"a {type(text).__name__}, not a string")
    splitter = re.compile(re.escape(os.pathsep) + r"(?=[A-Za-z][A-Za-z0-9+.-]*://)")
    urls = []
    for token in text.split():
        for piece in splitter.split(token):
            piece = piece.strip(os.pathsep)
            if not piece:
                continue
            problem = _mirror_problem(piece)
            if problem:
                raise _mirror_format_error(setting, piece, problem)
            urls.append(piece)
    return urls


def _mirror_bases(mirrors) -> list[str] | None:
    """The checked base URLs that replace the registry's mirrors, or None to use the registry's."""
    if mirrors is None:
        text = os.environ.get(ENV_MIRRORS, "")
        if not text.strip():
            return None
        bases = parse_mirror_list(text, ENV_MIRRORS)
        if not bases:
            raise _mirror_format_error(ENV_MIRRORS, text, "it holds no URL (unset it to use the registry's "
                                                          "mirrors)")
        return bases
    if isinstance(mirrors, str):
        return parse_mirror_list(mirrors, "mirrors")
    try:
        bases = list(mirrors)
    except TypeError:
        raise _mirror_format_error("mirrors", mirrors, "not a string or a sequence of strings", False) from None
    for base in bases:
        if not isinstance(base, str):
            raise _mirror_format_error("mirrors", base, f"a {type(base).__name__}, not a string", False)
        problem = _mirror_problem(base)
        if problem:
            raise _mirror_format_error("mirrors", base, problem, False)
    return bases


def _urls(info: DatasetInfo, file: DatasetFile, bases: list[str] | None) -> list[str]:
    if bases is None:
        return [f"{mirror.rstrip('/')}/{file.filename}" for mirror in info.mirrors]
    return [f"{base.rstrip('/')}/{info.name}/{file.filename}" for base in bases]


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

    Raises
    ------
    DataSettingError
        If ``mirrors`` or ``FEDSIM_MIRRORS`` holds something that is not a base URL.
    """
    info = _dataset(name)
    return _urls(info, _dataset_file(info, file_key), _mirror_bases(mirrors))


# ---------------------------------------------------------------------------------------------------------
# Finding one file


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
    """Verify the copy at ``path``, at most once per ``verified`` memo (one public call).

    At most :func:`download_size_limit` + 1 bytes are read: a larger file is rejected without reading it all.
    """
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


def _find_local(info: DatasetInfo, file: DatasetFile, folders: list[tuple[Path, str]],
                verified: dict[str, Verification], outcome: _Outcome) -> bool:
    for folder, _source in folders:
        for path in _candidates(folder, info.name, file):
            if not _is_file(path):
                continue
            verification = _verify_path(path, file, verified)
            if verification.ok:
                outcome.path, outcome.verification = path, verification
                return True
            if all(_identity(path) != _identity(seen) for seen, _ in outcome.rejected):
                outcome.rejected.append((path, verification.reason))
    return False


# ---------------------------------------------------------------------------------------------------------
# Downloading one file


class _DownloadFailed(Exception):
    """This mirror did not deliver a good copy; the next one may."""


class _CacheError(Exception):
    """The cache folder cannot take the file: no other mirror can help."""


class _Deadline:
    """Ends one download attempt's connections when its time is up.

    Each connection opened for the attempt registers its socket (:meth:`watch`); :meth:`expire` shuts them
    all down, which makes a read blocked on any of them return at once. (A server that sends a byte now and
    then never trips the per-read timeout.)
    """

    def __init__(self):
        self.received = 0            # bytes of the body received so far (written by the worker thread)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._expired = False

    def watch(self, sock) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self._expired
        if expired:
            _shut_down(sock)

    def expire(self) -> None:
        with self._lock:
            self._expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut_down(sock)


def _shut_down(sock) -> None:
    # The plain socket's shutdown, also for an SSL socket: it ends the connection under the TLS layer.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, TypeError, ValueError):   # closed already, or not a socket
        pass


class _WatchedConnection:
    """Mixin for :mod:`http.client` connections: registers each connected socket with a :class:`_Deadline`."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._fedsim_deadline = deadline

    def connect(self):
        super().connect()
        self._fedsim_deadline.watch(self.sock)


class _WatchedHTTPConnection(_WatchedConnection, http.client.HTTPConnection):
    pass


_WATCHED_CONNECTIONS: dict[type, type] = {http.client.HTTPConnection: _WatchedHTTPConnection}
_HANDLER_BASES: list[type] = [urllib.request.HTTPHandler]
if hasattr(http.client, "HTTPSConnection"):      # Python built without ssl has neither
    class _WatchedHTTPSConnection(_WatchedConnection, http.client.HTTPSConnection):
        pass

    _WATCHED_CONNECTIONS[http.client.HTTPSConnection] = _WatchedHTTPSConnection
    _HANDLER_BASES.append(urllib.request.HTTPSHandler)


class _WatchedHandler:
    """Mixin for urllib's HTTP(S) handlers: opens its connections with :class:`_WatchedConnection`."""

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._fedsim_deadline = deadline

    def do_open(self, http_class, req, **http_conn_args):
        watched = _WATCHED_CONNECTIONS.get(http_class, None)
        if watched is not None:
            http_class = functools.partial(watched, deadline=self._fedsim_deadline)
        return super().do_open(http_class, req, **http_conn_args)


_WATCHED_HANDLERS = [type(f"_Watched{base.__name__}", (_WatchedHandler, base), {}) for base in _HANDLER_BASES]


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _transfer(url: str, file: DatasetFile, timeout: float, deadline: _Deadline, show_progress: bool) -> bytes:
    """The body at ``url``, at most :func:`download_size_limit` bytes (network only, nothing written).

    Raises _DownloadFailed, OSError or http.client.HTTPException.
    """
    limit = download_size_limit(file)
    opener = urllib.request.build_opener(*(handler(deadline) for handler in _WATCHED_HANDLERS))
    request = urllib.request.Request(url, headers={"User-Agent": f"fedsim/{__version__} (Python urllib)"})
    with opener.open(request, timeout=timeout) as response:
        announced = response.headers.get("Content-Length")
        announced = int(announced) if announced and announced.isdigit() else None
        if announced is not None and announced > limit:
            raise _DownloadFailed(f"server announces {announced} bytes; no copy of {file.filename} "
                                  f"is larger than {limit}")
        chunks, received = [], 0
        with tqdm(total=announced, desc=file.filename, unit="B", unit_scale=True, unit_divisor=1024,
                  disable=not show_progress, leave=False) as bar:
            # never ask for more than one byte past the cap, so it is noticed as soon as it is passed
            while chunk := response.read(min(_CHUNK_BYTES, limit + 1 - received)):
                received += len(chunk)
                deadline.received = received
                if received > limit:
                    raise _DownloadFailed(f"more than {limit} bytes received; no copy of {file.filename} "
                                          f"is that large")
                chunks.append(chunk)
                bar.update(len(chunk))
        if announced is not None and received != announced:
            raise _DownloadFailed(f"connection closed after {received} of {announced} bytes")
    return b"".join(chunks)


def _receive(url: str, file: DatasetFile, timeout: float, deadline_seconds: float, show_progress: bool) -> bytes:
    """:func:`_transfer` within ``deadline_seconds`` overall, or _DownloadFailed.

    The transfer runs in a worker thread. At the deadline its connections are shut down (which ends any
    blocked read) and the attempt is given up even if the worker has not ended yet (it may be stuck where no
    socket is watched, e.g. resolving the host name); it then ends on its own and writes nothing.
    """
    deadline = _Deadline()
    result: dict[str, object] = {}

    def work():
        try:
            result["data"] = _transfer(url, file, timeout, deadline, show_progress)
        except BaseException as error:   # noqa: BLE001 - handed over to the caller's thread
            result["error"] = error

    worker = threading.Thread(target=work, name=f"fedsim-download-{file.filename}", daemon=True)
    worker.start()
    expired = False
    try:
        worker.join(deadline_seconds)
    finally:
        if worker.is_alive():
            expired = True
            deadline.expire()
            worker.join(_DEADLINE_GRACE_SECONDS)
    if expired:   # whatever the worker got after its connection was shut down is not the file
        raise _DownloadFailed(f"gave up at the download's deadline of {deadline_seconds:g} s "
                              f"({deadline.received} bytes received)")
    if "error" in result:
        raise result["error"]
    return result["data"]


def _open_temp(folder: Path, filename: str):
    """A new file ``.<filename>.<random>.part`` in ``folder``, opened for writing (mode 0644 minus umask)."""
    while True:
        path = folder / f".{filename}.{os.getpid()}-{secrets.token_hex(4)}.part"
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
        except FileExistsError:
            continue
        return path, os.fdopen(descriptor, "wb")


def _store(data: bytes, folder: Path, final: Path) -> None:
    """Write ``data`` to a temporary file in ``folder``, fsync it and move it to ``final``; _CacheError if
    the folder cannot take it (the temporary file is always removed)."""
    temp_path = None
    try:
        temp_path, handle = _open_temp(folder, final.name)
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, final)
        temp_path = None
    except OSError as error:
        where = getattr(error, "filename2", None) or error.filename or folder
        raise _CacheError(f"cannot save the download in the cache folder {folder}: "
                          f"{error.strerror or error} ({where}); free space there, fix its permissions, "
                          f"or set {ENV_CACHE} to another folder") from None
    finally:
        if temp_path is not None:
            try:
                temp_path.unlink(missing_ok=True)
            except OSError:
                pass


def _describe_error(error: BaseException, timeout: float) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        if isinstance(reason, TimeoutError):
            return f"timed out after {timeout:g} s while connecting"
        return f"cannot connect: {getattr(reason, 'strerror', None) or reason}"
    if isinstance(error, TimeoutError):
        return f"timed out after {timeout:g} s waiting for data"
    if isinstance(error, http.client.HTTPException):
        return f"broken HTTP response: {type(error).__name__} {error}".rstrip()
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {error.strerror or error}"
    return str(error)


def _obtain(info: DatasetInfo, file: DatasetFile, *, folders, verified, download: bool, bases,
            progress, timeout: float, deadline: float | None) -> _Outcome:
    """Find a verified copy of ``file``; failing that, download one (if allowed)."""
    outcome = _Outcome(file)
    if _find_local(info, file, folders, verified, outcome):
        return outcome
    if not download:
        outcome.download_note = "no download tried (download=False)"
        return outcome
    urls = _urls(info, file, bases)
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
    seconds = download_deadline(file) if deadline is None else deadline
    for url in urls:
        try:
            data = _receive(url, file, timeout, seconds, show_progress)
            verification = file.verify(data)
            if not verification.ok:
                raise _DownloadFailed(f"downloaded file failed verification: {verification.reason}")
            final = folder / (file.filename if is_gzip(data) else file.uncompressed_filename)
            _store(data, folder, final)
        except _CacheError as error:
            outcome.attempts.append((url, "downloaded and verified, but not saved"))
            outcome.download_note = f"downloads stopped: {error}"
            return outcome
        except (_DownloadFailed, OSError, http.client.HTTPException, ValueError) as error:
            outcome.attempts.append((url, _describe_error(error, timeout)))
            continue
        outcome.path, outcome.verification = final, verification
        return outcome
    return outcome


def _not_found(info: DatasetInfo, failures: list[_Outcome], folders: list[tuple[Path, str]]):
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
        Folder searched first; it must exist.

    Raises
    ------
    DataSettingError
        For an unknown name or file key, or a ``data_dir`` that is not an existing folder.
    """
    info = _dataset(name)
    file = _dataset_file(info, file_key)
    outcome = _Outcome(file)
    _find_local(info, file, search_path(data_dir), {}, outcome)
    return outcome.path


def fetch(name: str, file_key: str, *, data_dir=None, download: bool = True, mirrors=None,
          progress: bool | None = None, timeout: float = 30, deadline: float | None = None) -> Path:
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
        Seconds to wait for a server on each connect and each read; in (0, 3600].
    deadline : float, optional
        Seconds one download attempt (one mirror) may take in all; in (0, 86400]. Default:
        :func:`download_deadline` of the file.

    Raises
    ------
    DataSettingError
        For a setting that is not allowed (see the module docstring); checked before anything is searched.
    DatasetNotFoundError
        Listing the folders searched, copies that failed verification, and mirrors tried with their errors.
    """
    info = _dataset(name)
    file = _dataset_file(info, file_key)
    timeout = _check_timeout(timeout)
    deadline = _check_deadline(deadline)
    folders = search_path(data_dir)
    bases = _mirror_bases(mirrors) if download else None
    outcome = _obtain(info, file, folders=folders, verified={}, download=download, bases=bases,
                      progress=progress, timeout=timeout, deadline=deadline)
    if outcome.path is None:
        raise _not_found(info, [outcome], folders)
    return outcome.path


def load_split(name: str, split: str, *, data_dir=None, download: bool = True, progress: bool | None = None,
               mirrors=None, timeout: float = 30, deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split of a registered dataset, located or downloaded and verified.

    Parameters
    ----------
    name : str
        Registry name (``"mnist"`` or ``"fashion-mnist"``).
    split : str
        ``"train"`` or ``"test"``.
    data_dir, download, progress, mirrors, timeout, deadline
        As in :func:`fetch`.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape (N, 28, 28).
    labels : numpy.ndarray
        int64, shape (N,), in ``[0, n_classes)``.

    Raises
    ------
    DataSettingError
        For a setting that is not allowed.
    DatasetNotFoundError
        One error covering every file of the split that could not be had.
    """
    info = _dataset(name)
    if split not in SPLIT_FILES:
        raise DataSettingError(f"split must be one of {', '.join(SPLIT_FILES)}; got {split!r}")
    timeout = _check_timeout(timeout)
    deadline = _check_deadline(deadline)
    folders = search_path(data_dir)
    bases = _mirror_bases(mirrors) if download else None
    verified: dict[str, Verification] = {}
    outcomes = [_obtain(info, info.file(key), folders=folders, verified=verified, download=download,
                        bases=bases, progress=progress, timeout=timeout, deadline=deadline)
                for key in SPLIT_FILES[split]]
    failures = [outcome for outcome in outcomes if outcome.path is None]
    if failures:
        raise _not_found(info, failures, folders)
    images, labels = outcomes
    # The verified payloads are the decompressed IDX files: parse them without reading the files again.
    return read_images_and_labels(images.verification.payload, labels.verification.payload,
                                  n_classes=info.n_classes, images_name=str(images.path),
                                  labels_name=str(labels.path),
                                  images_max_bytes=images.file.decompressed_size,
                                  labels_max_bytes=labels.file.decompressed_size)


def dataset_status(name: str, data_dir=None) -> list[dict]:
    """What is on disk for each file of a dataset (for ``fedsim data info``); never downloads.

    Returns
    -------
    list of dict
        One per file key, in :data:`~fedsim.data.registry.FILE_KEYS` order, with ``key``, ``filename``,
        ``path`` (the verified copy; else the first copy found that failed verification; else None),
        ``verified`` (bool), ``method`` (``"md5"``, ``"sha256"`` or None) and ``reason`` (how it verified,
        why it failed, or ``"not found"``).

    Raises
    ------
    DataSettingError
        For an unknown name, or a ``data_dir`` that is not an existing folder.
    """
    info = _dataset(name)
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


__all__ = ["DATASETS", "DataSettingError", "DatasetNotFoundError", "cache_dir", "dataset_status",
           "download_deadline", "download_size_limit", "fetch", "folder_problem", "load_split", "locate",
           "mirror_urls", "parse_mirror_list", "repo_data_dir", "search_path", "user_cache_dir"]
