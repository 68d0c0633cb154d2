"""CIFAR-10 and CIFAR-100 from the official Python layout, as whole-set uint8 tensors.

Layout (what the official ``*-python.tar.gz`` archives unpack to)::

    root/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    root/cifar-100-python/train, test, meta

Each file is a pickle of a dict: ``data`` is uint8 (N, 3072), per row the R plane (1024
values, 32x32 row-major), then G, then B; labels are under ``labels`` (CIFAR-10) or
``fine_labels`` (CIFAR-100); the meta file holds ``label_names`` / ``fine_label_names``.
The data are located by their layout, never by file checksums (a pixel-exact copy may
have other bytes than the official download). Pickles can run code when loaded: only
point the loader at data you trust.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import LongtailError
from ..storage import load_data_pickle
from .download import download_and_extract
from .imageset import ImageSet
from .normalization import CIFAR_REFERENCE

#: images per class in the balanced training sets: the n_max of the long-tailed versions
N_MAX = {"cifar10": 5000, "cifar100": 500}

_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarInfo:
    """Where a CIFAR variant lives, how its files are keyed, and its normalisation constants."""

    folder: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


DATASET_INFO: dict[str, CifarInfo] = {
    "cifar10": CifarInfo(
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        # the reference recipe's constants (its std is not the data's 0.247/0.243/0.261; kept to match it)
        mean=CIFAR_REFERENCE[0],  # type: ignore[arg-type]
        std=CIFAR_REFERENCE[1],  # type: ignore[arg-type]
    ),
    "cifar100": CifarInfo(
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        # CIFAR-10's constants, as both references normalise CIFAR-100 (LDAM-DRW cifar_train.py, Yang & Xu's
        # train.py; see longtail.data.normalization); CIFAR-100's own statistics are its "cifar100-data"
        mean=CIFAR_REFERENCE[0],  # type: ignore[arg-type]
        std=CIFAR_REFERENCE[1],  # type: ignore[arg-type]
    ),
}


def load_cifar(
    name: str,
    root: str | Path,
    *,
    download: bool = True,
    url: str | None = None,
    md5: str | None = None,
) -> tuple[ImageSet, ImageSet]:
    """The balanced (train, test) sets of ``name`` ("cifar10" or "cifar100").

    ``root`` is the folder that holds the layout folder (e.g. ``../shared/data``) or the
    layout folder itself. When it is absent and ``download`` is true, the official archive
    (or ``url``, checked against ``md5``) is downloaded and unpacked into ``root``.
    Images are (N, 3, 32, 32) uint8 NCHW, labels (N,) int64, in the files' order.
    """
    if name not in DATASET_INFO:
        raise LongtailError(f"unknown CIFAR variant {name!r}", f"use one of: {', '.join(DATASET_INFO)}")
    info = DATASET_INFO[name]
    folder = _find_folder(info, Path(root), download=download, url=url, md5=md5)
    class_names = _read_class_names(folder, info)
    sets = []
    for split, files in (("train", info.train_files), ("test", info.test_files)):
        parts = [_read_batch(folder / f, info) for f in files]
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        sets.append(
            ImageSet(
                torch.from_numpy(np.ascontiguousarray(images)),
                torch.from_numpy(labels),
                class_names,
                mean=info.mean,
                std=info.std,
                name=f"{name}-{split}",
            )
        )
    return sets[0], sets[1]


def _find_folder(info: CifarInfo, root: Path, *, download: bool, url: str | None, md5: str | None) -> Path:
    """The layout folder under ``root`` (or ``root`` itself); download it when allowed."""
    if (root / info.folder).is_dir():
        return root / info.folder
    if (root / info.meta_file).is_file() or (root.name == info.folder and root.is_dir()):
        return root  # root is the layout folder itself
    # when root names the layout folder, unpack next to it so the archive's folder lands on root
    target = root if root.name == info.folder else root / info.folder
    if not download:
        raise LongtailError(
            f"CIFAR data not found: looked for the folder {target}",
            f"pass --data-root pointing at the folder that holds {info.folder}"
            f"{' (e.g. ../shared/data)' if info.folder == 'cifar-10-batches-py' else ''}, "
            "or let `longtail train` download it (without --no-download)",
        )
    download_and_extract(url or info.url, target.parent, md5 or info.md5)
    if not target.is_dir():
        raise LongtailError(
            f"the downloaded archive {url or info.url} did not contain the folder {info.folder}",
            f"check the URL, or download the official archive by hand and unpack it under {target.parent}",
        )
    return target


def _corrupt(path: Path, why: str) -> LongtailError:
    return LongtailError(
        f"CIFAR file {path} is unreadable: {why}",
        f"delete the folder {path.parent} and run again to re-download it (or unpack the official archive again)",
    )


def _load_pickle(path: Path) -> dict[str, Any]:
    """One official-style pickle as a dict with str keys (the official files hold latin-1 strings)."""
    if not path.is_file():
        raise LongtailError(
            f"CIFAR file {path} is missing",
            f"delete the folder {path.parent} and run again to re-download it (or unpack the official archive again)",
        )
    try:
        with open(path, "rb") as f:
            d = load_data_pickle(f, encoding="latin1")  # data only: a pickle that names code is refused
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise _corrupt(path, f"{type(e).__name__}: {e} (truncated or not a CIFAR pickle)") from e
    if not isinstance(d, dict):
        raise _corrupt(path, f"expected a dict, got {type(d).__name__}")
    # copies written with bytes keys load the same
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _read_batch(path: Path, info: CifarInfo) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one batch file."""
    d = _load_pickle(path)
    if "data" not in d or info.label_key not in d:
        raise _corrupt(path, f"keys 'data' and {info.label_key!r} expected, found {sorted(d)}")
    data = np.asarray(d["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise _corrupt(path, f"'data' should be uint8 (N, {_PIXELS}), got {data.dtype} {data.shape}")
    try:
        labels = np.asarray(d[info.label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise _corrupt(path, f"labels should be integers 0..{info.num_classes - 1} ({type(e).__name__}: {e})") from None
    if labels.shape != (data.shape[0],):
        raise _corrupt(path, f"{data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise _corrupt(path, f"labels outside 0..{info.num_classes - 1}")
    # each row is the R, G and B planes in turn, so a plain reshape gives NCHW
    return data.reshape(-1, 3, 32, 32), labels


def _read_class_names(folder: Path, info: CifarInfo) -> tuple[str, ...]:
    path = folder / info.meta_file
    d = _load_pickle(path)
    names = d.get(info.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != info.num_classes:
        raise _corrupt(path, f"{info.names_key!r} should list {info.num_classes} class names")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)
