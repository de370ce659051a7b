"""A verified copy of a registry file: found on disk, else downloaded with pooch; and loading one split.

:func:`fetch` first searches (:mod:`fedsim.data.search`), then tries the mirrors in order, each with
:func:`pooch.retrieve` into ``<cache_dir()>/<name>/<filename>``. pooch does what it does for every project:
the temporary file beside the target, the hash check where one hash decides (:func:`_pooch_hash`), the move
into place, the removal of the temporary file on any error. fedsim's downloader does the rest: the transfer
within the limits of :mod:`fedsim.data.download` (``timeout``, default 30 s; the ``deadline``, default
:func:`download_deadline`; the size cap, :func:`~fedsim.data.search.download_size_limit`; past any, the next
mirror is tried), and :meth:`~fedsim.data.registry.DatasetFile.verify` before a byte reaches pooch's file,
so a partial or corrupt download never sits at the final path. A problem with the cache folder itself
(cannot be created, not writable, a folder in the way, disk full) stops the downloads of that file at once,
as no other mirror can help.

The mirrors are the registry's (a file at ``<mirror>/<filename>``), unless ``FEDSIM_MIRRORS`` (or the
``mirrors`` argument, a string or a sequence) holds base URLs (:func:`parse_mirror_list`; unset or blank
means the registry's), which then replace them for every dataset: ``http://host[:port][/path]``,
``https://...`` or ``file:///absolute/folder``, with no query (``?``) or fragment (``#``). A file is fetched
from ``<base>/<name>/<filename>``, so an HTTP server (or a ``file://`` URL) over a folder laid out like the
cache works as a mirror.

Settings that are not allowed (a timeout or deadline out of range, malformed mirrors, a bad ``data_dir``, an
unknown dataset, file key or split) raise a one-line :class:`DataSettingError` before anything is searched;
the mirrors whenever downloading is allowed, even if the files are on disk, so a typo shows before it matters.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import urllib.parse
from pathlib import Path

import numpy as np

from fedsim.constraints import Optional, Real
from fedsim.data.idx import read_images_and_labels
from fedsim.data.registry import (SPLIT_FILES, DatasetFile, DatasetInfo, DataSettingError,
                                  Verification, get_dataset, is_gzip)
from fedsim.data.search import (ENV_CACHE, Outcome, cache_dir, download_size_limit, find_local, not_found_error,
                                search_path, verify_path)

#: The per-read ``timeout`` lies in (0, MAX_TIMEOUT_SECONDS], an explicit ``deadline`` in (0, MAX_DEADLINE_SECONDS].
MAX_TIMEOUT_SECONDS = 3600
MAX_DEADLINE_SECONDS = 86400
#: The constants of the automatic deadline (:func:`download_deadline`).
DEADLINE_BASE_SECONDS = 60.0
DEADLINE_MIN_BYTES_PER_SECOND = 64 * 1024

ENV_MIRRORS = "FEDSIM_MIRRORS"
#: URL schemes a mirror may use.
MIRROR_SCHEMES: tuple[str, ...] = ("http", "https", "file")

_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_MIRROR_EXAMPLES = "http://host:port/path, https://host/path or file:///folder"


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
    """Split a list of base URLs separated by whitespace or ``os.pathsep``, and check each (DataSettingError
    naming ``setting``). A separator counts only where the next URL begins (``<scheme>://``), so the ``:`` of
    ``http://127.0.0.1:8000`` is kept; empty entries are skipped."""
    splitter = re.compile(re.escape(os.pathsep) + f"(?={_URL_START.pattern})")
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


def mirror_bases(mirrors) -> list[str] | None:
    """The checked base URLs that replace the registry's mirrors, or None to use the registry's."""
    if mirrors is None:
        text = os.environ.get(ENV_MIRRORS, "")
        if not text.strip():
            return None
        bases = parse_mirror_list(text, ENV_MIRRORS)
        if not bases:
            raise _mirror_format_error(ENV_MIRRORS, text, "it holds no URL (unset it to use the registry's mirrors)")
        return bases
    if isinstance(mirrors, str):
        return parse_mirror_list(mirrors, "mirrors")
    try:
        bases = list(mirrors)
    except TypeError:
        raise _mirror_format_error("mirrors", mirrors, "not a string or a sequence of strings", False) from None
    for base in bases:
        problem = _mirror_problem(base) if isinstance(base, str) else f"a {type(base).__name__}, not a string"
        if problem:
            raise _mirror_format_error("mirrors", base, problem, False)
    return bases


def download_urls(info: DatasetInfo, file: DatasetFile, bases: list[str] | None) -> list[str]:
    """The URLs of ``file`` on each base of :func:`mirror_bases`, or on the registry's mirrors (``None``)."""
    if bases is None:
        return [f"{mirror.rstrip('/')}/{file.filename}" for mirror in info.mirrors]
    return [f"{base.rstrip('/')}/{info.name}/{file.filename}" for base in bases]


def _checked_limits(timeout, deadline) -> tuple[float, float | None]:
    """``timeout`` and ``deadline`` in seconds as floats (``deadline`` may be None), or DataSettingError."""
    automatic = (f"automatic: {DEADLINE_BASE_SECONDS:g} s plus the file's size at "
                 f"{DEADLINE_MIN_BYTES_PER_SECOND // 1024} KiB/s")
    deadline_range = Optional(Real(0, MAX_DEADLINE_SECONDS, low_open=True), automatic)
    try:
        return (Real(0, MAX_TIMEOUT_SECONDS, low_open=True).check("timeout (--timeout, seconds)", timeout),
                deadline_range.check("deadline (seconds)", deadline))
    except (TypeError, ValueError) as error:
        raise DataSettingError(str(error)) from None


def download_deadline(file: DatasetFile) -> float:
    """The automatic deadline in seconds of one attempt: ``DEADLINE_BASE_SECONDS + decompressed_size /
    DEADLINE_MIN_BYTES_PER_SECOND``, 60 s of setup plus the uncompressed file (the most a mirror can have to
    send) at 64 KiB/s, which any working connection exceeds; about 13 min for the train images."""
    return DEADLINE_BASE_SECONDS + file.decompressed_size / DEADLINE_MIN_BYTES_PER_SECOND


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _pooch_hash(file: DatasetFile) -> str | None:
    """The ``known_hash`` pooch checks: the gzip MD5 where it alone decides (MNIST's train images).

    None where fedsim accepts any of several MD5s or the SHA-256 of the decompressed IDX: pooch checks one hash
    of the file as sent, so those copies are checked by :meth:`DatasetFile.verify` alone, in the downloader.
    """
    return f"md5:{file.gzip_md5[0]}" if len(file.gzip_md5) == 1 and file.sha256 is None else None


def _retrieve(url: str, file: DatasetFile, folder: Path, **limits) -> tuple[Path, Verification]:
    """One mirror: ``pooch.retrieve`` with fedsim's downloader (the module docstring); where the copy was
    saved and how it verified. The move is not fsynced: a copy damaged by a crash fails verification when
    next searched, and is downloaded again."""
    import pooch   # imports requests (~0.1 s) only when a download happens
    from fedsim.data.download import DownloadFailed, receive
    received = {}

    def download_verified(url: str, output_file: str, pooch_instance) -> None:
        data = receive(url, file.filename, **limits)
        verification = file.verify(data)
        if not verification.ok:
            raise DownloadFailed(f"downloaded file failed verification: {verification.reason}")
        os.unlink(output_file)   # pooch's temporary file is private (0o600); a new one follows the umask
        with open(output_file, "xb") as handle:
            handle.write(data)
        received.update(verification=verification, gzip=is_gzip(data))

    pooch.retrieve(url, _pooch_hash(file), fname=file.filename, path=folder, downloader=download_verified,
                   progressbar=False)
    saved = folder / file.filename
    if not received:   # pooch found a copy that another process saved meanwhile: checked as any copy on disk
        found = verify_path(saved, file, {})
        if not found.ok:
            raise DownloadFailed(f"not downloaded: a copy saved meanwhile is in the way and failed "
                                 f"verification: {found.reason}")
        return saved, found
    if not received["gzip"]:   # the raw IDX (a server sent it unzipped) takes fedsim's name for it
        try:
            saved = saved.replace(folder / file.uncompressed_filename)
        except OSError:
            saved.unlink(missing_ok=True)
            raise
    return saved, received["verification"]


def _download(info: DatasetInfo, outcome: Outcome, *, urls: list[str], progress, timeout: float,
              deadline: float | None) -> None:
    """Try ``urls`` in order until one delivers a copy of ``outcome.file`` that verifies; it is saved into the
    cache folder."""
    import pooch
    from fedsim.data.download import DownloadFailed
    file = outcome.file
    folder = cache_dir() / info.name
    target = folder / file.filename
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(errno.EACCES, "not writable", str(folder))
        # a copy here failed verification when searched: pooch would keep it (and move a download into a folder)
        target.unlink(missing_ok=True)
    except OSError as error:   # a file where a folder belongs, no permission, a folder in the way
        outcome.download_note = (f"no download tried: the cache folder {folder} cannot take the file: "
                                 f"{error.strerror or error} ({error.filename or folder}); fix that, or set "
                                 f"{ENV_CACHE} to another, writable folder")
        return
    limits = {"limit": download_size_limit(file), "timeout": timeout,
              "seconds": download_deadline(file) if deadline is None else deadline,
              "progress": _stderr_is_terminal() if progress is None else bool(progress)}
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel("WARNING")   # pooch reports each download on stderr; fedsim's callers report their own way
    try:
        for url in urls:
            try:
                outcome.path, outcome.verification = _retrieve(url, file, folder, **limits)
            except (DownloadFailed, ValueError) as error:   # ValueError: pooch's hash check
                outcome.attempts.append((url, str(error)))
                continue
            except OSError as error:   # the cache folder cannot take the file: no other mirror can help
                where = getattr(error, "filename2", None) or error.filename or folder
                outcome.attempts.append((url, "not saved: the cache folder cannot take the file"))
                outcome.download_note = (f"downloads stopped: cannot save the download in the cache folder "
                                         f"{folder}: {error.strerror or error} ({where}); free space there, fix "
                                         f"its permissions, or set {ENV_CACHE} to another folder")
            return
    finally:
        logger.setLevel(level)


def _obtain(info: DatasetInfo, keys, *, data_dir, download: bool, mirrors, progress, timeout,
            deadline) -> list[Outcome]:
    """Each file of ``keys``, found or downloaded; DatasetNotFoundError for those that cannot be had."""
    timeout, deadline = _checked_limits(timeout, deadline)
    folders = search_path(data_dir)
    bases = mirror_bases(mirrors) if download else None
    verified: dict[str, Verification] = {}
    outcomes = [Outcome(info.file(key)) for key in keys]
    for outcome in outcomes:
        if find_local(info, folders, verified, outcome):
            continue
        urls = download_urls(info, outcome.file, bases)
        if not download:
            outcome.download_note = "no download tried (download=False)"
        elif not urls:
            outcome.download_note = "no download tried (the mirror list is empty)"
        else:
            _download(info, outcome, urls=urls, progress=progress, timeout=timeout, deadline=deadline)
    failures = [outcome for outcome in outcomes if outcome.path is None]
    if failures:
        raise not_found_error(info, failures, folders)
    return outcomes


def fetch(name: str, file_key: str, *, data_dir=None, download: bool = True, mirrors=None,
          progress: bool | None = None, timeout: float = 30, deadline: float | None = None) -> Path:
    """A verified copy of a dataset file, found locally or downloaded (the module docstring); ``progress``
    shows a bar (default: when stderr is a terminal). DatasetNotFoundError lists the folders searched, the
    copies that failed verification, and the mirrors tried with their errors."""
    info = get_dataset(name)
    [outcome] = _obtain(info, [info.file(file_key).key], data_dir=data_dir, download=download, mirrors=mirrors,
                        progress=progress, timeout=timeout, deadline=deadline)
    return outcome.path


def load_split(name: str, split: str, *, data_dir=None, download: bool = True, progress: bool | None = None,
               mirrors=None, timeout: float = 30, deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and int64 labels (N,) of split ``"train"`` or ``"test"`` of a registered
    dataset, located or downloaded and verified; the settings and errors as in :func:`fetch` (one error
    covering every file of the split that could not be had)."""
    info = get_dataset(name)
    if split not in SPLIT_FILES:
        raise DataSettingError(f"split must be one of {', '.join(SPLIT_FILES)}; got {split!r}")
    images, labels = _obtain(info, SPLIT_FILES[split], data_dir=data_dir, download=download, mirrors=mirrors,
                             progress=progress, timeout=timeout, deadline=deadline)
    # The verified payloads are the decompressed IDX files: parse them without reading the files again.
    return read_images_and_labels(images.verification.payload, labels.verification.payload,
                                  n_classes=info.n_classes, images_name=str(images.path),
                                  labels_name=str(labels.path),
                                  images_max_bytes=images.file.decompressed_size,
                                  labels_max_bytes=labels.file.decompressed_size)


__all__ = ["ENV_MIRRORS", "MIRROR_SCHEMES", "download_deadline", "download_urls", "fetch", "load_split", "mirror_bases",
           "parse_mirror_list"]
