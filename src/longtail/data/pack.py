"""Device packs: CIFAR-10 subsets compressed for the GPU machine (``../shared/tools/device-pack``).

A pack is ``NAME.xz`` (train images, test images, train labels, test labels; uint8) and
``NAME.json`` (counts, class names, named groups of training rows with their indices into the
50,000 official training images). Reading one needs only numpy and the standard library.
"""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import torch

from ..errors import LongtailError
from .imageset import ImageSet
from .normalization import CIFAR_REFERENCE

CIFAR10_MEAN, CIFAR10_STD = CIFAR_REFERENCE  # as longtail.data.cifar normalises CIFAR-10


def load_pack(path: str | Path) -> tuple[dict[str, ImageSet], ImageSet]:
    """``path`` without extension -> ({group name: training ImageSet}, test ImageSet).

    Each group's ``source_index`` holds its indices into the official training set, so a
    pack's subset can be checked against ``longtail_indices``.
    """
    base = Path(str(path).removesuffix(".xz").removesuffix(".json"))
    meta_file, data_file = base.with_suffix(".json"), base.with_suffix(".xz")
    if not meta_file.is_file() or not data_file.is_file():
        raise LongtailError(f"device pack {base} not found (need {meta_file.name} and {data_file.name})",
                            "make one with ../shared/tools/device-pack --lt-ratio 100 --out .device/c10-lt100")
    try:
        meta = json.loads(meta_file.read_text())
        raw = lzma.decompress(data_file.read_bytes())
    except (lzma.LZMAError, json.JSONDecodeError) as e:
        raise LongtailError(f"device pack {base} is corrupt: {e}", "make the pack again") from e
    nt, ne, k = meta["n_train"], meta["n_test"], 3 * 32 * 32
    if len(raw) != (nt + ne) * (k + 1):
        raise LongtailError(f"device pack {base} has {len(raw)} bytes, expected {(nt + ne) * (k + 1)}",
                            "make the pack again")
    x = np.frombuffer(raw, np.uint8, count=(nt + ne) * k).reshape(nt + ne, 3, 32, 32)
    y = np.frombuffer(raw, np.uint8, offset=(nt + ne) * k).astype(np.int64)
    names = tuple(meta["classes"])
    groups = {}
    for g, span in meta["groups"].items():
        s, n = span["start"], span["count"]
        groups[g] = ImageSet(torch.from_numpy(x[s:s + n].copy()), torch.from_numpy(y[s:s + n].copy()),
                             class_names=names, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                             name=f"pack-{g}", source_index=torch.tensor(span["train_index"]))
    test = ImageSet(torch.from_numpy(x[nt:].copy()), torch.from_numpy(y[nt:].copy()), class_names=names,
                    mean=CIFAR10_MEAN, std=CIFAR10_STD, name="cifar10-test")
    return groups, test
