"""The mirrors: FEDSIM_MIRRORS and the mirrors argument, the URLs they give, and malformed values."""

import os

import pytest

from fedsim.data import fetch
from fedsim.data.fetch import download_urls, mirror_bases
from fedsim.data.registry import DataSettingError, get_dataset
from tests.data.conftest import LABELS_GZ, files_under, one_line_error


def mirror_urls(name, file_key, mirrors=None):
    """The URLs fetch tries for one file, in order."""
    info = get_dataset(name)
    return download_urls(info, info.file(file_key), mirror_bases(mirrors))


SEP = os.pathsep
REGISTRY_URLS = [f"{mirror.rstrip('/')}/{LABELS_GZ}" for mirror in get_dataset("mnist").mirrors]


@pytest.mark.parametrize("env, mirrors, urls", [
    (None, None, REGISTRY_URLS),
    ("  \n\t ", None, REGISTRY_URLS),                              # blank: the registry's mirrors
    ("http://127.0.0.1:1/x/ http://127.0.0.1:2", None, ["http://127.0.0.1:1/x/mnist/", "http://127.0.0.1:2/mnist/"]),
    (f"http://127.0.0.1:8000/a{SEP}https://example.org:8443/b/{SEP}  file:///srv/mirror\n", None,
     ["http://127.0.0.1:8000/a/mnist/", "https://example.org:8443/b/mnist/", "file:///srv/mirror/mnist/"]),
    # empty entries between URLs are skipped
    (f"{SEP}http://127.0.0.1:1{SEP}{SEP}https://mirror.example/x/{SEP} file://localhost/srv", None,
     ["http://127.0.0.1:1/mnist/", "https://mirror.example/x/mnist/", "file://localhost/srv/mnist/"]),
    ("http://127.0.0.1:1/", ["http://h/"], ["http://h/mnist/"]),     # the argument wins over FEDSIM_MIRRORS
    (None, "http://h/a http://h/b", ["http://h/a/mnist/", "http://h/b/mnist/"])])
def test_mirror_urls(isolated, monkeypatch, env, mirrors, urls):
    if env is not None:
        monkeypatch.setenv("FEDSIM_MIRRORS", env)
    expected = urls if urls is REGISTRY_URLS else [url + LABELS_GZ for url in urls]
    assert mirror_urls("mnist", "test-labels", mirrors) == expected


@pytest.mark.parametrize("value, problem", [
    (":", "holds no URL"),
    (f"{os.pathsep}{os.pathsep}", "holds no URL"),
    ("127.0.0.1:8000", "does not start with a scheme"),
    ("mirror.example.org/mnist", "does not start with a scheme"),
    ("ftp://127.0.0.1/data", "scheme 'ftp' is not supported (only http, https, file)"),
    ("gopher://127.0.0.1/data", "scheme 'gopher' is not supported"),
    ("http://", "names no host"),
    ("http://:8000/data", "names no host"),
    ("http://[::1/data", "not a valid URL"),
    ("http://127.0.0.1:99999/", "not a valid URL"),
    ("http://127.0.0.1:port/", "not a valid URL"),
    ("http://127.0.0.1:0/", "port 0"),
    ("http://127.0.0.1/data?token=1", "no query"),
    ("http://127.0.0.1/data#part", "no query (?) or fragment (#)"),
    ("file://server/folder", "a file URL names no host"),
    ("file://", "names no folder"),
    ("http://127.0.0.1/ok garbage", "'garbage' is not one"),
    ("http://127.0.0.1/ok http://mirror.example/\u00e9", "non-ASCII"),
])
def test_malformed_env_mirrors_is_a_setting_error(isolated, shared_data, monkeypatch, value, problem):
    monkeypatch.setenv("FEDSIM_MIRRORS", value)
    one_line_error(lambda: fetch.fetch("mnist", "test-labels", progress=False, timeout=1),
                           "FEDSIM_MIRRORS must hold base URLs such as http://host:port/path",
                           f"separated by whitespace or {os.pathsep!r}", problem)
    with pytest.raises(DataSettingError):
        mirror_urls("fashion-mnist", "test-images")
    # reported whether or not a download is needed, so a typo shows up before it matters...
    with pytest.raises(DataSettingError):
        fetch.load_split("mnist", "test", data_dir=shared_data)
    # ...but not where downloading is off, and FEDSIM_MIRRORS is not used
    assert fetch.fetch("mnist", "test-labels", data_dir=shared_data, download=False).name == LABELS_GZ
    assert not files_under(isolated)


@pytest.mark.parametrize("mirrors, problem", [
    (5, "not a string or a sequence"),
    ([b"http://127.0.0.1/"], "a bytes, not a string"),
    (["http://127.0.0.1/", None], "a NoneType, not a string"),
    (["ftp://127.0.0.1/"], "scheme 'ftp'"),
    (["http://127.0.0.1/a b"], "contains a space"),
    (["/just/a/folder"], "must be base URLs such as"),
    ("http://127.0.0.1/ nonsense", "'nonsense' is not one"),
])
def test_malformed_mirrors_argument_is_a_setting_error(isolated, mirrors, problem):
    one_line_error(lambda: fetch.fetch("mnist", "test-labels", mirrors=mirrors, progress=False, timeout=1),
                           "mirrors must", problem)
