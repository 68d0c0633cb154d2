"""A failed download leaves the file system exactly as it was (issue 11).

Every failure (HTTP error, refused or cut connection, checksum mismatch, damaged archive, a
failed write, Ctrl-C during the transfer or the unpacking) must raise and leave no partial file,
no half-unpacked folder and no folder the call created, while anything that was there before
(the data root, the user's own files) survives untouched. Each test compares a listing of every
path (and the bytes of every file) before and after. Downloads come from a server the tests
start on 127.0.0.1; ``_local_only`` (from test_data_loaders) refuses any other host.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import io
import os
import tarfile
import threading
from pathlib import Path
from typing import ClassVar

import pytest

import test_data_loaders
from longtail.data import download as download_mod
from longtail.data.cifar import load_cifar
from longtail.data.download import download_and_extract
from longtail.errors import LongtailError
from test_data_loaders import _closed_port_url, _targz, write_fake_cifar10

# the download tests' fixtures: the local HTTP server and the guard that refuses any other host
_local_only = test_data_loaders._local_only
http_dir = test_data_loaders.http_dir


# ----------------------------------------------------------------------------- helpers
def tree(base: Path) -> dict[str, bytes | None]:
    """Every path under ``base`` (relative), with the bytes of files and None for folders."""
    return {
        str(p.relative_to(base)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(base.rglob("*"))
    }


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def home(tmp_path):
    """The area data roots live in, apart from the served folder, with a user's file in it."""
    h = tmp_path / "home"
    h.mkdir()
    (h / "notes.txt").write_text("mine")
    return h


@pytest.fixture
def user_root(home):
    """A data root that exists before the download, holding the user's own file and folder."""
    root = home / "data"
    (root / "other-dataset").mkdir(parents=True)
    (root / "other-dataset" / "labels.csv").write_text("a,b\n1,2\n")
    (root / "README.txt").write_text("my own data root, keep it")
    return root


@pytest.fixture
def cifar_archive(tmp_path, http_dir):
    """(base URL, md5) of a small valid cifar-10-python.tar.gz on the local server."""
    served, base = http_dir
    write_fake_cifar10(tmp_path / "src")
    md5 = _targz(tmp_path / "src", "cifar-10-batches-py", served / "cifar-10-python.tar.gz")
    return base, md5


def _serve(handler):
    """Serve ``handler`` on 127.0.0.1 in a thread; yields the base URL, then shuts the server down."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def status_server():
    """Base URL of a server that answers /<code>/<name> with that HTTP status code."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = int(self.path.strip("/").split("/")[0])
            body = b"server says no"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    yield from _serve(Handler)


@pytest.fixture
def cut_server():
    """Base URL of a server that promises 100000 bytes and closes the connection after 1000."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    yield from _serve(Handler)


def _assert_fails_cleanly(home: Path, call, match: str | None, exc=LongtailError):
    before = tree(home)
    with pytest.raises(exc, match=match) as e:
        call()
    assert tree(home) == before
    if exc is LongtailError:
        assert e.value.fix, "a LongtailError must say how to fix it"
    return e.value


# ----------------------------------------------------------------------------- server and network errors
@pytest.mark.parametrize("code", [404, 500])
def test_http_error_leaves_no_folder(home, status_server, code):
    root = home / "a" / "b" / "data"  # three folders the call has to create
    err = _assert_fails_cleanly(
        home, lambda: download_and_extract(f"{status_server}/{code}/x.tar.gz", root, "0" * 32), "could not download"
    )
    assert str(code) in str(err)
    assert not (home / "a").exists()


@pytest.mark.parametrize("code", [404, 500])
def test_http_error_keeps_existing_root_and_user_files(home, user_root, status_server, code):
    _assert_fails_cleanly(
        home, lambda: download_and_extract(f"{status_server}/{code}/x.tar.gz", user_root, "0" * 32),
        "could not download",
    )
    assert (user_root / "README.txt").read_text() == "my own data root, keep it"


def test_load_cifar_with_a_server_error_leaves_no_data_root(home, status_server):
    """The issue's case: a fresh --data-root and a failing server must not leave an empty folder."""
    _assert_fails_cleanly(
        home,
        lambda: load_cifar("cifar10", home / "new-root", url=f"{status_server}/500/c.tar.gz", md5="0" * 32),
        "could not download",
    )
    assert not (home / "new-root").exists()


def test_refused_connection_leaves_no_folder(home):
    _assert_fails_cleanly(
        home, lambda: download_and_extract(_closed_port_url(), home / "x" / "data", "0" * 32), "could not download"
    )


def test_connection_cut_short_leaves_no_partial_file(home, user_root, cut_server):
    for root in (home / "fresh", user_root):
        err = _assert_fails_cleanly(
            home, lambda root=root: download_and_extract(f"{cut_server}/big.tar.gz", root, "0" * 32),
            "could not download",
        )
        assert "1000 of 100000" in str(err)


# ----------------------------------------------------------------------------- checksum and archive errors
def test_checksum_mismatch_leaves_no_folder(home, cifar_archive):
    base, _ = cifar_archive
    _assert_fails_cleanly(
        home,
        lambda: download_and_extract(f"{base}/cifar-10-python.tar.gz", home / "n" / "data", "0" * 32),
        "checksum mismatch",
    )


def test_checksum_mismatch_keeps_existing_root(home, user_root, cifar_archive):
    base, _ = cifar_archive
    _assert_fails_cleanly(
        home, lambda: download_and_extract(f"{base}/cifar-10-python.tar.gz", user_root, "0" * 32), "checksum mismatch"
    )


@pytest.mark.parametrize("damage", ["truncated", "corrupt-header", "not-an-archive"])
@pytest.mark.parametrize("existing", [False, True])
def test_damaged_archive_leaves_nothing(home, user_root, http_dir, tmp_path, damage, existing):
    """The MD5 matches the damaged bytes, so the failure comes from unpacking (for 'truncated':
    after several members have been written to the staging folder)."""
    served, base = http_dir
    write_fake_cifar10(tmp_path / "src")
    good = served / "good.tar.gz"
    _targz(tmp_path / "src", "cifar-10-batches-py", good)
    data = bytearray(good.read_bytes())
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]
    elif damage == "corrupt-header":
        data[:16] = bytes(b ^ 0x5A for b in data[:16])
    else:
        data = bytearray(b"<html><body>502 Bad Gateway</body></html>")
    bad = served / "bad.tar.gz"
    bad.write_bytes(bytes(data))
    root = user_root if existing else home / "n" / "data"
    err = _assert_fails_cleanly(
        home, lambda: download_and_extract(f"{base}/bad.tar.gz", root, _md5(bad)), "could not unpack"
    )
    assert "bad.tar.gz" in str(err)


def test_archive_entry_clashing_with_a_user_file_is_refused(home, user_root, http_dir, tmp_path):
    """An archive must never overwrite what the user has: the whole unpack is refused."""
    served, base = http_dir
    src = tmp_path / "src"
    (src / "new-folder").mkdir(parents=True)
    (src / "new-folder" / "f").write_text("new")
    (src / "README.txt").write_text("archive's readme")
    with tarfile.open(served / "a.tar", "w") as tar:
        tar.add(src / "new-folder", arcname="new-folder")
        tar.add(src / "README.txt", arcname="README.txt")
    _assert_fails_cleanly(
        home, lambda: download_and_extract(f"{base}/a.tar", user_root, _md5(served / "a.tar")), "would overwrite"
    )


def test_plain_file_does_not_overwrite_a_user_file(home, user_root, http_dir):
    served, base = http_dir
    (served / "README.txt").write_text("downloaded")
    _assert_fails_cleanly(
        home,
        lambda: download_and_extract(f"{base}/README.txt", user_root, _md5(served / "README.txt")),
        "would overwrite",
    )


# ----------------------------------------------------------------------------- Ctrl-C
class _InterruptingBar:
    """Stands in for tqdm: Ctrl-C arrives after the second chunk has been written."""

    seen_partial: ClassVar[list[list[str]]] = []

    def __init__(self, *args, root: Path, **kwargs):
        self.root, self.chunks = root, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.chunks += 1
        if self.chunks == 2:
            # the partial download exists now, under a hidden temporary name
            _InterruptingBar.seen_partial.append([p.name for p in self.root.iterdir() if p.name.endswith(".part")])
            raise KeyboardInterrupt


@pytest.mark.parametrize("existing", [False, True])
def test_ctrl_c_during_transfer_leaves_nothing(home, user_root, cifar_archive, monkeypatch, existing):
    base, md5 = cifar_archive
    root = user_root if existing else home / "n" / "data"
    monkeypatch.setattr(download_mod, "_CHUNK", 256)
    monkeypatch.setattr(download_mod, "tqdm", functools.partial(_InterruptingBar, root=root))
    _InterruptingBar.seen_partial.clear()
    _assert_fails_cleanly(
        home, lambda: download_and_extract(f"{base}/cifar-10-python.tar.gz", root, md5), None, exc=KeyboardInterrupt
    )
    assert len(_InterruptingBar.seen_partial) == 1 and len(_InterruptingBar.seen_partial[0]) == 1  # it was mid-transfer


def _two_entry_archive(served: Path, tmp_path: Path) -> tuple[str, str]:
    src = tmp_path / "src2"
    for d in ("first", "second"):
        (src / d).mkdir(parents=True)
        (src / d / "f.bin").write_bytes(os.urandom(100))
    with tarfile.open(served / "two.tar.gz", "w:gz") as tar:
        tar.add(src / "first", arcname="first")
        tar.add(src / "second", arcname="second")
    return "two.tar.gz", _md5(served / "two.tar.gz")


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_move_into_place_is_undone(home, user_root, http_dir, tmp_path, monkeypatch, failure, existing):
    """The first unpacked folder is already in place when moving the second one fails."""
    served, base = http_dir
    name, md5 = _two_entry_archive(served, tmp_path)
    root = user_root if existing else home / "n" / "data"
    real_replace = os.replace
    moved = []

    def flaky_replace(src, dst):
        if moved:
            raise (KeyboardInterrupt if failure is KeyboardInterrupt
                   else OSError(errno.ENOSPC, "No space left on device"))
        real_replace(src, dst)
        moved.append(dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    exc = KeyboardInterrupt if failure is KeyboardInterrupt else LongtailError
    err = _assert_fails_cleanly(home, lambda: download_and_extract(f"{base}/{name}", root, md5), None, exc=exc)
    assert moved == [root / "first"]  # the first entry really had been moved into place
    if exc is LongtailError:
        assert str(root / "second") in str(err) and "disk space" in err.fix


# ----------------------------------------------------------------------------- write errors
class _FullDisk(io.RawIOBase):
    """A file that accepts 300 bytes and then reports a full disk."""

    def __init__(self, real):
        self.real, self.written = real, 0

    def writable(self):
        return True

    def write(self, b):
        if self.written + len(b) > 300:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(b)
        return self.real.write(b)

    def close(self):
        self.real.close()
        super().close()


@pytest.mark.parametrize("existing", [False, True])
def test_disk_full_is_a_longtail_error_naming_the_path(home, user_root, cifar_archive, monkeypatch, existing):
    base, md5 = cifar_archive
    root = user_root if existing else home / "n" / "data"
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullDisk(real_fdopen(fd, *a, **k)))
    monkeypatch.setattr(download_mod, "_CHUNK", 256)
    err = _assert_fails_cleanly(
        home, lambda: download_and_extract(f"{base}/cifar-10-python.tar.gz", root, md5), "No space left"
    )
    assert "could not write" in err.problem and str(root) in err.problem
    assert "disk space" in err.fix and "--data-root" in err.fix


def test_folder_that_cannot_be_created_is_a_longtail_error(home, cifar_archive, monkeypatch):
    """Permission denied on the innermost folder: the outer folders this call made are removed again."""
    base, md5 = cifar_archive
    root = home / "a" / "b" / "data"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == root:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    err = _assert_fails_cleanly(
        home, lambda: download_and_extract(f"{base}/cifar-10-python.tar.gz", root, md5), "Permission denied"
    )
    assert str(root) in err.problem and "writable" in err.fix


def test_data_root_that_is_a_file_is_a_longtail_error(home, cifar_archive):
    base, md5 = cifar_archive
    _assert_fails_cleanly(
        home, lambda: download_and_extract(f"{base}/cifar-10-python.tar.gz", home / "notes.txt", md5), "notes.txt"
    )
    _assert_fails_cleanly(
        home,
        lambda: download_and_extract(f"{base}/cifar-10-python.tar.gz", home / "notes.txt" / "sub", md5),
        "notes.txt",
    )


# ----------------------------------------------------------------------------- success keeps what it made
def test_success_keeps_created_root_and_user_files(home, user_root, cifar_archive):
    base, md5 = cifar_archive
    before = tree(home)
    download_and_extract(f"{base}/cifar-10-python.tar.gz", user_root, md5)
    after = tree(home)
    assert {k: v for k, v in after.items() if k in before} == before  # everything old is unchanged
    new = sorted(set(after) - set(before))
    assert new and all(k.startswith("data/cifar-10-batches-py") for k in new)  # and only the data set was added
    fresh = home / "x" / "y"
    download_and_extract(f"{base}/cifar-10-python.tar.gz", fresh, md5)
    assert sorted(p.name for p in fresh.iterdir()) == ["cifar-10-batches-py"]
