"""Tiny image-file data sets written with PIL, in each of the supported layouts (for the tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from longtail.data.files import FileOptions, load_file_sets
from longtail.data.registry import Splits


def image(c: int, rng: np.random.RandomState, size: int = 32) -> Image.Image:
    """An RGB image whose brightness encodes the class ``c`` (so a tiny model can learn it)."""
    arr = np.clip(rng.randn(size, size + 8, 3) * 20 + 30 + 60 * c, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def write_images(root: Path, split: str, per_class: list[int], names: list[str], seed: int = 0,
                 suffix: str = ".JPEG") -> list[tuple[str, int]]:
    """``root/split/NAME/k.JPEG`` for each class; returns (path relative to root, label) rows."""
    rng = np.random.RandomState(seed)
    rows = []
    for c, n in enumerate(per_class):
        folder = root / split / names[c]
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            image(c, rng).save(folder / f"{k}{suffix}", quality=90)
            rows.append((f"{split}/{names[c]}/{k}{suffix}", c))
    return rows


def wnids(k: int) -> list[str]:
    return [f"n{c:08d}" for c in range(k)]


def write_imagenet_lt(root: Path, train: list[int], test_per_class: int = 4) -> Path:
    """ImageNet-LT layout: train/ and test/ folders of WordNet ids, ImageNet_LT_train.txt and _test.txt."""
    names = wnids(len(train))
    for split, per_class, seed in (("train", train, 0), ("test", [test_per_class] * len(train), 1)):
        rows = write_images(root, split, per_class, names, seed=seed)
        (root / f"ImageNet_LT_{split}.txt").write_text("".join(f"{p} {y}\n" for p, y in rows))
    return root


def write_inat(root: Path, train: list[int], category_ids: list[int], test_per_class: int = 3) -> Path:
    """iNaturalist 2018 layout: train_val2018/ images, train2018.json and val2018.json."""
    names = [f"species_{i}" for i in category_ids]
    for split, per_class, seed in (("train2018", train, 0), ("val2018", [test_per_class] * len(train), 1)):
        rows = write_images(root, f"train_val2018/{split}", per_class, names, seed=seed, suffix=".jpg")
        images = [{"id": 1000 + i, "file_name": p, "width": 40, "height": 32} for i, (p, _) in enumerate(rows)]
        anns = [{"id": i, "image_id": 1000 + i, "category_id": category_ids[y]} for i, (_, y) in enumerate(rows)]
        cats = [{"id": i, "name": n, "supercategory": "Plantae"} for i, n in zip(category_ids, names)]
        (root / f"{split}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def file_splits(dataset: str, root: Path, *, image_size: int = 32, num_workers: int = 0, on_bad_image: str = "stop",
                train_split: str | None = None, test_split: str | None = None) -> Splits:
    """The Splits of an image-file data set with small crops (DataConfig may not have these fields yet)."""
    from longtail.data.files import FILE_DATASETS

    tr, _, te = FILE_DATASETS[dataset]
    opt = FileOptions(dataset=dataset, root=root, train_split=train_split or tr, val_split=None,
                      test_split=test_split or te, image_size=image_size, num_workers=num_workers,
                      on_bad_image=on_bad_image)
    train, val, test = load_file_sets(opt)
    return Splits(train, test, val)
