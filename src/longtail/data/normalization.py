"""Per-channel normalisation constants, each with the released code it comes from.

Every data set normalises with the constants of the reference its recipes follow (not with its
own pixel statistics), so that a run sees the inputs the published number was trained on:

* CIFAR-10 and CIFAR-100: ``(0.4914, 0.4822, 0.4465)`` / ``(0.2023, 0.1994, 0.2010)`` for both,
  as LDAM-DRW (kaidic/LDAM-DRW ``cifar_train.py``, the ``transform_train`` / ``transform_val``
  of ``main_worker``, used for ``--dataset cifar100`` too) and Yang & Xu's code
  (YyzHarry/imbalanced-semi-self ``train.py``: ``mean = [0.4914, 0.4822, 0.4465] if
  args.dataset.startswith('cifar') else [.5, .5, .5]``; ``pretrain_rot.py`` likewise).
* SVHN: ``0.5`` / ``0.5`` per channel, as Yang & Xu's ``train.py`` / ``train_semi.py`` (the
  ``else`` branch above), with random crop and horizontal flip.
* iNaturalist 2018: ``(0.466, 0.471, 0.380)`` / ``(0.195, 0.194, 0.192)`` and no colour jitter;
  ImageNet-LT: ImageNet's constants with ``ColorJitter(0.4, 0.4, 0.4)`` (Kang et al.,
  facebookresearch/classifier-balancing ``data/dataloader.py``, ``RGB_statistics`` and
  ``get_data_transform``; copied unchanged into Yang & Xu's ``imagenet_inat/data/dataloader.py``).

:data:`NORMALIZATIONS` names these and a few other sources' constants; a config that sets
``data.normalization`` to one of the names uses it instead of the data set's default
(:func:`normalization_override`), e.g. ``cifar10-data`` for DARP/ABC's CIFAR-10 loaders or
``imagenet`` for USB's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

from ..errors import LongtailError

Stats = tuple[tuple[float, ...], tuple[float, ...]]

#: LDAM-DRW's and Yang & Xu's CIFAR constants (the std is not CIFAR-10's pixel std, 0.247/0.243/0.261)
CIFAR_REFERENCE: Stats = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
#: CIFAR-10's pixel statistics, as DARP (bbuing9/DARP ``dataset/all_cifar10.py``) and ABC
#: (LeeHyuck/ABC ``dataset/fix_cifar10.py``) write them
CIFAR10_DATA: Stats = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
#: CIFAR-100's pixel statistics (what this library used before following the references)
CIFAR100_DATA: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
#: Yang & Xu's SVHN constants
HALF: Stats = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
#: SVHN's pixel statistics (what this library used before following the references)
SVHN_DATA: Stats = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
IMAGENET: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: Kang et al.'s iNaturalist 2018 constants
INAT2018: Stats = ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192))

NORMALIZATIONS: dict[str, Stats] = {
    "cifar-reference": CIFAR_REFERENCE,
    "cifar10-data": CIFAR10_DATA,
    "cifar100-data": CIFAR100_DATA,
    "half": HALF,
    "svhn-data": SVHN_DATA,
    "imagenet": IMAGENET,
    "inat2018": INAT2018,
}

T = TypeVar("T")


def normalization_override(cfg: object) -> Stats | None:
    """The constants ``data.normalization`` names, or None when the config leaves the data set's default."""
    name = getattr(cfg, "normalization", None)
    if not name:
        return None
    if name not in NORMALIZATIONS:
        raise LongtailError(f"unknown data.normalization {name!r}", f"use one of: {', '.join(NORMALIZATIONS)}")
    return NORMALIZATIONS[name]


def with_normalization(data: T, stats: Stats | None) -> T:
    """``data`` (an ``ImageSet`` or ``FileImageSet``) with ``stats`` as its mean/std; unchanged for None."""
    if stats is None or data is None:
        return data
    channels = len(data.mean)  # type: ignore[attr-defined]
    if len(stats[0]) != channels:
        raise LongtailError(f"data.normalization has {len(stats[0])} channels, {data.name} has "  # type: ignore[attr-defined]
                            f"{channels}", "leave data.normalization unset for this data set")
    out: Any = replace(data, mean=tuple(stats[0]), std=tuple(stats[1]))  # type: ignore[type-var]
    return out


__all__ = ["CIFAR100_DATA", "CIFAR10_DATA", "CIFAR_REFERENCE", "HALF", "IMAGENET", "INAT2018", "NORMALIZATIONS",
           "SVHN_DATA", "normalization_override", "with_normalization"]
