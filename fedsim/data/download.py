"""One download attempt: the bytes at one URL, received into memory within a size cap and an overall deadline.

:func:`receive` is the transfer of fedsim's pooch downloader (:func:`fedsim.data.fetch._retrieve`), which writes
the bytes into pooch's temporary file once they verify. pooch's own ``HTTPDownloader`` cannot keep an overall
deadline: it calls ``requests.get``, whose sockets no one else can reach, so a server that trickles a byte a
second holds it for good. HTTP(S) goes through :mod:`requests` (connections, redirects, proxies, TLS); a
``file://`` URL (which pooch does not download) is read from disk. The bytes are kept as sent (a
``Content-Encoding`` is not undone: the registry's checksums are of the files). :func:`receive` bounds an
attempt three ways, and reports each failure as :class:`DownloadFailed` with a short description:

* ``timeout``: seconds the server may stay silent, on connecting and on each read (requests' timeout);
* ``limit``: the most bytes a good copy can have. A server that announces more is refused at once; one that
  sends more, or never stops, is cut off;
* ``seconds``: the whole attempt, connecting, headers and body included. A server that trickles a byte now and
  then never trips the per-read timeout, so every connection of the attempt registers its socket with a
  :class:`_Deadline`, which shuts them all down when the time is up; that ends any read blocked on them.
"""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.parse
import urllib.request

import requests
import urllib3
from requests.adapters import HTTPAdapter
from tqdm import tqdm

from fedsim import __version__

_CHUNK_BYTES = 1 << 16
# After its deadline, a download's worker thread gets this long to notice its connection was shut down.
_DEADLINE_GRACE_SECONDS = 2.0


class DownloadFailed(Exception):
    """This URL did not deliver the file; the message says why in a few words."""


class _Deadline:
    """The sockets of one attempt, shut down when it :meth:`expire`\\ s; and the bytes received so far."""

    def __init__(self):
        self.received = 0
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def watch(self, sock) -> None:
        with self._lock:
            self._sockets.append(sock)
            if not self.expired:
                return
        _shut_down(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired, sockets = True, list(self._sockets)
        for sock in sockets:
            _shut_down(sock)


def _shut_down(sock) -> None:
    # The plain socket's shutdown, also for an SSL socket: it ends the connection under the TLS layer.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, TypeError, ValueError):   # closed already, or not a socket
        pass


def _session(deadline: _Deadline) -> requests.Session:
    """A requests session whose every connection (redirects included) registers its socket with ``deadline``."""

    def watched(pool_class):
        class Connection(pool_class.ConnectionCls):
            def connect(self):
                super().connect()
                deadline.watch(self.sock)
        return type(pool_class.__name__, (pool_class,), {"ConnectionCls": Connection})

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            manager = self.poolmanager
            manager.pool_classes_by_scheme = {scheme: watched(pool_class)
                                              for scheme, pool_class in manager.pool_classes_by_scheme.items()}

    session = requests.Session()
    for prefix in ("http://", "https://"):
        session.mount(prefix, Adapter())
    return session


def _too_large(limit: int, name: str) -> DownloadFailed:
    return DownloadFailed(f"more than {limit} bytes received; no copy of {name} is that large")


def _transfer(url: str, name: str, limit: int, timeout: float, deadline: _Deadline, progress: bool) -> bytes:
    """The bytes at ``url``, at most ``limit`` of them; requests' and urllib3's errors go through."""
    if url.lower().startswith("file:"):
        with open(urllib.request.url2pathname(urllib.parse.urlsplit(url).path), "rb") as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise _too_large(limit, name)
        return data
    headers = {"User-Agent": f"fedsim/{__version__} (requests {requests.__version__})"}
    with _session(deadline) as session, \
            session.get(url, headers=headers, timeout=timeout, stream=True) as response:
        response.raise_for_status()
        announced = response.headers.get("Content-Length", "")
        announced = int(announced) if announced.isdigit() else None
        if announced is not None and announced > limit:
            raise DownloadFailed(f"server announces {announced} bytes; no copy of {name} is larger than {limit}")
        chunks = []
        with tqdm(total=announced, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                  disable=not progress, leave=False) as bar:
            for chunk in response.raw.stream(_CHUNK_BYTES, decode_content=False):
                deadline.received += len(chunk)
                if deadline.received > limit:
                    raise _too_large(limit, name)
                chunks.append(chunk)
                bar.update(len(chunk))
    return b"".join(chunks)


def _describe(error: BaseException, timeout: float) -> str:
    """A few words on why a transfer failed."""
    if isinstance(error, DownloadFailed):
        return str(error)
    if isinstance(error, requests.HTTPError):
        return f"HTTP {error.response.status_code} {error.response.reason}"
    if isinstance(error, requests.ConnectTimeout):
        return f"timed out after {timeout:g} s while connecting"
    if isinstance(error, (requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError)):
        return f"timed out after {timeout:g} s waiting for data"
    if isinstance(error, requests.ConnectionError) and error.args:
        return f"cannot connect: {getattr(error.args[0], 'reason', error.args[0])}"
    if isinstance(error, (requests.RequestException, urllib3.exceptions.HTTPError)):
        return f"broken HTTP response: {type(error).__name__} {error}".rstrip()
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {error.strerror or error}"
    return f"{type(error).__name__}: {error}"


def receive(url: str, name: str, *, limit: int, timeout: float, seconds: float, progress: bool) -> bytes:
    """The bytes at ``url`` (a file called ``name``) within the limits of the module docstring; DownloadFailed
    for anything that went wrong. The transfer runs in a worker thread; at the deadline the attempt is given
    up even if the worker has not ended (it may be stuck where no socket is watched, e.g. resolving the host
    name): it then ends on its own, and its bytes are dropped."""
    deadline, result = _Deadline(), {}

    def work():
        try:
            result["data"] = _transfer(url, name, limit, timeout, deadline, progress)
        except Exception as error:   # noqa: BLE001 - described in the caller's thread
            result["error"] = error

    worker = threading.Thread(target=work, name=f"fedsim-download-{name}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        deadline.expire()
        worker.join(_DEADLINE_GRACE_SECONDS)
        raise DownloadFailed(f"gave up at the download's deadline of {seconds:g} s "
                             f"({deadline.received} bytes received)")
    error = result.get("error")
    if isinstance(error, (DownloadFailed, OSError, ValueError, http.client.HTTPException,
                          urllib3.exceptions.HTTPError)):   # requests' errors are OSErrors
        raise DownloadFailed(_describe(error, timeout)) from error
    if error is not None:
        raise error
    return result["data"]


__all__ = ["DownloadFailed", "receive"]
