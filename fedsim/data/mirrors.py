"""The mirrors a dataset file is downloaded from, in the order they are tried: the registry's, or base URLs
given by the user.

``FEDSIM_MIRRORS`` (or the ``mirrors`` argument of :func:`fedsim.data.fetch.fetch`, a string or a sequence)
holds base URLs that replace the registry's mirrors for every dataset, separated by whitespace or
``os.pathsep`` (a ``:`` inside a URL is kept); empty entries are skipped. Each is
``http://host[:port][/path]``, ``https://...`` or ``file:///absolute/folder``, with no query (``?``) or
fragment (``#``). A file is fetched from ``<base>/<name>/<filename>``, so an HTTP server (or a ``file://``
URL) over a folder laid out like the cache works as a mirror. Unset or blank: the registry's mirrors, where a
file is at ``<mirror>/<filename>``. Anything else raises :class:`~fedsim.data.registry.DataSettingError`
with a one-line message.
"""

from __future__ import annotations

import os
import re
import urllib.parse

from fedsim.data.registry import DatasetFile, DatasetInfo, DataSettingError

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


def mirror_bases(mirrors) -> list[str] | None:
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
        problem = _mirror_problem(base) if isinstance(base, str) else f"a {type(base).__name__}, not a string"
        if problem:
            raise _mirror_format_error("mirrors", base, problem, False)
    return bases


def download_urls(info: DatasetInfo, file: DatasetFile, bases: list[str] | None) -> list[str]:
    """The URLs of ``file`` on each base of :func:`mirror_bases`, or on the registry's mirrors (``None``)."""
    if bases is None:
        return [f"{mirror.rstrip('/')}/{file.filename}" for mirror in info.mirrors]
    return [f"{base.rstrip('/')}/{info.name}/{file.filename}" for base in bases]


__all__ = ["ENV_MIRRORS", "MIRROR_SCHEMES", "download_urls", "mirror_bases", "parse_mirror_list"]
