"""Files on disk, safely: the one reader of ``.pt`` files, atomic writes, checksums, run-folder locks.

- :func:`load_file` is how longtail reads every PyTorch file (checkpoints, pseudo-labels, pre-trained
  weights): ``torch.load(..., weights_only=True)``, so a file can hold tensors and plain Python values
  (dicts, lists, tuples, str, numbers, None) and nothing that runs code. Anything else is refused.
- :func:`atomic_write_bytes` writes through a temporary file in the same folder and renames it: a
  reader sees the old file or the new one, never half of one. The file gets the permissions ``open``
  would give it (``0o666`` less the umask), and an ``OSError`` becomes a ``LongtailError`` naming the path.
- :func:`digest` is a checksum of a nested payload (tensors by dtype, shape and bytes); checkpoints
  carry it and are verified against it on load.
- :class:`RunLock`: one writer per run folder, an advisory lock file holding pid and host.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import LongtailError

LOCK_NAME = ".longtail.lock"


# writing ---------------------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(path: Path, e: OSError) -> LongtailError:
    """An ``OSError`` while writing ``path`` as a message with a fix."""
    reason = e.strerror or str(e)
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "pass an --out folder you can write to"
    elif e.errno == errno.ENOSPC:
        fix = "free disk space, or pass an --out folder on another disk"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = "a file is in the way: pass an --out path that is a folder (or does not exist yet)"
    else:
        fix = "check that the folder exists and is writable, or pass another --out"
    return LongtailError(f"cannot write {path}: {reason}", fix)


def atomic_write_bytes(path: str | Path, write: Callable[[Any], Any]) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, then rename it onto ``path``."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() honours the umask
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files that a process killed while writing left in ``folder``.

    Call it only while holding the folder's :class:`RunLock` (another writer's temporaries are live)."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def check_writable_dir(folder: str | Path, what: str = "output folder") -> None:
    """Stop early, with a message, when ``folder`` cannot become a writable folder.

    Creates nothing: the nearest existing ancestor must be a folder we may write into."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LongtailError(f"the {what} {folder} is a file, not a folder",
                            "pass an --out path that is a folder (or does not exist yet)")
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise LongtailError(f"the {what} {folder} is under {probe}, which is a file",
                            "pass an --out path whose parent folders are folders")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".longtail-write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise write_error(folder, e) from e


# reading ---------------------------------------------------------------------------------------------


def load_file(path: str | Path, *, what: str = "file", fix: str = "pass a file written by longtail") -> Any:
    """Read a PyTorch file as data, never as code (``weights_only=True``).

    A file that needs more than tensors and plain Python types to load is refused: unpickling it could
    run code. A truncated or foreign file is a clear error too."""
    path = Path(path)
    if not path.is_file():
        raise LongtailError(f"no {what} at {path}", fix)
    try:
        with warnings.catch_warnings():  # a foreign file's "pickle protocol" warning: the error below says it better
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # the pickle names a class or function: not plain data
            raise LongtailError(
                f"refused to read {path}: it holds objects other than tensors and plain Python values "
                "(loading it could run code)",
                "use only files written by longtail; a file from elsewhere must hold tensors, dicts, lists, "
                "str and numbers") from None
        raise LongtailError(f"the {what} {path} is damaged or not a PyTorch file (it does not unpickle)", fix) from None
    except Exception as e:  # a truncated zip, a foreign format, bytes overwritten
        raise LongtailError(f"the {what} {path} is damaged or not a PyTorch file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})", fix) from None


# the globals a pickle of plain containers and numpy arrays needs (the official CIFAR batches)
_DATA_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # bytes written by Python 3 as protocol-2 pickles
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DATA_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a data file does not need "
                                     "(refused: unpickling it could run code)")


def load_data_pickle(f: Any, *, encoding: str = "ASCII") -> Any:
    """Unpickle a data file (dicts, lists, str, numbers and numpy arrays) without running code from it:
    any other class or function the pickle names is refused with ``pickle.UnpicklingError``."""
    return _DataUnpickler(f, encoding=encoding).load()


def digest(obj: Any) -> str:
    """SHA-256 of a nested payload of tensors, dicts, lists, tuples, str, numbers, bool and None."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(o.shape)}:".encode())
            if t.numel():
                h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(f"D{len(o)}:".encode())
            for k, v in o.items():
                walk(k)
                walk(v)
        elif isinstance(o, (list, tuple)):
            h.update(f"{'L' if isinstance(o, list) else 'U'}{len(o)}:".encode())
            for v in o:
                walk(v)
        elif o is None or isinstance(o, (str, int, float, bool)):
            h.update(f"{type(o).__name__}:{o!r};".encode())
        else:
            raise TypeError(f"{type(o).__name__} cannot be stored in a longtail file")

    walk(obj)
    return h.hexdigest()


# one writer per run folder ---------------------------------------------------------------------------

_HELD: dict[Path, int] = {}  # locks this process holds, with their nesting depth


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunLock:
    """An exclusive, advisory lock on a run folder: the file ``.longtail.lock`` holding pid and host.

    A second process that finds the lock stops at once with a message naming the holder. A lock left
    by a dead process on this host is taken over, with a message (``log``). Re-entrant in one process.
    On release, a folder that the lock itself created and that is still empty is removed again.
    """

    def __init__(self, folder: str | Path, log: Callable[[str], None] = print) -> None:
        self.folder = Path(folder).absolute()
        self.file = self.folder / LOCK_NAME
        self.log = log
        self._created: list[Path] = []  # folders the lock made, deepest first

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def acquire(self) -> "RunLock":
        if self.folder in _HELD:
            _HELD[self.folder] += 1
            return self
        check_writable_dir(self.folder, "run folder")
        missing = [p for p in [self.folder, *self.folder.parents] if not p.exists()]
        if missing:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise write_error(self.folder, e) from e
            self._created = missing
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # being written this instant, or unreadable: look again
                    time.sleep(0.2)
                    holder = self._holder()
                if holder is not None and holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                    self.log(f"taking over the lock of {self.folder}: process {holder.get('pid')} that held it "
                             f"(since {holder.get('since')}) is gone")
                    with contextlib.suppress(FileNotFoundError):
                        self.file.unlink()
                    continue
                if holder is None or "pid" not in holder:  # empty, garbage, or another program's
                    raise LongtailError(f"the run folder {self.folder} has a lock file, {self.file}, that names no "
                                        "process (a run may be writing it just now, or it was left damaged)",
                                        f"if no run of {self.folder} is going on, delete {self.file}") from None
                who = f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since', '?')})"
                raise LongtailError(f"the run folder {self.folder} is in use by {who}",
                                    "wait for that run to finish, or pass another --out; if that process is gone "
                                    f"for good, delete {self.file}") from None
            except OSError as e:
                raise write_error(self.file, e) from e
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
            _HELD[self.folder] = 1
            return self
        raise LongtailError(f"could not take the lock of {self.folder}", f"delete {self.file} and try again")

    def release(self) -> None:
        depth = _HELD.get(self.folder, 0)
        if depth > 1:
            _HELD[self.folder] = depth - 1
            return
        _HELD.pop(self.folder, None)
        holder = self._holder()
        if holder is not None and holder.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                self.file.unlink()
        for p in self._created:  # only while empty: nothing was written
            try:
                p.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
