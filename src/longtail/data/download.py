"""Download a data file, check its MD5 and put it in place (unpacking ``.tar*`` archives).

A failed download leaves the file system as it was: the download goes to a hidden temporary
file in the target folder, an archive is unpacked into a hidden temporary folder, and only
complete, verified results are renamed into place. On any failure (server error, refused
connection, checksum mismatch, corrupt archive, full disk, Ctrl-C) the temporaries, anything
already moved into place and every folder this call created are removed again; folders and
files that existed before the call are never touched.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse
from urllib.request import urlopen

from tqdm import tqdm

from ..errors import LongtailError

#: names that are unpacked after download; any other file is moved into place as it is
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

# what a failing connection raises: every socket-level failure is an OSError (refused/reset
# connections, timeouts, TLS errors, and urllib's URLError/HTTPError for unreachable hosts and
# HTTP status errors); truncated or garbled responses raise HTTPException. Only the calls that
# talk to the server are guarded with these, so a full disk is not reported as a network error.
_NETWORK_ERRORS = (OSError, http.client.HTTPException)

# what a damaged archive raises while it is read (gzip/bz2 format errors are OSErrors without errno)
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)

_CHUNK = 1 << 20


def is_archive(filename: str) -> bool:
    """Whether ``filename`` names a tar archive (possibly compressed) that should be unpacked."""
    return filename.lower().endswith(ARCHIVE_SUFFIXES)


def download_and_extract(
    url: str, root: Path, md5: str, *, filename: str | None = None, timeout: float = 30
) -> Path:
    """Download ``url`` into ``root``, verify the MD5 of the whole file and put it in place.

    A tar archive (see ``ARCHIVE_SUFFIXES``) is unpacked into ``root`` and then deleted; any
    other file (e.g. SVHN's ``.mat``) is stored as ``root / filename``. ``filename``
    defaults to the last part of the URL's path. ``root`` (and its missing parents) is
    created when absent. Returns ``root``.

    Raises ``LongtailError`` when the server cannot be reached or answers with an error, the
    checksum differs, the archive is damaged or holds unsafe member names, a path it would
    write already exists, or the disk cannot be written (full, read-only, no permission).
    Whatever the failure (Ctrl-C included), nothing is left behind: no partial file, no
    half-unpacked folder, and none of the folders this call created.
    """
    root = Path(root)
    filename = filename or PurePosixPath(urlparse(url).path).name or "download"
    if root.exists() and not root.is_dir():
        raise LongtailError(f"the data root {root} is a file, not a folder",
                            "pass --data-root the folder that holds (or should hold) the data set")
    created = _make_dirs(root)
    try:
        _download_into(url, root, md5, filename, timeout)
    except BaseException:
        _remove_dirs(created)
        raise
    return root


def _download_into(url: str, root: Path, md5: str, filename: str, timeout: float) -> None:
    """Download, verify and put in place inside the existing folder ``root``; clean up on failure."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{filename}.", suffix=".part")
    except OSError as e:
        raise _write_error(root / filename, root, e) from e
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out:
                digest = _fetch(url, out, tmp, root, timeout)
        except OSError as e:  # closing (flushing) the file; network errors were converted in _fetch
            raise _write_error(tmp, root, e) from e
        if digest != md5.lower():
            raise LongtailError(
                f"checksum mismatch for {filename} downloaded from {url}: MD5 {digest}, expected {md5}",
                f"the download was corrupt or the file has changed; run again to re-download, or download it "
                f"by hand and place it{' (unpacked)' if is_archive(filename) else ''} under {root}",
            )
        if is_archive(filename):
            _extract_into(tmp, root, filename)
        else:
            dest = root / filename
            _refuse_clashes(root, [filename], filename)
            try:
                os.replace(tmp, dest)  # same folder, so the rename is atomic
            except OSError as e:
                raise _write_error(dest, root, e) from e
    finally:
        _quietly(tmp.unlink, missing_ok=True)


def _fetch(url: str, out, tmp: Path, root: Path, timeout: float) -> str:
    """Stream ``url`` into the open file ``out`` (named ``tmp``) with a progress bar; return the MD5 hex digest."""
    try:
        response = urlopen(url, timeout=timeout)
    except ValueError as e:  # not a URL urllib understands
        raise LongtailError(f"cannot download {url!r}: {e}", "pass a full http:// or https:// URL") from e
    except _NETWORK_ERRORS as e:
        if hasattr(e, "close"):  # an HTTPError holds the open error response
            _quietly(e.close)
        raise _network_error(url, root, e) from e
    h = hashlib.md5(usedforsecurity=False)
    received = 0
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        # disable=None: the bar shows on a terminal and stays silent in logs and tests
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=url.rsplit("/", 1)[-1],
                  disable=None, leave=False) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except _NETWORK_ERRORS as e:
                    raise _network_error(url, root, e) from e
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as e:
                    raise _write_error(tmp, root, e) from e
                h.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise _network_error(url, root, ConnectionError(f"the connection ended after {received} of {total} bytes"))
    return h.hexdigest()


def _network_error(url: str, root: Path, e: BaseException) -> LongtailError:
    return LongtailError(
        f"could not download {url}: {e}",
        f"check the network connection, or download {url} by hand and place it (unpacked, if it is an "
        f"archive) under the data root {root}",
    )


def _write_error(path: Path, root: Path, e: OSError) -> LongtailError:
    """A LongtailError for a failed write to ``path`` (disk full, no permission, read-only, ...)."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        fix = f"free some disk space under {root}, or pass --data-root pointing at a disk with more room"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make {root} writable for this user, or pass --data-root pointing at a folder you can write to"
    elif e.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        fix = (f"move {path} out of the way (or the file that stands where a folder is needed), "
               "or pass another --data-root")
    else:
        fix = f"check that {root} is on a writable disk with free space, or pass --data-root pointing at another folder"
    return LongtailError(f"could not write {path}: {reason}", fix)


def _make_dirs(root: Path) -> list[Path]:
    """Create ``root`` and its missing parents; return the folders created, outermost first."""
    missing = []
    p = root
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                if d.is_dir():  # made by someone else in the meantime: not ours to remove
                    continue
                raise
            created.append(d)
    except BaseException as e:
        _remove_dirs(created)
        if isinstance(e, OSError):
            raise _write_error(d, root, e) from e
        raise
    return created


def _remove_dirs(created: list[Path]) -> None:
    """Remove the folders ``_make_dirs`` created, innermost first, as long as they are empty."""
    for d in reversed(created):
        try:
            d.rmdir()  # fails (and keeps the folder) if anything is in it
        except OSError:
            pass


def _quietly(fn, *args, **kwargs) -> None:
    """Run a clean-up step; a failure there must not hide the error being raised."""
    try:
        fn(*args, **kwargs)
    except OSError:
        pass


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        _quietly(path.unlink, missing_ok=True)


def _refuse_clashes(root: Path, names: list[str], filename: str) -> None:
    clashes = [n for n in names if os.path.lexists(root / n)]
    if clashes:
        raise LongtailError(
            f"{'unpacking' if is_archive(filename) else 'saving'} {filename} would overwrite "
            f"{', '.join(str(root / c) for c in clashes)}",
            "delete or move those paths and run again, or point the data root at the existing data",
        )


def _check_member(member: tarfile.TarInfo, filename: str) -> None:
    """Refuse names that would land outside the target folder (absolute paths, '..')."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts or (
        len(name) > 1 and name[1] == ":"
    ):
        raise LongtailError(
            f"archive {filename} holds an unsafe member name {member.name!r}",
            "the archive is not the expected data set; delete it and download the official archive",
        )
    if not hasattr(tarfile, "data_filter") and not (member.isfile() or member.isdir()):
        # without tarfile's 'data' filter we cannot vet links or devices, so allow only plain entries
        raise LongtailError(
            f"archive {filename} holds a link or special file {member.name!r}",
            "the archive is not the expected data set; delete it and download the official archive",
        )


def _extract_into(archive: Path, root: Path, filename: str) -> None:
    """Unpack ``archive`` into a hidden folder in ``root``, then rename its top-level entries into ``root``.

    If any step fails, the entries already renamed into ``root`` are removed again (none of them
    existed before: clashes are refused up front), so ``root`` is left as it was.
    """
    try:
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{filename}.", suffix=".extract"))
    except OSError as e:
        raise _write_error(root, root, e) from e
    moved: list[Path] = []
    try:
        try:
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for m in members:
                    _check_member(m, filename)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, members=members, filter="data")
                else:
                    tar.extractall(staging, members=members)
        except _ARCHIVE_ERRORS as e:  # FilterError (links leaving root) is a TarError
            if isinstance(e, OSError) and e.errno is not None and not isinstance(e, tarfile.TarError):
                # a real I/O error while writing the files (disk full, permission), not a damaged archive
                raise _write_error(Path(e.filename) if e.filename else staging, root, e) from e
            raise LongtailError(
                f"could not unpack {filename}: {e}",
                f"the archive is damaged; run again to re-download it, or unpack the official archive under "
                f"{root} by hand",
            ) from e
        entries = sorted(staging.iterdir())
        _refuse_clashes(root, [p.name for p in entries], filename)
        for p in entries:
            dest = root / p.name
            try:
                os.replace(p, dest)
            except OSError as e:
                raise _write_error(dest, root, e) from e
            moved.append(dest)
    except BaseException:
        for dest in reversed(moved):  # undo a half-finished move
            _remove_path(dest)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
