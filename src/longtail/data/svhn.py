"""SVHN (Street View House Numbers, cropped digits) from the official ``{split}_32x32.mat`` files.

Files: ``root/svhn/{train,test,extra}_32x32.mat`` (or directly in ``root``). Each is a MATLAB
v5 file read with ``scipy.io.loadmat``: ``X`` is uint8 (32, 32, 3, N) (H, W, C, N) and ``y``
is (N, 1) with values 1..10, where 10 stands for the digit 0.

Class order follows the reference code: ``label = y - 1``, so class ``i`` is the digit
``i + 1`` for ``i < 9`` and class 9 is the digit 0; ``class_names`` is ("1", ..., "9", "0").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import LongtailError
from .download import download_and_extract
from .imageset import ImageSet
from .normalization import HALF

#: images per class of SVHN-LT's most frequent class
N_MAX_SVHN = 1000

SPLITS = ("train", "test", "extra")
URL = "http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat"
MD5 = {
    "train": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test": "eb5a983be6a315427106f1b2d1f4b9b7",
    "extra": "a93ce644f1a588dc4d68dda5feec44a7",
}
CLASS_NAMES = tuple(str(d) for d in (1, 2, 3, 4, 5, 6, 7, 8, 9, 0))
#: Yang & Xu's constants (train.py: 0.5 / 0.5 for every data set not named cifar*); SVHN's own pixel
#: statistics are longtail.data.normalization.SVHN_DATA ("svhn-data")
MEAN, STD = HALF
FOLDER = "svhn"


def load_svhn(
    root: str | Path,
    *,
    split: str = "train",
    download: bool = True,
    url: str | None = None,
    md5: str | None = None,
) -> ImageSet:
    """One SVHN split as (N, 3, 32, 32) uint8 images and (N,) int64 labels (``y - 1``).

    Looks for ``root/svhn/{split}_32x32.mat``, then ``root/{split}_32x32.mat``; when neither
    exists and ``download`` is true, fetches the official file (or ``url``, checked against
    ``md5``) into ``root/svhn``.
    """
    images, labels = _read_split(Path(root), split, download=download, url=url, md5=md5)
    return _image_set(images, labels, f"svhn-{split}")


def load_svhn_sets(root: str | Path, *, extra: bool = False, download: bool = True) -> tuple[ImageSet, ImageSet]:
    """(train, test); with ``extra`` the 531,131 extra images are appended to the training set."""
    root = Path(root)
    train = _read_split(root, "train", download=download)
    name = "svhn-train"
    if extra:
        more = _read_split(root, "extra", download=download)
        # stacked as arrays (not ImageSet concat) so that source_index stays 0..N-1 over train+extra
        train = (np.concatenate([train[0], more[0]]), np.concatenate([train[1], more[1]]))
        name = "svhn-train+extra"
    test = _read_split(root, "test", download=download)
    return _image_set(*train, name), _image_set(*test, "svhn-test")


def _image_set(images: np.ndarray, labels: np.ndarray, name: str) -> ImageSet:
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), CLASS_NAMES, mean=MEAN, std=STD, name=name)


def _find_file(root: Path, split: str, *, download: bool, url: str | None, md5: str | None) -> Path:
    if split not in SPLITS:
        raise LongtailError(f"unknown SVHN split {split!r}", f"use one of: {', '.join(SPLITS)}")
    filename = f"{split}_32x32.mat"
    for candidate in (root / FOLDER / filename, root / filename):
        if candidate.is_file():
            return candidate
    # when root already is the svhn folder, download into it rather than into root/svhn/svhn
    folder = root if root.name == FOLDER else root / FOLDER
    if not download:
        raise LongtailError(
            f"SVHN file not found: looked for {folder / filename}",
            f"pass --data-root pointing at the folder that holds {FOLDER}/{filename}, "
            "or let `longtail train` download it (without --no-download)",
        )
    download_and_extract(url or URL.format(split=split), folder, md5 or MD5[split], filename=filename)
    return folder / filename


def _read_split(
    root: Path, split: str, *, download: bool, url: str | None = None, md5: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8 contiguous, labels (N,) int64 in 0..9) of one split."""
    from scipy.io import loadmat  # scipy is slow to import; only SVHN needs it

    path = _find_file(root, split, download=download, url=url, md5=md5)
    fix = f"delete {path} and run again to re-download it"
    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # scipy raises ValueError, MatReadError, OSError, NotImplementedError (v7.3), ...
        raise LongtailError(f"SVHN file {path} is unreadable: {type(e).__name__}: {e}", fix) from e
    if "X" not in mat or "y" not in mat:
        raise LongtailError(f"SVHN file {path} lacks the variables 'X' and 'y'", fix)
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.size:
        raise LongtailError(
            f"SVHN file {path}: X should be uint8 (32, 32, 3, N) with N = {y.size} labels, got {x.dtype} {x.shape}",
            fix,
        )
    if y.size and (y.min() < 1 or y.max() > 10):
        raise LongtailError(f"SVHN file {path}: labels should be 1..10, got {int(y.min())}..{int(y.max())}", fix)
    # (H, W, C, N) -> (N, C, H, W), copied so rows are contiguous for fast indexing
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return images, y.astype(np.int64) - 1
