"""From a ``DataConfig`` to the train / validation / test image sets of a run.

Small-image data sets (CIFAR, SVHN, digits) are balanced sources made long-tailed here, as
tensors (``ImageSet``). Image-file data sets (``imagenet-lt``, ``inat2018``, ``folder``, ``csv``;
:mod:`longtail.data.files`) are long-tailed as given: their sets are ``FileImageSet``s, and the
long-tailed-subset settings (imbalance ratio, profile, n_max) do not apply to them; with
``data.in_memory=true`` they are decoded once into ``ImageSet``s (:func:`decode_in_memory`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig
from ..counts import ClassCounts
from ..errors import LongtailError
from .cifar import load_cifar
from .files import (
    FILE_DATASETS,
    FileImageSet,
    file_options,
    holdout_validation,
    load_file_sets,
)
from .imageset import ImageSet
from .materialize import materialize
from .normalization import normalization_override, with_normalization
from .pack import load_pack
from .splits import longtail_indices, unused_indices, validation_info, validation_split

#: data set -> n_max of its long-tailed versions (REFERENCE.md)
DATASETS = {"cifar10": 5000, "cifar100": 500, "svhn": 1000, "digits": 140}


@dataclass(frozen=True)
class Splits:
    """``val_info``: where the validation split came from (None without one), see
    :func:`longtail.data.splits.validation_info`; ``val_info["note"]`` is a sentence for reports
    (e.g. that CIFAR-10-LT's head class gives 20 of its own 5,000 images: 4,980 left)."""

    train: ImageSet | FileImageSet
    test: ImageSet | FileImageSet
    val: ImageSet | FileImageSet | None = None
    val_info: dict[str, Any] | None = None
    #: image files decoded once into memory (``data.in_memory``): size, images, bytes and unreadable images left
    #: out per split, for the report (None otherwise); see :func:`decode_in_memory`
    decoded: dict[str, Any] | None = None

    @property
    def on_files(self) -> bool:
        """True when the images are files decoded per batch (not tensors)."""
        return isinstance(self.train, FileImageSet)

    def to(self, device: torch.device | str) -> "Splits":
        return Splits(self.train.to(device), self.test.to(device), self.val.to(device) if self.val else None,
                      val_info=self.val_info, decoded=self.decoded)


def load_balanced(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """The balanced (train, test) sets of a data set, normalised as its references do
    (:mod:`longtail.data.normalization`) or as ``data.normalization`` says when the config has it."""
    stats = normalization_override(cfg)
    train, test = _load_balanced(cfg)
    return with_normalization(train, stats), with_normalization(test, stats)


def _load_balanced(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    if cfg.dataset in ("cifar10", "cifar100"):
        return load_cifar(cfg.dataset, Path(cfg.root), download=cfg.download)
    if cfg.dataset == "svhn":
        from .svhn import load_svhn_sets

        return load_svhn_sets(Path(cfg.root), download=cfg.download)
    if cfg.dataset == "digits":
        from .digits import load_digits_sets

        return load_digits_sets()
    raise LongtailError(f"unknown data set {cfg.dataset!r}", f"use one of: {', '.join([*DATASETS, *FILE_DATASETS])}")


def check_in_memory(cfg: DataConfig) -> None:
    """``data.in_memory`` is for image-file data sets; the others are tensors already: refused, not ignored."""
    if getattr(cfg, "in_memory", False) and cfg.dataset not in FILE_DATASETS:
        raise LongtailError(f"data.in_memory=true decodes image files into memory, but {cfg.dataset} is held in "
                            "memory already",
                            f"leave data.in_memory=false for {cfg.dataset} (it is for the image-file data sets: "
                            f"{', '.join(FILE_DATASETS)})")


def load_labeled_splits(cfg: DataConfig) -> Splits:
    """Balanced source -> long-tailed training subset (+ validation split) and the test set;
    image-file data sets as given (see :func:`load_file_splits`)."""
    check_in_memory(cfg)
    if cfg.dataset in FILE_DATASETS:
        return load_file_splits(cfg)
    if cfg.pack:
        return _splits_from_pack(cfg)
    source, test = load_balanced(cfg)
    n_max = cfg.n_max if cfg.n_max is not None else DATASETS[cfg.dataset]
    counts = ClassCounts.from_profile(n_max, source.num_classes, cfg.imbalance_ratio, cfg.profile)
    idx = torch.from_numpy(longtail_indices(source.labels, counts, seed=cfg.subset_seed))
    tag = f"-lt{cfg.imbalance_ratio:g}" + ("" if cfg.profile == "exp" else f"-{cfg.profile}")
    train = source.subset(idx, name=f"{cfg.dataset}{tag}-train")
    val, val_info = None, None
    if cfg.val_per_class > 0:
        pool = source.subset(unused_indices(len(source), idx))  # rows of source the subset did not take
        subset = train
        train, val = validation_split(train, per_class=cfg.val_per_class, seed=cfg.subset_seed, pool=pool)
        val_info = validation_info(subset, train, val)
    train.class_counts().require_nonempty(train.class_names)
    return Splits(train, test, val, val_info=val_info)


def _splits_from_pack(cfg: DataConfig) -> Splits:
    """A device pack's ``train`` group is the long-tailed subset; check it is the one asked for."""

    if cfg.dataset != "cifar10" or cfg.val_per_class:
        raise LongtailError("device packs hold CIFAR-10 without a validation split",
                            "use data.dataset=cifar10 and no --val-per-class with a pack")
    groups, test = load_pack(cfg.pack)  # type: ignore[arg-type]
    if "train" not in groups:
        raise LongtailError(f"pack {cfg.pack} has no 'train' group", "make it with device-pack --lt-ratio R")
    stats = normalization_override(cfg)
    train, test = with_normalization(groups["train"], stats), with_normalization(test, stats)
    n_max = cfg.n_max if cfg.n_max is not None else DATASETS[cfg.dataset]
    want = ClassCounts.from_profile(n_max, train.num_classes, cfg.imbalance_ratio, cfg.profile)
    if train.class_counts() != want:
        raise LongtailError(
            f"pack {cfg.pack} holds class counts {train.class_counts().counts}, the run asks for {want.counts}",
            "make a pack with the run's --lt-ratio, or set the run's imbalance ratio to the pack's",
        )
    return Splits(train, test, None)


def load_file_splits(cfg: DataConfig) -> Splits:
    """An image-file data set's splits. Validation: ``data.val_split`` (a file or folder like the others),
    else ``data.val_per_class > 0`` holds out that many training images per class, else none. With
    ``data.in_memory=true`` every split is then decoded once into memory (:func:`decode_in_memory`)."""

    for key in ("pack", "pseudo_labels", "unlabeled_pool"):
        if getattr(cfg, key, None):
            raise LongtailError(f"data.{key} is not supported with image files ({cfg.dataset})",
                                f"leave data.{key} unset")
    subset = [f"data.{k}={getattr(cfg, k)}" for k in ("imbalance_ratio", "profile", "n_max")
              if getattr(cfg, k, getattr(DataConfig, k)) != getattr(DataConfig, k)]
    if subset:  # they would be recorded in config.json as if they had cut the data
        raise LongtailError(f"{', '.join(subset)} cut(s) a long-tailed subset of CIFAR or SVHN (--imbalance-ratio); "
                            f"data.dataset={cfg.dataset} is trained on as it is, its own counts its profile",
                            "leave them at their defaults (to train on fewer images, list fewer in the data set's "
                            "files)")
    if getattr(cfg, "protocol", "lt") != "lt":
        raise LongtailError(f"data.protocol={cfg.protocol} is not supported with image files", "use data.protocol=lt")
    stats = normalization_override(cfg)
    raw_train, raw_val, raw_test = load_file_sets(file_options(cfg))
    train, val, test = (with_normalization(raw_train, stats), with_normalization(raw_val, stats),
                        with_normalization(raw_test, stats))
    val_info = None
    if val is None and cfg.val_per_class > 0:
        whole = train
        train, val = holdout_validation(train, per_class=cfg.val_per_class, seed=cfg.subset_seed)
        val_info = validation_info(whole, train, val)  # type: ignore[arg-type]
    elif val is not None and cfg.val_per_class > 0:
        raise LongtailError("both data.val_split and data.val_per_class are set",
                            "use the validation split file, or hold out images per class, not both")
    elif val is not None:
        val_info = {"total": len(val), "from_train": None, "note": f"validation split: {len(val):,} images from "
                    f"the split file {cfg.val_split}"}
    splits = Splits(train, test, val, val_info=val_info)
    if getattr(cfg, "in_memory", False):
        splits = decode_in_memory(splits, view=getattr(cfg, "decode_view", "eval"))
    splits.train.class_counts().require_nonempty(splits.train.class_names)
    return splits


def decode_in_memory(splits: Splits, size: int | None = None, view: str = "eval") -> Splits:
    """Image-file splits decoded once into memory (``data.in_memory=true``): every split a uint8 ``ImageSet``.

    Each image is decoded once to a centre square of ``S`` pixels (``S = size``, default ``data.image_size``),
    in one of two views (``view``, from ``data.decode_view``; :func:`longtail.data.loader.eval_transform`):

    - ``"eval"`` (the default): the evaluation view of :mod:`longtail.data.loader`, short side resized to
      ``round(S x 256 / 224)``, centre crop ``S`` (37 then 32 for 32 px; 256 then 224 for 224 px), so the test
      set is scored as the ImageNet-LT / iNaturalist references score it;
    - ``"whole"`` (the ``folder-fast-*`` recipes): short side resized to ``S`` with the same resampling, centre
      crop ``S``. An image whose short side is ``S`` already is not resampled: 32x32 images (CIFAR-style) are
      kept exactly, pixel for pixel, as the fast CIFAR recipes train on them; a non-square one loses only the
      ends of its long side.

    Training then takes the tensor paths, exactly as CIFAR does: random crops (``train.crop_padding``)
    and flips drawn on the device inside that square (not ``RandomResizedCrop`` over the whole original image,
    and no colour jitter), test-time augmentation, samplers, FastNet's patch-whitening initialisation, stacked
    seeds. The file pipeline's normalisation is kept: ImageNet's constants for folders and CSVs, the data set's
    own for iNaturalist, or ``data.normalization``. Rows keep the order and ``source_index`` of the files.

    Memory: ``N x 3 x S x S`` bytes per split, held in host memory and then on the run's device (50,000
    images: 154 MB at 32 px, 614 MB at 64 px, 7.5 GB at 224 px). Unreadable images stop with the file's name,
    or under ``data.on_bad_image=skip`` are left out of their split and listed in ``Splits.decoded`` (the
    report's ``in_memory`` entry). Under ``torchrun`` every process decodes every image itself (the splits are
    loaded one process at a time). Splits already in memory are returned unchanged.
    """
    if not splits.on_files:
        return splits
    sets = {"train": splits.train, "test": splits.test, "val": splits.val}
    out: dict[str, ImageSet] = {}
    info: dict[str, Any] = {"image_size": 0, "view": view, "images": {}, "bytes": 0}
    unreadable: dict[str, Any] = {}
    for split, data in sets.items():
        if data is None:
            continue
        if not isinstance(data, FileImageSet):  # not something load_file_splits makes
            raise LongtailError(f"{data.name}: the {split} split is in memory while the training split is files",
                                "give every split as image files")
        skipped: dict[int, str] = {}
        decoded = materialize(data, size=size, device="cpu", across_processes=False, skipped=skipped, view=view)
        out[split] = decoded
        info["image_size"] = decoded.image_shape[-1]
        info["images"][split] = len(decoded)
        info["bytes"] += decoded.images.numel()
        if skipped:
            rows = sorted(skipped)
            unreadable[split] = {"count": len(rows), "examples": [f"{data.path(r)}: {skipped[r]}" for r in rows[:10]]}
    if unreadable:
        info["unreadable_images"] = unreadable
    return replace(splits, train=out["train"], test=out["test"], val=out.get("val"), decoded=info)
