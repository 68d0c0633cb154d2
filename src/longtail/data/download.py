"""Download a data file, check its MD5 and put it in place (unpacking ``.tar*`` archives).

Nothing is left half-written: the download goes to a hidden temporary file in the target
folder, an archive is unpacked into a hidden temporary folder, and only complete, verified
results are renamed into place. On any failure the temporaries are removed.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse
from urllib.request import urlopen

from tqdm import tqdm

from ..errors import LongtailError

#: names that are unpacked after download; any other file is moved into place as it is
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

# what a failing connection raises: refused/reset (ConnectionError), timeouts, HTTP status
# errors and unreachable hosts (URLError), truncated or garbled responses (HTTPException)
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)

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
    defaults to the last part of the URL's path. Returns ``root``.

    Raises ``LongtailError`` when the server cannot be reached, the checksum differs (the
    download is deleted) or the archive holds unsafe member names.
    """
    root = Path(root)
    filename = filename or PurePosixPath(urlparse(url).path).name or "download"
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{filename}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(url, out, root, timeout)
        if digest != md5.lower():
            raise LongtailError(
                f"checksum mismatch for {filename} downloaded from {url}: MD5 {digest}, expected {md5}",
                f"the download was corrupt or the file has changed; run again to re-download, or download it "
                f"by hand and place it{' (unpacked)' if is_archive(filename) else ''} under {root}",
            )
        if is_archive(filename):
            _extract_into(tmp, root, filename)
        else:
            os.replace(tmp, root / filename)  # same folder, so the rename is atomic
    finally:
        tmp.unlink(missing_ok=True)
    return root


def _fetch(url: str, out, root: Path, timeout: float) -> str:
    """Stream ``url`` into the open file ``out`` with a progress bar; return the MD5 hex digest."""
    try:
        response = urlopen(url, timeout=timeout)
    except ValueError as e:  # not a URL urllib understands
        raise LongtailError(f"cannot download {url!r}: {e}", "pass a full http:// or https:// URL") from e
    except _NETWORK_ERRORS as e:
        raise _network_error(url, root, e) from e
    h = hashlib.md5(usedforsecurity=False)
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
                out.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
    return h.hexdigest()


def _network_error(url: str, root: Path, e: BaseException) -> LongtailError:
    return LongtailError(
        f"could not download {url}: {e}",
        f"check the network connection, or download {url} by hand and place it (unpacked, if it is an "
        f"archive) under the data root {root}",
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
    """Unpack ``archive`` into a hidden folder in ``root``, then rename its top-level entries into ``root``."""
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{filename}.", suffix=".extract"))
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
        except (tarfile.TarError, EOFError, OSError) as e:  # FilterError (links leaving root) is a TarError
            raise LongtailError(
                f"could not unpack {filename}: {e}",
                f"delete anything partial under {root} and download again, or unpack the archive there by hand",
            ) from e
        entries = sorted(staging.iterdir())
        clashes = [p.name for p in entries if (root / p.name).exists()]
        if clashes:
            raise LongtailError(
                f"unpacking {filename} would overwrite {', '.join(str(root / c) for c in clashes)}",
                "delete or move those paths and run again, or point the data root at the existing data",
            )
        for p in entries:
            os.replace(p, root / p.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
