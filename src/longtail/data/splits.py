"""Seeded index selections: long-tailed subsets and validation splits.

A long-tailed subset is an index selection over a balanced training set. The selection
reproduces the reference code (Cao et al. 2019; Yang & Xu 2020) exactly: one
``numpy.random.RandomState(seed)`` shared across classes ``0..C-1``; for each class, shuffle
that class's indices (in data-set order) and keep the first ``n_i``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..counts import ClassCounts
from ..errors import LongtailError
from .imageset import ImageSet, concat


def longtail_indices(labels: torch.Tensor | np.ndarray, counts: ClassCounts, *, seed: int = 0) -> np.ndarray:
    """Indices (sorted by class, then by shuffle order) of the reference long-tailed subset.

    ``labels``: (N,) integer labels of the balanced source set. ``counts.counts[c]`` images of
    class ``c`` are kept. Raises when a class has fewer images than asked for.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    rng = np.random.RandomState(seed)
    chosen = []
    for c, n_c in enumerate(counts.counts):
        idx = np.where(y == c)[0]
        if n_c > len(idx):
            raise LongtailError(
                f"class {c} has {len(idx)} images but the long-tailed profile asks for {n_c}",
                "lower n_max (or the imbalance ratio) so that no class asks for more images than it has",
            )
        rng.shuffle(idx)
        chosen.append(idx[:n_c])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def validation_split(
    train: ImageSet,
    *,
    per_class: int,
    seed: int = 0,
    pool: ImageSet | None = None,
) -> tuple[ImageSet, ImageSet]:
    """Split off a balanced validation set of ``per_class`` images per class.

    Images come first from ``pool`` (e.g. the images of the balanced source set that the
    long-tailed subset did not select, so that the reference training counts stay intact), and
    only for a class whose pool is too small from ``train`` itself. Returns ``(train, val)``.
    The validation set selects the epoch and tunes post-hoc knobs; the test set never does.
    """
    if per_class < 1:
        raise LongtailError(f"validation per_class must be >= 1, got {per_class}")
    rng = np.random.RandomState(seed + 1_000_003)  # a stream of its own: never the subset's
    y_train = train.labels.cpu().numpy()
    y_pool = pool.labels.cpu().numpy() if pool is not None else np.zeros(0, dtype=np.int64)
    val_from_pool, val_from_train = [], []
    for c in range(train.num_classes):
        cand = np.where(y_pool == c)[0]
        rng.shuffle(cand)
        take = cand[:per_class]
        val_from_pool.append(take)
        missing = per_class - len(take)
        if missing > 0:
            own = np.where(y_train == c)[0]
            rng.shuffle(own)
            if missing >= len(own):
                raise LongtailError(
                    f"--val-per-class {per_class}: class {train.class_names[c]!r} has {len(take)} unused images "
                    f"and {len(own)} training images, too few to hold out {per_class} for validation (the "
                    f"{missing} the unused ones lack from training) and keep one or more for training",
                    f"use a smaller --val-per-class (at most {len(take) + len(own) - 1} for this class)",
                )
            val_from_train.append(own[:missing])
    keep = np.ones(len(train), dtype=bool)
    from_train = np.concatenate(val_from_train) if val_from_train else np.zeros(0, dtype=np.int64)
    keep[from_train] = False
    parts = []
    if pool is not None:
        parts.append(pool.subset(torch.from_numpy(np.concatenate(val_from_pool))))
    if len(from_train):
        parts.append(train.subset(torch.from_numpy(from_train)))

    val = concat(parts, name=f"{train.name}-val")
    return train.subset(torch.from_numpy(np.where(keep)[0]), name=train.name), val


def validation_info(train_before: ImageSet, train_after: ImageSet, val: ImageSet) -> dict:
    """Where a validation split's images came from, for reports: ``{"per_class", "total", "from_train",
    "train_before", "train_after", "note"}``.

    ``from_train[c]``: validation images of class ``c`` taken out of the training subset itself
    (``train_before``), because the unused source images of that class were too few; the others
    come from images the training subset never had. ``note`` says it in one sentence, e.g. on
    CIFAR-10-LT (rho=100, n_max 5000 uses every head image): "validation split: 20 images per class
    (200); 180 from images the training subset does not use, 20 of class 'airplane' from its own
    training images (5,000 -> 4,980 left)".
    """
    C = train_before.num_classes
    taken = torch.isin(val.source_index.cpu(), train_before.source_index.cpu())  # type: ignore[union-attr]
    from_train = torch.bincount(val.labels.cpu()[taken], minlength=C).tolist()
    per = torch.bincount(val.labels.cpu(), minlength=C).tolist()
    before = list(train_before.class_counts().counts)
    after = list(train_after.class_counts().counts)
    per_class = per[0] if per and all(p == per[0] for p in per) else per
    size = f"{per_class} images per class ({len(val):,})" if isinstance(per_class, int) else f"{len(val):,} images"
    own = [f"{k} of class {train_before.class_names[c]!r} from its own training images "
           f"({before[c]:,} -> {after[c]:,} left)" for c, k in enumerate(from_train) if k]
    n_own = sum(from_train)
    if not own:
        note = f"validation split: {size}, all from images the training subset does not use"
    elif n_own == len(val):
        note = f"validation split: {size}, all taken out of the training subset: " + "; ".join(own)
    else:
        note = (f"validation split: {size}; {len(val) - n_own:,} from images the training subset does not use, "
                + "; ".join(own))
    return {"per_class": per_class, "total": len(val), "from_train": from_train, "train_before": before,
            "train_after": after, "note": note}


def unused_indices(source_size: int, used: torch.Tensor) -> torch.Tensor:
    """Indices of a source set that a selection did not use (e.g. the pool for validation)."""
    mask = torch.ones(source_size, dtype=torch.bool)
    mask[used.cpu().long()] = False
    return mask.nonzero().squeeze(1)
