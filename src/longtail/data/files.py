"""Image-file data sets: ImageNet-LT and iNaturalist 2018 from their split files, folders and CSVs.

Large-image data sets do not fit in memory as tensors. A :class:`FileImageSet` holds the image
paths, the labels and the class names; images are decoded in DataLoader workers when a batch is
needed (:mod:`longtail.data.loader`). Everything that only needs the labels (class counts,
samplers, re-weighting, shot groups, reports) works on it exactly as on an ``ImageSet``.

Formats (every relative image path is relative to ``root``, the data set's root folder):

* ImageNet-LT (Liu et al. 2019): ``ImageNet_LT_train.txt`` / ``_val.txt`` / ``_test.txt``, one
  ``relative/path.JPEG label`` per line; class ``c`` is named after the folder of its images (the
  WordNet id, e.g. ``n01440764``).
* iNaturalist 2018: ``train2018.json`` / ``val2018.json`` in the COCO-like annotation format
  ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "category_id"}],
  "categories": [{"id", "name"}]}``; labels are the positions of the category ids in sorted order
  (the identity for iNat 2018, whose ids are 0..8141), names from ``categories``.
* a folder: ``split/CLASS/*.jpg`` (any depth below the class folder), classes in sorted order of
  the training split's folder names.
* a CSV of ``path,label`` rows (header optional: a first row whose cells read like
  ``path,label`` is skipped). Labels are integers ``0..C-1`` or class names (then the classes
  are the training CSV's names, sorted).

A problem with the files is a :class:`~longtail.errors.LongtailError` naming the file and line:
a missing split file, an image listed but absent (checked for the first one at load time, the rest
when decoded), an unreadable image (``on_bad_image="stop"``; ``"skip"`` skips and counts it), a
label outside the classes.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..counts import ClassCounts
from ..distributed import default_workers
from ..errors import LongtailError
from .normalization import IMAGENET, INAT2018

IMAGENET_MEAN, IMAGENET_STD = IMAGENET
#: the references' normalisation per data set (Kang et al.'s data/dataloader.py RGB_statistics); others: ImageNet's
FILE_NORMALIZATION = {"inat2018": INAT2018}
#: ColorJitter(brightness, contrast, saturation) strength of the training transform; Kang et al. (and Yang & Xu's
#: copy) jitter ImageNet-LT by 0.4 and iNaturalist 2018 not at all (get_data_transform, key == 'iNaturalist18')
DEFAULT_COLOR_JITTER = 0.4
FILE_COLOR_JITTER = {"inat2018": 0.0}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
BAD_IMAGE_POLICIES = ("stop", "skip")

#: data set -> default (train, val, test) split names, relative to the root (val None: no validation split)
FILE_DATASETS: dict[str, tuple[str, str | None, str]] = {
    "imagenet-lt": ("ImageNet_LT_train.txt", None, "ImageNet_LT_test.txt"),
    "inat2018": ("train2018.json", None, "val2018.json"),  # the iNat 2018 test labels are not public
    "folder": ("train", None, "test"),
    "csv": ("train.csv", None, "test.csv"),
}


@dataclass(frozen=True)
class FileImageSet:
    """Images as files: ``files[i]`` (relative to ``root``, or absolute) has class ``labels[i]``.

    ``labels``: (N,) int64 in ``0..num_classes-1``. ``image_size``: the side of the square crops
    the model sees; ``num_workers``: DataLoader worker processes that decode; ``on_bad_image``:
    ``stop`` (raise) or ``skip`` (leave the image out and count it). ``mean``/``std``: the
    normalisation constants (ImageNet's; iNaturalist's own for ``inat2018``, as Kang et al.).
    ``color_jitter``: brightness/contrast/saturation jitter of the training transform (0.4; none
    for ``inat2018``, as Kang et al.). ``to(device)`` moves the labels only; images are decoded
    on the CPU and each batch is moved to the device.
    """

    root: Path
    files: tuple[str, ...]
    labels: torch.Tensor
    class_names: tuple[str, ...]
    image_size: int = 224
    num_workers: int = 0
    on_bad_image: str = "stop"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    name: str = "files"
    color_jitter: float = DEFAULT_COLOR_JITTER
    source_index: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        labels = torch.as_tensor(self.labels).long()
        object.__setattr__(self, "labels", labels)
        if labels.shape != (len(self.files),):
            raise LongtailError(f"{self.name}: {len(self.files)} images but {labels.numel()} labels",
                                "every image needs exactly one label")
        if labels.numel():
            bad = ((labels < 0) | (labels >= len(self.class_names))).nonzero()
            if bad.numel():
                i = int(bad[0])
                raise LongtailError(
                    f"{self.name}: label {int(labels[i])} of {self.files[i]} is out of range for "
                    f"{len(self.class_names)} classes",
                    "labels must be 0..num_classes-1 (the training split defines the classes)")
        if self.on_bad_image not in BAD_IMAGE_POLICIES:
            raise LongtailError(f"data.on_bad_image={self.on_bad_image!r}", "use stop or skip")
        if not self.color_jitter >= 0:
            raise LongtailError(f"{self.name}: colour jitter {self.color_jitter} must be >= 0",
                                "use 0.4, or 0 for none")
        if self.image_size < 8:
            raise LongtailError(f"data.image_size={self.image_size} is too small", "use e.g. 224")
        if self.source_index is None:
            object.__setattr__(self, "source_index", torch.arange(labels.numel()))

    def __len__(self) -> int:
        return self.labels.numel()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self.labels.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the decoded, cropped images: RGB ``image_size`` squares."""
        return (3, self.image_size, self.image_size)

    def path(self, i: int) -> Path:
        return self.root / self.files[i]  # an absolute files[i] stays absolute

    def class_counts(self) -> ClassCounts:
        return ClassCounts.from_labels(self.labels, self.num_classes)

    def subset(self, index: torch.Tensor | Sequence[int], name: str | None = None) -> "FileImageSet":
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        rows = index.long().cpu().tolist()
        return replace(self, files=tuple(self.files[i] for i in rows),
                       labels=self.labels[index.long().to(self.labels.device)],
                       source_index=self.source_index.cpu()[rows].to(self.labels.device),  # type: ignore[union-attr]
                       name=name or self.name)

    def to(self, device: torch.device | str) -> "FileImageSet":
        index = self.source_index.to(device)  # type: ignore[union-attr]
        return replace(self, labels=self.labels.to(device), source_index=index)


# ------------------------------------------------------------------------------------------------
# readers: (relative paths, integer labels) of one split
# ------------------------------------------------------------------------------------------------
def _require_file(path: Path, what: str, fix: str) -> None:
    if not path.is_file():
        raise LongtailError(f"{what} {path} not found", fix)


def read_imagenet_lt(path: str | Path) -> tuple[list[str], list[int]]:
    """One ImageNet-LT split file: lines ``train/n01440764/n01440764_10026.JPEG 0``."""
    path = Path(path)
    _require_file(path, "ImageNet-LT split file", "pass data.root=the folder that holds ImageNet_LT_train.txt "
                  "(and the train/ val/ folders), or data.train_split/test_split=PATH")
    files, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise LongtailError(f"{path}:{n}: expected 'relative/path label', got {line!r}",
                                "each line of an ImageNet-LT split file is an image path and an integer label")
        try:
            label = int(parts[1])
        except ValueError:
            raise LongtailError(f"{path}:{n}: label {parts[1]!r} is not an integer",
                                "ImageNet-LT labels are integers 0..999") from None
        files.append(parts[0])
        labels.append(label)
    if not files:
        raise LongtailError(f"{path} lists no images", "check that it is an ImageNet-LT split file")
    return files, labels


def imagenet_class_names(files: Sequence[str], labels: Sequence[int], num_classes: int) -> tuple[str, ...]:
    """Class ``c`` is named after the folder of its first image (the WordNet id), or ``str(c)``."""
    names = [str(c) for c in range(num_classes)]
    seen = set()
    for f, y in zip(files, labels):
        if 0 <= y < num_classes and y not in seen:
            seen.add(y)
            parent = Path(f).parent.name
            names[y] = parent or str(y)
    return tuple(names) if len(set(names)) == num_classes else tuple(str(c) for c in range(num_classes))


def read_inat(path: str | Path, class_ids: Sequence[int] | None = None
              ) -> tuple[list[str], list[int], list[int], dict[int, str]]:
    """One iNaturalist annotation file -> (files, labels, category ids in sorted order, id -> name).

    ``class_ids``: the training split's sorted category ids (a validation/test file is labelled
    against them); None reads them from this file (the training split).
    """
    path = Path(path)
    _require_file(path, "iNaturalist annotation file", "pass data.root=the folder that holds train2018.json and "
                  "val2018.json (and the train_val2018/ images), or data.train_split/test_split=PATH")
    try:
        d = json.loads(path.read_text())
        images = {int(im["id"]): str(im["file_name"]) for im in d["images"]}
        annotations = [(int(a["image_id"]), int(a["category_id"])) for a in d.get("annotations", [])]
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in d.get("categories", [])}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise LongtailError(f"{path} is not an iNaturalist annotation file: {type(e).__name__}: {e}",
                            "expected {'images': [{'id', 'file_name'}], 'annotations': [{'image_id', "
                            "'category_id'}], 'categories': [{'id', 'name'}]}") from e
    if not annotations:
        raise LongtailError(f"{path} has no annotations (labels)",
                            "use an annotated split: train2018.json for training, val2018.json as the test set")
    if class_ids is None:
        class_ids = sorted(names) if names else sorted({c for _, c in annotations})
    position = {c: k for k, c in enumerate(class_ids)}
    files, labels = [], []
    for image_id, cat in annotations:
        if image_id not in images:
            raise LongtailError(f"{path}: annotation for image id {image_id}, which is not in 'images'",
                                "the annotation file is inconsistent; download it again")
        if cat not in position:
            raise LongtailError(f"{path}: category {cat} of {images[image_id]} is out of range: not a category "
                                f"of the training split ({len(class_ids)} classes)",
                                "train and test annotation files must come from the same release")
        files.append(images[image_id])
        labels.append(position[cat])
    return files, labels, list(class_ids), names


def read_folder(path: str | Path, class_names: Sequence[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """``path/CLASS/**/image`` -> (paths relative to ``path``, labels, class names).

    ``class_names``: the training split's classes (a test folder must use the same names);
    None: the sorted names of ``path``'s subfolders.
    """
    path = Path(path)
    if not path.is_dir():
        raise LongtailError(f"image folder {path} not found",
                            "pass data.root=the folder that holds train/ and test/, each with one folder per "
                            "class (or data.train_split/test_split=FOLDER)")
    folders = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise LongtailError(f"{path} has no class folders", "put the images of class NAME into {path}/NAME/")
    if class_names is None and len(folders) == 1:  # a training folder of one class: nested a level too deep?
        inner = sorted(p.name for p in (path / folders[0]).iterdir() if p.is_dir() and not p.name.startswith("."))
        where = f" (its images sit in the sub-folders {', '.join(inner[:5])}{', ...' if len(inner) > 5 else ''})" \
            if inner else ""
        raise LongtailError(f"{path} has one class folder, {folders[0]!r}{where}: a classifier needs two classes or "
                            "more", f"put one folder per class directly under {path}")
    names = list(class_names) if class_names is not None else folders
    position = {n: k for k, n in enumerate(names)}
    files, labels = [], []
    for folder in folders:
        if folder not in position:
            raise LongtailError(f"{path / folder}: class {folder!r} is out of range: not a class of the training split",
                                "the test folder may only hold classes that the training folder has")
        listed = [p for p in (path / folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        broken = [p for p in listed if p.is_symlink() and not p.exists()]
        if broken:  # they were once left out silently
            raise LongtailError(f"{broken[0]} is a link to an image that does not exist"
                                + (f" ({len(broken)} such links under {path / folder})" if len(broken) > 1 else ""),
                                "fix or remove the links")
        images = sorted((p for p in listed if p.is_file()), key=lambda p: p.as_posix())
        files += [p.relative_to(path).as_posix() for p in images]
        labels += [position[folder]] * len(images)
    if not files:
        raise LongtailError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                            "put the images into its class folders")
    return files, labels, names


_PATH_HEADERS = {"path", "file", "filename", "file_name", "image", "image_path", "filepath"}
_LABEL_HEADERS = {"label", "class", "class_name", "classname", "target", "category", "category_id", "y"}


def read_csv(path: str | Path) -> tuple[list[str], list[str]]:
    """``path,label`` rows (header optional) -> (paths, label strings), with line numbers in errors."""
    path = Path(path)
    _require_file(path, "CSV file", "pass data.root=the folder that holds train.csv and test.csv, or "
                  "data.train_split/test_split=PATH (rows: image path relative to data.root, label)")
    files, labels = [], []
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first path
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            for n, row in enumerate(csv.reader(f), start=1):
                row = [c.strip() for c in row]
                if not row or not any(row):
                    continue
                if len(row) < 2 or not row[0] or not row[1]:
                    raise LongtailError(f"{path}:{n}: expected 'path,label', got {','.join(row)!r}",
                                        "each row is an image path and its label (an integer or a class name)")
                if n == 1 and row[0].lower() in _PATH_HEADERS and row[1].lower() in _LABEL_HEADERS:
                    continue  # a header
                files.append(row[0])
                labels.append(row[1])
        except UnicodeDecodeError as e:
            raise LongtailError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at byte {e.start})",
                                "save it as UTF-8 (in Excel: CSV UTF-8), or convert it, e.g. "
                                f"iconv -f cp1252 -t utf-8 {path.name}") from None
    if not files:
        raise LongtailError(f"{path} lists no images", "rows are: image path, label")
    return files, labels


def csv_labels(path: Path, raw: Sequence[str], class_names: Sequence[str] | None) -> tuple[list[int], list[str]]:
    """Label strings -> integers. All integers: they are the labels (classes ``0..max``, names ``"0".."max"``);
    otherwise class names (sorted unique names of the training CSV)."""
    if class_names is None:
        ints = [_is_int(s) for s in raw]
        floats = [k for k, s in enumerate(raw) if not ints[k] and _is_number(s)]
        if any(ints) and floats:  # e.g. one "0.0" of a float column among integers: it would be a class of its own
            k = floats[0]
            raise LongtailError(f"{path}: the labels mix integers and a decimal number ({raw[k]!r} in row {k + 1} of "
                                "its image rows)", "write every label as an integer 0..C-1 (or every label as a "
                                "class name)")
        if all(ints):
            labels = [int(s) for s in raw]
            if min(labels) < 0:
                raise LongtailError(f"{path}: label {min(labels)} is out of range (negative)", "labels are 0..C-1")
            class_names = [str(c) for c in range(max(labels) + 1)]
        else:
            class_names = sorted(set(raw))
        if len(class_names) < 2:
            raise LongtailError(f"{path}: every image has the label {class_names[0]!r}: a classifier needs two "
                                "classes or more", "label the images of each class with its own name or integer")
        if all(ints):
            return labels, class_names
    position = {n: k for k, n in enumerate(class_names)}
    labels = []
    for k, s in enumerate(raw):
        if s in position:
            labels.append(position[s])
        elif _is_int(s) and all(_is_int(n) for n in class_names):
            labels.append(int(s))  # range-checked by FileImageSet with the file's name
        else:
            raise LongtailError(f"{path}: label {s!r} (row {k + 1}) is out of range: not a class of the training CSV",
                                "use the training CSV's class names (or integer labels 0..C-1 in both files)")
    return labels, list(class_names)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------
# a data set's splits
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileOptions:
    """What a ``DataConfig`` says about image files (read with defaults, see :func:`file_options`)."""

    dataset: str
    root: Path
    train_split: str
    val_split: str | None
    test_split: str
    image_size: int = 224
    num_workers: int = 0
    on_bad_image: str = "stop"


def file_options(cfg: Any) -> FileOptions:
    """The file-data settings of a ``DataConfig``; fields it lacks take their defaults."""

    dataset = cfg.dataset
    train, val, test = FILE_DATASETS[dataset]
    workers = getattr(cfg, "num_workers", None)
    return FileOptions(
        dataset=dataset,
        root=Path(getattr(cfg, "root", "data")),
        train_split=getattr(cfg, "train_split", None) or train,
        val_split=getattr(cfg, "val_split", None) or val,
        test_split=getattr(cfg, "test_split", None) or test,
        image_size=int(getattr(cfg, "image_size", 224) or 224),
        num_workers=default_workers() if workers is None or workers < 0 else int(workers),
        on_bad_image=getattr(cfg, "on_bad_image", "stop") or "stop",
    )


def _under(root: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else root / p


def load_file_sets(opt: FileOptions) -> tuple[FileImageSet, FileImageSet | None, FileImageSet]:
    """(train, val or None, test) of an image-file data set, labels checked, first image checked."""
    if not opt.root.is_dir():
        raise LongtailError(f"data root {opt.root} does not exist",
                            f"pass --data-root=the folder of the {opt.dataset} data")
    mean, std = FILE_NORMALIZATION.get(opt.dataset, IMAGENET)
    jitter = FILE_COLOR_JITTER.get(opt.dataset, DEFAULT_COLOR_JITTER)
    splits = {"train": opt.train_split, "val": opt.val_split, "test": opt.test_split}
    out: dict[str, FileImageSet | None] = {"val": None}
    class_names: list[str] | None = None
    class_ids: list[int] | None = None
    for split in ("train", "val", "test"):
        if splits[split] is None:
            continue
        src = _under(opt.root, splits[split])  # type: ignore[arg-type]
        root = opt.root
        if opt.dataset == "imagenet-lt":
            files, labels = read_imagenet_lt(src)
            if class_names is None:
                class_names = list(imagenet_class_names(files, labels, max(labels) + 1))
        elif opt.dataset == "inat2018":
            files, labels, ids, names = read_inat(src, class_ids)
            if class_ids is None:
                class_ids = ids
                class_names = [names.get(c, str(c)) for c in ids]
        elif opt.dataset == "folder":
            files, labels, names_ = read_folder(src, class_names)
            class_names, root = names_, src  # read_folder's paths are relative to the split's folder
        elif opt.dataset == "csv":
            files, raw = read_csv(src)
            labels, class_names = csv_labels(src, raw, class_names)
        else:
            raise LongtailError(f"unknown image-file data set {opt.dataset!r}",
                                f"use one of: {', '.join(FILE_DATASETS)}")
        # lists: __post_init__ makes tuples of files and class_names (set by the first split)
        data = FileImageSet(root, files, torch.tensor(labels, dtype=torch.long), class_names,  # type: ignore[arg-type]
                            image_size=opt.image_size, num_workers=opt.num_workers, on_bad_image=opt.on_bad_image,
                            mean=mean, std=std, color_jitter=jitter, name=f"{opt.dataset}-{split}")
        _check_first_image(data, src)
        out[split] = data
    return out["train"], out["val"], out["test"]  # type: ignore[return-value]


def _check_first_image(data: FileImageSet, listed_in: Path) -> None:
    """A wrong root shows at once, not after the first epoch's worth of decoding."""
    if len(data) and not data.path(0).is_file():
        fix = (f"image paths are relative to data.root ({data.root}); point --data-root at the folder they are "
               "relative to")
        if listed_in.suffix == ".csv" and len(data) > 1 and data.path(1).is_file():  # the next row's image is there
            fix = (f"if the first row of {listed_in.name} is a header, name its columns path,label (or delete it); "
                   f"else: {fix}")
        raise LongtailError(f"image {data.path(0)} (listed in {listed_in}) does not exist", fix)


def holdout_validation(train: FileImageSet, *, per_class: int, seed: int = 0) -> tuple[FileImageSet, FileImageSet]:
    """A balanced validation split of ``per_class`` images per class taken out of ``train``.

    Same stream and rule as :func:`longtail.data.splits.validation_split` without a pool: per class,
    shuffle its rows with ``RandomState(seed + 1_000_003)`` and hold out the first ``per_class``.
    """
    if per_class < 1:
        raise LongtailError(f"validation per_class must be >= 1, got {per_class}")
    rng = np.random.RandomState(seed + 1_000_003)
    y = train.labels.cpu().numpy()
    held = []
    for c in range(train.num_classes):
        own = np.where(y == c)[0]
        rng.shuffle(own)
        if per_class >= len(own):
            raise LongtailError(f"class {train.class_names[c]!r} has {len(own)} training images: too few to hold out "
                                f"{per_class} for validation and keep at least one for training",
                                "use a smaller --val-per-class, or a validation split file (data.val_split)")
        held.append(own[:per_class])
    val_rows = np.sort(np.concatenate(held))
    keep = np.ones(len(train), dtype=bool)
    keep[val_rows] = False
    return (train.subset(torch.from_numpy(np.where(keep)[0]), name=train.name),
            train.subset(torch.from_numpy(val_rows), name=f"{train.name}-val"))


__all__ = ["BAD_IMAGE_POLICIES", "DEFAULT_COLOR_JITTER", "FILE_COLOR_JITTER", "FILE_DATASETS", "FILE_NORMALIZATION",
           "FileImageSet", "FileOptions", "IMAGENET_MEAN", "IMAGENET_STD",
           "file_options", "holdout_validation", "load_file_sets", "read_csv", "read_folder",
           "read_imagenet_lt", "read_inat"]
